/**
 * Every live migration through the center goes over its own virtual path (the portable driver here:
 * real host processes on loopback, an in-process center on SQLite): the task says so, the source knows
 * the target only by name and virtual address, and when the operation ends — succeeded, cancelled, or
 * refused — both hosts hold nothing of it and the store has released its addresses. `isolation: false`
 * and a host without path drivers connect directly, and say so. A third party that knows everything
 * but the secret is refused and the operation is unharmed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { MiB } from '../../src/lib/units.js';
import type { CenterTaskView } from '../../src/api/center-v1.js';
import type { PathListView } from '../../src/api/host-v1.js';
import { createPortableDriver } from '../../src/dataplane/path/portable-driver.js';
import { MobilityManager } from '../../src/center/mobility/paths.js';
import { VirtualPath } from '../../src/dataplane/path/virtual-path.js';
import type { PathSpec } from '../../src/dataplane/path/spec.js';
import { silentLogger } from '../../src/lib/logger.js';
import { TEST_TOKEN, startHost, until, type TestHost } from '../helpers/hosts.js';
import { stopCenterFleet } from '../helpers/copy-fleet.js';
import { runFerry } from '../helpers/cli.js';
import { sampleValue } from '../helpers/metrics.js';
import { join } from 'node:path';
import { collectEvents, startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';

const TASK_TIMEOUT_MS = 90_000;
/** Slow enough (32 MiB at 4 MiB/s ≈ 8 s) to act on a migration while it runs. */
const SLOW = { bandwidthBytesPerSec: 4 * MiB };

interface PathIsolation { mode: 'path'; pathId: string; driver: string; sourceAddress: string; targetAddress: string }

/** Dials the spec's peer at its first port from a tunnel endpoint of this process, as a host holding that spec would. */
async function dialAs(spec: PathSpec): Promise<void> {
  const driver = await createPortableDriver({ listen: { host: '127.0.0.1', port: 0 } });
  try {
    const path = new VirtualPath(spec, await driver.open(spec, silentLogger()));
    try {
      (await path.dial({ host: spec.peerAddress, port: spec.firstPort }, { timeoutMs: 5000 })).destroy();
    } finally {
      await path.close();
    }
  } finally {
    await driver.close();
  }
}

