/**
 * Virtual paths for tests. Specs: the matching pair the center would push to the two hosts of one
 * operation (same path id, secret, ports and VNI; each side's own and peer virtual addresses; each
 * side told the other's tunnel endpoint), from a fresh random secret unless one is given. Then two
 * portable drivers as two hosts in the test process, a path open on both, and bytes through a
 * stream checked by digest.
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import type { PathDriver } from '../../src/dataplane/path/driver.js';
import { createPortableDriver, type PortableDriverOptions } from '../../src/dataplane/path/portable-driver.js';
import { VirtualPath } from '../../src/dataplane/path/virtual-path.js';
import type { ByteStream } from '../../src/dataplane/transport.js';
import { silentLogger } from '../../src/lib/logger.js';
import { MAX_VNI, PATH_SECRET_BYTES, pathSpecSchema, type PathEndpoint, type PathSpec } from '../../src/dataplane/path/spec.js';

/** Virtual addresses from 100.64.0.0/10 (FINDINGS: the range tests use for virtual ones). */
export const SOURCE_VIRTUAL_ADDRESS = '100.64.0.1';
export const TARGET_VIRTUAL_ADDRESS = '100.64.0.2';
/** Paths in tests live this long unless a test says otherwise: far beyond any test's run. */
const TEST_PATH_TTL_MS = 60 * 60 * 1000;
const DEFAULT_FIRST_PORT = 7000;
const DEFAULT_PORT_COUNT = 4;
const LOOPBACK = '127.0.0.1';

export interface PathSpecPairOptions {
  /** Where each host's driver listens (its tunnel endpoint): each side's spec names the other's. */
  readonly sourceEndpoint: PathEndpoint;
  readonly targetEndpoint: PathEndpoint;
  readonly driver?: PathSpec['driver'];
  readonly pathId?: string;
  readonly secret?: string;
  readonly firstPort?: number;
  readonly portCount?: number;
  readonly expiresAtMs?: number;
}

export interface PathSpecPair {
  readonly source: PathSpec;
  readonly target: PathSpec;
}

export function randomPathId(): string {
  return randomBytes(16).toString('hex');
}

export function randomPathSecret(): string {
  return randomBytes(PATH_SECRET_BYTES).toString('base64url');
}

export function pathSpecPair(options: PathSpecPairOptions): PathSpecPair {
  const common = {
    pathId: options.pathId ?? randomPathId(),
    driver: options.driver ?? 'portable',
    secret: options.secret ?? randomPathSecret(),
    firstPort: options.firstPort ?? DEFAULT_FIRST_PORT,
    portCount: options.portCount ?? DEFAULT_PORT_COUNT,
    vni: randomInt(1, MAX_VNI + 1),
    expiresAtMs: options.expiresAtMs ?? Date.now() + TEST_PATH_TTL_MS,
  };
  return {
    source: pathSpecSchema.parse({
      ...common, side: 'source', localAddress: SOURCE_VIRTUAL_ADDRESS, peerAddress: TARGET_VIRTUAL_ADDRESS, peerEndpoint: options.targetEndpoint,
    }),
    target: pathSpecSchema.parse({
      ...common, side: 'target', localAddress: TARGET_VIRTUAL_ADDRESS, peerAddress: SOURCE_VIRTUAL_ADDRESS, peerEndpoint: options.sourceEndpoint,
    }),
  };
}

/** The same spec with another secret (what a party that does not know the path's secret would present). */
export function withSecret(spec: PathSpec, secret: string): PathSpec {
  return { ...spec, secret };
}

// ---------------------------------------------------------------------------------------------
// Two "hosts" in one test process: a portable driver each, and one operation's path open on both.

/** Two tunnel endpoints on loopback, as two hosts would run them. */
export async function twoPortableDrivers(options: Omit<PortableDriverOptions, 'listen'> = {}): Promise<{ a: PathDriver; b: PathDriver; close(): Promise<void> }> {
  const a = await createPortableDriver({ ...options, listen: { host: LOOPBACK, port: 0 } });
  const b = await createPortableDriver({ ...options, listen: { host: LOOPBACK, port: 0 } }).catch(async (err: unknown) => { await a.close(); throw err; });
  return { a, b, close: async () => { await Promise.all([a.close(), b.close()]); } };
}

export interface OpenPathPair {
  readonly specs: PathSpecPair;
  /** The source's end (on driver `a`) and the target's (on driver `b`). */
  readonly source: VirtualPath;
  readonly target: VirtualPath;
  close(): Promise<void>;
}

