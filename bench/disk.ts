/**
 * npm run bench:disk — what a guest gets from a VMDK disk, against the same I/O on a raw file
 * through plain node fs, measured in the same run.
 *
 * Part `io`: the diskbench guest (guests/src/diskbench.ts) runs sequential and
 * random 4 KiB / 64 KiB reads and writes on a monolithicSparse VMDK created fresh in a temp dir, with
 * `depth` requests in flight; the baseline does the same requests (same offsets, sizes, order, bytes
 * and number in flight) on a sparse raw file with FileHandle.read/write. Writes into unallocated
 * grains and rewrites of allocated ones are separate cases. Then flush latency: batches of random
 * 4 KiB writes, each followed (once they completed) by one FLUSH timed from submit to completion by
 * the guest; the baseline times FileHandle.sync() after the same batch.
 *
 * Two more backends run the same cases to say where the time goes (skip them with --no-breakdown):
 *   guest-raw  the guest on the raw file (blockBackend over a LocalFile): the VM's device path
 *              (postMessage per request, the 1 ms idle tick, copies) without the VMDK layer;
 *   vmdk-host  the host calling VmdkDisk directly with `depth` promises in flight: the VMDK layer
 *              (grain lookup and allocation, its one-at-a-time queue) without the VM.
 *
 * Honesty: every backend has its own files with the same history; backends run interleaved case by
 * case in an order that rotates every round, and the headline ratios are medians over rounds of the
 * same round's vmdk ÷ raw (paired, so slow drift of a shared machine cancels). The guest checks every
 * read against its content function, and after the last round the guest-visible content of every
 * VMDK is compared with the raw baseline's file (and by `qemu-img compare` when it is installed).
 * Raw write data is computed before the clock starts, so the baseline is pure I/O; the guest
 * computes its data inline, which is part of what it costs.
 *
 * Part `migrate` (./disk-migrate.ts): a running kvlog VM with a 1 GiB disk, half of it written,
 * live-migrated between two host processes to one without the disk's datastore (the disk is copied
 * live with memory), against the raw socket time for the same bytes; verified by qemu-img compare
 * of the two copies at rest and the guest's own boot-time check on the target.
 *
 * Progress and tables go to stderr; the last stdout line is one JSON object (seqWriteVsRaw,
 * randWriteVsRaw, seqReadVsRaw, flushP99Ms, rawMBps, diskMigrateMs, rawSocketMs, verified, ... see the README).
 *
 * Options: --rounds=N (5) --depth=N (32, at most 64) --bytes-64k=SIZE (64MiB per 64 KiB case)
 *   --bytes-4k=SIZE (16MiB per 4 KiB case) --flush-samples=N (200, over all rounds)
 *   --flush-batch=N (16 writes before each flush) --dir=PATH (parent of the temp dir; default the
 *   OS temp dir) --no-breakdown --only=io|migrate --migrate-disk=SIZE (1GiB) --migrate-allocated=SIZE
 *   (512MiB) --channels=N (2)
 */
import { runMigratePart } from './disk-migrate.js';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { KiB, MiB, parseSizeBytes } from '../src/lib/units.js';
import { Vm } from '../src/vmm/vm.js';
import { type BlockBackend, BLOCK_MAX_IN_FLIGHT, blockBackend } from '../src/vmm/devices/block.js';
import { LocalFile } from '../src/storage/local-file.js';
import { VmdkDisk } from '../src/storage/vmdk/disk.js';
import {
  type DiskRunShape, type DiskbenchDone, diskbenchCmdline, fillContent, parseDoneLine, parseFlushLine, requestOffsets,
} from './disk-pattern.js';
import { liveVms, runBench, writeStdout } from './process.js';
import { type Interference, type Summary, cpuSnapshot, fmtInterference, interference, median, round, summarize } from './stats.js';

// ---------------------------------------------------------------------------------------------
// Options

type PartName = 'io' | 'migrate';
const PART_NAMES: readonly PartName[] = ['io', 'migrate'];

interface Options {
  readonly rounds: number;
  readonly depth: number;
  readonly bytes64k: number;
  readonly bytes4k: number;
  readonly flushSamples: number;
  readonly flushBatch: number;
  readonly dir: string;
  readonly breakdown: boolean;
  readonly only: PartName | null;
  /** Part `migrate`: the disk's size, how much of it is written before, data channels. */
  readonly migrateDiskBytes: number;
  readonly migrateAllocatedBytes: number;
  readonly channels: number;
}

const USAGE = 'options: --rounds=N --depth=N --bytes-64k=SIZE --bytes-4k=SIZE --flush-samples=N --flush-batch=N --dir=PATH --no-breakdown --only=io|migrate --migrate-disk=SIZE --migrate-allocated=SIZE --channels=N';

