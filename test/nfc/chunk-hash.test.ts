/**
 * The copy's checksums: a chunk hashed on a hashing thread (from a shared chunk buffer, not copied) and
 * on the calling thread (any other buffer) gives the plain SHA-256; many at once come back each to its
 * caller; holes are found and their checksum is the SHA-256 of zeros of their length; a file digest is
 * SHA-256 over the chunks' checksums in order, one at a time or several in a row.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { FileDigest, MAX_HASH_THREADS, chunkBuffer, chunkCount, chunkLength, chunkSha256, isZeroChunk, zeroChunkSha256 } from '../../src/nfc/chunk-hash.js';
import { NFC_CHUNK_BYTES } from '../../src/nfc/plan.js';

const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

describe('chunk checksums', () => {
  it('hashes shared chunk buffers on the hashing threads and other buffers here, to the plain SHA-256, each answer to its own request', async () => {
    assert.ok(MAX_HASH_THREADS >= 1);
    const buffers = Array.from({ length: 16 }, (_, i) => {
      const b = chunkBuffer();
      assert.ok(b.buffer instanceof SharedArrayBuffer);
      randomBytes(NFC_CHUNK_BYTES).copy(b);
      return i % 3 === 0 ? b.subarray(0, 1000 + i) : b;
    });
    const sums = await Promise.all(buffers.map((b) => chunkSha256(b)));
    for (const [i, b] of buffers.entries()) assert.ok(Buffer.from(sums[i] ?? []).equals(sha(b)), `buffer ${i}`);
    const plain = randomBytes(4096);
    assert.ok(Buffer.from(await chunkSha256(plain)).equals(sha(plain)));
  });

  it('finds holes; a hole\'s checksum is that of its zeros; chunk counts and lengths; a file digest over the checksums in order', () => {
    const zeros = chunkBuffer();
    assert.equal(isZeroChunk(zeros), true);
    assert.equal(isZeroChunk(zeros.subarray(0, 17)), true);
    zeros[NFC_CHUNK_BYTES - 1] = 1;
    assert.equal(isZeroChunk(zeros), false, 'a last byte set');
    assert.ok(Buffer.from(zeroChunkSha256(NFC_CHUNK_BYTES)).equals(sha(Buffer.alloc(NFC_CHUNK_BYTES))));
    assert.ok(Buffer.from(zeroChunkSha256(12_345)).equals(sha(Buffer.alloc(12_345))));
    assert.deepEqual([chunkCount(0), chunkCount(1), chunkCount(NFC_CHUNK_BYTES), chunkCount(NFC_CHUNK_BYTES + 1)], [0, 1, 1, 2]);
    assert.deepEqual([chunkLength(NFC_CHUNK_BYTES + 5, 0), chunkLength(NFC_CHUNK_BYTES + 5, NFC_CHUNK_BYTES)], [NFC_CHUNK_BYTES, 5]);
    const a = sha(Buffer.from('a'));
    const b = sha(Buffer.from('b'));
    const one = new FileDigest();
    one.add(a);
    one.add(b);
    const together = new FileDigest();
    together.add(Buffer.concat([a, b]));
    const want = createHash('sha256').update(a).update(b).digest('hex');
    assert.deepEqual([one.hex(), together.hex()], [want, want]);
  });
});
