/**
 * Events reach the clients of every center: two real centers (in-process, each its own store, HTTP
 * server and data directory) on one real PostgreSQL, with the streams' fallback poll set to a minute, so
 * that only LISTEN/NOTIFY can deliver within the test's bounds. An event caused through center A reaches
 * an SSE client of center B; after the listening connections are killed (pg_terminate_backend) the
 * centers reconnect, an event committed meanwhile is delivered (the resync after reconnecting), and
 * notifications flow again. Every wait is on an event stream, bounded; none is a sleep.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { CenterClient } from '../../src/api/center-client.js';
import { createCsr, generateKeyPair } from '../../src/lib/x509.js';
import { EVENTS_LISTEN_APPLICATION_NAME } from '../../src/center/store/pg-listen.js';
import { startTestCenter, type TestCenter } from '../helpers/center.js';
import { startPostgres, type PostgresCluster } from '../helpers/postgres.js';

/** Far beyond DELIVERY_BOUND_MS: an event that arrives in time came by NOTIFY, not by the poll. */
const EVENT_POLL_MS = 60_000;
/** No host heartbeats here: a long interval keeps the sweeper (whose own writes would wake B's streams) quiet. */
const HEARTBEAT_INTERVAL_MS = 60_000;
/** A notification takes milliseconds; a reconnection a fraction of a second. This bounds a loaded CI machine. */
const DELIVERY_BOUND_MS = 10_000;

describe('events fan out to every center on one PostgreSQL (LISTEN/NOTIFY)', () => {
  let cluster: PostgresCluster | undefined;
  let url = '';
  const centers: TestCenter[] = [];
  before(async () => {
    cluster = await startPostgres();
    url = await cluster.createDatabase();
    for (let i = 0; i < 2; i++) centers.push(await startTestCenter({ db: url, eventPollMs: EVENT_POLL_MS, heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS }));
  });
  after(async () => {
    for (const c of centers) await c.close();
    await cluster?.stop();
  });

  const centerPair = (): [TestCenter, TestCenter] => {
    const [a, b] = centers;
    assert.ok(a !== undefined && b !== undefined);
    return [a, b];
  };
  /** A host joins through center A's API: its `host.joined` event is committed by A. */
  const joinThroughA = async (name: string): Promise<void> => {
    const [a] = centerPair();
    const { token } = await a.admin.createJoinToken();
    const joiner = new CenterClient(a.url, null, { caPem: a.caPem });
    try { await joiner.join({ joinToken: token, name, url: 'http://127.0.0.1:1', csr: await createCsr(name, await generateKeyPair()) }); } finally { await joiner.close(); }
  };
  /**
   * An SSE client of center B that is known to be live: it has received `primer` (replayed), so the
   * stream has done its read and waits; an event committed after that can only wake it by a poke —
   * on B, from B's listener, i.e. a NOTIFY from A (the fallback poll is a minute away).
   */
  const liveStreamOnB = async (primer: string): Promise<{ next(name: string): Promise<void>; close(): void }> => {
    const [a, b] = centerPair();
    const from = await a.center.store.latestEventId();
    await joinThroughA(primer);
    const ac = new AbortController();
    const events = b.admin.events(from, ac.signal)[Symbol.asyncIterator]();
    const next = async (name: string): Promise<void> => {
      const timer = setTimeout(() => { ac.abort(); }, DELIVERY_BOUND_MS);
      try {
        for (;;) {
          const r = await events.next();
          if (r.done === true) throw new Error(`B's stream ended before host.joined of ${name}`);
          if (r.value.kind === 'host.joined' && r.value.subject === `host:${name}`) return;
        }
      } catch (err) {
        if (ac.signal.aborted) throw new Error(`host.joined of ${name} did not reach B's client within ${DELIVERY_BOUND_MS} ms`);
        throw err;
      } finally {
        clearTimeout(timer);
      }
    };
    await next(primer);
    return { next, close: () => { ac.abort(); } };
  };

  it('an event committed by center A reaches a live SSE client of center B', async () => {
    const stream = await liveStreamOnB('fan0');
    try {
      await joinThroughA('fan1');
      await stream.next('fan1');
    } finally {
      stream.close();
    }
  });

  it('recovers when the listening connections are killed: an event from the outage arrives, and later ones too', async () => {
    const stream = await liveStreamOnB('fan2');
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const dbName = new URL(url).pathname.slice(1);
      const killed = await admin.query<{ pid: number }>(
        'select pid, pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = $2', [dbName, EVENTS_LISTEN_APPLICATION_NAME]);
      assert.equal(killed.rowCount, 2, 'each center had its listening connection');
      // Committed while B's listener is down or reconnecting: its NOTIFY is lost; the resync after
      // reconnecting has B's streams read the store and find it.
      await joinThroughA('fan3');
      await stream.next('fan3');
      // And notifications flow on the new connection.
      await joinThroughA('fan4');
      await stream.next('fan4');
      const listening = await admin.query<{ pid: number }>('select pid from pg_stat_activity where datname = $1 and application_name = $2', [dbName, EVENTS_LISTEN_APPLICATION_NAME]);
      const before = new Set(killed.rows.map((r) => r.pid));
      assert.ok(listening.rows.some((r) => !before.has(r.pid)), 'a new listening connection');
    } finally {
      stream.close();
      await admin.end();
    }
  });
});
