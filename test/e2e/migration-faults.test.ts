/**
 * Fault tests with real host processes. Each ends with the VM running in exactly one place with
 * its invariants intact — or, where its own host was killed, in none — and never in two.
 * Faults are real: kill -9 of a host process, dropped connections, a corrupted page on the wire,
 * cancellation, and a target that never answers (failpoints, src/lib/failpoints.ts).
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  createVm, removeHostData, startHost, startMigration, stopHost, waitMigration, waitPhase, type TestHost,
} from '../helpers/hosts.js';
import { MiB } from '../../src/lib/units.js';
import { failpointHitLine } from '../../src/lib/failpoints.js';
import type { MigrationPhase, MigrationRecord } from '../../src/migration/record.js';

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
 * Options of the migrations under fault. Faults land in their phase by failpoints, not by pace, so
 * no bandwidth cap is needed. The request timeout is generous: these faults are kills and drops,
 * which fail a request at once, and a loaded CI machine must not turn a slow reply into a
 * different failure than the one under test (the silent-target test sets its own short timeout).
 */
const FAULT_OPTS = { requestTimeoutMs: 10_000, inDoubtTimeoutMs: 20_000 };
const VM_OPTS = { memoryBytes: 32 * MiB, cmdline: 'hot=8MiB pattern=random check=1 fill=1 claim=all' };

/**
 * The VM runs, intact, on `on`; every host in `notOn` holds no copy of it at all: not in its VM
 * list (not "stopped" or "defined": absent) and not in its data directory. A host that was killed
 * is checked through its data directory only.
 */
async function assertRunsOnlyOn(vm: string, on: TestHost, notOn: TestHost[]): Promise<void> {
  const check = await on.client.verifyVm(vm);
  assert.equal(check.state, 'running', `${vm} runs on ${on.name}`);
  assert.equal(check.selfcheck, 0, `${vm} is intact on ${on.name}`);
  for (const h of notOn) {
    if (h.child.exitCode === null && h.child.signalCode === null) {
      // The partial VM is discarded before the source is told (the ERROR reply or the closed connection).
      assert.deepEqual((await h.client.listVms()).map((v) => v.name).filter((n) => n === vm), [], `no copy of ${vm} in ${h.name}'s VM list`);
    }
    await assert.rejects(stat(join(h.dataDir, 'vms', vm)), { code: 'ENOENT' }, `no copy of ${vm} in ${h.name}'s data directory`);
  }
}

/** The record proves where the fault landed: the last phase before the rollback is `phase`. */
function assertFailedIn(r: MigrationRecord, phase: MigrationPhase): void {
  const phases = r.phases.map((p) => p.phase);
  assert.equal(phases.at(-1), 'rollback', `rolled back (phases ${phases.join(' > ')})`);
  assert.equal(phases.at(-2), phase, `the fault landed in ${phase} (phases ${phases.join(' > ')})`);
}

/**
 * A migration whose target dies (SIGKILL, its own failpoint) right after it recorded the commit,
 * before it resumed the VM: the source is left in doubt. Returns once the crash happened.
 */
async function crashAfterCommitRecord(opts: { inDoubtTimeoutMs?: number } = {}): Promise<{ a: TestHost; b: TestHost; id: string }> {
  const a = await host('a');
  const b = await host('b', { failpoints: 'target.after-commit-record=crash' });
  await createVm(a, 'v', 'dirtier', VM_OPTS);
  const id = await startMigration(a, 'v', b, { ...FAULT_OPTS, ...opts });
  await b.waitForLog(failpointHitLine('target.after-commit-record', 'crash'));
  return { a, b, id };
}

/** Failpoints that hold the target in each phase; the test waits for the hit, then strikes. */
const HOLD_IN = { prepare: 'target.prepare', precopy: 'target.round', switchover: 'target.state' } as const;

