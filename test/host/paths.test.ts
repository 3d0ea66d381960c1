/**
 * The host's path registry over real portable drivers (two "hosts" in this process, real sockets on
 * 127.0.0.1) and real data directories: a pushed spec opens, a second push renews and never changes a
 * path, the record is on disk exactly while the path may have parts, expiry and removal close every
 * stream, a transport is given only for the right side, and a restarted host removes a crashed run's
 * records. Bounds and refusals carry their codes.
 */
import { after, afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PathDriver } from '../../src/dataplane/path/driver.js';
import { pathRecord } from '../../src/dataplane/path/spec.js';
import { HostPaths, MAX_LIVE_PATHS } from '../../src/host/paths.js';
import { HostStore } from '../../src/host/store.js';
import { silentLogger } from '../../src/lib/logger.js';
import { exchange, nextStream, pathSpecPair, twoPortableDrivers } from '../helpers/path-specs.js';

describe('host path registry (portable drivers, real data directories)', () => {
  let drivers: { a: PathDriver; b: PathDriver; close(): Promise<void> };
  const dirs: string[] = [];
  let clock = Date.now();
  const now = (): number => clock;
  const registry = async (driver: PathDriver, dir?: string): Promise<{ paths: HostPaths; store: HostStore; dir: string }> => {
    const dataDir = dir ?? await mkdtemp(join(tmpdir(), 'ferry-paths-'));
    if (dir === undefined) dirs.push(dataDir);
    const store = new HostStore(dataDir);
    await store.init();
    const paths = new HostPaths({ store, drivers: [driver], logger: silentLogger(), now });
    await paths.start();
    return { paths, store, dir: dataDir };
  };
  const specs = (o: { expiresAtMs?: number } = {}) => pathSpecPair({ sourceEndpoint: drivers.a.endpoint, targetEndpoint: drivers.b.endpoint, ...(o.expiresAtMs !== undefined ? { expiresAtMs: o.expiresAtMs } : {}) });

  // Each test's drivers are fresh: a registry closes its drivers when it closes (the host owns them through it).
  beforeEach(async () => { drivers = await twoPortableDrivers(); });
  afterEach(async () => { await drivers.close(); });
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('opens, carries, renews (never changes), removes; the record exists exactly while the path does', async () => {
    const src = await registry(drivers.a);
    const dst = await registry(drivers.b);
    const pair = specs();
    await dst.paths.put(pair.target);
    const view = await src.paths.put(pair.source);
    assert.deepEqual(await readdir(join(src.dir, 'paths')), [`${pair.source.pathId}.json`], 'noted before it was opened');
    assert.equal(JSON.stringify(view).includes(pair.source.secret), false, 'a view holds no secret');
    assert.equal(JSON.stringify(view).includes(String(drivers.b.endpoint.port)), false, 'nor the peer\'s endpoint');

    const listener = nextStream();
    await dst.paths.transport(pair.target.pathId, 'target').listen({ host: pair.target.localAddress, port: pair.target.firstPort }, listener.onStream);
    const stream = await src.paths.transport(pair.source.pathId, 'source').dial({ host: pair.source.peerAddress, port: pair.source.firstPort }, { timeoutMs: 5000 });
    const peer = await listener.stream;
    const [there, back] = await Promise.all([exchange(stream, 256 * 1024, 1024), exchange(peer, 1024, 256 * 1024)]);
    assert.equal(there.sentSha256, back.receivedSha256);

    const later = { ...pair.source, expiresAtMs: pair.source.expiresAtMs + 60_000 };
    assert.equal((await src.paths.put(later)).expiresAtMs, later.expiresAtMs, 'a second push with a later expiry renews');
    await assert.rejects(src.paths.put({ ...pair.source, firstPort: pair.source.firstPort + 1 }), { code: 'ALREADY_EXISTS' });
    assert.throws(() => src.paths.transport(pair.source.pathId, 'target'), { code: 'PATH_REFUSED' });

    const closed = new Promise<void>((resolve) => { stream.once('close', () => { resolve(); }); });
    assert.equal(await src.paths.remove(pair.source.pathId, 'test'), true);
    await closed;
    assert.equal(await src.paths.remove(pair.source.pathId, 'test'), false, 'removing twice is fine');
    assert.deepEqual(await readdir(join(src.dir, 'paths')), []);
    assert.throws(() => src.paths.transport(pair.source.pathId, 'source'), { code: 'NOT_FOUND' });
    await src.paths.close();
    await dst.paths.close();
  });

  it('refuses an expired spec, a driver it does not offer, and more than MAX_LIVE_PATHS; expiry removes a path by itself', async () => {
    const reg = await registry(drivers.a);
    await assert.rejects(reg.paths.put(specs({ expiresAtMs: clock - 1 }).source), { code: 'PATH_REFUSED' });
    await assert.rejects(reg.paths.put({ ...specs().source, driver: 'kernel' }), { code: 'PATH_SETUP_FAILED' });
    const opened: string[] = [];
    for (let i = 0; i < MAX_LIVE_PATHS; i++) { const s = specs().source; await reg.paths.put(s); opened.push(s.pathId); }
    await assert.rejects(reg.paths.put(specs().source), { code: 'BUSY' });
    for (const id of opened) await reg.paths.remove(id, 'test');

    const short = specs({ expiresAtMs: clock + 1000 }).source;
    await reg.paths.put(short);
    clock += 2000;
    await assert.rejects(reg.paths.transport(short.pathId, 'source').dial({ host: short.peerAddress, port: short.firstPort }, { timeoutMs: 1000 }), { code: 'PATH_REFUSED' });
    const deadline = Date.now() + 10_000;
    while (reg.paths.list().length > 0) {
      assert.ok(Date.now() < deadline, 'the sweep removed the expired path');
      await new Promise<void>((resolve) => { setImmediate(resolve); });
    }
    await reg.paths.close();
  });

  it('holds: the path goes when the last incoming migration holding it ends, not before', async () => {
    const reg = await registry(drivers.b);
    const spec = specs().target;
    await reg.paths.put(spec);
    const first = reg.paths.hold(spec.pathId, 'test');
    const second = reg.paths.hold(spec.pathId, 'test');
    first();
    first(); // twice: counted once
    assert.equal(reg.paths.list().length, 1, 'the second ticket still holds it');
    second();
    const deadline = Date.now() + 10_000;
    while (reg.paths.list().length > 0) {
      assert.ok(Date.now() < deadline, 'removed once the last holder let go');
      await new Promise<void>((resolve) => { setImmediate(resolve); });
    }
    assert.throws(() => reg.paths.hold(spec.pathId, 'test'), { code: 'NOT_FOUND' });
    await reg.paths.close();
  });

  it('a restarted host removes the records a crashed run left (and a malformed one)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-paths-crash-'));
    dirs.push(dir);
    const store = new HostStore(dir);
    await store.init();
    const left = specs().source;
    await store.writePathRecord(pathRecord(left));
    await writeFile(join(dir, 'paths', 'garbage.json'), '{"pathId": 3');
    const reg = await registry(drivers.a, dir);
    assert.deepEqual(await readdir(join(dir, 'paths')), [], 'both records are gone');
    assert.deepEqual(reg.paths.list(), []);
    await reg.paths.close();
  });
});
