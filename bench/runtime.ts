/**
 * Runtime benchmark (`npm run bench:runtime`): what write traces cost the guest, how fast a VM
 * pauses, and what a trace epoch (collect) costs the host. One run, about 2-3 minutes on 2 cores.
 *
 *  1. Guest throughput (work units/s from vcpuStats, 1 vCPU) for a store-heavy guest (dirtier,
 *     hot=64MiB seq, no checking, 128 MiB VM) and a compute guest (hash chain that never halts),
 *     under: baseline (writes not instrumented at all), instrumented with traces off, and traces
 *     armed at 4 KiB / 64 KiB / 2 MiB with a pre-copy-like collect (scan + re-arm + epoch barrier)
 *     every ~20 ms. Configurations are interleaved round by round (rotating the order), each round
 *     on a fresh VM: warm-up, then one or more measurement windows; the median window is reported.
 *  2. Pause-all latency (pause() until every vCPU is parked) on the random-pattern dirtier with 1,
 *     2 and 4 vCPUs, and the trace-epoch barrier time of tracker.collect() on the same VMs.
 *  3. Bitmap scan cost (collect's scanMs): live, on the 128 MiB VMs of part 1 while the guest runs;
 *     and synthetic, on 128 MiB / 1 GiB / 3 GiB VMs at each granularity with nothing fired and with
 *     every region fired (the host marks all of RAM written before each collect: the worst case,
 *     independent of how fast a guest could dirty that much memory).
 *
 * Progress and tables go to stderr; stdout gets exactly one line: a JSON object with the headline
 * numbers (storeHeavySlowdown, computeSlowdown, pauseAllP99Ms), targets, met flags, machine info
 * and a breakdown of every measured number.
 *
 * Options: --rounds=<n> (default 5)  --windows-per-vm=<n> (1)  --window-ms=<n> (1000)
 *          --warmup-ms=<n> (1000)  --pause-cycles=<n> (300)  --skip-big-scan (part 3: 128 MiB only)
 *          --only=throughput|pause|scan (one part; the other headline numbers are then null)
 * The default warm-up is 1 s, not less: a fresh VM's first pass over a 64 MiB hot set takes page
 * faults and its step function is still being tiered up (Liftoff -> TurboFan) for several hundred
 * ms on this class of machine, and windows taken earlier measure that instead of steady state.
 *
 * Noise: each part also reports the CPU time used by *other* processes meanwhile (/proc/stat busy
 * time minus this process's own CPU time) and the hypervisor steal time, in cores, so a reader can
 * tell a quiet run from one that shared the machine.
 */
import os from 'node:os';
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { VmConfigInput } from '../src/vmm/config.js';
import { Vm } from '../src/vmm/vm.js';
import type { FaultInjection } from '../src/vmm/instrument.js';
import type { CollectResult } from '../src/vmm/traces.js';
import { GiB, KiB, MiB } from '../src/lib/units.js';
import { liveVms, runBench, writeStdout } from './process.js';
import { type Interference, type Summary, cpuSnapshot, fmtInterference, interference, median, round, summarize } from './stats.js';

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  readonly rounds: number;
  readonly windowsPerVm: number;
  readonly windowMs: number;
  readonly warmupMs: number;
  readonly pauseCycles: number;
  readonly skipBigScan: boolean;
  /** Run one part only (the headline numbers of the others are then null). */
  readonly only: PartName | null;
}

type PartName = 'throughput' | 'pause' | 'scan';
const PART_NAMES: readonly PartName[] = ['throughput', 'pause', 'scan'];