describe('migration faults: the VM ends up in exactly one place', () => {
  it('the target refuses (name already taken): clear error, VM keeps running', async () => {
    const a = await host('a');
    const b = await host('b');
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    await createVm(b, 'v', 'compute', { memoryBytes: 1 * MiB, cmdline: 'iters=1', start: false });
    const r = await waitMigration(a, await startMigration(a, 'v', b));
    assert.equal(r.outcome, 'failed');
    assert.equal(r.error?.code, 'MIGRATION_REFUSED');
    assertFailedIn(r, 'prepare');
    assert.equal((await a.client.verifyVm('v')).selfcheck, 0);
  });

  for (const phase of ['prepare', 'precopy', 'switchover'] as const) {
    it(`kill -9 of the target during ${phase}: the VM keeps running on the source`, async () => {
      // The failpoint holds the target in the phase; its hit line proves the kill lands there.
      const a = await host('a');
      const b = await host('b', { failpoints: `${HOLD_IN[phase]}=hang` });
      await createVm(a, 'v', 'dirtier', VM_OPTS);
      const id = await startMigration(a, 'v', b, FAULT_OPTS);
      await b.waitForLog(failpointHitLine(HOLD_IN[phase], 'hang'));
      assert.equal((await a.client.migration(id)).phase, phase, `the source is in ${phase}`);
      await stopHost(b, 'SIGKILL');
      const r = await waitMigration(a, id);
      assert.equal(r.outcome, 'failed', `outcome (${r.error?.message ?? ''})`);
      assertFailedIn(r, phase);
      await assertRunsOnlyOn('v', a, [b]);
    });
  }

  it('kill -9 of the target after it recorded the commit: the source stays paused (in doubt) until the restarted target says committed; never two', async () => {
    const { a, b, id } = await crashAfterCommitRecord();
    await b.exited;
    await waitPhase(a, id, 'resolve');
    // While the target is down, the source must not resume the VM.
    const during = (await a.client.listVms()).find((v) => v.name === 'v');
    assert.equal(during?.state, 'paused', 'in doubt: paused on the source');
    // The restarted target (same data dir and port) answers: committed (the VM died with that host).
    const b2 = await host('b', { dataDir: b.dataDir, port: b.port });
    const r = await waitMigration(a, id);
    assert.equal(r.outcome, 'succeeded', 'the target committed, so the source released its copy');
    assert.ok(!(await a.client.listVms()).some((v) => v.name === 'v'), 'not on the source');
    // The target died between its commit record and adopting the VM: the VM is in none, never in two.
    assert.deepEqual((await b2.client.listVms()).filter((v) => v.name === 'v'), [], 'not on the restarted target either');
  });

  it('the restarted target cannot read its commit record: it answers STORE_IO, never "unknown"; the source stays paused and asks until it can', async () => {
    const { a, b, id } = await crashAfterCommitRecord({ inDoubtTimeoutMs: 60_000 });
    await b.exited;
    await waitPhase(a, id, 'resolve');
    // The record becomes unreadable: a directory in its place (EISDIR; root ignores file modes).
    const records = join(b.dataDir, 'migrations');
    const [file, ...others] = (await readdir(records)).filter((f) => /^[0-9a-f]{32}\.json$/.test(f));
    assert.ok(file !== undefined && others.length === 0, 'exactly one commit record');
    const remoteId = file.slice(0, 32);
    await rename(join(records, file), join(records, `${file}.aside`));
    await mkdir(join(records, file));
    const b2 = await host('b', { dataDir: b.dataDir, port: b.port });
    // The source asks; the target answers an error, loudly, instead of "unknown".
    await b2.waitForLog(`incoming migration ${remoteId.slice(0, 8)}: cannot read its outcome record`);
    await assert.rejects(b2.client.incoming(remoteId), { code: 'STORE_IO', origin: 'remote' });
    assert.equal((await a.client.migration(id)).phase, 'resolve', 'the source is still asking');
    assert.equal((await a.client.listVms()).find((v) => v.name === 'v')?.state, 'paused', 'and keeps the VM paused (it may run on the target)');
    // The record is readable again: the source learns "committed" and releases its copy.
    await rm(join(records, file), { recursive: true });
    await rename(join(records, `${file}.aside`), join(records, file));
    const r = await waitMigration(a, id);
    assert.equal(r.outcome, 'succeeded');
    assert.deepEqual((await a.client.listVms()).filter((v) => v.name === 'v'), [], 'released on the source');
  });

  it('a target that stays down after the commit: the record says in-doubt (MIGRATION_IN_DOUBT), the VM stays paused until the operator resumes it', async () => {
    const { a, id } = await crashAfterCommitRecord({ inDoubtTimeoutMs: 1_000 });
    const r = await waitMigration(a, id);
    assert.equal(r.outcome, 'in-doubt');
    assert.equal(r.error?.code, 'MIGRATION_IN_DOUBT');
    assert.equal(r.phases.at(-1)?.phase, 'resolve', 'never rolled back on its own');
    const view = (await a.client.listVms()).find((v) => v.name === 'v');
    assert.equal(view?.state, 'paused', 'paused: it may run on the target');
    assert.equal(view.owner, null, 'the migration no longer owns it: the operator decides');
    await a.client.resumeVm('v');
    await assertRunsOnlyOn('v', a, []);
  });

  it('cancelling an in-doubt migration stops the asking at once, never the caution: in-doubt, the VM stays paused', async () => {
    const { a, id } = await crashAfterCommitRecord({ inDoubtTimeoutMs: 3_600_000 });
    await waitPhase(a, id, 'resolve');
    await a.client.cancelMigration(id);
    // Without the cancel reaching the poll this waits out the hour and the wait below times out.
    const r = await a.client.waitForMigration(id, { timeoutMs: 20_000 });
    assert.equal(r.outcome, 'in-doubt');
    assert.equal(r.error?.code, 'MIGRATION_IN_DOUBT');
    assert.equal((await a.client.listVms()).find((v) => v.name === 'v')?.state, 'paused');
  });

  it('kill -9 of the target before it recorded the commit: the restarted target says unknown and the source resumes', async () => {
    const a = await host('a');
    const b = await host('b', { failpoints: 'target.commit=crash' });
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const id = await startMigration(a, 'v', b, FAULT_OPTS);
    await b.waitForLog(failpointHitLine('target.commit', 'crash'));
    await b.exited;
    await waitPhase(a, id, 'resolve');
    const b2 = await host('b', { dataDir: b.dataDir, port: b.port });
    const r = await waitMigration(a, id);
    assert.equal(r.outcome, 'failed');
    assert.deepEqual(r.phases.map((p) => p.phase).slice(-2), ['resolve', 'rollback'], 'resolved by asking, then rolled back');
    await assertRunsOnlyOn('v', a, [b2]);
  });

  it('kill -9 of the source during pre-copy: the target discards the partial VM and never resumes it', async () => {
    const a = await host('a');
    const b = await host('b', { failpoints: 'target.round=delay:60000' });
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const id = await startMigration(a, 'v', b, FAULT_OPTS);
    // Round 1 was sent and the target holds its ROUND reply: the source is in pre-copy when it dies.
    await b.waitForLog(failpointHitLine('target.round', 'delay'));
    assert.equal((await a.client.migration(id)).phase, 'precopy');
    await stopHost(a, 'SIGKILL');
    // The target notices the dropped connections, discards the partial VM and records the abort.
    await b.waitForLog('partial VM discarded');
    assert.deepEqual((await b.client.listVms()).filter((v) => v.name === 'v'), [], 'the partial VM was discarded, not resumed');
    await assert.rejects(stat(join(b.dataDir, 'vms', 'v')), { code: 'ENOENT' }, 'and nothing of it is in the data directory');
  });

  it('a connection dropped mid-round: rollback, the VM keeps running on the source', async () => {
    const a = await host('a');
    const b = await host('b', { failpoints: 'target.memory.drop=drop:3' });
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const r = await waitMigration(a, await startMigration(a, 'v', b, FAULT_OPTS));
    assert.ok(b.log().includes(failpointHitLine('target.memory.drop', 'drop')), 'the drop happened');
    assert.equal(r.outcome, 'failed');
    assertFailedIn(r, 'precopy');
    await assertRunsOnlyOn('v', a, [b]);
  });

  it('a page corrupted on the wire: digest mismatch, rollback', async () => {
    const a = await host('a');
    const b = await host('b');
    await createVm(a, 'v', 'dirtier', VM_OPTS);
    const r = await waitMigration(a, await startMigration(a, 'v', b, { corruptPageInRound: 1 }));
    assert.equal(r.outcome, 'failed');
    assert.equal(r.error?.code, 'DIGEST_MISMATCH', 'the target\'s code, carried by its ERROR frame');
    assertFailedIn(r, 'switchover');
    await assertRunsOnlyOn('v', a, [b]);
  });

  for (const phase of ['prepare', 'precopy', 'switchover'] as const) {
    it(`cancel during ${phase}: rollback, the VM keeps running on the source`, async () => {
      const a = await host('a');
      const b = await host('b', { failpoints: `${HOLD_IN[phase]}=hang` });
      await createVm(a, 'v', 'dirtier', VM_OPTS);
      const id = await startMigration(a, 'v', b, FAULT_OPTS);
      await b.waitForLog(failpointHitLine(HOLD_IN[phase], 'hang'));
      await a.client.cancelMigration(id);
      const r = await waitMigration(a, id);
      assert.equal(r.outcome, 'cancelled');
      assert.equal(r.error?.code, 'MIGRATION_CANCELLED');
      assertFailedIn(r, phase);
      await assertRunsOnlyOn('v', a, [b]);
      assert.equal((await a.client.migration(id)).state, 'cancelled');
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
    assertFailedIn(r, 'prepare');
    assert.ok(Date.now() - t0 < 15_000);
    await assertRunsOnlyOn('v', a, [b]);
  });
});
