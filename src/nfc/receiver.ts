/**
 * The receiving host of a network file copy's remote form (docs/nfc-protocol.md): it issues a ticket
 * per copy and epoch (through the authenticated host API), accepts the sending host's streams, and
 * writes what they carry through a local sink over its own datastore (./local-sink.ts, opened by the
 * host's `openSink`), which keeps the copy's journal — so resuming, verifying and fencing are the local
 * sink's, exactly as in the local form.
 *
 * - A copy's **session** is one opening of the sender's sink: its streams (HELLO's `session`, up to
 *   MAX_COPY_STREAMS) share one local sink, opened at the session's first HELLO and closed (journal kept)
 *   when its last stream goes away. A new session of the same epoch (the sender opened its sink again)
 *   replaces the old one; its sink opens only once the old one is closed.
 * - A ticket is valid for its copy and epoch only. It stays valid while a session runs and for
 *   TICKET_TTL_MS after the last one ended — a sender whose connection broke may open its sink again
 *   (it resumes at the journal's boundary) — and ends with its copy: COMPLETE then CLOSE, ABORT, expiry,
 *   or a ticket for a newer epoch of the same copy, which closes the older epoch's session (its streams
 *   get an unsolicited ERROR COPY_FENCED) and makes its ticket answer COPY_FENCED.
 * - Memory is bounded: at most MAX_OPEN_TICKETS tickets (one session each), MAX_COPY_STREAMS streams a
 *   session, MAX_IN_FLIGHT_PER_STREAM requests a stream (one more is refused), one frame of at most
 *   MAX_DATA_PAYLOAD_BYTES being read per stream, MAX_PENDING_CONNECTIONS connections before their HELLO.
 */
import { randomBytes } from 'node:crypto';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { FramePool, POOLED_MIN_BYTES } from '../dataplane/frame-pool.js';
import { formatAddress, type ByteStream, type Listener, type Transport, type TransportAddress } from '../dataplane/transport.js';
import { planDigestOf } from './journal.js';
import { MAX_COPY_EPOCHS, compareBoundaries, copyPlanSchema, datastoreNameSchema, type Boundary, type CopyPlan } from './plan.js';
import { Command, MAX_DATA_PAYLOAD_BYTES, MAX_IN_FLIGHT_PER_STREAM, SESSION_REQUEST_ID, TICKET_TTL_MS, commandName, type Frame } from './protocol/frame.js';
import {
  boundaryReply, checkDataCrc, copiedFileToWire, decodeMessage, encodeErrorFor, encodeOk, type HelloBody, type OkBody,
} from './protocol/messages.js';
import { FrameReader } from './protocol/reader.js';
import { StreamState } from './protocol/stream-state.js';
import type { CopySink, CopySinkOpen } from './sink.js';

/** Tickets (copies expected or running) at most: a flood of ticket requests cannot exhaust memory. */
export const MAX_OPEN_TICKETS = 64;
/** Connections that have not yet sent their HELLO, at most (an idle or hostile peer's sockets are dropped beyond it). */
export const MAX_PENDING_CONNECTIONS = 64;
/** A connection must present a valid HELLO this quickly, or it is dropped (idle or hostile peers). */
export const HELLO_TIMEOUT_MS = 10_000;
/** A final ERROR reply gets this long to flush before its connection is dropped. */
const ERROR_FLUSH_MS = 100;

export interface CopyTicketInfo {
  readonly copyId: string;
  readonly ticket: string;
  readonly port: number;
  readonly expiresInMs: number;
}

export interface CopyReceiverOptions {
  /** Opens the local sink of a copy on one of this host's datastores (by the host's name for it). */
  readonly openSink: (datastore: string, open: CopySinkOpen) => Promise<CopySink>;
  readonly log?: (line: string) => void;
  /** A ticket's life without a session (TICKET_TTL_MS unless a test needs a shorter one). */
  readonly ticketTtlMs?: number;
}

export interface CopyTicketRequest {
  readonly copyId: string;
  readonly epoch: number;
  readonly datastore: string;
  readonly plan: CopyPlan;
}

export interface TicketVia {
  readonly transport: Transport;
  readonly at: TransportAddress;
  readonly ended?: () => void;
}

