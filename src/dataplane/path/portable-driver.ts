/**
 * The `portable` path driver: no privileges, nothing made in the kernel. Each host runs one TLS 1.3
 * PSK server, its *tunnel endpoint*; every stream of every path is one TLS connection from the
 * dialling host to the peer host's endpoint. The PSK identity names the path and the dialler's side
 * (psk.ts), the key proves that the dialler knows the path's secret, and a small header sent first
 * inside the TLS session names the destination port on the peer's virtual address:
 *
 *   offset 0  4 bytes  magic "FRYP" (0x46 0x52 0x59 0x50)
 *   offset 4  1 byte   version, 1
 *   offset 5  1 byte   reserved, 0 (anything else is refused: room for a later version, not a free byte)
 *   offset 6  2 bytes  destination port, unsigned big-endian
 *
 * After those 8 bytes the stream is the operation's. The accepting side hands the TLSSocket itself to
 * the listener the path registered for that port (so there is no copy in the data path: TLS is the
 * only layer), or destroys it: unknown identity or wrong key (the handshake fails), a closed or
 * expired path, a bad header, a port without a listener, a handshake or header that takes too long.
 * There is no reply to the header: a dial resolves once TLS is up, and a stream to a port without a
 * listener is closed by the peer right after, as a TCP reset would be.
 *
 * The peer's endpoint is its physical (underlay) address: no error message or log line here names it;
 * they say "the peer's tunnel endpoint" and the path's short id.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { FerryError, errnoCode } from '../../lib/errors.js';
import { silentLogger, type Logger } from '../../lib/logger.js';
import { listenError, tuneSocket } from '../tcp.js';
import { formatAddress, type ByteStream, type DialOptions } from '../transport.js';
import type { PathCarrier, PathDriver } from './driver.js';
import { otherSide, pathKey, pskClientOptions, pskServerOptions } from './psk.js';
import { shortPathId, pathGrantsPort, pathSpecSchema, type PathEndpoint, type PathSpec } from './spec.js';

/** "FRYP": the first 4 bytes of every stream header (a stray client speaking something else is told apart at once). */
export const STREAM_HEADER_MAGIC = 0x4652_5950;
export const STREAM_HEADER_VERSION = 1;
export const STREAM_HEADER_BYTES = 8;
/** Paths open on one driver at once, at most (each is one operation; a host runs a handful). */
export const MAX_PORTABLE_PATHS = 256;
/** Connections accepted and not yet routed (in their handshake or before their header), at most: a flood cannot pile up sockets. */
export const MAX_PENDING_STREAMS = 64;
/** A TLS handshake takes ~3 ms on loopback (FINDINGS); a client that has not finished it by then is stuck or hostile. */
export const HANDSHAKE_TIMEOUT_MS = 5_000;
/** After the handshake, the dialler sends its header at once; a session without one by then is closed. */
export const STREAM_HEADER_TIMEOUT_MS = 5_000;

/** What the peer's physical address is called in messages, which never show it. */
const PEER_ENDPOINT = "the peer's tunnel endpoint";

export function encodeStreamHeader(port: number): Buffer {
  const header = Buffer.alloc(STREAM_HEADER_BYTES);
  header.writeUInt32BE(STREAM_HEADER_MAGIC, 0);
  header.writeUInt8(STREAM_HEADER_VERSION, 4);
  header.writeUInt16BE(port, 6);
  return header;
}

/** The destination port a header names, or null for anything that is not a version-1 header. */
export function decodeStreamHeader(header: Buffer): number | null {
  if (header.length !== STREAM_HEADER_BYTES || header.readUInt32BE(0) !== STREAM_HEADER_MAGIC) return null;
  if (header.readUInt8(4) !== STREAM_HEADER_VERSION || header.readUInt8(5) !== 0) return null;
  return header.readUInt16BE(6);
}

export interface PortableDriverOptions {
  /** Where the tunnel endpoint listens; port 0 takes a free one (`endpoint` says which). */
  readonly listen: { readonly host: string; readonly port: number };
  /** The driver's own lines (refused connections, at debug: a flood must not flood the log). */
  readonly log?: Logger;
  /** Wall clock for path expiry (tests inject one). */
  readonly now?: () => number;
  readonly handshakeTimeoutMs?: number;
  readonly headerTimeoutMs?: number;
}

export async function createPortableDriver(options: PortableDriverOptions): Promise<PathDriver> {
  const driver = new PortableDriver(options);
  await driver.start();
  return driver;
}

