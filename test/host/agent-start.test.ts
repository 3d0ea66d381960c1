/** A host that cannot bind its addresses says which and why, with a code, and leaves nothing behind. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostAgent } from '../../src/host/agent.js';

const TOKEN = 'agent-start-token-0123456789abcdef';

async function occupied(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve); });
  return { server, port: (server.address() as AddressInfo).port };
}

describe('host start-up', () => {
  it('a control port in use: INVALID_ARGUMENT naming the address and EADDRINUSE; the migration port it had bound is free again', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-start-'));
    const busy = await occupied();
    const free = await occupied();
    const migrationPort = free.port;
    await new Promise<void>((resolve) => { free.server.close(() => { resolve(); }); });
    try {
      const opts = { name: 'x', dataDir, listenHost: '127.0.0.1', token: TOKEN, migrationPort, log: (): void => undefined };
      await assert.rejects(HostAgent.start({ ...opts, listenPort: busy.port }), (err: unknown) => {
        const e = err as { code?: string; details?: { errno?: string; address?: string } };
        assert.equal(e.code, 'INVALID_ARGUMENT');
        assert.equal(e.details?.errno, 'EADDRINUSE');
        assert.equal(e.details?.address, `127.0.0.1:${busy.port}`);
        return true;
      });
      // The failed host closed its migration endpoint: a new one binds the same port.
      const ok = await HostAgent.start({ ...opts, listenPort: 0 });
      assert.equal(ok.migrationPort, migrationPort);
      await ok.close();
      await assert.rejects(HostAgent.start({ ...opts, listenPort: 0, migrationPort: busy.port }), { code: 'INVALID_ARGUMENT' });
    } finally {
      await new Promise<void>((resolve) => { busy.server.close(() => { resolve(); }); });
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
