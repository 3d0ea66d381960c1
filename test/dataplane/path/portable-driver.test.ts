/**
 * The portable path driver between two "hosts" in this process (two drivers on 127.0.0.1, port 0):
 * bytes both ways through one path, what the tunnel endpoint refuses (wrong key, closed path,
 * hostile clients, tampered and replayed records), the dial's error codes, and the driver's bounds.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect as netConnect, type AddressInfo, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import type { PathCarrier, PathDriver } from '../../../src/dataplane/path/driver.js';
import {
  MAX_PENDING_STREAMS, MAX_PORTABLE_PATHS, STREAM_HEADER_BYTES, createPortableDriver, decodeStreamHeader, encodeStreamHeader,
} from '../../../src/dataplane/path/portable-driver.js';
import { pskClientOptions } from '../../../src/dataplane/path/psk.js';
import type { PathEndpoint, PathSpec } from '../../../src/dataplane/path/spec.js';
import type { ByteStream } from '../../../src/dataplane/transport.js';
import { FerryError } from '../../../src/lib/errors.js';
import { silentLogger } from '../../../src/lib/logger.js';
import {
  TARGET_VIRTUAL_ADDRESS, closed, exchange, nextStream, openPathPair, pathSpecPair, randomPathSecret, receiveAll, sendRandom,
  twoPortableDrivers, withSecret, type OpenPathPair,
} from '../../helpers/path-specs.js';

const MiB = 1024 * 1024;
const DIAL = { timeoutMs: 5_000 };
/** Short enough for a test to wait for, long enough for a loaded machine's handshake. */
const SHORT_TIMEOUT_MS = 400;

/** The peer's physical address must not be in a message or a detail of what the operation sees. */
function assertNoEndpoint(err: unknown, endpoint: PathEndpoint): void {
  assert.ok(err instanceof FerryError, `expected a FerryError, got ${String(err)}`);
  const text = `${err.message} ${JSON.stringify(err.details)}`;
  assert.ok(!text.includes(endpoint.host) && !text.includes(String(endpoint.port)), `the error names the peer's endpoint: ${text}`);
}

async function rejectsWith(promise: Promise<unknown>, code: string, endpoint: PathEndpoint): Promise<void> {
  const err = await promise.then(() => null, (e: unknown) => e);
  assert.ok(err instanceof FerryError && err.code === code, `expected ${code}, got ${err instanceof Error ? `${(err as FerryError).code}: ${err.message}` : 'success'}`);
  assertNoEndpoint(err, endpoint);
}

/** A listener on the target's first port, and a stream dialled to it from the source: both ends. */
async function connectedPair(pair: OpenPathPair, port = pair.specs.target.firstPort): Promise<{ dialled: ByteStream; accepted: ByteStream }> {
  const next = nextStream();
  await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, next.onStream);
  const dialled = await pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL);
  return { dialled, accepted: await next.stream };
}

/** Both directions at once; each side's received digest is the other's sent one. */
async function assertExchange(x: ByteStream, y: ByteStream, xBytes: number, yBytes: number): Promise<void> {
  const [fromX, fromY] = await Promise.all([exchange(x, xBytes, yBytes), exchange(y, yBytes, xBytes)]);
  x.destroy();
  y.destroy();
  assert.equal(fromY.receivedSha256, fromX.sentSha256);
  assert.equal(fromX.receivedSha256, fromY.sentSha256);
}

/** A TLS session to `endpoint` presenting `spec`'s identity and key, up to secureConnect (or its failure). */
function rawTlsClient(endpoint: PathEndpoint, spec: PathSpec): TLSSocket {
  return tlsConnect({ host: endpoint.host, port: endpoint.port, ...pskClientOptions(spec) });
}

function secured(socket: TLSSocket): Promise<void> {
  return new Promise((resolve, reject) => { socket.once('secureConnect', resolve).once('error', reject); });
}

/** A TCP server that accepts and never says a word (a tunnel endpoint that hangs). */
async function silentServer(): Promise<{ endpoint: PathEndpoint; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => { sockets.add(s); s.on('error', () => undefined); });
  await listening(server);
  return {
    endpoint: { host: '127.0.0.1', port: (server.address() as AddressInfo).port },
    close: () => { for (const s of sockets) s.destroy(); return new Promise((resolve) => { server.close(() => { resolve(); }); }); },
  };
}

function listening(server: Server): Promise<void> {
  return new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
}

