/**
 * npm run bench:crosssite — a cross-site live migration with and without a pre-seeded base disk, in one
 * run (docs/design/cross-site.md).
 *
 * Workload: a 4 GiB VMDK base (`--base` = 3.8 GiB of it written with incompressible data through
 * VmdkDisk) shared by two VMs; each VM has its own delta over it holding `--delta` (200 MiB) of
 * incompressible data written after the "snapshot" (at 1 GiB into the disk, so the base's data under it
 * is shadowed), and the kvlog guest appends checksummed records to the start of its disk (3.2 MB/s)
 * during the whole run, so the guest writes during each migration. Two real host processes on loopback
 * stand for the two sites, each with its own datastore directory (nothing shared: every disk byte that
 * moves crosses between them).
 *
 * The seed: the base file is copied to the target's datastore and recorded there as VM `seeded`'s seed
 * (PUT /v1/datastores/ds/seeds/seeded) with its digest, as `ferry vm prepare-migration` does after its
 * network file copy (whose speed bench:nfc measures; the seeding is not part of what is timed here).
 * VM `unseeded` has no seed on the target: everything of its chain moves at migration time.
 *
 * Timed: each migration from the request to its end (the engine's totalMs: the switch-over and the
 * source's release are its last steps); bytes: memory and disk bytes the source sent; downtime: the
 * engine's and the guest's own (its clock gap). Verified: both migrations succeeded with their disk
 * digests compared at COMMIT; the seeded one skipped exactly the base (from its record); the target
 * verified the seed's digest (its log); each guest, restarted on the target, verifies its whole log; and
 * beyond the log area both targets' chains read the same as the source's.
 *
 * Flags: --base=3.8GiB --delta=200MiB --disk=4GiB --dir=PATH. Progress to stderr; the last stdout line
 * is one JSON object: seededBytes, unseededBytes, seededMs, unseededMs, seededGuestDowntimeMs,
 * unseededGuestDowntimeMs, bytesRatio, timeRatio, verified, and the details.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GiB, MiB, formatBytes, parseSizeBytes } from '../src/lib/units.js';
import { randomToken } from '../src/host/agent.js';
import { spawnHost, stopHosts, type LocalHost } from '../src/cli/local-hosts.js';
import { LocalDatastore } from '../src/storage/local-datastore.js';
import { createDeltaOver, openDatastoreChain } from '../src/storage/vmdk/chain-ops.js';
import { VmdkDisk } from '../src/storage/vmdk/disk.js';
import { LocalFile } from '../src/storage/local-file.js';
import { fileDigest } from '../src/nfc/file-digest.js';
import type { MigrationRecord } from '../src/migration/record.js';
import type { LeaseOwner } from '../src/storage/lease.js';
import { runBench, writeStdout } from './process.js';
import { lastNumber, readsTheSame } from './disk-migrate.js';

const run = promisify(execFile);
/** kvlog keeps its whole log in RAM: room for ~2 M records, over 3 minutes of appending at KVLOG_CMDLINE's rate. */
const GUEST_MEMORY_BYTES = 128 * MiB;
const WRITE_CHUNK_BYTES = 4 * MiB;
const BOOT_TIMEOUT_MS = 60_000;
/** kvlog keeps a RAM copy of its whole log: its record limit must fit the guest's RAM (1 MiB left for the rest). */
const KVLOG_RECORD_BYTES = 64;
const KVLOG_MAX_RECORDS = Math.floor((GUEST_MEMORY_BYTES - 1 * MiB) / KVLOG_RECORD_BYTES);
/** 10,000 records/s = 640 KB/s of guest writes: the guests write through both migrations (the log never fills up first). */
const KVLOG_CMDLINE = `max=${KVLOG_MAX_RECORDS} flush=256 rate=10000`;
/** Where each VM's delta data lies: past kvlog's log area, over base data (so the delta shadows it). */
const DELTA_AT_BYTES = 1 * GiB;
/** The bench process opens the datastore before the hosts do (to lay the disks out), under its own name. */
const BENCH_OWNER: LeaseOwner = { hostName: 'bench', hostId: 'bbbbbbbbbbbbbbb0' };
const BASE_PATH = 'base.vmdk';
const VMS = ['seeded', 'unseeded'] as const;

