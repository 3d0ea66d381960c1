/**
 * The host's data directory: VM definitions (config + image), snapshots written at shutdown, and
 * the outcome of incoming migrations (so a restarted target can still answer "did it commit?").
 *
 *   <data>/vms/<name>/config.json   the VM's configuration (and whether it was running at shutdown)
 *   <data>/vms/<name>/image.wasm    the original guest image
 *   <data>/vms/<name>/shutdown.snap snapshot saved on SIGTERM; consumed (deleted) by the next start
 *   <data>/migrations/<id>.json     incoming migration outcome: committed | aborted
 *   <data>/migrations/<id>.copy.json an incoming migration's disk copy (datastore + path), from before
 *                                   it is created until it is removed or its VM is saved here
 */
import { mkdir, readFile, readdir, rename, rm, writeFile, open } from 'node:fs/promises';
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { DiskSpec } from './vm-disk.js';
import { FerryError, errnoCode, errorMessage } from '../lib/errors.js';
import { cmdlineSchema, granularitySchema, ramBytesSchema, vcpusSchema, vmNameSchema } from '../lib/limits.js';
import { MAX_HANG_TIMEOUT_MS, MAX_STEP_TARGET_US, MIN_HANG_TIMEOUT_MS, MIN_STEP_TARGET_US, type VmConfig } from '../vmm/config.js';
import type { StoredOutcome as MigrationOutcome } from '../migration/target/hooks.js';
import { pathRecordSchema, type PathRecord } from '../dataplane/path/spec.js';

// The VM bounds are the runtime's own (src/lib/limits.ts): a config the runtime accepted is one the
// store reloads, and a hand-edited one the runtime would refuse is caught here, at load.
/** Datastore names and paths are bounded by the datastore's own rules; this only keeps a hand-edited file sane. */
const MAX_DISK_FIELD_CHARS = 4096;

const configSchema = z.object({
  name: vmNameSchema(),
  memoryBytes: ramBytesSchema(),
  vcpus: vcpusSchema(),
  granularityBytes: granularitySchema(),
  cmdline: cmdlineSchema(),
  hangTimeoutMs: z.number().min(MIN_HANG_TIMEOUT_MS).max(MAX_HANG_TIMEOUT_MS),
  stepTargetUs: z.number().min(MIN_STEP_TARGET_US).max(MAX_STEP_TARGET_US),
  runningAtShutdown: z.boolean(),
  /** The VM's disk (datastore name + path inside it), if it has one. */
  disk: z.object({ datastore: z.string().min(1).max(MAX_DISK_FIELD_CHARS), path: z.string().min(1).max(MAX_DISK_FIELD_CHARS) }).strict().optional(),
}).strict();

export interface StoredVm {
  readonly config: VmConfig;
  readonly image: Uint8Array;
  readonly snapshotPath: string | null;
  readonly runningAtShutdown: boolean;
  readonly disk?: DiskSpec;
}

async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, data);
  const fh = await open(tmp, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
  await rename(tmp, path);
}

/** writeAtomic with direct system calls, for the one write on the switch-over path. */
function writeAtomicSync(path: string, data: string): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

const outcomeRecordSchema = z.object({ outcome: z.enum(['committed', 'aborted']) }).loose();
const copyRecordSchema = z.object({ datastore: z.string().min(1).max(MAX_DISK_FIELD_CHARS), path: z.string().min(1).max(MAX_DISK_FIELD_CHARS) }).strict();
const COPY_RECORD = /^([0-9a-f]{32})\.copy\.json$/;

/** Not a migration id (those are 32 hex digits), so never mistaken for a commit record. */
const WRITE_PROBE_ID = 'write-probe';

export class HostStore {
  constructor(readonly dataDir: string) {}

  private vmDir(name: string): string { return join(this.dataDir, 'vms', name); }
  snapshotPath(name: string): string { return join(this.vmDir(name), 'shutdown.snap'); }

