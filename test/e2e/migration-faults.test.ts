/**
 * Fault tests with real host processes. Each ends with the VM running in exactly one place with
 * its invariants intact — or, where its own host was killed, in none — and never in two.
 * Faults are real: kill -9 of a host process, dropped connections, a corrupted page on the wire,
 * cancellation, and a target that never answers (failpoints, src/lib/failpoints.ts).
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  createVm, listVms, migrationStatus, removeHostData, startHost, startMigration, stopHost, until, verifyVm, waitMigration, waitPhase,
  type TestHost,
} from '../helpers/hosts.js';
import { MiB } from '../../src/lib/units.js';

const hosts: TestHost[] = [];
async function host(name: string, opts: Parameters<typeof startHost>[1] = {}): Promise<TestHost> {
  const h = await startHost(name, opts);
  hosts.push(h);
  return h;
}
afterEach(async () => {
  for (const h of hosts.splice(0)) { await stopHost(h, 'SIGKILL'); await removeHostData(h); }
});

/**
 * A slow migration (bandwidth-capped) of a running dirtier, so a fault can land mid-phase. The
 * request timeout is generous: these faults are kills and drops, which fail a request at once, and
 * a loaded CI machine must not turn a slow reply into a different failure than the one under test
 * (the silent-target test sets its own short timeout).
 */
const SLOW = { bandwidthBytesPerSec: 16 * MiB, requestTimeoutMs: 10_000, inDoubtTimeoutMs: 20_000 };
const VM_OPTS = { memoryBytes: 32 * MiB, cmdline: 'hot=8MiB pattern=random check=1 fill=1 claim=all' };

async function assertRunsOnlyOn(vm: string, on: TestHost, notOn: TestHost[]): Promise<void> {
  const check = await verifyVm(on, vm);
  assert.equal(check.state, 'running', `${vm} runs on ${on.name}`);
  assert.equal(check.selfcheck, 0, `${vm} is intact on ${on.name}`);
  for (const h of notOn) {
    if (h.child.exitCode !== null || h.child.signalCode !== null) continue;
    await until(async () => !(await listVms(h)).some((v) => v.name === vm && v.state !== 'stopped'), `${vm} gone from ${h.name}`);
  }
}

