/**
 * The event log is bounded, and a client never silently misses what was pruned: on SQLite and on a real
 * PostgreSQL, a center's prune duty deletes events beyond the retention, and a stream resumed after an
 * id older than the oldest event kept starts with one `events.lost` event (docs/design/center-api.md)
 * whose id is the last one lost, then goes on with the events kept.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EVENTS_LOST_KIND, type CenterEvent, type EventsLostPayload } from '../../src/api/center-v1.js';
import { EVENT_PRUNE_DUTY } from '../../src/center/center.js';
import { startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';
import { startPostgres, type PostgresCluster } from '../helpers/postgres.js';

/** Far beyond any test: only the count bound (or an explicit age) prunes here. */
const FOREVER_MS = 10 ** 12;
/** The prune duty's lease in these tests. */
const LEASE_MS = 5000;

/** The first `n` events of a stream resumed after `afterId`. */
async function firstEvents(tc: TestCenter, afterId: number, n: number): Promise<CenterEvent[]> {
  const seen: CenterEvent[] = [];
  await waitForEvent(tc.admin, afterId, (e) => { seen.push(e); return seen.length >= n; }, 10_000);
  return seen;
}

async function appendTicks(tc: TestCenter, n: number): Promise<number> {
  for (let i = 0; i < n; i++) await tc.center.store.appendEvent({ kind: 'test.tick', subject: 'retention', payload: { i } });
  return tc.center.store.latestEventId();
}

function retentionSuite(name: string, db: () => Promise<string | undefined>): void {
  describe(`event retention: ${name}`, () => {
    let tc: TestCenter;
    before(async () => {
      const url = await db();
      // The timer's pruner is off (an hour): the tests prune when they say.
      tc = await startTestCenter({ ...(url !== undefined ? { db: url } : {}), eventPruneIntervalMs: 3_600_000 });
    });
    after(async () => { await tc.close(); });

    it('prunes beyond the newest N in batches; a stream resumed before the oldest kept is told, then gets the rest', async () => {
      const latest = await appendTicks(tc, 12);
      const pruned = await tc.center.pruneEventsOnce({ maxAgeMs: FOREVER_MS, maxEvents: 4, batch: 3 }, LEASE_MS);
      assert.equal(pruned, latest - 4, 'every batch of the run');
      assert.equal(await tc.center.store.oldestEventId(), latest - 3);
      const [lost, next] = await firstEvents(tc, 0, 2);
      assert.equal(lost?.kind, EVENTS_LOST_KIND);
      assert.equal(lost?.id, latest - 4, 'its id is the last one lost: a reconnect from it loses nothing more');
      assert.deepEqual(lost?.payload, { afterId: 0, resumeAfterId: latest - 4, reason: (lost?.payload as EventsLostPayload).reason });
      assert.match((lost?.payload as EventsLostPayload).reason, /refetch/);
      assert.equal(next?.id, latest - 3, 'then the oldest kept, and on');
      // Resumed at the last lost id or later: nothing was lost, no such event.
      const [first] = await firstEvents(tc, latest - 4, 1);
      assert.deepEqual([first?.kind, first?.id], ['test.tick', latest - 3]);
    });

    it('everything pruned by age: a resumed stream is told, and follows what comes next', async () => {
      const latest = await appendTicks(tc, 3);
      await tc.center.pruneEventsOnce({ maxAgeMs: 0, maxEvents: 1000, batch: 1000 }, LEASE_MS);
      assert.equal(await tc.center.store.oldestEventId(), null);
      const seen: CenterEvent[] = [];
      const following = waitForEvent(tc.admin, 1, (e) => { seen.push(e); return e.kind === 'test.tick'; }, 10_000);
      // Whether the stream's first read comes before or after this append, it starts with the lost event.
      await tc.center.store.appendEvent({ kind: 'test.tick', subject: 'retention' });
      await following;
      assert.equal(seen[0]?.kind, EVENTS_LOST_KIND);
      assert.equal((seen[0]?.payload as EventsLostPayload).afterId, 1);
      assert.ok((seen[0]?.payload as EventsLostPayload).resumeAfterId >= latest);
      assert.equal(seen.at(-1)?.id, latest + 1);
    });

    it('one center prunes at a time: the duty', async () => {
      const other = `center-other-${name}`;
      // Earlier tests' runs left this center holding it; hand it over as a stopping center does.
      await tc.center.store.releaseDuty(EVENT_PRUNE_DUTY, tc.center.id);
      assert.equal((await tc.center.store.tryAcquireDuty(EVENT_PRUNE_DUTY, other, LEASE_MS)).acquired, true);
      assert.equal(await tc.center.pruneEventsOnce({ maxAgeMs: 0, maxEvents: 1, batch: 10 }, LEASE_MS), null, 'held elsewhere: not pruned here');
      await tc.center.store.releaseDuty(EVENT_PRUNE_DUTY, other);
      assert.notEqual(await tc.center.pruneEventsOnce({ maxAgeMs: FOREVER_MS, maxEvents: 1, batch: 10 }, LEASE_MS), null);
    });
  });
}

retentionSuite('SQLite', () => Promise.resolve(undefined));

describe('on PostgreSQL', () => {
  let cluster: PostgresCluster | undefined;
  before(async () => { cluster = await startPostgres(); });
  after(async () => { await cluster?.stop(); });
  retentionSuite('PostgreSQL', async () => {
    assert.ok(cluster !== undefined);
    return cluster.createDatabase();
  });
});

describe('a center prunes by itself', () => {
  it('its timer keeps the log within --event-retention-count', async () => {
    const tc = await startTestCenter({ eventRetentionMaxEvents: 2, eventPruneIntervalMs: 20 });
    try {
      const latest = await appendTicks(tc, 6);
      // Bounded wait for the timer's next run (20 ms apart), polling the store.
      for (let i = 0; i < 250 && await tc.center.store.oldestEventId() !== latest - 1; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(await tc.center.store.oldestEventId(), latest - 1);
    } finally {
      await tc.close();
    }
  });
});
