/**
 * One host's part of one network file copy under one epoch (docs/design/nfc.md, "The copier"): reads
 * the source from the boundary its sink says, checksums each chunk, and hands it to the sink — the
 * local form's (./local-sink.ts) or the remote form's — which owns durability and verification.
 *
 * The pipeline: a dealer hands chunks out in plan order, each with a buffer of a bounded pool
 * (MAX_COPY_INFLIGHT_BYTES: read but not yet acknowledged); `streams` readers read them in parallel;
 * each chunk read goes on by itself — a hole (all zeros) is reported as one, data is paced by the
 * bandwidth cap, hashed off the event loop and written — while its reader reads the next. Chunks
 * complete out of order; the sink's durable boundary is the longest written prefix. When a file's
 * last chunk is dealt its finish (source check, then the sink's read-back verification and rename) is
 * queued in file order and the dealer goes on with the next file, at most MAX_FINISH_OVERLAP_BYTES ahead.
 *
 * A sync every SYNC_EVERY_BYTES or SYNC_EVERY_MS, whichever first, after a check that the files being
 * read are unchanged (a sync never journals bytes read from a file that changed: SOURCE_CHANGED fails
 * the copy first). stop() (a hand-off) deals no new chunk, lets those in flight and a finish already
 * begun end, syncs, and ends `stopped` at that boundary; cancel() ends at once (`cancelled` at the last
 * acknowledged boundary, the journal kept for a resume or a discard).
 */
import { EventEmitter, setMaxListeners } from 'node:events';
import { performance } from 'node:perf_hooks';
import { FerryError, errorMessage } from '../lib/errors.js';
import { MiB } from '../lib/units.js';
import { RateLimiter } from '../dataplane/rate-limiter.js';
import { chunkBuffer, chunkLength, chunkSha256, isZeroChunk } from './chunk-hash.js';
import {
  COPY_START, DEFAULT_COPY_STREAMS, MAX_COPY_STREAMS, NFC_CHUNK_BYTES, bytesBefore, compareBoundaries, formatBoundary, planBytes,
  type Boundary, type CopiedFile, type CopyJobPhase, type CopyJobRecord, type CopyJobStatus, type CopyOutcome, type CopyPlan, type CopyProgress,
} from './plan.js';
import type { CopySink } from './sink.js';
import type { CopySource } from './source-files.js';

/**
 * Bytes read but not acknowledged by the sink, at most: 32 chunks keep a disk's queue, both cores'
 * hashing and a socket busy at once, and bound a job's buffers (allocated once, reused) to 32 MiB.
 */
export const MAX_COPY_INFLIGHT_BYTES = 32 * MiB;
/**
 * A sync at least every this many data bytes acknowledged: bounds what a crash redoes and — more to
 * the point — how much unsynced data a hand-off's final sync must flush (its share of the hand-off gap).
 */
export const SYNC_EVERY_BYTES = 64 * MiB;
/** ... and at least this often while bytes move: a slow copy's boundary still advances visibly. */
export const SYNC_EVERY_MS = 1_000;
/** Progress events at most this often (and one at the end): a UI or an SSE stream needs no more. */
export const PROGRESS_INTERVAL_MS = 250;
/**
 * How far the dealer goes into the next files while a finished file is still being verified: less
 * than the sink's MAX_SINK_CHUNKS_AHEAD (chunks it holds beyond its written prefix), so that a long
 * verification stalls the dealer instead of failing the sink.
 */
export const MAX_FINISH_OVERLAP_BYTES = 512 * MiB;
/** Rate samples kept for the rate estimate (one per progress tick): the rate over the last ~2 s. */
const RATE_SAMPLES = 8;

export interface CopyJobOptions {
  readonly plan: CopyPlan;
  readonly epoch: number;
  readonly host: string;
  readonly source: CopySource;
  /** Opened once at run(); the sink says where to resume. */
  readonly openSink: (signal: AbortSignal) => Promise<CopySink>;
  readonly streams?: number;
  readonly rateBytesPerSec?: number;
  readonly log?: (line: string) => void;
}

type Item = { readonly kind: 'chunk'; readonly seq: number; readonly fileIndex: number; readonly offsetBytes: number; readonly lengthBytes: number; readonly buf: Buffer }
  | { readonly kind: 'end'; readonly fileIndex: number };

/** Chunk buffers, allocated on demand up to `capacity` and reused; take() waits for one to be given back. */
class ChunkBuffers {
  private readonly free: Buffer[] = [];
  private made = 0;
  private waiter: (() => void) | null = null;

