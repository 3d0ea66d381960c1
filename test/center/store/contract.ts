/**
 * The store's contract: one suite, run against every backend (sqlite.test.ts, postgres.test.ts) so
 * that what the center relies on holds the same way on both. Each test gets a fresh, empty database;
 * the concurrency tests open two store instances on it (two connections; for PostgreSQL the same as
 * two centers).
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { openCenterStore, type OpenStoreOptions, type StoreLocation } from '../../../src/center/store/open.js';
import { MIGRATIONS } from '../../../src/center/store/migrations/index.js';
import type { CenterStore } from '../../../src/center/store/store.js';
import { MAX_PATH_TTL_MS } from '../../../src/dataplane/path/spec.js';
import { addressInCidr, parseCidr } from '../../../src/center/mobility/subnets.js';
import {
  MAX_DATA_PLANE_DRIVERS, type MobilityPath, type PathAllocationInput,
  MAX_EVENT_PAYLOAD_BYTES, MAX_EVENT_PRUNE_BATCH, MAX_EVENTS_PAGE, MAX_HEARTBEAT_BATCH, MAX_JSON_BYTES, MAX_LIST_LIMIT, MAX_NAME_CHARS, type Task,
} from '../../../src/center/store/model.js';

export interface StoreBackendUnderTest {
  readonly name: string;
  /** A fresh, empty database. */
  freshDatabase(): Promise<StoreLocation>;
  /**
   * Whether one process may open several stores on one database (PostgreSQL: as several centers do).
   * SQLite: one store per file per process (src/center/store/sqlite.ts), so its concurrent claimers and
   * appenders share that store's connection — the single-writer case the design relies on.
   */
  readonly severalStoresPerProcess: boolean;
}

/** The schema version this code brings a database to: its newest migration's number (numbers may skip one, see migrations/index.ts). */
const CODE_VERSION = Number(MIGRATIONS[MIGRATIONS.length - 1]?.name.slice(0, 4));
const DS1 = 'a'.repeat(32);
const DS2 = 'b'.repeat(32);
const START_MS = 1_800_000_000_000;
/** A notification through a real PostgreSQL arrives in milliseconds; this bounds a loaded machine's worst. */
const LISTEN_WAIT_MS = 10_000;

/** A clock a test moves by hand: leases expire when the test says so, without sleeping. */
function manualClock(): { now: () => number; advance: (ms: number) => void } {
  let t = START_MS;
  return { now: () => t, advance: (ms) => { t += ms; } };
}

const host = (name: string, site = 's1'): { name: string; site: string; url: string; capacity: { memoryBytes: number; vcpus: number } } =>
  ({ name, site, url: `https://${name}.example:7001`, capacity: { memoryBytes: 8 * 2 ** 30, vcpus: 4 } });

const pathIdOf = (i: number): string => i.toString(16).padStart(32, '0');
const secretOf = (i: number): string => Buffer.alloc(32, i % 256).toString('base64url');
const pathInput = (i: number, sourceHost: string, targetHost: string, extra: Partial<PathAllocationInput> = {}): PathAllocationInput =>
  ({ pathId: pathIdOf(i), kind: 'migration', sourceHost, targetHost, driver: 'portable', firstPort: 7100, portCount: 1, ttlMs: 60_000, secret: secretOf(i), ...extra });
/** Every address of these paths (sources and targets together). */
const addressesOf = (paths: readonly MobilityPath[]): string[] => paths.flatMap((p) => [p.sourceAddress, p.targetAddress]);

