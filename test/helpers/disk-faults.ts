/**
 * The world of the disk migration fault tests (test/e2e/disk-migration-faults.test.ts and the
 * cross-site ones): a source A and a target B, each a real `ferry host` process, the kvlog guest
 * writing its checksummed log on a disk, faults landed by failpoints, and the checks every case ends
 * with — the VM running in exactly one place, never two writers of the disk, the disk consistent.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { copyFile, mkdtemp, readdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dropHosts, startHost, stopHost, until, waitMigration, waitPhase, type TestHost } from './hosts.js';
import { vmRequest } from './guests.js';
import { qemuImgOk } from './vmdk.js';
import { failpointHitLine } from '../../src/lib/failpoints.js';
import { isFerryError } from '../../src/lib/errors.js';
import { MiB } from '../../src/lib/units.js';
import { fileDigest } from '../../src/nfc/file-digest.js';
import { LocalFile } from '../../src/storage/local-file.js';
import { readLease, type LeaseRecord, type LeaseTiming } from '../../src/storage/lease.js';
import type { MigrationPhase, MigrationRecord } from '../../src/migration/record.js';
import type { MigrationOptions } from '../../src/migration/options.js';

/** shared: one datastore both mount; copy: the disk is copied live; seeded: copied live over a seed of its base (docs/design/cross-site.md). */
export type Mode = 'shared' | 'copy' | 'seeded';
export const MODES: readonly Mode[] = ['shared', 'copy'];

/**
 * Short leases: a dead host's lease is broken ~8.5 s after its last heartbeat. Not shorter: a host
 * instruments a guest image synchronously with the disk's lease held (a restarted host's first
 * start of a VM), which on a loaded 2-core machine blocked the heartbeat for over 4.5 s; 16
 * heartbeats per lease.
 */
export const LEASE: LeaseTiming = { durationMs: 8_000, renewIntervalMs: 500, clockSkewMs: 500 };
export const LEASE_ARGS = ['--lease-duration', `${LEASE.durationMs}ms`, '--lease-renew', `${LEASE.renewIntervalMs}ms`, '--lease-clock-skew', `${LEASE.clockSkewMs}ms`];
/** Kill and drop faults fail a request at once; the timeouts are generous so a loaded machine does not turn slowness into another failure. */
export const FAULT_OPTS: MigrationOptions = { requestTimeoutMs: 10_000, inDoubtTimeoutMs: 30_000 };
export const DISK = 'v.vmdk';
export const DISK_BYTES = 32 * MiB;
/** kvlog appends 5000 records/s and flushes every 64; 2048 flushed records fill the first disk blocks for good (see the corrupt-block case). */
export const KV = { memoryBytes: 8 * MiB, vcpus: 1, cmdline: 'max=100000 flush=64 rate=5000' };
export const FLUSHED_BEFORE_MIGRATING = 2048;
/** Bound on waiting for a VM's boot-time scan, a lease to change hands (a lease duration and more), a copy to be removed. */
export const WAIT_MS = 30_000;

/**
 * One test's world: a source A and a target B, each a real `ferry host` process. Shared mode: both
 * mount one directory (B under another name: the datastore's id makes it shared). Copy mode: each
 * has its own directory named ds1, and the disk is copied to B's. Seeded mode: as copy, after a
 * snapshot on A whose base was copied to B's datastore and recorded there as the VM's seed.
 */
export interface Rig {
  readonly mode: Mode;
  readonly base: string;
  /** A's datastore directory: the VM's disk (in shared mode also B's). */
  readonly dsA: string;
  /** B's datastore directory (the same as dsA in shared mode). */
  readonly dsB: string;
  readonly hosts: TestHost[];
  a: TestHost;
  b: TestHost;
  /** The path of the VM's top disk when it migrates (seeded: the snapshot's new delta). */
  disk: string;
}

const rigs = new Map<string, Rig>();
/** The test's hosts stopped and its directories removed: each file runs `afterEach(dropRig)`. */
export async function dropRig(t: { readonly name: string }): Promise<void> {
  const r = rigs.get(t.name);
  rigs.delete(t.name);
  if (r !== undefined) await dropHosts(t.name, r.hosts, r.base);
}

