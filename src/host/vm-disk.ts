/**
 * A VM's disk as the host holds it: a VMDK chain on one of the host's datastores, opened for
 * writing (so its datastore lease is held) for as long as the VM is defined here, and handed to
 * the VM as its block device.
 *
 * The VM is given `backend`, which stays the same object for the VM's life while the chain behind
 * it may change: released and re-acquired around a shared-datastore migration's switch-over (the
 * lease goes to the target), replaced by a snapshot or a consolidate. Every such change happens
 * with the VM paused and its block I/O drained, so no request sees two disks. Writes are reported
 * to changed-block trackers *before* they are issued (./../storage/changed-blocks.ts explains why
 * that order is what makes copy rounds lose nothing).
 */
import { FerryError } from '../lib/errors.js';
import { VmdkDisk } from '../storage/vmdk/disk.js';
import { ChangedBlocks } from '../storage/changed-blocks.js';
import type { DatastoreFile } from '../storage/datastore.js';
import { openDatastoreChain } from '../storage/vmdk/chain-ops.js';
import { recoverChain, type RecoveredChain } from '../storage/vmdk/consolidate.js';
import { checkDiskCapacity, type BlockBackend } from '../vmm/devices/block.js';
import type { HostDatastores } from './datastores.js';

/** Where a VM's disk lives: what the data directory records and the API shows. */
export interface DiskSpec {
  readonly datastore: string;
  readonly path: string;
}

/** Most changed-block trackers at once (a migration, a consolidate): each costs a bitmap and a mark per write. */
export const MAX_DISK_TRACKERS = 4;

/** Opens the chain whose top is `spec` for writing: DISK_LOCKED when another host holds its lease. */
export async function openDiskChain(datastores: HostDatastores, spec: DiskSpec): Promise<VmdkDisk> {
  return openDatastoreChain(datastores.get(spec.datastore), spec.path);
}

/** Creates a new sparse disk of `sizeBytes` at `spec` — never over an existing file — and opens it. */
export async function createDisk(datastores: HostDatastores, spec: DiskSpec, sizeBytes: number): Promise<VmdkDisk> {
  const ds = datastores.get(spec.datastore);
  let file: DatastoreFile;
  try {
    file = await ds.open(spec.path, { create: true });
  } catch (err) {
    if (err instanceof FerryError && err.code === 'ALREADY_EXISTS') {
      throw new FerryError('ALREADY_EXISTS', `${spec.datastore}:${spec.path} already exists; give no size to attach the existing disk`, { ...spec });
    }
    throw err;
  }
  try {
    return await VmdkDisk.create(file, { capacityBytes: sizeBytes });
  } catch (err) {
    // The file is closed by VmdkDisk.create; the half-made disk goes.
    await ds.remove(spec.path).catch(() => undefined);
    throw err;
  }
}

export class VmDisk {
  readonly backend: BlockBackend;
  private current: VmdkDisk | null;
  private readonly trackers = new Set<ChangedBlocks>();
  private closing: Promise<void> | null = null;

  /** What a recovery at attach left to tidy once the owner has recorded `spec` (see settleRecovery). */
  private unsettled: (() => Promise<void>) | null = null;

  private constructor(private readonly datastores: HostDatastores, private specNow: DiskSpec, disk: VmdkDisk | null, capacityBytes: number) {
    this.current = disk;
    checkDiskCapacity(capacityBytes);
    this.backend = {
      capacityBytes,
      // async: a released disk answers with a rejection (a block I/O error), never a throw.
      read: async (position, buf) => this.disk.read(position, buf),
      write: async (position, data) => {
        const disk = this.disk;
        for (const t of this.trackers) t.mark(position, data.length);
        return disk.write(position, data);
      },
      flush: async () => this.disk.flush(),
    };
  }

  /**
   * Opens the disk at `spec`, or creates a new one of `sizeBytes` there, and holds it for a VM.
   * An existing disk is first recovered (src/storage/vmdk/consolidate.ts): an interrupted
   * consolidate is finished, so the chain's top may then be the delta's parent — `spec` of the
   * result says where it is; the owner records that, then calls settleRecovery().
   */
  static async attach(datastores: HostDatastores, spec: DiskSpec, sizeBytes?: number): Promise<VmDisk> {
    if (sizeBytes !== undefined) {
      const created = await createDisk(datastores, spec, sizeBytes);
      return new VmDisk(datastores, spec, created, created.capacityBytes);
    }
    const ds = datastores.get(spec.datastore);
    // The top's lease first: a chain another host is writing is not recovered from here.
    const guard = await ds.open(spec.path);
    let recovered: RecoveredChain;
    try { recovered = await recoverChain(ds, spec.path); } finally { await guard.close(); }
    const at = { datastore: spec.datastore, path: recovered.topPath };
    const disk = await openDiskChain(datastores, at);
    const vmDisk = new VmDisk(datastores, at, disk, disk.capacityBytes);
    vmDisk.unsettled = () => recovered.settle();
    return vmDisk;
  }