/** What a receiver knows of one copy: its current epoch's ticket and session. */
interface CopyTicket {
  readonly ticket: string;
  readonly copyId: string;
  readonly epoch: number;
  readonly datastore: string;
  readonly plan: CopyPlan;
  readonly planDigest: string;
  /** The ticket's own listener (a virtual path's), closed with the ticket; null: the host's NFC endpoint. */
  readonly listener: Listener | null;
  ended: (() => void) | null;
  session: Session | null;
  /** The last session's closing (its sink's close): the next session's sink opens after it. */
  lastClose: Promise<void>;
  expiry: NodeJS.Timeout | null;
}

/** A HELLO that fails with `code` (the ticket layer's refusals, not the protocol's). */
function refuse(code: 'TICKET_INVALID' | 'COPY_FENCED' | 'COPY_CONFLICT', message: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError(code, message, details);
}

export class CopyReceiver {
  /** By ticket string; one per copy (the copy's current epoch). */
  private readonly tickets = new Map<string, CopyTicket>();
  private readonly byCopy = new Map<string, CopyTicket>();
  /** Tickets of epochs a newer one replaced, to answer COPY_FENCED (not "unknown") to a sender still using one; bounded. */
  private readonly fenced = new Map<string, { readonly copyId: string; readonly epoch: number; readonly newerEpoch: number }>();
  private readonly connections = new Set<ReceiverStream>();
  private pendingConnections = 0;
  private issuing: Promise<unknown> = Promise.resolve();
  private listener: Listener | null = null;
  private closed = false;
  /** Warm payload buffers for DATA frames (fresh 1 MiB buffers would page-fault on every chunk). */
  readonly pool = new FramePool(MAX_DATA_PAYLOAD_BYTES);

  private readonly ttlMs: number;

  constructor(private readonly o: CopyReceiverOptions, private readonly transport: Transport, private readonly at: TransportAddress) {
    this.ttlMs = o.ticketTtlMs ?? TICKET_TTL_MS;
  }

  async listen(): Promise<void> {
    this.listener = await this.transport.listen(this.at, (stream) => { this.onConnection(stream); });
  }

  get port(): number { return this.listener?.address.port ?? 0; }

  /** Tickets held now (tests and diagnostics). */
  get openTickets(): number { return this.tickets.size; }

  /**
   * Expect sessions of `copyId` under `epoch` into `datastore`. Asking again for the same copy and epoch
   * answers the same ticket (its life starts again); a newer epoch fences the older one's session out; an
   * older epoch is COPY_FENCED; the same epoch with another plan or datastore COPY_CONFLICT. `via`: the
   * sessions come through that transport to that address (a virtual path's), listened on for this ticket
   * only; `ended` is told once when the copy's sessions are over.
   */
  issueTicket(req: CopyTicketRequest, via?: TicketVia): Promise<CopyTicketInfo> {
    // One at a time: a ticket's own listener is awaited, and two requests for one copy must not both make one.
    const run = this.issuing.then(() => this.issue(req, via));
    this.issuing = run.catch(() => undefined);
    return run;
  }