interface Options { readonly diskBytes: number; readonly baseBytes: number; readonly deltaBytes: number; readonly dir: string }

function parseArgs(argv: readonly string[]): Options {
  const o = { diskBytes: 4 * GiB, baseBytes: Math.round(3.8 * GiB / MiB) * MiB, deltaBytes: 200 * MiB, dir: os.tmpdir() };
  for (const a of argv) {
    const [k, v] = a.split('=', 2);
    if (v === undefined) throw new Error(`unknown argument ${a} (flags: --base= --delta= --disk= --dir=)`);
    if (k === '--base') o.baseBytes = parseSizeBytes(v);
    else if (k === '--delta') o.deltaBytes = parseSizeBytes(v);
    else if (k === '--disk') o.diskBytes = parseSizeBytes(v);
    else if (k === '--dir') o.dir = v;
    else throw new Error(`unknown flag ${k}`);
  }
  if (o.baseBytes > o.diskBytes || DELTA_AT_BYTES + o.deltaBytes > o.diskBytes) throw new Error('--base and --delta must fit in --disk');
  return o;
}

/** Writes `lengthBytes` of xorshift data from `atBytes` (incompressible: nothing can skip it as zeros). */
async function fill(disk: VmdkDisk, atBytes: number, lengthBytes: number, seed: number): Promise<void> {
  const chunk = Buffer.alloc(WRITE_CHUNK_BYTES);
  let x = seed >>> 0 || 1;
  for (let at = 0; at < lengthBytes; at += WRITE_CHUNK_BYTES) {
    for (let i = 0; i < chunk.length; i += 4) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; chunk.writeUInt32LE(x >>> 0, i); }
    await disk.write(atBytes + at, chunk.subarray(0, Math.min(WRITE_CHUNK_BYTES, lengthBytes - at)));
  }
  await disk.flush();
}

/** The base and the two VMs' deltas on datastore `ds-a`; answers each VM's top path and the base's CID. */
async function layOut(o: Options, dsRoot: string, log: (line: string) => void): Promise<{ tops: Record<string, string>; baseCid: string }> {
  const ds = await LocalDatastore.mount('ds', dsRoot, { owner: BENCH_OWNER });
  {
    log(`writing a ${formatBytes(o.baseBytes)} base of a ${formatBytes(o.diskBytes)} disk...`);
    const base = await VmdkDisk.create(await ds.open(BASE_PATH, { create: true }), { capacityBytes: o.diskBytes });
    let baseCid: string;
    try { await fill(base, 0, o.baseBytes, 0x9e3779b9); baseCid = base.info().cid; } finally { await base.close(); }
    const tops: Record<string, string> = {};
    for (const [i, vm] of VMS.entries()) {
      await ds.mkdir(vm);
      const { disk, path } = await createDeltaOver(ds, BASE_PATH, `${vm}/${vm}.vmdk`);
      try { await fill(disk, DELTA_AT_BYTES, o.deltaBytes, 0x12345 + i); } finally { await disk.close(); }
      tops[vm] = path;
      log(`${vm}: delta ${path} with ${formatBytes(o.deltaBytes)} over ${BASE_PATH}`);
    }
    return { tops, baseCid };
  }
}

/** True when [fromBytes, capacity) of the two chains reads the same (both at rest, opened read-only). */
async function sameContent(dsA: LocalDatastore, pathA: string, dsB: LocalDatastore, pathB: string, fromBytes: number, capacityBytes: number): Promise<boolean> {
  return readsTheSame(await openDatastoreChain(dsA, pathA, { readOnly: true }), await openDatastoreChain(dsB, pathB, { readOnly: true }), fromBytes, capacityBytes);
}

const movedBytesOf = (r: MigrationRecord): number => r.transferredBytes + (r.disk?.sentBytes ?? 0);