export function hostArgs(r: Pick<Rig, 'mode' | 'dsA' | 'dsB'>, name: 'a' | 'b'): string[] {
  const ds = name === 'a' ? ['--datastore', `ds1=${r.dsA}`] : r.mode === 'shared' ? ['--datastore', `san=${r.dsA}`] : ['--datastore', `ds1=${r.dsB}`];
  return [...ds, ...LEASE_ARGS];
}

/** Starts A and B (with their failpoints), creates VM v with a new disk on A and waits until the guest has flushed FLUSHED_BEFORE_MIGRATING records. */
export async function rig(t: TestContext, mode: Mode, failpoints: { a?: string; b?: string } = {}): Promise<Rig> {
  const base = await mkdtemp(join(tmpdir(), 'ferry-disk-faults-'));
  const dsA = await mkdtemp(join(base, 'dsA-'));
  const dsB = mode === 'shared' ? dsA : await mkdtemp(join(base, 'dsB-'));
  const hosts: TestHost[] = [];
  const partial = { mode, base, dsA, dsB, hosts, disk: DISK };
  // Registered before any host starts: afterEach cleans up whatever got started.
  rigs.set(t.name, partial as Rig);
  const start = async (name: 'a' | 'b'): Promise<TestHost> => {
    const fp = failpoints[name];
    const h = await startHost(name, { args: hostArgs(partial, name), ...(fp !== undefined ? { failpoints: fp } : {}) });
    hosts.push(h);
    return h;
  };
  const [a, b] = await Promise.all([start('a'), start('b')]);
  const r: Rig = Object.assign(partial, { a, b });
  rigs.set(t.name, r);
  await a.client.createVm(await vmRequest('v', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: DISK, sizeBytes: DISK_BYTES }, start: true }));
  await until(async () => await flushed(a) >= FLUSHED_BEFORE_MIGRATING, `${FLUSHED_BEFORE_MIGRATING} records flushed on a`, WAIT_MS);
  if (mode === 'seeded') await seed(r);
  return r;
}

/**
 * Seeded mode: the VM's disk is snapshotted on A (its writes go to a new delta), the base is copied to
 * B's datastore and recorded there as v's seed with the source file's digest — what a prepare-migration
 * leaves (tested through the center in test/e2e/cross-site.test.ts).
 */
async function seed(r: Rig): Promise<void> {
  const snap = await r.a.client.snapshotVm('v');
  assert.equal(snap.snapshot.path, DISK, 'the snapshot made the disk a read-only base');
  r.disk = snap.top.path;
  await copyFile(join(r.dsA, DISK), join(r.dsB, DISK));
  const fileBytes = (await stat(join(r.dsA, DISK))).size;
  const file = await LocalFile.open(join(r.dsA, DISK), { readOnly: true }, DISK);
  let digest: string;
  try { digest = await fileDigest(file, fileBytes); } finally { await file.close(); }
  const datastoreId = (await r.a.client.listDatastores()).find((d) => d.name === 'ds1')?.id ?? '';
  await r.b.client.putSeeds('ds1', 'v', {
    levels: [{ path: DISK, cid: snap.snapshot.cid, parentCid: 'ffffffff', capacityBytes: DISK_BYTES, fileBytes, digest, source: { datastoreId, path: DISK } }],
    taskId: null,
  });
}

/** Seeded mode: the seed is still on B, whole, and still recorded as v's (a failed migration never harms it). */
export async function assertSeedKept(r: Rig): Promise<void> {
  if (r.mode !== 'seeded') return;
  const seeds = await r.b.client.seeds('ds1', 'v');
  assert.deepEqual(seeds.manifest.levels.map((l) => l.path), [DISK], 'v\'s seed is still recorded on b');
  const file = await LocalFile.open(join(r.dsB, DISK), { readOnly: true }, DISK);
  try {
    assert.equal(await fileDigest(file, (await stat(join(r.dsB, DISK))).size), seeds.manifest.levels[0]?.digest, 'the seed file is whole');
  } finally {
    await file.close();
  }
}

