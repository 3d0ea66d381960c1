/**
 * Pre-copy: memory is sent in rounds while the guest runs; each round's write traces say what the
 * next must re-send. After each round the pure policy (../convergence.ts) decides: switch over,
 * another round (possibly with a stronger vCPU throttle: auto-converge), or give up. Adaptive
 * tracing splits regions that keep firing with mostly unchanged pages to per-page tracing.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { FerryError } from '../../lib/errors.js';
import type { DirtyTracker } from '../../vmm/traces.js';
import type { Vm } from '../../vmm/vm.js';
import { VcpuState } from '../../vmm/control.js';
import { DEFAULT_POLICY, decideConvergence, expectedDowntimeMs, type ConvergenceDecision, type ConvergencePolicy } from '../convergence.js';
import { DIGEST_PAGE_BYTES } from '../digest.js';
import type { MigrationOptions } from '../options.js';
import { checkCancelled, type JobContext } from './context.js';
import { allRegions, coveredBytes, firedCount, union, type DirtySet } from './dirty-set.js';
import type { TracePlan } from './record.js';
import type { PageSender } from './sender.js';
import type { DiskSender } from './disk-sender.js';
import type { Session } from './session.js';

/** Adaptive tracing starts at this granularity unless the migration names one. */
export const ADAPTIVE_START_GRANULARITY_BYTES = 2 * 1024 * 1024;
/** Split a region that fired again when more than this share of its pages had not changed. */
export const REFINE_UNCHANGED_FRACTION = 0.5;
/**
 * How long after a round's collect the guest's dirtying is sampled (read-only) for the throttle
 * decision: short, so a hot set that is rewritten within a round is not yet all fired (the rate is
 * a lower bound either way), and a small cost per round that does not converge by itself.
 */
export const DIRTY_RATE_PROBE_MS = 2;
/**
 * After the throttle was raised: how long pre-copy waits at most for every running vCPU to end the step
 * it was in (steps last ~0.15 ms; the next one already runs with the throttled budget), before it
 * collects once more. The writes made at the old rate since the round's collect — the probe, the
 * decision, that last step — then go into the next round's set instead of the one after: a guest that
 * rewrites its whole hot set in a millisecond (bench:migrate's) otherwise has it all re-sent once more.
 */
export const THROTTLE_SETTLE_MAX_MS = 20;
/** How often the vCPUs' step counts are read meanwhile (each vCPU publishes its count at a step's end). */
const THROTTLE_SETTLE_POLL_MS = 1;

/** The tracing a migration uses: its options, else the VM's own granularity. */
export function tracePlan(options: MigrationOptions, vmGranularityBytes: number): TracePlan {
  const adaptive = options.traceAdaptive === true;
  return {
    install: options.traceInstall ?? 'single',
    granularityBytes: options.traceGranularityBytes ?? (adaptive ? ADAPTIVE_START_GRANULARITY_BYTES : vmGranularityBytes),
    adaptive,
  };
}

/** The default policy with what the migration's options override. */
export function convergencePolicy(options: MigrationOptions): ConvergencePolicy {
  return {
    ...DEFAULT_POLICY,
    ...(options.downtimeTargetMs !== undefined ? { downtimeTargetMs: options.downtimeTargetMs } : {}),
    ...(options.maxRounds !== undefined ? { maxRounds: options.maxRounds } : {}),
    ...(options.maxTotalMs !== undefined ? { maxTotalMs: options.maxTotalMs } : {}),
    ...(options.autoConverge !== undefined ? { autoConverge: options.autoConverge } : {}),
    ...(options.onLimit !== undefined ? { onLimit: options.onLimit } : {}),
  };
}

/** One round's end: what the guest dirtied meanwhile (memory and disk), and what the policy made of it. */
interface RoundEnd {
  readonly collected: DirtySet;
  readonly diskBlocks: number[];
  readonly decision: ConvergenceDecision;
}

/** What is still dirty when pre-copy hands over to the switch-over. */
export interface FinalDirty {
  readonly memory: DirtySet;
  readonly diskBlocks: readonly number[];
}

export class PreCopy {
  private readonly policy: ConvergencePolicy;
  private previousDirty: number | null = null;

  constructor(private readonly ctx: JobContext, private readonly session: Session, private readonly sender: PageSender, private readonly disk: DiskSender | null) {
    this.policy = convergencePolicy(ctx.options);
  }