  private async issue(req: CopyTicketRequest, via?: TicketVia): Promise<CopyTicketInfo> {
    if (this.closed) throw new FerryError('HOST_STATE', 'the copy receiver is shut down');
    const plan = copyPlanSchema.safeParse(req.plan);
    if (!plan.success || req.plan.copyId !== req.copyId) {
      throw new FerryError('INVALID_ARGUMENT', `copy ticket: ${plan.success ? `the plan is copy ${req.plan.copyId}'s, not ${req.copyId}'s` : plan.error.issues[0]?.message ?? 'invalid plan'}`);
    }
    if (!Number.isInteger(req.epoch) || req.epoch < 1 || req.epoch > MAX_COPY_EPOCHS) throw new FerryError('INVALID_ARGUMENT', `epoch ${req.epoch} is not 1..${MAX_COPY_EPOCHS}`);
    if (!datastoreNameSchema.safeParse(req.datastore).success) throw new FerryError('INVALID_ARGUMENT', `"${req.datastore}" is not a datastore name`);
    const planDigest = planDigestOf(req.plan);
    const current = this.byCopy.get(req.copyId);
    let lastClose: Promise<void> = Promise.resolve();
    if (current !== undefined) {
      if (req.epoch < current.epoch) {
        throw new FerryError('COPY_FENCED', `copy ${req.copyId} is at epoch ${current.epoch} here; epoch ${req.epoch} is over`, { copyId: req.copyId, epoch: req.epoch, currentEpoch: current.epoch });
      }
      if (req.epoch === current.epoch) {
        if (current.datastore !== req.datastore || current.planDigest !== planDigest) {
          throw new FerryError('COPY_CONFLICT', `copy ${req.copyId} epoch ${req.epoch} is expected here with another plan or datastore (${current.datastore})`, { copyId: req.copyId });
        }
        if (current.session === null) this.armExpiry(current);
        return this.info(current);
      }
      lastClose = this.fence(current, req.epoch);
    }
    if (this.tickets.size >= MAX_OPEN_TICKETS) throw new FerryError('BUSY', `this host expects ${MAX_OPEN_TICKETS} copies already; try again shortly`);
    const listener = via !== undefined ? await via.transport.listen(via.at, (stream) => { this.onConnection(stream); }) : null;
    const t: CopyTicket = {
      ticket: randomBytes(32).toString('hex'), copyId: req.copyId, epoch: req.epoch, datastore: req.datastore, plan: req.plan, planDigest,
      listener, ended: via?.ended ?? null, session: null, lastClose, expiry: null,
    };
    this.tickets.set(t.ticket, t);
    this.byCopy.set(t.copyId, t);
    this.armExpiry(t);
    this.log(`copy ${t.copyId.slice(0, 8)} epoch ${t.epoch}: ticket issued for datastore ${t.datastore}${via !== undefined ? ` via ${via.transport.kind} ${formatAddress(via.at)}` : ''}`);
    return this.info(t);
  }

  /** Stops accepting; ends every copy's sessions (their sinks closed, journals kept) and tickets. */
  async close(): Promise<void> {
    this.closed = true;
    const closing = [...this.tickets.values()].map((t) => this.endTicket(t, 'the receiving host is shutting down', 'HOST_STATE'));
    for (const c of this.connections) c.drop();
    await Promise.allSettled(closing);
    await this.listener?.close();
    this.listener = null;
  }

  private info(t: CopyTicket): CopyTicketInfo {
    return { copyId: t.copyId, ticket: t.ticket, port: t.listener?.address.port ?? this.port, expiresInMs: this.ttlMs };
  }

  /** The ticket's life (while no session runs): ttlMs from now. */
  private armExpiry(t: CopyTicket): void {
    if (t.expiry !== null) clearTimeout(t.expiry);
    t.expiry = setTimeout(() => {
      t.expiry = null;
      if (t.session === null) void this.endTicket(t, 'its ticket expired');
    }, this.ttlMs);
    t.expiry.unref();
  }

  /** A newer epoch takes copy `t` over: `t`'s session ends with COPY_FENCED; a sender presenting `t`'s ticket hears COPY_FENCED. */
  private fence(t: CopyTicket, newerEpoch: number): Promise<void> {
    if (this.fenced.size >= MAX_OPEN_TICKETS) {
      const oldest = this.fenced.keys().next();
      if (oldest.done !== true) this.fenced.delete(oldest.value);
    }
    this.fenced.set(t.ticket, { copyId: t.copyId, epoch: t.epoch, newerEpoch });
    setTimeout(() => { this.fenced.delete(t.ticket); }, this.ttlMs).unref();
    return this.endTicket(t, `epoch ${newerEpoch} took the copy over`, 'COPY_FENCED');
  }

  /** The copy's sessions are over: its session ends (streams told `code`, if given), its listener closes, its owner is told. */
  private endTicket(t: CopyTicket, reason: string, code?: 'COPY_FENCED' | 'HOST_STATE'): Promise<void> {
    if (this.tickets.get(t.ticket) === t) this.tickets.delete(t.ticket);
    if (this.byCopy.get(t.copyId) === t) this.byCopy.delete(t.copyId);
    if (t.expiry !== null) { clearTimeout(t.expiry); t.expiry = null; }
    const session = t.session;
    if (session !== null) {
      const err = code === undefined ? null : new FerryError(code, `copy ${t.copyId} epoch ${t.epoch} on this host: ${reason}`, { copyId: t.copyId, epoch: t.epoch });
      void session.end(err);
    }
    void t.listener?.close();
    const ended = t.ended;
    t.ended = null;
    this.log(`copy ${t.copyId.slice(0, 8)} epoch ${t.epoch}: sessions over (${reason})`);
    ended?.();
    return session?.closed ?? t.lastClose;
  }

