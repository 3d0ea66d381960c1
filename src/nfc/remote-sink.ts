/**
 * The remote form's sink (docs/nfc-protocol.md): a CopySink whose every call travels to a CopyReceiver
 * (./receiver.ts) on the target's host, which runs the local sink there. It opens `streams` connections
 * (one session: they share the receiver's sink) and
 *
 * - spreads writes (and holes) over them: each goes on the stream with the fewest requests in flight (at most
 *   MAX_IN_FLIGHT_PER_STREAM each, preferring one not busy finishing a file), with its CRC-32, and is sent
 *   again — at most MAX_CHUNK_RESENDS times — when the receiver says it arrived damaged (CHUNK_CORRUPT);
 * - orders sync(), finishFile() and complete() after the reply of every write made before them;
 * - rethrows the receiver's ERROR as a FerryError with the receiver's own code (COPY_FENCED,
 *   COPY_CONFLICT, SOURCE_CHANGED, DISK_LOCKED, …, origin 'remote');
 * - fails, when a connection breaks or the receiver stops answering, every pending and later call with
 *   HOST_UNREACHABLE naming the receiver's address — never a hang. It does not reconnect by itself: the
 *   caller opens it again with the same ticket (valid TICKET_TTL_MS after the last stream left) and
 *   resumes at the receiver's journal, which is the only truth about what is durable.
 */
import { randomBytes } from 'node:crypto';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { failpointDrop } from '../lib/failpoints.js';
import { formatAddress, type ByteStream, type Transport, type TransportAddress } from '../dataplane/transport.js';
import { planDigestOf } from './journal.js';
import { MAX_COPY_STREAMS, NFC_CHUNK_BYTES, type Boundary, type CopiedFile, type CopyPlan } from './plan.js';
import {
  Command, MAX_CHUNK_RESENDS, MAX_IN_FLIGHT_PER_STREAM, SESSION_REQUEST_ID, commandName, type Frame, type FrameCommand,
} from './protocol/frame.js';
import {
  completeReplySchema, copiedFileFromWire, dataCrc32, decodeError, decodeOk, encodeAbort, encodeDataHead, encodeEmpty, encodeFinishFile,
  encodeHello, encodeHole, finishFileReplySchema, helloReplySchema, parseReply, syncReplySchema, type OkBody,
} from './protocol/messages.js';
import { FrameReader } from './protocol/reader.js';
import type { CopySink } from './sink.js';

/** Connecting to the receiver gives up after this long (CONNECT_TIMEOUT), unless the caller says otherwise. */
export const CONNECT_TIMEOUT_MS = 10_000;
/**
 * A request must be answered within this long of reaching the head of its stream's queue (its turn): a
 * receiver that stops answering fails the sink (HOST_UNREACHABLE) instead of hanging it. A minute covers
 * a sync's fdatasync of a slow disk's dirty pages.
 */
export const REQUEST_TIMEOUT_MS = 60_000;
/** FINISH_FILE reads the whole file back on the receiver: it gets REQUEST_TIMEOUT_MS plus its size at this slowest disk rate. */
export const MIN_VERIFY_BYTES_PER_SEC = 20_000_000;
/** The failpoint that damages one DATA payload after its CRC-32 was computed (`nfc.send.corrupt=drop:<n>`: the n-th chunk sent). */
export const CORRUPT_FAILPOINT = 'nfc.send.corrupt';

export interface RemoteSinkOptions {
  readonly transport: Transport;
  readonly address: TransportAddress;
  readonly ticket: string;
  readonly plan: CopyPlan;
  readonly epoch: number;
  readonly streams: number;
  readonly signal?: AbortSignal;
  readonly log?: (line: string) => void;
  readonly connectTimeoutMs?: number;
  /** How long a request may wait for its reply once at the head of its stream (REQUEST_TIMEOUT_MS unless a test needs less). */
  readonly requestTimeoutMs?: number;
}

/** The remote sink: a CopySink, and what it resent. */
export interface RemoteCopySink extends CopySink {
  /** Chunk bytes sent again because the receiver found them damaged (a copy's resentBytes). */
  readonly resentBytes: number;
}

interface Pending {
  readonly requestId: number;
  readonly what: string;
  readonly timeoutMs: number;
  readonly long: boolean;
  readonly resolve: (body: OkBody) => void;
  readonly reject: (err: FerryError) => void;
}

