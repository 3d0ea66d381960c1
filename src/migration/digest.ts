/**
 * Digest of guest memory as it is transferred, maintained incrementally on both sides of a
 * migration: every 4 KiB page contributes mix(page index, xxh64(page)) — an all-zero page
 * contributes nothing — and the digest is the XOR of all contributions, updated in O(1) per page
 * written. Source and target must agree at COMMIT: a page lost, duplicated into a wrong place,
 * corrupted on the wire or applied wrongly changes the target's digest.
 *
 * A copied disk is digested the same way over its changed-block-tracking blocks (64 KiB and up;
 * the last block may be shorter): `new MemoryDigest(capacityBytes, blockBytes)`.
 */
import { xxh64 } from '@node-rs/xxhash';

export const DIGEST_PAGE_BYTES = 4096;
const GOLDEN = 0x9e3779b97f4a7c15n;
const ZERO_PAGE = Buffer.alloc(DIGEST_PAGE_BYTES);

/** True when the 4 KiB page holds only zero bytes. */
export function isZeroPage(page: Buffer): boolean {
  return page.equals(ZERO_PAGE);
}

/** True when every byte of `data` (any length) is zero. */
export function isAllZero(data: Buffer): boolean {
  for (let at = 0; at < data.length; at += DIGEST_PAGE_BYTES) {
    const part = data.subarray(at, at + DIGEST_PAGE_BYTES);
    if (!(part.length === DIGEST_PAGE_BYTES ? part.equals(ZERO_PAGE) : part.equals(ZERO_PAGE.subarray(0, part.length)))) return false;
  }
  return true;
}

/** What page `index` with content `page` adds to the digest: 0 for an all-zero page. */
function contribution(index: number, page: Buffer): bigint {
  const zero = page.length === DIGEST_PAGE_BYTES ? isZeroPage(page) : isAllZero(page);
  return zero ? 0n : nonZeroContribution(index, page);
}

/** The contribution of a page that is not all zero. */
function nonZeroContribution(index: number, page: Buffer): bigint {
  return BigInt.asUintN(64, xxh64(page) ^ (BigInt(index) * GOLDEN)) || 1n;
}

export class MemoryDigest {
  private readonly contributions: BigUint64Array;
  private value = 0n;

  /** `pageBytes`: the unit each contribution covers (4 KiB for RAM; a tracked block for a disk). */
  constructor(sizeBytes: number, private readonly pageBytes: number = DIGEST_PAGE_BYTES) {
    this.contributions = new BigUint64Array(Math.ceil(sizeBytes / pageBytes));
  }

  /** Records the content of pages [offset, offset + data.length) (offset page-aligned; a short last page is allowed). */
  update(offset: number, data: Uint8Array): void {
    this.record(offset, data, contribution);
  }

  /**
   * The same for pages the caller saw hold a non-zero byte a moment ago (a migration source sends those
   * raw): the zero check is skipped — it was half of the source's per-page checking. If the guest zeroed
   * such a page in between, its entry here differs from the target's (which checks) until the page is
   * sent again, and it will be: that write came after the round's collect, so its trace fired and the
   * page is in the next round's set (the final round runs with the guest stopped, where nothing races).
   */
  updateSeenNonZero(offset: number, data: Uint8Array): void {
    this.record(offset, data, nonZeroContribution);
  }

  private record(offset: number, data: Uint8Array, of: (index: number, page: Buffer) => bigint): void {
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const unit = this.pageBytes;
    for (let at = 0; at < buf.length; at += unit) {
      const index = (offset + at) / unit;
      this.set(index, of(index, buf.subarray(at, at + unit)));
    }
  }

  /** True when the page at `offset` holds exactly what was last recorded for it. */
  unchanged(offset: number, page: Uint8Array): boolean {
    const index = offset / this.pageBytes;
    return (this.contributions[index] ?? 0n) === contribution(index, Buffer.from(page.buffer, page.byteOffset, page.byteLength));
  }

  /** Records that pages [offset, offset + length) are all zero. */
  updateZero(offset: number, length: number): void {
    for (let at = 0; at < length; at += this.pageBytes) this.set((offset + at) / this.pageBytes, 0n);
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
