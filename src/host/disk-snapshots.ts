/**
 * Disk snapshots of the host's VMs: snapshot (the top becomes a read-only base, a new delta takes
 * the writes), revert (a fresh delta over a snapshot replaces what was above it), consolidate (the
 * top delta is merged into its parent), and the chain as the API shows it. Each operation claims
 * its VM in the operations registry for as long as it runs, so a migration, a stop or another disk
 * operation meanwhile gets BUSY. The storage steps are src/storage/vmdk/chain-ops.ts and
 * consolidate.ts; the order of the steps and why each is crash-safe is docs/design/disk-snapshots.md.
 */
import { FerryError, errorMessage } from '../lib/errors.js';
import { MiB } from '../lib/units.js';
import { Vm } from '../vmm/vm.js';
import type { ChangedBlocks } from '../storage/changed-blocks.js';
import type { Datastore } from '../storage/datastore.js';
import type { VmdkDisk } from '../storage/vmdk/disk.js';
import { EAGER_CHECK_MAX_GTS } from '../storage/vmdk/grain-tables.js';
import { GTES_PER_GT } from '../storage/vmdk/header.js';
import { chainPaths, createDeltaOver, describeChain, removeIfPresent } from '../storage/vmdk/chain-ops.js';
import { Consolidation, copyRanges, ownRanges, pendingConsolidate, totalBytes, type ByteRange } from '../storage/vmdk/consolidate.js';
import type {
  ConsolidateResultView, DiskChainView, DiskOperationKind, DiskOperationView, RevertResultView, SnapshotResultView,
} from '../api/disk-v1.js';
import type { OperationsRegistry } from './operations.js';
import type { HostDatastores } from './datastores.js';
import type { VmService } from './vm-service.js';
import type { VmSlot } from './vm-slot.js';
import type { DiskSpec, VmDisk } from './vm-disk.js';

/** Copy rounds of a live consolidate before the final one is forced (a guest rewriting faster than the copy). */
export const MAX_CONSOLIDATE_ROUNDS = 30;
/** The final round (with the VM paused) starts once the guest rewrote at most this much since the last round. */
export const FINAL_ROUND_MAX_BYTES = 4 * MiB;

export interface DiskSnapshotsOptions {
  readonly hostName: string;
  readonly vms: VmService;
  readonly operations: OperationsRegistry;
  readonly datastores: HostDatastores;
  readonly log: (line: string) => void;
}

/** What a running operation reports (GET …/disk/chain shows it). */
interface Progress {
  kind: DiskOperationKind;
  phase: string;
  doneBytes: number;
  totalBytes: number;
  readonly startedAtMs: number;
}

/** A VM held still for a chain change: `resume` gives it back as it was. */
interface Quiesced {
  readonly resume: () => void;
  /** When the guest was asked to pause (null: it was not running). */
  readonly pausedAt: number | null;
}

export class DiskSnapshots {
  private readonly running = new Map<string, { progress: Progress; done: Promise<unknown> }>();

  constructor(private readonly o: DiskSnapshotsOptions) {}

  /** The VM's disk chain, top first, with the operation running on it (if any). */
  async chain(name: string): Promise<DiskChainView> {
    const disk = this.diskOf(name);
    const describe = async (): Promise<DiskChainView> => ({
      vm: name, datastore: disk.spec.datastore, capacityBytes: disk.capacityBytes,
      chain: (await describeChain(disk.disk, disk.spec.path)).map((l, i) => ({ ...l, role: i === 0 ? 'top' as const : 'snapshot' as const })),
      operation: this.operationOf(name),
    });
    try {
      return await describe();
    } catch (err) {
      // An operation may have swapped the chain (and closed the old one) under this read: read the new one.
      if (!this.running.has(name)) throw err;
      return describe();
    }
  }

  operationOf(name: string): DiskOperationView | null {
    const p = this.running.get(name)?.progress;
    return p === undefined ? null : { ...p };
  }