  constructor(private readonly capacity: number) {}

  async take(signal: AbortSignal): Promise<Buffer | null> {
    for (;;) {
      if (signal.aborted) return null;
      const b = this.free.pop();
      if (b !== undefined) return b;
      if (this.made < this.capacity) { this.made++; return chunkBuffer(); }
      await new Promise<void>((resolve) => {
        const wake = (): void => { signal.removeEventListener('abort', wake); this.waiter = null; resolve(); };
        this.waiter = wake;
        signal.addEventListener('abort', wake, { once: true });
      });
    }
  }

  give(b: Buffer): void {
    this.free.push(b);
    this.waiter?.();
  }
}

/**
 * Turns in dealing order, for the bandwidth cap: a limiter's waiters are granted in no particular
 * order, and a copy whose early chunks starve behind later ones would hold its durable boundary (the
 * written prefix) back. Each dealt chunk takes its turn once (done() also when it is dropped); a halt
 * lets every waiter go.
 */
class Turns {
  private next = 0;
  private readonly waiting = new Map<number, () => void>();
  private halted = false;

  turn(seq: number): Promise<void> {
    if (this.halted || seq <= this.next) return Promise.resolve();
    return new Promise((resolve) => { this.waiting.set(seq, resolve); });
  }

  done(seq: number): void {
    if (seq !== this.next) return;
    this.next = seq + 1;
    const w = this.waiting.get(this.next);
    this.waiting.delete(this.next);
    w?.();
  }

  halt(): void {
    this.halted = true;
    for (const w of this.waiting.values()) w();
    this.waiting.clear();
  }
}

/** Chunks dealt and not yet acknowledged, per file, and who waits for a file to drain (for its finish). */
class Outstanding {
  private readonly counts = new Map<number, number>();
  private readonly waiters = new Map<number, () => void>();

  add(fileIndex: number): void { this.counts.set(fileIndex, (this.counts.get(fileIndex) ?? 0) + 1); }

  settle(fileIndex: number): void {
    const n = (this.counts.get(fileIndex) ?? 1) - 1;
    if (n > 0) { this.counts.set(fileIndex, n); return; }
    this.counts.delete(fileIndex);
    this.waiters.get(fileIndex)?.();
    this.waiters.delete(fileIndex);
  }

  drained(fileIndex: number): Promise<void> {
    if (!this.counts.has(fileIndex)) return Promise.resolve();
    return new Promise((resolve) => { this.waiters.set(fileIndex, resolve); });
  }
}

export class CopyJob extends EventEmitter<{ progress: [CopyProgress]; done: [CopyJobRecord] }> {
  readonly copyId: string;
  readonly epoch: number;
  readonly done: Promise<CopyJobRecord>;

  private readonly plan: CopyPlan;
  private readonly streams: number;
  private readonly limiter: RateLimiter | null;
  private readonly abort = new AbortController();
  /** Aborted by stop() and cancel(): chunks not yet handed to the sink are dropped (the next part copies them). */
  private readonly halt = new AbortController();
  private readonly buffers = new ChunkBuffers(MAX_COPY_INFLIGHT_BYTES / NFC_CHUNK_BYTES);
  private readonly outstanding = new Outstanding();
  private readonly turns = new Turns();
  private dealtChunks = 0;
  private readonly tasks = new Set<Promise<void>>();
  private resolveDone!: (r: CopyJobRecord) => void;
  private started = false;
  private phase: CopyJobPhase = 'opening';
  private stopRequested = false;
  private resolveHalted!: () => void;
  /** Resolves at stop(), cancel() or the first failure: nothing waits for a finish under way after that. */
  private readonly halting = new Promise<void>((resolve) => { this.resolveHalted = resolve; });
  private cancelReason: string | null = null;
  private error: unknown = null;
  private record: CopyJobRecord | null = null;
  private sink: CopySink | null = null;

  private from: Boundary = COPY_START;
  /** The last boundary the sink acknowledged as durable. */
  private boundary: Boundary = COPY_START;
  private readonly files: CopiedFile[] = [];
  private startedAt = performance.now();
  private ackedBytes = 0;
  private sentBytes = 0;
  /** Data bytes acknowledged since the last sync (holes write no data: they do not hasten a sync). */
  private unsyncedDataBytes = 0;
  /** Chunks (data or holes) acknowledged since the last sync: the time-based sync moves the boundary over holes too. */
  private unsyncedChunks = 0;
  private lastSyncAt = performance.now();
  private syncing: Promise<void> | null = null;
  private finishing: Promise<void> = Promise.resolve();
  private pendingFinishEnds: number[] = [];
  private dealtBytes = 0;
  private dealingFile = 0;
  private doneBytes = 0;
  private readonly samples: Array<{ atMs: number; doneBytes: number }> = [];
  private lastProgress: CopyProgress | null = null;

