/**
 * The connections of one outgoing migration and the conversation on its control connection:
 * a ticket from the target, one control and N data connections (HELLO on each), PREPARE; then
 * ROUND, STATE, COMMIT or ABORT. It knows whether COMMIT was sent: from then on a lost reply
 * means in doubt, never a blind rollback.
 */
import { createHash } from 'node:crypto';
import { FerryError, isFerryError } from '../../lib/errors.js';
import { MAX_ABORT_REASON_CHARS } from '../../lib/limits.js';
import { RateLimiter } from '../../dataplane/rate-limiter.js';
import type { Transport } from '../../dataplane/transport.js';
import { ClientChannel } from '../channel.js';
import type { MigrationOptions } from '../options.js';
import type { IncomingTicket } from '../peer.js';
import {
  encodeAbort, encodeCommit, encodeHello, encodePrepare, encodeRound, encodeState, offerFits, preparedFromOk, takesInstrumentedOffer,
  type ConnectionRole, type PrepareOffer, type RoundBody, type StateBody,
} from '../protocol/messages.js';
import { checkCancelled, tag, type JobContext } from './context.js';
import { applyPrepared, seedVerifyAllowanceMs } from './seed.js';

export const DEFAULT_DATA_CHANNELS = 2;
/** Timeouts: a target that never answers is given up on, and the VM keeps running here. */
export const CONNECT_TIMEOUT_MS = 5_000;
export const PREPARE_TIMEOUT_MS = 30_000;
export const REQUEST_TIMEOUT_MS = 30_000;
export const COMMIT_TIMEOUT_MS = 10_000;
/** ABORT is a courtesy (the target aborts on the closed connection too): not worth waiting long for. */
const ABORT_TIMEOUT_MS = 2_000;

function dataChannelCount(options: MigrationOptions): number {
  return options.dataChannels ?? DEFAULT_DATA_CHANNELS;
}

export class Session {
  private controlChannel: ClientChannel | null = null;
  /** Filled as they connect, so that cancel() can fail what is already open. */
  readonly data: ClientChannel[] = [];
  /** The target's id for this migration (from its ticket), used to ask for the outcome. */
  remoteId = '';
  private commitWasSent = false;
  private abortSent = false;
  private roundSent = false;
  /** The control connection's HELLO reply said the target reads PREPARE's `instrumented` (TARGET_OFFER_CAPABILITY). */
  private targetTakesOffer = false;

  constructor(private readonly ctx: JobContext, private readonly transport: Transport, private readonly imageBytes: Uint8Array) {}

  /** COMMIT sent: from here a lost reply means in doubt, never a blind rollback. */
  get commitSent(): boolean { return this.commitWasSent; }

  /** Ticket, connections, PREPARE. A refusal by the target is MIGRATION_REFUSED. */
  async open(): Promise<void> {
    const ticket = await this.requestTicket();
    this.remoteId = ticket.migrationId;
    await this.connect(ticket);
    this.ctx.log(`${tag(this.ctx)}: connected in ${this.ctx.record.elapsedMs().toFixed(0)} ms`);
    await this.prepare(ticket);
  }

  private async requestTicket(): Promise<IncomingTicket> {
    try {
      return await this.ctx.target.requestTicket(CONNECT_TIMEOUT_MS, this.ctx.id);
    } catch (err) {
      // An answer other than the ticket is the target refusing (a wrong token stays UNAUTHORIZED).
      if (isFerryError(err) && err.origin === 'remote' && err.code !== 'UNAUTHORIZED') {
        throw new FerryError('MIGRATION_REFUSED', `target ${this.ctx.target.label} refused: ${err.message} (${err.code})`, { remoteCode: err.code }, { cause: err });
      }
      throw err;
    }
  }

