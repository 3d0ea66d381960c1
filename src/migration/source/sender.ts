/**
 * Sends dirty memory as MEMORY batches spread over the data channels, pipelined. Page data is
 * copied once, from guest RAM straight into a reused frame buffer, and the digest is computed over
 * exactly those bytes (what the target will receive).
 *
 * The sender relies on the collect→copy order of docs/dirty-tracking.md: the regions it is given
 * were collected (re-armed, epoch acknowledged) before it reads them, so a guest write it misses
 * fires the trace again and is in the next round's set.
 */
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { FerryError } from '../../lib/errors.js';
import { FramePool } from '../../dataplane/frame-pool.js';
import type { ClientChannel } from '../channel.js';
import { DIGEST_PAGE_BYTES, MemoryDigest, isZeroPage } from '../digest.js';
import { Command, HEADER_BYTES, MAX_ENTRIES_PER_BATCH, MAX_ENTRY_BYTES, MAX_MEMORY_PAYLOAD_BYTES, encodeHeader } from '../protocol/frame.js';
import { memoryBatchBytes, writeMemoryBatch, type MemoryEntryInput } from '../protocol/memory-batch.js';
import { checkCancelled, type JobContext } from './context.js';
import { coveredBytes, type DirtySet } from './dirty-set.js';

/** Payload of one MEMORY frame: large writes are what loopback and LANs move fastest. */
export const BATCH_PAYLOAD_BYTES = 4 * 1024 * 1024;
/** MEMORY frames outstanding per data channel (bounded by the protocol's MAX_IN_FLIGHT). */
export const FRAMES_IN_FLIGHT_PER_CHANNEL = 4;

/** A run of adjacent pages, all zero or all not, that becomes one entry. */
interface Run {
  readonly offset: number;
  readonly length: number;
  readonly zero: boolean;
}

export interface RoundOptions {
  /** Round 1: the target's memory is fresh (all zero), so zero pages are not sent at all. */
  readonly skipZero: boolean;
  /** Filled with, per region, how many of its pages were skipped as unchanged (adaptive tracing). */
  readonly unchangedByRegion?: Map<number, number>;
}

/** What the sender keeps from round to round: the digest, the frame buffers, the data channels. */
export class PageSender {
  readonly digest: MemoryDigest;
  /** Frame buffers reused across batches: fresh allocations would page-fault on every frame. */
  private readonly framePool = new FramePool(HEADER_BYTES + MAX_MEMORY_PAYLOAD_BYTES);
  private corruptedOnce = false;

  constructor(private readonly ctx: JobContext, readonly channels: readonly ClientChannel[]) {
    this.digest = new MemoryDigest(ctx.vm.config.memoryBytes);
  }

  /** Sends the work of one round; resolves once every frame was acknowledged, with the bytes of page data sent. */
  async send(work: DirtySet, round: number, options: RoundOptions): Promise<number> {
    return new RoundSender(this.ctx, this, work, round, options).run();
  }

  /**
   * Sends one batch on `channel`; `onSent(bytes)` is told the page data it carried once the frame
   * is written. Resolves when the target acknowledged it.
   */
  sendBatch(channel: ClientChannel, round: number, entries: MemoryEntryInput[], onSent: (bytes: number) => void): Promise<unknown> {
    const payloadBytes = memoryBatchBytes(round, entries);
    const buf = this.framePool.acquire(HEADER_BYTES + payloadBytes);
    const p = channel.request(`MEMORY round ${round}`, (id) => {
      encodeHeader(Command.MEMORY, id, payloadBytes).copy(buf, 0);
      const dataAt = writeMemoryBatch(buf, HEADER_BYTES, round, entries);
      onSent(this.hashSent(buf, entries, dataAt));
      this.corruptForTest(buf, dataAt, round);
      return buf.subarray(0, HEADER_BYTES + payloadBytes);
    }, this.ctx.requestTimeoutMs);
    // The buffer is reused once the target answered (it was written by then), or the request failed.
    void p.then(() => { this.framePool.release(buf); }, () => { this.framePool.release(buf); });
    return p;
  }

  /** Updates the digest with what the frame carries; returns the bytes of page data. */
  private hashSent(buf: Buffer, entries: readonly MemoryEntryInput[], dataAt: readonly number[]): number {
    let bytes = 0;
    entries.forEach((e, i) => {
      if (e.encoding === 'zero') { this.digest.updateZero(e.offset, e.length); return; }
      const at = dataAt[i] ?? -1;
      // Hash what is sent: for deflate, the source bytes as they were compressed. Raw entries are runs
      // of pages visitPage saw non-zero (zero ones are skipped or sent as zero entries).
      if (e.encoding === 'raw') this.digest.updateSeenNonZero(e.offset, buf.subarray(at, at + e.length));
      else this.digest.update(e.offset, inflateRawSync(e.data ?? Buffer.alloc(0)));
      bytes += e.length;
    });
    return bytes;
  }

  /** Tests only (options.corruptPageInRound): damage one page after hashing it; COMMIT must fail. */
  private corruptForTest(buf: Buffer, dataAt: readonly number[], round: number): void {
    if (this.ctx.options.corruptPageInRound !== round || this.corruptedOnce) return;
    const at = dataAt.find((x) => x >= 0) ?? -1;
    if (at >= 0) { buf[at] = (buf[at] ?? 0) ^ 0xff; this.corruptedOnce = true; }
  }
}

