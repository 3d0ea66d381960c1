/**
 * The trace oracle: while guests write concurrently on several vCPUs, copy *only* the regions the
 * tracker reports into a shadow buffer, round after round; after the final pause the shadow must
 * equal guest RAM byte for byte. Any write the traces (or the collect/copy protocol) miss shows up
 * as a difference. A deliberately broken tracker must be caught, or the oracle proves nothing.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestWat, wat2wasm } from '../helpers/wat.js';
import { guestImagePath } from '../helpers/guests.js';
import { Vm } from '../../src/vmm/vm.js';
import type { FaultInjection } from '../../src/vmm/instrument.js';
import type { InstallStrategy } from '../../src/vmm/traces.js';
import { KiB, MiB } from '../../src/lib/units.js';

const RAM_BYTES = 16 * MiB;
const ROUNDS = 25;

/**
 * Every vCPU writes i64 values at pseudo-random *unaligned* addresses across all of RAM, so many
 * writes straddle two regions; a vCPU-private xorshift state lives in a mutable global.
 */
const UNALIGNED_WRITER = guestWat({
  memory: `${RAM_BYTES / (64 * KiB)}`,
  extra: '(global $x (mut i64) (i64.const 0))',
  step: `(local $i i32)
    (if (i64.eqz (global.get $x)) (then (global.set $x (i64.add (i64.extend_i32_u (local.get $vcpu)) (i64.const 0x9E3779B97F4A7C15)))))
    (loop $l
      (global.set $x (i64.xor (global.get $x) (i64.shl (global.get $x) (i64.const 13))))
      (global.set $x (i64.xor (global.get $x) (i64.shr_u (global.get $x) (i64.const 7))))
      (global.set $x (i64.xor (global.get $x) (i64.shl (global.get $x) (i64.const 17))))
      (i64.store (i32.wrap_i64 (i64.rem_u (global.get $x) (i64.const ${RAM_BYTES - 8}))) (global.get $x))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $budget))))
    (i32.const 0)`,
});

/**
 * Every write is an i64 at k*8192 - 4 (k >= 1): it straddles regions 2k-1 and 2k at 4 KiB, and the
 * even regions are *only* ever written by the second half of such a straddle.
 */
const STRADDLE_WRITER = UNALIGNED_WRITER.replace(
  `(i64.store (i32.wrap_i64 (i64.rem_u (global.get $x) (i64.const ${RAM_BYTES - 8}))) (global.get $x))`,
  `(i64.store (i32.sub (i32.shl (i32.add (i32.wrap_i64 (i64.rem_u (global.get $x) (i64.const ${RAM_BYTES / 8192 - 1}))) (i32.const 1)) (i32.const 13)) (i32.const 4)) (global.get $x))`);

interface OracleResult {
  readonly equal: boolean;
  readonly firstDiff: number;
  readonly fired: number;
  readonly rounds: number;
  readonly selfcheck: number | null;
}

async function runOracle(image: Uint8Array, vcpus: number, granularityBytes: number, cmdline: string, faults?: FaultInjection, strategy: InstallStrategy = 'single'): Promise<OracleResult> {
  const vm = Vm.create(image, { memoryBytes: RAM_BYTES, vcpus, granularityBytes, cmdline, hangTimeoutMs: 5000 }, null, faults);
  try {
    await vm.start();
    await sleep(10);
    vm.tracker.strategy = strategy;
    await vm.tracker.armAll();
    // Round 1: everything (safe after the arm barrier: earlier writes are visible, later ones fire).
    const shadow = Buffer.from(vm.ram);
    let fired = 0;
    const copy = (regions: Uint32Array): void => {
      for (const r of regions) {
        const start = r * granularityBytes;
        const end = Math.min(start + granularityBytes, RAM_BYTES);
        shadow.set(vm.ram.subarray(start, end), start);
      }
      fired += regions.length;
    };
    for (let round = 0; round < ROUNDS; round++) {
      await sleep(1 + (round % 3));
      copy((await vm.tracker.collect()).regions);
    }
    await vm.pause();
    copy(vm.tracker.collectPaused().regions);
    const ram = Buffer.from(vm.ram.buffer, 0, RAM_BYTES);
    const equal = shadow.equals(ram);
    let firstDiff = -1;
    if (!equal) for (let i = 0; i < RAM_BYTES; i++) if (shadow[i] !== ram[i]) { firstDiff = i; break; }
    return { equal, firstDiff, fired, rounds: ROUNDS + 1, selfcheck: vm.image.hasSelfcheck ? vm.selfcheck() : null };
  } finally {
    await vm.stop();
  }
}

