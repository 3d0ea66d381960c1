/**
 * Orchestration through the center with real host processes (`ferry host --center URL --join-token T`)
 * and an in-process center on SQLite: create (placed by the center), stop/start, live migration with
 * and without a chosen target, admission by budget (queued with the reason, then run), maintenance
 * mode with evacuation, and refusals with their reasons. Every wait is on tasks or events, never a sleep.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MiB } from '../../src/lib/units.js';
import type { CenterTaskView } from '../../src/api/center-v1.js';
import { removeHostData, startHost, stopHost, type TestHost } from '../helpers/hosts.js';
import { startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';

/** Slow enough (32 MiB at 8 MiB/s ≈ 4 s) that a second migration from the same host is queued behind the first. */
const SLOW = { bandwidthBytesPerSec: 8 * MiB };
const TASK_TIMEOUT_MS = 90_000;

describe('orchestration through the center (real host processes, SQLite)', () => {
  let tc: TestCenter;
  const hosts: TestHost[] = [];
  const wait = (t: CenterTaskView): Promise<CenterTaskView> => tc.admin.waitForTask(t.id, { timeoutMs: TASK_TIMEOUT_MS });
  const succeeded = async (t: CenterTaskView): Promise<CenterTaskView> => {
    const done = await wait(t);
    assert.equal(done.state, 'succeeded', `task ${done.id} ${done.kind} ${done.target}: ${done.state} ${JSON.stringify(done.error)}`);
    return done;
  };

  before(async () => {
    // Hosts busy booting VMs (instrumenting is synchronous) may be silent for seconds on a loaded machine: 10 s before a host counts as disconnected.
    tc = await startTestCenter({ budgets: { hostOutboundMigrations: 1 }, taskLeaseMs: 3000, heartbeatIntervalMs: 500, missedHeartbeats: 20 });
    for (const name of ['oa', 'ob', 'oc']) {
      const { token } = await tc.admin.createJoinToken();
      const from = await tc.center.store.latestEventId();
      const h = await startHost(name, { args: [...tc.hostArgs(token), '--memory-limit', name === 'oa' ? '512MiB' : '256MiB'] });
      hosts.push(h);
      await waitForEvent(tc.admin, from, (e) => e.kind === 'host.connected' && e.subject === `host:${name}`);
    }
  });
  after(async () => {
    for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
    await tc.close();
  });

  it('creates where asked or where most memory is free, stops and starts, refuses a taken name and an image it does not have', async () => {
    const placed = await succeeded(await tc.admin.createVm({ name: 'o-web', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200' }));
    assert.deepEqual(placed.result, { vm: 'o-web', host: 'oa', state: 'running' }, 'oa has the most memory');
    const vm = await tc.admin.vm('o-web');
    assert.deepEqual([vm.host, vm.state], ['oa', 'running']);
    assert.equal((await hosts[0]?.client.vm('o-web'))?.state, 'running', 'the host runs it');
    await assert.rejects(tc.admin.createVm({ name: 'o-web', image: 'dirtier', memoryBytes: 32 * MiB }), { code: 'ALREADY_EXISTS' });

    const chosen = await succeeded(await tc.admin.createVm({ name: 'o-db', host: 'ob', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB' }));
    assert.equal((chosen.result as { host: string }).host, 'ob');
    const stopped = await succeeded(await tc.admin.stopVm('o-db'));
    const hostState = (await hosts[1]?.client.vm('o-db'))?.state;
    assert.notEqual(hostState, 'running');
    assert.deepEqual([(stopped.result as { state: string }).state, (await tc.admin.vm('o-db')).state], [hostState, hostState], 'the row takes what the host says');
    await succeeded(await tc.admin.startVm('o-db'));
    assert.equal((await tc.admin.vm('o-db')).state, 'running');

    const missing = await wait(await tc.admin.createVm({ name: 'o-bad', image: 'no-such-guest', memoryBytes: 32 * MiB }));
    assert.deepEqual([missing.state, missing.error?.code], ['failed', 'IMAGE_INVALID']);
    await assert.rejects(tc.admin.vm('o-bad'), { code: 'NOT_FOUND' }, 'a failed create leaves no row');
    const tooBig = await wait(await tc.admin.createVm({ name: 'o-huge', image: 'dirtier', memoryBytes: 4096 * MiB }));
    assert.deepEqual([tooBig.state, tooBig.error?.code], ['failed', 'NO_COMPATIBLE_HOST']);
    assert.match(tooBig.error?.message ?? '', /host oa has \d+ bytes of memory left/);
    await assert.rejects(tc.admin.createVm({ name: 'o-x', memoryBytes: 32 * MiB }), { code: 'BAD_REQUEST' }, 'no image at all');
    await assert.rejects(tc.admin.migrateVm('nope'), { code: 'NOT_FOUND' });
  });

  it('migrates where asked and where the center picks; a second migration from one host waits with the reason, then runs', async () => {
    await succeeded(await tc.admin.createVm({ name: 'o-m1', host: 'oa', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200' }));
    await succeeded(await tc.admin.createVm({ name: 'o-m2', host: 'oa', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200' }));
    const from = await tc.center.store.latestEventId();
    const first = await tc.admin.migrateVm('o-m1', { to: 'oc', options: SLOW });
    const second = await tc.admin.migrateVm('o-m2', { options: SLOW });
    // The budget of 1 outbound migration per host: the second waits, and says why.
    const waiting = await waitForEvent(tc.admin, from, (e) => e.subject === `task:${second.id}` && typeof (e.payload as { waitingReason: unknown }).waitingReason === 'string'
      && /outbound/.test((e.payload as { waitingReason: string }).waitingReason));
    assert.equal((waiting.payload as { waitingReason: string }).waitingReason, 'host oa: 1 of 1 outbound migrations running');
    const m1 = await succeeded(first);
    assert.deepEqual([(m1.result as { to: string }).to, (m1.plan as { target: string }).target], ['oc', 'oc']);
    const m2 = await succeeded(second);
    const target2 = (m2.result as { to: string }).to;
    assert.ok(target2 === 'ob' || target2 === 'oc', `picked ${target2}`);
    assert.ok((m2.startedAtMs ?? 0) >= (m1.endedAtMs ?? Infinity) - 1000, 'the second ran after the first (its start follows the first\'s end)');
    assert.equal((await tc.admin.vm('o-m1')).host, 'oc');
    assert.equal((await tc.admin.vm('o-m2')).host, target2);
    const progress = await waitForEvent(tc.admin, from, (e) => e.kind === 'migration.progress' && e.subject === 'vm:o-m1');
    assert.ok(typeof (progress.payload as { round: unknown }).round === 'number', 'rounds travel as events');
    // The engine downtime's breakdown travels in the finished event and the task's result: its parts, in order.
    const finished = await waitForEvent(tc.admin, from, (e) => e.kind === 'migration.finished' && e.subject === 'vm:o-m1');
    const breakdown = (finished.payload as { switchoverMs: Record<string, number> | null }).switchoverMs;
    assert.deepEqual(Object.keys(breakdown ?? {}), ['pauseMs', 'finalRoundMs', 'stateMs', 'commitMs']);
    assert.ok(Object.values(breakdown ?? {}).every((v) => typeof v === 'number' && v >= 0));
    assert.deepEqual((m1.result as { switchoverMs: unknown }).switchoverMs, breakdown);
    // Exactly one host runs each VM.
    const holders = await Promise.all(hosts.map(async (h) => (await h.client.listVms()).some((v) => v.name === 'o-m1')));
    assert.deepEqual(holders, [false, false, true]);
    const same = await wait(await tc.admin.migrateVm('o-m1', { to: 'oc' }));
    assert.deepEqual([same.state, same.error?.code], ['failed', 'INVALID_ARGUMENT']);
  });

  it('maintenance: every running VM leaves by live migration, the host is in-maintenance and never chosen; exit returns it', async () => {
    const onA = (await tc.admin.listVms({ host: 'oa' })).vms.filter((v) => v.state === 'running').map((v) => v.name);
    assert.ok(onA.length >= 1, 'oa has VMs to evacuate');
    const task = await tc.admin.maintenance('oa', 'enter');
    const done = await succeeded(task);
    assert.equal((done.result as { moved: number }).moved, onA.length);
    assert.equal((await tc.admin.host('oa')).state, 'in-maintenance');
    assert.equal((await hosts[0]?.client.listVms())?.filter((v) => v.state === 'running').length, 0, 'nothing runs on oa');
    for (const name of onA) assert.notEqual((await tc.admin.vm(name)).host, 'oa');
    const elsewhere = await succeeded(await tc.admin.createVm({ name: 'o-after', image: 'dirtier', memoryBytes: 32 * MiB, cmdline: 'hot=1MiB' }));
    assert.notEqual((elsewhere.result as { host: string }).host, 'oa', 'a host in maintenance is not placed on');
    await succeeded(await tc.admin.maintenance('oa', 'exit'));
    assert.equal((await tc.admin.host('oa')).state, 'connected');
  });

  it('an evacuation that cannot finish says which VM and why, and leaves the host entering-maintenance', async () => {
    // With oa in maintenance, the only other host is ob: a VM on oc bigger than ob's free memory cannot move.
    await succeeded(await tc.admin.maintenance('oa', 'enter'));
    const free = async (h: string): Promise<number> => {
      const used = (await tc.admin.listVms({ host: h })).vms.reduce((sum, v) => sum + ((v.config as { memoryBytes?: number }).memoryBytes ?? 0), 0);
      return (await tc.admin.host(h)).capacity.memoryBytes - used;
    };
    if (await free('oc') <= await free('ob')) await succeeded(await tc.admin.createVm({ name: 'o-filler', host: 'ob', image: 'dirtier', memoryBytes: (await free('ob')) - (await free('oc')) + 32 * MiB, cmdline: 'hot=1MiB' }));
    const fatBytes = Math.floor((await free('oc')) / MiB) * MiB;
    assert.ok(fatBytes > (await free('ob')), 'ob cannot take it');
    await succeeded(await tc.admin.createVm({ name: 'o-fat', host: 'oc', image: 'dirtier', memoryBytes: fatBytes, cmdline: 'hot=1MiB' }));
    const t = await wait(await tc.admin.maintenance('oc', 'enter'));
    assert.deepEqual([t.state, t.error?.code], ['failed', 'NO_COMPATIBLE_HOST']);
    assert.match(t.error?.message ?? '', /o-fat: .*no compatible host/);
    assert.equal((await tc.admin.host('oc')).state, 'entering-maintenance');
    assert.equal((await tc.admin.vm('o-fat')).state, 'running', 'never a VM stopped to make progress');
    await succeeded(await tc.admin.maintenance('oc', 'exit'));
    await succeeded(await tc.admin.maintenance('oa', 'exit'));
    assert.equal((await tc.admin.host('oc')).state, 'connected');
  });

  it('cancel: a running migration rolls back (the VM stays, running, on its source), a queued one ends at once', async () => {
    await succeeded(await tc.admin.createVm({ name: 'o-c1', host: 'ob', image: 'dirtier', memoryBytes: 48 * MiB, cmdline: 'hot=40MiB rate=200 fill=1' }));
    await succeeded(await tc.admin.createVm({ name: 'o-c2', host: 'ob', image: 'dirtier', memoryBytes: 16 * MiB, cmdline: 'hot=1MiB' }));
    const from = await tc.center.store.latestEventId();
    // 40 MiB at 2 MiB/s: running for long enough to be cancelled in the middle.
    const running = await tc.admin.migrateVm('o-c1', { to: 'oc', options: { bandwidthBytesPerSec: 2 * MiB } });
    const queued = await tc.admin.migrateVm('o-c2', { to: 'oc' });
    await waitForEvent(tc.admin, from, (e) => e.kind === 'migration.started' && e.subject === 'vm:o-c1');
    await waitForEvent(tc.admin, from, (e) => e.subject === `task:${queued.id}` && /outbound/.test(String((e.payload as { waitingReason: unknown }).waitingReason)));
    const c2 = await tc.admin.cancelTask(queued.id);
    assert.equal(c2.state, 'cancelled', 'a queued task ends cancelled at once');
    assert.equal((await tc.admin.cancelTask(running.id)).cancelRequested, true);
    const c1 = await wait(running);
    assert.deepEqual([c1.state, c1.error?.code], ['cancelled', 'CANCELLED']);
    const vm = await tc.admin.vm('o-c1');
    assert.deepEqual([vm.host, vm.state], ['ob', 'running']);
    assert.equal((await hosts[1]?.client.vm('o-c1'))?.state, 'running', 'the source runs it');
    assert.equal((await hosts[2]?.client.listVms())?.some((v) => v.name === 'o-c1'), false, 'the target has no copy');
    assert.equal((await tc.admin.cancelTask(running.id)).state, 'cancelled', 'cancelling a finished task answers it as it is');
  });
});