describe('migrations over their own virtual path (portable driver, real host processes)', () => {
  let tc: TestCenter;
  const hosts = new Map<string, TestHost>();
  const host = (name: string): TestHost => { const h = hosts.get(name); assert.ok(h !== undefined); return h; };
  const wait = (t: CenterTaskView): Promise<CenterTaskView> => tc.admin.waitForTask(t.id, { timeoutMs: TASK_TIMEOUT_MS });
  const succeeded = async (t: CenterTaskView): Promise<CenterTaskView> => {
    const done = await wait(t);
    assert.equal(done.state, 'succeeded', `task ${done.id} ${done.kind}: ${done.state} ${JSON.stringify(done.error)}`);
    return done;
  };
  const noPaths = async (...names: string[]): Promise<void> => {
    for (const n of names) await until(async () => (await host(n).client.listPaths()).paths.length === 0, `host ${n} holds no path`, 15_000);
  };

  before(async () => {
    tc = await startTestCenter({ taskLeaseMs: 3000, heartbeatIntervalMs: 500, missedHeartbeats: 20 });
    for (const [name, args] of [['ia', []], ['ib', []], ['ic', ['--path-drivers', 'none']]] as const) {
      const { token } = await tc.admin.createJoinToken();
      const from = await tc.center.store.latestEventId();
      hosts.set(name, await startHost(name, { args: [...tc.hostArgs(token), ...args] }));
      await waitForEvent(tc.admin, from, (e) => e.kind === 'host.connected' && e.subject === `host:${name}`);
    }
    // The operator's subnet for the site (validated at the API), which every path then takes its addresses from.
    await assert.rejects(tc.admin.setSiteSubnet('default', '10.0.0.0/24'), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(tc.admin.setSiteSubnet('default', '100.64.200.7/24'), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(tc.admin.setSiteSubnet('nowhere', '100.64.200.0/24'), { code: 'NOT_FOUND' });
    assert.equal((await tc.admin.setSiteSubnet('default', '100.64.200.0/24')).virtualSubnet, '100.64.200.0/24');
    assert.deepEqual((await tc.admin.listSites()).sites.map((x) => [x.name, x.virtualSubnet]), [['default', '100.64.200.0/24']]);
    // The data plane of each host is known from its heartbeats before a migration is planned.
    await until(async () => (await tc.center.store.getHost('ib')).dataPlane !== null, 'ib reported its path drivers');
  });
  after(async () => { await stopCenterFleet(hosts.values(), tc); });

  it('migrates over a path: the source knows the target by name and virtual address only; afterwards nothing of the path is left', async () => {
    const listed: PathListView = await host('ia').client.listPaths();
    assert.deepEqual(listed.drivers.map((d) => d.kind), ['portable'], 'the host reports its driver');
    await succeeded(await tc.admin.createVm({ name: 'i-web', host: 'ia', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200 fill=1 claim=all' }));
    const from = await tc.center.store.latestEventId();
    const done = await succeeded(await tc.admin.migrateVm('i-web', { to: 'ib' }));
    const result = done.result as { migrationId: string; isolation: PathIsolation; guestDowntimeMs: number | null };
    assert.equal(result.isolation.mode, 'path');
    assert.equal(typeof result.guestDowntimeMs, 'number', 'the guest-observed downtime came back through the center\'s broker');
    assert.equal(result.isolation.driver, 'portable');
    assert.match(result.isolation.sourceAddress, /^100\.64\.200\.\d+$/, 'a virtual address of the site\'s subnet');
    assert.match(result.isolation.targetAddress, /^100\.64\.200\.\d+$/);
    assert.notEqual(result.isolation.sourceAddress, result.isolation.targetAddress);
    assert.equal((await host('ib').client.vm('i-web')).state, 'running');

    // The record the source keeps, the center's events and the hosts' lines of this migration: no physical address, no URL of a host.
    const status = await host('ia').client.migration(result.migrationId);
    const record = JSON.stringify(status.record);
    assert.match(record, /host ib \(virtual path [0-9a-f]{8}\)/, 'the target is named, with its path');
    const events = JSON.stringify(await collectEvents(tc.admin, from, await tc.center.store.latestEventId()));
    const lines = [...hosts.values()].flatMap((h) => h.log().split('\n')).filter((l) => l.includes(result.migrationId) || l.includes(result.isolation.pathId.slice(0, 8)));
    assert.ok(lines.length > 0, 'the hosts logged the migration');
    for (const [what, text] of [['record', record], ['events', events], ['log lines', lines.join('\n')]] as const) {
      assert.doesNotMatch(text, /127\.0\.0\.1|localhost/, `the migration's ${what} hold no physical address`);
      for (const h of hosts.values()) assert.ok(!text.includes(h.url), `the migration's ${what} hold no host URL`);
    }
    await noPaths('ia', 'ib');
    const row = await tc.center.store.getPath(result.isolation.pathId);
    assert.equal(row.state, 'released', 'the store released the addresses');

    // The ended operation's own secret (read from the store) no longer opens anything on the target.
    const endpoint = (await host('ib').client.listPaths()).drivers[0]?.endpoint;
    assert.ok(endpoint !== undefined);
    const stale: PathSpec = {
      pathId: row.pathId, side: 'source', driver: 'portable', localAddress: row.sourceAddress, peerAddress: row.targetAddress, peerEndpoint: endpoint,
      firstPort: row.firstPort, portCount: row.portCount, vni: row.vni, secret: row.secret, expiresAtMs: Date.now() + 60_000,
    };
    await assert.rejects(dialAs(stale), { code: 'PATH_REFUSED' }, 'the old secret is refused');
  });

  it('a cancelled migration rolls back and removes the path on both hosts', async () => {
    await succeeded(await tc.admin.createVm({ name: 'i-cancel', host: 'ia', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200 fill=1 claim=all' }));
    const from = await tc.center.store.latestEventId();
    const task = await tc.admin.migrateVm('i-cancel', { to: 'ib', options: SLOW });
    await waitForEvent(tc.admin, from, (e) => e.kind === 'migration.progress' && (e.payload as { taskId?: number }).taskId === task.id);
    const open = (await host('ib').client.listPaths()).paths;
    assert.equal(open.length, 1, 'the target has the path while the migration runs');
    await assert.rejects(tc.admin.setSiteSubnet('default', '100.64.201.0/24'), { code: 'BUSY' }, 'no renumbering under a live path');
    assert.equal(sampleValue(await host('ib').client.metrics(), 'ferry_paths_open', { driver: 'portable' }), 1, 'the open path is counted');
    const cli = await runFerry(['host', 'paths', '--host', host('ib').url], { env: { FERRY_TOKEN: TEST_TOKEN, FERRY_CONFIG: join(tc.dataDir, 'no-client-config.json') } });
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /^driver portable\ttunnel endpoint /m);
    assert.match(cli.stdout, new RegExp(`^path ${open[0]?.pathId.slice(0, 8) ?? '-'}\ttarget\tportable\t100\\.`, 'm'), 'ferry host paths shows the open path');
    await tc.admin.cancelTask(task.id);
    const done = await wait(task);
    assert.equal(done.state, 'cancelled');
    assert.equal((await host('ia').client.vm('i-cancel')).state, 'running', 'the VM still runs on its source');
    await noPaths('ia', 'ib');
    assert.equal(sampleValue(await host('ib').client.metrics(), 'ferry_paths_open', { driver: 'portable' }), 0);
  });

  it('a third party with the path id and addresses but not the secret is refused; the migration is unharmed', async () => {
    await succeeded(await tc.admin.createVm({ name: 'i-third', host: 'ia', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200 fill=1 claim=all' }));
    const from = await tc.center.store.latestEventId();
    const task = await tc.admin.migrateVm('i-third', { to: 'ib', options: SLOW });
    await waitForEvent(tc.admin, from, (e) => e.kind === 'migration.progress' && (e.payload as { taskId?: number }).taskId === task.id);
    const view = (await host('ib').client.listPaths()).paths[0];
    assert.ok(view !== undefined);
    const endpoint = (await host('ib').client.listPaths()).drivers[0]?.endpoint;
    assert.ok(endpoint !== undefined);
    // Everything the path's source end has, but a secret of its own.
    const forged: PathSpec = {
      pathId: view.pathId, side: 'source', driver: 'portable', localAddress: view.peerAddress, peerAddress: view.localAddress, peerEndpoint: endpoint,
      firstPort: view.firstPort, portCount: view.portCount, vni: 1, secret: randomBytes(32).toString('base64url'), expiresAtMs: Date.now() + 60_000,
    };
    await assert.rejects(dialAs(forged), { code: 'PATH_REFUSED' });
    await succeeded(task);
    assert.equal((await host('ib').client.vm('i-third')).state, 'running');
    await noPaths('ia', 'ib');
  });

  it('a path nobody releases (its center gone) expires: released in the store by the sweep, removed by both hosts', async () => {
    const [source, target] = await Promise.all([tc.center.store.getHost('ia'), tc.center.store.getHost('ib')]);
    const made = await new MobilityManager(tc.center.store).allocate({ taskId: null, kind: 'test', source, target, driver: 'portable', ttlMs: 3000, firstPort: 7300, portCount: 1 });
    await host('ib').client.putPath(made.targetSpec);
    await host('ia').client.putPath(made.sourceSpec);
    assert.equal((await host('ia').client.listPaths()).paths.length, 1);
    await until(async () => (await tc.center.store.getPath(made.row.pathId)).state === 'released', 'the center released the expired path', 15_000);
    assert.equal((await tc.center.store.getPath(made.row.pathId)).releaseReason, 'expired');
    await noPaths('ia', 'ib');
  });

  it('isolation: false, and a host without path drivers, connect directly and say why', async () => {
    await succeeded(await tc.admin.createVm({ name: 'i-direct', host: 'ia', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200 fill=1 claim=all' }));
    const asked = await succeeded(await tc.admin.migrateVm('i-direct', { to: 'ib', isolation: false }));
    assert.deepEqual((asked.result as { isolation: unknown }).isolation, { mode: 'direct', reason: 'isolation was turned off for this migration' });
    const none = await succeeded(await tc.admin.migrateVm('i-direct', { to: 'ic' }));
    const why = (none.result as { isolation: { mode: string; reason: string } }).isolation;
    assert.equal(why.mode, 'direct');
    assert.match(why.reason, /share no virtual-path driver/);
  });
});