/**
 * A TCP proxy in front of a tunnel endpoint that records what each client sends and, on the
 * connection `tamperConnection`, flips one bit of the byte at `tamperAtByte` (client to server).
 */
async function proxy(to: PathEndpoint, tamper: { connection: number; atByte: number } | null): Promise<{ endpoint: PathEndpoint; sent: Buffer[][]; close(): Promise<void> }> {
  const sent: Buffer[][] = [];
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const index = sent.length;
    const record: Buffer[] = [];
    sent.push(record);
    const upstream = netConnect(to.port, to.host);
    for (const s of [client, upstream]) { sockets.add(s); s.on('error', () => undefined); s.once('close', () => { client.destroy(); upstream.destroy(); }); }
    let at = 0;
    client.on('data', (chunk: Buffer) => {
      const out = Buffer.from(chunk);
      const offset = tamper !== null && tamper.connection === index ? tamper.atByte - at : -1;
      if (offset >= 0 && offset < out.length) out[offset] = (out[offset] ?? 0) ^ 0x01;
      at += chunk.length;
      record.push(Buffer.from(chunk));
      upstream.write(out);
    });
    upstream.pipe(client);
  });
  await listening(server);
  return {
    endpoint: { host: '127.0.0.1', port: (server.address() as AddressInfo).port },
    sent,
    close: () => { for (const s of sockets) s.destroy(); return new Promise((resolve) => { server.close(() => { resolve(); }); }); },
  };
}

