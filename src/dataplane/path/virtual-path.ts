/**
 * One open virtual path as the operation's code sees it: a Transport that listens only on this end's
 * virtual address and dials only the peer's, on the ports the path grants, and only while the path is
 * open and not expired. Everything else is PATH_REFUSED — the peer's physical address included, which
 * the operation never learns. It tracks every stream and listener so that closing the path (at the
 * operation's end, on expiry, or at host stop) closes them all before the driver removes its parts.
 */
import { FerryError } from '../../lib/errors.js';
import { formatAddress, type ByteStream, type DialOptions, type Listener, type Transport, type TransportAddress } from '../transport.js';
import type { PathCarrier } from './driver.js';
import { shortPathId, pathGrantsPort, pathView, type PathSpec, type PathView } from './spec.js';

/** Streams open on one path at once, at most (a migration uses 1 + its data channels; a copy a few). */
export const MAX_PATH_STREAMS = 64;

export class VirtualPath implements Transport {
  readonly kind: string;
  private readonly streams = new Set<ByteStream>();
  private readonly listeners = new Set<{ close(): Promise<void> }>();
  private closing: Promise<void> | null = null;
  private expiresAtMs: number;

  constructor(readonly spec: PathSpec, private readonly carrier: PathCarrier, private readonly now: () => number = Date.now) {
    this.kind = `vpath/${spec.driver}`;
    this.expiresAtMs = spec.expiresAtMs;
  }

  /** Streams open now. */
  get openStreams(): number { return this.streams.size; }

  /** A renewal by the center: the path lives until then (never shortened below now: that is a removal). */
  renew(expiresAtMs: number): void { this.expiresAtMs = expiresAtMs; }

  get expiresAt(): number { return this.expiresAtMs; }

  get closed(): boolean { return this.closing !== null; }

  view(): PathView { return { ...pathView(this.spec, this.streams.size), expiresAtMs: this.expiresAtMs }; }

  async dial(to: TransportAddress, options: DialOptions): Promise<ByteStream> {
    this.check('dial', to, this.spec.peerAddress);
    if (this.streams.size >= MAX_PATH_STREAMS) throw new FerryError('BUSY', `path ${this.short} already has ${MAX_PATH_STREAMS} streams open`);
    const stream = await this.carrier.dial(to.port, options);
    if (this.closed) { stream.destroy(); throw this.refusal('it was closed while the stream was being set up'); }
    this.track(stream);
    return stream;
  }

  async listen(at: TransportAddress, onStream: (stream: ByteStream) => void): Promise<Listener> {
    this.check('listen on', at, this.spec.localAddress);
    const inner = await this.carrier.listen(at.port, (stream) => {
      if (this.closed || this.expired() || this.streams.size >= MAX_PATH_STREAMS) { stream.destroy(); return; }
      this.track(stream);
      onStream(stream);
    });
    this.listeners.add(inner);
    return {
      address: { host: this.spec.localAddress, port: at.port },
      close: async () => { this.listeners.delete(inner); await inner.close(); },
    };
  }

  /** Closes every stream and listener of the path, then the driver's parts. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const s of this.streams) s.destroy();
      this.streams.clear();
      await Promise.allSettled([...this.listeners].map((l) => l.close()));
      this.listeners.clear();
      await this.carrier.close();
    })();
    return this.closing;
  }

  expired(): boolean { return this.now() >= this.expiresAtMs; }

  private get short(): string { return shortPathId(this.spec.pathId); }

  private track(stream: ByteStream): void {
    this.streams.add(stream);
    stream.once('close', () => { this.streams.delete(stream); });
  }

  private check(what: string, a: TransportAddress, allowed: string): void {
    if (this.closed) throw this.refusal('it is closed');
    if (this.expired()) throw this.refusal('it has expired');
    if (a.host !== allowed) throw this.refusal(`it may only ${what} ${allowed}`); // the refused address is not echoed: it could be a physical one
    if (!pathGrantsPort(this.spec, a.port)) {
      throw this.refusal(`port ${a.port} is not one of its ports ${this.spec.firstPort}-${this.spec.firstPort + this.spec.portCount - 1}`, formatAddress(a));
    }
  }

  private refusal(why: string, address?: string): FerryError {
    return new FerryError('PATH_REFUSED', `virtual path ${this.short} refused: ${why}`, { pathId: this.spec.pathId, ...(address !== undefined ? { address } : {}) });
  }
}
