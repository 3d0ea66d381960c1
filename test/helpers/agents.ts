/**
 * In-process host agents for API tests: a real HostAgent on 127.0.0.1 port 0 (real sockets), a
 * fresh data directory, the real HostClient (for an agent serving HTTPS, a client trusting its
 * center's CA is the test's to make). `close` stops the agent and removes its directory.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostAgent, type HostOptions } from '../../src/host/agent.js';
import { HostClient } from '../../src/api/host-client.js';
import type { DatastoreMount } from '../../src/host/datastores.js';
import type { Logger } from '../../src/lib/logger.js';

export const AGENT_TOKEN = 'agent-test-token-0123456789abcdef';

export interface TestAgent {
  readonly agent: HostAgent;
  readonly client: HostClient;
  readonly dataDir: string;
  close(): Promise<void>;
}

/** With `dataDir` the caller owns the directory (a restart reuses it) and close() leaves it. */
export async function startAgent(name: string, opts: { memoryLimitBytes?: number; datastores?: readonly DatastoreMount[]; dataDir?: string; center?: HostOptions['center']; logger?: Logger; tls?: boolean } = {}): Promise<TestAgent> {
  const owned = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? await mkdtemp(join(tmpdir(), `ferry-agent-${name}-`));
  let agent: HostAgent;
  try {
    agent = await HostAgent.start({
      name, dataDir, listenHost: '127.0.0.1', listenPort: 0, token: AGENT_TOKEN, ...(opts.logger !== undefined ? { logger: opts.logger } : { log: () => {} }),
      ...(opts.memoryLimitBytes !== undefined ? { memoryLimitBytes: opts.memoryLimitBytes } : {}),
      ...(opts.datastores !== undefined ? { datastores: opts.datastores } : {}),
      ...(opts.center !== undefined ? { center: opts.center } : {}),
      ...(opts.tls === true ? { tls: true } : {}),
    });
  } catch (err) {
    if (owned) await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    agent, client: new HostClient(agent.url, AGENT_TOKEN), dataDir,
    close: async () => {
      try { await agent.close(); } finally { if (owned) await rm(dataDir, { recursive: true, force: true }); }
    },
  };
}
