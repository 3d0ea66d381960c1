import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { MAX_MEMORY_PAYLOAD_BYTES } from '../../../src/migration/protocol/frame.js';
import {
  BatchBuilder, decodeMemoryBatch, encodeMemoryBatch, memoryEntryWireBytes, type MemoryEntryInput,
} from '../../../src/migration/protocol/memory-batch.js';
import { KiB, MiB, RAM_BYTES, memoryEntries, throwsCode } from './fixtures.js';

const GiB = 1024 * MiB;

interface RawEntry {
  offsetLow?: number | undefined; offsetHigh?: number | undefined; length: number; encoding: number; r8?: number; r16?: number; tail?: Buffer;
}

/** A MEMORY payload built byte by byte from the document's layout, bypassing the encoder. */
function rawBatch(round: number, count: number, entries: RawEntry[], trailing = 0): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(8);
  head.writeUInt32LE(round, 0);
  head.writeUInt32LE(count, 4);
  parts.push(head);
  for (const e of entries) {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(e.offsetLow ?? 0, 0);
    h.writeUInt32LE(e.offsetHigh ?? 0, 4);
    h.writeUInt32LE(e.length, 8);
    h.writeUInt8(e.encoding, 12);
    h.writeUInt8(e.r8 ?? 0, 13);
    h.writeUInt16LE(e.r16 ?? 0, 14);
    parts.push(h);
    if (e.tail) parts.push(e.tail);
  }
  parts.push(Buffer.alloc(trailing));
  return Buffer.concat(parts);
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}

const raw4k = (offsetLow: number, extra: Partial<RawEntry> = {}): RawEntry =>
  ({ offsetLow, length: 4096, encoding: 0, tail: Buffer.alloc(4096, 1), ...extra });

describe('MEMORY batch layout', () => {
  it('matches the document byte for byte', () => {
    const data = Buffer.alloc(4096, 0xab);
    const payload = encodeMemoryBatch(0x01020304, [
      { offset: 5 * 2 ** 32 + 8192, length: 4096, encoding: 'raw', data },
      { offset: 4096, length: 8192, encoding: 'zero' },
      { offset: 0, length: 4096, encoding: 'deflate', data: Buffer.from([7, 8, 9]) },
    ]);
    const expected = rawBatch(0x01020304, 3, [
      { offsetLow: 8192, offsetHigh: 5, length: 4096, encoding: 0, tail: data },
      { offsetLow: 4096, length: 8192, encoding: 1 },
      { offsetLow: 0, length: 4096, encoding: 2, tail: Buffer.concat([u32(3), Buffer.from([7, 8, 9])]) },
    ]);
    assert.ok(payload.equals(expected));
    assert.equal(payload.length, 8 + 16 + 4096 + 16 + 16 + 4 + 3);
  });
});

