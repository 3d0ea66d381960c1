/**
 * A file's digest as the network file copy computes it (docs/design/nfc.md, "Units, boundaries,
 * digests"): SHA-256 over the SHA-256 of each NFC_CHUNK_BYTES chunk in order, the last chunk
 * shorter; a hole (an all-zero chunk) counts with the SHA-256 of its zeros, exactly as the copy's
 * source checksums it (zeroChunkSha256 is that hash, cached). So the digest of a file read here equals
 * the `sourceDigest` a copy of the same bytes reported — what a seed's target checks its seed file with.
 *
 * Chunks are hashed on the copy's hashing threads (./chunk-hash.ts), FILE_DIGEST_INFLIGHT_CHUNKS at a
 * time: reads and hashes overlap, and the memory held is bounded whatever the file's size.
 */
import { FerryError } from '../lib/errors.js';
import type { BlockFile } from '../storage/block-file.js';
import { FileDigest, chunkBuffer, chunkCount, chunkLength, chunkSha256, isZeroChunk, zeroChunkSha256 } from './chunk-hash.js';
import { NFC_CHUNK_BYTES } from './plan.js';

/** Chunks read or hashed at once (4 MiB held): enough to keep both hashing threads and the disk busy. */
export const FILE_DIGEST_INFLIGHT_CHUNKS = 4;

/**
 * The NFC digest (lowercase hex) of the first `sizeBytes` of `file`. `onProgress` gets the bytes
 * hashed so far, in order. Rejects with the signal's reason once it is aborted.
 */
export async function fileDigest(file: BlockFile, sizeBytes: number, signal?: AbortSignal, onProgress?: (doneBytes: number) => void): Promise<string> {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) throw new FerryError('INVALID_ARGUMENT', `fileDigest: size ${sizeBytes} is not a byte count`);
  const n = chunkCount(sizeBytes);
  const sums: (Uint8Array | undefined)[] = new Array<Uint8Array | undefined>(n);
  const digest = new FileDigest();
  let added = 0;
  let next = 0;
  // Each worker reads a chunk into its own buffer and hashes it; the digest takes the sums in order as they complete.
  const worker = async (): Promise<void> => {
    const buffer = chunkBuffer();
    for (let i = next++; i < n; i = next++) {
      signal?.throwIfAborted();
      const offset = i * NFC_CHUNK_BYTES;
      const data = buffer.subarray(0, chunkLength(sizeBytes, offset));
      await file.read(offset, data);
      sums[i] = isZeroChunk(data) ? zeroChunkSha256(data.length) : await chunkSha256(data);
      let moved = false;
      for (let s = sums[added]; s !== undefined; s = sums[added]) {
        digest.add(s);
        sums[added++] = undefined;
        moved = true;
      }
      if (moved) onProgress?.(Math.min(sizeBytes, added * NFC_CHUNK_BYTES));
    }
  };
  // A failed read stops the other workers at their next chunk (no reading on to the end of the file).
  const stopping = async (): Promise<void> => { try { await worker(); } catch (err) { next = n; throw err; } };
  await Promise.all(Array.from({ length: Math.min(FILE_DIGEST_INFLIGHT_CHUNKS, Math.max(1, n)) }, stopping));
  signal?.throwIfAborted();
  return digest.hex();
}