function parseOptions(argv: readonly string[]): Options {
  const opts: { -readonly [K in keyof Options]: Options[K] } = {
    rounds: 5, windowsPerVm: 1, windowMs: 1000, warmupMs: 1000, pauseCycles: 300, skipBigScan: false, only: null,
  };
  const ints: Record<string, 'rounds' | 'windowsPerVm' | 'windowMs' | 'warmupMs' | 'pauseCycles'> = {
    '--rounds': 'rounds', '--windows-per-vm': 'windowsPerVm', '--window-ms': 'windowMs', '--warmup-ms': 'warmupMs',
    '--pause-cycles': 'pauseCycles',
  };
  for (const arg of argv) {
    if (arg === '--skip-big-scan') { opts.skipBigScan = true; continue; }
    if (arg.startsWith('--only=')) {
      const part = PART_NAMES.find((p) => `--only=${p}` === arg);
      if (part === undefined) throw new Error(`bad option "${arg}"; --only takes ${PART_NAMES.join(', ')}`);
      opts.only = part;
      continue;
    }
    const [key, value] = arg.split('=', 2);
    const field = key !== undefined && Object.hasOwn(ints, key) ? ints[key] : undefined;
    const n = Number(value);
    if (field === undefined || value === undefined || !Number.isInteger(n) || n < 1) {
      throw new Error(`bad option "${arg}"; options: --rounds=N --windows-per-vm=N --window-ms=N --warmup-ms=N --pause-cycles=N --skip-big-scan --only=throughput|pause|scan`);
    }
    opts[field] = n;
  }
  return opts;
}

// ---------------------------------------------------------------------------------------------
// Helpers

const log = (line: string): void => { process.stderr.write(`${line}\n`); };

function guestImage(name: 'dirtier' | 'compute'): Uint8Array {
  // This file runs as dist/bench/runtime.js; images are dist/guests/<name>.wasm.
  const path = fileURLToPath(new URL(`../guests/${name}.wasm`, import.meta.url));
  if (!existsSync(path)) throw new Error(`guest image ${path} is missing: run npm run build`);
  return readFileSync(path);
}

const fmtRate = (u: number): string => (u >= 1e6 ? `${(u / 1e6).toFixed(2)} M/s` : `${(u / 1e3).toFixed(1)} k/s`);
const fmtMs = (ms: number): string => `${ms.toFixed(3)} ms`;
const granName = (bytes: number): string => (bytes >= MiB ? `${bytes / MiB}MiB` : `${bytes / KiB}KiB`);

function totalUnits(vm: Vm): number {
  return vm.vcpuStats().reduce((sum, s) => sum + s.units, 0);
}

function assertHealthy(vm: Vm, what: string): void {
  const crash = vm.crash;
  if (crash !== null) throw new Error(`${what}: VM ${vm.config.name} crashed (${crash.reason}, vCPU ${crash.vcpu}): ${crash.message}`);
}


async function withVm<T>(image: Uint8Array, config: VmConfigInput, faults: FaultInjection | undefined,
  body: (vm: Vm) => Promise<T>): Promise<T> {
  const vm = Vm.create(image, config, null, faults);
  liveVms.add(vm);
  try {
    await vm.start();
    return await body(vm);
  } finally {
    await vm.stop();
    liveVms.delete(vm);
  }
}

/** Sleeps about `ms`; in collecting mode, runs tracker.collect() every ~COLLECT_INTERVAL_MS meanwhile. */
const COLLECT_INTERVAL_MS = 20;
async function runFor(vm: Vm, ms: number, collects: CollectResult[] | null): Promise<void> {
  const end = performance.now() + ms;
  for (;;) {
    const left = end - performance.now();
    if (left <= 0) return;
    if (collects === null) { await sleep(left); continue; }
    await sleep(Math.min(COLLECT_INTERVAL_MS, left));
    collects.push(await vm.tracker.collect());
  }
}

// ---------------------------------------------------------------------------------------------
// Part 1: throughput

type Workload = 'store-heavy' | 'compute';
type ConfigKind = 'baseline' | 'traces-off' | 'armed';

interface ThroughputConfig {
  readonly workload: Workload;
  readonly kind: ConfigKind;
  readonly granularityBytes: number;
  /** e.g. "baseline", "traces-off", "armed-4KiB" */
  readonly label: string;
}

interface CollectAccumulator {
  count: number;
  fired: number[];
  scanMs: number[];
  barrierMs: number[];
  regionCount: number;
}

