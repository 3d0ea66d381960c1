/**
 * Fault tests for live migration of VMs with disks, both modes (src/migration/disk.ts), with real
 * host processes and the kvlog guest writing its checksummed log all the time: kill -9 of the target
 * and of the source in each phase, a dropped connection, a disk block corrupted on the wire.
 *
 * Each case ends with the VM running in exactly one place (or, where its own host was killed, in
 * none, until that host is restarted from its data directory), never two writers of the disk (at
 * most one live lease, at most one host with the disk attached), the disk consistent (qemu-img
 * check, and the guest's boot-time scan finds every record flushed before the fault), and no
 * uncommitted copy left on the target's datastore. Faults land by failpoints (the hit line on
 * stderr is the proof), never by pace; leases are short (host flags) so that waiting out a dead
 * host's lease takes a couple of seconds.
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { waitMigration, until } from '../helpers/hosts.js';
import { failpointHitLine } from '../../src/lib/failpoints.js';
import { readLease } from '../../src/storage/lease.js';
import {
  DISK, FLUSHED_BEFORE_MIGRATING, LEASE, MODES, WAIT_MS, assertCopyRemovedAfterRestart, assertDiskIntact, assertFailedIn, assertNoCopy, assertNotOn, assertRunsOnlyOn, assertStaysOnSource, assertWriter, copyLeft, defineOnDisk, dropRig, flushed, hit, holdIn, kill, killTargetHeldIn, liveLease, migrate, restart, rig, sourceComesBack, sourceDiesWhileTargetAt, sourceFile, targetDiesAtCommit, vmsOf,
} from '../helpers/disk-faults.js';

afterEach(dropRig);

describe('disk migration faults: one running VM, one writer, an intact disk', { concurrency: 2 }, () => {
  for (const mode of MODES) {
    for (const phase of ['prepare', 'precopy', 'switchover'] as const) {
      const fp = holdIn(mode, phase);
      it(`${mode}: kill -9 of the target in ${phase} (${fp}): rollback, the VM keeps running on the source with its disk`, async (t) => {
        const r = await rig(t, mode, { b: `${fp}=hang` });
        await killTargetHeldIn(r, fp, phase);
        await assertRunsOnlyOn(r, r.a);
        // Shared: the source never gave the lease up (that happens after STATE was answered).
        await assertWriter(r, sourceFile(r), r.a);
        if (mode === 'copy') {
          // Held before PREPARE was handled there is no copy yet; later the dead target leaves its partial copy behind...
          assert.equal((await copyLeft(r)).includes(DISK), phase !== 'prepare', 'the dead target left a partial copy');
          // ...which it removes itself once it is back.
          await restart(r, r.b);
          assertNotOn(r.b, await vmsOf(r.b));
          await assertCopyRemovedAfterRestart(r, phase !== 'prepare');
        }
        await assertDiskIntact(r.a, sourceFile(r), await flushed(r.a));
      });
    }

    it(`${mode}: kill -9 of the target at its disk activation (COMMIT received, lease not taken): in doubt, the restarted target says unknown, the source resumes`, async (t) => {
      const r = await rig(t, mode, { b: 'target.disk-activate=crash' });
      const { id, before } = await targetDiesAtCommit(r, 'target.disk-activate');
      // Shared: the source gave the lease up before COMMIT and the target died before taking it: nobody writes.
      await assertWriter(r, sourceFile(r), mode === 'shared' ? null : r.a);
      await restart(r, r.b);
      const rec = await waitMigration(r.a, id);
      assert.equal(rec.outcome, 'failed', rec.error?.message);
      assert.deepEqual(rec.phases.map((p) => p.phase).slice(-2), ['resolve', 'rollback']);
      await assertRunsOnlyOn(r, r.a);
      await assertWriter(r, sourceFile(r), r.a);
      await assertCopyRemovedAfterRestart(r, true);
      await assertDiskIntact(r.a, sourceFile(r), Math.max(before, await flushed(r.a)));
    });

    it(`${mode}: kill -9 of the target after it recorded the commit: the source stays paused in doubt, the restarted target says committed; the VM is in none, its disk intact`, async (t) => {
      const r = await rig(t, mode, { b: 'target.after-commit-record=crash' });
      const { id, before } = await targetDiesAtCommit(r, 'target.after-commit-record');
      const copyFile = join(r.dsB, DISK);
      // Shared: the target took the lease at COMMIT, before its record; it died holding it. Copy: the source keeps its own disk.
      if (mode === 'shared') assert.equal((await readLease(copyFile, LEASE))?.hostName, 'b', 'the dead target holds the lease');
      else await assertWriter(r, sourceFile(r), r.a);
      await restart(r, r.b);
      const rec = await waitMigration(r.a, id);
      assert.equal(rec.outcome, 'succeeded', 'the target committed: the source released its copy');
      // The source forgets the VM as the job ends: its definition goes once its disk is closed.
      await until(async () => (await vmsOf(r.a)).length === 0, 'the source to forget v', WAIT_MS);
      // The target died between its commit record and adopting the VM: the VM runs nowhere (its RAM is gone), never in two.
      for (const h of [r.a, r.b]) assertNotOn(h, await vmsOf(h));
      // The committed disk is whole: the source's (shared) or the flushed copy (copy), kept by the restarted target.
      // A VM defined on it (once the dead run's lease has expired) finds every record flushed before the switch-over.
      await defineOnDisk(r.b, mode === 'shared' ? 'san' : 'ds1');
      await assertDiskIntact(r.b, copyFile, before, 'w');
    });
  }

  it('shared: kill -9 of the target after the source released the lease: COMMIT cannot be sent, rollback at once, the source takes the lease back', async (t) => {
    // The source waits with the lease given up; the target dies meanwhile; the COMMIT that follows finds its connection closed.
    const r = await rig(t, 'shared', { a: 'source.after-disk-release=delay:3000' });
    const id = await migrate(r);
    await hit(r, id, r.a, 'source.after-disk-release', 'delay');
    await assertWriter(r, sourceFile(r), null);
    const before = await flushed(r.a);
    await kill(r.b);
    const rec = await waitMigration(r.a, id);
    assert.equal(rec.outcome, 'failed', rec.error?.message);
    // COMMIT never left the source: a definite "not committed", nothing to resolve.
    assertFailedIn(rec, 'switchover');
    await assertRunsOnlyOn(r, r.a);
    await assertWriter(r, sourceFile(r), r.a);
    await assertDiskIntact(r.a, sourceFile(r), Math.max(before, await flushed(r.a)));
  });

  it('shared: kill -9 of the target after it took the lease, before its commit record: the restarted target says unknown; the source waits out the dead target\'s lease, takes it back and resumes', async (t) => {
    const r = await rig(t, 'shared', { b: 'target.after-disk-activate=crash' });
    const { id, before } = await targetDiesAtCommit(r, 'target.after-disk-activate');
    const deadLease = await readLease(sourceFile(r), LEASE);
    assert.equal(deadLease?.hostName, 'b', 'the dead target holds the lease');
    await restart(r, r.b);
    const rec = await waitMigration(r.a, id);
    // The rollback could end only once it had the lease again, and that only past the dead target's expiry (+ the skew allowance).
    assert.ok(deadLease !== null && Date.now() > deadLease.expiresAtMs + LEASE.clockSkewMs, 'the source resumed only after the dead target\'s lease had expired');
    assert.equal(rec.outcome, 'failed', rec.error?.message);
    assert.deepEqual(rec.phases.map((p) => p.phase).slice(-2), ['resolve', 'rollback']);
    await assertRunsOnlyOn(r, r.a);
    await assertWriter(r, sourceFile(r), r.a);
    await assertDiskIntact(r.a, sourceFile(r), Math.max(before, await flushed(r.a)));
  });

  for (const mode of MODES) {
    for (const phase of ['prepare', 'precopy', 'switchover'] as const) {
      const fp = holdIn(mode, phase);
      it(`${mode}: kill -9 of the source in ${phase} (${fp}): the target discards its part; the restarted source brings the VM back from its data directory`, async (t) => {
        const r = await rig(t, mode, { b: `${fp}=hang` });
        const id = await migrate(r);
        await hit(r, id, r.b, fp, 'hang');
        assert.equal((await r.a.client.migration(id)).phase, phase, `the source is in ${phase}`);
        const before = await flushed(r.a);
        await kill(r.a);
        await r.b.waitForLog('partial VM discarded');
        assertNotOn(r.b, await vmsOf(r.b));
        await assertNoCopy(r);
        await sourceComesBack(r, before);
      });
    }

    it(`${mode}: kill -9 of the source while the target activates the disk at COMMIT: the target aborts, never resumes the VM nor keeps the disk; the restarted source brings it back`, async (t) => {
      // The target is held at its disk activation; the source dies meanwhile; the target then goes on with a migration that was aborted under it.
      const r = await rig(t, mode, { b: 'target.disk-activate=delay:3000' });
      const before = await sourceDiesWhileTargetAt(r, 'target.disk-activate');
      await r.b.waitForLog('partial VM discarded');
      // Past the delay: the commit that was under way must not run the VM, record "committed" or take the lease.
      await r.b.waitForLog('aborted while it was committing');
      assertNotOn(r.b, await vmsOf(r.b));
      await assertNoCopy(r);
      assert.equal(liveLease(await readLease(sourceFile(r), LEASE))?.hostName === 'b', false, 'the target does not hold the lease');
      await sourceComesBack(r, before);
    });
  }

  it('shared: kill -9 of the source after it released the lease, before COMMIT: nobody holds the disk; the restarted source takes it and brings the VM back', async (t) => {
    const r = await rig(t, 'shared', { a: 'source.after-disk-release=crash' });
    const id = await migrate(r);
    await hit(r, id, r.a, 'source.after-disk-release', 'crash');
    await r.a.exited;
    await r.b.waitForLog('partial VM discarded');
    assertNotOn(r.b, await vmsOf(r.b));
    // The VM stunned, the disk flushed and released: every flushed record is on disk, and no lock at all.
    assert.equal(await readLease(sourceFile(r), LEASE), null, 'the released lease is gone');
    await sourceComesBack(r, FLUSHED_BEFORE_MIGRATING);
  });

  for (const mode of MODES) {
    it(`${mode}: kill -9 of the source after the target recorded the commit: the VM runs on the target only; the restarted source cannot run its stale definition`, async (t) => {
      const r = await rig(t, mode, { b: 'target.after-commit-record=delay:3000' });
      const before = await sourceDiesWhileTargetAt(r, 'target.after-commit-record');
      await r.b.waitForLog('committed; VM v runs here');
      await until(async () => (await r.b.client.vm('v')).state === 'running', 'v to run on b', WAIT_MS);
      const a2 = await restart(r, r.a);
      // The source died before it learned of the commit: its data directory still defines v. It must not run it beside the target's.
      const stale = (await a2.client.listVms()).find((v) => v.name === 'v');
      assert.notEqual(stale?.state, 'running', 'the stale definition on the restarted source is not running');
      assert.equal((await r.b.client.verifyVm('v')).selfcheck, 0, 'v is intact on the target');
      const targetFile = join(r.dsB, DISK);
      await assertWriter(r, targetFile, r.b);
      if (mode === 'shared') await assert.rejects(a2.client.startVm('v'), { code: /VM_STATE|DISK_LOCKED/ }, 'the source cannot start it: the target holds the disk');
      await assertDiskIntact(r.b, targetFile, before);
    });
  }

  for (const mode of MODES) {
    it(`${mode}: a connection dropped mid-round: rollback, the VM keeps running on the source`, async (t) => {
      const r = await rig(t, mode, { b: 'target.memory.drop=drop:1' });
      const rec = await waitMigration(r.a, await migrate(r));
      assert.ok(r.b.log().includes(failpointHitLine('target.memory.drop', 'drop')), 'the drop happened');
      assert.equal(rec.outcome, 'failed');
      assertFailedIn(rec, 'precopy');
      await assertStaysOnSource(r);
    });
  }

  it('copy: a disk block corrupted on the wire: the disk digest refuses COMMIT, rollback, the copy is removed', async (t) => {
    // The first block round 1 sends: after 2048 flushed records the guest never writes it again, so no later round repairs it.
    const r = await rig(t, 'copy');
    const rec = await waitMigration(r.a, await migrate(r, { corruptDiskBlockInRound: 1 }));
    assert.equal(rec.outcome, 'failed');
    assert.equal(rec.error?.code, 'DIGEST_MISMATCH');
    assert.match(rec.error?.message ?? '', /disk digest mismatch/);
    assertFailedIn(rec, 'switchover');
    await assertStaysOnSource(r);
  });
});

