/**
 * A VM's disk in a live migration, on this host's side (the protocol is in
 * src/migration/disk.ts): which way it moves (`planDisk`), the source's view of it over the VM's
 * disk handle, and the disk an incoming VM gets (`prepareIncomingDisk`).
 */
import { posix } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { failpointDrop } from '../lib/failpoints.js';
import { changedBlockBytesFor } from '../storage/changed-blocks.js';
import { createDeltaAt, describeChain } from '../storage/vmdk/chain-ops.js';
import type { VmdkDisk } from '../storage/vmdk/disk.js';
import { removeSeedManifest, type SeedLevel } from '../storage/seed-manifest.js';
import type { ChainLevelSpec, MigrationSourceDisk, IncomingDisk, PrepareDisk, PreparedDisk } from '../migration/disk.js';
import type { DatastoreView } from '../api/host-v1.js';
import type { HostDatastores } from './datastores.js';
import type { HostStore } from './store.js';
import { VmDisk, type DiskSpec } from './vm-disk.js';
import { matchSeed, verifySeedFiles } from './incoming-seed.js';

/**
 * Failpoint (`drop:<n>`): the n-th copy-mode plan of this source announces no chain — what a source
 * from before seeds sends — so that a test sees the target copy the disk whole.
 */
export const FAILPOINT_SPEC_WITHOUT_CIDS = 'migration.spec.without-cids';

/** How long a rollback keeps trying to take a shared disk's lease back (a dead target's lease must expire first). */
export const REACQUIRE_WAIT_MS = 60_000;
const REACQUIRE_RETRY_MS = 250;

/** Where to put the disk on the target when it cannot see the source's datastore (MigrateRequest.disk). */
export interface DiskDestination {
  readonly datastore: string;
  readonly path?: string | undefined;
}

/**
 * Shared when the target mounts the disk's datastore (same id, under whatever name); else a copy to
 * `destination`; else MIGRATION_REFUSED saying what to ask for.
 */
export async function planDisk(disk: VmDisk, datastores: HostDatastores, targetDatastores: readonly DatastoreView[], destination: DiskDestination | undefined): Promise<PrepareDisk> {
  const spec = disk.spec;
  const capacityBytes = disk.capacityBytes;
  if (destination !== undefined) {
    if (!targetDatastores.some((d) => d.name === destination.datastore)) {
      throw new FerryError('MIGRATION_REFUSED', `the target has no datastore ${destination.datastore} (it mounts: ${targetDatastores.map((d) => d.name).join(', ') || 'none'})`);
    }
    const plan = { mode: 'copy', datastore: destination.datastore, path: destination.path ?? spec.path, capacityBytes, blockBytes: changedBlockBytesFor(capacityBytes) } as const;
    if (failpointDrop(FAILPOINT_SPEC_WITHOUT_CIDS)) return plan;
    return { ...plan, chain: await chainSpec(disk) };
  }
  const id = datastores.get(spec.datastore).id;
  if (targetDatastores.some((d) => d.id === id)) return { mode: 'shared', datastoreId: id, path: spec.path, capacityBytes };
  throw new FerryError('MIGRATION_REFUSED',
    `the target does not mount datastore ${spec.datastore} (id ${id.slice(0, 8)}…), which holds the VM's disk; name one of its datastores to copy the disk to (${targetDatastores.map((d) => d.name).join(', ') || 'it mounts none'})`,
    { datastore: spec.datastore, targetDatastores: targetDatastores.map((d) => d.name) });
}

/** The migration specification of the VM's chain: every level with its CIDs, top first (PrepareDisk.chain). */
export async function chainSpec(disk: VmDisk): Promise<ChainLevelSpec[]> {
  const levels = await describeChain(disk.disk, disk.spec.path);
  const capacities: number[] = [];
  for (let d: VmdkDisk | undefined = disk.disk; d !== undefined; d = d.parent) capacities.push(d.capacityBytes);
  return levels.map((l, i) => ({ path: l.path, cid: l.cid, parentCid: l.parentCid, capacityBytes: capacities[i] ?? disk.capacityBytes, allocatedBytes: l.allocatedBytes }));
}