describe('MEMORY batch round trip', () => {
  it('decodes raw, zero and real deflate-raw entries; data are views into the payload', () => {
    const page = Buffer.alloc(64 * KiB);
    for (let i = 0; i < page.length; i++) page[i] = (i >> 8) & 0x0f;
    const compressed = deflateRawSync(page);
    assert.ok(compressed.length < page.length);
    const entries: MemoryEntryInput[] = [...memoryEntries(), { offset: 64 * KiB, length: 64 * KiB, encoding: 'deflate', data: compressed }];
    const payload = encodeMemoryBatch(9, entries);
    const batch = decodeMemoryBatch(payload, RAM_BYTES);
    assert.equal(batch.round, 9);
    assert.equal(batch.entries.length, entries.length);
    batch.entries.forEach((e, i) => {
      const input = entries[i];
      assert.ok(input);
      assert.equal(e.offset, input.offset);
      assert.equal(e.length, input.length);
      assert.equal(e.encoding, input.encoding);
      if (input.encoding === 'zero') {
        assert.equal(e.data, null);
      } else {
        assert.ok(e.data && input.data && Buffer.from(input.data).equals(e.data));
        assert.equal(e.data.buffer, payload.buffer, 'no copy');
      }
    });
    const last = batch.entries[3]?.data;
    assert.ok(last);
    assert.ok(inflateRawSync(last).equals(page));
    assert.ok(encodeMemoryBatch(batch.round, batch.entries).equals(payload));
  });

  it('accepts an empty batch, the last page of RAM, a 2 MiB entry, a u32 round and large RAM offsets', () => {
    assert.deepEqual(decodeMemoryBatch(encodeMemoryBatch(2 ** 32 - 1, []), RAM_BYTES), { round: 2 ** 32 - 1, entries: [] });
    const last = decodeMemoryBatch(encodeMemoryBatch(0, [{ offset: RAM_BYTES - 4096, length: 4096, encoding: 'zero' }]), RAM_BYTES);
    assert.equal(last.entries[0]?.offset, RAM_BYTES - 4096);
    const big = decodeMemoryBatch(encodeMemoryBatch(0, [{ offset: 0, length: 2 * MiB, encoding: 'raw', data: Buffer.alloc(2 * MiB) }]), 2 * MiB);
    assert.equal(big.entries[0]?.length, 2 * MiB);
    const high = decodeMemoryBatch(encodeMemoryBatch(0, [{ offset: 3 * GiB - 4096, length: 4096, encoding: 'zero' }]), 3 * GiB);
    assert.equal(high.entries[0]?.offset, 3 * GiB - 4096);
  });

  it('takes 4096 entries but not 4097', () => {
    const zeros = Array.from({ length: 4096 }, (_, i): MemoryEntryInput => ({ offset: i * 4096, length: 4096, encoding: 'zero' }));
    assert.equal(decodeMemoryBatch(encodeMemoryBatch(1, zeros), 4096 * 4096).entries.length, 4096);
    throwsCode(() => encodeMemoryBatch(1, [...zeros, { offset: 0, length: 4096, encoding: 'zero' }]), 'PROTOCOL_TOO_LARGE');
  });
});

