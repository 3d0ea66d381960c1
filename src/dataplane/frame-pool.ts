/**
 * Reusable buffers for large frames. A freshly allocated multi-MiB buffer costs a page fault per
 * 4 KiB on first touch (~0.5 GB/s here, FINDINGS); reusing warm buffers keeps copies at memcpy
 * speed. Buffers smaller than POOLED_MIN_BYTES are not worth pooling.
 */
export const POOLED_MIN_BYTES = 256 * 1024;
/** Buffers kept for reuse at most (the rest are left to the GC). */
export const MAX_POOLED_BUFFERS = 32;

export class FramePool {
  private readonly free: Buffer[] = [];

  /** `standardBytes`: allocate at least this much, so one size serves every frame of a kind. */
  constructor(private readonly standardBytes = POOLED_MIN_BYTES) {}

  /** A buffer of at least `bytes` (contents undefined). */
  acquire(bytes: number): Buffer {
    for (let i = 0; i < this.free.length; i++) {
      const b = this.free[i];
      if (b !== undefined && b.length >= bytes) {
        this.free.splice(i, 1);
        return b;
      }
    }
    return Buffer.allocUnsafeSlow(Math.max(bytes, this.standardBytes, POOLED_MIN_BYTES));
  }

  release(buf: Buffer): void {
    if (buf.length >= POOLED_MIN_BYTES && this.free.length < MAX_POOLED_BUFFERS) this.free.push(buf);
  }
}