/** One connection: requests out, replies in request order; the head request's reply is awaited against its timeout. */
class SenderStream {
  private readonly reader = new FrameReader();
  private readonly pending: Pending[] = [];
  private nextId = SESSION_REQUEST_ID + 1;
  private timer: NodeJS.Timeout | null = null;
  failure: FerryError | null = null;

  constructor(private readonly socket: ByteStream, readonly index: number, private readonly label: string,
    private readonly onFail: (stream: SenderStream, err: FerryError) => void, private readonly onReply: () => void) {
    socket.on('data', (chunk: Buffer) => { this.onData(chunk); });
    socket.on('error', (err) => { this.fail(this.lost(`connection error: ${err.message}`)); });
    socket.on('close', () => { this.fail(this.lost('the connection was closed')); });
  }

  get inFlight(): number { return this.pending.length; }
  /** True while a request that may take long (FINISH_FILE) waits here: writes go elsewhere if they can. */
  get busyLong(): boolean { return this.pending.some((p) => p.long); }
  get hasSlot(): boolean { return this.failure === null && this.pending.length < MAX_IN_FLIGHT_PER_STREAM; }

  /**
   * Sends one request (its frame from `encode(requestId)`, in parts written back to back) and answers its
   * OK body. Call only when hasSlot: the slot is taken synchronously, so a picker's choice holds.
   */
  request(what: string, encode: (requestId: number) => readonly Uint8Array[], timeoutMs: number, long = false): Promise<OkBody> {
    if (this.failure !== null) return Promise.reject(this.failure);
    const requestId = this.nextId++;
    const parts = encode(requestId);
    const reply = new Promise<OkBody>((resolve, reject) => {
      this.pending.push({ requestId, what, timeoutMs, long, resolve, reject });
    });
    if (this.pending.length === 1) this.armTimer();
    this.socket.cork();
    for (const p of parts) this.socket.write(p);
    this.socket.uncork();
    return reply;
  }

  /** The head request's turn: it must be answered within its timeout (requests behind a long one wait their turn). */
  private armTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const head = this.pending[0];
    if (head === undefined) return;
    this.timer = setTimeout(() => {
      this.fail(this.lost(`no reply to ${head.what} within ${head.timeoutMs} ms`));
    }, head.timeoutMs);
  }

  private lost(reason: string): FerryError {
    return new FerryError('HOST_UNREACHABLE', `${this.label}: ${reason}${this.pending.length > 0 ? ` (${this.pending.length} requests unanswered)` : ''}`, { stream: this.index });
  }

  private onData(chunk: Buffer): void {
    if (this.failure !== null) return;
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (err) {
      this.fail(isFerryError(err) ? err : this.lost(errorMessage(err)));
      return;
    }
    for (const frame of frames) {
      if (this.failure !== null) return;
      try {
        this.onFrame(frame);
      } catch (err) {
        this.fail(isFerryError(err) ? err : this.lost(errorMessage(err)));
        return;
      }
    }
  }

  private onFrame(frame: Frame): void {
    if (frame.command === Command.ERROR && frame.requestId === SESSION_REQUEST_ID) {
      // The receiver ends the session (a newer epoch took the copy over; it shuts down).
      const body = decodeError(frame.payload);
      this.fail(FerryError.fromRemote(body.code, `${this.label}: the receiver ended the session: [${body.code}] ${body.message}`, 'HOST_ERROR'));
      return;
    }
    const head = this.pending[0];
    if (head === undefined || frame.requestId !== head.requestId) {
      throw new FerryError('PROTOCOL_OUT_OF_ORDER', `${this.label}: reply ${frame.requestId} does not answer the oldest request ${head?.requestId ?? '(none)'}`);
    }
    if (frame.command !== Command.OK && frame.command !== Command.ERROR) {
      throw new FerryError('PROTOCOL_OUT_OF_ORDER', `${this.label}: expected OK or ERROR, got ${commandName(frame.command)}`);
    }
    if (frame.command === Command.OK) {
      const body = decodeOk(frame.payload);
      this.pending.shift();
      this.armTimer();
      head.resolve(body);
    } else {
      const e = decodeError(frame.payload);
      this.pending.shift();
      this.armTimer();
      const err = FerryError.fromRemote(e.code, `${this.label}: the receiver refused ${head.what}: [${e.code}] ${e.message}`, 'HOST_ERROR');
      head.reject(err);
      // Every ERROR but a damaged chunk's closes the connection: the copy cannot go on over this session.
      if (e.code !== 'CHUNK_CORRUPT') this.fail(err);
    }
    this.onReply();
  }

  /** Fails every outstanding request with `err` and drops the connection. Idempotent. */
  fail(err: FerryError): void {
    if (this.failure !== null) return;
    this.failure = err;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    for (const p of this.pending.splice(0)) p.reject(err);
    this.socket.destroy();
    this.onFail(this, err);
  }
}

