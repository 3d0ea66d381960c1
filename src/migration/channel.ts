/**
 * A migration connection as a request/reply channel over any transport's byte stream: frames in, frames out, exactly one
 * reply per request, replies in request order, at most MAX_IN_FLIGHT requests outstanding, every
 * request bounded by a timeout. The client side is used by the source, the serving side by the
 * target. Closing (or any socket error) fails every outstanding request.
 */
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { Command, MAX_IN_FLIGHT, MAX_MEMORY_PAYLOAD_BYTES, type Frame } from './protocol/frame.js';
import { FramePool, POOLED_MIN_BYTES } from '../dataplane/frame-pool.js';
import { FrameReader } from './protocol/reader.js';
import { decodeError, decodeOk, encodeErrorFor, encodeOk, type OkBody } from './protocol/messages.js';
import type { RateLimiter } from '../dataplane/rate-limiter.js';
import type { ByteStream } from '../dataplane/transport.js';


interface Pending {
  readonly requestId: number;
  readonly resolve: (body: OkBody) => void;
  readonly reject: (err: FerryError) => void;
  readonly timer: NodeJS.Timeout;
  readonly what: string;
}

/** Client side: send requests, await their replies. */
export class ClientChannel {
  private readonly reader = new FrameReader();
  private readonly pending: Pending[] = [];
  private nextId = 1;
  private failure: FerryError | null = null;
  /** Aborted when the channel fails: wakes a send waiting for bandwidth. */
  private readonly closing = new AbortController();
  private readonly slotWaiters: (() => void)[] = [];

  constructor(private readonly socket: ByteStream, readonly label: string, private readonly limiter: RateLimiter | null = null) {
    socket.on('data', (chunk: Buffer) => { this.onData(chunk); });
    socket.on('error', (err) => { this.fail(new FerryError('MIGRATION_FAILED', `${label}: connection error: ${err.message}`)); });
    socket.on('close', () => { this.fail(new FerryError('MIGRATION_FAILED', `${label}: connection closed by the peer`)); });
  }

  get inFlight(): number { return this.pending.length; }

  /** Sends one request frame built by `encode(requestId)`; resolves with the OK body. */
  async request(what: string, encode: (requestId: number) => Buffer, timeoutMs: number): Promise<OkBody> {
    while (this.pending.length >= MAX_IN_FLIGHT && this.failure === null) {
      await new Promise<void>((resolve) => { this.slotWaiters.push(resolve); });
    }
    this.throwIfFailed();
    const requestId = this.nextId++;
    const frame = encode(requestId);
    // A send paced by the bandwidth cap must not outlive the channel (cancel, a failed peer).
    if (this.limiter !== null) await this.limiter.take(frame.length, this.closing.signal).catch(() => undefined);
    this.throwIfFailed();
    const reply = new Promise<OkBody>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new FerryError('MIGRATION_TIMEOUT', `${this.label}: no reply to ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.push({ requestId, resolve, reject, timer, what });
    });
    // The reply may fail while we wait for the socket to drain: mark it handled until returned.
    reply.catch(() => undefined);
    if (!this.socket.write(frame)) await this.drained();
    return reply;
  }

  /** Throws the channel's failure, if it failed: a request made now would not be written at all. */
  throwIfFailed(): void {
    const failure: FerryError | null = this.failure;
    if (failure !== null) throw failure;
  }

  private async drained(): Promise<void> {
    if (this.failure !== null) return;
    await new Promise<void>((resolve) => {
      const done = (): void => { this.socket.off('drain', done); this.socket.off('close', done); resolve(); };
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (err) {
      this.fail(isFerryError(err) ? err : new FerryError('MIGRATION_FAILED', `${this.label}: ${errorMessage(err)}`));
      return;
    }
    for (const frame of frames) {
      const head = this.pending[0];
      if (head === undefined || frame.requestId !== head.requestId) {
        this.fail(new FerryError('PROTOCOL_OUT_OF_ORDER', `${this.label}: reply ${frame.requestId} does not answer the oldest request ${head?.requestId ?? '(none)'}`));
        return;
      }
      this.pending.shift();
      clearTimeout(head.timer);
      this.slotWaiters.shift()?.();
      try {
        if (frame.command === Command.OK) head.resolve(decodeOk(frame.payload));
        else if (frame.command === Command.ERROR) {
          const body = decodeError(frame.payload);
          // The peer's own code, marked remote: the source decides on it (e.g. a refused COMMIT is not in doubt).
          head.reject(FerryError.fromRemote(body.code, `${this.label}: target refused ${head.what}: [${body.code}] ${body.message}`, 'MIGRATION_FAILED'));
        } else {
          this.fail(new FerryError('PROTOCOL_OUT_OF_ORDER', `${this.label}: expected OK or ERROR, got command ${frame.command}`));
          return;
        }
      } catch (err) {
        this.fail(isFerryError(err) ? err : new FerryError('MIGRATION_FAILED', errorMessage(err)));
        return;
      }
    }
  }

  /** Fails every outstanding request and closes the socket. Idempotent. */
  fail(err: FerryError): void {
    if (this.failure !== null) return;
    this.failure = err;
    this.closing.abort(err);
    for (const p of this.pending.splice(0)) { clearTimeout(p.timer); p.reject(err); }
    for (const w of this.slotWaiters.splice(0)) w();
    this.socket.destroy();
  }

  close(): void {
    this.fail(new FerryError('MIGRATION_CANCELLED', `${this.label}: closed`));
  }
}

/**
 * Serving side: frames are handled one at a time in arrival order; the handler's result becomes the
 * OK reply, a thrown error the ERROR reply — after which the connection is closed.
 */
export class ServerChannel {
  /** Warm payload buffers for MEMORY frames (fresh ones would page-fault on every frame). */
  private readonly pool = new FramePool(MAX_MEMORY_PAYLOAD_BYTES);
  private readonly reader = new FrameReader({ minBytes: POOLED_MIN_BYTES, acquire: (n) => this.pool.acquire(n), release: (b) => { this.pool.release(b); } });
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly socket: ByteStream,
    private readonly handler: (frame: Frame) => Promise<OkBody> | OkBody,
    private readonly onClose: (reason: string) => void,
  ) {
    socket.on('data', (chunk: Buffer) => { this.onData(chunk); });
    socket.on('error', (err) => { this.close(`connection error: ${err.message}`); });
    socket.on('close', () => { this.close('connection closed by the peer'); });
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (err) {
      const requestId = this.reader.pendingHeader?.requestId ?? 0;
      this.socket.end(encodeErrorFor(requestId, err));
      this.close(`bad input: ${errorMessage(err)}`);
      return;
    }
    for (const frame of frames) {
      this.queue = this.queue.then(async () => {
        if (this.closed) return;
        try {
          const body = await this.handler(frame);
          if (!this.closed) this.socket.write(encodeOk(frame.requestId, body));
        } catch (err) {
          if (!this.closed) this.socket.end(encodeErrorFor(frame.requestId, err));
          this.close(`request failed: ${errorMessage(err)}`);
        } finally {
          frame.release?.();
        }
      });
    }
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose(reason);
    // Let a final ERROR reply flush, then drop the connection.
    setTimeout(() => { this.socket.destroy(); }, 100).unref();
  }
}
