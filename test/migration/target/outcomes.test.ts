import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_REMEMBERED_OUTCOMES, RememberedOutcomes } from '../../../src/migration/target/outcomes.js';

describe('remembered outcomes (target)', () => {
  it('forgets the oldest durable outcomes beyond the bound, never one only memory holds', () => {
    const o = new RememberedOutcomes();
    o.addPending('only-memory');
    for (let i = 0; i < MAX_REMEMBERED_OUTCOMES + 10; i++) o.remember(`d${i}`, { state: 'aborted' }, true);
    assert.ok(o.size <= MAX_REMEMBERED_OUTCOMES);
    assert.deepEqual(o.get('only-memory'), { state: 'pending' });
    assert.equal(o.get('d0'), undefined);
    assert.deepEqual(o.get(`d${MAX_REMEMBERED_OUTCOMES + 9}`), { state: 'aborted' });
    assert.equal(o.full, false);
  });

  it('is full when every outcome is held by memory only', () => {
    const o = new RememberedOutcomes();
    for (let i = 0; i < MAX_REMEMBERED_OUTCOMES; i++) o.addPending(`p${i}`);
    assert.equal(o.full, true);
    o.remember('p0', { state: 'committed' }, true); // recorded durably: may now be forgotten
    assert.equal(o.full, false);
  });
});
