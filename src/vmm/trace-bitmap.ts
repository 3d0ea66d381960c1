/**
 * The trace bitmap as the host sees it: one byte per region, 1 = armed (tracing), 0 = not armed or
 * fired. Guest stores clear armed bytes inline (src/vmm/instrument.ts); the host uses `markRange`
 * for its own writes into guest memory (devices, restore), with the same check-then-clear rule.
 */
export class TraceBitmap {
  readonly bytes: Uint8Array;

  constructor(buffer: ArrayBufferLike, bitmapOffset: number, readonly regionCount: number, readonly shift: number) {
    this.bytes = new Uint8Array(buffer, bitmapOffset, regionCount);
  }

  /** Fires the trace of every region overlapping [offset, offset + length). */
  markRange(offset: number, length: number): void {
    if (length <= 0) return;
    const first = offset >>> this.shift;
    const last = Math.min((offset + length - 1) >>> this.shift, this.regionCount - 1);
    const b = this.bytes;
    for (let r = first; r <= last; r++) if (b[r] !== 0) b[r] = 0;
  }
}
