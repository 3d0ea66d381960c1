/**
 * bench:disk, part `migrate`: live migration of a running VM with a disk to a host that does not
 * mount the disk's datastore (the disk is copied live, in the same rounds as memory), against the
 * raw socket time for the same bytes measured in the same run.
 *
 * Workload: a disk of `diskBytes` (1 GiB by default) with its first `allocatedBytes` (half) written
 * with pseudo-random content through VmdkDisk before the hosts start; the kvlog guest runs on it
 * appending checksummed records (3.2 MB/s) from the start of the disk all the time, so
 * the guest writes during the whole migration. Two real host processes on loopback, each with its
 * own datastore directory.
 *
 * Verified: the migration succeeded (the engine compared the disk digests at COMMIT); after it, with
 * both copies at rest, everything beyond the guest's log area reads the same on the source's disk
 * (left on its datastore) and the target's (the guest kept appending on the target, so the log
 * area differs by design); `qemu-img check` passes on the target's; and the guest, restarted on the
 * target, verifies its whole log — at least every record it had flushed.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { MiB, formatBytes } from '../src/lib/units.js';
import { randomToken } from '../src/host/agent.js';
import { spawnHost, stopHosts, type LocalHost } from '../src/cli/local-hosts.js';
import { LocalFile } from '../src/storage/local-file.js';
import { VmdkDisk } from '../src/storage/vmdk/disk.js';
import { rawBaseline } from './raw-socket.js';

const run = promisify(execFile);

/** The guest's RAM: kvlog keeps its log in RAM, so this bounds how long it can append. */
const GUEST_MEMORY_BYTES = 64 * MiB;
/** Pre-fill writes in chunks of this size. */
const FILL_CHUNK_BYTES = 4 * MiB;
/** How long the guest runs on the target before it is stopped for the checks. */
const BOOT_TIMEOUT_MS = 60_000;
/** kvlog keeps a RAM copy of its whole log: its record limit must fit the guest's RAM (1 MiB left for the rest). */
const KVLOG_RECORD_BYTES = 64;
const KVLOG_MAX_RECORDS = Math.floor((GUEST_MEMORY_BYTES - 1 * MiB) / KVLOG_RECORD_BYTES);
/** 50,000 records/s = 3.2 MB/s of guest writes: the log does not fill up before the migration ends. */
const KVLOG_CMDLINE = `max=${KVLOG_MAX_RECORDS} flush=256 rate=50000`;

export interface MigratePartOptions {
  readonly diskBytes: number;
  readonly allocatedBytes: number;
  readonly channels: number;
}

export interface MigratePartResult {
  readonly headline: { diskMigrateMs: number; rawSocketMs: number; diskMigrateVsRaw: number; verified: boolean };
  readonly breakdown: Record<string, unknown>;
  readonly verified: boolean;
  readonly summary: string;
}

/** Writes `allocatedBytes` of pseudo-random content from offset 0 (what a half-full disk holds). */
async function prefill(path: string, diskBytes: number, allocatedBytes: number): Promise<void> {
  const disk = await VmdkDisk.create(await LocalFile.open(path, { create: true }, path), { capacityBytes: diskBytes });
  try {
    const chunk = Buffer.alloc(FILL_CHUNK_BYTES);
    let x = 0x9e3779b9;
    for (let at = 0; at < allocatedBytes; at += FILL_CHUNK_BYTES) {
      // xorshift32: cheap, incompressible enough that nothing can skip it as zeros.
      for (let i = 0; i < chunk.length; i += 4) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; chunk.writeUInt32LE(x >>> 0, i); }
      await disk.write(at, chunk.subarray(0, Math.min(FILL_CHUNK_BYTES, allocatedBytes - at)));
    }
    await disk.flush();
  } finally {
    await disk.close();
  }
}

/** True when [fromBytes, capacity) reads the same on both disks (opened read-only). */
async function sameContent(pathA: string, pathB: string, fromBytes: number, capacityBytes: number): Promise<boolean> {
  const open = async (p: string): Promise<VmdkDisk> => VmdkDisk.open(await LocalFile.open(p, { readOnly: true }, p));
  return readsTheSame(await open(pathA), await open(pathB), fromBytes, capacityBytes);
}

/** True when [fromBytes, capacity) of the two disks (or chains) reads the same; closes both (bench:crosssite uses it too). */
export async function readsTheSame(a: VmdkDisk, b: VmdkDisk, fromBytes: number, capacityBytes: number): Promise<boolean> {
  try {
    const bufA = Buffer.alloc(FILL_CHUNK_BYTES);
    const bufB = Buffer.alloc(FILL_CHUNK_BYTES);
    for (let at = fromBytes; at < capacityBytes; at += FILL_CHUNK_BYTES) {
      const n = Math.min(FILL_CHUNK_BYTES, capacityBytes - at);
      await a.read(at, bufA.subarray(0, n));
      await b.read(at, bufB.subarray(0, n));
      if (!bufA.subarray(0, n).equals(bufB.subarray(0, n))) return false;
    }
    return true;
  } finally {
    await a.close();
    await b.close();
  }
}

