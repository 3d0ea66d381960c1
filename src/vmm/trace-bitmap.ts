/**
 * The trace bitmap as the host sees it: one byte per region, 1 = armed (tracing), 0 = not armed or
 * fired. Guest stores clear armed bytes inline (src/vmm/instrument.ts); the host uses `markRange`
 * for its own writes into guest memory (devices, restore), with the same check-then-clear rule.
 *
 * The granularity is a shift in the VM's control page, read by every instrumented write, so it can
 * change at run time (a migration picks its own); the bitmap is sized for the finest granularity.
 */
import { CONTROL_TRACE_SHIFT_OFFSET, SPLIT_MARK, type MemoryLayout } from './layout.js';
import { MIN_GRANULARITY_BYTES } from '../lib/limits.js';

export class TraceBitmap {
  /** One byte per region of the finest granularity; coarser granularities use a prefix. */
  readonly bytes: Uint8Array;
  /** One byte per 4 KiB page, used for regions whose coarse byte is SPLIT_MARK. */
  readonly fine: Uint8Array;
  private readonly shiftWord: Int32Array;

  constructor(buffer: ArrayBufferLike, private readonly layout: MemoryLayout) {
    this.bytes = new Uint8Array(buffer, layout.bitmapOffset, Math.ceil(layout.ramBytes / MIN_GRANULARITY_BYTES));
    this.fine = new Uint8Array(buffer, layout.fineBitmapOffset, Math.ceil(layout.ramBytes / MIN_GRANULARITY_BYTES));
    this.shiftWord = new Int32Array(buffer, layout.controlOffset + CONTROL_TRACE_SHIFT_OFFSET, 1);
  }

  get shift(): number { return Atomics.load(this.shiftWord, 0); }
  /** Changes the granularity; callers disarm first and run an epoch barrier after (Vm.setTraceGranularity). */
  setShift(shift: number): void { Atomics.store(this.shiftWord, 0, shift); }
  get granularityBytes(): number { return 2 ** this.shift; }
  get regionCount(): number { return Math.ceil(this.layout.ramBytes / this.granularityBytes); }

  /** Fires the trace of every region overlapping [offset, offset + length). */
  markRange(offset: number, length: number): void {
    if (length <= 0) return;
    const shift = this.shift;
    const first = offset >>> shift;
    const last = Math.min((offset + length - 1) >>> shift, this.regionCount - 1);
    const b = this.bytes;
    for (let r = first; r <= last; r++) {
      const v = b[r];
      if (v === 1) b[r] = 0;
      else if (v === SPLIT_MARK) {
        // Same rule as the inline mark: a split region fires the pages of the range inside it.
        const gran = 2 ** shift;
        const from = Math.floor(Math.max(offset, r * gran) / MIN_GRANULARITY_BYTES);
        const to = Math.floor((Math.min(offset + length, (r + 1) * gran) - 1) / MIN_GRANULARITY_BYTES);
        for (let p = from; p <= to; p++) if (this.fine[p] !== 0) this.fine[p] = 0;
      }
    }
  }
}