/** The source's view of the VM's disk for the migration engine. */
export function sourceDisk(disk: VmDisk, plan: PrepareDisk): MigrationSourceDisk {
  return {
    plan,
    track: (blockBytes) => disk.track(blockBytes),
    untrack: (t) => { disk.untrack(t); },
    forEachAllocatedRange: (fn) => disk.disk.forEachAllocatedRange(fn),
    forEachAllocatedRangeInTop: (levels, fn) => disk.disk.forEachAllocatedRangeInTop(levels, fn),
    read: (offsetBytes, buf) => disk.disk.read(offsetBytes, buf),
    release: () => disk.release(),
    reacquire: () => reacquireWaiting(disk),
    get released() { return !disk.attached; },
  };
}

/** Takes a shared disk's lease back, waiting out a lease the target may still hold (it expires if the target died). */
async function reacquireWaiting(disk: VmDisk): Promise<void> {
  const deadline = performance.now() + REACQUIRE_WAIT_MS;
  for (;;) {
    try {
      await disk.reacquire();
      return;
    } catch (err) {
      if (!isFerryError(err) || err.code !== 'DISK_LOCKED' || performance.now() >= deadline) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, REACQUIRE_RETRY_MS));
  }
}

/**
 * Where a host notes the disk copies incoming migrations create (HostStore): noted before the copy
 * exists, forgotten once it is removed or its VM is saved here, so that a host restarted after a
 * crash removes every copy that never committed (sweepIncomingCopies).
 */
export interface CopyNotes {
  note(spec: DiskSpec): Promise<void>;
  forget(): Promise<void>;
}

/** An incoming copy: the VM, the seeded levels it uses (base first; empty: none), and this host's name for messages. */
export interface IncomingSeed {
  readonly vm: string;
  readonly hostName: string;
  readonly levels: readonly SeedLevel[];
  readonly log: (line: string) => void;
  /** Gives up the hold on the seed files (see SeedHolds). */
  readonly release: () => void;
}

/** The disk an incoming VM runs on; the host adopts `vmDisk` with the VM at commit. */
export class IncomingVmDisk implements IncomingDisk {
  private discarded = false;
  readonly prepared?: PreparedDisk;

  constructor(
    readonly vmDisk: VmDisk, private readonly copied: boolean, private readonly datastores: HostDatastores, private readonly notes: CopyNotes | null = null,
    prepared: PreparedDisk | undefined = undefined, private readonly seed: IncomingSeed | null = null,
  ) {
    if (prepared !== undefined) this.prepared = prepared;
  }

  /**
   * The VM committed and is saved here with this disk: a copy is the VM's own now, no longer a
   * leftover to sweep. The VM's seed manifest on the datastore goes, used or not: a seed it runs over
   * is its own base now (the files stay: they are its chain), and one it did not use is stale.
   */
  async kept(): Promise<void> {
    await this.notes?.forget();
    if (this.seed === null) return;
    this.seed.release();
    const ds = this.vmDisk.spec.datastore;
    // The VM is committed here whatever happens now: a manifest left behind is only stale (a migration checks every level it uses).
    await removeSeedManifest(this.datastores.get(ds), this.seed.vm).catch((err: unknown) => {
      this.seed?.log(`VM ${this.seed.vm}: its seed manifest on ${ds} could not be removed (${errorMessage(err)}); DELETE /v1/datastores/${ds}/seeds/${this.seed.vm} removes it`);
    });
  }

  get backend(): IncomingDisk['backend'] { return this.vmDisk.backend; }

  write(offsetBytes: number, data: Uint8Array): Promise<void> { return this.vmDisk.disk.write(offsetBytes, data); }
  /** Hashes the seeded files (nothing to do without a seed): SEED_DAMAGED if one is not what was seeded. */
  async verifySeed(signal: AbortSignal): Promise<void> {
    if (this.seed === null || this.seed.levels.length === 0) return;
    await verifySeedFiles(this.datastores.get(this.vmDisk.spec.datastore), this.seed.vm, this.seed.levels, this.seed.hostName, signal);
  }
  flush(): Promise<void> { return this.vmDisk.disk.flush(); }