  async init(): Promise<void> {
    try {
      await mkdir(join(this.dataDir, 'vms'), { recursive: true });
      await mkdir(join(this.dataDir, 'migrations'), { recursive: true });
      await mkdir(join(this.dataDir, 'paths'), { recursive: true });
      // A durable write now, where an incoming migration's commit record will go: a read-only or
      // full data directory fails at start-up rather than mid-migration, and the write path (run
      // once per migration, with the guest stunned) is not cold the first time it matters.
      this.writeMigrationOutcome(WRITE_PROBE_ID, 'aborted', '');
      await rm(join(this.dataDir, 'migrations', `${WRITE_PROBE_ID}.json`), { force: true });
    } catch (err) {
      throw new FerryError('STORE_IO', `cannot use data directory ${this.dataDir}: ${errorMessage(err)}`);
    }
  }

  async saveVm(config: VmConfig, image: Uint8Array | null, runningAtShutdown = false, disk: DiskSpec | null = null): Promise<void> {
    const dir = this.vmDir(config.name);
    try {
      await mkdir(dir, { recursive: true });
      if (image !== null) await writeAtomic(join(dir, 'image.wasm'), image);
      await writeAtomic(join(dir, 'config.json'), JSON.stringify({ ...config, runningAtShutdown, ...(disk !== null ? { disk } : {}) }, null, 2));
    } catch (err) {
      throw new FerryError('STORE_IO', `cannot save VM ${config.name} in ${dir}: ${errorMessage(err)}`);
    }
  }

  async removeVm(name: string): Promise<void> {
    await rm(this.vmDir(name), { recursive: true, force: true });
  }

  async removeSnapshot(name: string): Promise<void> {
    await rm(this.snapshotPath(name), { force: true });
  }

