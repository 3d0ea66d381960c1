/**
 * Small statistics and machine-noise helpers shared by the benchmarks: nearest-rank percentiles,
 * medians, and how much CPU other processes used while a part ran (Linux /proc/stat), so a reader
 * can tell a quiet run from one that shared the machine.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

export interface Summary {
  readonly n: number;
  readonly mean: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
  readonly min: number;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] ?? NaN;
}

export function summarize(values: readonly number[]): Summary {
  const s = [...values].sort((a, b) => a - b);
  const mean = s.length === 0 ? NaN : s.reduce((a, b) => a + b, 0) / s.length;
  return {
    n: s.length, mean: round(mean, 4), p50: round(percentile(s, 50), 4), p90: round(percentile(s, 90), 4),
    p99: round(percentile(s, 99), 4), max: round(s[s.length - 1] ?? NaN, 4), min: round(s[0] ?? NaN, 4),
  };
}

/** Median (mean of the two middle values for an even count). */
export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? (s[mid] ?? NaN) : ((s[mid - 1] ?? NaN) + (s[mid] ?? NaN)) / 2;
}

export function round(x: number, digits: number): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** System CPU accounting (Linux /proc/stat) to tell how much else ran on the machine meanwhile. */
export interface CpuSnapshot { readonly wallMs: number; readonly busyMs: number | null; readonly stealMs: number | null; readonly ownMs: number }

export function cpuSnapshot(): CpuSnapshot {
  const own = process.cpuUsage(); // all threads of this process (vCPU workers included)
  let busyMs: number | null = null, stealMs: number | null = null;
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const tick = 10; // USER_HZ = 100 on Linux
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f;
    busyMs = (user + nice + system + irq + softirq) * tick;
    stealMs = steal * tick;
  } catch { /* not Linux: no system-wide numbers */ }
  return { wallMs: performance.now(), busyMs, stealMs, ownMs: (own.user + own.system) / 1000 };
}

export interface Interference {
  /** Average number of cores used by other processes during the interval (coarse: 10 ms ticks). */
  readonly otherCores: number | null;
  /** Average number of cores taken by the hypervisor (steal time). */
  readonly stealCores: number | null;
  /** Average number of cores this process (main thread + vCPU workers) used. */
  readonly ownCores: number;
}

export function interference(a: CpuSnapshot, b: CpuSnapshot): Interference {
  const wall = b.wallMs - a.wallMs;
  const own = b.ownMs - a.ownMs;
  const busy = a.busyMs === null || b.busyMs === null ? null : b.busyMs - a.busyMs;
  const steal = a.stealMs === null || b.stealMs === null ? null : b.stealMs - a.stealMs;
  return {
    otherCores: busy === null ? null : round(Math.max(0, busy - own) / wall, 2),
    stealCores: steal === null ? null : round(steal / wall, 2),
    ownCores: round(own / wall, 2),
  };
}

export const fmtInterference = (i: Interference): string =>
  `CPU: this process ${i.ownCores} cores, other processes ${i.otherCores ?? '?'} cores, steal ${i.stealCores ?? '?'} cores`;