describe('trace oracle: shadow copy of collected regions equals RAM', () => {
  for (const granularityBytes of [4 * KiB, 64 * KiB, 2 * MiB]) {
    for (const vcpus of [1, 2, 4]) {
      it(`multi-vCPU dirtier, ${vcpus} vCPU(s), ${granularityBytes / KiB} KiB regions`, async () => {
        const dirtier = await readFile(guestImagePath('dirtier'));
        const r = await runOracle(dirtier, vcpus, granularityBytes, 'hot=8MiB pattern=random');
        assert.ok(r.fired > 0, 'the guest wrote during the rounds');
        assert.ok(r.equal, `shadow differs from RAM at byte ${r.firstDiff} (region ${Math.floor(r.firstDiff / granularityBytes)})`);
        assert.equal(r.selfcheck, 0, 'the guest\'s own invariants hold');
      });
      it(`unaligned straddling writer, ${vcpus} vCPU(s), ${granularityBytes / KiB} KiB regions`, async () => {
        const r = await runOracle(await wat2wasm(UNALIGNED_WRITER), vcpus, granularityBytes, '');
        assert.ok(r.fired > 0);
        assert.ok(r.equal, `shadow differs from RAM at byte ${r.firstDiff}`);
      });
    }
  }
});

describe('trace oracle: both installation strategies, up to 8 vCPUs (oversubscribed on 2 cores)', () => {
  for (const strategy of ['single', 'stop-all'] as const) {
    for (const vcpus of strategy === 'single' ? [8] : [1, 2, 4, 8]) {
      for (const granularityBytes of [4 * KiB, 2 * MiB]) {
        it(`${strategy}: multi-vCPU dirtier, ${vcpus} vCPU(s), ${granularityBytes / KiB} KiB regions`, async () => {
          const dirtier = await readFile(guestImagePath('dirtier'));
          const r = await runOracle(dirtier, vcpus, granularityBytes, 'hot=8MiB pattern=random', undefined, strategy);
          assert.ok(r.fired > 0);
          assert.ok(r.equal, `shadow differs from RAM at byte ${r.firstDiff}`);
          assert.equal(r.selfcheck, 0);
        });
      }
    }
  }
  it('stop-all: the unaligned straddling writer on 4 vCPUs', async () => {
    const r = await runOracle(await wat2wasm(UNALIGNED_WRITER), 4, 4 * KiB, '', undefined, 'stop-all');
    assert.ok(r.fired > 0);
    assert.ok(r.equal, `shadow differs from RAM at byte ${r.firstDiff}`);
  });
});

