/**
 * The diskbench guest (guests/src/diskbench.ts) on a real monolithicSparse VMDK: its done line adds
 * up, what it wrote is exactly the content function of bench/disk-pattern.ts (read back through
 * VmdkDisk, outside the guest), its reads verify, and its verification fails where it must — on a
 * sector corrupted behind its back and on a wrong seed. Flush mode reports one latency per flush.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Vm } from '../../src/vmm/vm.js';
import { blockBackend } from '../../src/vmm/devices/block.js';
import { KiB, MiB } from '../../src/lib/units.js';
import type { VmdkDisk } from '../../src/storage/vmdk/disk.js';
import {
  type DiskRunShape, type DiskbenchDone, diskbenchCmdline, fillContent, firstBadOffset, parseDoneLine, parseFlushLine, requestOffsets,
} from '../../bench/disk-pattern.js';
import { guestImagePath } from '../helpers/guests.js';
import { createLocalDisk, withTempDir } from '../helpers/vmdk.js';

const DISK_BYTES = 8 * MiB;
const RAM_BYTES = 4 * MiB;
const DONE_TIMEOUT_MS = 20_000;

interface Outcome { readonly lines: readonly string[]; readonly done: DiskbenchDone }

/** Boots diskbench on `disk` with `cmdline`, waits for its done line, stops it. */
async function runGuest(disk: VmdkDisk, cmdline: string): Promise<Outcome> {
  const image = new Uint8Array(await readFile(guestImagePath('diskbench')));
  const vm = Vm.create(image, { memoryBytes: RAM_BYTES, vcpus: 1, cmdline, disk: blockBackend(disk, disk.capacityBytes) });
  const lines: string[] = [];
  try {
    const finished = new Promise<DiskbenchDone>((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`no done line in ${DONE_TIMEOUT_MS} ms; console: ${lines.join(' | ')}`)); }, DONE_TIMEOUT_MS);
      vm.on('console', (text) => {
        for (const line of text.split('\n').filter((l) => l !== '')) {
          lines.push(line);
          const done = parseDoneLine(line);
          if (done !== null) { clearTimeout(timer); resolve(done); }
        }
      });
      vm.on('crash', (c) => { clearTimeout(timer); reject(new Error(`guest crashed: ${c.message}`)); });
    });
    await vm.start();
    return { lines, done: await finished };
  } finally {
    await vm.stop();
  }
}

const shape = (over: Partial<DiskRunShape>): DiskRunShape => ({
  pattern: 'seq', op: 'write', sizeBytes: 4 * KiB, slotBytes: 4 * KiB, baseBytes: 0, count: 512, seed: 5, ...over,
});

describe('diskbench guest on a VMDK', () => {
  it('writes the documented content at the documented offsets, reads it back verified, and adds up its counts', () => withTempDir(async (dir) => {
    const disk = await createLocalDisk(join(dir, 'bench.vmdk'), DISK_BYTES);
    try {
      const write = shape({ pattern: 'rand', slotBytes: 16 * KiB, count: 256 });
      const w = await runGuest(disk, diskbenchCmdline(write, { depth: 8 }));
      assert.match(w.lines[0] ?? '', /^diskbench: disk=8MiB pattern=rand op=write size=4096 slot=16384 base=0 count=256 depth=8 seed=5 verify=1 flush=0$/);
      assert.deepEqual({ ...w.done, ns: 0 }, { ops: 256, bytes: 256 * 4 * KiB, ns: 0, reads: 0, writes: 256, flushes: 0, bad: 0, errors: 0 });
      assert.ok(w.done.ns > 0, 'the run took time');

      // Outside the guest: every request's slot holds the content function; the gaps between slots are zero.
      const offsets = requestOffsets(write);
      assert.equal(new Set(offsets).size, 256, 'a permutation: every slot once');
      const slot = new Uint8Array(write.slotBytes);
      for (let k = 0; k < write.count; k++) {
        await disk.read(k * write.slotBytes, slot);
        assert.equal(firstBadOffset(slot.subarray(0, write.sizeBytes), k * write.slotBytes, write.seed), -1, `slot ${k}`);
        assert.ok(slot.subarray(write.sizeBytes).every((b) => b === 0), `gap after slot ${k}`);
      }

      const r = await runGuest(disk, diskbenchCmdline({ ...write, op: 'read' }, { depth: 8 }));
      assert.equal(r.done.reads, 256);
      assert.equal(r.done.bad, 0);
      const mixed = await runGuest(disk, diskbenchCmdline({ ...write, op: 'mixed' }, { depth: 4 }));
      assert.equal(mixed.done.reads + mixed.done.writes, 256);
      assert.ok(mixed.done.reads > 0 && mixed.done.writes > 0, 'mixed does both');
      assert.equal(mixed.done.bad, 0);
    } finally {
      await disk.close();
    }
  }));

  it('reports a sector corrupted behind its back, and every sector under a wrong seed', () => withTempDir(async (dir) => {
    const disk = await createLocalDisk(join(dir, 'bench.vmdk'), DISK_BYTES);
    try {
      const seq = shape({ sizeBytes: 64 * KiB, slotBytes: 64 * KiB, count: 32, seed: 9 });
      assert.equal((await runGuest(disk, diskbenchCmdline(seq, { depth: 4 }))).done.bad, 0);
      // One sector in the middle of request 17 gets the content of another offset (a misplaced write).
      const corruptAt = 17 * 64 * KiB + 3 * 512;
      const wrong = new Uint8Array(512);
      fillContent(wrong, corruptAt + 512, seq.seed);
      await disk.write(corruptAt, wrong);

      const r = await runGuest(disk, diskbenchCmdline({ ...seq, op: 'read' }, { depth: 4 }));
      assert.equal(r.done.bad, 1);
      assert.ok(r.lines.some((l) => l.startsWith(`diskbench: bad data at offset=${corruptAt} expected=`)), r.lines.join('\n'));

      const wrongSeed = await runGuest(disk, diskbenchCmdline({ ...seq, op: 'read', seed: 10 }, { depth: 4 }));
      assert.equal(wrongSeed.done.bad, 32 * 64 * KiB / 512);
      assert.equal(wrongSeed.lines.filter((l) => l.startsWith('diskbench: bad data')).length, 8, 'reports are bounded');
    } finally {
      await disk.close();
    }
  }));

  it('flush mode times one flush per batch of writes, and after the last one', () => withTempDir(async (dir) => {
    const disk = await createLocalDisk(join(dir, 'bench.vmdk'), DISK_BYTES);
    try {
      const run = await runGuest(disk, diskbenchCmdline(shape({ count: 70 }), { depth: 8, flushEvery: 16 }));
      const latencies = run.lines.map(parseFlushLine).filter((ns) => ns !== null);
      assert.equal(latencies.length, 5, '16+16+16+16+6 writes');
      assert.ok(latencies.every((ns) => ns > 0));
      assert.equal(run.done.flushes, 5);
      assert.equal(run.done.errors, 0);
    } finally {
      await disk.close();
    }
  }));
});