describe('MEMORY batch decoder rejects', () => {
  const RAM = RAM_BYTES;
  const bad = (payload: Buffer, message?: RegExp): void => throwsCode(() => decodeMemoryBatch(payload, RAM), 'PROTOCOL_BAD_PAYLOAD', message);

  it('a payload shorter than its header', () => {
    for (let n = 0; n < 8; n++) bad(Buffer.alloc(n));
  });

  it('a misaligned offset', () => {
    for (const low of [1, 512, 4095, 4097, 8191]) bad(rawBatch(0, 1, [raw4k(low)]), /multiple of 4096/);
  });

  it('a range beyond RAM (and accepts the exact end)', () => {
    decodeMemoryBatch(rawBatch(0, 1, [raw4k(RAM - 4096)]), RAM);
    bad(rawBatch(0, 1, [raw4k(RAM)]), /outside guest RAM/);
    bad(rawBatch(0, 1, [{ offsetLow: RAM - 4096, length: 8192, encoding: 1 }]), /outside guest RAM/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 1 }]).fill(0xff, 8, 12), /multiple of 4096|outside/);
  });

  it('huge u64 offsets (no precision loss)', () => {
    for (const [high, low] of [[1, 0], [0x1f_ffff, 0xffff_f000], [0x20_0000, 0], [0xffff_ffff, 0xffff_f000], [0x7fff_ffff, 0]]) {
      bad(rawBatch(0, 1, [{ offsetLow: low, offsetHigh: high, length: 4096, encoding: 1 }]), /outside guest RAM/);
    }
    // With a RAM size just under 2^53, offsets near it must still compare exactly.
    const ram = 2 ** 53 - 4096 * 2;
    const top = ram - 4096; // 2^53 - 3 pages, exactly representable
    const ok = rawBatch(0, 1, [{ offsetLow: top % 2 ** 32, offsetHigh: Math.floor(top / 2 ** 32), length: 4096, encoding: 1 }]);
    assert.equal(decodeMemoryBatch(ok, ram).entries[0]?.offset, top);
    const over = rawBatch(0, 1, [{ offsetLow: ram % 2 ** 32, offsetHigh: Math.floor(ram / 2 ** 32), length: 4096, encoding: 1 }]);
    throwsCode(() => decodeMemoryBatch(over, ram), 'PROTOCOL_BAD_PAYLOAD', /outside guest RAM/);
  });

  it('bad lengths: 0, not a multiple of 4096, over 2 MiB', () => {
    for (const length of [0, 1, 4095, 4097, 6144, 2 * MiB + 4096, 4 * MiB, 0xffff_ffff]) {
      bad(rawBatch(0, 1, [{ offsetLow: 0, length, encoding: 1 }]), /length/);
    }
  });

  it('an unknown encoding and non-zero reserved bytes', () => {
    for (const encoding of [3, 4, 255]) bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding }]), /encoding/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 1, r8: 1 }]), /reserved/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 1, r16: 1 }]), /reserved/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 1, r16: 0x8000 }]), /reserved/);
  });

  it('count overflow and count/entry mismatches', () => {
    bad(rawBatch(0, 4097, []), /4097 entries/);
    bad(rawBatch(0, 0xffff_ffff, []), /entries/);
    bad(rawBatch(0, 2, [{ offsetLow: 0, length: 4096, encoding: 1 }]), /fit|ends/);
    // The count claims 2 entries and the bytes would hold two headers, but the first entry's data eats them.
    bad(rawBatch(0, 2, [raw4k(0)]));
    bad(rawBatch(0, 0, [{ offsetLow: 0, length: 4096, encoding: 1 }]), /follow/);
  });

  it('trailing bytes after the last entry', () => {
    bad(rawBatch(0, 0, [], 1), /exactly fill/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 1 }], 3), /exactly fill/);
    bad(rawBatch(0, 1, [raw4k(0)], 16), /exactly fill/);
  });

  it('short raw data', () => {
    bad(rawBatch(0, 1, [raw4k(0, { tail: Buffer.alloc(4095) })]), /raw data/);
    bad(rawBatch(0, 1, [raw4k(0, { tail: Buffer.alloc(0) })]), /raw data/);
  });

  it('bad deflate entries: missing length, 0, over length, short data', () => {
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 2, tail: Buffer.alloc(3) }]), /compressed length/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 2, tail: u32(0) }]), /compressed length 0/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 2, tail: Buffer.concat([u32(4097), Buffer.alloc(4097)]) }]), /4097/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 2, tail: Buffer.concat([u32(0xffff_ffff), Buffer.alloc(8)]) }]), /compressed length/);
    bad(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 2, tail: Buffer.concat([u32(10), Buffer.alloc(9)]) }]), /compressed data/);
    // Exactly `length` compressed bytes is allowed.
    decodeMemoryBatch(rawBatch(0, 1, [{ offsetLow: 0, length: 4096, encoding: 2, tail: Buffer.concat([u32(4096), Buffer.alloc(4096)]) }]), RAM);
  });

  it('a payload over the MEMORY bound is PROTOCOL_TOO_LARGE', () => {
    throwsCode(() => decodeMemoryBatch(Buffer.alloc(MAX_MEMORY_PAYLOAD_BYTES + 1), RAM), 'PROTOCOL_TOO_LARGE');
  });
});

