/** Asking the target, outside the migration stream (MigrationTargetPeer), what became of the migration. */
import { setTimeout as sleep } from 'node:timers/promises';
import type { IncomingOutcome, MigrationTargetPeer } from '../peer.js';

/** Polls of the target (guest downtime, in-doubt resolution) each get this long. */
const PEER_POLL_TIMEOUT_MS = 2_000;

export interface PollSchedule {
  /** Give up after this long. */
  readonly withinMs: number;
  /** Pause between two polls. */
  readonly everyMs: number;
  /** Stop asking (undefined) as soon as this aborts: a cancel or a host shutdown must not wait out the schedule. */
  readonly signal?: AbortSignal;
}

/**
 * Asks the target for migration `remoteId`'s outcome until `decide` returns a value (undefined:
 * not yet) or the time is up (undefined). A poll that fails — or a `decide` that throws — is
 * retried: the target may be busy, restarting or unreachable for a while.
 */
export async function pollTarget<T>(
  target: MigrationTargetPeer, remoteId: string, schedule: PollSchedule,
  decide: (outcome: IncomingOutcome) => T | undefined | Promise<T | undefined>,
): Promise<T | undefined> {
  const deadline = performance.now() + schedule.withinMs;
  const signal = schedule.signal;
  while (performance.now() < deadline && signal?.aborted !== true) {
    try {
      const decided = await decide(await target.incomingOutcome(remoteId, PEER_POLL_TIMEOUT_MS));
      if (decided !== undefined) return decided;
    } catch { /* not answered: keep asking */ }
    await sleep(schedule.everyMs, undefined, signal !== undefined ? { signal } : {}).catch(() => undefined);
  }
  return undefined;
}