function parseOptions(argv: readonly string[]): Options {
  const opts: { -readonly [K in keyof Options]: Options[K] } = {
    rounds: 5, depth: 32, bytes64k: 64 * MiB, bytes4k: 16 * MiB, flushSamples: 200, flushBatch: 16, dir: os.tmpdir(), breakdown: true, only: null,
    migrateDiskBytes: 1024 * MiB, migrateAllocatedBytes: 512 * MiB, channels: 2,
  };
  const ints: Record<string, 'rounds' | 'depth' | 'flushSamples' | 'flushBatch' | 'channels'> = {
    '--rounds': 'rounds', '--depth': 'depth', '--flush-samples': 'flushSamples', '--flush-batch': 'flushBatch', '--channels': 'channels',
  };
  const sizes: Record<string, 'bytes64k' | 'bytes4k' | 'migrateDiskBytes' | 'migrateAllocatedBytes'> = {
    '--bytes-64k': 'bytes64k', '--bytes-4k': 'bytes4k', '--migrate-disk': 'migrateDiskBytes', '--migrate-allocated': 'migrateAllocatedBytes',
  };
  for (const arg of argv) {
    if (arg === '--no-breakdown') { opts.breakdown = false; continue; }
    const [key = '', value] = arg.split('=', 2);
    if (value === undefined) throw new Error(`bad option "${arg}"; ${USAGE}`);
    if (key === '--only') {
      const part = PART_NAMES.find((p) => p === value);
      if (part === undefined) throw new Error(`bad option "${arg}"; --only takes ${PART_NAMES.join(', ')}`);
      opts.only = part;
    } else if (key === '--dir') {
      opts.dir = value;
    } else if (Object.hasOwn(sizes, key)) {
      opts[sizes[key] as 'bytes64k' | 'bytes4k' | 'migrateDiskBytes' | 'migrateAllocatedBytes'] = parseSizeBytes(value, key);
    } else if (Object.hasOwn(ints, key)) {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`bad option "${arg}": expected a positive integer`);
      opts[ints[key] as 'rounds' | 'depth' | 'flushSamples' | 'flushBatch' | 'channels'] = n;
    } else {
      throw new Error(`bad option "${arg}"; ${USAGE}`);
    }
  }
  if (opts.depth > BLOCK_MAX_IN_FLIGHT) throw new Error(`--depth=${opts.depth}: the block device keeps at most ${BLOCK_MAX_IN_FLIGHT} requests in flight`);
  if (opts.bytes64k < LARGE_BYTES || opts.bytes4k < SMALL_BYTES) throw new Error('--bytes-64k and --bytes-4k must cover at least one request');
  if (Math.floor(opts.bytes4k / SMALL_BYTES) * SMALL_BYTES > Math.floor(opts.bytes64k / LARGE_BYTES) * LARGE_BYTES) {
    throw new Error('--bytes-4k may not exceed --bytes-64k: the 4 KiB rewrite and read cases run inside the region the 64 KiB cases filled');
  }
  if (opts.migrateAllocatedBytes > opts.migrateDiskBytes || opts.migrateDiskBytes % (1 * MiB) !== 0) throw new Error('--migrate-disk must be a whole number of MiB and at least --migrate-allocated');
  return opts;
}

// ---------------------------------------------------------------------------------------------
// Constants

const SMALL_BYTES = 4 * KiB;
const LARGE_BYTES = 64 * KiB;
/** The VMDK's grain (VmdkDisk's default, qemu-img's too): "alloc" cases put every write in a new one. */
const GRAIN_BYTES = 64 * KiB;
/** diskbench's buffers start at 0x20000 (128 KiB); the rest of RAM holds depth x size of them. */
const GUEST_BUFFERS_AT_BYTES = 128 * KiB;
/** RAM granule of a VM (wasm page). */
const WASM_PAGE_BYTES = 64 * KiB;
/** A guest run that has not printed its done line by then is stuck: fail the benchmark. */
const GUEST_RUN_TIMEOUT_MS = 120_000;
/** Chunk size of the final content comparison. */
const COMPARE_CHUNK_BYTES = 1 * MiB;
/** The disk's capacity is rounded up to this (sparse: unused capacity costs nothing). */
const CAPACITY_ROUND_BYTES = 1 * MiB;
const NS_PER_MS = 1e6;
/** Goals from the issue: VMDK ÷ raw throughput. */
const TARGETS = { seqWriteVsRaw: 0.8, seqReadVsRaw: 0.8, randWriteVsRaw: 0.5 } as const;

const log = (line: string): void => { process.stderr.write(`${line}\n`); };

// ---------------------------------------------------------------------------------------------
// Cases

type BackendName = 'raw' | 'vmdk' | 'guest-raw' | 'vmdk-host';
const BACKEND_NOTES: Readonly<Record<BackendName, string>> = {
  raw: 'node fs FileHandle on a sparse raw file (the baseline)',
  vmdk: 'diskbench guest on a fresh monolithicSparse VMDK (the measured thing)',
  'guest-raw': 'diskbench guest on the raw file: the VM device path without the VMDK layer',
  'vmdk-host': 'host promises straight into VmdkDisk: the VMDK layer without the VM',
};

