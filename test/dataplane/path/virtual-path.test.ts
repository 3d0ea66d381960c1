/**
 * VirtualPath over the portable driver (two drivers on loopback as two hosts): the operation may
 * listen only on its own virtual address and dial only the peer's, on the granted ports, while the
 * path is open and not expired; everything else is PATH_REFUSED, and the peer's physical endpoint —
 * which the operation never learns — is refused without being echoed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { PathDriver } from '../../../src/dataplane/path/driver.js';
import { FerryError } from '../../../src/lib/errors.js';
import {
  SOURCE_VIRTUAL_ADDRESS, TARGET_VIRTUAL_ADDRESS, closed, exchange, nextStream, openPathPair, twoPortableDrivers, type OpenPathPair,
} from '../../helpers/path-specs.js';

const DIAL = { timeoutMs: 5_000 };

describe('virtual path', () => {
  let hosts: { a: PathDriver; b: PathDriver; close(): Promise<void> };
  before(async () => { hosts = await twoPortableDrivers(); });
  after(async () => { await hosts.close(); });

  async function withPair(body: (pair: OpenPathPair) => Promise<void>, now?: () => number): Promise<void> {
    const pair = await openPathPair(hosts.a, hosts.b, {}, now);
    try { await body(pair); } finally { await pair.close(); }
  }

  it('carries bytes between the two virtual addresses, and its view shows no secret or endpoint', async () => {
    await withPair(async (pair) => {
      const port = pair.specs.target.firstPort;
      const next = nextStream();
      const listener = await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, next.onStream);
      assert.deepEqual(listener.address, { host: TARGET_VIRTUAL_ADDRESS, port });
      const dialled = await pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL);
      const accepted = await next.stream;
      const [there, back] = await Promise.all([exchange(dialled, 1 << 20, 1 << 19), exchange(accepted, 1 << 19, 1 << 20)]);
      assert.equal(back.receivedSha256, there.sentSha256);
      assert.equal(there.receivedSha256, back.sentSha256);
      const view = pair.source.view();
      assert.equal(view.openStreams, 1);
      const text = JSON.stringify(view);
      assert.ok(!text.includes(pair.specs.source.secret) && !text.includes(String(hosts.b.endpoint.port)) && !text.includes('127.0.0.1'), text);
      dialled.destroy();
      await closed(accepted);
    });
  });

  it('refuses to dial the peer\'s physical endpoint, or any address but the peer\'s virtual one, without echoing it', async () => {
    await withPair(async (pair) => {
      const port = pair.specs.target.firstPort;
      await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, () => { assert.fail('no stream may arrive'); });
      for (const host of [hosts.b.endpoint.host, SOURCE_VIRTUAL_ADDRESS, '100.64.0.3', 'localhost']) {
        const err = await pair.source.dial({ host, port }, DIAL).then(() => null, (e: unknown) => e);
        assert.ok(err instanceof FerryError && err.code === 'PATH_REFUSED', `dial ${host}`);
        assert.ok(!err.message.includes(host), err.message);
      }
      const physical = await pair.source.dial(hosts.b.endpoint, DIAL).then(() => null, (e: unknown) => e);
      assert.ok(physical instanceof FerryError && physical.code === 'PATH_REFUSED');
      assert.ok(!`${physical.message}${JSON.stringify(physical.details)}`.includes('127.0.0.1'));
    });
  });

  it('refuses to listen on any address but its own virtual one', async () => {
    await withPair(async (pair) => {
      const port = pair.specs.target.firstPort;
      for (const host of [SOURCE_VIRTUAL_ADDRESS, '127.0.0.1', '0.0.0.0']) {
        await assert.rejects(pair.target.listen({ host, port }, () => undefined), { code: 'PATH_REFUSED' });
      }
    });
  });

  it('refuses ports outside its grant, both ways', async () => {
    await withPair(async (pair) => {
      const { firstPort, portCount } = pair.specs.target;
      for (const port of [firstPort - 1, firstPort + portCount, 0, 65536, 1.5, -1]) {
        await assert.rejects(pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL), { code: 'PATH_REFUSED' }, `dial ${port}`);
        await assert.rejects(pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, () => undefined), { code: 'PATH_REFUSED' }, `listen ${port}`);
      }
    });
  });

  it('after close: refuses everything, and the streams it had are closed', async () => {
    await withPair(async (pair) => {
      const port = pair.specs.target.firstPort;
      const next = nextStream();
      await pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, next.onStream);
      const dialled = await pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL);
      const accepted = await next.stream;
      const ended = Promise.all([closed(dialled), closed(accepted)]);
      await pair.source.close();
      await ended;
      assert.equal(pair.source.closed, true);
      assert.equal(pair.source.view().openStreams, 0);
      await assert.rejects(pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL), { code: 'PATH_REFUSED' });
      await assert.rejects(pair.source.listen({ host: SOURCE_VIRTUAL_ADDRESS, port }, () => undefined), { code: 'PATH_REFUSED' });
    });
  });

  it('after expiry: refuses to dial and to listen (the clock is injected)', async () => {
    let nowMs = Date.now();
    await withPair(async (pair) => {
      const port = pair.specs.target.firstPort;
      nowMs = pair.specs.source.expiresAtMs;
      assert.equal(pair.source.expired(), true);
      await assert.rejects(pair.source.dial({ host: TARGET_VIRTUAL_ADDRESS, port }, DIAL), { code: 'PATH_REFUSED' });
      await assert.rejects(pair.target.listen({ host: TARGET_VIRTUAL_ADDRESS, port }, () => undefined), { code: 'PATH_REFUSED' });
    }, () => nowMs);
  });
});
