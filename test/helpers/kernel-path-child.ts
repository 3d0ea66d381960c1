/**
 * A child process that drives the kernel path driver inside one network namespace
 * (test/dataplane/path/kernel-driver.test.ts starts it with `ip netns exec`): the driver runs `ip`
 * in its own namespace, so it has to run there. argv[2] is this host's underlay address. It reads
 * one JSON request per line on stdin ({ id, op, … }) and answers one JSON line on stdout
 * ({ id, ok: true, … } or { id, ok: false, code, message }); it prints { ready: true } first.
 *
 * The carrier is used as the host does, through a VirtualPath. Listeners echo every byte back; a
 * dialler sends `bytes` random bytes and checks the echo.
 */
import { randomBytes } from 'node:crypto';
import { connect as netConnect, createServer as netCreateServer, type Server } from 'node:net';
import { createInterface } from 'node:readline';
import { connect as tlsConnect } from 'node:tls';
import { errnoCode, errorMessage, isFerryError } from '../../src/lib/errors.js';
import { silentLogger } from '../../src/lib/logger.js';
import { createKernelDriver, kernelDriverSupport, sweepPathLinks } from '../../src/dataplane/path/kernel-driver.js';
import { pskClientOptions } from '../../src/dataplane/path/psk.js';
import type { PathSpec } from '../../src/dataplane/path/spec.js';
import { VirtualPath } from '../../src/dataplane/path/virtual-path.js';
import type { ByteStream } from '../../src/dataplane/transport.js';

/** A dial or raw connect the test asks for gives up after this long. */
const CHILD_DIAL_TIMEOUT_MS = 5_000;

export type ChildRequest =
  | { id: number; op: 'support' }
  | { id: number; op: 'open'; spec: PathSpec }
  | { id: number; op: 'listen'; port: number }
  | { id: number; op: 'dial'; port: number; bytes: number; hold?: string; timeoutMs?: number; abort?: boolean }
  | { id: number; op: 'echo'; hold: string; bytes: number }
  | { id: number; op: 'dial-secret'; port: number; secret: string }
  | { id: number; op: 'connect'; host: string; port: number; fromVirtual: boolean }
  | { id: number; op: 'listen-plain'; port: number }
  | { id: number; op: 'close' }
  | { id: number; op: 'remove-leftovers'; spec: PathSpec }
  | { id: number; op: 'sweep'; specs: PathSpec[]; all: boolean };

const log = silentLogger();
const driver = createKernelDriver({ underlayAddress: process.argv[2] ?? '' });
let spec: PathSpec | null = null;
let path: VirtualPath | null = null;
const held = new Map<string, ByteStream>();
const servers: Server[] = [];

function opened(): { spec: PathSpec; path: VirtualPath } {
  if (spec === null || path === null) throw new Error('no path is open');
  return { spec, path };
}

/** Writes `bytes` random bytes and resolves true when the same bytes came back. */
function roundTrip(stream: ByteStream, bytes: number): Promise<boolean> {
  const sent = randomBytes(bytes);
  const chunks: Buffer[] = [];
  let got = 0;
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      got += chunk.length;
      if (got < bytes) return;
      stream.off('data', onData);
      stream.off('error', reject);
      resolve(Buffer.concat(chunks).equals(sent));
    };
    stream.on('data', onData);
    stream.once('error', reject);
    stream.write(sent);
  });
}

function echo(stream: ByteStream): void {
  stream.on('error', () => { stream.destroy(); });
  stream.pipe(stream);
}

/** A plain TCP connect (from the virtual address or not): resolves with 'connected' or the errno code. */
function plainConnect(host: string, port: number, fromVirtual: boolean): Promise<string> {
  return new Promise((resolve) => {
    const socket = netConnect({ host, port, ...(fromVirtual ? { localAddress: opened().spec.localAddress } : {}) });
    const timer = setTimeout(() => { socket.destroy(); resolve('timeout'); }, CHILD_DIAL_TIMEOUT_MS);
    socket.once('connect', () => { clearTimeout(timer); socket.destroy(); resolve('connected'); });
    socket.once('error', (err) => { clearTimeout(timer); resolve(errnoCode(err) ?? errorMessage(err)); });
  });
}

/** A TLS dial like the driver's, with another secret: resolves with 'connected' or why it failed. */
function dialWithSecret(port: number, secret: string): Promise<string> {
  const s = opened().spec;
  return new Promise((resolve) => {
    const tcp = netConnect({ host: s.peerAddress, port, localAddress: s.localAddress });
    const socket = tlsConnect({ socket: tcp, ...pskClientOptions({ ...s, secret }) });
    const done = (what: string): void => { socket.destroy(); tcp.destroy(); resolve(what); };
    socket.once('secureConnect', () => { done('connected'); });
    socket.once('error', (err) => { done(errnoCode(err) ?? errorMessage(err)); });
    tcp.once('error', (err) => { done(errnoCode(err) ?? errorMessage(err)); });
  });
}

async function handle(req: ChildRequest): Promise<Record<string, unknown>> {
  switch (req.op) {
    case 'support': return { ...await kernelDriverSupport() };
    case 'open':
      spec = req.spec;
      path = new VirtualPath(req.spec, await driver.open(req.spec, log));
      return {};
    case 'listen':
      await opened().path.listen({ host: opened().spec.localAddress, port: req.port }, echo);
      return {};
    case 'dial': {
      const ac = new AbortController();
      const dialling = opened().path.dial({ host: opened().spec.peerAddress, port: req.port }, { timeoutMs: req.timeoutMs ?? CHILD_DIAL_TIMEOUT_MS, signal: ac.signal });
      if (req.abort === true) ac.abort();
      const stream = await dialling;
      const same = await roundTrip(stream, req.bytes);
      if (req.hold !== undefined) held.set(req.hold, stream); else stream.destroy();
      return { same };
    }
    case 'echo': {
      const stream = held.get(req.hold);
      if (stream === undefined) throw new Error(`no held stream ${req.hold}`);
      return { same: await roundTrip(stream, req.bytes) };
    }
    case 'dial-secret': return { result: await dialWithSecret(req.port, req.secret) };
    case 'connect': return { result: await plainConnect(req.host, req.port, req.fromVirtual) };
    case 'listen-plain': {
      const server = netCreateServer((s) => { s.destroy(); });
      await new Promise<void>((resolve) => { server.listen(req.port, '0.0.0.0', resolve); });
      servers.push(server);
      return {};
    }
    case 'close':
      await opened().path.close();
      await opened().path.close(); // idempotent: a second close does nothing and does not throw
      return {};
    case 'remove-leftovers':
      await driver.removeLeftovers([req.spec], log);
      return {};
    case 'sweep': return { ...await sweepPathLinks(req.specs, { all: req.all }) };
  }
}

function answer(line: string): void {
  const req = JSON.parse(line) as ChildRequest;
  handle(req).then(
    (result) => { process.stdout.write(`${JSON.stringify({ id: req.id, ok: true, ...result })}\n`); },
    (err: unknown) => {
      process.stdout.write(`${JSON.stringify({ id: req.id, ok: false, code: isFerryError(err) ? err.code : 'ERROR', message: errorMessage(err) })}\n`);
    },
  );
}

createInterface({ input: process.stdin }).on('line', answer).on('close', () => { process.exit(0); });
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
