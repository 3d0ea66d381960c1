/**
 * The remote form of the network file copy in tests: a CopyReceiver over a real target datastore (the
 * real local sink) on 127.0.0.1 port 0, a copy job whose sink is the remote sink, a transport whose
 * streams a test can cut, and a raw protocol client that sends what no well-behaved sender would.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { FerryError } from '../../src/lib/errors.js';
import { tcpTransport } from '../../src/dataplane/tcp.js';
import type { ByteStream, Transport, TransportAddress } from '../../src/dataplane/transport.js';
import { CopyJob } from '../../src/nfc/copier.js';
import { openLocalSink } from '../../src/nfc/local-sink.js';
import type { CopyPlan } from '../../src/nfc/plan.js';
import { Command, type Frame } from '../../src/nfc/protocol/frame.js';
import { decodeError, decodeOk, type ErrorBody, type OkBody } from '../../src/nfc/protocol/messages.js';
import { FrameReader } from '../../src/nfc/protocol/reader.js';
import { CopyReceiver, type CopyReceiverOptions, type CopyTicketInfo } from '../../src/nfc/receiver.js';
import { openRemoteSink, type RemoteCopySink, type RemoteSinkOptions } from '../../src/nfc/remote-sink.js';
import type { CopySink } from '../../src/nfc/sink.js';
import { openCopySource } from '../../src/nfc/source-files.js';
import type { Datastore } from '../../src/storage/datastore.js';

export const LOOPBACK: TransportAddress = { host: '127.0.0.1', port: 0 };
/** The receiving host's name for its target datastore in these tests. */
export const TARGET_DATASTORE = 'target';

export interface TestReceiver {
  readonly receiver: CopyReceiver;
  readonly address: TransportAddress;
  /** What the receiver logged. */
  readonly lines: string[];
  /** Sinks the receiver opened, and how many of them it closed. */
  readonly opened: CopySink[];
  closedSinks(): number;
  /** Resolves once `cond` holds, re-checked at each log line and each sink closed (fails after a bound). */
  until(cond: () => boolean, what: string): Promise<void>;
  ticket(plan: CopyPlan, epoch?: number): Promise<CopyTicketInfo>;
}

/** How long a test waits for the receiver to do what it must (far more than it takes). */
const UNTIL_TIMEOUT_MS = 10_000;

/** A receiver writing into `dst` (as datastore TARGET_DATASTORE) through the real local sink. */
export async function startReceiver(dst: Datastore, o: Partial<CopyReceiverOptions> = {}): Promise<TestReceiver> {
  const lines: string[] = [];
  const opened: CopySink[] = [];
  let closed = 0;
  const waiters = new Set<() => void>();
  const poke = (): void => { for (const w of [...waiters]) w(); };
  const open = o.openSink ?? ((name: string, how: Parameters<typeof openLocalSink>[1]) => {
    if (name !== TARGET_DATASTORE) return Promise.reject(new FerryError('NOT_FOUND', `no datastore ${name}`));
    return openLocalSink(dst, how);
  });
  const receiver = new CopyReceiver({
    openSink: async (name, how) => {
      const sink = await open(name, how);
      opened.push(sink);
      let counted = false;
      const close = async (): Promise<void> => { await sink.close(); if (!counted) { counted = true; closed++; poke(); } };
      return {
        get resumeAt() { return sink.resumeAt; },
        write: (i, off, data, sha) => sink.write(i, off, data, sha),
        hole: (i, off, len) => sink.hole(i, off, len),
        sync: () => sink.sync(),
        finishFile: (i) => sink.finishFile(i),
        complete: () => sink.complete(),
        close,
        discard: async () => { await sink.discard(); await close(); },
      };
    },
    log: (line) => { lines.push(line); o.log?.(line); poke(); },
    ...(o.ticketTtlMs !== undefined ? { ticketTtlMs: o.ticketTtlMs } : {}),
  }, tcpTransport, LOOPBACK);
  await receiver.listen();
  return {
    receiver, lines, opened,
    closedSinks: () => closed,
    until: (cond, what) => new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`the receiver did not get to: ${what}`)); }, UNTIL_TIMEOUT_MS);
      const check = (): void => { if (cond()) { clearTimeout(timer); waiters.delete(check); resolve(); } };
      waiters.add(check);
      check();
    }),
    address: { host: LOOPBACK.host, port: receiver.port },
    ticket: (plan, epoch = 1) => receiver.issueTicket({ copyId: plan.copyId, epoch, datastore: TARGET_DATASTORE, plan }),
  };
}

