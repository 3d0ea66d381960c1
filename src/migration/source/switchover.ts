/**
 * Switch-over: stun the VM, send the last dirty pages with every vCPU parked, then STATE and
 * COMMIT with the memory digest; the target verifies, records the commit durably, resumes and
 * replies. Everything on this path is the guest's downtime, split in the record as pause, last
 * round, state and commit.
 */
import type { Vm } from '../../vmm/vm.js';
import type { StateBody } from '../protocol/messages.js';
import { failpoint } from '../../lib/failpoints.js';
import { checkCancelled, type JobContext } from './context.js';
import { firedCount, union, type DirtySet } from './dirty-set.js';
import type { DiskSender } from './disk-sender.js';
import { pollTarget } from './poll.js';
import type { FinalDirty } from './precopy.js';
import type { PageSender } from './sender.js';
import type { Session } from './session.js';

/** How long the source waits for the target to report the guest-observed downtime. */
const GUEST_DOWNTIME_WAIT_MS = 3_000;
const GUEST_DOWNTIME_POLL_MS = 50;

export async function switchover(ctx: JobContext, session: Session, sender: PageSender, disk: DiskSender | null, dirty: FinalDirty): Promise<void> {
  const { record } = ctx;
  checkCancelled(ctx);
  const stunAt = performance.now();
  const final = await stun(ctx, dirty.memory);
  const startedMs = performance.now();
  const round = record.rounds.length + 1;
  const bytes = await lastRound(ctx, sender, disk, final, lastDiskBlocks(disk, dirty.diskBlocks), round, startedMs);
  const sentAt = performance.now();
  await session.state(stateOf(ctx.vm));
  const stateAt = performance.now();
  record.finalDigest = sender.digest.hex();
  checkCancelled(ctx);
  await handOverSharedDisk(ctx);
  const diskDigest = disk?.digest.hex();
  if (record.disk !== null && diskDigest !== undefined) record.disk.digest = diskDigest;
  await session.commit(record.finalDigest, diskDigest);
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

/** The disk blocks still to send: pre-copy's last take plus what the guest wrote until it was stunned. */
function lastDiskBlocks(disk: DiskSender | null, fromPrecopy: readonly number[]): number[] {
  if (disk === null) return [];
  return [...new Set([...fromPrecopy, ...disk.take()])].sort((a, b) => a - b);
}

/**
 * Shared mode: with the VM stunned and its block I/O drained, flush the disk and give its lease up
 * for the target to take at COMMIT. A rollback takes it back before the VM resumes here.
 */
async function handOverSharedDisk(ctx: JobContext): Promise<void> {
  const disk = ctx.disk;
  if (disk === null || disk.plan.mode !== 'shared') return;
  const t0 = performance.now();
  await disk.release();
  if (ctx.record.disk !== null) ctx.record.disk.releaseMs = performance.now() - t0;
  // Fault tests: the source dies (or stalls) with the lease given up and COMMIT not yet sent.
  await failpoint('source.after-disk-release');
}

/** Sends the last dirty set (zero pages and blocks too: they may have been non-zero when sent before). */
async function lastRound(ctx: JobContext, sender: PageSender, disk: DiskSender | null, final: DirtySet, diskBlocks: readonly number[], round: number, startedMs: number): Promise<number> {
  const bytes = await sender.send(final, round, { skipZero: false });
  const diskBytes = disk !== null ? await disk.send(diskBlocks, round, false) : 0;
  const durationMs = performance.now() - startedMs;
  ctx.record.rounds.push({
    round, regions: firedCount(final), bytes, durationMs,
    throughputBytesPerSec: bytes + diskBytes > 0 ? ((bytes + diskBytes) * 1000) / Math.max(1e-3, durationMs) : 0,
    dirtyBytesAfter: 0, diskBytes, throttlePermille: ctx.record.throttle, expectedDowntimeMs: 0,
  });
  return bytes + diskBytes;
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
