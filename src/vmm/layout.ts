/**
 * Physical layout of a VM's one shared WebAssembly memory. Node 20 has no multi-memory, so the
 * host-reserved regions live in the same memory as the guest's RAM, *beyond* it:
 *
 *   0 ............ ramBytes            guest RAM (every guest store is bounds-checked against ramBytes)
 *   ramBytes ..... +CONTROL_BYTES      control words (claimed page count for memory.size/grow)
 *   bitmapOffset . +bitmapBytes         write-trace bitmap: one byte per region (sized for 4 KiB regions)
 *   fineBitmapOffset +bitmapBytes       fine bitmap: one byte per 4 KiB page, for split regions
 *
 * The reserved part is sized for the finest granularity so a VM's layout does not depend on the
 * granularity it is instrumented with.
 */
import { FerryError } from '../lib/errors.js';
import { KiB, formatBytes } from '../lib/units.js';
import { MAX_GRANULARITY_BYTES, MAX_RAM_BYTES, MIN_GRANULARITY_BYTES, MIN_RAM_BYTES, WASM_PAGE_BYTES, isValidGranularity, isValidRamBytes } from '../lib/limits.js';

/** Control words page placed right after RAM. */
export const CONTROL_BYTES = WASM_PAGE_BYTES;
/** Byte offset (from ramBytes) of the i32 claimed-pages word that virtualises memory.size/grow. */
export const CONTROL_CLAIMED_PAGES_OFFSET = 0;
/**
 * Byte offset (from ramBytes) of the i32 trace shift (log2 of the granularity). Every instrumented
 * write reads it, so the granularity can change at run time (per migration) behind an epoch barrier.
 */
export const CONTROL_TRACE_SHIFT_OFFSET = 4;
/** Byte offset (from ramBytes) of a word only the back-edge-poll measurement reads (never set). */
export const CONTROL_POLL_FLAG_OFFSET = 64;
export const DEFAULT_GRANULARITY_BYTES = 4 * KiB;

export interface MemoryLayout {
  readonly ramBytes: number;
  readonly ramPages: number;
  readonly controlOffset: number;
  readonly bitmapOffset: number;
  /** One byte per MIN_GRANULARITY_BYTES region of RAM (regions of coarser granularities use a prefix). */
  readonly bitmapBytes: number;
  /**
   * Fine bitmap: one byte per 4 KiB page, consulted for coarse regions that were *split* (their
   * coarse byte is SPLIT_MARK): adaptive tracing refines single regions that keep firing.
   */
  readonly fineBitmapOffset: number;
  readonly totalPages: number;
  readonly totalBytes: number;
}

/** Coarse bitmap byte meaning "split: this region is traced per 4 KiB page in the fine bitmap". */
export const SPLIT_MARK = 2;
/** log2(MIN_GRANULARITY_BYTES): the fine bitmap's shift. */
export const FINE_SHIFT = 12;

export function granularityShift(bytes: number): number {
  return Math.log2(bytes);
}

export function validateGranularity(bytes: number): void {
  if (!isValidGranularity(bytes)) {
    throw new FerryError('VM_CONFIG_INVALID',
      `trace granularity ${bytes} B is not supported: use a power of two from ${formatBytes(MIN_GRANULARITY_BYTES)} to ${formatBytes(MAX_GRANULARITY_BYTES)} (e.g. 4KiB, 64KiB, 2MiB)`,
      { granularityBytes: bytes });
  }
}

export function computeLayout(ramBytes: number): MemoryLayout {
  if (!isValidRamBytes(ramBytes)) {
    throw new FerryError('VM_CONFIG_INVALID',
      `VM memory ${formatBytes(ramBytes)} is not valid: it must be a multiple of 64 KiB between ${formatBytes(MIN_RAM_BYTES)} and ${formatBytes(MAX_RAM_BYTES)}`,
      { ramBytes });
  }
  const bitmapEntries = Math.ceil(ramBytes / MIN_GRANULARITY_BYTES);
  const bitmapBytes = Math.ceil(bitmapEntries / WASM_PAGE_BYTES) * WASM_PAGE_BYTES;
  const controlOffset = ramBytes;
  const bitmapOffset = controlOffset + CONTROL_BYTES;
  const fineBitmapOffset = bitmapOffset + bitmapBytes;
  const totalBytes = fineBitmapOffset + bitmapBytes;
  return {
    ramBytes,
    ramPages: ramBytes / WASM_PAGE_BYTES,
    controlOffset,
    bitmapOffset,
    bitmapBytes,
    fineBitmapOffset,
    totalPages: totalBytes / WASM_PAGE_BYTES,
    totalBytes,
  };
}

/** Number of trace regions covering RAM at a granularity. */
export function regionCount(ramBytes: number, granularityBytes: number): number {
  return Math.ceil(ramBytes / granularityBytes);
}