/** Which headline a case counts towards. */
type CaseGroup = 'seqWrite' | 'seqRead' | 'randWriteAlloc' | 'randWriteRewrite' | 'randRead';

interface CaseSpec {
  readonly id: string;
  /** Disks A and B are fresh every round; cases on one disk run in this order and build on each other. */
  readonly disk: 'A' | 'B';
  readonly group: CaseGroup;
  readonly shape: DiskRunShape;
  readonly note: string;
}

interface FlushSpec {
  readonly id: 'flush-alloc' | 'flush-rewrite';
  readonly disk: 'A' | 'B';
  readonly shape: DiskRunShape;
  readonly note: string;
}

interface Plan {
  readonly cases: readonly CaseSpec[];
  readonly flushes: readonly FlushSpec[];
  readonly capacityBytes: number;
  readonly flushPerRound: number;
}

function plan(opts: Options): Plan {
  const n64 = Math.floor(opts.bytes64k / LARGE_BYTES);
  const n4 = Math.floor(opts.bytes4k / SMALL_BYTES);
  const seq = (sizeBytes: number, count: number, seed: number, op: 'read' | 'write', baseBytes = 0): DiskRunShape =>
    ({ pattern: 'seq', op, sizeBytes, slotBytes: sizeBytes, baseBytes, count, seed });
  const rand = (sizeBytes: number, slotBytes: number, count: number, seed: number, op: 'read' | 'write', baseBytes = 0): DiskRunShape =>
    ({ pattern: 'rand', op, sizeBytes, slotBytes, baseBytes, count, seed });
  // Disk B: a 4 KiB sequential region, then 4 KiB random writes one per grain, then 64 KiB random
  // writes, then the allocating flush batches — each in space nothing has touched yet.
  const bRandSmallAt = roundUp(n4 * SMALL_BYTES, GRAIN_BYTES);
  const bRandLargeAt = bRandSmallAt + n4 * GRAIN_BYTES;
  const bFlushAt = bRandLargeAt + n64 * LARGE_BYTES;
  const flushPerRound = Math.ceil(opts.flushSamples / opts.rounds);
  const flushWrites = flushPerRound * opts.flushBatch;
  const cases: CaseSpec[] = [
    { id: 'seq-write-64k', disk: 'A', group: 'seqWrite', shape: seq(LARGE_BYTES, n64, 1, 'write'), note: 'fresh disk: every write allocates a whole grain' },
    { id: 'seq-rewrite-64k', disk: 'A', group: 'seqWrite', shape: seq(LARGE_BYTES, n64, 2, 'write'), note: 'the same range again: in place' },
    { id: 'seq-read-64k', disk: 'A', group: 'seqRead', shape: seq(LARGE_BYTES, n64, 2, 'read'), note: 'verified against seed 2' },
    { id: 'rand-rewrite-64k', disk: 'A', group: 'randWriteRewrite', shape: rand(LARGE_BYTES, LARGE_BYTES, n64, 3, 'write'), note: 'allocated grains, random order' },
    { id: 'rand-read-64k', disk: 'A', group: 'randRead', shape: rand(LARGE_BYTES, LARGE_BYTES, n64, 3, 'read'), note: 'verified against seed 3' },
    { id: 'rand-rewrite-4k', disk: 'A', group: 'randWriteRewrite', shape: rand(SMALL_BYTES, SMALL_BYTES, n4, 4, 'write'), note: 'allocated grains' },
    { id: 'rand-read-4k', disk: 'A', group: 'randRead', shape: rand(SMALL_BYTES, SMALL_BYTES, n4, 4, 'read'), note: 'verified against seed 4' },
    { id: 'seq-read-4k', disk: 'A', group: 'seqRead', shape: seq(SMALL_BYTES, n4, 4, 'read'), note: 'verified against seed 4' },
    { id: 'seq-rewrite-4k', disk: 'A', group: 'seqWrite', shape: seq(SMALL_BYTES, n4, 5, 'write'), note: 'allocated grains, in place' },
    { id: 'seq-write-4k', disk: 'B', group: 'seqWrite', shape: seq(SMALL_BYTES, n4, 6, 'write'), note: 'fresh disk: the first write of each grain allocates it' },
    { id: 'rand-write-4k', disk: 'B', group: 'randWriteAlloc', shape: rand(SMALL_BYTES, GRAIN_BYTES, n4, 7, 'write', bRandSmallAt), note: 'one write per unallocated grain: each allocates 64 KiB' },
    { id: 'rand-write-64k', disk: 'B', group: 'randWriteAlloc', shape: rand(LARGE_BYTES, GRAIN_BYTES, n64, 8, 'write', bRandLargeAt), note: 'whole unallocated grains' },
  ];
  const flushes: FlushSpec[] = [
    { id: 'flush-alloc', disk: 'B', shape: rand(SMALL_BYTES, GRAIN_BYTES, flushWrites, 9, 'write', bFlushAt), note: `${opts.flushBatch} x 4 KiB writes into new grains, then FLUSH` },
    { id: 'flush-rewrite', disk: 'A', shape: rand(SMALL_BYTES, SMALL_BYTES, Math.min(flushWrites, n64 * (LARGE_BYTES / SMALL_BYTES)), 10, 'write'), note: `${opts.flushBatch} x 4 KiB rewrites, then FLUSH` },
  ];
  const end = Math.max(...[...cases.map((c) => c.shape), ...flushes.map((f) => f.shape)].map((s) => s.baseBytes + s.count * s.slotBytes));
  return { cases, flushes, capacityBytes: roundUp(end, CAPACITY_ROUND_BYTES), flushPerRound };
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

// ---------------------------------------------------------------------------------------------
// Write data and offsets for the host-side backends (computed once, before any clock starts)

const offsetCache = new Map<string, Float64Array>();
const dataCache = new Map<string, Uint8Array>();
const shapeKey = (s: DiskRunShape): string => `${s.pattern}/${s.sizeBytes}/${s.slotBytes}/${s.baseBytes}/${s.count}/${s.seed}`;

function offsetsOf(shape: DiskRunShape): Float64Array {
  const key = shapeKey(shape);
  let offsets = offsetCache.get(key);
  if (offsets === undefined) offsetCache.set(key, (offsets = requestOffsets(shape)));
  return offsets;
}

/** Request i's bytes are [i*size, (i+1)*size): exactly what the guest writes there. */
function writeDataOf(shape: DiskRunShape): Uint8Array {
  const key = shapeKey(shape);
  let data = dataCache.get(key);
  if (data === undefined) {
    const offsets = offsetsOf(shape);
    data = new Uint8Array(shape.count * shape.sizeBytes);
    for (let i = 0; i < shape.count; i++) fillContent(data.subarray(i * shape.sizeBytes, (i + 1) * shape.sizeBytes), offsets[i] ?? 0, shape.seed);
    dataCache.set(key, data);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Backends

/** What the host-side runs need from a disk: node fs for raw, VmdkDisk for vmdk-host. */
interface HostIo {
  read(position: number, buf: Uint8Array): Promise<void>;
  write(position: number, data: Uint8Array): Promise<void>;
  flush(): Promise<void>;
}

/** Plain node fs: one FileHandle call per request, nothing in between (the baseline). */
function rawIo(fh: FileHandle): HostIo {
  return {
    read: async (position, buf) => { await fh.read(buf, 0, buf.length, position); },
    write: async (position, data) => { await fh.write(data, 0, data.length, position); },
    flush: () => fh.sync(),
  };
}

/** One backend's disk: what the guest attaches, what the host calls, and how to close it. */
interface OpenDisk {
  readonly host: HostIo;
  readonly guest: BlockBackend;
  /** Guest-visible content at [position, position + buf.length). */
  read(position: number, buf: Uint8Array): Promise<void>;
  readonly path: string;
  close(): Promise<void>;
}

async function openRawDisk(path: string, capacityBytes: number): Promise<OpenDisk> {
  const fh = await open(path, 'wx+');
  await fh.truncate(capacityBytes);
  const io = rawIo(fh);
  return { host: io, guest: blockBackend(io, capacityBytes), read: (p, b) => io.read(p, b), path, close: () => fh.close() };
}

async function openRawLocalFile(path: string, capacityBytes: number): Promise<OpenDisk> {
  const file = await LocalFile.open(path, { create: true });
  await file.truncate(capacityBytes);
  return { host: file, guest: blockBackend(file, capacityBytes), read: (p, b) => file.read(p, b), path, close: () => file.close() };
}

async function openVmdk(path: string, capacityBytes: number): Promise<OpenDisk> {
  const file = await LocalFile.open(path, { create: true });
  const disk = await VmdkDisk.create(file, { capacityBytes });
  return { host: disk, guest: blockBackend(disk, capacityBytes), read: (p, b) => disk.read(p, b), path, close: () => disk.close() };
}

const BACKEND_OPEN: Readonly<Record<BackendName, (path: string, capacityBytes: number) => Promise<OpenDisk>>> = {
  raw: openRawDisk, vmdk: openVmdk, 'guest-raw': openRawLocalFile, 'vmdk-host': openVmdk,
};
const BACKEND_FILE: Readonly<Record<BackendName, string>> = { raw: 'img', vmdk: 'vmdk', 'guest-raw': 'img', 'vmdk-host': 'vmdk' };
const isGuest = (b: BackendName): boolean => b === 'vmdk' || b === 'guest-raw';

interface RunResult {
  readonly mbps: number;
  /** Flush latencies of this run (flush runs only). */
  readonly flushMs: readonly number[];
  readonly badSectors: number;
  readonly ioErrors: number;
}

/**
 * The baseline's loop: `depth` lanes, each taking the next request when its previous one finished,
 * so exactly `depth` are in flight (fewer only at the end), as the guest keeps them.
 */
async function hostRun(io: HostIo, shape: DiskRunShape, depth: number, flushBatch: number): Promise<RunResult> {
  const offsets = offsetsOf(shape);
  const { sizeBytes, count } = shape;
  const data = shape.op === 'write' ? writeDataOf(shape) : null;
  const flushMs: number[] = [];
  const batch = async (from: number, to: number, lanes: number): Promise<void> => {
    let next = from;
    const lane = async (): Promise<void> => {
      const buf = new Uint8Array(sizeBytes);
      while (next < to) {
        const i = next++;
        const at = offsets[i] ?? 0;
        if (data !== null) await io.write(at, data.subarray(i * sizeBytes, (i + 1) * sizeBytes));
        else await io.read(at, buf);
      }
    };
    await Promise.all(Array.from({ length: Math.min(lanes, to - from) }, lane));
  };
  const t0 = performance.now();
  if (flushBatch === 0) {
    await batch(0, count, depth);
  } else {
    // As the guest does: a batch, all of it completed, then one timed flush.
    for (let from = 0; from < count; from += flushBatch) {
      await batch(from, Math.min(count, from + flushBatch), depth);
      const f0 = performance.now();
      await io.flush();
      flushMs.push(performance.now() - f0);
    }
  }
  const ms = performance.now() - t0;
  return { mbps: (count * sizeBytes) / 1e3 / ms, flushMs, badSectors: 0, ioErrors: 0 };
}

function guestImage(): Uint8Array {
  // This file runs as dist/bench/disk.js; the image is dist/guests/diskbench.wasm.
  const path = fileURLToPath(new URL('../guests/diskbench.wasm', import.meta.url));
  if (!existsSync(path)) throw new Error(`guest image ${path} is missing: run npm run build`);
  return readFileSync(path);
}

async function guestRun(image: Uint8Array, disk: BlockBackend, shape: DiskRunShape, depth: number, flushBatch: number): Promise<RunResult> {
  const memoryBytes = roundUp(GUEST_BUFFERS_AT_BYTES + depth * shape.sizeBytes, WASM_PAGE_BYTES);
  const cmdline = diskbenchCmdline(shape, { depth, flushEvery: flushBatch });
  const vm = Vm.create(image, { name: 'diskbench', memoryBytes, vcpus: 1, cmdline, disk });
  liveVms.add(vm);
  const lines: string[] = [];
  try {
    const done = new Promise<DiskbenchDone>((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`diskbench "${cmdline}" printed no done line in ${GUEST_RUN_TIMEOUT_MS} ms`)); }, GUEST_RUN_TIMEOUT_MS);
      vm.on('console', (text) => {
        for (const line of text.split('\n')) {
          if (line === '') continue;
          lines.push(line);
          const d = parseDoneLine(line);
          if (d !== null) { clearTimeout(timer); resolve(d); }
        }
      });
      vm.on('crash', (c) => { clearTimeout(timer); reject(new Error(`diskbench "${cmdline}" crashed: ${c.message}`)); });
    });
    await vm.start();
    const d = await done;
    for (const line of lines) if (line.startsWith('diskbench: bad') || line.startsWith('diskbench: I/O')) log(`    ${line}`);
    if (d.ops !== shape.count) throw new Error(`diskbench "${cmdline}" completed ${d.ops} of ${shape.count} requests`);
    const flushMs = lines.map(parseFlushLine).filter((ns) => ns !== null).map((ns) => ns / NS_PER_MS);
    return { mbps: d.bytes / 1e3 / (d.ns / NS_PER_MS), flushMs, badSectors: d.bad, ioErrors: d.errors };
  } finally {
    await vm.stop();
    liveVms.delete(vm);
  }
}