async function migrate(a: LocalHost, b: LocalHost, vm: string, log: (line: string) => void): Promise<MigrationRecord> {
  log(`${vm}: a -> b, its disk copied live while kvlog appends...`);
  const { migrationId } = await a.client.migrate(vm, { to: b.url, disk: { datastore: 'ds' } });
  const record = await a.client.waitForMigration(migrationId);
  if (record.outcome !== 'succeeded') throw new Error(`${vm}: migration ${record.outcome}: ${record.error?.code}: ${record.error?.message}`);
  for (const r of record.rounds) log(`  round ${r.round}: memory ${formatBytes(r.bytes)} + disk ${formatBytes(r.diskBytes)} in ${r.durationMs.toFixed(0)} ms, dirty after ${formatBytes(r.dirtyBytesAfter)}`);
  log(`  ${vm}: ${formatBytes(movedBytesOf(record))} moved in ${record.totalMs.toFixed(0)} ms (seeded levels ${record.disk?.seededLevels ?? 0}, ${formatBytes(record.disk?.seededBytes ?? 0)} not moved), guest downtime ${record.guestDowntimeMs?.toFixed(1) ?? 'n/a'} ms`);
  return record;
}

/** Stops the VM on the target, restarts it, and answers whether its guest verified at least every record it had flushed. */
async function guestVerifies(b: LocalHost, vm: string): Promise<{ flushed: number; found: number }> {
  const flushed = lastNumber(await b.client.consoleText(vm), /kvlog: flushed (\d+) records/g);
  await b.client.stopVm(vm);
  await b.client.startVm(vm);
  await b.client.waitForConsole(vm, 'records, all verified', BOOT_TIMEOUT_MS);
  const found = lastNumber(await b.client.consoleText(vm), /kvlog: found (\d+) records, all verified/g);
  await b.client.stopVm(vm);
  return { flushed, found };
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const log = (line: string): void => { process.stderr.write(`bench:crosssite: ${line}\n`); };
  const work = await mkdtemp(join(o.dir, 'ferry-bench-crosssite-'));
  const dirs = { a: join(work, 'host-a'), b: join(work, 'host-b'), dsA: join(work, 'ds-a'), dsB: join(work, 'ds-b') };
  const hosts: LocalHost[] = [];
  try {
    for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
    const { tops, baseCid } = await layOut(o, dirs.dsA, log);

    const token = randomToken();
    hosts.push(await spawnHost('a', dirs.a, token, { args: ['--datastore', `ds=${dirs.dsA}`] }));
    hosts.push(await spawnHost('b', dirs.b, token, { args: ['--datastore', `ds=${dirs.dsB}`] }));
    const [a, b] = hosts as [LocalHost, LocalHost];

    // The seed of VM `seeded`: the base file on b's datastore, recorded with the source file's digest.
    log(`seeding ${BASE_PATH} on b (a file copy here; prepare-migration uses a network file copy)...`);
    await copyFile(join(dirs.dsA, BASE_PATH), join(dirs.dsB, BASE_PATH));
    const baseFile = await LocalFile.open(join(dirs.dsA, BASE_PATH), { readOnly: true }, BASE_PATH);
    const fileBytes = (await stat(join(dirs.dsA, BASE_PATH))).size;
    let digest: string;
    try { digest = await fileDigest(baseFile, fileBytes, AbortSignal.timeout(10 * 60_000)); } finally { await baseFile.close(); }
    const dsAId = (await a.client.listDatastores()).find((d) => d.name === 'ds')?.id ?? '';
    await b.client.putSeeds('ds', 'seeded', {
      levels: [{ path: BASE_PATH, cid: baseCid, parentCid: 'ffffffff', capacityBytes: o.diskBytes, fileBytes, digest, source: { datastoreId: dsAId, path: BASE_PATH } }],
      taskId: null,
    });

    // The disks just written (~12 GiB with the seed) go to disk now, not under the migrations' feet.
    log('sync...');
    await run('sync', []);
    const image = await readFile(fileURLToPath(new URL('../guests/kvlog.wasm', import.meta.url)));
    for (const vm of VMS) {
      await a.client.createVm({ name: vm, imageBase64: image.toString('base64'), memoryBytes: GUEST_MEMORY_BYTES, vcpus: 1, cmdline: KVLOG_CMDLINE, disk: { datastore: 'ds', path: tops[vm] ?? '' }, start: true });
      await a.client.waitForConsole(vm, 'kvlog: flushed', BOOT_TIMEOUT_MS);
    }
    const seeded = await migrate(a, b, 'seeded', log);
    // The target's own line: how long it read and hashed the seed (round 1's answer waited for it).
    const seedVerifyMs = Number(/seed verified \(\d+ bytes\) in (\d+) ms/.exec(b.log())?.[1] ?? -1);
    log(`  the target verified the seed in ${seedVerifyMs} ms`);
    const unseeded = await migrate(a, b, 'unseeded', log);

    log('checks: each guest restarted on b verifies its log; beyond the log area the chains read as the source\'s...');
    const guests = { seeded: await guestVerifies(b, 'seeded'), unseeded: await guestVerifies(b, 'unseeded') };
    await stopHosts(hosts, 'SIGTERM');
    hosts.length = 0;
    const viewA = await LocalDatastore.mount('ds', dirs.dsA, { owner: BENCH_OWNER });
    const viewB = await LocalDatastore.mount('ds', dirs.dsB, { owner: BENCH_OWNER });
    const logAreaBytes = KVLOG_MAX_RECORDS * KVLOG_RECORD_BYTES;
    const same: Record<string, boolean> = {};
    for (const vm of VMS) same[vm] = await sameContent(viewA, tops[vm] ?? '', viewB, tops[vm] ?? '', logAreaBytes, o.diskBytes);
    const seededSkippedBase = (seeded.disk?.seededLevels ?? 0) === 1 && (unseeded.disk?.seededLevels ?? 0) === 0;
    const verified = seeded.verified && unseeded.verified && seededSkippedBase && VMS.every((vm) => same[vm] === true)
      && Object.values(guests).every((g) => g.flushed > 0 && g.found >= g.flushed);

    const seededBytes = movedBytesOf(seeded);
    const unseededBytes = movedBytesOf(unseeded);
    const bytesRatio = unseededBytes / seededBytes;
    const timeRatio = unseeded.totalMs / seeded.totalMs;
    log(`seeded ${formatBytes(seededBytes)} in ${seeded.totalMs.toFixed(0)} ms, unseeded ${formatBytes(unseededBytes)} in ${unseeded.totalMs.toFixed(0)} ms: ${bytesRatio.toFixed(1)}x fewer bytes, ${timeRatio.toFixed(1)}x less time (goals 15x, 10x); verified ${verified}`);
    await writeStdout(`${JSON.stringify({
      seededBytes, unseededBytes, seededMs: Math.round(seeded.totalMs), unseededMs: Math.round(unseeded.totalMs),
      seededGuestDowntimeMs: seeded.guestDowntimeMs, unseededGuestDowntimeMs: unseeded.guestDowntimeMs,
      seededEngineDowntimeMs: seeded.engineDowntimeMs, unseededEngineDowntimeMs: unseeded.engineDowntimeMs,
      bytesRatio: Number(bytesRatio.toFixed(2)), timeRatio: Number(timeRatio.toFixed(2)), verified,
      details: {
        diskBytes: o.diskBytes, baseBytes: o.baseBytes, deltaBytes: o.deltaBytes,
        seeded: { diskSentBytes: seeded.disk?.sentBytes ?? 0, memorySentBytes: seeded.transferredBytes, seededBytes: seeded.disk?.seededBytes ?? 0, seedVerifyBytes: seeded.disk?.seedVerifyBytes ?? 0, seedVerifyMs, rounds: seeded.rounds.length, round1Ms: Math.round(seeded.rounds[0]?.durationMs ?? 0) },
        unseeded: { diskSentBytes: unseeded.disk?.sentBytes ?? 0, memorySentBytes: unseeded.transferredBytes, rounds: unseeded.rounds.length, round1Ms: Math.round(unseeded.rounds[0]?.durationMs ?? 0) },
        checks: { sameBeyondLogArea: same, guests },
      },
    })}\n`);
    return verified ? 0 : 1;
  } finally {
    await stopHosts(hosts, 'SIGTERM');
    await rm(work, { recursive: true, force: true });
  }
}

runBench('crosssite', main);