  constructor(private readonly o: CopyJobOptions) {
    super();
    this.plan = o.plan;
    this.copyId = o.plan.copyId;
    this.epoch = o.epoch;
    const streams = o.streams ?? DEFAULT_COPY_STREAMS;
    if (!Number.isInteger(streams) || streams < 1 || streams > MAX_COPY_STREAMS) throw new FerryError('INVALID_ARGUMENT', `streams must be 1..${MAX_COPY_STREAMS}, not ${streams}`);
    this.streams = streams;
    this.limiter = o.rateBytesPerSec === undefined ? null : new RateLimiter(o.rateBytesPerSec);
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
    // Every chunk in flight may wait on the signal at once (the bandwidth cap), and the dealer for a buffer.
    setMaxListeners(MAX_COPY_INFLIGHT_BYTES / NFC_CHUNK_BYTES + MAX_COPY_STREAMS + 2, this.abort.signal, this.halt.signal);
  }

  get finished(): boolean { return this.record !== null; }

  run(): Promise<CopyJobRecord> {
    if (!this.started) {
      this.started = true;
      void this.execute();
    }
    return this.done;
  }

  stop(): void {
    if (this.record !== null || this.stopRequested) return;
    this.stopRequested = true;
    this.resolveHalted();
    this.turns.halt();
    this.halt.abort(new FerryError('CANCELLED', `copy ${this.copyId} stopping`));
    if (this.phase === 'copying') this.phase = 'stopping';
    this.log(`stop requested at ${formatBoundary(this.boundary)}`);
  }

  cancel(reason: string): void {
    if (this.record !== null || this.cancelReason !== null) return;
    this.cancelReason = reason;
    this.resolveHalted();
    this.turns.halt();
    this.log(`cancelled: ${reason}`);
    this.halt.abort(new FerryError('CANCELLED', `copy ${this.copyId} cancelled: ${reason}`));
    this.abort.abort(new FerryError('CANCELLED', `copy ${this.copyId} cancelled: ${reason}`));
  }

  status(): CopyJobStatus {
    return { copyId: this.copyId, epoch: this.epoch, phase: this.phase, progress: this.record === null ? this.progress() : this.lastProgress, record: this.record };
  }

  private log(line: string): void {
    this.o.log?.(`copy ${this.copyId} epoch ${this.epoch} on ${this.o.host}: ${line}`);
  }

  private async execute(): Promise<void> {
    this.startedAt = performance.now();
    const ticker = setInterval(() => { this.tick(); }, PROGRESS_INTERVAL_MS);
    ticker.unref();
    let outcome: CopyOutcome;
    try {
      outcome = await this.copy();
    } catch (err) {
      this.fail(err);
      outcome = 'failed';
    } finally {
      clearInterval(ticker);
    }
    if (this.cancelReason !== null) outcome = 'cancelled';
    else if (this.error !== null) outcome = 'failed';
    // Closed on every path: the sink keeps its journal and staging files for a resume.
    await this.sink?.close().catch((err: unknown) => { this.log(`closing the sink: ${errorMessage(err)}`); });
    await this.o.source.close().catch((err: unknown) => { this.log(`closing the source: ${errorMessage(err)}`); });
    this.phase = 'ended';
    const final = this.progress();
    this.lastProgress = final;
    const err = outcome === 'cancelled'
      ? { code: 'CANCELLED', message: `cancelled: ${this.cancelReason ?? ''}` }
      : outcome === 'failed' ? errorBody(this.error) : null;
    this.record = {
      copyId: this.copyId, epoch: this.epoch, outcome, from: this.from, to: { ...this.boundary },
      sentBytes: this.sentBytes, resentBytes: this.resentBytes(), files: [...this.files], error: err,
      durationMs: Math.round(performance.now() - this.startedAt),
    };
    this.log(`${outcome} at ${formatBoundary(this.boundary)}${err === null ? '' : `: ${err.code} ${err.message}`}`);
    this.emit('progress', final);
    this.emit('done', this.record);
    this.resolveDone(this.record);
  }

