/**
 * In-process centers for tests: a real Center on 127.0.0.1 port 0 (real sockets, a real store: SQLite
 * in a fresh data directory, or a PostgreSQL URL), short heartbeat and sweep intervals, the admin's
 * CenterClient; and waiting on the center's own event stream instead of sleeping.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Center, type CenterOptions } from '../../src/center/center.js';
import { CenterClient } from '../../src/api/center-client.js';
import type { CenterEvent } from '../../src/api/center-v1.js';

/** Short enough that a disconnect lands in well under a second, long enough for a loaded 2-core machine. */
export const TEST_HEARTBEAT_MS = 150;
export const TEST_SWEEP_MS = 50;
export const TEST_MISSED_HEARTBEATS = 3;

export interface TestCenter {
  readonly center: Center;
  readonly url: string;
  readonly admin: CenterClient;
  readonly dataDir: string;
  close(): Promise<void>;
}

export async function startTestCenter(opts: Partial<Omit<CenterOptions, 'listenHost'>> = {}): Promise<TestCenter> {
  const owned = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? await mkdtemp(join(tmpdir(), 'ferry-center-'));
  const center = await Center.start({
    heartbeatIntervalMs: TEST_HEARTBEAT_MS, sweepIntervalMs: TEST_SWEEP_MS, missedHeartbeats: TEST_MISSED_HEARTBEATS, eventPollMs: 100, log: () => {},
    ...opts, dataDir, listenHost: '127.0.0.1', listenPort: opts.listenPort ?? 0,
  });
  return {
    center, url: center.url, admin: new CenterClient(center.url, center.adminToken), dataDir,
    close: async () => { try { await center.close(); } finally { if (owned) await rm(dataDir, { recursive: true, force: true }); } },
  };
}

/** Follows the center's events after `afterId` until one matches; fails after `timeoutMs`. */
export async function waitForEvent(client: CenterClient, afterId: number, match: (e: CenterEvent) => boolean, timeoutMs = 15_000): Promise<CenterEvent> {
  const ac = new AbortController();
  const timer = setTimeout(() => { ac.abort(); }, timeoutMs);
  try {
    for await (const e of client.events(afterId, ac.signal)) if (match(e)) return e;
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  throw new Error(`no matching center event after id ${afterId} within ${timeoutMs} ms`);
}

/** Every event after `afterId` up to and including `lastId`, read from the stream. */
export async function collectEvents(client: CenterClient, afterId: number, lastId: number, timeoutMs = 15_000): Promise<CenterEvent[]> {
  const seen: CenterEvent[] = [];
  if (lastId <= afterId) return seen;
  await waitForEvent(client, afterId, (e) => { seen.push(e); return e.id >= lastId; }, timeoutMs);
  return seen;
}