describe('portable path driver: streams', () => {
  let hosts: { a: PathDriver; b: PathDriver; close(): Promise<void> };
  before(async () => { hosts = await twoPortableDrivers(); });
  after(async () => { await hosts.close(); });

  it('listens on the configured host, port 0 taking a free port', () => {
    assert.equal(hosts.a.endpoint.host, '127.0.0.1');
    assert.ok(hosts.a.endpoint.port > 0 && hosts.a.endpoint.port !== hosts.b.endpoint.port);
    assert.equal(hosts.a.kind, 'portable');
  });

  it('carries 1 MiB+ both ways intact (digests match)', async () => {
    const pair = await openPathPair(hosts.a, hosts.b);
    try {
      const { dialled, accepted } = await connectedPair(pair);
      await assertExchange(dialled, accepted, 3 * MiB / 2, 5 * MiB / 4);
    } finally { await pair.close(); }
  });

  it('carries two streams of one path at once', async () => {
    const pair = await openPathPair(hosts.a, hosts.b);
    try {
      const first = await connectedPair(pair, pair.specs.target.firstPort);
      const second = await connectedPair(pair, pair.specs.target.firstPort + 1);
      assert.equal(pair.source.view().openStreams, 2);
      await Promise.all([assertExchange(first.dialled, first.accepted, 2 * MiB, MiB), assertExchange(second.dialled, second.accepted, MiB, 2 * MiB)]);
    } finally { await pair.close(); }
  });

  it('loses no byte that arrives in the same TLS record as the header', async () => {
    const pair = await openPathPair(hosts.a, hosts.b);
    try {
      const port = pair.specs.target.firstPort;
      const next = nextStream();
      await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, next.onStream);
      const client = rawTlsClient(hosts.b.endpoint, pair.specs.source);
      await secured(client);
      const payload = Buffer.from('operation bytes right behind the header');
      client.end(Buffer.concat([encodeStreamHeader(port), payload])); // one write: one record
      const received = await receiveAll(await next.stream);
      const { createHash } = await import('node:crypto');
      assert.equal(received.bytes, payload.length);
      assert.equal(received.sha256, createHash('sha256').update(payload).digest('hex'));
    } finally { await pair.close(); }
  });

  it('carries a path whose two ends are on the same host', async () => {
    const specs = pathSpecPair({ sourceEndpoint: hosts.a.endpoint, targetEndpoint: hosts.a.endpoint });
    const source = await hosts.a.open(specs.source, silentLogger());
    const target = await hosts.a.open(specs.target, silentLogger());
    try {
      const next = nextStream();
      await target.listen(specs.target.firstPort, next.onStream);
      const dialled = await source.dial(specs.target.firstPort, DIAL);
      await assertExchange(dialled, await next.stream, MiB, MiB);
    } finally { await Promise.all([source.close(), target.close()]); }
  });

  it('refuses a wrong secret, and the open stream of the right path is unharmed', async () => {
    const pair = await openPathPair(hosts.a, hosts.b);
    const impostorHost = await createPortableDriver({ listen: { host: '127.0.0.1', port: 0 } });
    try {
      const { dialled, accepted } = await connectedPair(pair);
      const impostor = await impostorHost.open(withSecret(pair.specs.source, randomPathSecret()), silentLogger());
      await rejectsWith(impostor.dial(pair.specs.target.firstPort, DIAL), 'PATH_REFUSED', hosts.b.endpoint);
      await assertExchange(dialled, accepted, MiB, MiB);
    } finally { await Promise.all([pair.close(), impostorHost.close()]); }
  });

  it('refuses a dial that reaches the dialler\'s own side (a reflected connection)', async () => {
    const pair = await openPathPair(hosts.a, hosts.b, { targetEndpoint: hosts.a.endpoint });
    try {
      await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port: pair.specs.target.firstPort }, () => { assert.fail('no stream may arrive'); });
      await rejectsWith(pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port: pair.specs.target.firstPort }, DIAL), 'PATH_REFUSED', hosts.a.endpoint);
    } finally { await pair.close(); }
  });

  it('after close() of one side, the old secret opens nothing and no listener remains', async () => {
    const pair = await openPathPair(hosts.a, hosts.b);
    const port = pair.specs.target.firstPort;
    let oldListenerStreams = 0;
    await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, (s) => { oldListenerStreams++; s.destroy(); });
    const before = await pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL);
    await closed(before);
    assert.equal(oldListenerStreams, 1);
    await pair.target.close();
    try {
      await rejectsWith(pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL), 'PATH_REFUSED', hosts.b.endpoint);
      const raw = rawTlsClient(hosts.b.endpoint, pair.specs.source);
      await assert.rejects(secured(raw));
      // The same path opened again on the target (same id and secret) has no listener: the old one is gone.
      const reopened = await hosts.b.open(pair.specs.target, silentLogger());
      try {
        const dialled = await pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL);
        await closed(dialled);
        assert.equal(oldListenerStreams, 1);
      } finally { await reopened.close(); }
    } finally { await pair.close(); }
  });

  it('a session ticket from an earlier stream does not resume once the path is closed', async () => {
    const pair = await openPathPair(hosts.a, hosts.b);
    const first = rawTlsClient(hosts.b.endpoint, pair.specs.source);
    const ticket = new Promise<Buffer>((resolve) => { first.once('session', resolve); });
    await secured(first);
    const session = await ticket;
    first.destroy();
    await pair.close();
    const resumed = tlsConnect({ host: hosts.b.endpoint.host, port: hosts.b.endpoint.port, ...pskClientOptions(pair.specs.source), session });
    await assert.rejects(secured(resumed));
    resumed.destroy();
  });

  it('the carrier refuses ports it does not grant, a second listener on a port, and anything after close', async () => {
    const specs = pathSpecPair({ sourceEndpoint: hosts.a.endpoint, targetEndpoint: hosts.b.endpoint });
    const carrier = await hosts.b.open(specs.target, silentLogger());
    await assert.rejects(carrier.listen(specs.target.firstPort - 1, () => undefined), { code: 'PATH_REFUSED' });
    await assert.rejects(carrier.dial(specs.target.firstPort + specs.target.portCount, DIAL), { code: 'PATH_REFUSED' });
    await carrier.listen(specs.target.firstPort, () => undefined);
    await assert.rejects(carrier.listen(specs.target.firstPort, () => undefined), { code: 'ALREADY_EXISTS' });
    await carrier.close();
    await carrier.close(); // idempotent
    await assert.rejects(carrier.listen(specs.target.firstPort + 1, () => undefined), { code: 'PATH_REFUSED' });
    await assert.rejects(carrier.dial(specs.target.firstPort, DIAL), { code: 'PATH_REFUSED' });
  });
});