  private async copy(): Promise<CopyOutcome> {
    const sink = await this.o.openSink(this.abort.signal);
    this.sink = sink;
    this.from = { ...sink.resumeAt };
    this.boundary = { ...sink.resumeAt };
    this.doneBytes = bytesBefore(this.plan, this.from);
    if (this.abort.signal.aborted) return 'cancelled';
    this.phase = this.stopRequested ? 'stopping' : 'copying';
    this.log(`copying from ${formatBoundary(this.from)} with ${this.streams} streams`);
    const deal = this.deal();
    await Promise.all(Array.from({ length: this.streams }, () => this.reader(deal)));
    await Promise.all(this.tasks);
    if (this.abort.signal.aborted) return 'cancelled';
    // A stop does not wait for a finish under way (it reads a whole file back): the sink, closed, drops it.
    await Promise.race([this.finishing, this.halting]);
    await this.syncing;
    if (this.error !== null) return 'failed';
    if (this.boundary.fileIndex === this.plan.files.length) {
      const all = await sink.complete();
      this.files.splice(0, this.files.length, ...all);
      return 'completed';
    }
    // Stopped (a hand-off): everything acknowledged is made durable; the next host resumes exactly here.
    await this.syncNow();
    return 'stopped';
  }

  /** The plan's chunks from the resume boundary on, in order, each with a buffer; each file's end after its last chunk. */
  private async *deal(): AsyncGenerator<Item> {
    const signal = this.abort.signal;
    for (let i = this.from.fileIndex; i < this.plan.files.length; i++) {
      const size = this.plan.files[i]?.sizeBytes ?? 0;
      this.dealingFile = i;
      for (let off = i === this.from.fileIndex ? this.from.offsetBytes : 0; off < size; off += NFC_CHUNK_BYTES) {
        if (this.halted()) return;
        const oldestEnd = this.pendingFinishEnds[0];
        if (oldestEnd !== undefined && this.dealtBytes - oldestEnd >= MAX_FINISH_OVERLAP_BYTES) await Promise.race([this.finishing, this.halting]);
        const buf = await this.buffers.take(signal);
        if (buf === null || this.halted()) { if (buf !== null) this.buffers.give(buf); return; }
        const lengthBytes = chunkLength(size, off);
        this.outstanding.add(i);
        this.dealtBytes += lengthBytes;
        yield { kind: 'chunk', seq: this.dealtChunks++, fileIndex: i, offsetBytes: off, lengthBytes, buf };
      }
      if (this.halted()) return;
      yield { kind: 'end', fileIndex: i };
    }
  }

  private halted(): boolean {
    return this.stopRequested || this.abort.signal.aborted || this.error !== null;
  }

  private async reader(deal: AsyncGenerator<Item>): Promise<void> {
    for (;;) {
      const next = await deal.next();
      if (next.done === true) return;
      const item = next.value;
      if (item.kind === 'end') { this.queueFinish(item.fileIndex); continue; }
      const data = item.buf.subarray(0, item.lengthBytes);
      try {
        await this.o.source.read(item.fileIndex, item.offsetBytes, data);
      } catch (err) {
        this.buffers.give(item.buf);
        this.outstanding.settle(item.fileIndex);
        this.fail(err);
        this.turns.halt();
        continue;
      }
      // The rest goes on by itself: this reader reads the next chunk meanwhile.
      const task = this.send(item, data).finally(() => {
        this.buffers.give(item.buf);
        this.outstanding.settle(item.fileIndex);
        this.tasks.delete(task);
      });
      this.tasks.add(task);
    }
  }

  private async send(item: Item & { kind: 'chunk' }, data: Buffer): Promise<void> {
    const sink = this.sink;
    if (sink === null) return;
    try {
      if (isZeroChunk(data)) {
        if (this.limiter !== null) { await this.turns.turn(item.seq); this.turns.done(item.seq); }
        await sink.hole(item.fileIndex, item.offsetBytes, item.lengthBytes);
      } else {
        const sha = await chunkSha256(data);
        if (this.limiter !== null) {
          // In dealing order; a chunk paced past a stop is left to the next part: a hand-off does not wait out the cap.
          await this.turns.turn(item.seq);
          try {
            await this.limiter.take(item.lengthBytes, this.halt.signal);
          } catch (err) {
            if (this.halt.signal.aborted) return;
            throw err;
          } finally {
            this.turns.done(item.seq);
          }
        }
        if (this.halt.signal.aborted) return;
        await sink.write(item.fileIndex, item.offsetBytes, data, sha);
        this.sentBytes += item.lengthBytes;
        this.unsyncedDataBytes += item.lengthBytes;
      }
    } catch (err) {
      this.fail(err);
      return;
    }
    this.ackedBytes += item.lengthBytes;
    this.unsyncedChunks++;
    if (this.unsyncedDataBytes >= SYNC_EVERY_BYTES) this.startSync();
  }

