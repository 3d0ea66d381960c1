/**
 * Changed-block tracking: which fixed-size blocks of a disk were written since the last `take()`.
 * A storage live migration copies a running VM's disk in a bulk pass and then in rounds of the
 * blocks the guest changed meanwhile; a live consolidate copies a delta's grains the same way.
 *
 * Ordering contract (what makes the rounds lose nothing): the writer marks a block *before* it
 * hands the write to the disk, and the disk runs operations in the order they were issued
 * wherever they overlap (VmdkDisk: a read waits for the earlier writes it overlaps, see
 * ./vmdk/io-order.ts). A copier that takes the set and then issues its reads therefore
 * either reads the new data, or finds the block marked again in its next take().
 */
import { FerryError } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { MAX_CHANGED_BLOCK_BYTES, MIN_CHANGED_BLOCK_BYTES } from '../lib/limits.js';

export { MAX_CHANGED_BLOCK_BYTES, MIN_CHANGED_BLOCK_BYTES };
/** Most blocks one tracker covers: 4 Mi blocks = a 512 KiB bitmap, per-block digests of 32 MiB. */
export const MAX_CHANGED_BLOCKS = 4 * 1024 * 1024;

/**
 * The block size for a disk of `capacityBytes`: the smallest power of two ≥ MIN_CHANGED_BLOCK_BYTES
 * that keeps the block count within MAX_CHANGED_BLOCKS; DISK_TOO_LARGE when even the largest block does not.
 */
export function changedBlockBytesFor(capacityBytes: number): number {
  let blockBytes = MIN_CHANGED_BLOCK_BYTES;
  while (Math.ceil(capacityBytes / blockBytes) > MAX_CHANGED_BLOCKS) {
    blockBytes *= 2;
    if (blockBytes > MAX_CHANGED_BLOCK_BYTES) {
      throw new FerryError('DISK_TOO_LARGE',
        `a ${formatBytes(capacityBytes)} disk is too large to track changed blocks (at most ${formatBytes(MAX_CHANGED_BLOCKS * MAX_CHANGED_BLOCK_BYTES)})`,
        { capacityBytes });
    }
  }
  return blockBytes;
}

export class ChangedBlocks {
  readonly blockCount: number;
  private bits: Uint8Array;
  private marked = 0;

  constructor(readonly capacityBytes: number, readonly blockBytes: number = changedBlockBytesFor(capacityBytes)) {
    this.blockCount = Math.ceil(capacityBytes / blockBytes);
    this.bits = new Uint8Array(Math.ceil(this.blockCount / 8));
  }

  /** Blocks marked and not yet taken. */
  get count(): number { return this.marked; }

  /** Marks every block [offsetBytes, offsetBytes + lengthBytes) touches. */
  mark(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes <= 0) return;
    const first = Math.floor(offsetBytes / this.blockBytes);
    const last = Math.min(this.blockCount - 1, Math.floor((offsetBytes + lengthBytes - 1) / this.blockBytes));
    for (let b = first; b <= last; b++) {
      const byte = b >>> 3;
      const bit = 1 << (b & 7);
      const v = this.bits[byte] ?? 0;
      if ((v & bit) === 0) { this.bits[byte] = v | bit; this.marked++; }
    }
  }

  /** Marks every block (the bulk pass of a copy starts from this when it cannot know what is allocated). */
  markAll(): void { this.mark(0, this.capacityBytes); }

  /** The marked block indices, ascending, and clears them. */
  take(): number[] {
    const out: number[] = [];
    const bits = this.bits;
    for (let byte = 0; byte < bits.length; byte++) {
      const v = bits[byte] ?? 0;
      if (v === 0) continue;
      for (let bit = 0; bit < 8; bit++) if ((v & (1 << bit)) !== 0) out.push(byte * 8 + bit);
    }
    this.bits = new Uint8Array(bits.length);
    this.marked = 0;
    return out;
  }

  /** [offset, length) of block `index` (the last block may be shorter). */
  range(index: number): { offsetBytes: number; lengthBytes: number } {
    const offsetBytes = index * this.blockBytes;
    return { offsetBytes, lengthBytes: Math.min(this.blockBytes, this.capacityBytes - offsetBytes) };
  }
}