export function storeContract(backend: StoreBackendUnderTest): void {
  describe(`center store contract: ${backend.name}`, () => {
    const open: CenterStore[] = [];
    const openStore = async (location: StoreLocation, options: OpenStoreOptions = {}): Promise<CenterStore> => {
      const s = await openCenterStore(location, options);
      open.push(s);
      return s;
    };
    const fresh = async (options: OpenStoreOptions = {}): Promise<{ store: CenterStore; location: StoreLocation }> => {
      const location = await backend.freshDatabase();
      return { store: await openStore(location, options), location };
    };
    /** `count` stores on one fresh database: separate connections where the backend allows, else one shared. */
    const onOneDatabase = async (count: number): Promise<CenterStore[]> => {
      const location = await backend.freshDatabase();
      if (!backend.severalStoresPerProcess) {
        const s = await openStore(location);
        return Array.from({ length: count }, () => s);
      }
      const stores: CenterStore[] = [];
      for (let i = 0; i < count; i++) stores.push(await openStore(location));
      return stores;
    };
    afterEach(async () => {
      await Promise.all([...new Set(open.splice(0))].map((s) => s.close()));
    });

    describe('schema migrations', () => {
      it('migrates an empty database to the latest version; re-running is a no-op that keeps the data', async () => {
        const { store, location } = await fresh();
        assert.equal(await store.schemaVersion(), CODE_VERSION);
        await store.upsertSite({ name: 's1' });
        await store.close();
        const again = await openStore(location);
        assert.equal(await again.schemaVersion(), CODE_VERSION);
        assert.equal((await again.getSite('s1')).name, 's1');
        await again.close();
        const third = await openStore(location);
        assert.equal((await third.listSites()).length, 1);
      });

      it('refuses a database a newer Ferry migrated (STORE_SCHEMA_VERSION), and leaves it as it was', async () => {
        const future = [...MIGRATIONS, { name: '0099-from-the-future', up: async () => {} }];
        const { store, location } = await fresh({ migrations: future });
        assert.equal(await store.schemaVersion(), 99);
        await store.upsertSite({ name: 'kept' });
        await store.close();
        await assert.rejects(openCenterStore(location), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'STORE_SCHEMA_VERSION');
          assert.match(err.message, new RegExp(`schema version 99.*0099-from-the-future.*newer than this Ferry knows \\(${CODE_VERSION}\\)`));
          return true;
        });
        const newer = await openStore(location, { migrations: future });
        assert.equal((await newer.getSite('kept')).name, 'kept');
      });
    });

    describe('inventory', () => {
      it('sites, hosts, datastores and mounts: upsert, get, list; what does not exist is NOT_FOUND', async () => {
        const { store } = await fresh();
        await assert.rejects(store.upsertHost(host('h1')), { code: 'NOT_FOUND' }, 'a host in a site that does not exist');
        await store.upsertSite({ name: 's1', description: 'lab' });
        assert.equal((await store.upsertSite({ name: 's1' })).description, 'lab', 'an upsert without a description keeps it');
        const h1 = await store.upsertHost(host('h1'));
        assert.equal(h1.state, 'joining');
        assert.equal(h1.lastHeartbeatAtMs, null);
        await store.setHostState('h1', 'connected');
        const moved = await store.upsertHost({ ...host('h1'), url: 'https://h1.example:8443', capacity: { memoryBytes: 1024, vcpus: 2 } });
        assert.equal(moved.state, 'connected', 'an upsert without a state keeps it');
        assert.equal(moved.url, 'https://h1.example:8443');
        assert.deepEqual(moved.capacity, { memoryBytes: 1024, vcpus: 2 });
        assert.equal(moved.createdAtMs, h1.createdAtMs);
        await store.upsertHost({ ...host('h2'), state: 'connected' });
        assert.deepEqual((await store.listHosts({ state: 'connected' })).map((h) => h.name), ['h1', 'h2']);
        await assert.rejects(store.getHost('nope'), { code: 'NOT_FOUND' });
        await assert.rejects(store.setHostState('nope', 'connected'), { code: 'NOT_FOUND' });

        const t = Date.now();
        await store.recordHostHeartbeat('h1', t);
        assert.equal((await store.recordHostHeartbeat('h1', t - 5000)).lastHeartbeatAtMs, t, 'a late heartbeat does not move it back');
        // In a batch: the same rule, and a host that is gone is skipped.
        assert.equal(await store.recordHostHeartbeats([{ name: 'h1', atMs: t + 1000 }, { name: 'gone', atMs: t }]), 1);
        assert.equal((await store.getHost('h1')).lastHeartbeatAtMs, t + 1000);
        assert.equal(await store.recordHostHeartbeats([{ name: 'h1', atMs: t }]), 1);
        assert.equal((await store.getHost('h1')).lastHeartbeatAtMs, t + 1000, 'a late one in a batch does not move it back');
        assert.equal(await store.recordHostHeartbeats([]), 0);
        await assert.rejects(store.recordHostHeartbeats(Array.from({ length: MAX_HEARTBEAT_BATCH + 1 }, () => ({ name: 'h1', atMs: t }))), { code: 'INVALID_ARGUMENT' });

        await assert.rejects(store.setHostDatastores('h1', [{ datastoreId: DS1, mountName: 'ds' }]), { code: 'NOT_FOUND' }, 'an unknown datastore');
        await store.upsertDatastore({ id: DS1, name: 'shared', shared: true });
        await store.upsertDatastore({ id: DS2, name: 'local', shared: false });
        assert.equal((await store.upsertDatastore({ id: DS2, name: 'local2', shared: false })).name, 'local2');
        assert.deepEqual((await store.listDatastores()).map((d) => [d.id, d.shared]), [[DS1, true], [DS2, false]]);
        await store.setHostDatastores('h1', [{ datastoreId: DS1, mountName: 'shared' }, { datastoreId: DS2, mountName: 'fast' }]);
        await store.setHostDatastores('h2', [{ datastoreId: DS1, mountName: 'other-name' }]);
        assert.deepEqual((await store.listDatastoreHosts(DS1)).map((m) => [m.host, m.mountName]), [['h1', 'shared'], ['h2', 'other-name']]);
        const replaced = await store.setHostDatastores('h1', [{ datastoreId: DS2, mountName: 'fast' }]);
        assert.deepEqual(replaced, [{ host: 'h1', datastoreId: DS2, mountName: 'fast', space: null }], 'the reported set replaces the old one');
        assert.deepEqual(await store.listHostDatastores('h1'), replaced);
        await assert.rejects(store.setHostDatastores('h1', [{ datastoreId: DS1, mountName: 'x' }, { datastoreId: DS2, mountName: 'x' }]), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.setHostDatastores('ghost', []), { code: 'NOT_FOUND' });
        await assert.rejects(store.getDatastore('c'.repeat(32)), { code: 'NOT_FOUND' });
      });

      it('datastore space per mount: kept with the mount, updated alone, bigger than 2^32 bytes; refused when free exceeds capacity or the mount is unknown', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        await store.upsertSite({ name: 's1' });
        await store.upsertHost(host('h1'));
        await store.upsertDatastore({ id: DS1, name: 'shared', shared: true });
        await store.upsertDatastore({ id: DS2, name: 'local', shared: false });
        const TiB = 2 ** 40;
        const [mount] = await store.setHostDatastores('h1', [{ datastoreId: DS1, mountName: 'shared', space: { capacityBytes: 4 * TiB, freeBytes: 3 * TiB } }]);
        assert.deepEqual(mount?.space, { capacityBytes: 4 * TiB, freeBytes: 3 * TiB, atMs: clock.now() });
        clock.advance(5000);
        const updated = await store.setHostDatastoreSpace('h1', DS1, { capacityBytes: 4 * TiB, freeBytes: 2 * TiB });
        assert.deepEqual(updated.space, { capacityBytes: 4 * TiB, freeBytes: 2 * TiB, atMs: clock.now() });
        assert.deepEqual(await store.listHostDatastores('h1'), [updated]);
        assert.deepEqual((await store.listDatastoreHosts(DS1)).map((m) => m.space?.freeBytes), [2 * TiB]);
        await assert.rejects(store.setHostDatastoreSpace('h1', DS1, { capacityBytes: 1, freeBytes: 2 }), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.setHostDatastoreSpace('h1', DS1, { capacityBytes: -1, freeBytes: 0 }), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.setHostDatastoreSpace('h1', DS2, { capacityBytes: 1, freeBytes: 0 }), { code: 'NOT_FOUND' }, 'h1 does not mount DS2');
        await assert.rejects(store.setHostDatastoreSpace('ghost', DS1, { capacityBytes: 1, freeBytes: 0 }), { code: 'NOT_FOUND' });
      });

      it('VMs: one place each, create refuses a taken name, a silent host\'s VMs become unknown', async () => {
        const { store } = await fresh();
        await store.upsertSite({ name: 's1' });
        await store.upsertHost(host('h1'));
        await store.upsertHost(host('h2'));
        const vm = { name: 'web', host: 'h1', state: 'running' as const, config: { memoryBytes: 65536, vcpus: 2, cmdline: 'a "quoted" ünïcode' }, disks: [{ datastore: DS1, path: 'web.vmdk' }] };
        const created = await store.createVm(vm);
        assert.deepEqual(created.config, vm.config);
        await assert.rejects(store.createVm(vm), { code: 'ALREADY_EXISTS' });
        const moved = await store.upsertVm({ ...vm, host: 'h2' });
        assert.equal(moved.host, 'h2');
        assert.equal(moved.createdAtMs, created.createdAtMs);
        await store.upsertVm({ name: 'db', host: 'h2', state: 'paused', config: {}, disks: [] });
        await store.upsertVm({ name: 'spare', host: null, state: 'defined', config: {}, disks: [] });
        await assert.rejects(store.upsertVm({ ...vm, name: 'x', host: 'ghost' }), { code: 'NOT_FOUND' });
        assert.equal(await store.setVmStatesOnHost('h2', 'unknown'), 2);
        assert.deepEqual((await store.listVms({ host: 'h2' })).map((v) => [v.name, v.state]), [['db', 'unknown'], ['web', 'unknown']]);
        assert.equal((await store.getVm('spare')).state, 'defined', 'a VM elsewhere is untouched');
        await store.deleteVm('spare');
        await assert.rejects(store.getVm('spare'), { code: 'NOT_FOUND' });
        await assert.rejects(store.deleteVm('spare'), { code: 'NOT_FOUND' });
      });

      it('lists are bounded and page by key', async () => {
        const { store } = await fresh();
        await store.upsertSite({ name: 's1' });
        await store.upsertHost(host('h1'));
        for (let i = 0; i < 25; i++) await store.upsertVm({ name: `vm-${String(i).padStart(2, '0')}`, host: 'h1', state: 'stopped', config: {}, disks: [] });
        const seen: string[] = [];
        let after: string | undefined;
        for (;;) {
          const page = await store.listVms({ limit: 10, ...(after === undefined ? {} : { after }) });
          if (page.length === 0) break;
          assert.ok(page.length <= 10);
          seen.push(...page.map((v) => v.name));
          after = page.at(-1)?.name;
        }
        assert.equal(seen.length, 25);
        assert.deepEqual(seen, [...seen].sort());
        assert.equal((await store.listVms()).length, 25, 'the default limit is MAX_LIST_LIMIT');
        for (const limit of [0, -1, MAX_LIST_LIMIT + 1, 1.5, Number.NaN]) {
          await assert.rejects(store.listVms({ limit }), { code: 'INVALID_ARGUMENT' }, `limit ${limit}`);
          await assert.rejects(store.listTasks({ limit }), { code: 'INVALID_ARGUMENT' }, `limit ${limit}`);
          await assert.rejects(store.listHosts({ limit }), { code: 'INVALID_ARGUMENT' }, `limit ${limit}`);
        }
      });
    });

    describe('tasks', () => {
      it('queued → running → succeeded, oldest first, only the asked kinds; each transition is an event', async () => {
        const { store } = await fresh();
        const a = await store.enqueueTask({ kind: 'vm.migrate', target: 'vm:web', requestedBy: 'alice', params: { to: 'h2' } });
        const b = await store.enqueueTask({ kind: 'vm.create', target: 'vm:db', requestedBy: 'bob', waitingReason: 'no host has 4 GiB free' });
        assert.equal(a.state, 'queued');
        assert.equal(b.waitingReason, 'no host has 4 GiB free');
        assert.equal(await store.claimNextTask('w1', ['host.evacuate'], 1000), null, 'no task of that kind');
        const claimed = await store.claimNextTask('w1', ['vm.create', 'vm.migrate'], 1000);
        assert.equal(claimed?.id, a.id, 'oldest first');
        assert.equal(claimed.state, 'running');
        assert.equal(claimed.claimedBy, 'w1');
        assert.equal(claimed.attempts, 1);
        assert.ok(claimed.startedAtMs !== null);
        assert.deepEqual(claimed.params, { to: 'h2' });
        await store.heartbeatTask(a.id, 'w1', { leaseMs: 1000, progress: 0.4, phase: 'round 2' });
        const done = await store.finishTask(a.id, 'w1', { state: 'succeeded', result: { host: 'h2' } });
        assert.equal(done.state, 'succeeded');
        assert.equal(done.progress, 1);
        assert.deepEqual(done.result, { host: 'h2' });
        assert.ok(done.endedAtMs !== null && done.endedAtMs >= (claimed.startedAtMs ?? 0));
        await assert.rejects(store.finishTask(a.id, 'w1', { state: 'succeeded' }), { code: 'TASK_NOT_CLAIMED' }, 'finished once');
        const failed = await store.finishTask((await store.claimNextTask('w1', ['vm.create'], 1000))?.id ?? 0, 'w1', { state: 'failed', error: { code: 'CAPACITY', message: 'no host fits' } });
        assert.deepEqual(failed.error, { code: 'CAPACITY', message: 'no host fits' });
        const kinds = (await store.eventsSince(0, MAX_EVENTS_PAGE)).filter((e) => e.subject === `task:${a.id}`).map((e) => e.kind);
        assert.deepEqual(kinds, ['task.queued', 'task.running', 'task.running', 'task.succeeded']);
        assert.deepEqual((await store.listTasks({ state: 'failed' })).map((t) => t.id), [b.id]);
        await assert.rejects(store.getTask(9999), { code: 'NOT_FOUND' });
      });

      it('counts unfinished tasks by state and kind (queue depth), never the finished ones', async () => {
        const { store } = await fresh();
        assert.deepEqual(await store.countTasksByState(), []);
        const enqueue = (kind: string): Promise<Task> => store.enqueueTask({ kind, target: 'vm:web', requestedBy: 'alice' });
        for (const kind of ['vm.migrate', 'vm.migrate', 'vm.migrate', 'vm.start', 'vm.stop']) await enqueue(kind);
        await store.claimNextTask('w1', ['vm.migrate'], 1000);
        const stop = await store.claimNextTask('w1', ['vm.stop'], 1000);
        await store.finishTask(stop?.id ?? 0, 'w1', { state: 'succeeded' });
        await store.cancelTask((await enqueue('vm.start')).id, 'alice');
        assert.deepEqual(await store.countTasksByState(), [
          { state: 'queued', kind: 'vm.migrate', count: 2 },
          { state: 'queued', kind: 'vm.start', count: 1 },
          { state: 'running', kind: 'vm.migrate', count: 1 },
        ]);
      });

      it('progress never runs backwards, whatever order reports arrive in', async () => {
        const { store } = await fresh();
        const t = await store.enqueueTask({ kind: 'vm.migrate', target: 'vm:web', requestedBy: 'alice' });
        await store.claimNextTask('w1', ['vm.migrate'], 1000);
        const seen: number[] = [];
        for (const p of [0.1, 0.5, 0.3, 0.5, 0.2, 0.9, 0, 0.95]) seen.push((await store.heartbeatTask(t.id, 'w1', { leaseMs: 1000, progress: p })).progress);
        assert.deepEqual(seen, [0.1, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.95]);
        const events = (await store.eventsSince(0, MAX_EVENTS_PAGE)).filter((e) => e.kind === 'task.running');
        const progress = events.map((e) => (e.payload as { progress: number }).progress);
        assert.deepEqual(progress, [...progress].sort((x, y) => x - y), 'nor in the events');
        // A failure keeps the highest progress reached (it says how far it got).
        assert.equal((await store.finishTask(t.id, 'w1', { state: 'failed', error: { code: 'MIGRATION_FAILED', message: 'x' } })).progress, 0.95);
      });

      it('a worker that lost its claim is told so (TASK_NOT_CLAIMED); waiting reasons only on queued tasks', async () => {
        const { store } = await fresh();
        const t = await store.enqueueTask({ kind: 'vm.start', target: 'vm:web', requestedBy: 'alice' });
        assert.equal((await store.setTaskWaiting(t.id, 'host h1: 2 of 2 operations running')).waitingReason, 'host h1: 2 of 2 operations running');
        await store.claimNextTask('w1', ['vm.start'], 1000);
        assert.equal((await store.getTask(t.id)).waitingReason, null, 'a running task waits for nothing');
        await assert.rejects(store.setTaskWaiting(t.id, 'x'), { code: 'TASK_STATE' });
        await assert.rejects(store.heartbeatTask(t.id, 'w2', { leaseMs: 1000 }), { code: 'TASK_NOT_CLAIMED' });
        await assert.rejects(store.finishTask(t.id, 'w2', { state: 'succeeded' }), { code: 'TASK_NOT_CLAIMED' });
        await assert.rejects(store.heartbeatTask(424242, 'w1', { leaseMs: 1000 }), { code: 'NOT_FOUND' });
      });

      it('an unadmitted task is not claimed until the scheduler admits it with a plan; a checkpoint is its claimer\'s alone', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        const m = await store.enqueueTask({ kind: 'vm.migrate', target: 'vm:web', requestedBy: 'alice', admitted: false, waitingReason: 'waiting for the scheduler' });
        const c = await store.enqueueTask({ kind: 'vm.start', target: 'vm:db', requestedBy: 'alice' });
        assert.equal(m.admitted, false);
        assert.equal(c.admitted, true, 'admitted unless told otherwise');
        assert.deepEqual((await store.listTasks({ state: 'queued', admitted: false })).map((t) => t.id), [m.id]);
        assert.equal((await store.claimNextTask('w1', ['vm.migrate'], 1000)), null, 'an unadmitted task is never claimed');
        const admitted = await store.admitTask(m.id, { from: 'h1', to: 'h2' });
        assert.equal(admitted.admitted, true);
        assert.equal(admitted.waitingReason, null, 'admission clears the reason to wait');
        assert.deepEqual(admitted.plan, { from: 'h1', to: 'h2' });
        await assert.rejects(store.admitTask(m.id, null), { code: 'TASK_STATE' }, 'admitted once');
        await assert.rejects(store.admitTask(c.id, null), { code: 'TASK_STATE' }, 'an admitted task');
        const claimed = await store.claimNextTask('w1', ['vm.migrate'], 1000);
        assert.equal(claimed?.id, m.id);
        assert.deepEqual(claimed.plan, { from: 'h1', to: 'h2' });
        await assert.rejects(store.admitTask(m.id, null), { code: 'TASK_STATE' }, 'a running task');
        assert.deepEqual((await store.checkpointTask(m.id, 'w1', { migrationId: 'ab' })).checkpoint, { migrationId: 'ab' });
        await assert.rejects(store.checkpointTask(m.id, 'w2', { migrationId: 'cd' }), { code: 'TASK_NOT_CLAIMED' });
        // A worker that takes the task over after the claim expired finds the plan and the checkpoint, still admitted.
        clock.advance(1001);
        await store.requeueExpiredClaims();
        const again = await store.claimNextTask('w2', ['vm.migrate'], 1000);
        assert.equal(again?.id, m.id);
        assert.deepEqual([again.admitted, again.plan, again.checkpoint, again.attempts], [true, { from: 'h1', to: 'h2' }, { migrationId: 'ab' }, 2]);
        await assert.rejects(store.checkpointTask(m.id, 'w2', { big: 'x'.repeat(MAX_JSON_BYTES) }), { code: 'INVALID_ARGUMENT' });
      });

      it('a VM row is replaced only where the writer expects it (compare-and-set on its host)', async () => {
        const { store } = await fresh();
        await store.upsertSite({ name: 's1' });
        await store.upsertHost(host('h1'));
        await store.upsertHost(host('h2'));
        const vmRow = (h: string | null, state: 'running' | 'unknown' = 'running') => ({ name: 'cas', host: h, state, config: {}, disks: [] });
        assert.equal((await store.upsertVm(vmRow('h1'), null)).host, 'h1', 'a new row is inserted');
        assert.equal((await store.upsertVm(vmRow('h2'), null)).host, 'h1', 'not on no host any more: unchanged');
        assert.equal((await store.upsertVm(vmRow('h2'), 'h1')).host, 'h2', 'moved by the writer who saw it on h1');
        const stale = await store.upsertVm(vmRow('h1', 'unknown'), 'h1');
        assert.deepEqual([stale.host, stale.state], ['h2', 'running'], 'a writer that read it on h1 before the move changes nothing');
        assert.equal((await store.upsertVm(vmRow('h1'))).host, 'h1', 'unconditional');
      });

      it('a host state changes only from the states a caller allows (compare-and-set)', async () => {
        const { store } = await fresh();
        await store.upsertSite({ name: 's1' });
        await store.upsertHost({ ...host('h1'), state: 'connected' });
        assert.equal((await store.setHostState('h1', 'entering-maintenance', ['connected'])).state, 'entering-maintenance');
        assert.equal((await store.setHostState('h1', 'connected', ['joining', 'disconnected'])).state, 'entering-maintenance', 'a heartbeat does not undo maintenance');
        assert.equal((await store.setHostState('h1', 'connected')).state, 'connected', 'unconditional');
        await assert.rejects(store.setHostState('nope', 'connected', ['joining']), { code: 'NOT_FOUND' });
        await assert.rejects(store.setHostState('h1', 'connected', []), { code: 'INVALID_ARGUMENT' });
      });

      it('a shared secret is created once: every later ensure answers the first value', async () => {
        const stores = await onOneDatabase(2);
        const [s1, s2] = stores as [CenterStore, CenterStore];
        const values = await Promise.all([s1.ensureSecret('host-control-key', 'a'.repeat(43)), s2.ensureSecret('host-control-key', 'b'.repeat(43))]);
        assert.equal(values[0], values[1], 'racing centers agree');
        assert.equal(await s2.ensureSecret('host-control-key', 'c'.repeat(43)), values[0]);
        await assert.rejects(s1.ensureSecret('host-control-key', 'short'), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(s1.ensureSecret('Bad Name', 'a'.repeat(43)), { code: 'INVALID_ARGUMENT' });
      });

      it('a move directive: only on a running task, each request counted (seq), read back by its claimer\'s renewal and by a successor\'s claim', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        const t = await store.enqueueTask({ kind: 'copy', target: 'copy:x', requestedBy: 'alice' });
        assert.equal(t.moveRequest, null, 'never asked');
        await assert.rejects(store.requestTaskMove(t.id, { by: 'bob' }), { code: 'TASK_STATE' }, 'a queued task has no host to leave yet');
        await store.claimNextTask('w1', ['copy'], 1000);
        const first = await store.requestTaskMove(t.id, { to: 'h2', by: 'token:bob' });
        assert.deepEqual(first.moveRequest, { seq: 1, to: 'h2', by: 'token:bob', atMs: START_MS });
        clock.advance(5);
        assert.deepEqual((await store.heartbeatTask(t.id, 'w1', { leaseMs: 1000 })).moveRequest, { seq: 1, to: 'h2', by: 'token:bob', atMs: START_MS }, 'the worker learns it with a renewal');
        const second = await store.requestTaskMove(t.id, { by: 'token:carol' });
        assert.deepEqual(second.moveRequest, { seq: 2, to: null, by: 'token:carol', atMs: START_MS + 5 }, 'a later request has the next seq; without `to` the worker chooses');
        const events = (await store.eventsSince(0, MAX_EVENTS_PAGE)).filter((e) => e.subject === `task:${t.id}`);
        assert.deepEqual(events.slice(-2).map((e) => (e.payload as { moveSeq: number }).moveSeq), [1, 2], 'each request is an event');
        // The claimer dies: its successor claims the row with the directive on it.
        clock.advance(2000);
        await store.requeueExpiredClaims();
        assert.deepEqual((await store.claimNextTask('w2', ['copy'], 1000))?.moveRequest?.seq, 2);
        await assert.rejects(store.requestTaskMove(t.id, { to: 'bad name!', by: 'bob' }), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.requestTaskMove(424242, { by: 'bob' }), { code: 'NOT_FOUND' });
        await store.finishTask(t.id, 'w2', { state: 'succeeded' });
        await assert.rejects(store.requestTaskMove(t.id, { by: 'bob' }), { code: 'TASK_STATE' }, 'a finished task has nothing to move');
      });

      it('cancel works in every state', async () => {
        const { store } = await fresh();
        const queued = await store.enqueueTask({ kind: 'vm.stop', target: 'vm:a', requestedBy: 'alice' });
        const c1 = await store.cancelTask(queued.id, 'alice');
        assert.equal(c1.state, 'cancelled');
        assert.equal(c1.error?.code, 'CANCELLED');
        assert.equal(await store.claimNextTask('w1', ['vm.stop'], 1000), null, 'a cancelled task is never claimed');

        const running = await store.enqueueTask({ kind: 'vm.stop', target: 'vm:b', requestedBy: 'alice' });
        await store.claimNextTask('w1', ['vm.stop'], 1000);
        const c2 = await store.cancelTask(running.id, 'bob');
        assert.equal(c2.state, 'running', 'its worker stops it');
        assert.equal(c2.cancelRequested, true);
        assert.equal((await store.heartbeatTask(running.id, 'w1', { leaseMs: 1000 })).cancelRequested, true, 'the worker learns it at its next heartbeat');
        assert.equal((await store.finishTask(running.id, 'w1', { state: 'cancelled' })).state, 'cancelled');

        const finished = await store.cancelTask(running.id, 'bob');
        assert.equal(finished.state, 'cancelled', 'a finished task is answered as it is');
        const ok = await store.enqueueTask({ kind: 'vm.stop', target: 'vm:c', requestedBy: 'alice' });
        await store.claimNextTask('w1', ['vm.stop'], 1000);
        await store.finishTask(ok.id, 'w1', { state: 'succeeded' });
        assert.equal((await store.cancelTask(ok.id, 'bob')).state, 'succeeded');
        await assert.rejects(store.cancelTask(777, 'bob'), { code: 'NOT_FOUND' });
      });

      it('a dead claimer\'s task is re-queued after its lease, and taken by another worker', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        const t = await store.enqueueTask({ kind: 'vm.migrate', target: 'vm:web', requestedBy: 'alice' });
        await store.claimNextTask('dead', ['vm.migrate'], 5000);
        await store.heartbeatTask(t.id, 'dead', { leaseMs: 5000, progress: 0.3 });
        clock.advance(4999);
        assert.deepEqual(await store.requeueExpiredClaims(), [], 'not before the lease ends');
        clock.advance(1);
        const requeued = await store.requeueExpiredClaims();
        assert.deepEqual(requeued.map((x) => [x.id, x.state, x.claimedBy]), [[t.id, 'queued', null]]);
        assert.match(requeued[0]?.phase ?? '', /claim of dead expired/);
        await assert.rejects(store.heartbeatTask(t.id, 'dead', { leaseMs: 5000 }), { code: 'TASK_NOT_CLAIMED' }, 'the dead worker, back, is told to stop');
        const again = await store.claimNextTask('alive', ['vm.migrate'], 5000);
        assert.equal(again?.id, t.id);
        assert.equal(again.attempts, 2);
        assert.equal(again.progress, 0.3, 'progress kept: it never runs backwards');
        assert.equal(again.startedAtMs, START_MS, 'started when it first started');
        await assert.rejects(store.finishTask(t.id, 'dead', { state: 'succeeded' }), { code: 'TASK_NOT_CLAIMED' });
        clock.advance(4000);
        await store.heartbeatTask(t.id, 'alive', { leaseMs: 5000 });
        clock.advance(4000);
        assert.deepEqual(await store.requeueExpiredClaims(), [], 'a renewed claim does not expire');
      });

      it('concurrent claimers on two connections execute each of 20 tasks exactly once', async () => {
        const stores = await onOneDatabase(2);
        const TASKS = 20;
        const WORKERS_PER_STORE = 4;
        const first = stores[0];
        assert.ok(first !== undefined);
        const ids = new Set<number>();
        for (let i = 0; i < TASKS; i++) ids.add((await first.enqueueTask({ kind: 'vm.migrate', target: `vm:v${i}`, requestedBy: 'load' })).id);
        const executed: { id: number; worker: string }[] = [];
        const worker = async (store: CenterStore, name: string): Promise<void> => {
          for (;;) {
            const t: Task | null = await store.claimNextTask(name, ['vm.migrate'], 30_000);
            if (t === null) return;
            executed.push({ id: t.id, worker: name });
            await store.heartbeatTask(t.id, name, { leaseMs: 30_000, progress: 0.5 });
            await store.finishTask(t.id, name, { state: 'succeeded', result: { by: name } });
          }
        };
        await Promise.all(stores.flatMap((s, si) => Array.from({ length: WORKERS_PER_STORE }, (_, wi) => worker(s, `c${si}-w${wi}`))));
        assert.equal(executed.length, TASKS, 'each claimed once');
        assert.deepEqual(new Set(executed.map((e) => e.id)), ids);
        const tasks = await first.listTasks();
        assert.ok(tasks.every((t) => t.state === 'succeeded' && t.attempts === 1), 'each finished once, by its claimer');
        for (const t of tasks) assert.deepEqual(t.result, { by: executed.find((e) => e.id === t.id)?.worker });
      });
    });

    describe('events', () => {
      it('since an id: in order, no gaps, bounded pages', async () => {
        const { store } = await fresh();
        assert.equal(await store.latestEventId(), 0);
        for (let i = 0; i < 25; i++) await store.appendEvent({ kind: 'vm.state', subject: `vm:v${i}`, payload: { i } });
        assert.equal(await store.latestEventId(), 25);
        const page = await store.eventsSince(0, 10);
        assert.deepEqual(page.map((e) => e.id), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert.deepEqual(page[3]?.payload, { i: 3 });
        assert.deepEqual((await store.eventsSince(20, 10)).map((e) => e.id), [21, 22, 23, 24, 25]);
        assert.deepEqual(await store.eventsSince(25, 10), []);
        await assert.rejects(store.eventsSince(0, MAX_EVENTS_PAGE + 1), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.eventsSince(-1, 10), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.eventsSince(0, 0), { code: 'INVALID_ARGUMENT' });
      });

      it('a reader polling while two connections append sees every event once, in id order', async () => {
        const [w1, w2, reader] = await onOneDatabase(3);
        assert.ok(w1 !== undefined && w2 !== undefined && reader !== undefined);
        const PER_WRITER = 40;
        let writing = true;
        const seen: number[] = [];
        const read = async (): Promise<void> => {
          for (;;) {
            const done = !writing;
            const page = await reader.eventsSince(seen.at(-1) ?? 0, 7);
            seen.push(...page.map((e) => e.id));
            if (done && page.length === 0) return;
          }
        };
        const write = async (s: CenterStore, who: string): Promise<void> => {
          await Promise.all(Array.from({ length: PER_WRITER }, (_, i) => s.appendEvent({ kind: 'test.tick', subject: who, payload: { i } })));
        };
        const readerDone = read();
        await Promise.all([write(w1, 'a'), write(w2, 'b')]);
        writing = false;
        await readerDone;
        assert.deepEqual(seen, Array.from({ length: 2 * PER_WRITER }, (_, i) => i + 1), 'every id once, in order, no gaps');
      });

      it('tells its listeners of its own appends once they committed, and of nothing that failed', async () => {
        const { store } = await fresh();
        // null (PostgreSQL: its listening connection is up, read once) may come at any time; ids come after commit.
        const heard: (number | null)[] = [];
        const reads: Promise<readonly number[]>[] = [];
        const unsubscribe = store.onEventsCommitted((id) => {
          heard.push(id);
          // Committed by the time it is heard: a read started now finds it.
          if (id !== null) reads.push(store.eventsSince(id - 1, 1).then((page) => page.map((x) => x.id)));
        });
        const e = await store.appendEvent({ kind: 'test.tick', subject: 'a' });
        const t = await store.enqueueTask({ kind: 'vm.migrate', target: 'vm:v1', requestedBy: 'test' });
        const tasked = await store.latestEventId();
        await assert.rejects(store.finishTask(t.id, 'nobody', { state: 'succeeded' }), { code: 'TASK_NOT_CLAIMED' });
        await assert.rejects(store.appendEvent({ kind: 'NOT A KIND', subject: 'a' }), { code: 'INVALID_ARGUMENT' });
        assert.deepEqual(heard.filter((id) => id !== null), [e.id, tasked], 'one call per committing call, with its newest id');
        assert.deepEqual(await Promise.all(reads), [[e.id], [tasked]], 'readable when heard');
        assert.deepEqual((await store.eventsSince(0, 10)).map((x) => x.id), [e.id, tasked]);
        unsubscribe();
        await store.appendEvent({ kind: 'test.tick', subject: 'b' });
        assert.equal(heard.filter((id) => id !== null).length, 2, 'not after unsubscribing');
      });

      if (backend.severalStoresPerProcess) {
        it("a listener hears of another connection's (another center's) commits", async () => {
          const [writer, listener] = await onOneDatabase(2);
          assert.ok(writer !== undefined && listener !== undefined);
          const heard: (number | null)[] = [];
          let wake = (): void => undefined;
          const until = (what: string, done: () => boolean): Promise<void> => new Promise((resolve, reject) => {
            const timer = setTimeout(() => { reject(new Error(`${what}: not heard within ${LISTEN_WAIT_MS} ms (heard ${JSON.stringify(heard)})`)); }, LISTEN_WAIT_MS);
            wake = () => { if (done()) { clearTimeout(timer); resolve(); } };
            wake();
          });
          listener.onEventsCommitted((id) => { heard.push(id); wake(); });
          // The first subscriber opens the listening connection; once it listens, it has the store read once (null).
          await until('the resync after LISTEN', () => heard.includes(null));
          const e = await writer.appendEvent({ kind: 'test.tick', subject: 'x' });
          await until(`event ${e.id}`, () => heard.includes(e.id));
          const t = await writer.enqueueTask({ kind: 'vm.migrate', target: 'vm:v1', requestedBy: 'test' });
          const id = await writer.latestEventId();
          await until(`the event of task ${t.id}`, () => heard.includes(id));
        });
      }

      it('pruned by count and by age, oldest first, in bounded batches; what is kept is one unbroken run up to the newest', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        assert.equal(await store.oldestEventId(), null);
        assert.equal(await store.pruneEvents({ maxAgeMs: 0, maxEvents: 0, batch: 10 }), 0, 'nothing to prune');
        for (let i = 0; i < 30; i++) {
          await store.appendEvent({ kind: 'test.tick', subject: 's', payload: { i } });
          clock.advance(1000);
        }
        // Now = start + 30 s; event i (id i + 1) is 30 - i seconds old.
        const forever = 10 ** 12;
        assert.equal(await store.pruneEvents({ maxAgeMs: forever, maxEvents: 100, batch: 10 }), 0, 'within both bounds: kept');
        assert.equal(await store.pruneEvents({ maxAgeMs: forever, maxEvents: 20, batch: 4 }), 4, 'a batch at most');
        assert.equal(await store.oldestEventId(), 5);
        assert.equal(await store.pruneEvents({ maxAgeMs: forever, maxEvents: 20, batch: 100 }), 6, 'then the rest beyond the newest 20');
        assert.equal(await store.oldestEventId(), 11);
        // Older than 15 s: ids 11..15 (id 15 is 16 s old; id 16 is exactly 15 s old, and kept).
        assert.equal(await store.pruneEvents({ maxAgeMs: 15_000, maxEvents: 100, batch: 100 }), 5);
        assert.equal(await store.oldestEventId(), 16);
        assert.deepEqual((await store.eventsSince(0, 100)).map((e) => e.id), Array.from({ length: 15 }, (_, i) => i + 16));
        assert.equal(await store.latestEventId(), 30, 'the newest id stays');
        assert.equal(await store.pruneEvents({ maxAgeMs: 0, maxEvents: 100, batch: 100 }), 15, 'an age of 0 keeps nothing older than now');
        assert.equal(await store.oldestEventId(), null);
        assert.equal((await store.appendEvent({ kind: 'test.tick', subject: 's' })).id, 31, 'numbering goes on after a full prune');
        await assert.rejects(store.pruneEvents({ maxAgeMs: 1, maxEvents: 1, batch: MAX_EVENT_PRUNE_BATCH + 1 }), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.pruneEvents({ maxAgeMs: -1, maxEvents: 1, batch: 1 }), { code: 'INVALID_ARGUMENT' });
      });
    });

    describe('duties', () => {
      it('held by one holder at a time, renewed by it, taken over after expiry with a higher epoch', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        const a = await store.tryAcquireDuty('scheduler', 'center-a', 10_000);
        assert.deepEqual([a.acquired, a.holder, a.epoch], [true, 'center-a', 1]);
        const b = await store.tryAcquireDuty('scheduler', 'center-b', 10_000);
        assert.deepEqual([b.acquired, b.holder], [false, 'center-a']);
        clock.advance(9000);
        const renewed = await store.tryAcquireDuty('scheduler', 'center-a', 10_000);
        assert.deepEqual([renewed.acquired, renewed.epoch, renewed.expiresAtMs], [true, 1, START_MS + 19_000]);
        assert.equal((await store.tryAcquireDuty('sweeper', 'center-b', 10_000)).acquired, true, 'duties are independent');
        clock.advance(9999);
        assert.equal((await store.tryAcquireDuty('scheduler', 'center-b', 10_000)).acquired, false, 'not before expiry');
        clock.advance(1);
        const taken = await store.tryAcquireDuty('scheduler', 'center-b', 10_000);
        assert.deepEqual([taken.acquired, taken.holder, taken.epoch], [true, 'center-b', 2]);
        assert.equal((await store.tryAcquireDuty('scheduler', 'center-a', 10_000)).acquired, false, 'the old holder, back, does not get it');
        assert.equal(await store.releaseDuty('scheduler', 'center-a'), false, 'only the holder releases');
        assert.equal(await store.releaseDuty('scheduler', 'center-b'), true);
        const back = await store.tryAcquireDuty('scheduler', 'center-a', 10_000);
        assert.deepEqual([back.acquired, back.epoch], [true, 3], 'a release keeps the epoch rising');
      });

      it('of many racing for it on two connections, exactly one gets it', async () => {
        const [a, b] = await onOneDatabase(2);
        assert.ok(a !== undefined && b !== undefined);
        const results = await Promise.all(Array.from({ length: 16 }, (_, i) => (i % 2 === 0 ? a : b).tryAcquireDuty('sweeper', `holder-${i}`, 60_000)));
        const winners = results.filter((r) => r.acquired);
        assert.equal(winners.length, 1);
        assert.ok(results.every((r) => r.holder === winners[0]?.holder), 'every loser is told who holds it');
      });
    });

    describe('hostile and oversized inputs', () => {
      it('are refused with INVALID_ARGUMENT before they reach the database', async () => {
        const { store } = await fresh();
        await store.upsertSite({ name: 's1' });
        await store.upsertHost(host('h1'));
        const deep: unknown[] = [];
        let cur = deep;
        for (let i = 0; i < 100_000; i++) { const next: unknown[] = []; cur.push(next); cur = next; }
        const cyclic: Record<string, unknown> = {};
        cyclic.self = cyclic;
        const bad: [string, () => Promise<unknown>][] = [
          ['a name with a slash', () => store.upsertSite({ name: 'a/b' })],
          ['the name ..', () => store.upsertSite({ name: '..' })],
          ['an empty name', () => store.upsertSite({ name: '' })],
          ['a name too long', () => store.upsertSite({ name: 'x'.repeat(MAX_NAME_CHARS + 1) })],
          ['SQL in a name', () => store.getHost("h1' or '1'='1")],
          ['an unknown field', () => store.upsertSite({ name: 's2', evil: true } as never)],
          ['a URL with credentials', () => store.upsertHost({ ...host('h2'), url: 'https://u:p@h2.example' })],
          ['a javascript: URL', () => store.upsertHost({ ...host('h2'), url: 'javascript:alert(1)' })],
          ['a negative capacity', () => store.upsertHost({ ...host('h2'), capacity: { memoryBytes: -1, vcpus: 1 } })],
          ['an unknown host state', () => store.setHostState('h1', 'exploded' as never)],
          ['a heartbeat at NaN', () => store.recordHostHeartbeat('h1', Number.NaN)],
          ['a datastore id that is not 32 hex', () => store.upsertDatastore({ id: 'A'.repeat(32), name: 'd', shared: false })],
          ['a VM config too large', () => store.upsertVm({ name: 'v', host: 'h1', state: 'stopped', config: { pad: 'x'.repeat(MAX_JSON_BYTES) }, disks: [] })],
          ['a VM config nested 100,000 deep', () => store.upsertVm({ name: 'v', host: 'h1', state: 'stopped', config: deep as never, disks: [] })],
          ['a cyclic VM config', () => store.upsertVm({ name: 'v', host: 'h1', state: 'stopped', config: cyclic as never, disks: [] })],
          ['a VM config with a BigInt', () => store.upsertVm({ name: 'v', host: 'h1', state: 'stopped', config: { n: 1n } as never, disks: [] })],
          ['a VM config with undefined', () => store.upsertVm({ name: 'v', host: 'h1', state: 'stopped', config: { n: undefined } as never, disks: [] })],
          ['a VM name the host would refuse', () => store.upsertVm({ name: 'v m', host: 'h1', state: 'stopped', config: {}, disks: [] })],
          ['a task kind with spaces', () => store.enqueueTask({ kind: 'vm migrate', target: 'x', requestedBy: 'a' })],
          ['a task target with a newline', () => store.enqueueTask({ kind: 'vm.migrate', target: 'vm:a\nFAKE LOG LINE', requestedBy: 'a' })],
          ['an empty requester', () => store.enqueueTask({ kind: 'vm.migrate', target: 'x', requestedBy: '' })],
          ['task params too large', () => store.enqueueTask({ kind: 'vm.migrate', target: 'x', requestedBy: 'a', params: 'x'.repeat(MAX_JSON_BYTES + 1) })],
          ['no kinds to claim', () => store.claimNextTask('w', [], 1000)],
          ['65 kinds to claim', () => store.claimNextTask('w', Array.from({ length: 65 }, (_, i) => `k${i}`), 1000)],
          ['a lease of 0', () => store.claimNextTask('w', ['vm.migrate'], 0)],
          ['a lease of a day', () => store.claimNextTask('w', ['vm.migrate'], 86_400_000)],
          ['a task id of -1', () => store.getTask(-1)],
          ['a task id of 1.5', () => store.getTask(1.5)],
          ['progress above 1', () => store.heartbeatTask(1, 'w', { leaseMs: 1000, progress: 1.5 })],
          ['progress NaN', () => store.heartbeatTask(1, 'w', { leaseMs: 1000, progress: Number.NaN })],
          ['an error code Ferry does not have', () => store.finishTask(1, 'w', { state: 'failed', error: { code: 'OOPS' as never, message: 'x' } })],
          ['an outcome state that is not final', () => store.finishTask(1, 'w', { state: 'running' } as never)],
          ['an event payload too large', () => store.appendEvent({ kind: 'x', subject: 'y', payload: 'x'.repeat(MAX_EVENT_PAYLOAD_BYTES) })],
          ['a duty name with SQL', () => store.tryAcquireDuty("x'; drop table duties; --", 'h', 1000)],
          ['a holder too long', () => store.tryAcquireDuty('scheduler', 'h'.repeat(200), 1000)],
          ['257 mounts', () => store.setHostDatastores('h1', Array.from({ length: 257 }, (_, i) => ({ datastoreId: DS1, mountName: `m${i}` })))],
        ];
        for (const [what, call] of bad) await assert.rejects(call(), { code: 'INVALID_ARGUMENT' }, what);
        // Quotes and SQL-looking text are data where free text is allowed: stored and read back verbatim.
        const sqlText = "vm:x'); drop table tasks; --";
        const t = await store.enqueueTask({ kind: 'vm.migrate', target: sqlText, requestedBy: 'Robert"); --' });
        assert.equal((await store.getTask(t.id)).target, sqlText);
        assert.deepEqual((await store.listTasks({ target: sqlText })).map((x) => x.id), [t.id]);
      });
    });

    describe('credentials', () => {
      const hash = (c: string): string => c.repeat(64);
      const cred = (id: string, kind: 'api' | 'join' | 'host', subject: string, secretHash: string, expiresAtMs?: number) =>
        ({ id: id.padStart(16, '0'), kind, subject, secretHash, ...(expiresAtMs !== undefined ? { expiresAtMs } : {}) });

      it('stores hashes, finds by hash, revokes; a hash is unique', async () => {
        const { store } = await fresh();
        const api = await store.createCredential(cred('1', 'api', 'admin', hash('a')));
        assert.deepEqual([api.kind, api.subject, api.revokedAtMs, api.spentAtMs], ['api', 'admin', null, null]);
        assert.deepEqual(await store.findCredential(hash('a')), api);
        assert.equal(await store.findCredential(hash('b')), null);
        await assert.rejects(store.createCredential(cred('2', 'api', 'other', hash('a'))), { code: 'ALREADY_EXISTS' });
        const revoked = await store.revokeCredential(api.id);
        assert.ok(revoked.revokedAtMs !== null);
        assert.deepEqual(await store.revokeCredential(api.id), revoked, 'revoking again keeps the first time');
        assert.deepEqual(await store.findCredential(hash('a')), revoked, 'a revoked credential is found: the caller refuses it');
        await assert.rejects(store.revokeCredential('f'.repeat(16)), { code: 'NOT_FOUND' });
        await assert.rejects(store.createCredential({ ...cred('3', 'api', 'x', 'not-a-hash') }), { code: 'INVALID_ARGUMENT' });
      });

      it('a join token is spent exactly once, even by racing joins; expired or revoked ones are refused; re-joining revokes the old host credential', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        await store.createCredential(cred('10', 'join', 'admin', hash('1'), START_MS + 60_000));
        const results = await Promise.all(['2', '3', '4', '5'].map((c, i) => store.spendJoinToken(hash('1'), cred(`2${i}`, 'host', 'h1', hash(c)))));
        const won = results.filter((r) => r !== null);
        assert.equal(won.length, 1, 'one join wins the token');
        assert.equal(won[0]?.kind, 'host');
        assert.equal((await store.findCredential(hash('1')))?.spentAtMs, START_MS);
        assert.equal(await store.spendJoinToken(hash('1'), cred('30', 'host', 'h1', hash('6'))), null, 'spent');

        await store.createCredential(cred('11', 'join', 'admin', hash('7'), START_MS + 1000));
        clock.advance(1000);
        assert.equal(await store.spendJoinToken(hash('7'), cred('31', 'host', 'h2', hash('8'))), null, 'expired');
        const j = await store.createCredential(cred('12', 'join', 'admin', hash('9')));
        await store.revokeCredential(j.id);
        assert.equal(await store.spendJoinToken(hash('9'), cred('32', 'host', 'h2', hash('c'))), null, 'revoked');
        await store.createCredential(cred('13', 'api', 'admin', hash('d')));
        assert.equal(await store.spendJoinToken(hash('d'), cred('33', 'host', 'h2', hash('e'))), null, 'an API token is no join token');

        await store.createCredential(cred('14', 'join', 'admin', hash('f')));
        const again = await store.spendJoinToken(hash('f'), cred('34', 'host', 'h1', hash('0')));
        assert.ok(again !== null);
        const old = won[0];
        assert.ok(old !== undefined && old !== null);
        assert.ok((await store.findCredential(hash(['2', '3', '4', '5'][results.indexOf(old)] ?? '')))?.revokedAtMs !== null, 'the old host credential is revoked');
        assert.equal((await store.findCredential(hash('0')))?.revokedAtMs, null);
      });
    });

    describe('the CA and host certificates', () => {
      const pem = (label: string, body: string): string => `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
      const FP1 = Array.from({ length: 32 }, () => 'AB').join(':');
      const FP2 = Array.from({ length: 32 }, () => 'CD').join(':');

      it('one CA per database: of two centers racing to make it, both keep the first; PEM only', async () => {
        const [a, b] = await onOneDatabase(2);
        assert.ok(a !== undefined && b !== undefined);
        assert.equal(await a.getCenterCa(), null);
        const [ra, rb] = await Promise.all([
          a.createCenterCa({ certPem: pem('CERTIFICATE', 'one'), keyPem: pem('PRIVATE KEY', 'k1') }),
          b.createCenterCa({ certPem: pem('CERTIFICATE', 'two'), keyPem: pem('PRIVATE KEY', 'k2') }),
        ]);
        assert.deepEqual(ra, rb, 'both answer the one kept');
        assert.deepEqual(await a.getCenterCa(), ra);
        assert.deepEqual(await b.createCenterCa({ certPem: pem('CERTIFICATE', 'three'), keyPem: pem('PRIVATE KEY', 'k3') }), ra, 'a later one does not replace it');
        await assert.rejects(a.createCenterCa({ certPem: 'not pem', keyPem: pem('PRIVATE KEY', 'k') }), { code: 'INVALID_ARGUMENT' });
      });

      it('records issued certificates by fingerprint, with their host and credential', async () => {
        const { store } = await fresh();
        const c = await store.recordHostCertificate({ fingerprint: FP1, host: 'h1', credentialId: '00000000000000c1', serial: '0a1b', notAfterMs: START_MS });
        assert.deepEqual([c.host, c.credentialId, c.serial, c.notAfterMs], ['h1', '00000000000000c1', '0a1b', START_MS]);
        assert.deepEqual(await store.findHostCertificate(FP1), c);
        assert.equal(await store.findHostCertificate(FP2), null);
        await assert.rejects(store.recordHostCertificate({ fingerprint: FP1, host: 'h2', credentialId: '00000000000000c2', serial: '01', notAfterMs: START_MS }), { code: 'ALREADY_EXISTS' });
        await assert.rejects(store.findHostCertificate('ab:cd'), { code: 'INVALID_ARGUMENT' });
      });
    });

    describe('mobility paths', () => {
      /** Sites s1 and s2; hosts a1, a2 in s1 and b1 in s2. */
      const fleet = async (store: CenterStore): Promise<void> => {
        await store.upsertSite({ name: 's1' });
        await store.upsertSite({ name: 's2' });
        for (const h of [host('a1'), host('a2'), host('b1', 's2')]) await store.upsertHost(h);
      };

      it('a database of schema 5 migrates to 6 with its data: an existing site gets a subnet when first needed', async () => {
        // Only the site is written at schema 5: this code reads host rows of schema 6 only (it always migrates first).
        const schema5 = MIGRATIONS.filter((m) => m.name < '0006');
        const { store: old, location } = await fresh({ migrations: schema5 });
        assert.equal(await old.schemaVersion(), 5);
        await old.upsertSite({ name: 'default', description: 'kept' });
        await old.close();
        const store = await openStore(location);
        assert.equal(await store.schemaVersion(), CODE_VERSION);
        assert.deepEqual([(await store.getSite('default')).description, (await store.getSite('default')).virtualSubnet], ['kept', null]);
        assert.equal((await store.upsertHost(host('h1', 'default'))).dataPlane, null);
        assert.equal(await store.siteSubnet('default'), '100.64.0.0/24');
        assert.equal((await store.allocatePath(pathInput(1, 'h1', 'h1'))).sourceAddress, '100.64.0.1');
      });

      it('gives concurrent live paths distinct addresses and VNIs, from each site\'s subnet, also with two stores racing', async () => {
        const [a, b] = await onOneDatabase(2);
        assert.ok(a !== undefined && b !== undefined);
        await fleet(a);
        const paths = await Promise.all(Array.from({ length: 50 }, (_, i) =>
          (i % 2 === 0 ? a : b).allocatePath(pathInput(i + 1, 'a1', i % 4 < 2 ? 'a2' : 'b1'))));
        const addresses = addressesOf(paths);
        assert.equal(new Set(addresses).size, addresses.length, 'no address is held twice');
        assert.equal(new Set(paths.map((p) => p.vni)).size, paths.length, 'no VNI is held twice');
        const s1 = parseCidr(await a.siteSubnet('s1'));
        const s2 = parseCidr(await b.siteSubnet('s2'));
        assert.notDeepEqual(s1, s2);
        for (const p of paths) {
          assert.equal(p.state, 'live');
          assert.ok(addressInCidr(s1, p.sourceAddress), p.sourceAddress);
          assert.ok(addressInCidr(p.targetSite === 's1' ? s1 : s2, p.targetAddress), p.targetAddress);
          assert.equal(p.targetSite, p.targetHost === 'b1' ? 's2' : 's1');
        }
        assert.equal((await a.listPaths({ state: 'live' })).length, 50);
      });

      it('release frees the addresses and VNI for reuse; releasing twice is fine; the record stays', async () => {
        const { store } = await fresh({ clock: manualClock().now });
        await fleet(store);
        const p1 = await store.allocatePath(pathInput(1, 'a1', 'a2'));
        assert.deepEqual([p1.sourceAddress, p1.targetAddress, p1.vni], ['100.64.0.1', '100.64.0.2', 1], 'the lowest usable addresses of the first default /24');
        assert.equal(await store.releasePath(p1.pathId, 'migration succeeded'), true);
        assert.equal(await store.releasePath(p1.pathId, 'again'), false);
        const released = await store.getPath(p1.pathId);
        assert.deepEqual([released.state, released.releaseReason, released.releasedAtMs], ['released', 'migration succeeded', START_MS]);
        const p2 = await store.allocatePath(pathInput(2, 'a1', 'a2'));
        assert.deepEqual([p2.sourceAddress, p2.targetAddress, p2.vni], [p1.sourceAddress, p1.targetAddress, p1.vni]);
        await assert.rejects(store.releasePath(pathIdOf(99), 'x'), { code: 'NOT_FOUND' });
        await assert.rejects(store.releasePath('not-a-path', 'x'), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.releasePath(p2.pathId, ''), { code: 'INVALID_ARGUMENT' });
      });

      it('a full subnet is ADDRESS_EXHAUSTED and leaves nothing behind; a release makes room', async () => {
        const { store } = await fresh();
        await fleet(store);
        await store.setSiteSubnet('s1', '100.64.9.0/29');
        const live = [];
        for (let i = 1; i <= 3; i++) live.push(await store.allocatePath(pathInput(i, 'a1', 'a2')));
        assert.deepEqual(addressesOf(live), ['100.64.9.1', '100.64.9.2', '100.64.9.3', '100.64.9.4', '100.64.9.5', '100.64.9.6']);
        await assert.rejects(store.allocatePath(pathInput(4, 'a1', 'a2')), { code: 'ADDRESS_EXHAUSTED' });
        await assert.rejects(store.allocatePath(pathInput(5, 'a1', 'b1')), { code: 'ADDRESS_EXHAUSTED' }, 'the source side is full too');
        await assert.rejects(store.getPath(pathIdOf(4)), { code: 'NOT_FOUND' });
        assert.equal((await store.listPaths({ state: 'live' })).length, 3);
        assert.equal((await store.allocatePath(pathInput(6, 'b1', 'b1'))).sourceSite, 's2', 'another site is not affected');
        await store.releasePath(pathIdOf(2), 'cancelled');
        const again = await store.allocatePath(pathInput(7, 'a2', 'a1'));
        assert.deepEqual([again.sourceAddress, again.targetAddress], ['100.64.9.3', '100.64.9.4']);
      });

      it('site subnets: lazily the lowest free /24; set by hand only if valid, not overlapping, and with no live paths', async () => {
        const { store } = await fresh();
        await fleet(store);
        assert.equal((await store.getSite('s1')).virtualSubnet, null);
        assert.equal((await store.setSiteSubnet('s1', '100.64.0.0/23')).virtualSubnet, '100.64.0.0/23');
        assert.equal(await store.siteSubnet('s2'), '100.64.2.0/24', 'the lowest /24 overlapping no other site');
        assert.equal((await store.getSite('s2')).virtualSubnet, '100.64.2.0/24', 'and kept');
        await assert.rejects(store.setSiteSubnet('s2', '100.64.1.0/24'), { code: 'ALREADY_EXISTS' });
        await assert.rejects(store.setSiteSubnet('s2', '100.64.0.0/16'), { code: 'ALREADY_EXISTS' });
        for (const bad of ['10.0.0.0/24', '192.168.0.0/24', '100.64.3.1/24', '100.64.3.0/30', '100.64.0.0/12', 'junk', '', 'x'.repeat(100), '100.64.3.0/24 ']) {
          await assert.rejects(store.setSiteSubnet('s2', bad), { code: 'INVALID_ARGUMENT' }, bad);
        }
        await assert.rejects(store.setSiteSubnet('nowhere', '100.64.8.0/24'), { code: 'NOT_FOUND' });
        await assert.rejects(store.siteSubnet('nowhere'), { code: 'NOT_FOUND' });
        const p = await store.allocatePath(pathInput(1, 'b1', 'b1'));
        assert.equal(p.sourceAddress, '100.64.2.1');
        await assert.rejects(store.setSiteSubnet('s2', '100.64.8.0/24'), { code: 'BUSY' });
        assert.equal((await store.setSiteSubnet('s2', '100.64.2.0/24')).virtualSubnet, '100.64.2.0/24', 'setting the subnet it has is a no-op');
        await store.releasePath(p.pathId, 'done');
        assert.equal((await store.setSiteSubnet('s2', '100.64.8.0/24')).virtualSubnet, '100.64.8.0/24');
      });

      it('renews only a live, unexpired path, at most MAX_PATH_TTL_MS ahead', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        await fleet(store);
        const p = await store.allocatePath(pathInput(1, 'a1', 'b1', { ttlMs: 10_000 }));
        assert.equal(p.expiresAtMs, START_MS + 10_000);
        assert.equal((await store.renewPath(p.pathId, START_MS + 20_000)).expiresAtMs, START_MS + 20_000);
        await assert.rejects(store.renewPath(p.pathId, START_MS + MAX_PATH_TTL_MS + 1), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.renewPath(p.pathId, START_MS), { code: 'INVALID_ARGUMENT' });
        clock.advance(20_000);
        await assert.rejects(store.renewPath(p.pathId, START_MS + 30_000), { code: 'PATH_REFUSED' }, 'expired: the hosts removed it');
        const q = await store.allocatePath(pathInput(2, 'a1', 'b1'));
        await store.releasePath(q.pathId, 'failed');
        await assert.rejects(store.renewPath(q.pathId, START_MS + 40_000), { code: 'PATH_REFUSED' });
        await assert.rejects(store.renewPath(pathIdOf(3), START_MS + 40_000), { code: 'NOT_FOUND' });
      });

      it('answers the expired live paths, soonest first, at most `limit`', async () => {
        const { store } = await fresh({ clock: manualClock().now });
        await fleet(store);
        for (const [i, ttlMs] of [[1, 3000], [2, 1000], [3, 2000], [4, 9000]] as const) await store.allocatePath(pathInput(i, 'a1', 'b1', { ttlMs }));
        await store.releasePath(pathIdOf(3), 'done');
        assert.deepEqual((await store.expiredLivePaths(START_MS + 3000, 10)).map((p) => p.pathId), [pathIdOf(2), pathIdOf(1)]);
        assert.deepEqual((await store.expiredLivePaths(START_MS + 9000, 2)).map((p) => p.pathId), [pathIdOf(2), pathIdOf(1)]);
        assert.deepEqual(await store.expiredLivePaths(START_MS + 999, 10), []);
        await assert.rejects(store.expiredLivePaths(START_MS, MAX_LIST_LIMIT + 1), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.expiredLivePaths(-1, 1), { code: 'INVALID_ARGUMENT' });
      });

      it('lists paths by state, host and task, paged; a task\'s paths oldest first', async () => {
        const clock = manualClock();
        const { store } = await fresh({ clock: clock.now });
        await fleet(store);
        const t = await store.enqueueTask({ kind: 'vm.migrate', target: 'vm:web', requestedBy: 'alice' });
        await store.allocatePath(pathInput(3, 'a1', 'b1', { taskId: t.id }));
        clock.advance(1);
        await store.allocatePath(pathInput(1, 'a2', 'a1', { taskId: t.id }));
        await store.allocatePath(pathInput(2, 'a2', 'b1'));
        await store.releasePath(pathIdOf(3), 'retried');
        assert.deepEqual((await store.pathsOfTask(t.id)).map((p) => p.pathId), [pathIdOf(3), pathIdOf(1)]);
        assert.deepEqual((await store.listPaths({ taskId: t.id, state: 'live' })).map((p) => p.pathId), [pathIdOf(1)]);
        assert.deepEqual((await store.listPaths({ host: 'b1' })).map((p) => p.pathId), [pathIdOf(2), pathIdOf(3)]);
        assert.deepEqual((await store.listPaths({ host: 'a2', limit: 1 })).map((p) => p.pathId), [pathIdOf(1)]);
        assert.deepEqual((await store.listPaths({ host: 'a2', after: pathIdOf(1) })).map((p) => p.pathId), [pathIdOf(2)]);
        assert.deepEqual(await store.pathsOfTask(t.id + 1), []);
        await assert.rejects(store.listPaths({ limit: MAX_LIST_LIMIT + 1 }), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.listPaths({ state: 'gone' as 'live' }), { code: 'INVALID_ARGUMENT' });
        const p = await store.getPath(pathIdOf(1));
        assert.deepEqual([p.taskId, p.sourceHost, p.targetHost, p.driver, p.secret, p.firstPort, p.portCount], [t.id, 'a2', 'a1', 'portable', secretOf(1), 7100, 1]);
      });

      it('refuses hostile allocations: bad ids, secrets, ports, lifetimes; a used path id; hosts and tasks that do not exist', async () => {
        const { store } = await fresh();
        await fleet(store);
        const bad: Partial<PathAllocationInput>[] = [
          { pathId: 'A'.repeat(32) }, { pathId: '0'.repeat(31) }, { secret: 'short' }, { secret: `${secretOf(1)}=` }, { firstPort: 80 },
          { firstPort: 65535, portCount: 2 }, { portCount: 0 }, { portCount: 17 }, { ttlMs: 0 }, { ttlMs: MAX_PATH_TTL_MS + 1 },
          { driver: 'wireguard' as 'portable' }, { kind: 'Migration!' }, { taskId: -1 },
        ];
        for (const extra of bad) await assert.rejects(store.allocatePath(pathInput(1, 'a1', 'b1', extra)), { code: 'INVALID_ARGUMENT' }, JSON.stringify(extra));
        await assert.rejects(store.allocatePath({ ...pathInput(1, 'a1', 'b1'), extra: 1 } as PathAllocationInput), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(store.allocatePath(pathInput(1, 'a1', 'ghost')), { code: 'NOT_FOUND' });
        await assert.rejects(store.allocatePath(pathInput(1, 'a1', 'b1', { taskId: 12345 })), { code: 'NOT_FOUND' });
        const p = await store.allocatePath(pathInput(1, 'a1', 'b1'));
        await assert.rejects(store.allocatePath(pathInput(1, 'a1', 'b1')), { code: 'ALREADY_EXISTS' });
        await store.releasePath(p.pathId, 'done');
        await assert.rejects(store.allocatePath(pathInput(1, 'a1', 'b1')), { code: 'ALREADY_EXISTS' }, 'a released path id is not reused either');
        assert.equal((await store.listPaths()).length, 1);
      });

      it('hosts\' data planes: a round trip, kept by upserts, cleared by null; hostile reports refused', async () => {
        const { store } = await fresh();
        await fleet(store);
        assert.equal((await store.getHost('a1')).dataPlane, null);
        const dp = { drivers: [{ kind: 'kernel' as const, endpoint: { host: '192.0.2.10', port: 4789 } }, { kind: 'portable' as const, endpoint: { host: 'a1.example', port: 7443 } }] };
        assert.deepEqual((await store.setHostDataPlane('a1', dp)).dataPlane, dp);
        assert.deepEqual((await store.getHost('a1')).dataPlane, dp);
        assert.deepEqual((await store.upsertHost(host('a1'))).dataPlane, dp, 'an upsert keeps it');
        assert.deepEqual((await store.listHosts({ site: 's1' })).map((h) => h.dataPlane), [dp, null]);
        const ep = { host: '192.0.2.1', port: 1 };
        const hostile: unknown[] = [
          { drivers: Array.from({ length: MAX_DATA_PLANE_DRIVERS + 1 }, () => ({ kind: 'portable', endpoint: ep })) },
          { drivers: [{ kind: 'portable', endpoint: ep }, { kind: 'portable', endpoint: ep }] },
          { drivers: [{ kind: 'wireguard', endpoint: ep }] },
          { drivers: [{ kind: 'portable', endpoint: { host: 'a b', port: 1 } }] },
          { drivers: [{ kind: 'portable', endpoint: { host: 'x'.repeat(10_000), port: 1 } }] },
          { drivers: [{ kind: 'portable', endpoint: { host: 'h', port: 0 } }] },
          { drivers: [{ kind: 'portable', endpoint: { host: 'h', port: 70_000 } }] },
          { drivers: [{ kind: 'portable', endpoint: ep, extra: true }] },
          { drivers: [], more: 1 }, { drivers: 'portable' }, 'portable', 42, [],
        ];
        for (const h of hostile) await assert.rejects(store.setHostDataPlane('a2', h as typeof dp), { code: 'INVALID_ARGUMENT' }, JSON.stringify(h).slice(0, 80));
        assert.equal((await store.getHost('a2')).dataPlane, null, 'nothing was stored');
        assert.equal((await store.setHostDataPlane('a1', null)).dataPlane, null);
        assert.deepEqual((await store.setHostDataPlane('a1', { drivers: [] })).dataPlane, { drivers: [] });
        await assert.rejects(store.setHostDataPlane('ghost', dp), { code: 'NOT_FOUND' });
      });
    });

    it('closes: every later call is STORE_UNAVAILABLE, and closing twice is fine', async () => {
      const { store } = await fresh();
      await store.close();
      await store.close();
      await assert.rejects(store.listSites(), { code: 'STORE_UNAVAILABLE' });
      await assert.rejects(store.enqueueTask({ kind: 'vm.start', target: 'x', requestedBy: 'a' }), { code: 'STORE_UNAVAILABLE' });
    });
  });
}