describe('migration faults: the VM ends up in exactly one place', () => {
  it('the target refuses (name already taken): clear error, VM keeps running', async () => {
    const a = await host('a');
    const b = await host('b');
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    await createVm(b, 'v', 'compute', { memoryBytes: 1 * MiB, cmdline: 'iters=1', start: false });
    const r = await waitMigration(a, await startMigration(a, 'v', b));
    assert.equal(r.outcome, 'failed');
    assert.equal(r.error?.code, 'MIGRATION_REFUSED');
    assert.match(r.error?.message ?? '', /already has a VM named v/);
    assert.equal((await verifyVm(a, 'v')).selfcheck, 0);
  });

  for (const phase of ['prepare', 'precopy', 'switchover'] as const) {
    it(`kill -9 of the target during ${phase}: the VM keeps running on the source`, async () => {
      // The failpoint holds the target in the phase so the kill lands there.
      const failpoints = { prepare: 'target.prepare=hang', precopy: '', switchover: 'target.state=hang' }[phase];
      const a = await host('a');
      const b = await host('b', failpoints !== '' ? { failpoints } : {});
      await createVm(a, 'v', 'dirtier', VM_OPTS);
      const id = await startMigration(a, 'v', b, SLOW);
      await waitPhase(a, id, phase);
      if (phase === 'precopy') await sleep(300);
      else await sleep(200);
      await stopHost(b, 'SIGKILL');
      const r = await waitMigration(a, id);
      assert.equal(r.outcome, 'failed', `outcome (${r.error?.message ?? ''})`);
      await assertRunsOnlyOn('v', a, []);
    });
  }

  it('kill -9 of the target after it recorded the commit: the source stays paused (in doubt) until the restarted target says committed; never two', async () => {
    const a = await host('a');
    const b = await host('b', { failpoints: 'target.after-commit-record=crash' });
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const id = await startMigration(a, 'v', b, { ...SLOW, bandwidthBytesPerSec: 256 * MiB });
    await waitPhase(a, id, 'resolve');
    await b.exited;
    // While the target is down, the source must not resume the VM.
    const during = (await listVms(a)).find((v) => v.name === 'v');
    assert.equal(during?.state, 'paused', 'in doubt: paused on the source');
    // The restarted target (same data dir and port) answers: committed (the VM died with that host).
    const b2 = await host('b', { dataDir: b.dataDir, port: b.port });
    const r = await waitMigration(a, id);
    assert.equal(r.outcome, 'succeeded', 'the target committed, so the source released its copy');
    assert.ok(!(await listVms(a)).some((v) => v.name === 'v'), 'not on the source');
    const onTarget = (await listVms(b2)).find((v) => v.name === 'v');
    assert.notEqual(onTarget?.state, 'running', 'the VM died with its host: in none, never in two');
  });

  it('kill -9 of the target before it recorded the commit: the restarted target says unknown and the source resumes', async () => {
    const a = await host('a');
    const b = await host('b', { failpoints: 'target.commit=crash' });
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const id = await startMigration(a, 'v', b, { ...SLOW, bandwidthBytesPerSec: 256 * MiB });
    await waitPhase(a, id, 'resolve');
    await b.exited;
    await host('b', { dataDir: b.dataDir, port: b.port });
    const r = await waitMigration(a, id);
    assert.equal(r.outcome, 'failed');
    await assertRunsOnlyOn('v', a, []);
  });

  it('kill -9 of the source during pre-copy: the target discards the partial VM and never resumes it', async () => {
    const a = await host('a');
    const b = await host('b');
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const id = await startMigration(a, 'v', b, SLOW);
    await waitPhase(a, id, 'precopy');
    await sleep(300);
    await stopHost(a, 'SIGKILL');
    await until(async () => !(await listVms(b)).some((v) => v.name === 'v'), 'no VM on the target', 10_000);
    await sleep(500);
    assert.ok(!(await listVms(b)).some((v) => v.name === 'v'), 'still none: the partial VM was discarded, not resumed');
  });

  it('a connection dropped mid-round: rollback, the VM keeps running on the source', async () => {
    const a = await host('a');
    const b = await host('b', { failpoints: 'target.memory.drop=drop:3' });
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const r = await waitMigration(a, await startMigration(a, 'v', b, SLOW));
    assert.equal(r.outcome, 'failed');
    await assertRunsOnlyOn('v', a, [b]);
  });

  it('a page corrupted on the wire: digest mismatch, rollback', async () => {
    const a = await host('a');
    const b = await host('b');
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const r = await waitMigration(a, await startMigration(a, 'v', b, { corruptPageInRound: 1 }));
    assert.equal(r.outcome, 'failed');
    assert.equal(r.error?.code, 'DIGEST_MISMATCH', 'the target\'s code, carried by its ERROR frame');
    await assertRunsOnlyOn('v', a, [b]);
  });

  for (const phase of ['prepare', 'precopy', 'switchover'] as const) {
    it(`cancel during ${phase}: rollback, the VM keeps running on the source`, async () => {
      const failpoints = { prepare: 'target.prepare=delay:1500', precopy: '', switchover: 'target.state=delay:1500' }[phase];
      const a = await host('a');
      const b = await host('b', failpoints !== '' ? { failpoints } : {});
      await createVm(a, 'v', 'dirtier', VM_OPTS);
      const id = await startMigration(a, 'v', b, { ...SLOW, requestTimeoutMs: 10_000 });
      await waitPhase(a, id, phase);
      await sleep(100);
      await a.client.cancelMigration(id);
      const r = await waitMigration(a, id);
      assert.equal(r.outcome, 'cancelled');
      await assertRunsOnlyOn('v', a, [b]);
      assert.equal((await migrationStatus(a, id)).state, 'cancelled');
    });
  }

  it('a target that never answers: the source times out and the VM keeps running', async () => {
    const a = await host('a');
    const b = await host('b', { failpoints: 'target.prepare=hang' });
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const t0 = Date.now();
    const r = await waitMigration(a, await startMigration(a, 'v', b, { requestTimeoutMs: 1500 }));
    assert.equal(r.outcome, 'failed');
    assert.equal(r.error?.code, 'MIGRATION_TIMEOUT');
    assert.ok(Date.now() - t0 < 15_000);
    await assertRunsOnlyOn('v', a, []);
  });
});