/** TCP whose dialled streams the test can cut (as a broken network would) or count. */
export class CuttableTransport implements Transport {
  readonly kind = 'tcp';
  readonly streams: ByteStream[] = [];
  dial(to: TransportAddress, options: { timeoutMs: number; signal?: AbortSignal }): Promise<ByteStream> {
    return tcpTransport.dial(to, options).then((s) => { this.streams.push(s); return s; });
  }
  listen(at: TransportAddress, onStream: (stream: ByteStream) => void): ReturnType<Transport['listen']> {
    return tcpTransport.listen(at, onStream);
  }
  /** Resets every stream dialled so far (RST: the receiver sees the connection break, not an orderly end). */
  cut(): void {
    for (const s of this.streams) (s as Socket).resetAndDestroy();
  }
}

export function remoteSinkOptions(r: TestReceiver, plan: CopyPlan, ticket: CopyTicketInfo, o: Partial<RemoteSinkOptions> = {}): RemoteSinkOptions {
  return { transport: tcpTransport, address: { host: r.address.host, port: ticket.port }, ticket: ticket.ticket, plan, epoch: 1, streams: 2, ...o };
}

export interface RemoteJob {
  readonly job: CopyJob;
  /** The sink the job opened, once it did. */
  readonly sink: () => RemoteCopySink | null;
}

/** A copy job of `plan` from `src` whose sink is the remote sink to `r` (source leases taken now; run() not called). */
export async function remoteCopyJob(src: Datastore, r: TestReceiver, plan: CopyPlan, ticket: CopyTicketInfo, o: Partial<RemoteSinkOptions> & {
  readonly wrap?: (sink: CopySink, job: CopyJob) => CopySink;
  readonly rateBytesPerSec?: number;
} = {}): Promise<RemoteJob> {
  const { wrap, rateBytesPerSec, ...sinkOptions } = o;
  const source = await openCopySource(src, plan);
  const epoch = o.epoch ?? 1;
  const streams = o.streams ?? 2;
  let opened: RemoteCopySink | null = null;
  const job: CopyJob = new CopyJob({
    plan, epoch, host: 'sender', source, streams, ...(rateBytesPerSec !== undefined ? { rateBytesPerSec } : {}),
    openSink: async (signal) => {
      opened = await openRemoteSink({ ...remoteSinkOptions(r, plan, ticket, sinkOptions), epoch, streams, signal });
      return wrap === undefined ? opened : wrap(opened, job);
    },
  });
  return { job, sink: () => opened };
}

export type Reply = { readonly kind: 'ok'; readonly requestId: number; readonly body: OkBody }
  | { readonly kind: 'error'; readonly requestId: number; readonly body: ErrorBody }
  | { readonly kind: 'closed' };

/** A protocol client that sends raw bytes and reads the receiver's frames one at a time. */
export class RawClient {
  private readonly reader = new FrameReader();
  private readonly frames: Frame[] = [];
  private closed = false;
  private wake: (() => void) | null = null;

  private constructor(readonly socket: ByteStream) {
    socket.on('data', (chunk: Buffer) => { this.frames.push(...this.reader.push(chunk)); this.wake?.(); });
    socket.on('close', () => { this.closed = true; this.wake?.(); });
    socket.on('error', () => undefined);
  }

  static async connect(address: TransportAddress): Promise<RawClient> {
    return new RawClient(await tcpTransport.dial(address, { timeoutMs: 5000 }));
  }

  send(...frames: Buffer[]): void {
    this.socket.write(Buffer.concat(frames));
  }

  /** The next frame from the receiver, or 'closed' once the connection is closed with nothing more to read. */
  async next(): Promise<Reply> {
    for (;;) {
      const f = this.frames.shift();
      if (f !== undefined) {
        if (f.command === Command.OK) return { kind: 'ok', requestId: f.requestId, body: decodeOk(f.payload) };
        assert.equal(f.command, Command.ERROR, `the receiver sent command ${f.command}`);
        return { kind: 'error', requestId: f.requestId, body: decodeError(f.payload) };
      }
      if (this.closed) return { kind: 'closed' };
      await new Promise<void>((resolve) => { this.wake = resolve; });
      this.wake = null;
    }
  }

  /** Expects OK to `requestId` (and answers its body). */
  async ok(requestId: number): Promise<OkBody> {
    const r = await this.next();
    assert.ok(r.kind === 'ok', `expected OK to ${requestId}, got ${JSON.stringify(r)}`);
    assert.equal(r.requestId, requestId);
    return r.body;
  }

  /** Expects ERROR `code` (to `requestId`), then — unless `stays` — the connection closed. */
  async refused(code: string, requestId: number, o: { readonly stays?: boolean; readonly message?: RegExp } = {}): Promise<ErrorBody> {
    const r = await this.next();
    assert.ok(r.kind === 'error', `expected ERROR ${code}, got ${JSON.stringify(r)}`);
    assert.equal(r.body.code, code, r.body.message);
    assert.equal(r.requestId, requestId);
    if (o.message !== undefined) assert.match(r.body.message, o.message);
    if (o.stays !== true) assert.deepEqual(await this.next(), { kind: 'closed' });
    return r.body;
  }

  close(): void {
    this.socket.destroy();
  }
}