/** Restarts a killed host on its data directory and port (the source's in-doubt poll finds it there). */
export async function restart(r: Rig, h: TestHost): Promise<TestHost> {
  assert.ok(isDead(h), `${h.name} is down before it is restarted`);
  const again = await startHost(h.name, { dataDir: h.dataDir, port: h.port, args: hostArgs(r, h.name as 'a' | 'b') });
  r.hosts.push(again);
  if (h === r.a) r.a = again; else r.b = again;
  return again;
}

export async function kill(h: TestHost): Promise<void> {
  await stopHost(h, 'SIGKILL');
}

export function isDead(h: TestHost): boolean {
  return h.child.exitCode !== null || h.child.signalCode !== null;
}

/**
 * Waits for failpoint `name` to be hit on `h` — the proof that the fault lands where it names —
 * and fails at once, with the migration's outcome, if the migration ended without reaching it.
 */
export async function hit(r: Rig, id: string, h: TestHost, name: string, kind: string): Promise<void> {
  const line = failpointHitLine(name, kind);
  await until(async () => {
    if (h.log().includes(line)) return true;
    // The source may be the one that was hit (and is dying): one that does not answer has not ended the migration.
    const ended: MigrationRecord | null = isDead(r.a) ? null : await r.a.client.migration(id).then((m) => m.record, () => null);
    if (ended !== null && !h.log().includes(line)) assert.fail(`the migration ended (${ended.outcome}: ${ended.error?.code ?? ''} ${ended.error?.message ?? ''}) before failpoint ${name} was hit`);
    return false;
  }, `failpoint ${name} on ${h.name}`, 60_000);
}

export async function migrate(r: Rig, options: MigrationOptions = {}): Promise<string> {
  const req = { to: r.b.url, options: { ...FAULT_OPTS, ...options }, ...(r.mode !== 'shared' ? { disk: { datastore: 'ds1' } } : {}) };
  return (await r.a.client.migrate('v', req)).migrationId;
}

/** Records the guest last said were flushed (durable on its disk). */
export async function flushed(h: TestHost, vm = 'v'): Promise<number> {
  return Number([...(await h.client.consoleText(vm)).matchAll(/kvlog: flushed (\d+) records/g)].at(-1)?.[1] ?? 0);
}

/** Boots (or reboots) the VM and returns how many records its boot-time scan found and verified on disk. */
export async function bootAndCount(h: TestHost, vm = 'v'): Promise<number> {
  const scans = (text: string): string[] => [...text.matchAll(/kvlog: found (\d+) records, all verified/g)].map((m) => m[1] ?? '');
  const before = scans(await h.client.consoleText(vm)).length;
  if ((await h.client.vm(vm)).state !== 'defined') await h.client.stopVm(vm);
  await startWhenDiskFree(h, vm);
  let found: string | undefined;
  await until(async () => { found = scans(await h.client.consoleText(vm))[before]; return found !== undefined; }, `the boot-time scan of ${vm} on ${h.name}`, WAIT_MS);
  return Number(found);
}

/**
 * Starts a defined VM. A host restarted after kill -9 finds its previous run's lease on the disk
 * (another host id) still live for up to a lease duration: DISK_LOCKED until it expires, then the
 * start takes it over.
 */
export async function startWhenDiskFree(h: TestHost, vm: string): Promise<void> {
  await until(async () => {
    try {
      await h.client.startVm(vm);
      return true;
    } catch (err) {
      if (!isFerryError(err, 'DISK_LOCKED')) throw err;
      return false;
    }
  }, `${vm} on ${h.name} to start once its disk's lease is free`, WAIT_MS);
}

/** The disk holds at least `atLeast` verified records after a reboot and passes qemu-img check (the VM is left stopped). */
export async function assertDiskIntact(h: TestHost, file: string, atLeast: number, vm = 'v'): Promise<void> {
  const found = await bootAndCount(h, vm);
  assert.ok(found >= atLeast, `the guest's boot-time scan found ${found} verified records, at least the ${atLeast} flushed before the fault`);
  await h.client.stopVm(vm);
  assert.match(await qemuImgOk('check', file), /No errors were found/);
}

