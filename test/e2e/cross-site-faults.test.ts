/**
 * Fault tests of a live migration whose disk is copied over a seed (docs/design/cross-site.md): the
 * VM's base was copied to the target's datastore ahead of time and recorded there as its seed, so only
 * the delta moves. kill -9 of either host during the delta copy and during the switch-over, with real
 * host processes and the kvlog guest writing its checksummed log all the time (the rig and the checks
 * are test/helpers/disk-faults.ts, shared with the disk migration fault tests).
 *
 * Each case ends with the VM running in exactly one place (or, where its own host was killed, in none
 * until that host is restarted), one writer of its disk, the disk consistent (qemu-img check and the
 * guest's boot-time scan), no uncommitted delta left on the target — and the seed untouched and still
 * recorded, ready for the next try.
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { until } from '../helpers/hosts.js';
import {
  DISK, WAIT_MS, assertCopyRemovedAfterRestart, assertDiskIntact, assertNoCopy, assertNotOn, assertRunsOnlyOn, assertSeedKept,
  assertWriter, dropRig, flushed, hit, holdIn, kill, killTargetHeldIn, migrate, restart, rig, sourceComesBack, sourceDiesWhileTargetAt, sourceFile, vmsOf,
} from '../helpers/disk-faults.js';

afterEach(dropRig);

describe('cross-site migration faults: a disk copied over its seed', { concurrency: 2 }, () => {
  for (const phase of ['precopy', 'switchover'] as const) {
    const fp = holdIn('seeded', phase);
    it(`kill -9 of the target in ${phase} (${fp}): rollback, the VM keeps running on the source; the restarted target removes its delta and keeps the seed`, async (t) => {
      const r = await rig(t, 'seeded', { b: `${fp}=hang` });
      const rec = await killTargetHeldIn(r, fp, phase);
      assert.equal(rec.disk?.seededLevels, 1, 'the target had answered that the base stays');
      await assertRunsOnlyOn(r, r.a);
      await assertWriter(r, sourceFile(r), r.a);
      await restart(r, r.b);
      assertNotOn(r.b, await vmsOf(r.b));
      await assertCopyRemovedAfterRestart(r, true);
      await assertSeedKept(r);
      await assertDiskIntact(r.a, sourceFile(r), await flushed(r.a));
    });

    it(`kill -9 of the source in ${phase} (${fp}): the target discards its delta, keeps the seed; the restarted source brings the VM back`, async (t) => {
      const r = await rig(t, 'seeded', { b: `${fp}=hang` });
      const id = await migrate(r);
      await hit(r, id, r.b, fp, 'hang');
      const before = await flushed(r.a);
      await kill(r.a);
      await r.b.waitForLog('partial VM discarded');
      assertNotOn(r.b, await vmsOf(r.b));
      await assertNoCopy(r);
      await assertSeedKept(r);
      await sourceComesBack(r, before);
    });
  }

  it('kill -9 of the source after the target recorded the commit: the VM runs on the target only, on its delta over the seed, its disk intact', async (t) => {
    const r = await rig(t, 'seeded', { b: 'target.after-commit-record=delay:3000' });
    const before = await sourceDiesWhileTargetAt(r, 'target.after-commit-record');
    await r.b.waitForLog('committed; VM v runs here');
    await until(async () => (await r.b.client.vm('v')).state === 'running', 'v to run on b', WAIT_MS);
    const a2 = await restart(r, r.a);
    const stale = (await a2.client.listVms()).find((v) => v.name === 'v');
    assert.notEqual(stale?.state, 'running', 'the stale definition on the restarted source is not running');
    assert.equal((await r.b.client.verifyVm('v')).selfcheck, 0, 'v is intact on the target');
    const chain = await r.b.client.diskChain('v');
    assert.deepEqual(chain.chain.map((l) => l.path), [r.disk, DISK], 'the target runs v on its new delta over the seed');
    const targetFile = join(r.dsB, r.disk);
    await assertWriter(r, targetFile, r.b);
    await assertDiskIntact(r.b, targetFile, before);
  });
});
