/**
 * A fleet for network-file-copy tests through a center: real `ferry host` processes joined to a center
 * (in-process, or a child process), mounting shared temporary directories as datastores, with short
 * lease timings so that a dead host's leases expire in about a second; source files of known content
 * (data and holes); and the checks every copy test makes — the target's bytes equal the source's, and
 * no staging file is left.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiB } from '../../src/lib/units.js';
import { LEASE_SUFFIX } from '../../src/storage/datastore.js';
import type { CenterClient } from '../../src/api/center-client.js';
import type { CenterTaskView } from '../../src/api/center-v1.js';
import { removeHostData, startHost, stopHost, until, type TestHost } from './hosts.js';
import { waitForEvent, type TestCenter } from './center.js';

/** Short leases: a killed copier's source and staging leases expire in about a second. */
export const COPY_LEASE_ARGS = ['--lease-duration', '1000ms', '--lease-renew', '200ms', '--lease-clock-skew', '100ms'];
/**
 * Leases for hosts that run VMs with disks (prepare-migration, cross-site): a host instruments a guest
 * image synchronously with the disk's lease held, which on a loaded 2-core machine blocks its renewals
 * for seconds (test/helpers/disk-faults.ts); a 1 s lease is lost then (LEASE_LOST in CI).
 */
export const VM_DISK_LEASE_ARGS = ['--lease-duration', '8000ms', '--lease-renew', '500ms', '--lease-clock-skew', '500ms'];
/** A copy through a center, hand-offs and restarts included, ends well within this on a loaded machine. */
export const COPY_TASK_TIMEOUT_MS = 120_000;

/** A source file: `sizeBytes` long, random data except for `holeBytes` of zeros in the middle (chunks that move no data). */
export interface SourceFile { readonly path: string; readonly sizeBytes: number; readonly holeBytes?: number }

export interface CopyDirs {
  readonly root: string;
  /** Datastore directory by name. */
  readonly dirs: ReadonlyMap<string, string>;
  dir(name: string): string;
  remove(): Promise<void>;
}

export async function copyDirs(names: readonly string[]): Promise<CopyDirs> {
  const root = await mkdtemp(join(tmpdir(), 'ferry-copy-'));
  const dirs = new Map<string, string>();
  for (const n of names) { const d = join(root, n); await mkdir(d); dirs.set(n, d); }
  return {
    root, dirs,
    dir: (n) => { const d = dirs.get(n); if (d === undefined) throw new Error(`no datastore dir ${n}`); return d; },
    remove: () => rm(root, { recursive: true, force: true }),
  };
}

/** Writes the files (a MiB at a time) into `dir`; answers each one's SHA-256. */
export async function writeSourceFiles(dir: string, files: readonly SourceFile[]): Promise<Map<string, string>> {
  const digests = new Map<string, string>();
  for (const f of files) {
    const path = join(dir, f.path);
    await mkdir(join(path, '..'), { recursive: true });
    const fh = await open(path, 'w');
    const hash = createHash('sha256');
    try {
      const holeStart = Math.floor((f.sizeBytes - (f.holeBytes ?? 0)) / 2);
      const holeEnd = holeStart + (f.holeBytes ?? 0);
      for (let off = 0; off < f.sizeBytes; off += MiB) {
        const len = Math.min(MiB, f.sizeBytes - off);
        const buf = off >= holeStart && off + len <= holeEnd ? Buffer.alloc(len) : randomBytes(len);
        await fh.write(buf, 0, len, off);
        hash.update(buf);
      }
    } finally {
      await fh.close();
    }
    digests.set(f.path, hash.digest('hex'));
  }
  return digests;
}

export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/**
 * Every file name under `dir` (recursively, reserved areas included) that is a copy's staging file.
 * Lease files are not counted: a host killed with SIGKILL while renewing a staging file's lease leaves
 * that renewal's temporary file (`….lck.<id>.tmp`), which the datastore never lists and a later lease
 * of that name does not need.
 */
export async function stagingFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true });
  return entries.filter((e) => e.includes('.ferry-copy-') && !e.includes(LEASE_SUFFIX));
}

/**
 * A host joined to a center (`hostArgs`: its join arguments, as TestCenter.hostArgs), mounting the given
 * datastores, with short leases; waits for its `host.connected` event after `afterId`. `rejoin`: a host
 * restarted on its data directory links with its stored credential instead of a join token.
 */