export function liveLease(rec: LeaseRecord | null): LeaseRecord | null {
  return rec !== null && Date.now() <= rec.expiresAtMs + LEASE.clockSkewMs ? rec : null;
}

/**
 * Never two writers: the disk's lock names `owner` (null: nobody holds a live lease), and of the
 * hosts that mount the file and are up, only `owner` has a VM with it attached.
 */
export async function assertWriter(r: Rig, file: string, owner: TestHost | null): Promise<void> {
  const lease = liveLease(await readLease(file, LEASE));
  assert.equal(lease?.hostName ?? null, owner?.name ?? null, `the live lease of ${file}`);
  const mounting = r.mode === 'shared' ? [r.a, r.b] : file.startsWith(r.dsA) ? [r.a] : [r.b];
  for (const h of mounting) {
    if (isDead(h)) continue;
    const attached = (await h.client.listVms()).filter((v) => v.disk?.attached === true && v.disk.path === r.disk);
    assert.equal(attached.length, h === owner ? 1 : 0, `${h.name} has the disk attached ${h === owner ? 'once' : 'nowhere'}`);
  }
}

/** The VM runs, intact and with its disk attached, on `on`; no other host has it in its VM list or data directory. */
export async function assertRunsOnlyOn(r: Rig, on: TestHost): Promise<void> {
  const check = await on.client.verifyVm('v');
  assert.equal(check.state, 'running', `v runs on ${on.name}`);
  assert.equal(check.selfcheck, 0, `v is intact on ${on.name}`);
  assert.equal((await on.client.vm('v')).disk?.attached, true, `v's disk is attached on ${on.name}`);
  for (const h of [r.a, r.b].filter((x) => x !== on)) assertNotOn(h, await vmsOf(h));
}

export async function vmsOf(h: TestHost): Promise<string[]> {
  const listed = isDead(h) ? [] : (await h.client.listVms()).map((v) => v.name);
  const stored = await readdir(join(h.dataDir, 'vms')).catch(() => [] as string[]);
  return [...listed, ...stored].filter((n) => n === 'v');
}

export function assertNotOn(h: TestHost, vms: string[]): void {
  assert.deepEqual(vms, [], `no copy of v on ${h.name} (VM list or data directory)`);
}

/**
 * The copy and its lock on B's datastore. (Not a killed host's half-written lease renewal,
 * `<disk>.lck.<lease>.<generation>.tmp`: litter of any kill -9 mid-heartbeat, no lock, no disk.)
 */
export async function copyLeft(r: Rig): Promise<string[]> {
  return (await readdir(r.dsB)).filter((f) => f === r.disk || f === `${r.disk}.lck`);
}

/** Copy mode: nothing of an uncommitted copy is left on B's datastore. */
export async function assertNoCopy(r: Rig): Promise<void> {
  if (r.mode === 'shared') return;
  assert.deepEqual(await copyLeft(r), [], `the uncommitted copy was removed from ${r.b.name}'s datastore`);
}

/** Copy mode, target killed: the restarted target removes the copy it never committed (its lease, from the dead run, first has to expire). */
export async function assertCopyRemovedAfterRestart(r: Rig, existed: boolean): Promise<void> {
  if (r.mode === 'shared') return;
  // Its log line comes once the copy and its note are gone.
  if (existed) await r.b.waitForLog(`disk copy ds1:${r.disk}: removed (the migration never committed)`, WAIT_MS);
  await assertNoCopy(r);
}

export function assertFailedIn(rec: MigrationRecord, phase: MigrationPhase): void {
  const phases = rec.phases.map((p) => p.phase);
  assert.equal(phases.at(-1), 'rollback', `rolled back (phases ${phases.join(' > ')})`);
  assert.equal(phases.at(-2), phase, `the fault landed in ${phase} (phases ${phases.join(' > ')})`);
}

