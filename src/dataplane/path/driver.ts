/**
 * A path driver sets up the carrying part of one operation's virtual path and hands back a Transport
 * that can only listen on the path's own virtual address and dial the peer's (virtual-path.ts checks
 * that, whatever the driver). Two drivers: `portable` (portable-driver.ts: no privileges; every
 * stream is a TLS 1.3 connection to the peer's tunnel endpoint, addressed by path id and port) and
 * `kernel` (kernel-driver.ts: a per-operation VXLAN interface, the virtual addresses, a route and a
 * policy rule in the host's network namespace, so the operation's sockets are bound to virtual
 * addresses; the same TLS 1.3 keyed per operation inside).
 */
import type { Logger } from '../../lib/logger.js';
import type { ByteStream, TransportAddress } from '../transport.js';
import type { PathDriverKind, PathEndpoint, PathRecord, PathSpec } from './spec.js';

/** A driver's raw carrying of streams for one open path; virtual-path.ts adds the checks and the bookkeeping. */
export interface PathCarrier {
  /** One authenticated, encrypted stream to the peer's virtual address at `port` (already checked to be granted). */
  dial(port: number, options: { timeoutMs: number; signal?: AbortSignal }): Promise<ByteStream>;
  /** Accepts the peer's streams to this end's virtual address at `port` (already checked to be granted). */
  listen(port: number, onStream: (stream: ByteStream) => void): Promise<{ close(): Promise<void> }>;
  /** Removes everything the driver made for the path (interfaces, addresses, routes, listeners, keys). Idempotent. */
  close(): Promise<void>;
}

export interface PathDriver {
  readonly kind: PathDriverKind;
  /** Where peers reach this host's end of paths of this kind (told to the center, which tells the peers). */
  readonly endpoint: PathEndpoint;
  /** Sets up what the path needs on this host. Rejects with PATH_SETUP_FAILED and leaves nothing behind. */
  open(spec: PathSpec, log: Logger): Promise<PathCarrier>;
  /** At host start: removes what paths of a host that died left behind (from the durable records, which hold no secret). */
  removeLeftovers(records: readonly PathRecord[], log: Logger): Promise<void>;
  /** Stops the driver's own listeners (the host is stopping; open paths were closed first). */
  close(): Promise<void>;
}

/** The address a carrier's stream is at, for a Listener's `address`. */
export function virtualAddress(spec: PathSpec, port: number): TransportAddress {
  return { host: spec.localAddress, port };
}