  private onConnection(socket: ByteStream): void {
    if (this.closed || this.pendingConnections >= MAX_PENDING_CONNECTIONS) {
      socket.destroy();
      return;
    }
    this.pendingConnections++;
    let pending = true;
    const settle = (): void => { if (pending) { pending = false; this.pendingConnections--; } };
    const stream = new ReceiverStream(socket, this, () => { settle(); });
    this.connections.add(stream);
    const helloTimer = setTimeout(() => { if (pending) stream.drop(); }, HELLO_TIMEOUT_MS);
    helloTimer.unref();
    socket.once('close', () => { clearTimeout(helloTimer); settle(); this.connections.delete(stream); });
  }

  /** A stream's HELLO (called by the stream): the ticket names the copy; the stream joins its session (opening it, or replacing an older one). */
  join(stream: ReceiverStream, hello: HelloBody): Session {
    const t = this.tickets.get(hello.ticket);
    if (t === undefined) {
      const f = this.fenced.get(hello.ticket);
      if (f !== undefined) throw refuse('COPY_FENCED', `copy ${f.copyId}: epoch ${f.newerEpoch} took it over from epoch ${f.epoch}; this ticket writes no more`, { copyId: f.copyId, epoch: f.epoch });
      throw refuse('TICKET_INVALID', 'unknown or expired copy ticket; ask the receiving host for a new one');
    }
    if (hello.copyId !== t.copyId) throw refuse('TICKET_INVALID', `this ticket is for another copy than ${hello.copyId}`);
    if (hello.epoch < t.epoch) throw refuse('COPY_FENCED', `copy ${t.copyId} is at epoch ${t.epoch} here; epoch ${hello.epoch} writes no more`, { copyId: t.copyId, epoch: hello.epoch });
    if (hello.epoch !== t.epoch) throw refuse('TICKET_INVALID', `this ticket is for epoch ${t.epoch} of copy ${t.copyId}, not ${hello.epoch}`);
    if (hello.planDigest !== t.planDigest) throw refuse('COPY_CONFLICT', `copy ${t.copyId}: the sender's plan is not the one this host was given`, { copyId: t.copyId });
    let session = t.session;
    if (session !== null && session.id !== hello.session) {
      this.log(`copy ${t.copyId.slice(0, 8)} epoch ${t.epoch}: a new session replaces session ${session.id.slice(0, 8)}`);
      t.lastClose = session.end(null);
      session = null;
    }
    if (session === null) {
      if (t.expiry !== null) { clearTimeout(t.expiry); t.expiry = null; }
      session = new Session(hello.session, hello.streams, t, this.o, (s) => { this.sessionEnded(t, s); });
      t.session = session;
    }
    session.join(stream, hello);
    return session;
  }

  /** A session's last stream went away (its sink is closing): the copy is over, or its ticket waits TICKET_TTL_MS for a new session. */
  private sessionEnded(t: CopyTicket, s: Session): void {
    if (t.session !== s) return;
    t.session = null;
    t.lastClose = s.closed ?? Promise.resolve();
    if (s.over !== null) void this.endTicket(t, s.over);
    else if (this.tickets.get(t.ticket) === t) this.armExpiry(t);
  }

  log(line: string): void {
    this.o.log?.(`nfc receiver: ${line}`);
  }
}

/** One opening of the sender's sink: its streams, and the local sink they share. */
class Session {
  readonly sink: Promise<CopySink>;
  /** The latest boundary the sink answered as durable (a stream joining later resumes there). */
  durable: Boundary;
  private readonly streams = new Map<number, ReceiverStream>();
  /** Set once the sink's close (or discard) began. */
  closed: Promise<void> | null = null;
  /** Why the copy's sessions are over (COMPLETE then CLOSE, ABORT), if they are. */
  over: string | null = null;
  private completed = false;

  private readonly log: ((line: string) => void) | undefined;

  constructor(readonly id: string, readonly streamCount: number, private readonly t: CopyTicket, o: CopyReceiverOptions, private readonly onEnded: (s: Session) => void) {
    this.log = o.log;
    this.durable = { fileIndex: 0, offsetBytes: 0 };
    const open: CopySinkOpen = { plan: t.plan, epoch: t.epoch };
    this.sink = t.lastClose.catch(() => undefined).then(() => o.openSink(t.datastore, open));
    this.sink.then((s) => { this.durable = s.resumeAt; }, () => undefined);
  }