/**
 * The target, held in `phase` by its `hang` failpoint `fp` (the rig started it with `${fp}=hang`), is
 * killed there: the migration fails in that phase and rolls back. Returns its record.
 */
export async function killTargetHeldIn(r: Rig, fp: string, phase: MigrationPhase): Promise<MigrationRecord> {
  const id = await migrate(r);
  await hit(r, id, r.b, fp, 'hang');
  assert.equal((await r.a.client.migration(id)).phase, phase, `the source is in ${phase}`);
  await kill(r.b);
  const rec = await waitMigration(r.a, id);
  assert.equal(rec.outcome, 'failed', rec.error?.message);
  assertFailedIn(rec, phase);
  return rec;
}

/**
 * The target dies (its own `crash` failpoint) at or after COMMIT: the commit reply is lost, so the
 * source is in doubt — it asks the target and keeps the VM paused meanwhile. Returns the migration
 * and the records flushed before the switch-over (the VM is stunned: that count is final).
 */
export async function targetDiesAtCommit(r: Rig, failpoint: string): Promise<{ id: string; before: number }> {
  const id = await migrate(r);
  await hit(r, id, r.b, failpoint, 'crash');
  await r.b.exited;
  await waitPhase(r.a, id, 'resolve');
  assert.equal((await r.a.client.vm('v')).state, 'paused', 'in doubt: paused on the source');
  return { id, before: await flushed(r.a) };
}

/** The target is held (`delay` failpoint) at a commit step and the source dies meanwhile; returns the records flushed before (the VM was stunned). */
export async function sourceDiesWhileTargetAt(r: Rig, failpoint: string): Promise<number> {
  const id = await migrate(r);
  await hit(r, id, r.b, failpoint, 'delay');
  const before = await flushed(r.a);
  await kill(r.a);
  return before;
}

/**
 * A failure the target saw (a dropped connection, a refused COMMIT) and survived: the VM runs on the
 * source with its disk, the target discarded its part (a copy is removed: after its ERROR reply the
 * connection drops), and the disk holds every record the guest flushed.
 */
export async function assertStaysOnSource(r: Rig): Promise<void> {
  await assertRunsOnlyOn(r, r.a);
  await assertWriter(r, sourceFile(r), r.a);
  await r.b.waitForLog('partial VM discarded');
  await assertNoCopy(r);
  await assertDiskIntact(r.a, sourceFile(r), await flushed(r.a));
}

export function sourceFile(r: Rig): string { return join(r.dsA, r.disk); }

/** Failpoints on the target that hold it in each phase before any commit step; copy mode holds pre-copy in the middle of the disk blocks. */
export function holdIn(mode: Mode, phase: 'prepare' | 'precopy' | 'switchover'): string {
  if (phase === 'prepare') return 'target.prepare';
  if (phase === 'precopy') return mode !== 'shared' ? 'target.disk' : 'target.round';
  return 'target.state';
}

/** The killed source restarted on its data directory: v is defined there (not running), starts on its disk and finds every record flushed before the fault. */
export async function sourceComesBack(r: Rig, flushedBefore: number): Promise<void> {
  const a2 = await restart(r, r.a);
  const view = (await a2.client.listVms()).find((v) => v.name === 'v');
  assert.equal(view?.state, 'defined', 'the restarted source has v defined (a crash loses the running state, not the VM)');
  assertNotOn(r.b, await vmsOf(r.b));
  await assertDiskIntact(a2, sourceFile(r), flushedBefore);
  await assertWriter(r, sourceFile(r), a2);
}

/** Defines VM w on the committed disk on `h` once the dead run's lease on it has expired. */
export async function defineOnDisk(h: TestHost, datastore: string, path = DISK): Promise<void> {
  await until(async () => {
    try {
      await h.client.createVm(await vmRequest('w', 'kvlog', { ...KV, disk: { datastore, path } }));
      return true;
    } catch (err) {
      if (isFerryError(err, 'DISK_LOCKED')) return false;
      throw err;
    }
  }, `a VM on ${datastore}:${path} on ${h.name} once the lease is free`, WAIT_MS);
}
