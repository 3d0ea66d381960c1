/**
 * The slot every mobility data stream goes through: a transport dials and listens, and yields
 * duplex byte streams. The migration engine (and later the network file copy) is given a transport
 * and an address and never knows what carries the bytes — plain TCP today, a per-operation
 * isolated virtual path (ARCHITECTURE.md §1.4) next, with no change to the engine.
 */
import type { Duplex } from 'node:stream';

/** Where a stream is dialled to or listened on. For TCP a host and port; for a virtual path, a virtual address. */
export interface TransportAddress {
  readonly host: string;
  readonly port: number;
}

/**
 * A connected byte stream. Besides the Duplex methods, users rely only on `destroy()` and on the
 * 'error' and 'close' events; whatever the transport needs underneath (TLS, a tunnel) stays in it.
 */
export type ByteStream = Duplex;

export interface DialOptions {
  /** Give up connecting after this long (code CONNECT_TIMEOUT). */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

export interface Listener {
  /** The bound address (the port is the real one when 0 was asked for). */
  readonly address: TransportAddress;
  /** Stops accepting; streams already accepted are their owners' to close. */
  close(): Promise<void>;
}

export interface Transport {
  /** For logs: "tcp", "vpath", … */
  readonly kind: string;
  dial(to: TransportAddress, options: DialOptions): Promise<ByteStream>;
  listen(at: TransportAddress, onStream: (stream: ByteStream) => void): Promise<Listener>;
}

export function formatAddress(a: TransportAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