class RemoteSink implements RemoteCopySink {
  resentBytes = 0;
  private failure: FerryError | null = null;
  private closing: Promise<void> | null = null;
  /** The stream that carries CLOSE or ABORT: the receiver drops the others then, which is no failure. */
  private endingOn: SenderStream | null = null;
  /** Writes not yet answered: sync, finishFile and complete wait for those made before them. */
  private readonly writes = new Set<Promise<unknown>>();
  private readonly slotWaiters: Array<() => void> = [];
  private readonly onAbort = (): void => {
    const reason: unknown = this.o.signal?.reason;
    this.fail(reason instanceof FerryError ? reason : new FerryError('CANCELLED', `${this.where}: cancelled`));
  };

  private readonly timeoutMs: number;

  constructor(private readonly o: RemoteSinkOptions, readonly resumeAt: Boundary, private readonly streams: readonly SenderStream[], private readonly where: string) {
    this.timeoutMs = o.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
    o.signal?.addEventListener('abort', this.onAbort, { once: true });
    if (o.signal?.aborted === true) this.onAbort();
  }

  /** A stream failed: so does the sink (the receiver's session cannot go on with a stream missing) — unless the session is ending. */
  streamFailed(stream: SenderStream, err: FerryError): void {
    if (this.endingOn !== null && stream !== this.endingOn) return;
    this.fail(err);
  }

  slotFreed(): void {
    this.slotWaiters.shift()?.();
  }

  write(fileIndex: number, offsetBytes: number, data: Uint8Array, sha256: Uint8Array): Promise<void> {
    return this.track(this.sendChunk(fileIndex, offsetBytes, data, sha256));
  }

  hole(fileIndex: number, offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.track((async () => {
      const stream = await this.pick(true);
      await stream.request(`HOLE at ${offsetBytes} of file ${fileIndex}`, (id) => [encodeHole(id, { fileIndex, offsetBytes, lengthBytes })], this.timeoutMs);
    })());
  }

  async sync(): Promise<Boundary> {
    await this.barrier();
    const stream = await this.pick(false);
    const body = await stream.request('SYNC', (id) => [encodeEmpty(Command.SYNC, id)], this.timeoutMs);
    return parseReply(Command.SYNC, syncReplySchema, body).boundary;
  }

  async finishFile(fileIndex: number): Promise<CopiedFile> {
    const sizeBytes = this.o.plan.files[fileIndex]?.sizeBytes;
    if (sizeBytes === undefined) throw new FerryError('INVALID_ARGUMENT', `the copy has no file ${fileIndex}`);
    await this.barrier();
    const stream = await this.pick(false);
    const timeoutMs = this.timeoutMs + Math.ceil((sizeBytes / MIN_VERIFY_BYTES_PER_SEC) * 1000);
    const body = await stream.request(`FINISH_FILE ${fileIndex}`, (id) => [encodeFinishFile(id, { fileIndex })], timeoutMs, true);
    const reply = parseReply(Command.FINISH_FILE, finishFileReplySchema, body);
    if (reply.file.index !== fileIndex) throw this.badReply(Command.FINISH_FILE, `it answers file ${reply.file.index}, not ${fileIndex}`);
    return copiedFileFromWire(this.o.plan, reply.file);
  }

  async complete(): Promise<readonly CopiedFile[]> {
    await this.barrier();
    const stream = await this.pick(false);
    const body = await stream.request('COMPLETE', (id) => [encodeEmpty(Command.COMPLETE, id)], this.timeoutMs);
    const reply = parseReply(Command.COMPLETE, completeReplySchema, body);
    if (reply.files.length !== this.o.plan.files.length || reply.files.some((f, i) => f.index !== i)) {
      throw this.badReply(Command.COMPLETE, `it lists ${reply.files.length} files, not the plan's ${this.o.plan.files.length} in order`);
    }
    return reply.files.map((f) => copiedFileFromWire(this.o.plan, f));
  }

