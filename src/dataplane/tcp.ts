/** Plain TCP as a Transport: Nagle off (requests are latency-bound at the switch-over), keep-alive on. */
import { connect, createServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { FerryError, errnoCode, errorMessage } from '../lib/errors.js';
import { formatAddress, type ByteStream, type DialOptions, type Listener, type Transport, type TransportAddress } from './transport.js';

/** Keep-alive probes start after this much silence: a vanished peer is noticed within minutes, not hours. */
export const TCP_KEEPALIVE_DELAY_MS = 10_000;

/** Every mobility byte stream's socket options (plain TCP here, the TCP under a path's TLS in ./path/). */
export function tuneSocket(socket: Socket): void {
  socket.setNoDelay(true);
  // Node exposes no SO_SNDBUF/SO_RCVBUF setter; the high-water mark bounds what is queued in user space.
  socket.setKeepAlive(true, TCP_KEEPALIVE_DELAY_MS);
}

function dial(to: TransportAddress, options: DialOptions): Promise<ByteStream> {
  return new Promise((resolve, reject) => {
    const where = formatAddress(to);
    const socket = connect({ host: to.host, port: to.port, noDelay: true });
    const fail = (err: FerryError): void => { cleanup(); socket.destroy(); reject(err); };
    const timer = setTimeout(() => { fail(new FerryError('CONNECT_TIMEOUT', `connecting to ${where} timed out after ${options.timeoutMs} ms`)); }, options.timeoutMs);
    const onAbort = (): void => {
      const reason: unknown = options.signal?.reason;
      fail(reason instanceof FerryError ? reason : new FerryError('CANCELLED', `connecting to ${where} was cancelled`));
    };
    const onError = (err: Error): void => { fail(new FerryError('HOST_UNREACHABLE', `cannot connect to ${where}: ${errorMessage(err)}`)); };
    const cleanup = (): void => { clearTimeout(timer); options.signal?.removeEventListener('abort', onAbort); socket.off('error', onError); };
    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('error', onError);
    socket.once('connect', () => { cleanup(); tuneSocket(socket); resolve(socket); });
  });
}

/** A failed bind as an operator reads it: the address, the reason, what to do. */
export function listenError(err: unknown, where: string): FerryError {
  const code = errnoCode(err);
  const hint = code === 'EADDRINUSE' ? 'another process uses it; pick another port, or 0 for any free one'
    : code === 'EADDRNOTAVAIL' ? 'no interface of this machine has that address'
    : code === 'EACCES' ? 'ports below 1024 need privileges' : errorMessage(err);
  return new FerryError('INVALID_ARGUMENT', `cannot listen on ${where} (${code ?? 'error'}): ${hint}`, { address: where, errno: code ?? null });
}

async function listen(at: TransportAddress, onStream: (stream: ByteStream) => void): Promise<Listener> {
  const server = createServer((socket) => { tuneSocket(socket); onStream(socket); });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => { reject(listenError(err, formatAddress(at))); });
    server.listen(at.port, at.host, () => { server.removeAllListeners('error'); resolve(); });
  });
  const bound = server.address() as AddressInfo;
  return {
    address: { host: at.host, port: bound.port },
    close: () => new Promise<void>((resolve) => { server.close(() => { resolve(); }); }),
  };
}

export const tcpTransport: Transport = { kind: 'tcp', dial, listen };
