/**
 * Copy mode of a migration with a disk (../disk.ts): sends disk blocks as DISK batches over the
 * data channels, pipelined like memory, and keeps the digest of what it sent.
 *
 * Rounds: `start()` begins tracking the guest's writes *before* it lists the allocated ranges, so
 * a write during the listing is in the next round; each later round sends what the tracker took
 * at the end of the previous one, read after the take (the tracker's ordering contract in
 * src/storage/changed-blocks.ts), and the last round is taken with the VM stunned and drained.
 */
import { FerryError } from '../../lib/errors.js';
import { ChangedBlocks } from '../../storage/changed-blocks.js';
import type { ClientChannel } from '../channel.js';
import type { MigrationSourceDisk } from '../disk.js';
import { MemoryDigest, isAllZero } from '../digest.js';
import { MAX_ENTRIES_PER_BATCH } from '../protocol/frame.js';
import type { MemoryEntryInput } from '../protocol/memory-batch.js';
import { encodeDisk } from '../protocol/messages.js';
import { checkCancelled, type JobContext } from './context.js';
import { seededLevels } from './seed.js';
import { BATCH_PAYLOAD_BYTES, FRAMES_IN_FLIGHT_PER_CHANNEL } from './sender.js';

/** Largest single read of adjacent blocks. */
const MAX_RUN_BYTES = 2 * 1024 * 1024;

/** Ascending block indices as runs of adjacent ones, each at most MAX_RUN_BYTES long. */
function runsOf(blocks: readonly number[], blockBytes: number): { first: number; count: number }[] {
  const maxBlocks = Math.max(1, Math.floor(MAX_RUN_BYTES / blockBytes));
  const runs: { first: number; count: number }[] = [];
  for (const b of blocks) {
    const r = runs.at(-1);
    if (r !== undefined && b === r.first + r.count && r.count < maxBlocks) r.count++;
    else runs.push({ first: b, count: 1 });
  }
  return runs;
}

export class DiskSender {
  readonly digest: MemoryDigest;
  readonly blockBytes: number;
  private tracker: ChangedBlocks | null = null;
  private nextChannel = 0;
  private corruptedOnce = false;

  constructor(private readonly ctx: JobContext, private readonly channels: readonly ClientChannel[], private readonly disk: MigrationSourceDisk) {
    const plan = disk.plan;
    if (plan.mode !== 'copy') throw new FerryError('INTERNAL', 'a disk sender is for copy mode only');
    this.blockBytes = plan.blockBytes;
    this.digest = new MemoryDigest(plan.capacityBytes, plan.blockBytes);
  }

  /**
   * Starts tracking, then returns round 1's work: every block the chain holds data for — or, when
   * the target holds the chain's base levels already (a seed), every block the levels above them hold.
   */
  async start(): Promise<number[]> {
    const tracker = this.disk.track(this.blockBytes);
    this.tracker = tracker;
    const all = new ChangedBlocks(tracker.capacityBytes, this.blockBytes);
    const mark = (offset: number, length: number): void => { all.mark(offset, length); };
    const announced = this.ctx.preparedDisk?.chain.length ?? 0;
    const kept = seededLevels(this.ctx.preparedDisk);
    if (kept > 0) await this.disk.forEachAllocatedRangeInTop(announced - kept, mark);
    else await this.disk.forEachAllocatedRange(mark);
    return all.take();
  }

  /**
   * Whether round 1 may leave out all-zero blocks: only over an empty new disk (it reads zeros). Over
   * a seed a zero block of a delta hides the base's data below it, so it must reach the target too.
   */
  get zeroBlocksReadAsZero(): boolean {
    return seededLevels(this.ctx.preparedDisk) === 0;
  }

  /** Blocks the guest wrote since the last take (the next round's work). */
  take(): number[] {
    return this.tracker?.take() ?? [];
  }

  /** Bytes the next round will send for `blocks`. */
  bytesOf(blocks: readonly number[]): number {
    const t = this.tracker;
    if (t === null) return 0;
    return blocks.reduce((sum, b) => sum + t.range(b).lengthBytes, 0);
  }

  /** Sends the blocks; resolves once the target acknowledged every batch, with the block bytes sent. */
  async send(blocks: readonly number[], round: number, skipZero: boolean): Promise<number> {
    const tracker = this.tracker;
    if (tracker === null) throw new FerryError('INTERNAL', 'DiskSender.send before start');
    const inFlight: Promise<unknown>[] = [];
    let sent = 0;
    let batch: MemoryEntryInput[] = [];
    let batchBytes = 0;
    const flush = async (): Promise<void> => {
      if (batch.length === 0) return;
      const entries = batch;
      batch = [];
      batchBytes = 0;
      inFlight.push(this.sendBatch(round, entries));
      if (inFlight.length >= this.channels.length * FRAMES_IN_FLIGHT_PER_CHANNEL) await inFlight.shift();
      checkCancelled(this.ctx);
    };
    for (const run of runsOf(blocks, this.blockBytes)) {
      const { offsetBytes } = tracker.range(run.first);
      const last = tracker.range(run.first + run.count - 1);
      const lengthBytes = last.offsetBytes + last.lengthBytes - offsetBytes;
      // One read per run of adjacent blocks (up to MAX_RUN_BYTES): the chain's read path costs per call, not per byte.
      const data = Buffer.allocUnsafe(lengthBytes);
      await this.disk.read(offsetBytes, data);
      for (let at = 0; at < lengthBytes; at += this.blockBytes) {
        const block = data.subarray(at, Math.min(lengthBytes, at + this.blockBytes));
        const blockAt = offsetBytes + at;
        if (isAllZero(block)) {
          this.digest.updateZero(blockAt, block.length);
          if (skipZero) continue;
          batch.push({ offset: blockAt, length: block.length, encoding: 'zero' });
        } else {
          this.digest.update(blockAt, block);
          this.corruptForTest(block, round);
          batch.push({ offset: blockAt, length: block.length, encoding: 'raw', data: block });
          batchBytes += block.length;
          sent += block.length;
        }
        if (batchBytes + this.blockBytes > BATCH_PAYLOAD_BYTES || batch.length >= MAX_ENTRIES_PER_BATCH) await flush();
      }
    }
    await flush();
    for (const p of inFlight) await p;
    const rec = this.ctx.record.disk;
    if (rec !== null) rec.sentBytes += sent;
    return sent;
  }

  /** Stops tracking (the migration ended either way). */
  stop(): void {
    if (this.tracker !== null) this.disk.untrack(this.tracker);
    this.tracker = null;
  }

  private sendBatch(round: number, entries: MemoryEntryInput[]): Promise<unknown> {
    const ch = this.channels[this.nextChannel++ % this.channels.length];
    if (ch === undefined) throw new FerryError('MIGRATION_FAILED', 'no data channel');
    return ch.request(`DISK round ${round}`, (id) => encodeDisk(id, round, entries), this.ctx.requestTimeoutMs);
  }

  /** Tests only (options.corruptDiskBlockInRound): damage one block after hashing it; COMMIT must fail. */
  private corruptForTest(data: Buffer, round: number): void {
    if (this.ctx.options.corruptDiskBlockInRound !== round || this.corruptedOnce) return;
    data[0] = (data[0] ?? 0) ^ 0xff;
    this.corruptedOnce = true;
  }
}
