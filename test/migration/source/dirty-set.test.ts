import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { allRegions, coveredBytes, firedCount, union } from '../../../src/migration/source/dirty-set.js';

describe('dirty sets (source)', () => {
  it('unites regions and pages ascending, without duplicates', () => {
    const a = { regions: Uint32Array.of(1, 5, 9), pages: Uint32Array.of(100) };
    const b = { regions: Uint32Array.of(0, 5, 10), pages: new Uint32Array(0) };
    const u = union(a, b);
    assert.deepEqual([...u.regions], [0, 1, 5, 9, 10]);
    assert.deepEqual([...u.pages], [100]);
    assert.equal(firedCount(u), 6);
    assert.equal(coveredBytes(u, 64 * 1024), 5 * 64 * 1024 + 4096);
  });

  it('round 1 covers every region', () => {
    assert.deepEqual([...allRegions(4).regions], [0, 1, 2, 3]);
    assert.equal(allRegions(4).pages.length, 0);
  });
});
