import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChangedBlocks, MAX_CHANGED_BLOCKS, MAX_CHANGED_BLOCK_BYTES, MIN_CHANGED_BLOCK_BYTES, changedBlockBytesFor } from '../../src/storage/changed-blocks.js';
import { GiB, MiB } from '../../src/lib/units.js';

describe('changed blocks', () => {
  it('marks every block a range touches, once, and take() clears', () => {
    const t = new ChangedBlocks(1 * MiB, 64 * 1024);
    assert.equal(t.blockCount, 16);
    t.mark(64 * 1024 - 512, 1024); // straddles blocks 0 and 1
    t.mark(0, 512);
    t.mark(15 * 64 * 1024, 64 * 1024);
    assert.equal(t.count, 3);
    assert.deepEqual(t.take(), [0, 1, 15]);
    assert.equal(t.count, 0);
    assert.deepEqual(t.take(), []);
    t.markAll();
    assert.equal(t.take().length, 16);
  });

  it('gives the short last block its real length', () => {
    const t = new ChangedBlocks(64 * 1024 + 512, 64 * 1024);
    assert.equal(t.blockCount, 2);
    assert.deepEqual(t.range(1), { offsetBytes: 64 * 1024, lengthBytes: 512 });
  });

  it('grows the block size with the disk and refuses what it cannot track', () => {
    assert.equal(changedBlockBytesFor(1 * GiB), MIN_CHANGED_BLOCK_BYTES);
    const big = changedBlockBytesFor(1024 * GiB);
    assert.ok(Math.ceil((1024 * GiB) / big) <= MAX_CHANGED_BLOCKS && big > MIN_CHANGED_BLOCK_BYTES);
    assert.throws(() => changedBlockBytesFor(MAX_CHANGED_BLOCKS * MAX_CHANGED_BLOCK_BYTES + 512), { code: 'DISK_TOO_LARGE' });
  });
});