/** The last number `re` captured in `text` (a guest's console), -1 if none. */
export function lastNumber(text: string, re: RegExp): number {
  return Number([...text.matchAll(re)].at(-1)?.[1] ?? -1);
}

export async function runMigratePart(opts: MigratePartOptions, workDir: string, log: (line: string) => void): Promise<MigratePartResult> {
  const dirs = { a: join(workDir, 'host-a'), b: join(workDir, 'host-b'), dsA: join(workDir, 'ds-a'), dsB: join(workDir, 'ds-b') };
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
  log(`migrate: pre-filling ${formatBytes(opts.allocatedBytes)} of a ${formatBytes(opts.diskBytes)} disk...`);
  await prefill(join(dirs.dsA, 'bench.vmdk'), opts.diskBytes, opts.allocatedBytes);

  const token = randomToken();
  const hosts: LocalHost[] = [];
  try {
    hosts.push(await spawnHost('a', dirs.a, token, { args: ['--datastore', `ds=${dirs.dsA}`] }));
    hosts.push(await spawnHost('b', dirs.b, token, { args: ['--datastore', `ds=${dirs.dsB}`] }));
    const [a, b] = hosts as [LocalHost, LocalHost];
    const image = await readFile(fileURLToPath(new URL('../guests/kvlog.wasm', import.meta.url)));
    await a.client.createVm({
      name: 'bench', imageBase64: image.toString('base64'), memoryBytes: GUEST_MEMORY_BYTES, vcpus: 1, cmdline: KVLOG_CMDLINE,
      disk: { datastore: 'ds', path: 'bench.vmdk' }, start: true,
    });
    await a.client.waitForConsole('bench', 'kvlog: flushed', BOOT_TIMEOUT_MS);
    log('migrate: a -> b, the disk copied live while kvlog appends...');
    const { migrationId } = await a.client.migrate('bench', { to: b.url, disk: { datastore: 'ds' }, options: { dataChannels: opts.channels } });
    const record = await a.client.waitForMigration(migrationId);
    if (record.outcome !== 'succeeded') throw new Error(`migration ${record.outcome}: ${record.error?.code}: ${record.error?.message}`);
    for (const r of record.rounds) log(`  round ${r.round}: memory ${formatBytes(r.bytes)} + disk ${formatBytes(r.diskBytes)} in ${r.durationMs.toFixed(0)} ms, dirty after ${formatBytes(r.dirtyBytesAfter)}, throttle ${r.throttlePermille / 10}%`);
    const movedBytes = record.transferredBytes + (record.disk?.sentBytes ?? 0);

    // The checks, with both copies at rest.
    const flushed = lastNumber(await b.client.consoleText('bench'), /kvlog: flushed (\d+) records/g);
    await b.client.stopVm('bench');
    const compare = await sameContent(join(dirs.dsA, 'bench.vmdk'), join(dirs.dsB, 'bench.vmdk'), KVLOG_MAX_RECORDS * KVLOG_RECORD_BYTES, opts.diskBytes);
    const check = await run('qemu-img', ['check', join(dirs.dsB, 'bench.vmdk')]).then(() => true, () => false);
    await b.client.startVm('bench');
    await b.client.waitForConsole('bench', 'records, all verified', BOOT_TIMEOUT_MS);
    const found = lastNumber(await b.client.consoleText('bench'), /kvlog: found (\d+) records, all verified/g);
    await b.client.stopVm('bench');
    const verified = record.verified && compare && check && found >= flushed && flushed > 0;

    log(`migrate: raw baseline, ${formatBytes(movedBytes)} over one loopback connection...`);
    const rawSocketMs = await rawBaseline(Math.ceil(movedBytes / 65536) * 65536, 'buffer');
    const ratio = record.totalMs / rawSocketMs;
    return {
      headline: { diskMigrateMs: Math.round(record.totalMs), rawSocketMs: Math.round(rawSocketMs), diskMigrateVsRaw: Number(ratio.toFixed(2)), verified },
      verified,
      breakdown: {
        diskBytes: opts.diskBytes, allocatedBytes: opts.allocatedBytes, diskSentBytes: record.disk?.sentBytes ?? 0, memorySentBytes: record.transferredBytes,
        rounds: record.rounds.map((r) => ({ round: r.round, memoryBytes: r.bytes, diskBytes: r.diskBytes, durationMs: Math.round(r.durationMs), dirtyBytesAfter: r.dirtyBytesAfter, throttlePermille: r.throttlePermille })),
        engineDowntimeMs: record.engineDowntimeMs, guestDowntimeMs: record.guestDowntimeMs, switchoverMs: record.switchoverMs,
        checks: { sameBeyondLogArea: compare, qemuImgCheckOk: check, recordsFlushedBeforeStop: flushed, recordsVerifiedAtReboot: found },
      },
      summary: `migrate ${formatBytes(movedBytes)} (disk ${formatBytes(record.disk?.sentBytes ?? 0)}) in ${record.totalMs.toFixed(0)} ms vs raw socket ${rawSocketMs.toFixed(0)} ms = ${ratio.toFixed(2)}x, guest downtime ${record.guestDowntimeMs?.toFixed(1) ?? 'n/a'} ms, verified ${verified}`,
    };
  } finally {
    await stopHosts(hosts, 'SIGTERM');
  }
}