  /** Ends the session in order (CLOSE: the receiver closes its sink, the journal stays) and drops the connections. Never throws. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        if (this.failure === null) {
          await this.barrier();
          const stream = await this.pick(false);
          this.endingOn = stream;
          await stream.request('CLOSE', (id) => [encodeEmpty(Command.CLOSE, id)], this.timeoutMs);
        }
      } catch (err) {
        this.log(`closing the session: ${errorMessage(err)}`);
      } finally {
        this.fail(new FerryError('INVALID_ARGUMENT', `${this.where}: the sink is closed`), true);
      }
    })();
    return this.closing;
  }

  async discard(): Promise<void> {
    await this.barrier();
    const stream = await this.pick(false);
    this.endingOn = stream;
    try {
      await stream.request('ABORT', (id) => [encodeAbort(id, { reason: 'the copy is given up' })], this.timeoutMs);
    } finally {
      this.fail(new FerryError('INVALID_ARGUMENT', `${this.where}: the copy was discarded`), true);
    }
  }

  /** Fails the sink: every stream dropped, every pending and later call rejected with `err` (the first failure wins); `ended`: closed on purpose. */
  fail(err: FerryError, ended = false): void {
    if (this.failure !== null) return;
    this.failure = err;
    this.o.signal?.removeEventListener('abort', this.onAbort);
    for (const s of this.streams) s.fail(err);
    for (const w of this.slotWaiters.splice(0)) w();
    if (!ended) this.log(`failed: ${err.message}`);
  }

  private async sendChunk(fileIndex: number, offsetBytes: number, data: Uint8Array, sha256: Uint8Array): Promise<void> {
    const crc32 = dataCrc32(data);
    const what = `DATA at ${offsetBytes} of file ${fileIndex}`;
    for (let attempt = 0; ; attempt++) {
      const stream = await this.pick(true);
      // A test's failpoint damages this chunk on the way, after its CRC-32 was computed: the receiver must notice.
      const payload = failpointDrop(CORRUPT_FAILPOINT) ? corrupted(data) : data;
      try {
        await stream.request(what, (id) => [encodeDataHead(id, { fileIndex, offsetBytes, lengthBytes: data.byteLength, crc32, sha256 }), payload], this.timeoutMs);
        return;
      } catch (err) {
        if (!isFerryError(err, 'CHUNK_CORRUPT') || this.failure !== null) throw err;
        if (attempt >= MAX_CHUNK_RESENDS) {
          throw new FerryError('CHUNK_CORRUPT', `${this.where}: the chunk at ${offsetBytes} of file ${fileIndex} arrived damaged ${attempt + 1} times; the link corrupts data`,
            { fileIndex, offsetBytes, attempts: attempt + 1 }, { origin: 'remote' });
        }
        this.resentBytes += data.byteLength;
        this.log(`${what} arrived damaged; sending it again (${attempt + 1} of ${MAX_CHUNK_RESENDS})`);
      }
    }
  }

  /**
   * A stream with a free slot: the one with the fewest requests in flight (for a write, one not busy
   * finishing a file if there is one); waits while every stream is full.
   */
  private async pick(write: boolean): Promise<SenderStream> {
    for (;;) {
      this.usable();
      let best: SenderStream | null = null;
      for (const s of this.streams) {
        if (!s.hasSlot) continue;
        if (best === null) { best = s; continue; }
        const better = write && best.busyLong !== s.busyLong ? !s.busyLong : s.inFlight < best.inFlight;
        if (better) best = s;
      }
      if (best !== null) return best;
      await new Promise<void>((resolve) => { this.slotWaiters.push(resolve); });
    }
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.writes.add(p);
    const done = (): void => { this.writes.delete(p); };
    p.then(done, done);
    return p;
  }

  /** Waits for every write made so far to be answered (a later sync covers them); their failures are theirs. */
  private async barrier(): Promise<void> {
    this.usable();
    if (this.writes.size > 0) await Promise.allSettled([...this.writes]);
    this.usable();
  }