describe('portable path driver: a tampered or replayed stream', () => {
  let hosts: { a: PathDriver; b: PathDriver; close(): Promise<void> };
  before(async () => { hosts = await twoPortableDrivers({ handshakeTimeoutMs: SHORT_TIMEOUT_MS, headerTimeoutMs: SHORT_TIMEOUT_MS }); });
  after(async () => { await hosts.close(); });

  it('a record with one flipped bit fails its stream; a second stream of the path is unharmed', async () => {
    const tamperer = await proxy(hosts.b.endpoint, { connection: 0, atByte: 256 * 1024 });
    const pair = await openPathPair(hosts.a, hosts.b, { targetEndpoint: tamperer.endpoint });
    try {
      const hit = await connectedPair(pair, pair.specs.target.firstPort);
      const spared = await connectedPair(pair, pair.specs.target.firstPort + 1);
      const hitClosed = closed(hit.dialled); // the dialler's side ends too (with the peer's bad_record_mac alert)
      const hitReceived = receiveAll(hit.accepted);
      const hitSent = sendRandom(hit.dialled, 2 * MiB);
      await assert.rejects(hitReceived, (err: Error) => /decrypt|bad record mac/i.test(err.message));
      await Promise.all([hitSent.catch(() => undefined), hitClosed]);
      await assertExchange(spared.dialled, spared.accepted, 2 * MiB, MiB);
    } finally { await Promise.all([pair.close(), tamperer.close()]); }
  });

  it('a recorded handshake replayed on a new connection is refused', async () => {
    const recorder = await proxy(hosts.b.endpoint, null);
    const pair = await openPathPair(hosts.a, hosts.b, { targetEndpoint: recorder.endpoint });
    try {
      let accepted = 0;
      const next = nextStream();
      await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port: pair.specs.target.firstPort }, (s) => { accepted++; next.onStream(s); });
      const dialled = await pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port: pair.specs.target.firstPort }, DIAL);
      await assertExchange(dialled, await next.stream, 64 * 1024, 64 * 1024);
      const flight = Buffer.concat(recorder.sent[0] ?? []);
      assert.ok(flight.length > STREAM_HEADER_BYTES);
      const replay = netConnect(hosts.b.endpoint.port, hosts.b.endpoint.host);
      replay.end(flight);
      await closed(replay);
      assert.equal(accepted, 1, 'the replay was routed to the listener');
    } finally { await Promise.all([pair.close(), recorder.close()]); }
  });
});

describe('portable path driver: hostile clients', () => {
  let hosts: { a: PathDriver; b: PathDriver; close(): Promise<void> };
  let pair: OpenPathPair;
  let accepted = 0;
  before(async () => {
    hosts = await twoPortableDrivers({ handshakeTimeoutMs: SHORT_TIMEOUT_MS, headerTimeoutMs: SHORT_TIMEOUT_MS });
    pair = await openPathPair(hosts.a, hosts.b);
    await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port: pair.specs.target.firstPort }, (s) => { accepted++; s.destroy(); });
  });
  after(async () => { await pair.close(); await hosts.close(); });

  /** After each hostile client: the endpoint still carries the path. */
  async function assertUnharmed(): Promise<void> {
    const port = pair.specs.target.firstPort + 1;
    const next = nextStream();
    const listener = await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, next.onStream);
    try {
      const dialled = await pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL);
      await assertExchange(dialled, await next.stream, 64 * 1024, 64 * 1024);
    } finally { await listener.close(); }
  }

  /** A TLS session of the right path that sends `bytes` and then waits: the endpoint must close it. */
  async function sessionSending(bytes: Buffer): Promise<void> {
    const client = rawTlsClient(hosts.b.endpoint, pair.specs.source);
    await secured(client);
    client.write(bytes);
    await closed(client);
  }

  it('raw TCP garbage is dropped', async () => {
    const garbage = netConnect(hosts.b.endpoint.port, hosts.b.endpoint.host);
    garbage.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await closed(garbage);
    await assertUnharmed();
  });

  it('a TLS client with an unknown identity fails the handshake', async () => {
    for (const identity of ['nobody', `ferry-path-1:${'0'.repeat(32)}:source`]) {
      const client = tlsConnect({ ...pskClientOptions(pair.specs.source), host: hosts.b.endpoint.host, port: hosts.b.endpoint.port, pskCallback: () => ({ psk: Buffer.alloc(32), identity }) });
      await assert.rejects(secured(client));
      client.destroy();
    }
    await assertUnharmed();
  });

  it('a TLS client presenting the target\'s own side is refused (only the peer side is answered)', async () => {
    const client = rawTlsClient(hosts.b.endpoint, pair.specs.target);
    await assert.rejects(secured(client));
    client.destroy();
  });

  it('a valid session with a bad header, an unknown port or a port without a listener is closed', async () => {
    const good = encodeStreamHeader(pair.specs.target.firstPort);
    const badMagic = Buffer.from(good); badMagic[0] = 0x47;
    const badVersion = Buffer.from(good); badVersion[4] = 2;
    const badReserved = Buffer.from(good); badReserved[5] = 1;
    for (const header of [badMagic, badVersion, badReserved, encodeStreamHeader(pair.specs.target.firstPort + 2), encodeStreamHeader(80), encodeStreamHeader(pair.specs.target.firstPort + pair.specs.target.portCount)]) {
      await sessionSending(header);
    }
    assert.equal(accepted, 0);
    await assertUnharmed();
  });

  it('a session whose header is slow is closed after the header timeout', async () => {
    const t0 = performance.now();
    await sessionSending(encodeStreamHeader(pair.specs.target.firstPort).subarray(0, 3));
    assert.ok(performance.now() - t0 >= SHORT_TIMEOUT_MS * 0.9);
    assert.equal(accepted, 0);
    await assertUnharmed();
  });

  it('a connection that never starts its handshake is closed after the handshake timeout', async () => {
    const t0 = performance.now();
    const silent = netConnect(hosts.b.endpoint.port, hosts.b.endpoint.host);
    await closed(silent);
    assert.ok(performance.now() - t0 >= SHORT_TIMEOUT_MS * 0.9);
    await assertUnharmed();
  });
});