  get label(): string { return `copy ${this.t.copyId.slice(0, 8)} epoch ${this.t.epoch} session ${this.id.slice(0, 8)}`; }

  join(stream: ReceiverStream, hello: HelloBody): void {
    if (this.closed !== null) throw new FerryError('PROTOCOL_OUT_OF_ORDER', `${this.label} is closing; open the sink again`);
    if (hello.streams !== this.streamCount) {
      throw new FerryError('PROTOCOL_BAD_PAYLOAD', `HELLO payload: ${this.label} has ${this.streamCount} streams, this HELLO says ${hello.streams}`);
    }
    if (this.streams.has(hello.stream)) throw new FerryError('PROTOCOL_OUT_OF_ORDER', `stream ${hello.stream} of ${this.label} is connected already`);
    this.streams.set(hello.stream, stream);
  }

  /** HELLO's reply, once the sink is open: where the copy resumes (the sink's durable boundary). */
  async welcome(): Promise<OkBody> {
    const sink = await this.sink;
    if (this.closed !== null) throw new FerryError('PROTOCOL_OUT_OF_ORDER', `${this.label} ended while this stream joined it; open the sink again`);
    return boundaryReply('resumeAt', compareBoundaries(this.durable, sink.resumeAt) > 0 ? this.durable : sink.resumeAt);
  }

  leave(stream: ReceiverStream): void {
    for (const [i, s] of this.streams) if (s === stream) this.streams.delete(i);
    if (this.streams.size === 0 && this.closed === null) void this.close();
  }

  /** One request of stream `from` of this session (after its HELLO). */
  async handle(frame: Frame, from: ReceiverStream): Promise<OkBody> {
    const sink = await this.sink;
    const msg = decodeMessage(frame, { plan: this.t.plan });
    switch (msg.command) {
      case Command.DATA:
        checkDataCrc(msg.body);
        await sink.write(msg.body.fileIndex, msg.body.offsetBytes, msg.body.data, msg.body.sha256);
        return {};
      case Command.HOLE:
        await sink.hole(msg.body.fileIndex, msg.body.offsetBytes, msg.body.lengthBytes);
        return {};
      case Command.SYNC: {
        const b = await sink.sync();
        this.advance(b);
        return boundaryReply('boundary', b);
      }
      case Command.FINISH_FILE: {
        const file = await sink.finishFile(msg.body.fileIndex);
        this.advance({ fileIndex: msg.body.fileIndex + 1, offsetBytes: 0 });
        return { file: copiedFileToWire(msg.body.fileIndex, file) };
      }
      case Command.COMPLETE: {
        const files = await sink.complete();
        this.completed = true;
        this.advance({ fileIndex: this.t.plan.files.length, offsetBytes: 0 });
        return { files: files.map((f, i) => copiedFileToWire(i, f)) };
      }
      case Command.CLOSE:
        if (this.completed) this.over = 'the copy completed';
        await this.end(null, from);
        return {};
      case Command.ABORT:
        this.over = `the sender gave the copy up: ${msg.body.reason}`;
        this.closed ??= sink.discard();
        await this.end(null, from);
        return {};
      default:
        throw new FerryError('PROTOCOL_OUT_OF_ORDER', `${commandName(frame.command)} is not a request`);
    }
  }

  /**
   * Ends the session: every stream but the one whose CLOSE or ABORT asked for it is dropped (told `err`
   * in an unsolicited ERROR first, if given), and the sink closed (its journal kept). Resolves when closed.
   */
  end(err: FerryError | null, except?: ReceiverStream): Promise<void> {
    for (const s of [...this.streams.values()]) {
      if (s === except) continue;
      if (err !== null) s.fatal(SESSION_REQUEST_ID, err);
      else s.drop();
    }
    return this.close();
  }

  private close(): Promise<void> {
    this.closed ??= this.sink.then((s) => s.close(), () => undefined);
    const closed = this.closed.catch((err: unknown) => { this.log?.(`${this.label}: closing its sink failed: ${errorMessage(err)}`); });
    this.onEnded(this);
    return closed;
  }

  private advance(b: Boundary): void {
    if (compareBoundaries(b, this.durable) > 0) this.durable = b;
  }
}

