/**
 * npm run bench:migrate — live migration of a large, busy VM between two host processes on
 * loopback, against the physical limit measured in the same run.
 *
 * Workload: a 1-vCPU dirtier with 1 GiB RAM that first writes every 4 KiB page once (fill=1, no
 * zero pages) and then dirties a 64 MiB hot set continuously (pattern=seq, unthrottled).
 * Baseline: the same number of bytes over one loopback TCP connection (1 MiB writes) into a
 * freshly allocated buffer of the guest's size in a receiving process — what a fresh target can do.
 *
 * Flags: --memory 1GiB --hot 64MiB --vcpus 1 --channels 2 --pattern seq [--warm-target]
 * (--warm-target: the target host keeps a warm guest memory of the VM's size, `ferry host --warm-memory`,
 * and the migration starts once it is filled.)
 * Last stdout line: {"totalMs","engineDowntimeMs","guestDowntimeMs","transferredBytes","rounds",
 *                    "migrationMBps","rawSocketMBps","verified",...}
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseSizeBytes, MiB } from '../src/lib/units.js';
import { randomToken } from '../src/host/agent.js';
import { HOST_NODE_ARGS_ENV, spawnHost, stopHosts, type LocalHost } from '../src/cli/local-hosts.js';
import { rawBaseline } from './raw-socket.js';

/** Booting a 1 GiB dirtier with fill=1 (every page written) takes seconds on a slow-faulting day. */
const VM_BOOT_TIMEOUT_MS = 120_000;
/** The guest's throughput before the migration is measured over this window (the hot set is being dirtied). */
const GUEST_RATE_WINDOW_MS = 1_000;

/** The system's monotonic clock in µs: the clock V8 stamps CPU profile samples with (for profile-summary --window). */
function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/** Guest work units per second over `windowMs` (all vCPUs), from the host's VM view. */
async function guestUnitsPerSec(host: LocalHost, vm: string, windowMs: number): Promise<number> {
  const units = async (): Promise<number> => (await host.client.vm(vm)).vcpus.reduce((a, v) => a + v.units, 0);
  const u0 = await units();
  const t0 = performance.now();
  await sleep(windowMs);
  return ((await units()) - u0) * 1000 / (performance.now() - t0);
}

/** Kernel clock ticks per second of /proc's CPU times (`getconf CLK_TCK`: 100 on every Linux Node supports). */
const CLOCK_TICKS_PER_SEC = 100;

/**
 * CPU time (user + system, ms) a host process used so far: its main thread (the migration's own work on
 * both sides: reading and hashing RAM, framing, sockets, applying pages) and the whole process (plus the
 * vCPUs, GC and compiler threads). CPU time, unlike wall time, does not depend on the machine's load.
 */
