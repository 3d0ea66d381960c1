import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { MiB } from '../../src/lib/units.js';
import { computeLayout } from '../../src/vmm/layout.js';
import { Vm } from '../../src/vmm/vm.js';
import { WARM_FILL_SLICE_BYTES, WarmMemory, registerWarmMemory, takeWarmMemory } from '../../src/vmm/warm-memory.js';

const RAM_BYTES = 64 * MiB;

/** True when every byte is zero (sampled per 4 KiB page's first and last byte, and one whole page in 64). */
function allZero(memory: WebAssembly.Memory): boolean {
  const bytes = new Uint8Array(memory.buffer);
  for (let p = 0; p < bytes.length; p += 4096) {
    if (bytes[p] !== 0 || bytes[p + 4095] !== 0) return false;
    if ((p / 4096) % 64 === 0 && bytes.subarray(p, p + 4096).some((b) => b !== 0)) return false;
  }
  return true;
}

describe('WarmMemory', () => {
  const pools: WarmMemory[] = [];
  afterEach(() => { for (const p of pools.splice(0)) p.close(); });

  it('fills a spare of the VM size, hands it over once to exactly that size, all zero, and refills later', async () => {
    const lines: string[] = [];
    const warm = new WarmMemory(RAM_BYTES, (l) => { lines.push(l); });
    pools.push(warm);
    assert.equal(warm.totalPages, computeLayout(RAM_BYTES).totalPages);
    await warm.fill();
    assert.ok(warm.ready);
    assert.ok(lines.some((l) => /ready in \d+ ms/.test(l)), lines.join('\n'));
    assert.equal(warm.take(warm.totalPages + 1), null, 'another size gets nothing');
    const m = warm.take(warm.totalPages);
    assert.ok(m !== null);
    assert.equal(m.buffer.byteLength, warm.totalPages * 65_536);
    assert.ok(allZero(m));
    assert.equal(warm.take(warm.totalPages), null, 'handed over once');
    assert.equal(warm.taken, 1);
    assert.ok(!warm.ready);
  });

  it('hands a spare over while it is still filling (the warm part helps), and stops filling it', async () => {
    const warm = new WarmMemory(RAM_BYTES);
    pools.push(warm);
    const filling = warm.fill();
    // After the first slice: filling yields to the event loop between slices.
    await new Promise<void>((resolve) => { setImmediate(resolve); });
    const m = warm.take(warm.totalPages);
    assert.ok(m !== null, 'taken mid-fill');
    new Uint8Array(m.buffer)[RAM_BYTES - 1] = 7; // the VM's own write, past the slices filled so far
    await filling;
    assert.equal(new Uint8Array(m.buffer)[RAM_BYTES - 1], 7, 'the fill never writes a memory it handed over');
    assert.ok(RAM_BYTES > 2 * WARM_FILL_SLICE_BYTES);
  });

  it('is what a VM of its size gets once registered; close withdraws it', async () => {
    const warm = new WarmMemory(RAM_BYTES);
    pools.push(warm);
    const unregister = registerWarmMemory(warm);
    try {
      await warm.fill();
      const image = await readFile(new URL('../../guests/compute.wasm', import.meta.url));
      const other = Vm.create(image, { name: 'w-other', memoryBytes: 2 * RAM_BYTES });
      assert.equal(warm.taken, 0, 'a VM of another size allocates its own');
      await other.stop();
      const vm = Vm.create(image, { name: 'w-1', memoryBytes: RAM_BYTES });
      assert.equal(warm.taken, 1, 'a VM of the size takes the spare');
      await vm.stop();
      warm.close();
      assert.equal(takeWarmMemory(warm.totalPages), null);
      await warm.fill();
      assert.ok(!warm.ready, 'a closed pool fills nothing');
    } finally {
      unregister();
    }
  });
});
