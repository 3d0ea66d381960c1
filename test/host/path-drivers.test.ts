/** Which path drivers a host opens at start, and what it refuses before it listens. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { openPathDrivers } from '../../src/host/path-drivers.js';

describe('a host\'s path drivers at start', () => {
  it('opens the portable driver by default, on the listen address, any port', async () => {
    const drivers = await openPathDrivers({}, '127.0.0.1');
    try {
      assert.deepEqual(drivers.map((d) => d.kind), ['portable']);
      assert.equal(drivers[0]?.endpoint.host, '127.0.0.1');
      assert.ok((drivers[0]?.endpoint.port ?? 0) > 0, 'a real port');
    } finally {
      await Promise.all(drivers.map((d) => d.close()));
    }
  });

  it('offers none with an empty list; refuses a driver named twice and a wildcard tunnel address', async () => {
    assert.deepEqual(await openPathDrivers({ kinds: [] }, '0.0.0.0'), [], 'no drivers: the wildcard does not matter');
    await assert.rejects(openPathDrivers({ kinds: ['portable', 'portable'] }, '127.0.0.1'), { code: 'INVALID_ARGUMENT' });
    for (const wildcard of ['0.0.0.0', '::']) {
      await assert.rejects(openPathDrivers({}, wildcard), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /--tunnel-listen/.test(err.message));
    }
    await assert.rejects(openPathDrivers({ kinds: ['kernel'] }, 'localhost'), { code: 'INVALID_ARGUMENT' }, 'the kernel driver needs an IPv4 underlay address');
    const given = await openPathDrivers({ tunnelHost: '127.0.0.1' }, '0.0.0.0');
    assert.equal(given[0]?.endpoint.host, '127.0.0.1', '--tunnel-listen names the address peers reach');
    await Promise.all(given.map((d) => d.close()));
  });
});