const GRANULARITIES = [4 * KiB, 64 * KiB, 2 * MiB] as const;
const THROUGHPUT_VM_BYTES = 128 * MiB;
/** The store-heavy dirtier's hot set: in its command line and in the pre-warm below. */
const STORE_HEAVY_HOT_BYTES = 64 * MiB;
const WORKLOAD_CMDLINE: Record<Workload, string> = {
  'store-heavy': `hot=${STORE_HEAVY_HOT_BYTES / MiB}MiB pattern=seq check=0`,
  compute: 'iters=1000000000000 report=1000000000000',
};
const WORKLOAD_GUEST: Record<Workload, 'dirtier' | 'compute'> = { 'store-heavy': 'dirtier', compute: 'compute' };
/**
 * Work units a VM must complete before its warm-up clock starts: two passes over the store-heavy
 * hot set (one unit = one 4 KiB page update), so that first-touch page faults are never inside a window. They
 * were assumed to fit in the 1 s warm-up (0.5–0.7 s on 2026-11-25), but on a day when first touch
 * ran at 65–100 MB/s they took the whole warm-up and part of the first window.
 */
const WORKLOAD_PREWARM_UNITS: Record<Workload, number> = { 'store-heavy': 2 * (STORE_HEAVY_HOT_BYTES / (4 * KiB)), compute: 0 };
/** Upper bound on that pre-warm: a guest that does not get there is reported, not waited for. */
const PREWARM_LIMIT_MS = 60_000;
const PREWARM_POLL_MS = 100;

function throughputConfigs(): ThroughputConfig[] {
  const out: ThroughputConfig[] = [];
  for (const workload of ['store-heavy', 'compute'] as const) {
    out.push({ workload, kind: 'baseline', granularityBytes: 4 * KiB, label: 'baseline' });
    out.push({ workload, kind: 'traces-off', granularityBytes: 4 * KiB, label: 'traces-off' });
    for (const g of GRANULARITIES) out.push({ workload, kind: 'armed', granularityBytes: g, label: `armed-${granName(g)}` });
  }
  return out;
}

async function measureThroughputRound(cfg: ThroughputConfig, images: Record<'dirtier' | 'compute', Uint8Array>, opts: Options,
  acc: CollectAccumulator | null): Promise<number[]> {
  const config: VmConfigInput = {
    name: `bench-${cfg.workload}-${cfg.label}`, memoryBytes: THROUGHPUT_VM_BYTES, vcpus: 1,
    granularityBytes: cfg.granularityBytes, cmdline: WORKLOAD_CMDLINE[cfg.workload],
  };
  // Instrumented configurations pass an empty FaultInjection (no fault) rather than none: instrumentImage
  // caches and reuses compiled images, but never fault-injected ones, and the baseline is one. This way
  // every VM of every configuration gets a freshly compiled module and starts from the same cold JIT.
  const faults: FaultInjection = cfg.kind === 'baseline' ? { uninstrumentedWrites: true } : {};
  return withVm(images[WORKLOAD_GUEST[cfg.workload]], config, faults, async (vm) => {
    const collects: CollectResult[] | null = cfg.kind === 'armed' ? [] : null;
    if (collects !== null) await vm.tracker.armAll();
    const prewarmEnd = performance.now() + PREWARM_LIMIT_MS;
    while (totalUnits(vm) < WORKLOAD_PREWARM_UNITS[cfg.workload]) {
      if (performance.now() > prewarmEnd) throw new Error(`${cfg.workload}/${cfg.label}: the guest did not pass over its hot set twice within ${PREWARM_LIMIT_MS} ms`);
      await runFor(vm, PREWARM_POLL_MS, collects);
    }
    await runFor(vm, opts.warmupMs, collects);
    assertHealthy(vm, `${cfg.workload}/${cfg.label} warm-up`);
    if (collects !== null) collects.length = 0; // scan statistics only from the measured windows
    const rates: number[] = [];
    for (let w = 0; w < opts.windowsPerVm; w++) {
      const u0 = totalUnits(vm), t0 = performance.now();
      await runFor(vm, opts.windowMs, collects);
      const u1 = totalUnits(vm), t1 = performance.now();
      assertHealthy(vm, `${cfg.workload}/${cfg.label} window`);
      if (vm.state !== 'running') throw new Error(`${cfg.workload}/${cfg.label}: VM is ${vm.state} during the window`);
      rates.push((u1 - u0) / ((t1 - t0) / 1000));
    }
    if (collects !== null && acc !== null) {
      acc.count += collects.length;
      acc.regionCount = vm.tracker.regionCount;
      for (const c of collects) { acc.fired.push(c.regions.length); acc.scanMs.push(c.scanMs); acc.barrierMs.push(c.barrierMs); }
    }
    return rates;
  });
}

