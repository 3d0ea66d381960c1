/**
 * Paths whose operation never released them (the center running it died and no other took the task
 * over before the expiry): released in the store when they expire, and removed from both hosts —
 * best effort, since each host also removes its end by itself at the same expiry.
 */
import { errorMessage } from '../../lib/errors.js';
import type { HostControl } from '../host-control.js';
import type { CenterStore } from '../store/store.js';
import { shortPathId } from '../../dataplane/path/spec.js';

/** Expired paths released per sweep, at most (the next sweep takes the rest). */
export const EXPIRED_PATHS_PER_SWEEP = 100;

export async function releaseExpiredPaths(store: CenterStore, hosts: HostControl, nowMs: number, log: (line: string) => void): Promise<number> {
  const expired = await store.expiredLivePaths(nowMs, EXPIRED_PATHS_PER_SWEEP);
  for (const p of expired) {
    if (!await store.releasePath(p.pathId, 'expired')) continue;
    log(`path ${shortPathId(p.pathId)} (${p.sourceHost} -> ${p.targetHost}) expired: released`);
    for (const name of [p.sourceHost, p.targetHost]) {
      try {
        await hosts.client(await store.getHost(name)).deletePath(p.pathId);
      } catch (err) {
        log(`cannot remove expired path ${shortPathId(p.pathId)} from host ${name} (it removes it by itself): ${errorMessage(err)}`);
      }
    }
  }
  return expired.length;
}