/** One operation's path: the source end opened on `a`, the target end on `b`, each told the other's endpoint. */
export async function openPathPair(a: PathDriver, b: PathDriver, options: Partial<PathSpecPairOptions> = {}, now?: () => number): Promise<OpenPathPair> {
  const specs = pathSpecPair({ sourceEndpoint: a.endpoint, targetEndpoint: b.endpoint, ...options });
  const source = new VirtualPath(specs.source, await a.open(specs.source, silentLogger()), now);
  const target = new VirtualPath(specs.target, await b.open(specs.target, silentLogger()), now);
  return { specs, source, target, close: async () => { await Promise.all([source.close(), target.close()]); } };
}

// ---------------------------------------------------------------------------------------------
// Bytes through a stream, checked by digest.

export interface Exchanged {
  readonly sentSha256: string;
  readonly receivedSha256: string;
}

/**
 * Writes `sendBytes` random bytes while reading `receiveBytes` from the other direction, then ends.
 * Counted, not delimited by the end: sockets here are not half-open (an end ends both directions,
 * as with plain TCP sockets of tcp.ts).
 */
export async function exchange(stream: ByteStream, sendBytes: number, receiveBytes: number): Promise<Exchanged> {
  const received = receiveCount(stream, receiveBytes);
  const sentSha256 = await sendRandom(stream, sendBytes, false);
  const receivedSha256 = await received;
  return { sentSha256, receivedSha256 };
}

/** The digest of exactly the next `bytes` bytes; rejects if the stream errors, ends or closes first or sends more. */
export function receiveCount(stream: ByteStream, bytes: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let got = 0;
    const onData = (chunk: Buffer): void => {
      got += chunk.length;
      hash.update(chunk);
      if (got > bytes) finish(new Error(`received ${got} bytes, expected ${bytes}`));
      else if (got === bytes) finish(null);
    };
    const onEnd = (): void => { finish(new Error(`stream ended after ${got} of ${bytes} bytes`)); };
    const finish = (err: Error | null): void => {
      stream.off('data', onData).off('error', finish).off('end', onEnd).off('close', onEnd);
      if (err === null) resolve(hash.digest('hex')); else reject(err);
    };
    stream.on('data', onData).once('error', finish).once('end', onEnd).once('close', onEnd);
    if (bytes === 0) finish(null);
  });
}

const SEND_CHUNK_BYTES = 64 * 1024;

/** Writes `bytes` random bytes (and ends the stream when `end`); their digest. */
export async function sendRandom(stream: ByteStream, bytes: number, end = true): Promise<string> {
  const hash = createHash('sha256');
  for (let sent = 0; sent < bytes; sent += SEND_CHUNK_BYTES) {
    const chunk = randomBytes(Math.min(SEND_CHUNK_BYTES, bytes - sent));
    hash.update(chunk);
    if (!stream.write(chunk)) await drained(stream);
  }
  if (end) stream.end();
  return hash.digest('hex');
}

/** Resolves on 'drain'; rejects if the stream errors or closes first (a destroyed stream never drains). */
export function drained(stream: ByteStream): Promise<void> {
  if (stream.destroyed) return Promise.reject(new Error('stream destroyed while writing'));
  return new Promise((resolve, reject) => {
    const onDrain = (): void => { off(); resolve(); };
    const onClose = (): void => { off(); reject(new Error('stream closed while writing')); };
    const onError = (err: Error): void => { off(); reject(err); };
    const off = (): void => { stream.off('drain', onDrain).off('close', onClose).off('error', onError); };
    stream.on('drain', onDrain).on('close', onClose).on('error', onError);
  });
}

/**
 * Resolves when the socket closes, whatever error came before (a peer that destroys it may reset it).
 * Reads (and drops) what comes: a paused socket never reads the peer's FIN, so it would never close.
 */
export function closed(stream: ByteStream): Promise<void> {
  stream.on('error', () => undefined);
  stream.resume();
  if (stream.destroyed && stream.closed) return Promise.resolve();
  return new Promise((resolve) => { stream.once('close', () => { resolve(); }); }); // not events.once: it rejects on 'error'
}

/** Everything until the stream's end; rejects if it errors or closes first. */
export function receiveAll(stream: ByteStream): Promise<{ sha256: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    stream.on('data', (chunk: Buffer) => { hash.update(chunk); bytes += chunk.length; });
    stream.once('end', () => { resolve({ sha256: hash.digest('hex'), bytes }); });
    stream.once('error', reject);
    stream.once('close', () => { reject(new Error(`stream closed after ${bytes} bytes without an end`)); });
  });
}

/** The next stream a listener gets. */
export function nextStream(): { onStream: (s: ByteStream) => void; stream: Promise<ByteStream> } {
  let onStream: (s: ByteStream) => void = () => undefined;
  const stream = new Promise<ByteStream>((resolve) => { onStream = resolve; });
  return { onStream, stream };
}