export async function startCopyHost(admin: CenterClient, hostArgs: (joinToken?: string) => string[], name: string, datastores: ReadonlyMap<string, string>, afterId: number,
  o: { dataDir?: string; port?: number; rejoin?: boolean; heard?: (sinceMs: number) => Promise<boolean>; leaseArgs?: readonly string[] } = {}): Promise<TestHost> {
  const joinToken = o.rejoin === true ? undefined : (await admin.createJoinToken()).token;
  const ds = [...datastores].flatMap(([n, d]) => ['--datastore', `${n}=${d}`]);
  const startedMs = Date.now();
  const h = await startHost(name, { args: [...hostArgs(joinToken), ...ds, ...(o.leaseArgs ?? COPY_LEASE_ARGS)], ...(o.dataDir !== undefined ? { dataDir: o.dataDir } : {}), ...(o.port !== undefined ? { port: o.port } : {}) });
  // A host restarted before the center marked it disconnected stays `connected` (no event): `heard` says when its heartbeat arrived.
  const heard = o.heard;
  if (heard !== undefined) await until(() => heard(startedMs), `the center to hear from ${name} again`, 30_000);
  else await waitForEvent(admin, afterId, (e) => e.kind === 'host.connected' && e.subject === `host:${name}`, 30_000);
  return h;
}

/** One host of a site: its name, its site and the datastore (a directory of `fs`) it mounts. */
export interface SiteHost { readonly name: string; readonly site: string; readonly datastore: string }

/**
 * One copy host per entry, joined to `tc` with `--site`, each mounting its datastore, with VM-disk
 * leases; resolves once the last one reported its path drivers (the center can then route over paths).
 */
export async function startSiteHosts(tc: TestCenter, fs: CopyDirs, hosts: Map<string, TestHost>, sites: readonly SiteHost[]): Promise<void> {
  for (const { name, site, datastore } of sites) {
    hosts.set(name, await startCopyHost(tc.admin, (t) => [...tc.hostArgs(t), '--site', site], name, new Map([[datastore, fs.dir(datastore)]]), await tc.center.store.latestEventId(), { leaseArgs: VM_DISK_LEASE_ARGS }));
  }
  const last = sites.at(-1)?.name ?? '';
  await until(async () => (await tc.center.store.getHost(last)).dataPlane !== null, `${last} reported its path drivers`);
}

/** Tears a center-level fleet down: every host killed and its data removed, then the center, then the datastore directories. */
export async function stopCenterFleet(hosts: Iterable<TestHost>, tc: TestCenter, fs?: CopyDirs): Promise<void> {
  for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
  await tc.close();
  await fs?.remove();
}

/**
 * Waits for a copy task's `copy.progress` event in which `host`'s own part has sent more than `minBytes`
 * of data (the copy is really under way there: the task's line alone may be ahead of a part just begun)
 * and its durable boundary is past `minDurableBytes` of the first file.
 */
export async function copyProgressed(admin: CenterClient, task: CenterTaskView, afterId: number, host: string, minBytes: number, minDurableBytes = 0): Promise<void> {
  try {
    await waitForEvent(admin, afterId, (e) => {
      if (e.kind !== 'copy.progress' || e.subject !== task.target) return false;
      const p = e.payload as { host: string; sentBytes: number; boundary: { fileIndex: number; offsetBytes: number } };
      return p.host === host && p.sentBytes > minBytes && (p.boundary.fileIndex > 0 || p.boundary.offsetBytes > minDurableBytes);
    }, 60_000);
  } catch (err) {
    // Say what became of the task instead: the reason it never got there.
    const t = await admin.task(task.id);
    throw new Error(`copy task ${t.id} made no progress past ${minBytes} bytes on ${host}: ${t.state} (${t.phase}) ${JSON.stringify(t.error)}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** What a copy task's result says (the fields the tests read). */
export interface CopyResult {
  readonly copyId: string;
  readonly form: 'local' | 'remote';
  readonly verified: boolean;
  readonly handoffs: number;
  readonly totalBytes: number;
  readonly files: { path: string; sizeBytes: number; sourceDigest: string; targetDigest: string }[];
  readonly segments: { host: string; epoch: number; from: { fileIndex: number; offsetBytes: number }; to: { fileIndex: number; offsetBytes: number }; sentBytes: number }[];
  readonly isolation?: { mode: string };
}
