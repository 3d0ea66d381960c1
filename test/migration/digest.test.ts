import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DIGEST_PAGE_BYTES, MemoryDigest, digestOf } from '../../src/migration/digest.js';

const PAGES = 8;
const ZERO_DIGEST = '0'.repeat(16);

describe('memory digest', () => {
  it('all-zero memory digests to 0; a page whose only non-zero byte is its last one counts', () => {
    const ram = Buffer.alloc(PAGES * DIGEST_PAGE_BYTES);
    assert.equal(digestOf(ram), ZERO_DIGEST);
    ram[3 * DIGEST_PAGE_BYTES + DIGEST_PAGE_BYTES - 1] = 1;
    assert.notEqual(digestOf(ram), ZERO_DIGEST);
  });

  it('depends on where a page is, and returns to its value when a page is zeroed again', () => {
    const page = Buffer.alloc(DIGEST_PAGE_BYTES, 0x5a);
    const d = new MemoryDigest(PAGES * DIGEST_PAGE_BYTES);
    d.update(DIGEST_PAGE_BYTES, page);
    const at1 = d.hex();
    const other = new MemoryDigest(PAGES * DIGEST_PAGE_BYTES);
    other.update(2 * DIGEST_PAGE_BYTES, page);
    assert.notEqual(other.hex(), at1, 'the same content at another page');
    d.updateZero(DIGEST_PAGE_BYTES, DIGEST_PAGE_BYTES);
    assert.equal(d.hex(), ZERO_DIGEST);
    d.update(DIGEST_PAGE_BYTES, Buffer.alloc(DIGEST_PAGE_BYTES));
    assert.equal(d.hex(), ZERO_DIGEST, 'a zero page written as data contributes what a zero entry does');
  });

  it('an incremental digest equals the digest of the final memory', () => {
    const ram = Buffer.alloc(PAGES * DIGEST_PAGE_BYTES);
    const d = new MemoryDigest(ram.length);
    for (let p = 0; p < PAGES; p++) {
      ram.fill(p + 1, p * DIGEST_PAGE_BYTES, (p + 1) * DIGEST_PAGE_BYTES);
      d.update(p * DIGEST_PAGE_BYTES, ram.subarray(p * DIGEST_PAGE_BYTES, (p + 1) * DIGEST_PAGE_BYTES));
    }
    ram.fill(0, 2 * DIGEST_PAGE_BYTES, 3 * DIGEST_PAGE_BYTES);
    d.updateZero(2 * DIGEST_PAGE_BYTES, DIGEST_PAGE_BYTES);
    assert.equal(d.hex(), digestOf(ram));
    assert.ok(d.unchanged(0, ram.subarray(0, DIGEST_PAGE_BYTES)));
    assert.ok(!d.unchanged(0, Buffer.alloc(DIGEST_PAGE_BYTES, 9)));
  });

  it('pages seen non-zero skip the zero check: equal for non-zero data; a page zeroed meanwhile differs until it is sent again', () => {
    const page = Buffer.alloc(DIGEST_PAGE_BYTES, 0x33);
    const checked = new MemoryDigest(PAGES * DIGEST_PAGE_BYTES);
    const seen = new MemoryDigest(PAGES * DIGEST_PAGE_BYTES);
    checked.update(DIGEST_PAGE_BYTES, Buffer.concat([page, page]));
    seen.updateSeenNonZero(DIGEST_PAGE_BYTES, Buffer.concat([page, page]));
    assert.equal(seen.hex(), checked.hex());
    // The race: the sender saw the page non-zero, the guest zeroed it before the copy.
    const target = new MemoryDigest(PAGES * DIGEST_PAGE_BYTES);
    const source = new MemoryDigest(PAGES * DIGEST_PAGE_BYTES);
    target.update(0, Buffer.alloc(DIGEST_PAGE_BYTES));
    source.updateSeenNonZero(0, Buffer.alloc(DIGEST_PAGE_BYTES));
    assert.notEqual(source.hex(), target.hex(), 'differs until the page is sent again');
    assert.ok(!source.unchanged(0, Buffer.alloc(DIGEST_PAGE_BYTES)), 'and the unchanged-page check sends it again');
    // The next round sends it as a zero entry (or raw, if the guest wrote it again): the two agree.
    source.updateZero(0, DIGEST_PAGE_BYTES);
    target.updateZero(0, DIGEST_PAGE_BYTES);
    assert.equal(source.hex(), target.hex());
  });
});