  /**
   * Pre-copy rounds of memory and (copy mode) disk blocks, one convergence decision over both;
   * returns what is still dirty when the policy decided to switch over.
   */
  async run(): Promise<FinalDirty> {
    const guestRate = guestRateMeter(this.ctx.vm);
    const tracker = await this.armTraces();
    // Round 1: everything. The target's memory and disk are fresh (all zero): zeros are not sent at all.
    let work = allRegions(tracker.regionCount);
    let diskWork = this.disk !== null ? await this.disk.start() : [];
    for (let round = 1; ; round++) {
      checkCancelled(this.ctx);
      const unchanged = new Map<number, number>();
      const { collected, diskBlocks, decision } = await this.round(tracker, work, diskWork, round, unchanged);
      if (decision.action === 'switchover') {
        this.ctx.record.forced = decision.forced;
        this.ctx.record.noteGuestRate(guestRate());
        return { memory: collected, diskBlocks };
      }
      if (decision.action === 'abort') throw new FerryError('MIGRATION_NOT_CONVERGED', `migration aborted: ${decision.reason}`, { rounds: round });
      const raised = decision.throttlePermille > this.ctx.record.throttle;
      this.applyThrottle(decision.throttlePermille);
      work = await this.refine(collected, unchanged, round);
      if (raised) work = union(work, await this.settleThrottle(tracker));
      diskWork = diskBlocks;
    }
  }

  private async armTraces(): Promise<DirtyTracker> {
    const plan = this.ctx.record.tracePlan;
    const tracker = await this.ctx.vm.setTraceGranularity(plan.granularityBytes);
    tracker.strategy = plan.install;
    this.ctx.record.noteInstall(await tracker.armAll());
    return tracker;
  }

  /** Sends `work`, then collects what the guest dirtied while it was sent and asks the policy. */
  private async round(tracker: DirtyTracker, work: DirtySet, diskWork: readonly number[], round: number, unchanged: Map<number, number>): Promise<RoundEnd> {
    const { record } = this.ctx;
    const startedMs = performance.now();
    const bytes = await this.sender.send(work, round, { skipZero: round === 1, unchangedByRegion: unchanged });
    const diskBytes = this.disk !== null ? await this.disk.send(diskWork, round, round === 1 && this.disk.zeroBlocksReadAsZero) : 0;
    await this.session.round({ round, regions: firedCount(work), bytes: bytes + diskBytes });
    const durationMs = performance.now() - startedMs;
    const moved = bytes + diskBytes;
    const throughput = moved > 0 && durationMs > 0 ? (moved * 1000) / durationMs : (record.rounds.at(-1)?.throughputBytesPerSec ?? 0);
    // Before the collect re-arms: the probe's window then covers all it counts (its rate stays a lower bound).
    const rearmedBy = performance.now();
    const collected = await this.collect(tracker);
    // Taken after memory's collect: either order is safe (each tracker's own contract), this one keeps the two close.
    const diskBlocks = this.disk?.take() ?? [];
    const dirtyBytes = this.estimateNextBytes(work, bytes, collected, round) + (this.disk?.bytesOf(diskBlocks) ?? 0);
    const dirtyRate = await this.probeDirtyRate(tracker, rearmedBy, dirtyBytes, throughput);
    const decision = decideConvergence({
      round, dirtyBytes, previousDirtyBytes: this.previousDirty, throughputBytesPerSec: throughput,
      elapsedMs: record.elapsedMs(), throttlePermille: record.throttle,
      ...(dirtyRate !== null ? { dirtyRateBytesPerSec: dirtyRate } : {}),
    }, this.policy);
    this.previousDirty = dirtyBytes;
    record.rounds.push({
      round, regions: firedCount(work), bytes, durationMs, throughputBytesPerSec: throughput, dirtyBytesAfter: dirtyBytes, diskBytes,
      throttlePermille: record.throttle, expectedDowntimeMs: decision.expectedDowntimeMs,
    });
    this.ctx.progress.report(true, { round, dirtyBytes, throughput, roundBytes: bytes + diskBytes });
    return { collected, diskBlocks, decision };
  }

  /** What the guest dirtied since the last collect; copying it is safe once this resolves (docs/dirty-tracking.md). */
  private async collect(tracker: DirtyTracker): Promise<DirtySet> {
    const result = this.ctx.vm.state === 'running' ? await tracker.collect() : tracker.collectPaused();
    this.ctx.record.noteInstall(result);
    return { regions: result.regions, pages: result.pages };
  }

