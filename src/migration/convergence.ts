/**
 * The convergence policy of pre-copy, as one pure function: after each round, given what is still
 * dirty and how fast the link moved data, decide to switch over, to keep copying (possibly with a
 * stronger vCPU throttle: auto-converge), or to give up as the operator configured.
 *
 *   expectedDowntimeMs = dirtyBytes / throughput + SWITCHOVER_OVERHEAD_MS
 *   expectedDowntimeMs <= downtimeTargetMs           -> switch over
 *   a limit reached (rounds, total time)             -> onLimit: 'force' switch over | 'abort'
 *   the dirty set does not shrink by PROGRESS_RATIO  -> raise the throttle (if auto-converge is on):
 *       first to initialPermille, then by stepPermille per round (twice that when the round
 *       re-dirtied everything it sent: STALL_RATIO), up to maxPermille
 *   otherwise                                        -> another round, same throttle
 *
 * When the guest's dirty rate was measured right after the round's collect (`dirtyRateBytesPerSec`,
 * a lower bound: a short probe of what fired), the throttle is also raised, from round 1 on, to
 * what makes the next round's dirtying fit the downtime target at that rate (rateThrottlePermille):
 * a guest that re-dirties its hot set faster than the link moves it is throttled once, enough, instead
 * of after several rounds that re-send the whole hot set.
 */
import { MAX_THROTTLE_PERMILLE } from '../lib/limits.js';

/**
 * Fixed cost of a switch-over beyond moving the last dirty bytes: stun, state, commit round trip, resume.
 * Measured on the 2-core bench machine (issue 14): 4–8 ms; 2 ms (the earlier value) made a 13.6 ms
 * estimate a 24 ms downtime. The middle of the measured range.
 */
export const SWITCHOVER_OVERHEAD_MS = 6;
/** A throttle of 1000 permille would stop the guest. */
const MAX_PERMILLE = 1000;
/** A throttle derived from the measured dirty rate above this goes to the policy's maximum at once. */
export const RATE_THROTTLE_TO_MAX_ABOVE_PERMILLE = 900;
/** A round "made progress" if the dirty set shrank below this fraction of the previous one. */
export const PROGRESS_RATIO = 0.8;
/** A round made *no* progress at all if the dirty set stayed above this fraction: escalate twice as fast. */
export const STALL_RATIO = 0.95;

export interface ConvergencePolicy {
  readonly downtimeTargetMs: number;
  readonly maxRounds: number;
  readonly maxTotalMs: number;
  readonly autoConverge: boolean;
  readonly initialThrottlePermille: number;
  readonly throttleStepPermille: number;
  readonly maxThrottlePermille: number;
  /** What to do when a limit is reached without converging. */
  readonly onLimit: 'force' | 'abort';
}

export const DEFAULT_POLICY: ConvergencePolicy = {
  downtimeTargetMs: 20,
  maxRounds: 60,
  maxTotalMs: 120_000,
  autoConverge: true,
  initialThrottlePermille: 200,
  throttleStepPermille: 200,
  maxThrottlePermille: MAX_THROTTLE_PERMILLE,
  onLimit: 'force',
};

export interface RoundObservation {
  /** Rounds completed so far (1 after the first full pass). */
  readonly round: number;
  /** Bytes dirtied since the last round began: what the next round (or the switch-over) must send. */
  readonly dirtyBytes: number;
  /** Dirty bytes observed after the previous round (null after the first round). */
  readonly previousDirtyBytes: number | null;
  /** Measured transfer rate of the link, bytes per second. */
  readonly throughputBytesPerSec: number;
  readonly elapsedMs: number;
  readonly throttlePermille: number;
  /** The guest's dirty rate just after this round's collect, at `throttlePermille` (a lower bound), if measured. */
  readonly dirtyRateBytesPerSec?: number;
}

export type ConvergenceDecision =
  | { readonly action: 'switchover'; readonly expectedDowntimeMs: number; readonly forced: boolean }
  | { readonly action: 'continue'; readonly throttlePermille: number; readonly expectedDowntimeMs: number }
  | { readonly action: 'abort'; readonly reason: string; readonly expectedDowntimeMs: number };

