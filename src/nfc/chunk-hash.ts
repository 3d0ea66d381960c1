/**
 * The network file copy's checksums (docs/design/nfc.md, "Units, boundaries, digests"): each chunk's
 * SHA-256, holes (all-zero chunks), and a file's digest — SHA-256 over its chunks' SHA-256s in order.
 *
 * Chunks are hashed with WebCrypto's digest, which runs on libuv's thread pool: the copier reads,
 * hashes and writes several chunks at once, and the two cores of a small host hash in parallel
 * instead of the event loop hashing one chunk at a time (SHA-256 is ~2 GB/s per core: on one
 * thread it alone would cap a copy below a disk's speed once read-back verification doubles it).
 */
import { createHash, webcrypto } from 'node:crypto';
import { NFC_CHUNK_BYTES } from './plan.js';

/** Bytes of one chunk's checksum (SHA-256). */
export const CHUNK_SHA256_BYTES = 32;

const ZEROS = new Uint8Array(NFC_CHUNK_BYTES);
const zeroSums = new Map<number, Uint8Array>();

/** SHA-256 of `data`, computed off the event loop. */
export async function chunkSha256(data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await webcrypto.subtle.digest('SHA-256', data));
}

/** True if every byte of `data` (at most NFC_CHUNK_BYTES) is zero: a hole. */
export function isZeroChunk(data: Uint8Array): boolean {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).equals(ZEROS.subarray(0, data.byteLength));
}

/** The SHA-256 of a hole of `lengthBytes` (a full chunk, or a file's shorter last one); cached (few distinct lengths). */
export function zeroChunkSha256(lengthBytes: number): Uint8Array {
  let sum = zeroSums.get(lengthBytes);
  if (sum === undefined) {
    sum = new Uint8Array(createHash('sha256').update(ZEROS.subarray(0, lengthBytes)).digest());
    // Bounded: a plan's files have at most MAX_COPY_FILES distinct last-chunk lengths, and the map is a cache only.
    if (zeroSums.size >= 1024) zeroSums.clear();
    zeroSums.set(lengthBytes, sum);
  }
  return sum;
}

/** Chunks of a file of `sizeBytes` (0 for an empty file). */
export function chunkCount(sizeBytes: number): number {
  return Math.ceil(sizeBytes / NFC_CHUNK_BYTES);
}

/** Length of the chunk at `offsetBytes` of a file of `sizeBytes`. */
export function chunkLength(sizeBytes: number, offsetBytes: number): number {
  return Math.min(NFC_CHUNK_BYTES, sizeBytes - offsetBytes);
}

/** A file's digest, built incrementally from its chunks' checksums in order (lowercase hex at the end). */
export class FileDigest {
  private readonly hash = createHash('sha256');
  add(sha256: Uint8Array): void { this.hash.update(sha256); }
  hex(): string { return this.hash.digest('hex'); }
}