describe('portable path driver: dial errors and bounds', () => {
  it('an endpoint nobody listens on: HOST_UNREACHABLE, without the address', async () => {
    const gone = await silentServer();
    await gone.close();
    const driver = await createPortableDriver({ listen: { host: '127.0.0.1', port: 0 } });
    try {
      const specs = pathSpecPair({ sourceEndpoint: driver.endpoint, targetEndpoint: gone.endpoint });
      const carrier = await driver.open(specs.source, silentLogger());
      await rejectsWith(carrier.dial(specs.source.firstPort, DIAL), 'HOST_UNREACHABLE', gone.endpoint);
    } finally { await driver.close(); }
  });

  /** A source end whose peer's endpoint accepts TCP and never answers the handshake. */
  async function withHangingPeer(body: (carrier: PathCarrier, port: number, hang: PathEndpoint) => Promise<void>): Promise<void> {
    const hang = await silentServer();
    const driver = await createPortableDriver({ listen: { host: '127.0.0.1', port: 0 } });
    try {
      const specs = pathSpecPair({ sourceEndpoint: driver.endpoint, targetEndpoint: hang.endpoint });
      await body(await driver.open(specs.source, silentLogger()), specs.source.firstPort, hang.endpoint);
    } finally { await Promise.all([driver.close(), hang.close()]); }
  }

  it('an endpoint that never answers: CONNECT_TIMEOUT; an abort: CANCELLED (with the abort reason when it is a FerryError)', async () => {
    await withHangingPeer(async (carrier, port, hang) => {
      await rejectsWith(carrier.dial(port, { timeoutMs: 150 }), 'CONNECT_TIMEOUT', hang);
      const ac = new AbortController();
      const dialling = carrier.dial(port, { timeoutMs: 10_000, signal: ac.signal });
      ac.abort();
      await rejectsWith(dialling, 'CANCELLED', hang);
      await rejectsWith(carrier.dial(port, { timeoutMs: 10_000, signal: AbortSignal.abort() }), 'CANCELLED', hang);
      const reason = new FerryError('MIGRATION_CANCELLED', 'cancelled by the operator');
      await assert.rejects(carrier.dial(port, { timeoutMs: 10_000, signal: AbortSignal.abort(reason) }), { code: 'MIGRATION_CANCELLED' });
    });
  });

  it('a dial in flight when its path closes is refused', async () => {
    await withHangingPeer(async (carrier, port, hang) => {
      const dialling = carrier.dial(port, { timeoutMs: 10_000 });
      await carrier.close();
      await rejectsWith(dialling, 'PATH_REFUSED', hang);
    });
  });

  it(`holds at most ${MAX_PORTABLE_PATHS} paths; refuses a second open of one side, another driver's spec, and opens after close`, async () => {
    const driver = await createPortableDriver({ listen: { host: '127.0.0.1', port: 0 } });
    const carriers = [];
    try {
      const first = pathSpecPair({ sourceEndpoint: driver.endpoint, targetEndpoint: driver.endpoint });
      carriers.push(await driver.open(first.source, silentLogger()));
      await assert.rejects(driver.open(first.source, silentLogger()), { code: 'PATH_SETUP_FAILED' });
      await assert.rejects(driver.open({ ...first.target, driver: 'kernel' }, silentLogger()), { code: 'PATH_SETUP_FAILED' });
      while (carriers.length < MAX_PORTABLE_PATHS) {
        carriers.push(await driver.open(pathSpecPair({ sourceEndpoint: driver.endpoint, targetEndpoint: driver.endpoint }).source, silentLogger()));
      }
      const oneMore = pathSpecPair({ sourceEndpoint: driver.endpoint, targetEndpoint: driver.endpoint }).source;
      await assert.rejects(driver.open(oneMore, silentLogger()), { code: 'PATH_SETUP_FAILED' });
      await carriers.pop()?.close();
      carriers.push(await driver.open(oneMore, silentLogger()));
      await driver.close();
      await assert.rejects(driver.open(first.target, silentLogger()), { code: 'PATH_SETUP_FAILED' });
      const refused = netConnect(driver.endpoint.port, driver.endpoint.host);
      await closed(refused);
    } finally {
      await Promise.all(carriers.map((c) => c.close()));
      await driver.close();
    }
  });

  it(`accepts at most ${MAX_PENDING_STREAMS} connections before their handshake; the next ones are dropped at once`, async () => {
    const hosts = await twoPortableDrivers();
    const pair = await openPathPair(hosts.a, hosts.b);
    const flood: Socket[] = [];
    try {
      for (let i = 0; i < MAX_PENDING_STREAMS; i++) {
        const s = netConnect(hosts.b.endpoint.port, hosts.b.endpoint.host);
        s.on('error', () => undefined);
        flood.push(s);
        await new Promise((resolve) => s.once('connect', resolve));
      }
      const dropped = netConnect(hosts.b.endpoint.port, hosts.b.endpoint.host);
      await closed(dropped);
      assert.ok(flood.every((s) => !s.destroyed), 'a pending connection was dropped instead of the one over the bound');
      await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port: pair.specs.target.firstPort }, () => undefined);
      await rejectsWith(pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port: pair.specs.target.firstPort }, DIAL), 'PATH_REFUSED', hosts.b.endpoint);
    } finally {
      for (const s of flood) s.destroy();
      await pair.close();
      await hosts.close();
    }
  });

  it('an expired path\'s key answers no handshake (the driver\'s clock is injected)', async () => {
    let nowMs = Date.now();
    const hosts = await twoPortableDrivers({ now: () => nowMs });
    const specs = pathSpecPair({ sourceEndpoint: hosts.a.endpoint, targetEndpoint: hosts.b.endpoint });
    const target = await hosts.b.open(specs.target, silentLogger());
    try {
      await target.listen(specs.target.firstPort, (s) => { s.destroy(); });
      const live = rawTlsClient(hosts.b.endpoint, specs.source);
      await secured(live);
      live.destroy();
      nowMs = specs.target.expiresAtMs;
      const late = rawTlsClient(hosts.b.endpoint, specs.source);
      await assert.rejects(secured(late));
      late.destroy();
    } finally { await target.close(); await hosts.close(); }
  });

  it('removeLeftovers has nothing to remove', async () => {
    const driver = await createPortableDriver({ listen: { host: '127.0.0.1', port: 0 } });
    try {
      const specs = pathSpecPair({ sourceEndpoint: driver.endpoint, targetEndpoint: driver.endpoint });
      await driver.removeLeftovers([specs.source, specs.target], silentLogger());
    } finally { await driver.close(); }
  });

  it('a taken port fails the driver\'s start with the address and a hint', async () => {
    const driver = await createPortableDriver({ listen: { host: '127.0.0.1', port: 0 } });
    try {
      await assert.rejects(createPortableDriver({ listen: driver.endpoint }), (err: FerryError) => err.code === 'INVALID_ARGUMENT' && /EADDRINUSE/.test(err.message));
    } finally { await driver.close(); }
  });
});

describe('stream header', () => {
  it('round-trips every port and refuses anything else', () => {
    for (const port of [0, 1, 1024, 7000, 65535]) assert.equal(decodeStreamHeader(encodeStreamHeader(port)), port);
    const good = encodeStreamHeader(7000);
    assert.equal(good.length, STREAM_HEADER_BYTES);
    assert.deepEqual([...good.subarray(0, 6)], [0x46, 0x52, 0x59, 0x50, 1, 0]);
    assert.equal(decodeStreamHeader(good.subarray(0, 7)), null);
    assert.equal(decodeStreamHeader(Buffer.concat([good, Buffer.from([0])])), null);
    assert.equal(decodeStreamHeader(Buffer.alloc(STREAM_HEADER_BYTES)), null);
  });
});