export function expectedDowntimeMs(dirtyBytes: number, throughputBytesPerSec: number): number {
  if (dirtyBytes === 0) return SWITCHOVER_OVERHEAD_MS;
  if (!(throughputBytesPerSec > 0)) return Number.POSITIVE_INFINITY;
  return (dirtyBytes / throughputBytesPerSec) * 1000 + SWITCHOVER_OVERHEAD_MS;
}

/**
 * The throttle under which the guest, dirtying at the measured rate (scaled to unthrottled), dirties
 * during the next round (sending today's dirty set) no more than the switch-over can move within the
 * downtime target; 0 when it does not need one or nothing was measured.
 */
export function rateThrottlePermille(obs: RoundObservation, policy: ConvergencePolicy): number {
  const rate = obs.dirtyRateBytesPerSec;
  if (rate === undefined || !(rate > 0) || !(obs.throughputBytesPerSec > 0)) return 0;
  const nextRoundSec = obs.dirtyBytes / obs.throughputBytesPerSec;
  const allowedBytes = (Math.max(0, policy.downtimeTargetMs - SWITCHOVER_OVERHEAD_MS) / 1000) * obs.throughputBytesPerSec;
  const runningShare = Math.max(1 - obs.throttlePermille / MAX_PERMILLE, 1 / MAX_PERMILLE);
  const predictedBytes = (rate / runningShare) * nextRoundSec;
  if (predictedBytes <= allowedBytes) return 0;
  return Math.ceil(MAX_PERMILLE * (1 - allowedBytes / predictedBytes));
}

export function decideConvergence(obs: RoundObservation, policy: ConvergencePolicy): ConvergenceDecision {
  const expected = expectedDowntimeMs(obs.dirtyBytes, obs.throughputBytesPerSec);
  if (expected <= policy.downtimeTargetMs) return { action: 'switchover', expectedDowntimeMs: expected, forced: false };
  const limit = obs.round >= policy.maxRounds ? `${policy.maxRounds} rounds` : obs.elapsedMs >= policy.maxTotalMs ? `${policy.maxTotalMs} ms` : null;
  if (limit !== null) {
    if (policy.onLimit === 'force') return { action: 'switchover', expectedDowntimeMs: expected, forced: true };
    return {
      action: 'abort', expectedDowntimeMs: expected,
      reason: `did not converge within ${limit}: ${obs.dirtyBytes} bytes still dirty would take ~${expected.toFixed(1)} ms at the measured rate (target ${policy.downtimeTargetMs} ms)`,
    };
  }
  let throttle = obs.throttlePermille;
  const progressing = obs.previousDirtyBytes !== null && obs.dirtyBytes < obs.previousDirtyBytes * PROGRESS_RATIO;
  if (policy.autoConverge && obs.round >= 2 && !progressing) {
    const stalled = obs.previousDirtyBytes === null || obs.dirtyBytes >= obs.previousDirtyBytes * STALL_RATIO;
    const step = policy.throttleStepPermille * (stalled ? 2 : 1);
    throttle = throttle === 0 ? policy.initialThrottlePermille : Math.min(policy.maxThrottlePermille, throttle + step);
    // Close to the top the remaining headroom matters more than the step: halve the distance to max.
    if (throttle > 900 && obs.throttlePermille >= 900) throttle = Math.min(policy.maxThrottlePermille, Math.ceil((obs.throttlePermille + policy.maxThrottlePermille) / 2));
  }
  if (policy.autoConverge) {
    // The measured rate is a lower bound: when even it needs a near-total throttle, the guest needs the maximum
    // (a switch-over decided at 99.7 % left 3.5–8.6 MiB for the stopped guest's final round, against 0.1–2.4 MiB at the maximum).
    const byRate = rateThrottlePermille(obs, policy);
    throttle = Math.max(throttle, byRate > RATE_THROTTLE_TO_MAX_ABOVE_PERMILLE ? policy.maxThrottlePermille : byRate);
  }
  return { action: 'continue', throttlePermille: throttle, expectedDowntimeMs: expected };
}
