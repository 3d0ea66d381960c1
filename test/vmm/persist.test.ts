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

async function untilHalted(vm: Vm, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (vm.state !== 'halted') {
    if (performance.now() > deadline) throw new Error(`VM did not halt within ${timeoutMs} ms (state ${vm.state})`);
    await sleep(10);
  }
}

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
      // A second restore of the same file, never started: its vCPU states are what the file gave it.
      // deepEqual from assert/strict compares with Object.is: i64 as the same bigint, NaN as NaN, -0 as -0.
      const cold = await restoreVm(path);
      await cold.stop();
      assert.deepEqual(cold.captureVcpuStates(), states, 'every vCPU\'s globals and halted flag restored exactly');
      await restored.start();
      await sleep(150);
      await restored.pause();
      assert.equal(restored.selfcheck(), 0, 'invariants hold after running on');
      assert.equal(restored.state, 'paused');
    } finally {
      await vm.stop();
      await restored?.stop();
    }
  });

  it('per-vCPU globals come back exactly (compute keeps its hash chain in globals)', async () => {
    // compute is deterministic: a run saved midway and restored must end in exactly the globals of a
    // run never interrupted (a 64-bit chain value that lost a bit, or any global reset, ends elsewhere).
    const image = await readFile(guestImagePath('compute'));
    const config = { memoryBytes: 1 * MiB, cmdline: 'iters=100000000 report=0' };
    const vm = Vm.create(image, config);
    const reference = Vm.create(image, config);
    const path = join(dir, 'compute.snap');
    let restored: Vm | null = null;
    try {
      await vm.start();
      await sleep(100);
      await vm.pause();
      const live = vm.captureVcpuStates();
      assert.equal(live[0]?.halted, false, 'saved midway through the chain');
      await saveVm(vm, path);
      await vm.stop();
      const snap = await openSnapshot(path);
      const saved = snap.meta.vcpuStates;
      await snap.close();
      assert.deepEqual(saved, live, 'the snapshot holds the captured states');
      restored = await restoreVm(path);
      await restored.start();
      await reference.start();
      await untilHalted(restored);
      await untilHalted(reference);
      const want = reference.captureVcpuStates();
      assert.ok(want[0]?.globals.some((g) => g.type === 'i64' && g.value === 100_000_000n), 'the reference ran the whole chain');
      assert.deepEqual(restored.captureVcpuStates(), want, 'restored run ends exactly where the uninterrupted run does');
    } finally {
      await vm.stop();
      await reference.stop();
      await restored?.stop();
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