  private usable(): void {
    const failure = this.failure;
    if (failure !== null) throw failure;
  }

  private badReply(request: FrameCommand, problem: string): FerryError {
    return new FerryError('PROTOCOL_BAD_PAYLOAD', `${this.where}: the OK to ${commandName(request)} is not its answer: ${problem}`);
  }

  private log(line: string): void {
    this.o.log?.(`${this.where}: ${line}`);
  }
}

/** A copy of `data` with one bit of its first byte flipped. */
function corrupted(data: Uint8Array): Uint8Array {
  const copy = Buffer.from(data);
  copy[0] = (copy[0] ?? 0) ^ 0x01;
  return copy;
}

function connectError(err: unknown, where: string): FerryError {
  if (isFerryError(err)) return err;
  return new FerryError('HOST_UNREACHABLE', `cannot connect to the copy receiver at ${where}: ${errorMessage(err)}`);
}

/**
 * A CopySink whose writes travel to a CopyReceiver over `streams` connections (writes are spread over
 * them; sync/finishFile/complete are ordered after every earlier write's reply). Resolves once every
 * stream's HELLO was accepted; its resumeAt is the receiver's journal's boundary. Rejects with the
 * receiver's refusal (TICKET_INVALID, COPY_FENCED, COPY_CONFLICT, DISK_LOCKED, …) or HOST_UNREACHABLE /
 * CONNECT_TIMEOUT, every connection closed.
 */
export async function openRemoteSink(o: RemoteSinkOptions): Promise<RemoteCopySink> {
  if (!Number.isInteger(o.streams) || o.streams < 1 || o.streams > MAX_COPY_STREAMS) {
    throw new FerryError('INVALID_ARGUMENT', `streams must be 1..${MAX_COPY_STREAMS}, not ${o.streams}`);
  }
  const where = `copy ${o.plan.copyId.slice(0, 8)} to ${o.transport.kind} ${formatAddress(o.address)}`;
  const session = randomBytes(16).toString('hex');
  const planDigest = planDigestOf(o.plan);
  const dials = await Promise.allSettled(Array.from({ length: o.streams }, () => o.transport.dial(o.address, {
    timeoutMs: o.connectTimeoutMs ?? CONNECT_TIMEOUT_MS, ...(o.signal !== undefined ? { signal: o.signal } : {}),
  })));
  const sockets = dials.flatMap((d) => (d.status === 'fulfilled' ? [d.value] : []));
  const refused = dials.find((d): d is PromiseRejectedResult => d.status === 'rejected');
  if (refused !== undefined) {
    for (const s of sockets) s.destroy();
    throw connectError(refused.reason, formatAddress(o.address));
  }
  let sink: RemoteSink | null = null;
  /** A stream that failed before the sink was made (after its own HELLO was answered): the open fails. */
  const early: { err: FerryError | null } = { err: null };
  const streams = sockets.map((socket, i) => new SenderStream(socket, i, `${where} stream ${i}`,
    (stream, err) => { if (sink !== null) sink.streamFailed(stream, err); else early.err ??= err; },
    () => { sink?.slotFreed(); }));
  try {
    const replies = await Promise.all(streams.map((s, i) => s.request(`HELLO (stream ${i})`, (id) => [encodeHello(id, {
      protocol: 1, ticket: o.ticket, copyId: o.plan.copyId, epoch: o.epoch, session, stream: i, streams: o.streams, planDigest,
    })], o.requestTimeoutMs ?? REQUEST_TIMEOUT_MS)));
    const first = replies[0];
    if (first === undefined) throw new FerryError('INTERNAL', 'no stream');
    const { resumeAt } = parseReply(Command.HELLO, helloReplySchema, first);
    if (early.err !== null) throw early.err;
    sink = new RemoteSink(o, resumeAt, streams, where);
    o.log?.(`${where}: ${o.streams} streams open, resuming at file ${resumeAt.fileIndex} @ ${resumeAt.offsetBytes} (chunks of ${NFC_CHUNK_BYTES} bytes)`);
    return sink;
  } catch (err) {
    const e = isFerryError(err) ? err : new FerryError('HOST_UNREACHABLE', `${where}: ${errorMessage(err)}`);
    for (const s of streams) s.fail(e);
    throw e;
  }
}