// ---------------------------------------------------------------------------------------------
// Part `io`

interface CaseResult {
  readonly id: string;
  readonly group: CaseGroup;
  readonly sizeBytes: number;
  readonly note: string;
  /** Per backend: MB/s of every round (10^6 bytes per second). */
  readonly mbpsByRound: Partial<Record<BackendName, number[]>>;
}

/**
 * What every part returns: its headline fields (merged into the top level of the JSON line), its
 * targets and whether they were met, the details (under breakdown.<part>), and whether every data
 * check of the part passed (the process exits 1 otherwise).
 */
interface PartResult {
  readonly headline: Readonly<Record<string, unknown>>;
  readonly targets: Readonly<Record<string, number>>;
  readonly met: Readonly<Record<string, boolean>>;
  readonly breakdown: Readonly<Record<string, unknown>>;
  readonly dataOk: boolean;
  /** One line for stderr. */
  readonly summary: string;
}

function backendsFor(opts: Options): BackendName[] {
  return opts.breakdown ? ['raw', 'vmdk', 'guest-raw', 'vmdk-host'] : ['raw', 'vmdk'];
}

async function runIoPart(opts: Options, workDir: string): Promise<PartResult> {
  const p = plan(opts);
  const backends = backendsFor(opts);
  const image = guestImage();
  log(`part io: ${opts.rounds} rounds, depth ${opts.depth}, ${p.cases.length} cases + 2 flush cases (${p.flushPerRound} flushes per round each), disk ${p.capacityBytes / MiB} MiB, backends ${backends.join(', ')}`);
  for (const b of backends) log(`  ${b.padEnd(9)} ${BACKEND_NOTES[b]}`);
  const t0 = performance.now();
  for (const c of [...p.cases.map((x) => x.shape), ...p.flushes.map((f) => f.shape)]) if (c.op === 'write') writeDataOf(c);
  log(`  raw write data computed in ${((performance.now() - t0) / 1000).toFixed(1)} s (not timed)`);

  const results: CaseResult[] = p.cases.map((c) => ({ id: c.id, group: c.group, sizeBytes: c.shape.sizeBytes, note: c.note, mbpsByRound: {} }));
  const flushMs = new Map<string, number[]>();
  let badSectors = 0;
  let ioErrors = 0;
  let content: Record<string, string> = {};
  const cpu0 = cpuSnapshot();
  const cpuByRound: Interference[] = [];

  for (let r = 0; r < opts.rounds; r++) {
    const order = backends.map((_, i) => backends[(i + r) % backends.length] as BackendName);
    const roundDir = join(workDir, `round-${r}`);
    const disks = new Map<string, OpenDisk>();
    const diskOf = (b: BackendName, d: 'A' | 'B'): OpenDisk => disks.get(`${b}/${d}`) as OpenDisk;
    const roundCpu0 = cpuSnapshot();
    try {
      await rm(roundDir, { recursive: true, force: true });
      await mkdir(roundDir);
      for (const b of backends) for (const d of ['A', 'B'] as const) disks.set(`${b}/${d}`, await BACKEND_OPEN[b](join(roundDir, `${b}-${d}.${BACKEND_FILE[b]}`), p.capacityBytes));
      const once = async (b: BackendName, disk: OpenDisk, shape: DiskRunShape, flushBatch: number): Promise<RunResult> => {
        const res = isGuest(b) ? await guestRun(image, disk.guest, shape, opts.depth, flushBatch) : await hostRun(disk.host, shape, opts.depth, flushBatch);
        badSectors += res.badSectors;
        ioErrors += res.ioErrors;
        return res;
      };
      for (const [ci, c] of p.cases.entries()) {
        const parts: string[] = [];
        for (const b of order) {
          const res = await once(b, diskOf(b, c.disk), c.shape, 0);
          const rec = results[ci] as CaseResult;
          (rec.mbpsByRound[b] ??= []).push(res.mbps);
          parts.push(`${b} ${res.mbps.toFixed(0)}`);
        }
        log(`  round ${r + 1}/${opts.rounds} ${c.id.padEnd(16)} MB/s: ${parts.join(', ')}`);
      }
      for (const f of p.flushes) {
        const parts: string[] = [];
        for (const b of order) {
          const res = await once(b, diskOf(b, f.disk), f.shape, opts.flushBatch);
          const key = `${f.id}/${b}`;
          flushMs.set(key, [...(flushMs.get(key) ?? []), ...res.flushMs]);
          parts.push(`${b} p50 ${(median(res.flushMs)).toFixed(2)}`);
        }
        log(`  round ${r + 1}/${opts.rounds} ${f.id.padEnd(16)} ms: ${parts.join(', ')}`);
      }
      cpuByRound.push(interference(roundCpu0, cpuSnapshot()));
      log(`  round ${r + 1}/${opts.rounds} ${fmtInterference(cpuByRound[r] as Interference)}`);
      if (r === opts.rounds - 1) {
        const c0 = performance.now();
        content = await compareContent(backends, diskOf, p.capacityBytes);
        log(`  content of every disk vs the raw baseline's (${((performance.now() - c0) / 1000).toFixed(1)} s): ${Object.entries(content).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      }
    } finally {
      for (const d of disks.values()) await d.close().catch(() => undefined);
      await rm(roundDir, { recursive: true, force: true });
    }
  }
  const cpu = interference(cpu0, cpuSnapshot());
  log(`  ${fmtInterference(cpu)}`);
  return summarizeIo(opts, p, results, flushMs, { badSectors, ioErrors, content, cpu, cpuByRound });
}

/**
 * After the last round: every backend's disks must show the raw baseline's bytes (same requests,
 * same content function), read back through each backend's own reader; qemu-img compare, an
 * independent VMDK reader, checks the guest's VMDKs against the raw files when it is installed.
 */
async function compareContent(backends: readonly BackendName[], diskOf: (b: BackendName, d: 'A' | 'B') => OpenDisk, capacityBytes: number): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const want = new Uint8Array(COMPARE_CHUNK_BYTES);
  const got = new Uint8Array(COMPARE_CHUNK_BYTES);
  for (const d of ['A', 'B'] as const) {
    const raw = diskOf('raw', d);
    for (const b of backends) {
      if (b === 'raw') continue;
      const other = diskOf(b, d);
      let verdict = 'identical';
      for (let at = 0; at < capacityBytes && verdict === 'identical'; at += COMPARE_CHUNK_BYTES) {
        await raw.read(at, want);
        await other.read(at, got);
        if (Buffer.compare(want, got) !== 0) verdict = `differs in [${at}, ${at + COMPARE_CHUNK_BYTES})`;
      }
      out[`${b}/${d}`] = verdict;
      if (b === 'vmdk') out[`qemu-img compare ${b}/${d}`] = await qemuCompare(other.path, raw.path);
    }
  }
  return out;
}

function qemuCompare(vmdkPath: string, rawPath: string): Promise<string> {
  return new Promise((resolve) => {
    execFile('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', vmdkPath, rawPath], (err, stdout, stderr) => {
      if (err === null) { resolve('identical'); return; }
      const code = (err as { code?: unknown }).code;
      if (code === 'ENOENT') resolve('skipped (qemu-img not installed)');
      else resolve(`differs or failed (exit ${String(code)}): ${(stdout + stderr).trim().split('\n').slice(-1)[0] ?? ''}`);
    });
  });
}

interface IoChecks {
  readonly badSectors: number;
  readonly ioErrors: number;
  readonly content: Record<string, string>;
  readonly cpu: Interference;
  readonly cpuByRound: readonly Interference[];
}

function summarizeIo(opts: Options, p: Plan, results: readonly CaseResult[], flushMs: ReadonlyMap<string, number[]>, checks: IoChecks): PartResult {
  const backends = backendsFor(opts);
  const ratio = (c: CaseResult, b: BackendName): number => {
    const raw = c.mbpsByRound.raw ?? [];
    return median((c.mbpsByRound[b] ?? []).map((x, i) => x / (raw[i] ?? NaN)));
  };
  const cases = results.map((c) => {
    const medians = Object.fromEntries(backends.map((b) => [b, round(median(c.mbpsByRound[b] ?? []), 1)]));
    const spreadPct = Object.fromEntries(backends.map((b) => {
      const v = c.mbpsByRound[b] ?? [];
      return [b, round(((Math.max(...v) - Math.min(...v)) / median(v)) * 100, 1)];
    }));
    const vsRaw = Object.fromEntries(backends.filter((b) => b !== 'raw').map((b) => [b, round(ratio(c, b), 3)]));
    return { id: c.id, group: c.group, sizeBytes: c.sizeBytes, note: c.note, medianMBps: medians, vsRawPaired: vsRaw, spreadPct, mbpsByRound: c.mbpsByRound };
  });
  /** The group's worst case: a goal for "sequential writes" holds only if it holds for every one of them. */
  const worstCase = (groups: readonly CaseGroup[]): CaseResult => results.filter((c) => groups.includes(c.group))
    .reduce((a, b) => (ratio(b, 'vmdk') < ratio(a, 'vmdk') ? b : a));
  const headlineGroups: Readonly<Record<string, readonly CaseGroup[]>> = {
    seqWriteVsRaw: ['seqWrite'], seqReadVsRaw: ['seqRead'], randWriteVsRaw: ['randWriteAlloc', 'randWriteRewrite'],
    randWriteAllocVsRaw: ['randWriteAlloc'], randWriteRewriteVsRaw: ['randWriteRewrite'], randReadVsRaw: ['randRead'],
  };
  const ratios = Object.fromEntries(Object.entries(headlineGroups).map(([k, g]) => [k, round(ratio(worstCase(g), 'vmdk'), 3)]));
  const ratioCases = Object.fromEntries(Object.entries(headlineGroups).map(([k, g]) => [k, worstCase(g).id]));
  const flush = Object.fromEntries([...flushMs].map(([k, v]) => [k, summarize(v)]));
  const fs = (id: string, b: BackendName): Summary | undefined => flush[`${id}/${b}`];

  log('\n  case              ' + backends.map((b) => `${b} MB/s`.padStart(16)).join('') + '   vmdk/raw (paired median)');
  for (const c of cases) {
    log(`  ${c.id.padEnd(18)}${backends.map((b) => String(c.medianMBps[b]).padStart(16)).join('')}   ${String(c.vsRawPaired.vmdk).padStart(6)}`);
  }
  log('\n  flush latency ms  ' + backends.map((b) => `${b} p50/p99`.padStart(22)).join(''));
  for (const id of p.flushes.map((f) => f.id)) {
    log(`  ${id.padEnd(18)}${backends.map((b) => `${fs(id, b)?.p50.toFixed(2) ?? '?'} / ${fs(id, b)?.p99.toFixed(2) ?? '?'}`.padStart(22)).join('')}`);
  }
  const vmdkFlush = fs('flush-alloc', 'vmdk');
  const rawFlush = fs('flush-alloc', 'raw');
  const headline = {
    ...ratios,
    flushP50Ms: vmdkFlush?.p50 ?? null,
    flushP99Ms: vmdkFlush?.p99 ?? null,
    rawFlushP50Ms: rawFlush?.p50 ?? null,
    rawFlushP99Ms: rawFlush?.p99 ?? null,
    rawMBps: Object.fromEntries(cases.map((c) => [c.id, c.medianMBps.raw])),
    vmdkMBps: Object.fromEntries(cases.map((c) => [c.id, c.medianMBps.vmdk])),
    /** The case that set each ratio (its group's worst). */
    ratioCases,
  };
  const met = Object.fromEntries(Object.entries(TARGETS).map(([k, t]) => [k, (ratios[k] ?? NaN) >= t]));
  const dataOk = checks.badSectors === 0 && checks.ioErrors === 0
    && Object.values(checks.content).every((v) => v === 'identical' || v.startsWith('skipped'));
  const summary = `vmdk / raw (worst case of each group): seqWrite ${ratios.seqWriteVsRaw} (target ${TARGETS.seqWriteVsRaw}), `
    + `seqRead ${ratios.seqReadVsRaw} (${TARGETS.seqReadVsRaw}), randWrite ${ratios.randWriteVsRaw} (${TARGETS.randWriteVsRaw}; alloc `
    + `${ratios.randWriteAllocVsRaw}, rewrite ${ratios.randWriteRewriteVsRaw}), randRead ${ratios.randReadVsRaw}; flush p50/p99 `
    + `${headline.flushP50Ms} / ${headline.flushP99Ms} ms (raw fsync ${headline.rawFlushP50Ms} / ${headline.rawFlushP99Ms} ms); `
    + `data ${dataOk ? 'verified' : 'NOT VERIFIED'} (bad sectors ${checks.badSectors}, I/O errors ${checks.ioErrors})`;
  return {
    headline,
    targets: TARGETS,
    met,
    dataOk,
    summary,
    breakdown: {
      note: 'vsRawPaired = median over rounds of that round\'s backend MB/s / raw MB/s; headline xVsRaw = the worst case of its group (vmdk); MB/s = 10^6 bytes/s; flush = guest-observed submit-to-completion for guest backends, host-measured flush() for raw and vmdk-host',
      backends: Object.fromEntries(backends.map((b) => [b, BACKEND_NOTES[b]])),
      cases,
      flush: Object.fromEntries(p.flushes.map((f) => [f.id, { note: f.note, ...Object.fromEntries(backends.map((b) => [b, fs(f.id, b)])) }])),
      guestBadSectors: checks.badSectors,
      ioErrors: checks.ioErrors,
      contentVsRaw: checks.content,
      interference: checks.cpu,
      interferenceByRound: checks.cpuByRound,
      capacityBytes: p.capacityBytes,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Main

/** The parts, in the order they run; a new part is one more entry here and in PART_NAMES. */
const PARTS: Readonly<Record<PartName, (opts: Options, workDir: string) => Promise<PartResult>>> = { io: runIoPart, migrate: migratePart };

/** Target from the issue for the migrate part: the migration ÷ the raw socket time for the same bytes (reported, no fixed goal). */
async function migratePart(opts: Options, workDir: string): Promise<PartResult> {
  const r = await runMigratePart({ diskBytes: opts.migrateDiskBytes, allocatedBytes: opts.migrateAllocatedBytes, channels: opts.channels }, workDir, log);
  return { headline: r.headline, targets: {}, met: {}, breakdown: r.breakdown, dataOk: r.verified, summary: r.summary };
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  const started = performance.now();
  const workDir = await mkdtemp(join(opts.dir, 'ferry-bench-disk-'));
  const machine = {
    cpuModel: os.cpus()[0]?.model ?? 'unknown', cpus: os.cpus().length, node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`, loadAvgAtStart: os.loadavg().map((x) => round(x, 2)), workDir,
  };
  try {
    const results: [PartName, PartResult][] = [];
    for (const name of PART_NAMES) if (opts.only === null || opts.only === name) results.push([name, await PARTS[name](opts, workDir)]);
    const durationMs = Math.round(performance.now() - started);
    const result = {
      bench: 'disk',
      date: new Date().toISOString(),
      ...Object.assign({}, ...results.map(([, r]) => r.headline)) as Record<string, unknown>,
      targets: Object.assign({}, ...results.map(([, r]) => r.targets)) as Record<string, number>,
      met: Object.assign({}, ...results.map(([, r]) => r.met)) as Record<string, boolean>,
      breakdown: Object.fromEntries(results.map(([name, r]) => [name, r.breakdown])),
      options: { ...opts, dir: undefined },
      machine: { ...machine, loadAvgAtEnd: os.loadavg().map((x) => round(x, 2)) },
      durationMs,
    };
    log('');
    for (const [name, r] of results) log(`headline ${name}: ${r.summary}`);
    log(`took ${(durationMs / 1000).toFixed(1)} s`);
    await writeStdout(`${JSON.stringify(result)}\n`);
    return results.every(([, r]) => r.dataOk) ? 0 : 1;
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

runBench('disk', main);