  async activate(): Promise<void> {
    if (this.discarded) throw new FerryError('MIGRATION_FAILED', `${this.vmDisk.spec.datastore}:${this.vmDisk.spec.path}: the incoming disk was discarded (the migration was aborted)`);
    if (this.copied) return;
    await this.vmDisk.reacquire();
    // A discard while the lease was being taken found no chain open to close: give the lease up now.
    if (this.discarded) {
      await this.vmDisk.release();
      throw new FerryError('MIGRATION_FAILED', `${this.vmDisk.spec.datastore}:${this.vmDisk.spec.path}: the incoming disk was discarded while its lease was being taken`);
    }
  }

  async discard(): Promise<void> {
    if (this.discarded) return;
    this.discarded = true;
    await this.vmDisk.close();
    this.seed?.release();
    // A copy that did not commit is incomplete: it goes. A shared disk is the source's: it stays.
    // Over a seed the copy is the new delta only: the seed files below it stay, for the next migration.
    if (!this.copied) return;
    await this.datastores.get(this.vmDisk.spec.datastore).remove(this.vmDisk.spec.path);
    await this.notes?.forget();
  }
}

/** What prepareIncomingDisk needs besides the plan: where copies are noted, the host's seeds, its log. */
export interface IncomingDiskContext {
  readonly notes?: CopyNotes | null;
  readonly hostName?: string;
  readonly holds?: SeedHolds;
  readonly log?: (line: string) => void;
}

/** Seed files in use by incoming migrations: DELETE …/seeds?files=true keeps them (./seeds.ts). */
export interface SeedHolds {
  /** Holds `paths` of datastore `datastore` until the returned function is called (idempotent). */
  hold(datastore: string, paths: readonly string[]): () => void;
}

/**
 * The disk PREPARE announced, made ready on this host: shared — this host mounts the datastore
 * (by id) and the disk file is there (it is opened at COMMIT); copy — a new disk is created on the
 * named datastore, never over an existing file: a delta over the VM's seed there when the announced
 * chain's base levels are seeded (docs/design/cross-site.md), else a new flat disk. Throws
 * MIGRATION_REFUSED (or the datastore's error) to refuse the migration.
 */
export async function prepareIncomingDisk(datastores: HostDatastores, vmName: string, plan: PrepareDisk, ctx: IncomingDiskContext = {}): Promise<IncomingVmDisk> {
  const notes = ctx.notes ?? null;
  if (plan.mode === 'shared') {
    const ds = datastores.byId(plan.datastoreId);
    if (ds === undefined) throw new FerryError('MIGRATION_REFUSED', `VM ${vmName}'s disk is on a datastore this host does not mount (id ${plan.datastoreId.slice(0, 8)}…)`);
    const st = await ds.stat(plan.path);
    if (st.kind !== 'file') throw new FerryError('MIGRATION_REFUSED', `${ds.name}:${plan.path} is not a disk file here`);
    const spec: DiskSpec = { datastore: ds.name, path: plan.path };
    return new IncomingVmDisk(VmDisk.pending(datastores, spec, plan.capacityBytes), false, datastores);
  }
  const spec: DiskSpec = { datastore: plan.datastore, path: plan.path };
  const dir = posix.dirname(plan.path);
  if (dir !== '.') await datastores.get(plan.datastore).mkdir(dir);
  // Noted before it exists: a crash at any point after this leaves a note for the next start.
  const match = plan.chain === undefined ? null : await matchSeed(datastores.get(plan.datastore), vmName, plan.chain, ctx.log ?? (() => undefined));
  await notes?.note(spec);
  let disk: VmDisk;
  let seed: IncomingSeed | null = null;
  try {
    seed = seedOf(vmName, match?.levels ?? [], plan.datastore, ctx);
    if (match !== null && match.levels.length > 0) {
      disk = await deltaOverSeed(datastores, spec, match.levels, plan.capacityBytes);
    } else {
      disk = await VmDisk.attach(datastores, spec, plan.capacityBytes);
    }
  } catch (err) {
    seed?.release();
    // Nothing was created (an existing file is never opened as a copy, a half-made delta is removed): nothing to sweep.
    await notes?.forget();
    throw err;
  }
  // A datastore that fills up during the copy fails its writes: the migration fails, the VM stays on the source and the partial copy is removed.
  return new IncomingVmDisk(disk, true, datastores, notes, match?.prepared, seed);
}

