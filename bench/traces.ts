/**
 * npm run bench:traces [-- --quick] — what each trace installation strategy and granularity buys
 * and costs, measured on real migrations between two `ferry host` processes on loopback.
 *
 * Matrix: strategy (single, stop-all) × granularity (4K, 16K, 64K, 256K, 2M) × workload
 * (sequential writer, random sparse writer, small hot set) × vCPUs (1, 2, 4, 8 — more vCPUs than
 * the 2 cores of this machine: oversubscribed). --quick: both strategies, 4 KiB and 2 MiB, the
 * sequential writer, 1 and 4 vCPUs.
 *
 * Per row: guest-visible stall per installation (max, total), installation time (stop-all: the
 * stall; single: scan + re-arm + epoch barrier), bitmap scan time, bytes re-sent after round 1,
 * pages a coarse region fired for that had not changed (skipped, but hashed), guest throughput
 * during pre-copy, total migration time, guest-observed downtime.
 * Last stdout line: {"rows":[{strategy, granularityBytes, workload, vcpus, stallMaxMs, stallTotalMs,
 * installMs, scanMs, resentBytes, totalMs, guestDowntimeMs, ...}]} — granularityBytes 0 = adaptive.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { KiB, MiB } from '../src/lib/units.js';
import { randomToken } from '../src/host/agent.js';
import { spawnHost, stopHosts, type LocalHost } from '../src/cli/local-hosts.js';

const VM_MEMORY_BYTES = 256 * MiB;
/** The guest runs this long before each migration (past boot and JIT warm-up). */
const WARMUP_MS = 500;

const WORKLOADS: Readonly<Record<string, string>> = {
  // every page of a 64 MiB hot set, in order, as fast as the guest can
  sequential: 'hot=64MiB pattern=seq check=0',
  // random pages of a 192 MiB set, rate-limited: few writes per region between rounds
  'random-sparse': 'hot=192MiB pattern=random rate=200000 check=0',
  // random pages of a 2 MiB set, as fast as the guest can
  'small-hot': 'hot=2MiB pattern=random check=0',
};

interface Row {
  strategy: string;
  granularityBytes: number;
  workload: string;
  vcpus: number;
  stallMaxMs: number;
  stallTotalMs: number;
  installMs: number;
  scanMs: number;
  resentBytes: number;
  unchangedSkippedBytes: number;
  guestUnitsPerSec: number | null;
  totalMs: number;
  guestDowntimeMs: number | null;
  rounds: number;
  installations: number;
  outcome: string;
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const strategies = ['single', 'stop-all'] as const;
  // 0 = adaptive (starts at 2 MiB and refines where little changed)
  const granularities = quick ? [4 * KiB, 2 * MiB] : [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 2 * MiB, 0];
  const workloads = quick ? ['sequential'] : Object.keys(WORKLOADS);
  const vcpuCounts = quick ? [1, 4] : [1, 2, 4, 8];
  const log = (s: string): void => { process.stderr.write(`${s}\n`); };
  const t0 = performance.now();
  const token = randomToken();
  const dirs = [await mkdtemp(join(tmpdir(), 'ferry-traces-a-')), await mkdtemp(join(tmpdir(), 'ferry-traces-b-'))];
  const hosts: LocalHost[] = [];
  const rows: Row[] = [];
  try {
    hosts.push(await spawnHost('a', dirs[0] ?? '', token), await spawnHost('b', dirs[1] ?? '', token));
    const [a, b] = hosts as [LocalHost, LocalHost];
    const image = (await readFile(fileURLToPath(new URL('../guests/dirtier.wasm', import.meta.url)))).toString('base64');
    log('strategy  gran     workload       vCPUs  stallMax  stallTot  install   scan   resent  skipped  total   guestDT  rounds');
    for (const workload of workloads) {
      for (const vcpus of vcpuCounts) {
        for (const granularityBytes of granularities) {
          for (const strategy of strategies) {
            await a.client.createVm({
              name: 'bench', imageBase64: image, memoryBytes: VM_MEMORY_BYTES, vcpus, cmdline: WORKLOADS[workload] ?? '', start: true,
            });
            await sleep(WARMUP_MS);
            const { migrationId } = await a.client.migrate('bench', {
              to: b.url, options: { traceInstall: strategy, ...(granularityBytes === 0 ? { traceAdaptive: true } : { traceGranularityBytes: granularityBytes }) },
            });
            const r = await a.client.waitForMigration(migrationId);
            const owner = r.outcome === 'succeeded' ? b : a;
            await owner.client.stopVm('bench');
            await owner.client.deleteVm('bench');
            const t = r.traces;
            const row: Row = {
              strategy, granularityBytes, workload, vcpus,
              stallMaxMs: t.stallMaxMs, stallTotalMs: t.stallTotalMs,
              installMs: strategy === 'stop-all' ? t.stallTotalMs : t.scanMsTotal + t.barrierMsTotal,
              scanMs: t.scanMsTotal,
              resentBytes: r.rounds.slice(1).reduce((acc, x) => acc + x.bytes, 0),
              unchangedSkippedBytes: t.unchangedPagesSkipped * 4096,
              guestUnitsPerSec: t.guestUnitsPerSecDuringPrecopy,
              totalMs: r.totalMs, guestDowntimeMs: r.guestDowntimeMs, rounds: r.rounds.length, installations: t.installations,
              outcome: r.outcome,
            };
            rows.push(row);
            const f = (n: number | null, d = 1): string => (n === null ? 'n/a' : n.toFixed(d));
            log(`${strategy.padEnd(9)} ${(granularityBytes === 0 ? 'adapt' : `${granularityBytes / KiB}K`).padStart(6)}  ${workload.padEnd(14)} ${String(vcpus).padStart(5)}  ${f(row.stallMaxMs, 2).padStart(8)}  ${f(row.stallTotalMs).padStart(8)}  ${f(row.installMs).padStart(7)}  ${f(row.scanMs, 2).padStart(5)}  ${(row.resentBytes / MiB).toFixed(0).padStart(5)}M  ${(row.unchangedSkippedBytes / MiB).toFixed(0).padStart(6)}M  ${f(row.totalMs, 0).padStart(5)}  ${f(row.guestDowntimeMs).padStart(7)}  ${row.rounds}${row.outcome === 'succeeded' ? '' : ` ${row.outcome}`}`);
          }
        }
      }
    }
  } finally {
    await stopHosts(hosts, 'SIGKILL');
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  }
  log(`took ${((performance.now() - t0) / 1000).toFixed(0)} s on ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), node ${process.version}`);
  process.stdout.write(`${JSON.stringify({ rows })}\n`);
}

await main();