describe('trace oracle: granularity changed while the guest runs', () => {
  it('4 KiB -> 2 MiB -> 64 KiB on 4 vCPUs: each phase re-arms everything and the shadow stays exact', async () => {
    const vm = Vm.create(await readFile(guestImagePath('dirtier')), { memoryBytes: RAM_BYTES, vcpus: 4, cmdline: 'hot=8MiB pattern=random', hangTimeoutMs: 5000 });
    try {
      await vm.start();
      const shadow = Buffer.alloc(RAM_BYTES);
      for (const gran of [4 * KiB, 2 * MiB, 64 * KiB]) {
        const tracker = await vm.setTraceGranularity(gran);
        assert.equal(vm.granularityBytes, gran);
        await tracker.armAll();
        shadow.set(vm.ram); // a full copy starts each phase, as a new pre-copy would
        for (let round = 0; round < 8; round++) {
          await sleep(2);
          for (const r of (await vm.tracker.collect()).regions) shadow.set(vm.ram.subarray(r * gran, Math.min((r + 1) * gran, RAM_BYTES)), r * gran);
        }
      }
      await vm.pause();
      const gran = vm.granularityBytes;
      for (const r of vm.tracker.collectPaused().regions) shadow.set(vm.ram.subarray(r * gran, Math.min((r + 1) * gran, RAM_BYTES)), r * gran);
      assert.ok(shadow.equals(Buffer.from(vm.ram.buffer, 0, RAM_BYTES)), 'shadow equals RAM');
      assert.equal(vm.selfcheck(), 0);
    } finally {
      await vm.stop();
    }
  });
});

describe('trace oracle: split regions (adaptive per-page tracing)', () => {
  for (const strategy of ['single', 'stop-all'] as const) {
    it(`${strategy}: 2 MiB regions, half of them split to 4 KiB pages mid-run, 4 vCPUs`, async () => {
      const gran = 2 * MiB;
      const vm = Vm.create(await readFile(guestImagePath('dirtier')), { memoryBytes: RAM_BYTES, vcpus: 4, cmdline: 'hot=12MiB pattern=random', hangTimeoutMs: 5000 });
      try {
        await vm.start();
        const tracker = await vm.setTraceGranularity(gran);
        tracker.strategy = strategy;
        await tracker.armAll();
        const shadow = Buffer.from(vm.ram);
        const copy = (r: { regions: Uint32Array; pages: Uint32Array }): void => {
          for (const x of r.regions) shadow.set(vm.ram.subarray(x * gran, Math.min((x + 1) * gran, RAM_BYTES)), x * gran);
          for (const p of r.pages) shadow.set(vm.ram.subarray(p * 4096, (p + 1) * 4096), p * 4096);
        };
        let pagesSeen = 0;
        for (let round = 0; round < 16; round++) {
          await sleep(2);
          const r = await tracker.collect();
          pagesSeen += r.pages.length;
          copy(r);
          if (round === 5) {
            // Split the even regions with every vCPU parked (what the migration does).
            await vm.pause();
            copy(tracker.collectPaused());
            tracker.split(Array.from({ length: RAM_BYTES / gran / 2 }, (_, i) => i * 2));
            vm.resume();
          }
        }
        await vm.pause();
        copy(tracker.collectPaused());
        assert.ok(pagesSeen > 0, 'split regions reported pages');
        assert.ok(shadow.equals(Buffer.from(vm.ram.buffer, 0, RAM_BYTES)), 'shadow equals RAM');
        assert.equal(vm.selfcheck(), 0);
      } finally {
        await vm.stop();
      }
    });
  }
});

describe('trace oracle: a broken tracker is caught', () => {
  it('plain stores not marked: the dirtier\'s page writes are lost from the shadow', async () => {
    const dirtier = await readFile(guestImagePath('dirtier'));
    const r = await runOracle(dirtier, 2, 4 * KiB, 'hot=8MiB pattern=random', { skipPlainStoreMarks: true });
    assert.equal(r.equal, false, 'the oracle must detect the missing marks');
  });

  it('first-region-only marking: straddling writes are lost from the shadow', async () => {
    assert.notEqual(STRADDLE_WRITER, UNALIGNED_WRITER);
    const good = await runOracle(await wat2wasm(STRADDLE_WRITER), 2, 4 * KiB, '');
    assert.ok(good.equal, 'the straddling writer is tracked correctly by the real tracker');
    const r = await runOracle(await wat2wasm(STRADDLE_WRITER), 2, 4 * KiB, '', { markFirstRegionOnly: true });
    assert.equal(r.equal, false, 'the oracle must detect writes into the second region');
  });
});