function seedOf(vm: string, levels: readonly SeedLevel[], datastore: string, ctx: IncomingDiskContext): IncomingSeed {
  const release = levels.length === 0 ? () => undefined : ctx.holds?.hold(datastore, levels.map((l) => l.path)) ?? (() => undefined);
  return { vm, hostName: ctx.hostName ?? 'this host', levels, release, log: ctx.log ?? (() => undefined) };
}

/** The incoming VM's new top at `spec`: a delta over the seed's top level, opened (lease, CID check) and held as its disk. */
async function deltaOverSeed(datastores: HostDatastores, spec: DiskSpec, levels: readonly SeedLevel[], capacityBytes: number): Promise<VmDisk> {
  const top = levels.at(-1);
  if (top === undefined) throw new FerryError('INTERNAL', 'a seed without levels');
  const ds = datastores.get(spec.datastore);
  const delta = await createDeltaAt(ds, top.path, spec.path);
  if (delta.capacityBytes !== capacityBytes) {
    await delta.close();
    await ds.remove(spec.path).catch(() => undefined);
    throw new FerryError('MIGRATION_REFUSED', `the seed ${spec.datastore}:${top.path} holds ${delta.capacityBytes} bytes, the VM's disk ${capacityBytes}`);
  }
  return VmDisk.adopt(datastores, spec, delta);
}

/** How often a sweep tries again to remove a copy whose lease (this host's previous run's) has not expired yet. */
const SWEEP_RETRY_MS = 250;

/**
 * At host start: every disk copy an incoming migration noted and did not settle (the host was
 * killed mid-migration). A committed one is kept (the disk of a VM that committed here); any other
 * is removed — once this host's previous run's lease on it has expired, so in the background,
 * within `withinMs`. An unreadable commit record keeps the copy (it may have committed).
 */
export async function sweepIncomingCopies(store: HostStore, datastores: HostDatastores, withinMs: number, log: (line: string) => void, stopped: () => boolean): Promise<void> {
  const { copies, problems } = await store.incomingCopies();
  for (const p of problems) log(p);
  const removals: Promise<void>[] = [];
  for (const { id, spec } of copies) {
    const label = `incoming migration ${id.slice(0, 8)}: disk copy ${spec.datastore}:${spec.path}`;
    let outcome;
    try {
      outcome = await store.readMigrationOutcome(id);
    } catch (err) {
      log(`${label}: kept, its commit record cannot be read (${errorMessage(err)})`);
      continue;
    }
    if (outcome === 'committed') {
      log(`${label}: kept (the migration committed)`);
      await store.removeIncomingCopy(id);
      continue;
    }
    removals.push(removeWhenFree(datastores, spec, performance.now() + withinMs, stopped).then(async (done) => {
      if (!done) { log(`${label}: NOT removed: still locked; the next start tries again`); return; }
      await store.removeIncomingCopy(id);
      log(`${label}: removed (the migration never committed)`);
    }, (err: unknown) => { log(`${label}: NOT removed: ${errorMessage(err)}`); }));
  }
  await Promise.all(removals);
}

/** Removes the copy (already gone counts); false if its lease stayed live until `deadline`. */
async function removeWhenFree(datastores: HostDatastores, spec: DiskSpec, deadline: number, stopped: () => boolean): Promise<boolean> {
  for (;;) {
    try {
      await datastores.get(spec.datastore).remove(spec.path);
      return true;
    } catch (err) {
      if (isFerryError(err, 'NOT_FOUND')) return true;
      if (!isFerryError(err, 'DISK_LOCKED')) throw err;
    }
    if (stopped() || performance.now() >= deadline) return false;
    await sleep(SWEEP_RETRY_MS, undefined, { ref: false });
  }
}