  /** Waits for every running disk operation (host shutdown: none is cut off between its steps). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }

  /**
   * Snapshot: the VM is paused (its block I/O drained), the top flushed, a new delta created over
   * it (read-only from now on), the new spec recorded durably, the delta put behind the VM's block
   * device — and only then is the guest resumed.
   */
  snapshot(name: string): Promise<SnapshotResultView> {
    return this.run(name, 'snapshot', async (slot, disk, ds, progress) => {
      const t0 = performance.now();
      const top = disk.spec;
      // Flushed while the guest runs too: the flush inside the pause then has only the last moment's writes to make durable.
      await disk.disk.flush();
      const q = await quiesce(slot, 'snapshot');
      let delta: { disk: VmdkDisk; path: string } | null = null;
      let old: VmdkDisk | null = null;
      let pauseMs: number | null = null;
      try {
        progress.phase = 'creating-delta';
        await disk.disk.flush();
        delta = await createDeltaOver(ds, top.path, top.path);
        const spec: DiskSpec = { datastore: top.datastore, path: delta.path };
        await this.o.vms.saveDiskSpec(name, spec);
        old = disk.replace(delta.disk, spec);
      } catch (err) {
        if (delta !== null && old === null) {
          await delta.disk.close().catch(() => undefined);
          await removeIfPresent(ds, delta.path).catch(() => undefined);
        }
        throw err;
      } finally {
        q.resume();
        if (q.pausedAt !== null) pauseMs = performance.now() - q.pausedAt;
      }
      // The old chain's top had no write since its flush: closing it does not change the CID the delta recorded.
      await old?.close();
      const info = disk.disk.info();
      const base = disk.disk.parent?.info();
      this.o.log(`host ${this.o.hostName}: VM ${name}: snapshot ${top.path} (CID ${base?.cid ?? '?'}), writes now go to ${disk.spec.path}${pauseMs !== null ? `, guest paused ${pauseMs.toFixed(1)} ms` : ''}`);
      return {
        vm: name, snapshot: { path: top.path, cid: base?.cid ?? info.parentCid },
        top: { path: disk.spec.path, cid: info.cid, parentCid: info.parentCid }, pauseMs, totalMs: performance.now() - t0,
      };
    });
  }

  /**
   * Revert: a fresh empty delta over the snapshot `to` (default: the newest) replaces every level
   * above it, which is removed. A running VM is stopped first and booted again on the reverted disk:
   * its RAM holds what it read and wrote since the snapshot, so it cannot go on over older content.
   */
  revert(name: string, to?: string): Promise<RevertResultView> {
    return this.run(name, 'revert', async (slot, disk, ds, progress) => {
      const t0 = performance.now();
      const levels = chainPaths(disk.disk, disk.spec.path);
      const target = to ?? levels[1];
      const at = target === undefined ? -1 : levels.indexOf(target);
      if (target === undefined || at < 1) {
        const known = levels.slice(1);
        throw new FerryError('NOT_FOUND', `VM ${name} has no snapshot ${target ?? ''}${known.length === 0 ? ' (its disk has none)' : ` (its snapshots: ${known.join(', ')})`}`, { snapshot: target ?? null, snapshots: known });
      }
      const vm = slot.vm;
      const restart = vm !== null && (vm.state === 'running' || vm.state === 'paused' || vm.state === 'halted');
      if (vm !== null) {
        progress.phase = 'stopping';
        await vm.stop();
        slot.vm = null;
      }
      const discarded = levels.slice(0, at);
      try {
        progress.phase = 'creating-delta';
        const fresh = await createDeltaOver(ds, target, disk.spec.path);
        const spec: DiskSpec = { datastore: disk.spec.datastore, path: fresh.path };
        try {
          await this.o.vms.saveDiskSpec(name, spec);
        } catch (err) {
          await fresh.disk.close().catch(() => undefined);
          await removeIfPresent(ds, fresh.path).catch(() => undefined);
          throw err;
        }
        await disk.replace(fresh.disk, spec)?.close();
        progress.phase = 'removing';
        for (const path of discarded) {
          await removeIfPresent(ds, path).catch((err: unknown) => { this.o.log(`host ${this.o.hostName}: VM ${name}: cannot remove discarded ${path}: ${errorMessage(err)}`); });
        }
      } finally {
        // Whatever happened to the chain, a VM that was running runs again on the chain it has now.
        if (restart) { progress.phase = 'restarting'; await this.restart(slot, disk); }
      }
      const info = disk.disk.info();
      return {
        vm: name, revertedTo: { path: target, cid: info.parentCid }, top: { path: disk.spec.path, cid: info.cid, parentCid: info.parentCid },
        discarded, restarted: restart, totalMs: performance.now() - t0,
      };
    });
  }