  /**
   * Holds a chain opened elsewhere (for writing, its lease taken) as a VM's disk at `spec`: an incoming
   * migration's new delta over a seed (./migration-disks.ts), checked by its open already.
   */
  static adopt(datastores: HostDatastores, spec: DiskSpec, disk: VmdkDisk): VmDisk {
    return new VmDisk(datastores, spec, disk, disk.capacityBytes);
  }

  /**
   * A disk named but not opened yet (no lease): an incoming shared-datastore migration attaches
   * it with reacquire() at COMMIT, once the source has let it go.
   */
  static pending(datastores: HostDatastores, spec: DiskSpec, capacityBytes: number): VmDisk {
    return new VmDisk(datastores, spec, null, capacityBytes);
  }

  /** Tidies what a consolidate finished at attach left behind (its delta, its journal), once `spec` is recorded. */
  async settleRecovery(): Promise<void> {
    const settle = this.unsettled;
    this.unsettled = null;
    await settle?.();
  }

  get spec(): DiskSpec { return this.specNow; }
  get capacityBytes(): number { return this.backend.capacityBytes; }
  /** False between release() and reacquire(): the lease is not held and I/O is refused. */
  get attached(): boolean { return this.current !== null; }

  /** The chain now; DISK_LOCKED-like refusal while released. */
  get disk(): VmdkDisk {
    if (this.current === null) throw new FerryError('VM_STATE', `disk ${this.specNow.datastore}:${this.specNow.path} is not attached on this host (its lease was handed over)`);
    return this.current;
  }

  /** Flushes and closes the chain: the lease is given up (the VM must be paused with its I/O drained). */
  async release(): Promise<void> {
    const disk = this.current;
    if (disk === null) return;
    this.current = null;
    try { await disk.flush(); } finally { await disk.close(); }
  }

  /** Opens the chain of `spec` again (after a release, or at a new spec); DISK_LOCKED if someone else holds it now. */
  async reacquire(spec: DiskSpec = this.specNow): Promise<void> {
    if (this.current !== null) throw new FerryError('VM_STATE', `disk ${this.specNow.datastore}:${this.specNow.path} is already attached`);
    const disk = await openDiskChain(this.datastores, spec);
    if (disk.capacityBytes !== this.capacityBytes) {
      await disk.close();
      throw new FerryError('DISK_CHAIN_MISMATCH', `${spec.datastore}:${spec.path} holds ${disk.capacityBytes} bytes, the VM's disk ${this.capacityBytes}`);
    }
    this.current = disk;
    this.specNow = spec;
  }

  /**
   * Puts `disk` (now at `spec`) behind the VM's block device and returns the chain it replaces, for
   * the caller to close or keep. The VM must be paused with its block I/O drained.
   */
  replace(disk: VmdkDisk, spec: DiskSpec): VmdkDisk | null {
    if (disk.capacityBytes !== this.capacityBytes) throw new FerryError('DISK_CHAIN_MISMATCH', `a ${disk.capacityBytes}-byte disk cannot replace a ${this.capacityBytes}-byte one`);
    const old = this.current;
    this.current = disk;
    this.specNow = spec;
    return old;
  }

  /** Starts reporting writes (by block) to a new tracker; stop it with untrack(). */
  track(blockBytes?: number): ChangedBlocks {
    if (this.trackers.size >= MAX_DISK_TRACKERS) throw new FerryError('BUSY', `disk ${this.specNow.datastore}:${this.specNow.path} already has ${MAX_DISK_TRACKERS} change trackers`);
    const t = new ChangedBlocks(this.capacityBytes, blockBytes);
    this.trackers.add(t);
    return t;
  }

  untrack(tracker: ChangedBlocks): void { this.trackers.delete(tracker); }

  /** Flushes, closes the chain and releases the lease; idempotent. */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      this.trackers.clear();
      const disk = this.current;
      this.current = null;
      if (disk === null) return;
      await disk.flush().catch(() => undefined);
      await disk.close();
    })());
  }

  /** The disk as the API shows it. */
  describe(): { datastore: string; path: string; capacityBytes: number; cid: string; parentCid: string; attached: boolean } {
    const disk = this.current;
    if (disk === null) return { ...this.specNow, capacityBytes: this.capacityBytes, cid: '', parentCid: '', attached: false };
    const info = disk.info();
    return { ...this.specNow, capacityBytes: info.capacityBytes, cid: info.cid, parentCid: info.parentCid, attached: true };
  }
}
