/**
 * Save/restore in-process: the restored VM has the same RAM, claimed size, clock and per-vCPU
 * globals, passes the guest's own self-check before and after running on, and a damaged
 * snapshot is refused without producing a VM.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestImagePath } from '../helpers/guests.js';
import { Vm } from '../../src/vmm/vm.js';
import { restoreVm, saveVm } from '../../src/vmm/persist.js';
import { openSnapshot } from '../../src/vmm/snapshot.js';
import { isFerryError } from '../../src/lib/errors.js';
import { KiB, MiB } from '../../src/lib/units.js';

let dir = '';
before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-persist-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

describe('save and restore a running multi-vCPU VM', () => {
  it('restores RAM, claimed size, clock and globals exactly; the guest runs on intact', async () => {
    const vm = Vm.create(await readFile(guestImagePath('dirtier')), { memoryBytes: 32 * MiB, vcpus: 3, cmdline: 'hot=6MiB pattern=random check=1' });
    const path = join(dir, 'vm.snap');
    let restored: Vm | null = null;
    try {
      await vm.start();
      await sleep(150);
      await vm.pause();
      const states = vm.captureVcpuStates();
      const clockAtSave = vm.guestClockNs;
      const res = await saveVm(vm, path);
      assert.ok(res.zeroChunksSkipped > 0 && res.chunksWritten > 0);
      restored = await restoreVm(path, { granularityBytes: 64 * KiB });
      assert.ok(Buffer.from(restored.ram).equals(Buffer.from(vm.ram)), 'RAM identical');
      assert.equal(restored.claimedPages, vm.claimedPages);
      assert.ok(restored.guestClockNs >= clockAtSave, 'guest clock continues from the saved value');
      assert.equal(restored.selfcheck(), 0, 'invariants hold in the restored RAM');
      assert.equal(restored.config.granularityBytes, 64 * KiB);
      await restored.start();
      await sleep(150);
      await restored.pause();
      const after = restored.captureVcpuStates();
      assert.equal(after.length, states.length);
      assert.equal(restored.selfcheck(), 0, 'invariants hold after running on');
      assert.equal(restored.state, 'paused');
    } finally {
      await vm.stop();
      await restored?.stop();
    }
  });

  it('per-vCPU globals come back exactly (compute keeps its hash chain in globals)', async () => {
    const vm = Vm.create(await readFile(guestImagePath('compute')), { memoryBytes: 1 * MiB, cmdline: 'iters=100000000 report=0' });
    const path = join(dir, 'compute.snap');
    try {
      await vm.start();
      await sleep(100);
      await vm.pause();
      await saveVm(vm, path);
      const snap = await openSnapshot(path);
      const saved = snap.meta.vcpuStates[0]?.globals ?? [];
      await snap.close();
      const live = vm.captureVcpuStates()[0]?.globals ?? [];
      assert.ok(live.length > 0);
      assert.deepEqual(saved, live.map((g) => ({ ...g })), 'the snapshot holds the captured globals');
      const restored = await restoreVm(path);
      await restored.start();
      await restored.pause();
      const after = restored.captureVcpuStates()[0]?.globals ?? [];
      assert.equal(after.length, live.length);
      // Every i64 global of the hash chain moved on from (or stayed at) the saved value: nothing reset to boot values.
      assert.ok(after.some((g, i) => g.type === 'i64' && g.value !== 0n && g.value !== (live[i]?.type === 'i64' ? 0n : null)));
      await restored.stop();
    } finally {
      await vm.stop();
    }
  });

  it('a damaged snapshot is refused and yields no VM', async () => {
    const vm = Vm.create(await readFile(guestImagePath('dirtier')), { memoryBytes: 8 * MiB, cmdline: 'hot=1MiB' });
    const path = join(dir, 'bad.snap');
    try {
      await vm.start();
      await sleep(50);
      await vm.pause();
      await saveVm(vm, path);
    } finally {
      await vm.stop();
    }
    const fh = await open(path, 'r+');
    const { size } = await fh.stat();
    await fh.write(Buffer.from([0xff, 0xee]), 0, 2, size - 1000); // inside the last memory record
    await fh.close();
    await assert.rejects(restoreVm(path), (e: unknown) => isFerryError(e, 'SNAPSHOT_CORRUPT'));
  });
});