  /**
   * Consolidate: the top delta's grains are merged into its parent (journal first), which then
   * becomes the top. With the VM running the copy runs alongside it, in rounds of the blocks the
   * guest rewrote meanwhile (a changed-block tracker marks each write before it is issued); the
   * final round, the commit and the swap run with the VM paused.
   */
  consolidate(name: string): Promise<ConsolidateResultView> {
    return this.run(name, 'consolidate', async (slot, disk, ds, progress) => {
      const t0 = performance.now();
      const levels = chainPaths(disk.disk, disk.spec.path);
      const [topPath, parentPath] = levels;
      if (topPath === undefined || parentPath === undefined) throw new FerryError('VM_STATE', `VM ${name}'s disk ${disk.spec.path} is a chain of one: there is nothing to consolidate`);
      const live = slot.vm?.state === 'running';
      if (slot.vm?.state === 'crashed') throw crashedError(name, 'consolidate');
      if (live) refuseLiveBeyondEagerTables(name, disk.disk);
      // Started before the grains are listed: a write after this point is either copied by the pass or marked.
      const tracker = live ? disk.track() : null;
      let c: Consolidation | null = null;
      let committed = false;
      let rounds = 1;
      let pauseMs: number | null = null;
      try {
        // The VM's own chain is read: its reads are ordered with the guest's writes (VmdkDisk serializes them).
        const source = disk.disk;
        const ranges = await ownRanges(source);
        progress.totalBytes = totalBytes(ranges);
        progress.phase = 'copying';
        c = await Consolidation.begin(ds, topPath, parentPath);
        const parent = c.parent;
        const copy = (rs: readonly ByteRange[]): Promise<number> => copyRanges(source, parent, rs, (n) => { progress.doneBytes += n; });
        await copy(ranges);
        while (tracker !== null && rounds < MAX_CONSOLIDATE_ROUNDS && tracker.count * tracker.blockBytes > FINAL_ROUND_MAX_BYTES) {
          rounds++;
          progress.phase = `round ${rounds}`;
          await copy(this.takeRanges(tracker, progress));
        }
        // Made durable while the guest runs: the flush inside the pause then covers only the last round.
        await parent.flush();
        progress.phase = 'final-round';
        const q = await quiesce(slot, 'consolidate');
        let old: VmdkDisk | null = null;
        try {
          if (tracker !== null && tracker.count > 0) { rounds++; await copy(this.takeRanges(tracker, progress)); }
          await c.flush();
          const spec: DiskSpec = { datastore: disk.spec.datastore, path: parentPath };
          await this.o.vms.saveDiskSpec(name, spec);
          committed = true;
          if (tracker !== null) disk.untrack(tracker);
          old = disk.replace(parent, spec);
        } finally {
          q.resume();
          if (q.pausedAt !== null) pauseMs = performance.now() - q.pausedAt;
        }
        progress.phase = 'removing';
        // Committed: what is left is tidying, and a failure of it leaves orphans (removed at the next attach), not a broken chain.
        await old?.close().catch((err: unknown) => { this.o.log(`host ${this.o.hostName}: VM ${name}: closing ${topPath}: ${errorMessage(err)}`); });
        await c.finish().catch((err: unknown) => { this.o.log(`host ${this.o.hostName}: VM ${name}: cannot remove consolidated ${topPath}: ${errorMessage(err)}`); });
      } catch (err) {
        if (tracker !== null) disk.untrack(tracker);
        if (c !== null && !committed) await c.abandon().catch(() => undefined);
        throw err;
      }
      const info = disk.disk.info();
      this.o.log(`host ${this.o.hostName}: VM ${name}: consolidated ${topPath} into ${parentPath}: ${progress.doneBytes} bytes in ${rounds} round(s)${pauseMs !== null ? `, guest paused ${pauseMs.toFixed(1)} ms` : ''}`);
      return {
        vm: name, merged: topPath, top: { path: parentPath, cid: info.cid, parentCid: info.parentCid },
        copiedBytes: progress.doneBytes, rounds, live, pauseMs, totalMs: performance.now() - t0,
      };
    });
  }