describe('MEMORY batch encoder rejects', () => {
  it('invalid entries and rounds', () => {
    const cases: MemoryEntryInput[] = [
      { offset: 1, length: 4096, encoding: 'zero' },
      { offset: -4096, length: 4096, encoding: 'zero' },
      { offset: 2 ** 53, length: 4096, encoding: 'zero' },
      { offset: 0, length: 0, encoding: 'zero' },
      { offset: 0, length: 4097, encoding: 'zero' },
      { offset: 0, length: 4 * MiB, encoding: 'zero' },
      { offset: 0, length: 4096, encoding: 'raw' },
      { offset: 0, length: 4096, encoding: 'raw', data: Buffer.alloc(4095) },
      { offset: 0, length: 4096, encoding: 'zero', data: Buffer.alloc(4096) },
      { offset: 0, length: 4096, encoding: 'deflate' },
      { offset: 0, length: 4096, encoding: 'deflate', data: Buffer.alloc(0) },
      { offset: 0, length: 4096, encoding: 'deflate', data: Buffer.alloc(4097) },
      { offset: 0, length: 4096, encoding: 'lz4' as 'raw' },
    ];
    for (const e of cases) throwsCode(() => encodeMemoryBatch(0, [e]), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeMemoryBatch(-1, []), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeMemoryBatch(2 ** 32, []), 'PROTOCOL_BAD_PAYLOAD');
  });

  it('a payload over the bound', () => {
    const big = Array.from({ length: 5 }, (_, i): MemoryEntryInput => ({ offset: i * 2 * MiB, length: 2 * MiB, encoding: 'raw', data: Buffer.alloc(2 * MiB) }));
    throwsCode(() => encodeMemoryBatch(0, big), 'PROTOCOL_TOO_LARGE');
  });
});

describe('BatchBuilder', () => {
  it('fills a batch up to the payload bound and reports when it is full', () => {
    const b = new BatchBuilder(4);
    assert.ok(b.isEmpty);
    const two = Buffer.alloc(2 * MiB, 3);
    let added = 0;
    while (b.add({ offset: added * 2 * MiB, length: 2 * MiB, encoding: 'raw', data: two })) added++;
    assert.equal(added, 4);
    assert.equal(b.payloadBytes, 8 + 4 * (16 + 2 * MiB));
    assert.equal(b.isFull, false, 'small entries still fit');
    let zeros = 0;
    while (!b.isFull) {
      assert.ok(b.add({ offset: 0, length: 4096, encoding: 'zero' }));
      zeros++;
    }
    assert.equal(b.count, 4 + zeros);
    assert.ok(b.payloadBytes <= MAX_MEMORY_PAYLOAD_BYTES);
    assert.equal(b.add({ offset: 0, length: 4096, encoding: 'zero' }), false);
    const payload = b.build();
    assert.equal(payload.length, 8 + 4 * (16 + 2 * MiB) + zeros * 16);
    assert.ok(b.isEmpty);
    assert.equal(b.payloadBytes, 8);
    const batch = decodeMemoryBatch(payload, 8 * MiB);
    assert.equal(batch.round, 4);
    assert.equal(batch.entries.length, 4 + zeros);
  });

  it('stops at 4096 entries', () => {
    const b = new BatchBuilder(0);
    for (let i = 0; i < 4096; i++) assert.ok(b.add({ offset: 0, length: 4096, encoding: 'zero' }));
    assert.ok(b.isFull);
    assert.equal(b.fits({ offset: 0, length: 4096, encoding: 'zero' }), false);
    assert.equal(b.add({ offset: 0, length: 4096, encoding: 'zero' }), false);
  });

  it('honours a smaller limit, sizes entries, and rejects invalid entries on add', () => {
    const b = new BatchBuilder(1, 8 + 16 + 4096);
    const e: MemoryEntryInput = { offset: 0, length: 4096, encoding: 'raw', data: Buffer.alloc(4096) };
    assert.equal(memoryEntryWireBytes(e), 16 + 4096);
    assert.equal(memoryEntryWireBytes({ offset: 0, length: 4096, encoding: 'deflate', data: Buffer.alloc(7) }), 16 + 4 + 7);
    assert.ok(b.fits(e));
    assert.ok(b.add(e));
    assert.ok(b.isFull);
    assert.equal(b.add(e), false);
    throwsCode(() => b.add({ offset: 3, length: 4096, encoding: 'zero' }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => new BatchBuilder(-1), 'PROTOCOL_BAD_PAYLOAD');
  });
});