/** One open path's part on this driver: its key (while it is registered), its listeners and its streams. */
class PortablePath implements PathCarrier {
  readonly key: Buffer;
  private readonly listeners = new Map<number, (stream: ByteStream) => void>();
  /** Dialled (also while connecting) and accepted streams: close() ends the ones still open. */
  private readonly streams = new Set<TLSSocket>();
  private closed = false;

  constructor(readonly spec: PathSpec, private readonly log: Logger, private readonly now: () => number, private readonly unregister: (path: PortablePath) => void) {
    this.key = pathKey(spec);
  }

  get short(): string { return shortPathId(this.spec.pathId); }

  /** Open and not expired: only then does its key answer a handshake. */
  live(): boolean { return !this.closed && this.now() < this.spec.expiresAtMs; }

  listenerFor(port: number): ((stream: ByteStream) => void) | undefined { return this.listeners.get(port); }

  /**
   * Tracks a stream of the path, and ends it on its first error as a TCP socket's error would: Node
   * emits a TLS error (a record that does not decrypt, the peer's alert) without destroying the
   * socket (measured: neither end closed), and a stream's owner waits for 'close'.
   */
  adopt(socket: TLSSocket): void {
    this.streams.add(socket);
    socket.once('close', () => { this.streams.delete(socket); });
    socket.on('error', () => { socket.destroy(); });
  }

  async dial(port: number, options: DialOptions): Promise<ByteStream> {
    this.checkUsable(port);
    const socket = tlsConnect({ host: this.spec.peerEndpoint.host, port: this.spec.peerEndpoint.port, ...pskClientOptions(this.spec) });
    this.adopt(socket);
    try {
      await whenSecure(socket, options, `${PEER_ENDPOINT} for path ${this.short}`, this.spec.pathId);
    } catch (err) {
      if (this.closed) throw this.refusal('it was closed while the stream was being set up');
      this.log.debug('virtual path stream not set up', { pathId: this.spec.pathId, port, code: err instanceof FerryError ? err.code : 'INTERNAL' });
      throw err;
    }
    if (this.closed) { socket.destroy(); throw this.refusal('it was closed while the stream was being set up'); }
    tuneSocket(socket);
    socket.write(encodeStreamHeader(port));
    return socket;
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- async: a refusal is a rejection, as the contract's callers await it
  async listen(port: number, onStream: (stream: ByteStream) => void): Promise<{ close(): Promise<void> }> {
    this.checkUsable(port);
    if (this.listeners.has(port)) throw new FerryError('ALREADY_EXISTS', `virtual path ${this.short} already has a listener on port ${port}`, { pathId: this.spec.pathId, port });
    this.listeners.set(port, onStream);
    const close = (): Promise<void> => {
      if (this.listeners.get(port) === onStream) this.listeners.delete(port);
      return Promise.resolve();
    };
    return { close };
  }

  /** Withdraws the key first (a new handshake fails from here on), then ends the listeners and streams. */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    this.unregister(this);
    this.listeners.clear();
    for (const s of this.streams) s.destroy();
    this.streams.clear();
    this.log.debug('virtual path carrier closed', { pathId: this.spec.pathId });
    return Promise.resolve();
  }

  private checkUsable(port: number): void {
    if (this.closed) throw this.refusal('it is closed');
    if (!this.live()) throw this.refusal('it has expired');
    if (!pathGrantsPort(this.spec, port)) throw this.refusal(`port ${port} is not one of its ports`);
  }

  private refusal(why: string): FerryError {
    return new FerryError('PATH_REFUSED', `virtual path ${this.short} refused: ${why}`, { pathId: this.spec.pathId });
  }
}

/**
 * Resolves once the TLS session is up. Failures before the TCP connection stands are the network's
 * (HOST_UNREACHABLE); after it, the peer's endpoint turned the path down (PATH_REFUSED: a key it does
 * not know, a path it does not have, or it is full). Only errno / OpenSSL codes reach the message:
 * Node's own connect messages carry the address.
 */