  async loadAll(): Promise<{ vms: StoredVm[]; problems: string[] }> {
    const vms: StoredVm[] = [];
    const problems: string[] = [];
    const names = await readdir(join(this.dataDir, 'vms')).catch(() => [] as string[]);
    for (const name of names.sort()) {
      const dir = this.vmDir(name);
      try {
        const parsed = configSchema.parse(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')));
        const image = new Uint8Array(await readFile(join(dir, 'image.wasm')));
        const snap = this.snapshotPath(name);
        const hasSnap = await readFile(snap).then(() => true, () => false);
        const { runningAtShutdown, disk, ...config } = parsed;
        vms.push({ config, image, snapshotPath: hasSnap ? snap : null, runningAtShutdown, ...(disk !== undefined ? { disk } : {}) });
      } catch (err) {
        problems.push(`VM ${name} in ${dir} cannot be loaded: ${errorMessage(err)}`);
      }
    }
    return { vms, problems };
  }

  /**
   * The commit record is written with synchronous calls: it sits on the switch-over path with the
   * guest stunned, and five thread-pool round trips (write, open, fsync, close, rename) cost
   * 2.9-3.5 ms there against ~1-2 ms for the same calls made directly; blocking the event loop
   * for that long is harmless while the only VM that matters is waiting for exactly this.
   * The directory is not fsynced after the rename: a process crash keeps the page cache (the record
   * survives), and a power loss that drops the rename also kills the VM the record is about, so the
   * restarted host answering "unknown" (the source resumes) still leaves the VM in one place.
   */
  writeMigrationOutcome(id: string, outcome: MigrationOutcome, vmName: string): void {
    writeAtomicSync(join(this.dataDir, 'migrations', `${id}.json`), JSON.stringify({ id, outcome, vmName, at: new Date().toISOString() }));
  }

  /** Notes, durably, the disk copy incoming migration `id` is about to create. */
  async writeIncomingCopy(id: string, spec: DiskSpec): Promise<void> {
    try {
      await writeAtomic(join(this.dataDir, 'migrations', `${id}.copy.json`), JSON.stringify({ datastore: spec.datastore, path: spec.path }));
    } catch (err) {
      throw new FerryError('STORE_IO', `cannot note the disk copy of migration ${id}: ${errorMessage(err)}`);
    }
  }

  async removeIncomingCopy(id: string): Promise<void> {
    await rm(join(this.dataDir, 'migrations', `${id}.copy.json`), { force: true });
  }

  /**
   * Notes, durably and before anything is created, a virtual path this host is about to open (no
   * secret in it: only what removing its parts needs), so that a host restarted after a crash removes
   * what the path left behind (src/host/paths.ts).
   */
  async writePathRecord(record: PathRecord): Promise<void> {
    try {
      await writeAtomic(join(this.dataDir, 'paths', `${record.pathId}.json`), JSON.stringify(record));
    } catch (err) {
      throw new FerryError('STORE_IO', `cannot note virtual path ${record.pathId.slice(0, 8)}: ${errorMessage(err)}`);
    }
  }

  async removePathRecord(pathId: string): Promise<void> {
    await rm(join(this.dataDir, 'paths', `${pathId}.json`), { force: true });
  }

  /** Paths noted and not removed (a crash left them); a malformed note is a problem (and is removed: it names nothing usable). */
  async pathRecords(): Promise<{ records: PathRecord[]; problems: string[] }> {
    const records: PathRecord[] = [];
    const problems: string[] = [];
    const dir = join(this.dataDir, 'paths');
    for (const f of (await readdir(dir).catch(() => [] as string[])).sort()) {
      if (!f.endsWith('.json')) continue;
      try {
        records.push(pathRecordSchema.parse(JSON.parse(await readFile(join(dir, f), 'utf8'))));
      } catch (err) {
        problems.push(`the path note ${join(dir, f)} cannot be read (removed): ${errorMessage(err)}`);
        await rm(join(dir, f), { force: true });
      }
    }
    return { records, problems };
  }

  /** Disk copies noted and not yet forgotten (a crash left them); a malformed note is a problem, not a copy. */
  async incomingCopies(): Promise<{ copies: { id: string; spec: DiskSpec }[]; problems: string[] }> {
    const copies: { id: string; spec: DiskSpec }[] = [];
    const problems: string[] = [];
    const dir = join(this.dataDir, 'migrations');
    for (const f of (await readdir(dir).catch(() => [] as string[])).sort()) {
      const id = COPY_RECORD.exec(f)?.[1];
      if (id === undefined) continue;
      try {
        copies.push({ id, spec: copyRecordSchema.parse(JSON.parse(await readFile(join(dir, f), 'utf8'))) });
      } catch (err) {
        problems.push(`the disk copy note ${join(dir, f)} cannot be read: ${errorMessage(err)}`);
      }
    }
    return { copies, problems };
  }

  /**
   * The recorded outcome of incoming migration `id`; null only when there is no record. Any other
   * failure (EIO, EACCES, EMFILE, EISDIR, a malformed record) throws STORE_IO: answering "no
   * record" then could make a source in doubt resume a VM that already runs here.
   */
  async readMigrationOutcome(id: string): Promise<MigrationOutcome | null> {
    if (!/^[0-9a-f]{32}$/.test(id)) return null;
    const path = join(this.dataDir, 'migrations', `${id}.json`);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return null;
      throw new FerryError('STORE_IO', `cannot read the record of migration ${id} (${path}): ${errorMessage(err)}`);
    }
    let parsed: unknown;
    try { parsed = JSON.parse(text); } catch (err) {
      throw new FerryError('STORE_IO', `the record of migration ${id} (${path}) is not JSON: ${errorMessage(err)}`);
    }
    const r = outcomeRecordSchema.safeParse(parsed);
    if (!r.success) throw new FerryError('STORE_IO', `the record of migration ${id} (${path}) is malformed: ${r.error.issues[0]?.message ?? ''}`);
    return r.data.outcome;
  }

}