/** One connection: frames in, one reply per request, in order, processed one at a time. */
class ReceiverStream {
  private readonly reader: FrameReader;
  private readonly state = new StreamState();
  private readonly queue: Frame[] = [];
  /** Requests received and not yet answered (queued or being handled). */
  private inFlight = 0;
  private busy = false;
  private session: Session | null = null;
  private closed = false;

  constructor(private readonly socket: ByteStream, private readonly receiver: CopyReceiver, private readonly onHello: () => void) {
    const pool = receiver.pool;
    this.reader = new FrameReader({ minBytes: POOLED_MIN_BYTES, acquire: (n) => pool.acquire(n), release: (b) => { pool.release(b); } });
    socket.on('data', (chunk: Buffer) => { this.onData(chunk); });
    socket.on('end', () => { this.onEnd(); });
    socket.on('error', (err) => { this.gone(`connection error: ${err.message}`); });
    socket.on('close', () => { this.gone('connection closed by the peer'); });
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (err) {
      this.fatal(this.reader.pendingHeader?.requestId ?? SESSION_REQUEST_ID, err);
      return;
    }
    for (const frame of frames) {
      if (this.closed) { frame.release?.(); continue; }
      if (++this.inFlight > MAX_IN_FLIGHT_PER_STREAM) {
        frame.release?.();
        this.fatal(frame.requestId, new FerryError('PROTOCOL_OUT_OF_ORDER',
          `${commandName(frame.command)} (request ${frame.requestId}) is request ${this.inFlight} in flight on this stream; at most ${MAX_IN_FLIGHT_PER_STREAM} may wait for their replies`));
        continue;
      }
      this.queue.push(frame);
    }
    void this.pump();
  }

  private onEnd(): void {
    if (this.closed) return;
    try {
      this.reader.end();
    } catch (err) {
      this.fatal(this.reader.pendingHeader?.requestId ?? SESSION_REQUEST_ID, err);
    }
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      for (let frame = this.queue.shift(); frame !== undefined && !this.closed; frame = this.queue.shift()) {
        try {
          const body = await this.handle(frame);
          if (!this.closed) this.socket.write(encodeOk(frame.requestId, body));
        } catch (err) {
          // A chunk damaged on the way is refused alone: the sender sends it again on a stream that is still good.
          if (isFerryError(err, 'CHUNK_CORRUPT')) {
            this.receiver.log(`${this.session?.label ?? 'stream'}: ${err.message}`);
            if (!this.closed) this.socket.write(encodeErrorFor(frame.requestId, err));
          } else {
            this.fatal(frame.requestId, err);
          }
        } finally {
          frame.release?.();
          this.inFlight--;
        }
      }
    } finally {
      this.busy = false;
    }
  }

  private async handle(frame: Frame): Promise<OkBody> {
    this.state.accept(frame.command);
    if (frame.command === Command.HELLO) {
      const msg = decodeMessage(frame);
      if (msg.command !== Command.HELLO) throw new FerryError('PROTOCOL_BAD_PAYLOAD', 'expected HELLO');
      this.onHello();
      this.session = this.receiver.join(this, msg.body);
      return this.session.welcome();
    }
    const session = this.session;
    if (session === null) throw new FerryError('PROTOCOL_OUT_OF_ORDER', `${commandName(frame.command)} before HELLO was accepted`);
    const body = await session.handle(frame, this);
    if (frame.command === Command.CLOSE || frame.command === Command.ABORT) this.session = null;
    return body;
  }

  /** Replies ERROR (to `requestId`) and closes the connection. */
  fatal(requestId: number, err: unknown): void {
    if (this.closed) return;
    this.receiver.log(`${this.session?.label ?? 'stream'}: ${errorMessage(err)}; closing the stream`);
    this.socket.end(encodeErrorFor(requestId, err));
    this.close();
    setTimeout(() => { this.socket.destroy(); }, ERROR_FLUSH_MS).unref();
  }

  /** Closes the connection without a word (a session ended under it, or the receiver shuts down). */
  drop(): void {
    if (this.closed) return;
    this.close();
    this.socket.destroy();
  }

  private gone(reason: string): void {
    if (this.closed) return;
    if (this.session !== null) this.receiver.log(`${this.session.label}: ${reason}`);
    this.close();
  }

  private close(): void {
    this.closed = true;
    this.state.fail();
    for (const f of this.queue.splice(0)) f.release?.();
    const session = this.session;
    this.session = null;
    session?.leave(this);
  }
}