  /** The blocks the guest wrote since the last take, as byte ranges (the total grows by them). */
  private takeRanges(tracker: ChangedBlocks, progress: Progress): ByteRange[] {
    const out: { offsetBytes: number; lengthBytes: number }[] = [];
    for (const b of tracker.take()) {
      const r = tracker.range(b);
      const last = out[out.length - 1];
      if (last !== undefined && last.offsetBytes + last.lengthBytes === r.offsetBytes) last.lengthBytes += r.lengthBytes;
      else out.push({ ...r });
    }
    progress.totalBytes += totalBytes(out);
    return out;
  }

  private diskOf(name: string): VmDisk {
    const disk = this.o.vms.slot(name).disk;
    if (disk === null) throw new FerryError('VM_STATE', `VM ${name} has no disk`, { disk: null });
    return disk;
  }

  /** Claims the VM, refuses a chain with an unfinished consolidate, runs `fn` with its progress shown, releases. */
  private async run<T>(name: string, kind: DiskOperationKind, fn: (slot: VmSlot, disk: VmDisk, ds: Datastore, progress: Progress) => Promise<T>): Promise<T> {
    const slot = this.o.vms.slot(name);
    if (this.o.vms.closing) throw new FerryError('VM_STATE', `host ${this.o.hostName} is shutting down`);
    const claim = this.o.operations.claim(name, `disk ${kind}`, kind);
    const progress: Progress = { kind, phase: 'starting', doneBytes: 0, totalBytes: 0, startedAtMs: Date.now() };
    const done = (async () => {
      const disk = this.diskOf(name);
      const ds = this.o.datastores.get(disk.spec.datastore);
      const pending = await pendingConsolidate(ds, disk.spec.path);
      if (pending !== null && kind !== 'consolidate') {
        // Its parent may hold part of the merge already: neither a revert to it nor a delta over this chain is sound until it is finished.
        throw new FerryError('VM_STATE', `VM ${name}: a consolidate of ${pending.top} into ${pending.parent} did not finish; run consolidate again first`, { pending });
      }
      return fn(slot, disk, ds, progress);
    })();
    this.running.set(name, { progress, done });
    try {
      return await done;
    } finally {
      this.running.delete(name);
      claim.release();
    }
  }

  /** Boots the VM again on its disk (revert of a running VM). */
  private async restart(slot: VmSlot, disk: VmDisk): Promise<void> {
    const vm = Vm.create(slot.imageBytes, { ...slot.config, disk: disk.backend });
    slot.attach(vm);
    await vm.start();
  }
}

/**
 * The VM reads the parent through a read-only handle while the consolidate appends grains to it
 * through another; that handle checks a grain table's entries against the file size it saw at
 * open whenever it reads a table. Only disks whose tables are all read (and kept) at open never
 * re-read one (docs/design/disk-snapshots.md, "What is assumed").
 */
function refuseLiveBeyondEagerTables(name: string, top: VmdkDisk): void {
  const tables = Math.ceil(top.capacityBytes / (top.info().grainSizeBytes * GTES_PER_GT));
  if (tables > EAGER_CHECK_MAX_GTS) {
    throw new FerryError('DISK_TOO_LARGE', `VM ${name}: a live consolidate of a disk of ${tables} grain tables (more than ${EAGER_CHECK_MAX_GTS}) is not supported; stop the VM to consolidate it`, { tables });
  }
}

function crashedError(name: string, action: string): FerryError {
  return new FerryError('VM_STATE', `cannot ${action} the disk of VM ${name}: it crashed; stop it first`);
}

/**
 * Holds the VM still for a chain change: a running VM is paused (which drains its block I/O), a
 * halted one drained; a paused, stopped or never-started one has nothing in flight.
 */
async function quiesce(slot: VmSlot, action: string): Promise<Quiesced> {
  const vm = slot.vm;
  if (vm === null) return { resume: () => undefined, pausedAt: null };
  switch (vm.state) {
    case 'running': {
      const pausedAt = performance.now();
      await vm.pause();
      return { resume: () => { if (vm.state === 'paused') vm.resume(); }, pausedAt };
    }
    case 'halted':
      await vm.pause();
      return { resume: () => undefined, pausedAt: null };
    case 'crashed':
      throw crashedError(slot.name, action);
    default:
      return { resume: () => undefined, pausedAt: null };
  }
}
