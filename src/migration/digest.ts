/**
 * Digest of guest memory as it is transferred, maintained incrementally on both sides of a
 * migration: every 4 KiB page contributes mix(page index, xxh64(page)) — an all-zero page
 * contributes nothing — and the digest is the XOR of all contributions, updated in O(1) per page
 * written. Source and target must agree at COMMIT: a page lost, duplicated into a wrong place,
 * corrupted on the wire or applied wrongly changes the target's digest.
 */
import { xxh64 } from '@node-rs/xxhash';

export const DIGEST_PAGE_BYTES = 4096;
const GOLDEN = 0x9e3779b97f4a7c15n;
const ZERO_PAGE = Buffer.alloc(DIGEST_PAGE_BYTES);

/** True when the 4 KiB page holds only zero bytes. */
export function isZeroPage(page: Buffer): boolean {
  return page.equals(ZERO_PAGE);
}

/** What page `index` with content `page` adds to the digest: 0 for an all-zero page. */
function contribution(index: number, page: Buffer): bigint {
  return isZeroPage(page) ? 0n : BigInt.asUintN(64, xxh64(page) ^ (BigInt(index) * GOLDEN)) || 1n;
}

export class MemoryDigest {
  private readonly contributions: BigUint64Array;
  private value = 0n;

  constructor(ramBytes: number) {
    this.contributions = new BigUint64Array(Math.ceil(ramBytes / DIGEST_PAGE_BYTES));
  }

  /** Records the content of pages [offset, offset + data.length) (offset and length page-aligned). */
  update(offset: number, data: Uint8Array): void {
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (let at = 0; at < buf.length; at += DIGEST_PAGE_BYTES) {
      const index = (offset + at) / DIGEST_PAGE_BYTES;
      this.set(index, contribution(index, buf.subarray(at, at + DIGEST_PAGE_BYTES)));
    }
  }

  /** True when the 4 KiB page at `offset` holds exactly what was last recorded for it. */
  unchanged(offset: number, page: Uint8Array): boolean {
    const index = offset / DIGEST_PAGE_BYTES;
    return (this.contributions[index] ?? 0n) === contribution(index, Buffer.from(page.buffer, page.byteOffset, page.byteLength));
  }

  /** Records that pages [offset, offset + length) are all zero. */
  updateZero(offset: number, length: number): void {
    for (let at = 0; at < length; at += DIGEST_PAGE_BYTES) this.set((offset + at) / DIGEST_PAGE_BYTES, 0n);
  }

  private set(index: number, next: bigint): void {
    const prev = this.contributions[index] ?? 0n;
    if (prev === next) return;
    this.value ^= prev ^ next;
    this.contributions[index] = next;
  }

  hex(): string {
    return this.value.toString(16).padStart(16, '0');
  }
}

/** Digest of a whole memory image from scratch (verification, tests). */
export function digestOf(ram: Uint8Array): string {
  const d = new MemoryDigest(ram.byteLength);
  d.update(0, ram);
  return d.hex();
}
