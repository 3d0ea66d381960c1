/**
 * Switch-over: stun the VM, send the last dirty pages with every vCPU parked, then STATE and
 * COMMIT with the memory digest; the target verifies, records the commit durably, resumes and
 * replies. Everything on this path is the guest's downtime, split in the record as pause, last
 * round, state and commit.
 */
import type { Vm } from '../../vmm/vm.js';
import type { StateBody } from '../protocol/messages.js';
import { checkCancelled, type JobContext } from './context.js';
import { firedCount, union, type DirtySet } from './dirty-set.js';
import { pollTarget } from './poll.js';
import type { PageSender } from './sender.js';
import type { Session } from './session.js';

/** How long the source waits for the target to report the guest-observed downtime. */
const GUEST_DOWNTIME_WAIT_MS = 3_000;
const GUEST_DOWNTIME_POLL_MS = 50;

export async function switchover(ctx: JobContext, session: Session, sender: PageSender, dirty: DirtySet): Promise<void> {
  const { record } = ctx;
  checkCancelled(ctx);
  const stunAt = performance.now();
  const final = await stun(ctx, dirty);
  const startedMs = performance.now();
  const round = record.rounds.length + 1;
  const bytes = await lastRound(ctx, sender, final, round, startedMs);
  const sentAt = performance.now();
  await session.state(stateOf(ctx.vm));
  const stateAt = performance.now();
  record.finalDigest = sender.digest.hex();
  checkCancelled(ctx);
  await session.commit(record.finalDigest);
  const doneAt = performance.now();
  record.engineDowntimeMs = doneAt - stunAt;
  record.switchoverMs = { pauseMs: startedMs - stunAt, finalRoundMs: sentAt - startedMs, stateMs: stateAt - sentAt, commitMs: doneAt - stateAt };
  ctx.progress.report(true, { round, dirtyBytes: 0, throughput: 0, roundBytes: bytes });
  record.guestDowntimeMs = await fetchGuestDowntime(ctx, session.remoteId);
}

/** Pauses every vCPU (measured) and adds what fired since the last collect: the last round's work. */
async function stun(ctx: JobContext, dirty: DirtySet): Promise<DirtySet> {
  if (ctx.vm.state === 'running') ctx.record.pauseLatencyMs = (await ctx.vm.pause()).latencyMs;
  // With the VM parked no barrier is needed (docs/dirty-tracking.md).
  return union(dirty, ctx.vm.tracker.collectPaused());
}

/** Sends the last dirty set (zero pages too: they may have been non-zero when sent before). */
async function lastRound(ctx: JobContext, sender: PageSender, final: DirtySet, round: number, startedMs: number): Promise<number> {
  const bytes = await sender.send(final, round, { skipZero: false });
  ctx.record.rounds.push({
    round, regions: firedCount(final), bytes, durationMs: performance.now() - startedMs,
    throughputBytesPerSec: bytes > 0 ? (bytes * 1000) / Math.max(1e-3, performance.now() - startedMs) : 0,
    dirtyBytesAfter: 0, throttlePermille: ctx.record.throttle, expectedDowntimeMs: 0,
  });
  return bytes;
}

/** The parked VM's vCPU state, clock and claimed size, as STATE carries them. */
function stateOf(vm: Vm): StateBody {
  const states = vm.captureVcpuStates();
  const lastReads = vm.lastClockReads();
  const clockNs = vm.guestClockNs;
  return {
    claimedPages: vm.claimedPages, clockNs, clockWallMs: Date.now(),
    vcpus: states.map((s, v) => ({ halted: s.halted, globals: s.globals, lastClockReadNs: lastReads[v] ?? 0n })),
  };
}

/** Asks the target for the gap the guest saw (known once every vCPU read its clock there). */
async function fetchGuestDowntime(ctx: JobContext, remoteId: string): Promise<number | null> {
  const schedule = { withinMs: GUEST_DOWNTIME_WAIT_MS, everyMs: GUEST_DOWNTIME_POLL_MS };
  const gap = await pollTarget(ctx.target, remoteId, schedule, ({ guestDowntimeMs }) => (typeof guestDowntimeMs === 'number' ? guestDowntimeMs : undefined));
  return gap ?? null;
}