  /** File `fileIndex` is dealt whole: once its chunks are acknowledged, check its source and finish it (in file order). */
  private queueFinish(fileIndex: number): void {
    this.pendingFinishEnds.push(this.dealtBytes);
    this.finishing = this.finishing.then(async () => {
      await this.outstanding.drained(fileIndex);
      // A stop leaves a file not yet begun to finish to the next host (a finish reads the whole file back).
      if (this.halted()) return;
      const sink = this.sink;
      if (sink === null) return;
      try {
        await this.o.source.check(fileIndex);
        const file = await sink.finishFile(fileIndex);
        this.files.push(file);
        const after = { fileIndex: fileIndex + 1, offsetBytes: 0 };
        if (compareBoundaries(after, this.boundary) > 0) this.boundary = after;
        this.log(`file ${fileIndex} ${file.path} verified (${file.targetDigest.slice(0, 16)}…)`);
      } catch (err) {
        // After a stop, the sink closes under a finish under way: the next host finishes the file.
        if (!this.stopRequested) this.fail(err);
      } finally {
        this.pendingFinishEnds.shift();
      }
    });
  }

  private startSync(): void {
    if (this.syncing !== null || this.halted()) return;
    this.syncing = this.syncNow().catch((err: unknown) => { this.fail(err); }).finally(() => { this.syncing = null; });
  }

  /** Checks the files being read, then syncs the sink: the acknowledged boundary moves. */
  private async syncNow(): Promise<void> {
    const sink = this.sink;
    if (sink === null) return;
    this.unsyncedDataBytes = 0;
    this.unsyncedChunks = 0;
    this.lastSyncAt = performance.now();
    const last = Math.min(this.dealingFile, this.plan.files.length - 1);
    for (let i = Math.min(this.boundary.fileIndex, last); i <= last; i++) await this.o.source.check(i);
    const b = await sink.sync();
    if (compareBoundaries(b, this.boundary) > 0) this.boundary = b;
  }

  private tick(): void {
    if (this.phase !== 'copying' && this.phase !== 'stopping') return;
    if (this.unsyncedChunks > 0 && performance.now() - this.lastSyncAt >= SYNC_EVERY_MS) this.startSync();
    const p = this.progress(true);
    this.lastProgress = p;
    this.emit('progress', p);
  }

  /** The progress now; `sample`: a tick's, which the rate estimate keeps (a status query's is not). */
  private progress(sample = false): CopyProgress {
    const now = performance.now();
    const total = planBytes(this.plan);
    this.doneBytes = Math.max(this.doneBytes, Math.min(total, bytesBefore(this.plan, this.from) + this.ackedBytes));
    if (sample) {
      this.samples.push({ atMs: now, doneBytes: this.doneBytes });
      if (this.samples.length > RATE_SAMPLES) this.samples.shift();
    }
    const first = this.samples[0];
    const spanMs = first === undefined ? 0 : now - first.atMs;
    const rate = first === undefined || spanMs <= 0 ? 0 : ((this.doneBytes - first.doneBytes) * 1000) / spanMs;
    return {
      copyId: this.copyId, epoch: this.epoch, doneBytes: this.doneBytes, totalBytes: total, sentBytes: this.sentBytes, resentBytes: this.resentBytes(),
      rateBytesPerSec: Math.round(rate), etaMs: rate > 0 ? Math.round(((total - this.doneBytes) * 1000) / rate) : (this.doneBytes >= total ? 0 : null),
      boundary: { ...this.boundary }, elapsedMs: Math.round(now - this.startedAt),
    };
  }

  /** What the sink sent again (the remote sink counts its resends of chunks damaged on the wire; a local one has none). */
  private resentBytes(): number {
    const sink: (CopySink & { readonly resentBytes?: unknown }) | null = this.sink;
    return typeof sink?.resentBytes === 'number' ? sink.resentBytes : 0;
  }

  private fail(err: unknown): void {
    if (this.error !== null || this.abort.signal.aborted) return;
    this.error = err;
    this.resolveHalted();
    this.turns.halt();
    this.log(`failed: ${errorMessage(err)}`);
  }
}

function errorBody(err: unknown): { code: string; message: string } {
  return err instanceof FerryError ? { code: err.code, message: err.message } : { code: 'INTERNAL', message: errorMessage(err) };
}