function whenSecure(socket: TLSSocket, options: DialOptions, where: string, pathId: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let tcpUp = false;
    const fail = (err: FerryError): void => { cleanup(); socket.destroy(); reject(err); };
    const failure = (cause: Error | null): FerryError => {
      const errno = cause === null ? 'closed' : (errnoCode(cause) ?? 'error');
      return tcpUp
        ? new FerryError('PATH_REFUSED', `${where} refused the stream (${errno})`, { pathId, errno })
        : new FerryError('HOST_UNREACHABLE', `cannot reach ${where} (${errno})`, { pathId, errno });
    };
    const timer = setTimeout(() => { fail(new FerryError('CONNECT_TIMEOUT', `connecting to ${where} timed out after ${options.timeoutMs} ms`, { pathId })); }, options.timeoutMs);
    const onAbort = (): void => {
      const reason: unknown = options.signal?.reason;
      fail(reason instanceof FerryError ? reason : new FerryError('CANCELLED', `connecting to ${where} was cancelled`, { pathId }));
    };
    const onConnect = (): void => { tcpUp = true; };
    const onError = (err: Error): void => { fail(failure(err)); };
    const onClose = (): void => { fail(failure(null)); };
    const onSecure = (): void => { cleanup(); resolve(); };
    const cleanup = (): void => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect).off('error', onError).off('close', onClose).off('secureConnect', onSecure);
    };
    socket.once('connect', onConnect).once('error', onError).once('close', onClose).once('secureConnect', onSecure);
    if (options.signal?.aborted === true) onAbort();
    else options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A connection whose handshake named a live path, until it is routed to a listener or closed. */
interface Unrouted {
  readonly path: PortablePath;
  /** The header's deadline, from the end of the handshake. */
  timer: NodeJS.Timeout | null;
}

/**
 * TCP is accepted by a net.Server of ours (so the bound on pending connections is checked before a
 * TLSSocket exists) and each connection is handed to a tls.Server that never listens itself
 * ('connection' may be emitted by users to inject streams: Node's documented way). The tls.Server
 * is needed rather than a bare `new TLSSocket(raw, { isServer })`: only a server-owned socket
 * releases its error handling after the handshake — measured on Node 20, a standalone server
 * TLSSocket whose record fails to decrypt just closes, with no 'error' for the stream's owner.
 */
class PortableDriver implements PathDriver {
  readonly kind = 'portable' as const;
  private endpointValue: PathEndpoint | null = null;
  /** Open paths by `pathId:side`: both ends of one path may be on this host (a migration between two of its slots). */
  private readonly paths = new Map<string, PortablePath>();
  /** Every accepted TCP connection still open, routed or not. */
  private readonly connections = new Set<Socket>();
  /** Connections routed to a listener and still open: pending ones are the others. */
  private routedOpen = 0;
  private readonly unrouted = new Map<TLSSocket, Unrouted>();
  private readonly server: Server;
  private readonly tlsServer: TlsServer;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly headerTimeoutMs: number;
  private closing: Promise<void> | null = null;

  constructor(private readonly options: PortableDriverOptions) {
    this.log = options.log ?? silentLogger();
    this.now = options.now ?? Date.now;
    this.headerTimeoutMs = options.headerTimeoutMs ?? STREAM_HEADER_TIMEOUT_MS;
    // No certificate: Node 20 takes a TLS server without key/cert when PSK is used (measured); a
    // handshake that finds no PSK then fails for want of a signature algorithm — the refusal we want.
    this.tlsServer = createTlsServer({
      ...pskServerOptions((pathId, peerSide, socket) => this.keyFor(pathId, peerSide, socket)),
      handshakeTimeout: options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS,
    });
    this.tlsServer.on('secureConnection', (socket: TLSSocket) => { this.onSecure(socket); });
    this.tlsServer.on('tlsClientError', (err: Error, socket: TLSSocket) => { socket.destroy(); this.refused(`handshake failed (${errnoCode(err) ?? 'error'})`, null); });
    this.server = createServer((raw) => { this.accept(raw); });
  }

  get endpoint(): PathEndpoint {
    if (this.endpointValue === null) throw new FerryError('INTERNAL', 'the portable driver has not started');
    return this.endpointValue;
  }

