/**
 * In-doubt resolution: COMMIT was sent but its reply never came, so the target may or may not run
 * the VM. Ask it until it answers; never resume here unless the target says it did not commit.
 */
import type { MigrationOutcome } from '../record.js';
import { tag, type JobContext } from './context.js';
import { pollTarget } from './poll.js';

/** How long an in-doubt source keeps asking the target whether it committed. */
export const IN_DOUBT_RESOLVE_MS = 30_000;
const IN_DOUBT_POLL_MS = 250;

/** 'succeeded' (the target committed: release here), 'failed' (rolled back), or 'in-doubt' (no answer: the VM stays paused). */
export async function resolveInDoubt(ctx: JobContext, remoteId: string, rollback: () => Promise<void>): Promise<MigrationOutcome> {
  // A cancel (or a host shutdown) stops the asking, never the caution: the VM stays paused, in doubt.
  const schedule = { withinMs: ctx.options.inDoubtTimeoutMs ?? IN_DOUBT_RESOLVE_MS, everyMs: IN_DOUBT_POLL_MS, signal: ctx.signal };
  const decided = await pollTarget(ctx.target, remoteId, schedule, async ({ state }): Promise<MigrationOutcome | undefined> => {
    // Only a definite answer decides; a target that cannot read its record answers an error.
    if (state === 'committed') {
      ctx.log(`${tag(ctx)}: commit reply lost, but the target reports committed: releasing here`);
      ctx.vm.setThrottle(0);
      return 'succeeded';
    }
    if (state === 'aborted' || state === 'unknown') {
      await rollback();
      return 'failed';
    }
    return undefined;
  });
  if (decided !== undefined) return decided;
  ctx.log(`${tag(ctx)}: IN DOUBT — the target did not say whether it committed; VM ${ctx.vm.config.name} stays paused here. Resume it only if the target does not run it.`);
  return 'in-doubt';
}