// ---------------------------------------------------------------------------------------------
// Part 2: pause-all latency and trace-epoch barrier

const PAUSE_VM_BYTES = 64 * MiB;
const PAUSE_CMDLINE = 'hot=16MiB pattern=random';
const PAUSE_VCPUS = [1, 2, 4] as const;

interface PauseResultStats {
  readonly vcpus: number;
  readonly pauseMs: Summary;
  readonly barrierMs: Summary;
  readonly scanMs: Summary;
  readonly selfcheckViolations: number;
  readonly unitsPerSec: number;
  /** Mean wall time of one guest step over the VM's life, µs (the step target is 250 µs). */
  readonly meanStepUs: number;
  /** Longest wall time of one step seen by any vCPU, ms (includes time the thread was preempted). */
  readonly maxStepMs: number;
}

const randomGapMs = (): number => 1 + Math.random() * 4;

async function measurePause(vcpus: number, image: Uint8Array, cycles: number): Promise<PauseResultStats> {
  const config: VmConfigInput = { name: `bench-pause-${vcpus}`, memoryBytes: PAUSE_VM_BYTES, vcpus, cmdline: PAUSE_CMDLINE };
  return withVm(image, config, undefined, async (vm) => {
    await sleep(500); // warm-up
    const u0 = totalUnits(vm), t0 = performance.now();
    const pauses: number[] = [];
    for (let i = 0; i < cycles; i++) {
      await sleep(randomGapMs());
      const r = await vm.pause();
      pauses.push(r.latencyMs);
      vm.resume();
    }
    const unitsPerSec = (totalUnits(vm) - u0) / ((performance.now() - t0) / 1000);
    assertHealthy(vm, `pause ${vcpus} vCPU`);
    await vm.tracker.armAll();
    const barrier: number[] = [], scan: number[] = [];
    for (let i = 0; i < cycles; i++) {
      await sleep(randomGapMs());
      const c = await vm.tracker.collect();
      barrier.push(c.barrierMs);
      scan.push(c.scanMs);
    }
    vm.tracker.disarmAll();
    assertHealthy(vm, `trace barrier ${vcpus} vCPU`);
    await vm.pause();
    const violations = vm.selfcheck();
    const stats = vm.vcpuStats();
    const steps = stats.reduce((a, st) => a + st.steps, 0);
    const stepMs = stats.reduce((a, st) => a + st.stepMs, 0);
    return {
      vcpus, pauseMs: summarize(pauses), barrierMs: summarize(barrier), scanMs: summarize(scan),
      selfcheckViolations: violations, unitsPerSec: Math.round(unitsPerSec),
      meanStepUs: round(steps === 0 ? NaN : (stepMs / steps) * 1000, 1), maxStepMs: round(Math.max(...stats.map((st) => st.maxStepMs)), 3),
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Part 3: bitmap scan cost

/** VM sizes for the synthetic scan measurement (3 GiB is the largest VM Ferry allows). */
const SCAN_VM_SIZES = [128 * MiB, 1 * GiB, 3 * GiB] as const;
const SCAN_IDLE_COLLECTS = 40;
const SCAN_FULL_COLLECTS = 15;

interface ScanStats {
  readonly granularity: string;
  readonly regionCount: number;
  readonly collects: number;
  readonly firedMean: number;
  /** Regions found fired per collect. */
  readonly fired: Summary;
  readonly scanMs: Summary;
  readonly barrierMs: Summary;
}

function scanStats(granularityBytes: number, acc: CollectAccumulator): ScanStats {
  const firedMean = acc.fired.length === 0 ? 0 : acc.fired.reduce((a, b) => a + b, 0) / acc.fired.length;
  return {
    granularity: granName(granularityBytes), regionCount: acc.regionCount, collects: acc.count,
    firedMean: Math.round(firedMean), fired: summarize(acc.fired), scanMs: summarize(acc.scanMs), barrierMs: summarize(acc.barrierMs),
  };
}

interface SyntheticScan {
  readonly vmBytes: number;
  readonly granularity: string;
  readonly regionCount: number;
  /** Nothing fired since the last collect: the word-at-a-time compare only. */
  readonly noneFiredScanMs: Summary;
  /** Every region fired (markWritten over all of RAM before each collect): scan, list and re-arm all. */
  readonly allFiredScanMs: Summary;
  /** allFired p50 per fired region, ns. */
  readonly allFiredNsPerRegion: number;
}

const sizeName = (bytes: number): string => (bytes >= GiB ? `${bytes / GiB}GiB` : `${bytes / MiB}MiB`);

/**
 * Scan cost as a function of bitmap size and fired count, independent of how fast a guest can
 * dirty memory: the VM is created but never started (no vCPU, so the epoch barrier is free), and
 * the host fires traces itself with Vm.markWritten over all of RAM for the worst case.
 */
async function measureSyntheticScan(vmBytes: number, granularityBytes: number, image: Uint8Array): Promise<SyntheticScan> {
  const vm = Vm.create(image, { name: `bench-scan-${sizeName(vmBytes)}-${granName(granularityBytes)}`, memoryBytes: vmBytes, granularityBytes });
  liveVms.add(vm);
  try {
    const tracker = vm.tracker;
    await tracker.armAll();
    const idle: number[] = [], full: number[] = [];
    const fullCollect = async (): Promise<number> => {
      vm.markWritten(0, vm.ram.byteLength);
      const c = await tracker.collect();
      if (c.regions.length !== tracker.regionCount) throw new Error(`scan of ${sizeName(vmBytes)}/${granName(granularityBytes)}: ${c.regions.length} of ${tracker.regionCount} regions reported fired after marking all of RAM`);
      return c.scanMs;
    };
    // Warm-up (the scan loop is JIT-compiled on first use), then measure.
    for (let i = 0; i < 5; i++) { await tracker.collect(); await fullCollect(); }
    for (let i = 0; i < SCAN_IDLE_COLLECTS; i++) idle.push((await tracker.collect()).scanMs);
    for (let i = 0; i < SCAN_FULL_COLLECTS; i++) full.push(await fullCollect());
    const allFired = summarize(full);
    return {
      vmBytes, granularity: granName(granularityBytes), regionCount: tracker.regionCount, noneFiredScanMs: summarize(idle),
      allFiredScanMs: allFired, allFiredNsPerRegion: round(allFired.p50 * 1e6 / tracker.regionCount, 2),
    };
  } finally {
    await vm.stop();
    liveVms.delete(vm);
  }
}

// ---------------------------------------------------------------------------------------------
// Main

const TARGETS = { storeHeavySlowdown: 1.3, computeSlowdown: 1.05, pauseAllP99Ms: 1 } as const;

type Images = Record<'dirtier' | 'compute', Uint8Array>;
type ThroughputTable = Record<Workload, Record<string, { medianUnitsPerSec: number; windows: number[]; spreadPct: number }>>;

interface ThroughputPart {
  readonly perConfig: ThroughputTable;
  readonly slowdowns: Record<Workload, Record<string, number>>;
  readonly collectDuringThroughput: Record<Workload, Record<string, ScanStats>>;
  readonly interference: Interference;
}

async function partThroughput(opts: Options, images: Images): Promise<ThroughputPart> {
  const configs = throughputConfigs();
  const rates = new Map<ThroughputConfig, number[]>(configs.map((c) => [c, []]));
  /** Per round: the round's median window of each configuration (for drift-free paired ratios). */
  const roundRates = new Map<ThroughputConfig, number[]>(configs.map((c) => [c, []]));
  const collectAcc = new Map<ThroughputConfig, CollectAccumulator>();
  for (const c of configs) if (c.kind === 'armed') collectAcc.set(c, { count: 0, fired: [], scanMs: [], barrierMs: [], regionCount: 0 });
  log(`\n[1/3] throughput: ${configs.length} configurations x ${opts.rounds} rounds x ${opts.windowsPerVm} window(s) of ${opts.windowMs} ms after ${opts.warmupMs} ms warm-up`);
  const cpu = cpuSnapshot();
  for (let round = 0; round < opts.rounds; round++) {
    const t0 = performance.now();
    // Rotate the order each round so no configuration always runs first or right after another.
    const order = configs.map((_, i) => configs[(i + round * 3) % configs.length] as ThroughputConfig);
    const parts: string[] = [];
    for (const cfg of order) {
      const r = await measureThroughputRound(cfg, images, opts, collectAcc.get(cfg) ?? null);
      rates.get(cfg)?.push(...r);
      roundRates.get(cfg)?.push(median(r));
      parts.push(`${cfg.workload}/${cfg.label} ${fmtRate(median(r))}`);
    }
    log(`  round ${round + 1}/${opts.rounds} (${((performance.now() - t0) / 1000).toFixed(1)} s): ${parts.join(', ')}`);
  }
  const cpuUse = interference(cpu, cpuSnapshot());
  log(`  ${fmtInterference(cpuUse)}`);

  const tp: ThroughputTable = { 'store-heavy': {}, compute: {} };
  for (const cfg of configs) {
    const w = rates.get(cfg) ?? [];
    const m = median(w);
    const spread = w.length === 0 ? NaN : (Math.max(...w) - Math.min(...w)) / m * 100;
    tp[cfg.workload][cfg.label] = { medianUnitsPerSec: Math.round(m), windows: w.map((x) => Math.round(x)), spreadPct: round(spread, 1) };
  }
  const rate = (w: Workload, label: string): number => tp[w][label]?.medianUnitsPerSec ?? NaN;
  const slowdowns: Record<Workload, Record<string, number>> = { 'store-heavy': {}, compute: {} };
  for (const w of ['store-heavy', 'compute'] as const) {
    const base = rate(w, 'baseline');
    slowdowns[w]['traces-off'] = round(base / rate(w, 'traces-off'), 4);
    for (const g of GRANULARITIES) slowdowns[w][`armed-${granName(g)}`] = round(base / rate(w, `armed-${granName(g)}`), 4);
    // Paired: baseline and configuration from the same round, median over rounds (cancels slow drift of the machine).
    const baseRounds = roundRates.get(configs.find((c) => c.workload === w && c.kind === 'baseline') as ThroughputConfig) ?? [];
    for (const cfg of configs) {
      if (cfg.workload !== w || cfg.kind === 'baseline') continue;
      const own = roundRates.get(cfg) ?? [];
      slowdowns[w][`${cfg.label}-paired`] = round(median(own.map((x, i) => (baseRounds[i] ?? NaN) / x)), 4);
    }
    // Cost of arming alone, relative to instrumented-but-off.
    for (const g of GRANULARITIES) slowdowns[w][`armed-${granName(g)}-vs-off`] = round(rate(w, 'traces-off') / rate(w, `armed-${granName(g)}`), 4);
  }
  log('\n  workload     config        median units/s   windows spread   slowdown vs baseline (ratio of medians)');
  for (const cfg of configs) {
    const t = tp[cfg.workload][cfg.label];
    if (t === undefined) continue;
    const sd = cfg.kind === 'baseline' ? 1 : slowdowns[cfg.workload][cfg.label] ?? NaN;
    const paired = cfg.kind === 'baseline' ? 1 : slowdowns[cfg.workload][`${cfg.label}-paired`] ?? NaN;
    log(`  ${cfg.workload.padEnd(12)} ${cfg.label.padEnd(13)} ${fmtRate(t.medianUnitsPerSec).padStart(14)}   ${`${t.spreadPct}%`.padStart(14)}   ${sd.toFixed(3)}x   (paired per round: ${paired.toFixed(3)}x)`);
  }
  const collectDuringThroughput: Record<Workload, Record<string, ScanStats>> = { 'store-heavy': {}, compute: {} };
  for (const [cfg, acc] of collectAcc) collectDuringThroughput[cfg.workload][granName(cfg.granularityBytes)] = scanStats(cfg.granularityBytes, acc);
  log('\n  collect every ~20 ms during the armed windows (128 MiB VM):');
  log('  workload     gran     regions  collects  fired/collect (mean)  scan p50/p99 ms      barrier p50/p99 ms');
  for (const w of ['store-heavy', 'compute'] as const) {
    for (const [g, st] of Object.entries(collectDuringThroughput[w])) {
      log(`  ${w.padEnd(12)} ${g.padEnd(8)} ${String(st.regionCount).padStart(7)}  ${String(st.collects).padStart(8)}  ${String(st.firedMean).padStart(20)}  ${`${st.scanMs.p50.toFixed(3)} / ${st.scanMs.p99.toFixed(3)}`.padStart(16)}  ${`${st.barrierMs.p50.toFixed(3)} / ${st.barrierMs.p99.toFixed(3)}`.padStart(22)}`);
    }
  }
  return { perConfig: tp, slowdowns, collectDuringThroughput, interference: cpuUse };
}

interface PausePart {
  readonly perVcpus: Record<string, PauseResultStats>;
  readonly interference: Interference;
}

async function partPause(opts: Options, images: Images): Promise<PausePart> {
  log(`\n[2/3] pause-all latency and trace-epoch barrier: dirtier "${PAUSE_CMDLINE}", 64 MiB VM, ${opts.pauseCycles} cycles each, gaps 1-5 ms`);
  const perVcpus: Record<string, PauseResultStats> = {};
  const cpu = cpuSnapshot();
  for (const v of PAUSE_VCPUS) {
    const r = await measurePause(v, images.dirtier, opts.pauseCycles);
    perVcpus[String(v)] = r;
    log(`  ${v} vCPU: pause p50 ${fmtMs(r.pauseMs.p50)} p90 ${fmtMs(r.pauseMs.p90)} p99 ${fmtMs(r.pauseMs.p99)} max ${fmtMs(r.pauseMs.max)} | `
      + `collect barrier p50 ${fmtMs(r.barrierMs.p50)} p99 ${fmtMs(r.barrierMs.p99)}, scan p50 ${fmtMs(r.scanMs.p50)} p99 ${fmtMs(r.scanMs.p99)} | `
      + `step mean ${r.meanStepUs} µs max ${fmtMs(r.maxStepMs)} | selfcheck violations ${r.selfcheckViolations}`);
    if (r.selfcheckViolations !== 0) throw new Error(`dirtier self-check found ${r.selfcheckViolations} violations after the ${v}-vCPU pause test`);
  }
  const cpuUse = interference(cpu, cpuSnapshot());
  log(`  ${fmtInterference(cpuUse)}`);
  return { perVcpus, interference: cpuUse };
}

interface ScanPart {
  readonly perSize: Record<string, Record<string, SyntheticScan>>;
  readonly interference: Interference;
}

async function partScan(opts: Options, images: Images): Promise<ScanPart> {
  const sizes = opts.skipBigScan ? SCAN_VM_SIZES.filter((b) => b <= THROUGHPUT_VM_BYTES) : SCAN_VM_SIZES;
  log('\n[3/3] bitmap scan cost (collect().scanMs), synthetic: VM created but not started; "all fired" = Vm.markWritten over all of RAM before each collect');
  log('  VM      gran     regions   none fired p50/p99 ms   all fired p50/p99/max ms      ns/region');
  const perSize: Record<string, Record<string, SyntheticScan>> = {};
  const cpu = cpuSnapshot();
  for (const bytes of sizes) {
    const perGran: Record<string, SyntheticScan> = {};
    for (const g of GRANULARITIES) {
      const st = await measureSyntheticScan(bytes, g, images.compute);
      perGran[granName(g)] = st;
      log(`  ${sizeName(bytes).padEnd(7)} ${st.granularity.padEnd(7)} ${String(st.regionCount).padStart(8)}   ${`${st.noneFiredScanMs.p50.toFixed(3)} / ${st.noneFiredScanMs.p99.toFixed(3)}`.padStart(20)}   `
        + `${`${st.allFiredScanMs.p50.toFixed(3)} / ${st.allFiredScanMs.p99.toFixed(3)} / ${st.allFiredScanMs.max.toFixed(3)}`.padStart(26)}   ${st.allFiredNsPerRegion.toFixed(1).padStart(10)}`);
    }
    perSize[sizeName(bytes)] = perGran;
  }
  if (opts.skipBigScan) log('  (VMs above 128 MiB skipped: --skip-big-scan)');
  const cpuUse = interference(cpu, cpuSnapshot());
  log(`  ${fmtInterference(cpuUse)}`);
  return { perSize, interference: cpuUse };
}

const metFlag = (value: number, target: number): boolean | null => (Number.isFinite(value) ? value <= target : null);
const fmtHeadline = (value: number, digits: number, unit: string, target: number): string =>
  (Number.isFinite(value) ? `${value.toFixed(digits)}${unit} (target <= ${target}${unit}, ${value <= target ? 'met' : 'MISSED'})` : 'not measured');

async function main(): Promise<number> {
  const started = performance.now();
  const opts = parseOptions(process.argv.slice(2));
  const machine = {
    cpuModel: os.cpus()[0]?.model ?? 'unknown', cpus: os.cpus().length, node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`, totalMemGiB: round(os.totalmem() / GiB, 1),
    loadAvgAtStart: os.loadavg().map((x) => round(x, 2)),
    loadAvgAtEnd: [] as number[],
  };
  log(`bench:runtime on ${machine.cpuModel} x${machine.cpus}, node ${machine.node}, ${machine.platform}`);
  log(`options: ${JSON.stringify(opts)}`);
  const images: Images = { dirtier: guestImage('dirtier'), compute: guestImage('compute') };

  const want = (part: PartName): boolean => opts.only === null || opts.only === part;
  const tput = want('throughput') ? await partThroughput(opts, images) : null;
  const pause = want('pause') ? await partPause(opts, images) : null;
  const scan = want('scan') ? await partScan(opts, images) : null;

  const storeHeavySlowdown = tput?.slowdowns['store-heavy']['armed-4KiB'] ?? NaN;
  const computeSlowdown = tput?.slowdowns.compute['armed-4KiB'] ?? NaN;
  const pauseAllP99Ms = pause?.perVcpus['2']?.pauseMs.p99 ?? NaN;
  const durationMs = Math.round(performance.now() - started);
  machine.loadAvgAtEnd = os.loadavg().map((x) => round(x, 2));
  const perVcpus = Object.entries(pause?.perVcpus ?? {});
  const result = {
    bench: 'runtime',
    date: new Date().toISOString(),
    // NaN (not measured with --only) serialises as null.
    storeHeavySlowdown, computeSlowdown, pauseAllP99Ms,
    targets: TARGETS,
    met: {
      storeHeavySlowdown: metFlag(storeHeavySlowdown, TARGETS.storeHeavySlowdown),
      computeSlowdown: metFlag(computeSlowdown, TARGETS.computeSlowdown),
      pauseAllP99Ms: metFlag(pauseAllP99Ms, TARGETS.pauseAllP99Ms),
    },
    breakdown: {
      throughput: tput === null ? null : {
        unit: 'guest work units per second (store-heavy: 4 KiB page updates; compute: hash iterations), 1 vCPU, 128 MiB VM',
        cmdline: WORKLOAD_CMDLINE,
        perConfig: tput.perConfig,
        slowdown: tput.slowdowns,
        note: 'slowdown <label> = median baseline units/s / median <label> units/s; <label>-paired = median over rounds of the same round\'s '
          + 'baseline/<label> ratio; armed-<g>-vs-off = traces-off / armed-<g>. traces-off is measured at 4 KiB (the off path does not '
          + 'depend on granularity); armed = armAll, then collect every ~20 ms through warm-up and window',
      },
      collectDuringThroughput: tput?.collectDuringThroughput ?? null,
      pause: pause === null ? null : Object.fromEntries(perVcpus.map(([k, r]) => [k, {
        ...r.pauseMs, unitsPerSec: r.unitsPerSec, meanStepUs: r.meanStepUs, maxStepMs: r.maxStepMs,
      }])),
      traceBarrier: pause === null ? null : Object.fromEntries(perVcpus.map(([k, r]) => [k, { barrierMs: r.barrierMs, scanMs: r.scanMs }])),
      scanSynthetic: scan?.perSize ?? null,
      interference: { throughput: tput?.interference ?? null, pause: pause?.interference ?? null, scan: scan?.interference ?? null },
      selfcheckViolations: pause === null ? null : Object.fromEntries(perVcpus.map(([k, r]) => [k, r.selfcheckViolations])),
      options: opts,
    },
    machine,
    durationMs,
  };
  log(`\nheadline: storeHeavySlowdown ${fmtHeadline(storeHeavySlowdown, 3, 'x', TARGETS.storeHeavySlowdown)}, `
    + `computeSlowdown ${fmtHeadline(computeSlowdown, 3, 'x', TARGETS.computeSlowdown)}, `
    + `pauseAllP99Ms @2 vCPU ${fmtHeadline(pauseAllP99Ms, 3, ' ms', TARGETS.pauseAllP99Ms)}; took ${(durationMs / 1000).toFixed(1)} s`);
  await writeStdout(`${JSON.stringify(result)}\n`);
  return 0;
}

runBench('runtime', main);