  private async connect(ticket: IncomingTicket): Promise<void> {
    checkCancelled(this.ctx);
    const o = this.ctx.options;
    // One token bucket shared by the data connections: the cap is per migration, not per connection.
    const limiter = o.bandwidthBytesPerSec !== undefined ? new RateLimiter(o.bandwidthBytesPerSec) : null;
    // The target takes data connections only once the control connection's HELLO made the migration;
    // the data connections then open side by side (each is a connect and a HELLO round trip).
    await this.dial(ticket, 'control', 0, null);
    // Every dial has ended before a failure is thrown: a connection opened later would miss the cleanup.
    const dials = await Promise.allSettled(Array.from({ length: dataChannelCount(o) }, (_, i) => this.dial(ticket, 'data', i, limiter)));
    const failed = dials.find((d): d is PromiseRejectedResult => d.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }

  /** One connection, HELLO answered. It is kept before its HELLO, so that cancel() can fail that too. */
  private async dial(ticket: IncomingTicket, role: ConnectionRole, channel: number, limiter: RateLimiter | null): Promise<void> {
    const stream = await this.transport.dial(ticket.address, { timeoutMs: CONNECT_TIMEOUT_MS, signal: this.ctx.signal });
    const ch = role === 'control' ? new ClientChannel(stream, 'control') : new ClientChannel(stream, `data ${channel}`, limiter);
    if (role === 'control') this.controlChannel = ch;
    else this.data.push(ch);
    const reply = await ch.request('HELLO', (id) => encodeHello(id, { protocol: 1, ticket: ticket.ticket, role, channel }), this.ctx.requestTimeoutMs);
    if (role === 'control') this.targetTakesOffer = takesInstrumentedOffer(reply);
  }

  private async prepare(ticket: IncomingTicket): Promise<void> {
    const { vm, options } = this.ctx;
    const c = vm.config;
    const plan = this.ctx.disk?.plan;
    const offer = this.targetTakesOffer ? this.instrumentedOffer() : null;
    let reply;
    try {
      reply = await this.control.request('PREPARE', (id) => encodePrepare(id, {
        migrationId: ticket.migrationId, dataChannels: dataChannelCount(options), image: this.imageBytes,
        vm: { name: c.name, memoryBytes: c.memoryBytes, vcpus: c.vcpus, granularityBytes: c.granularityBytes, cmdline: c.cmdline, imageSha256: vm.image.imageSha256 },
        ...(this.ctx.disk !== null ? { disk: this.ctx.disk.plan } : {}),
        ...(this.targetTakesOffer ? { instrumented: offer } : {}),
      }), options.requestTimeoutMs ?? PREPARE_TIMEOUT_MS);
    } catch (err) {
      // The target looked at the VM and said no (capacity, name taken, image): a refusal, whatever its reason code.
      if (isFerryError(err) && err.origin === 'remote') throw new FerryError('MIGRATION_REFUSED', err.message, { remoteCode: err.code }, { cause: err });
      throw err;
    }
    // The target is a peer, not trusted: its answer about the chain must match what was announced.
    const announced = plan?.mode === 'copy' ? plan.chain : undefined;
    const prepared = preparedFromOk(reply, announced);
    applyPrepared(this.ctx, prepared, announced);
    this.ctx.record.instrumentation = prepared.instrumentation ?? null;
    if (this.targetTakesOffer) this.ctx.log(`${tag(this.ctx)}: target's instrumentation: ${prepared.instrumentation ?? 'not said'}${offer !== null ? ` (offered ${offer.binary.byteLength} bytes)` : ' (nothing offered)'}`);
  }

  /**
   * The VM's instrumented module, offered to the target, if it was made for exactly what the target
   * builds — this image (the announced sha256 is its own), this RAM size, the granularity PREPARE
   * announces, no fault injection (build null) — and fits the bounds (MAX_INSTRUMENTED_OFFER_BYTES,
   * the PREPARE frame with the image); otherwise null: the target instruments the image itself.
   */
  private instrumentedOffer(): PrepareOffer | null {
    const { image, config } = this.ctx.vm;
    if (image.build === null) return null;
    if (image.layout.ramBytes !== config.memoryBytes || image.granularityBytes !== config.granularityBytes) return null;
    if (!offerFits(this.imageBytes.byteLength, image.binary.byteLength)) return null;
    return { build: image.build, sha256: createHash('sha256').update(image.binary).digest('hex'), binary: image.binary };
  }

  private get control(): ClientChannel {
    if (this.controlChannel === null) throw new FerryError('MIGRATION_FAILED', 'no control connection');
    return this.controlChannel;
  }

  /**
   * Every MEMORY frame of the round was acknowledged. The first ROUND is answered only after the
   * target verified its seed files: its timeout grows by the time that may take.
   */
  async round(body: RoundBody): Promise<void> {
    const first = !this.roundSent;
    this.roundSent = true;
    const verifyMs = first ? seedVerifyAllowanceMs(this.ctx.preparedDisk?.verifyBytes ?? 0) : 0;
    await this.control.request('ROUND', (id) => encodeRound(id, body), this.ctx.requestTimeoutMs + verifyMs);
  }

  async state(body: StateBody): Promise<void> {
    await this.control.request('STATE', (id) => encodeState(id, body), this.ctx.requestTimeoutMs);
  }

  async commit(digest: string, diskDigest?: string): Promise<void> {
    // A control connection that already failed (the target died while the VM was stunned) never
    // carries this COMMIT: a definite "not committed", to roll back at once rather than be in doubt.
    // request() writes synchronously after the same check, so nothing can fail in between unseen.
    this.control.throwIfFailed();
    this.commitWasSent = true;
    await this.control.request('COMMIT', (id) => encodeCommit(id, { digest, ...(diskDigest !== undefined ? { diskDigest } : {}) }), this.ctx.options.requestTimeoutMs ?? COMMIT_TIMEOUT_MS);
  }

  /** Tells the target to discard its copy, once; its reply (or none) changes nothing. */
  async abort(reason: string): Promise<void> {
    if (this.controlChannel === null || this.abortSent) return;
    this.abortSent = true;
    await this.controlChannel.request('ABORT', (id) => encodeAbort(id, { reason: reason.slice(0, MAX_ABORT_REASON_CHARS) }), ABORT_TIMEOUT_MS).catch(() => undefined);
  }

  /** Fails every in-flight request now (cancel), so the job unwinds promptly. */
  fail(err: FerryError): void {
    this.controlChannel?.fail(err);
    for (const d of this.data) d.fail(err);
  }

  close(): void {
    this.controlChannel?.close();
    for (const d of this.data) d.close();
  }
}