  async start(): Promise<void> {
    const { host, port } = this.options.listen;
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', (err) => { reject(listenError(err, formatAddress({ host, port }))); });
      this.server.listen(port, host, () => { this.server.removeAllListeners('error'); resolve(); });
    });
    this.server.on('error', (err) => { this.log.error('tunnel endpoint server error', { errno: errnoCode(err) ?? 'error' }); });
    this.endpointValue = { host, port: (this.server.address() as AddressInfo).port };
  }

  open(spec: PathSpec, log: Logger): Promise<PathCarrier> {
    const pathLog = log.child({ component: 'path-portable' });
    const key = `${spec.pathId}:${spec.side}`;
    const why = this.closing !== null ? 'the driver is closed'
      : spec.driver !== 'portable' ? `its driver is ${spec.driver}`
      : !pathSpecSchema.safeParse(spec).success ? 'its spec is not valid'
      : this.paths.has(key) ? 'it is already open on this host'
      : this.paths.size >= MAX_PORTABLE_PATHS ? `${MAX_PORTABLE_PATHS} paths are open already`
      : null;
    if (why !== null) return Promise.reject(new FerryError('PATH_SETUP_FAILED', `virtual path ${shortPathId(spec.pathId)} cannot be set up: ${why}`, { pathId: spec.pathId }));
    const path = new PortablePath(spec, pathLog, this.now, (p) => { this.unregister(key, p); });
    this.paths.set(key, path);
    pathLog.debug('virtual path registered on the tunnel endpoint', { pathId: spec.pathId, side: spec.side });
    return Promise.resolve(path);
  }

  /** Nothing to remove: a portable path is keys and listeners in this process's memory, gone with the process that died. */
  removeLeftovers(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.allSettled([...this.paths.values()].map((p) => p.close()));
      for (const raw of this.connections) raw.destroy();
      await new Promise<void>((resolve) => { this.server.close(() => { resolve(); }); });
    })();
    return this.closing;
  }

  private unregister(key: string, path: PortablePath): void {
    if (this.paths.get(key) === path) this.paths.delete(key);
    // Handshakes and headers in flight for the path end with it: none may be routed after close().
    for (const [socket, u] of this.unrouted) if (u.path === path) socket.destroy();
  }

  /** The pskCallback: a dialler presenting `peerSide` of `pathId` gets a key only if this host holds the other side, live. */
  private keyFor(pathId: string, peerSide: PathSpec['side'], socket: TLSSocket): Buffer | null {
    const path = this.paths.get(`${pathId}:${otherSide(peerSide)}`);
    if (path === undefined || !path.live()) return null;
    if (!this.unrouted.has(socket)) socket.once('close', () => { this.forget(socket); });
    this.unrouted.set(socket, { path, timer: null });
    return path.key;
  }

  private forget(socket: TLSSocket): void {
    const u = this.unrouted.get(socket);
    if (u?.timer != null) clearTimeout(u.timer);
    this.unrouted.delete(socket);
  }

  private accept(raw: Socket): void {
    const pending = this.connections.size - this.routedOpen;
    if (this.closing !== null || pending >= MAX_PENDING_STREAMS) {
      raw.destroy();
      this.refused(this.closing !== null ? 'closing' : `${MAX_PENDING_STREAMS} connections pending`, null);
      return;
    }
    tuneSocket(raw);
    this.connections.add(raw);
    raw.once('close', () => { this.connections.delete(raw); });
    this.tlsServer.emit('connection', raw);
  }

  private onSecure(socket: TLSSocket): void {
    const u = this.unrouted.get(socket);
    if (u === undefined) { socket.destroy(); this.refused('no path', null); return; } // a key was answered for no path: cannot happen
    const onError = (err: Error): void => { this.refuse(socket, u, `tls error (${errnoCode(err) ?? 'error'})`); };
    socket.on('error', onError);
    u.timer = setTimeout(() => { this.refuse(socket, u, 'header timeout'); }, this.headerTimeoutMs);
    readHeader(socket, (header) => { this.route(socket, u, header, onError); });
  }

  private route(socket: TLSSocket, u: Unrouted, header: Buffer, onError: (err: Error) => void): void {
    const port = decodeStreamHeader(header);
    if (port === null) { this.refuse(socket, u, 'bad header'); return; }
    if (!u.path.live()) { this.refuse(socket, u, 'path not open'); return; }
    const onStream = pathGrantsPort(u.path.spec, port) ? u.path.listenerFor(port) : undefined;
    if (onStream === undefined) { this.refuse(socket, u, `no listener on port ${port}`); return; }
    this.forget(socket);
    this.routedOpen++;
    socket.once('close', () => { this.routedOpen--; });
    socket.off('error', onError); // from here the stream and its errors are the listener's
    u.path.adopt(socket);
    onStream(socket);
  }

  private refuse(socket: TLSSocket, u: Unrouted, reason: string): void {
    socket.destroy();
    this.refused(reason, u.path);
  }

  private refused(reason: string, path: PortablePath | null): void {
    this.log.debug('tunnel endpoint stream refused', { reason, pathId: path?.spec.pathId ?? null });
  }
}

/**
 * Calls `then` with exactly the header's bytes: read(n) takes n bytes off the buffer and leaves the
 * rest (operation bytes that came in the same record or chunk) for the stream's owner. At the end of
 * the stream it returns what is left, shorter than a header, which decodes as a bad one.
 */
function readHeader(socket: TLSSocket, then: (header: Buffer) => void): void {
  const tryRead = (): void => {
    const chunk: unknown = socket.read(STREAM_HEADER_BYTES);
    if (!Buffer.isBuffer(chunk)) return;
    socket.off('readable', tryRead);
    then(chunk);
  };
  socket.on('readable', tryRead);
}