  /**
   * The guest's dirty rate just after the collect (bytes fired since, per second), when the
   * policy can use it: the guest runs, auto-converge is on and the dirty set would not fit the
   * downtime target now. Reading the bitmap re-arms nothing: the next collect still sees all of it.
   */
  private async probeDirtyRate(tracker: DirtyTracker, rearmedBy: number, dirtyBytes: number, throughput: number): Promise<number | null> {
    if (!this.policy.autoConverge || this.ctx.vm.state !== 'running') return null;
    if (expectedDowntimeMs(dirtyBytes, throughput) <= this.policy.downtimeTargetMs) return null;
    await delay(DIRTY_RATE_PROBE_MS);
    const fired = tracker.firedBytesNow();
    return (fired * 1000) / Math.max(DIRTY_RATE_PROBE_MS, performance.now() - rearmedBy);
  }

  /**
   * With regions coarser than a page only the changed pages are sent; estimate what the next
   * round will really send from this round's ratio of sent bytes to fired-region bytes.
   */
  private estimateNextBytes(sent: DirtySet, sentBytes: number, collected: DirtySet, round: number): number {
    const gran = this.ctx.vm.granularityBytes;
    const firedBytes = coveredBytes(sent, gran);
    const sendRatio = round === 1 || firedBytes === 0 ? 1 : Math.min(1, Math.max(DIGEST_PAGE_BYTES / gran, sentBytes / firedBytes));
    return Math.round((collected.regions.length * gran) * sendRatio + collected.pages.length * DIGEST_PAGE_BYTES);
  }

  /** Waits (bounded) until every running vCPU ended the step it was in, then collects what fired meanwhile. */
  private async settleThrottle(tracker: DirtyTracker): Promise<DirtySet> {
    const vm = this.ctx.vm;
    if (vm.state !== 'running') return { regions: new Uint32Array(0), pages: new Uint32Array(0) };
    const before = vm.vcpuStats();
    const settled = (): boolean => vm.vcpuStats().every((s, i) => s.state !== VcpuState.Running || s.steps > (before[i]?.steps ?? 0));
    const deadline = performance.now() + THROTTLE_SETTLE_MAX_MS;
    while (!settled() && performance.now() < deadline) await delay(THROTTLE_SETTLE_POLL_MS);
    return this.collect(tracker);
  }

  private applyThrottle(permille: number): void {
    if (permille === this.ctx.record.throttle) return;
    this.ctx.record.setThrottle(permille);
    this.ctx.vm.setThrottle(permille);
  }

  /**
   * Adaptive: a region that fired again (it was sent this round, after round 1) with most of
   * its pages unchanged is traced per page from now on. Returns the next round's work.
   */
  private async refine(work: DirtySet, unchanged: Map<number, number>, round: number): Promise<DirtySet> {
    const gran = this.ctx.vm.granularityBytes;
    if (!this.ctx.record.tracePlan.adaptive || round <= 1 || gran <= DIGEST_PAGE_BYTES) return work;
    const perRegion = gran / DIGEST_PAGE_BYTES;
    const split = [...unchanged].filter(([, n]) => n > REFINE_UNCHANGED_FRACTION * perRegion).map(([r]) => r);
    return split.length > 0 ? this.splitRegions(split, work, round) : work;
  }

  /**
   * Switches regions to per-page tracing without losing a write: with every vCPU parked, collect
   * what fired since the last collect (added to the next round's work), split, resume.
   */
  private async splitRegions(regions: number[], work: DirtySet, round: number): Promise<DirtySet> {
    const { vm, record } = this.ctx;
    const t0 = performance.now();
    const wasRunning = vm.state === 'running';
    if (wasRunning) await vm.pause();
    const late = vm.tracker.collectPaused();
    const added = vm.tracker.split(regions);
    if (wasRunning) vm.resume();
    record.noteInstall({ stallMs: wasRunning ? performance.now() - t0 : 0, scanMs: late.scanMs });
    record.noteSplit(round, added);
    return union(work, late);
  }
}

/** Guest work units per second (all vCPUs) from now on: what tracing and throttling leave the guest. */
function guestRateMeter(vm: Vm): () => number {
  const units = (): number => vm.vcpuStats().reduce((a, v) => a + v.units, 0);
  const atStart = units();
  const startMs = performance.now();
  return () => (units() - atStart) * 1000 / Math.max(1, performance.now() - startMs);
}