/**
 * One round: walks the pages of the selected regions, coalescing runs of non-zero pages into raw
 * entries and (after round 1) runs of zero pages into zero entries, batches them, and keeps the
 * frames in flight bounded.
 */
class RoundSender {
  private readonly ram: Buffer;
  private readonly gran: number;
  private readonly skipUnchanged: boolean;
  private readonly totalBytes: number;
  private batch: Run[] = [];
  private batchBytes = 0;
  /** The run being extended: [runStart, runEnd), or none (runStart < 0). */
  private runStart = -1;
  private runEnd = -1;
  private runZero = false;
  private readonly inFlight: Promise<unknown>[] = [];
  private nextChannel = 0;
  private bytes = 0;

  constructor(
    private readonly ctx: JobContext,
    private readonly sender: PageSender,
    private readonly work: DirtySet,
    private readonly round: number,
    private readonly options: RoundOptions,
  ) {
    this.ram = Buffer.from(ctx.vm.ram.buffer, 0, ctx.vm.config.memoryBytes);
    this.gran = ctx.vm.granularityBytes;
    this.skipUnchanged = round > 1 && this.gran > DIGEST_PAGE_BYTES;
    this.totalBytes = coveredBytes(work, this.gran);
  }

  async run(): Promise<number> {
    const ramBytes = this.ram.length;
    for (const r of this.work.regions) {
      const start = r * this.gran;
      const end = Math.min(start + this.gran, ramBytes);
      for (let page = start; page < end; page += DIGEST_PAGE_BYTES) await this.visitPage(page);
    }
    // Pages fired in split regions (per-page tracing).
    for (const p of this.work.pages) await this.visitPage(p * DIGEST_PAGE_BYTES);
    await this.endRun();
    await this.flush();
    // Every frame must be acknowledged; a failure of any is the round's failure.
    for (const p of this.inFlight) await p;
    return this.bytes;
  }

  private async visitPage(page: number): Promise<void> {
    const data = this.ram.subarray(page, page + DIGEST_PAGE_BYTES);
    const zero = isZeroPage(data);
    if (zero && this.options.skipZero) { await this.endRun(); this.ctx.record.zeroPagesSkipped++; return; }
    // A fired region coarser than a page: send only the pages that changed since last sent.
    if (this.skipUnchanged && this.sender.digest.unchanged(page, data)) {
      await this.endRun();
      this.noteUnchanged(page);
      return;
    }
    if (this.runStart >= 0 && (zero !== this.runZero || page !== this.runEnd || this.runEnd - this.runStart >= MAX_ENTRY_BYTES)) await this.endRun();
    if (this.runStart < 0) { this.runStart = page; this.runZero = zero; }
    this.runEnd = page + DIGEST_PAGE_BYTES;
  }

  private noteUnchanged(page: number): void {
    this.ctx.record.noteUnchangedPageSkipped();
    const counts = this.options.unchangedByRegion;
    if (counts === undefined) return;
    const r = Math.floor(page / this.gran);
    counts.set(r, (counts.get(r) ?? 0) + 1);
  }

  private async endRun(): Promise<void> {
    if (this.runStart < 0) return;
    this.batch.push({ offset: this.runStart, length: this.runEnd - this.runStart, zero: this.runZero });
    this.batchBytes += this.runZero ? 0 : this.runEnd - this.runStart;
    this.runStart = -1;
    if (this.batchBytes >= BATCH_PAYLOAD_BYTES - MAX_ENTRY_BYTES || this.batch.length >= MAX_ENTRIES_PER_BATCH) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.batch.length === 0) return;
    const entries = this.batch.map((r) => this.entry(r));
    this.batch = [];
    this.batchBytes = 0;
    const channels = this.sender.channels;
    const ch = channels[this.nextChannel++ % channels.length];
    if (ch === undefined) throw new FerryError('MIGRATION_FAILED', 'no data channel');
    this.inFlight.push(this.sender.sendBatch(ch, this.round, entries, (bytes) => { this.noteSent(bytes); }));
    // Keep the total queued bounded: wait for the oldest when every channel is busy.
    if (this.inFlight.length >= channels.length * FRAMES_IN_FLIGHT_PER_CHANNEL) await this.inFlight.shift();
    this.ctx.progress.report(false, { round: this.round, roundBytes: this.bytes, totalBytes: this.totalBytes });
    checkCancelled(this.ctx);
  }

  /** A run as an entry: zero, or the RAM view itself (raw), or deflated when that is smaller. */
  private entry(r: Run): MemoryEntryInput {
    if (r.zero) return { offset: r.offset, length: r.length, encoding: 'zero' };
    const view = this.ram.subarray(r.offset, r.offset + r.length);
    if (this.ctx.options.compression === 'deflate') {
      const deflated = deflateRawSync(view, { level: 1 });
      if (deflated.length < r.length) return { offset: r.offset, length: r.length, encoding: 'deflate', data: deflated };
    }
    return { offset: r.offset, length: r.length, encoding: 'raw', data: view };
  }

  private noteSent(bytes: number): void {
    this.bytes += bytes;
    this.ctx.record.sentBytes += bytes;
  }
}