async function cpuMs(pid: number): Promise<{ mainMs: number; processMs: number }> {
  const ticks = (stat: string): number => {
    // Fields after the command name (which may contain spaces) start at the state, field 3; utime, stime are 14, 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  };
  const [main, all] = await Promise.all([readFile(`/proc/${pid}/task/${pid}/stat`, 'utf8'), readFile(`/proc/${pid}/stat`, 'utf8')]);
  return { mainMs: (ticks(main) * 1000) / CLOCK_TICKS_PER_SEC, processMs: (ticks(all) * 1000) / CLOCK_TICKS_PER_SEC };
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

/**
 * The migration's and round 1's windows on the monotonic clock, for `profile-summary DIR --window FROM-TO`.
 * Round 1 starts at the precopy phase (the record's clock starts within a request of `startedUs`).
 */
function logProfileWindows(log: (s: string) => void, startedUs: number, endedUs: number, phases: readonly { phase: string; atMs: number }[], round1Ms: number): void {
  const precopyAtUs = startedUs + Math.round((phases.find((p) => p.phase === 'precopy')?.atMs ?? 0) * 1000);
  log(`  profile windows (monotonic µs): migration ${startedUs}-${endedUs}, round 1 ${precopyAtUs}-${precopyAtUs + Math.round(round1Ms * 1000)}`);
}

async function main(): Promise<void> {
  const memoryBytes = parseSizeBytes(arg('memory', '1GiB'));
  const hot = arg('hot', '64MiB');
  const vcpus = Number(arg('vcpus', '1'));
  const channels = Number(arg('channels', '2'));
  const pattern = arg('pattern', 'seq');
  const log = (s: string): void => { process.stderr.write(`${s}\n`); };
  const t0 = performance.now();

  log(`raw baseline: ${memoryBytes / MiB} MiB over one loopback connection into a fresh buffer...`);
  const rawMs = await rawBaseline(memoryBytes, 'buffer');
  const rawSocketMBps = memoryBytes / 1e6 / (rawMs / 1000);
  log(`  ${rawMs.toFixed(0)} ms = ${rawSocketMBps.toFixed(0)} MB/s`);
  log('raw baseline into a fresh shared WebAssembly.Memory (what a target VM has)...');
  const rawWasmMs = await rawBaseline(memoryBytes, 'wasm');
  const rawSocketIntoWasmMBps = memoryBytes / 1e6 / (rawWasmMs / 1000);
  log(`  ${rawWasmMs.toFixed(0)} ms = ${rawSocketIntoWasmMBps.toFixed(0)} MB/s`);

  const token = randomToken();
  const dirs = [await mkdtemp(join(tmpdir(), 'ferry-bench-a-')), await mkdtemp(join(tmpdir(), 'ferry-bench-b-'))];
  const hosts: LocalHost[] = [];
  try {
    const warmTarget = process.argv.includes('--warm-target');
    const echo = process.argv.includes('--verbose');
    hosts.push(await spawnHost('a', dirs[0] ?? '', token, { echo }), await spawnHost('b', dirs[1] ?? '', token, { echo, args: warmTarget ? ['--warm-memory', String(memoryBytes)] : [] }));
    const [a, b] = hosts as [LocalHost, LocalHost];
    const image = await readFile(fileURLToPath(new URL('../guests/dirtier.wasm', import.meta.url)));
    const cmdline = `hot=${hot} pattern=${pattern} fill=1 claim=all check=0 rate=${arg("rate", "0")}`;
    log(`VM: dirtier, ${vcpus} vCPU(s), ${memoryBytes / MiB} MiB, "${cmdline}"; filling memory...`);
    await a.client.createVm({ name: 'bench', imageBase64: image.toString('base64'), memoryBytes, vcpus, cmdline, start: true });
    // Boot (the fill) is done when the guest's boot line is on its console.
    await a.client.waitForConsole('bench', 'dirtier:', VM_BOOT_TIMEOUT_MS);
    // The hot set is being dirtied continuously now: the guest's own rate, to compare pre-copy's with.
    const guestUnitsPerSecBefore = await guestUnitsPerSec(a, 'bench', GUEST_RATE_WINDOW_MS);
    if (warmTarget) await b.waitForLog('warm memory:', VM_BOOT_TIMEOUT_MS);
    log('migrating a -> b...');
    const pidOf = (h: LocalHost): number => h.child.pid ?? 0;
    const cpuBefore = await Promise.all([cpuMs(pidOf(a)), cpuMs(pidOf(b))]);
    const startedUs = monotonicUs();
    const { migrationId } = await a.client.migrate('bench', { to: b.url, options: { dataChannels: channels } });
    const record = await a.client.waitForMigration(migrationId);
    const endedUs = monotonicUs();
    const cpuAfter = await Promise.all([cpuMs(pidOf(a)), cpuMs(pidOf(b))]);
    const cpuUsed = (i: 0 | 1, k: 'mainMs' | 'processMs'): number => Math.round((cpuAfter[i]?.[k] ?? 0) - (cpuBefore[i]?.[k] ?? 0));
    const check = record.outcome === 'succeeded'
      ? await b.client.verifyVm('bench')
      : { selfcheck: null, guestMaxClockGapMs: null };
    log(`  phases: ${record.phases.map((p) => `${p.phase}@${p.atMs.toFixed(0)}ms`).join(' ')}`);
    logProfileWindows(log, startedUs, endedUs, record.phases, record.rounds[0]?.durationMs ?? 0);
    for (const r of record.rounds) log(`  round ${r.round}: ${(r.bytes / MiB).toFixed(1)} MiB in ${r.durationMs.toFixed(0)} ms (${(r.throughputBytesPerSec / 1e6).toFixed(0)} MB/s), dirty after ${(r.dirtyBytesAfter / MiB).toFixed(1)} MiB, throttle ${r.throttlePermille / 10}%`);
    const duringPrecopy = record.traces.guestUnitsPerSecDuringPrecopy;
    const result = {
      totalMs: Math.round(record.totalMs),
      engineDowntimeMs: record.engineDowntimeMs,
      guestDowntimeMs: record.guestDowntimeMs,
      switchoverMs: record.switchoverMs,
      // The guest's own record of its longest stall since boot (ferry_max_clock_gap_ns): an upper
      // bound on guestDowntimeMs that the guest computed itself.
      guestReportedMaxGapMs: check.guestMaxClockGapMs,
      transferredBytes: record.transferredBytes,
      rounds: record.rounds.length,
      migrationMBps: Math.round(memoryBytes / 1e6 / (record.totalMs / 1000)),
      rawSocketMBps: Math.round(rawSocketMBps),
      rawSocketIntoWasmMBps: Math.round(rawSocketIntoWasmMBps),
      totalVsRawWasmBound: Number((record.totalMs / rawWasmMs).toFixed(2)),
      verified: record.verified && check.selfcheck === 0,
      outcome: record.outcome,
      maxThrottlePermille: record.maxThrottlePermille,
      pauseLatencyMs: record.pauseLatencyMs,
      // What pre-copy (tracing, throttling, the hosts' CPU) left the guest, against its rate just before.
      guestUnitsPerSecBefore: Math.round(guestUnitsPerSecBefore),
      guestUnitsPerSecDuringPrecopy: duringPrecopy === null ? null : Math.round(duringPrecopy),
      guestThroughputRatio: duringPrecopy === null || guestUnitsPerSecBefore <= 0 ? null : Number((duringPrecopy / guestUnitsPerSecBefore).toFixed(3)),
      totalVsRawBound: Number((record.totalMs / rawMs).toFixed(2)),
      // CPU time over the migration (ms; the clock polled around migrate → waitForMigration): what each side costs, load aside.
      cpuMs: {
        sourceMain: cpuUsed(0, 'mainMs'), sourceProcess: cpuUsed(0, 'processMs'),
        targetMain: cpuUsed(1, 'mainMs'), targetProcess: cpuUsed(1, 'processMs'),
      },
      targets: { totalVsRawBound: 1.5, guestDowntimeMs: 20 },
      config: { memoryBytes, hot, vcpus, channels, pattern, warmTarget },
      machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version },
      benchMs: Math.round(performance.now() - t0),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    // Killed (saving a 1 GiB VM takes seconds), unless profiled: a profile is written only by a host that exits.
    await stopHosts(hosts, process.env[HOST_NODE_ARGS_ENV] !== undefined ? 'SIGTERM' : 'SIGKILL');
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  }
}

await main();
