/**
 * Dirty tracking API for the migration engine: arm write traces, collect-and-re-arm the regions
 * whose traces fired, report counts. The memory-ordering argument for why no guest write can be
 * missed between "collect" and "copy" is in docs/dirty-tracking.md; in short, `collect()` resolves
 * only after every vCPU has acknowledged a trace epoch that began after the re-arm.
 */
import { performance } from 'node:perf_hooks';
import { FerryError } from '../lib/errors.js';
import type { TraceBitmap } from './trace-bitmap.js';

export interface CollectResult {
  /** Indices of regions whose trace fired since they were last armed, ascending. */
  readonly regions: Uint32Array;
  /** Time to scan the bitmap and re-arm fired regions. */
  readonly scanMs: number;
  /** Time waiting for every vCPU to acknowledge the new epoch. */
  readonly barrierMs: number;
}

export interface TraceStats {
  readonly regionCount: number;
  readonly granularityBytes: number;
  readonly armedRegions: number;
  readonly collections: number;
  readonly firedTotal: number;
}

export class DirtyTracker {
  readonly regionCount: number;
  /** Host-side record of which regions are armed, to tell "fired" from "never armed". */
  private readonly armed: Uint8Array;
  private armedCount = 0;
  private collections = 0;
  private firedTotal = 0;

  constructor(
    private readonly bitmap: TraceBitmap,
    readonly granularityBytes: number,
    /** Resolves once every vCPU has acknowledged an epoch begun after this call (see Vm.traceBarrier). */
    private readonly barrier: () => Promise<void>,
  ) {
    this.regionCount = bitmap.regionCount;
    this.armed = new Uint8Array(this.regionCount);
    this.scratch = new Uint32Array(this.regionCount);
  }

  private readonly scratch: Uint32Array;

  /** Arms every region; resolves when every vCPU is guaranteed to observe the traces. */
  async armAll(): Promise<void> {
    this.bitmap.bytes.fill(1);
    this.armed.fill(1);
    this.armedCount = this.regionCount;
    await this.barrier();
  }

  /** Arms a set of regions (indices); resolves when every vCPU is guaranteed to observe them. */
  async arm(regions: ArrayLike<number>): Promise<void> {
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      if (r === undefined || !Number.isInteger(r) || r < 0 || r >= this.regionCount) {
        throw new FerryError('TRACE_INVALID_REGION', `trace region ${String(r)} does not exist (the VM has ${this.regionCount} regions of ${this.granularityBytes} bytes)`, { region: r });
      }
    }
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i] as number;
      if (this.armed[r] === 0) this.armedCount++;
      this.armed[r] = 1;
      this.bitmap.bytes[r] = 1;
    }
    await this.barrier();
  }

  /** Disarms everything (stray clears by in-flight stores are harmless: the bytes are 0 anyway). */
  disarmAll(): void {
    this.bitmap.bytes.fill(0);
    this.armed.fill(0);
    this.armedCount = 0;
  }

  /**
   * Collects the regions whose traces fired and re-arms them. Resolves when copying those regions
   * is safe: every store that did not fire a trace after the re-arm is visible to the copier.
   */
  async collect(): Promise<CollectResult> {
    const t0 = performance.now();
    const regions = this.scanAndRearm();
    const t1 = performance.now();
    await this.barrier();
    return { regions, scanMs: t1 - t0, barrierMs: performance.now() - t1 };
  }

  /** Collect while every vCPU is parked (the final round): no barrier is needed. */
  collectPaused(): CollectResult {
    const t0 = performance.now();
    const regions = this.scanAndRearm();
    return { regions, scanMs: performance.now() - t0, barrierMs: 0 };
  }

  stats(): TraceStats {
    return {
      regionCount: this.regionCount, granularityBytes: this.granularityBytes, armedRegions: this.armedCount,
      collections: this.collections, firedTotal: this.firedTotal,
    };
  }

  /** Word-at-a-time scan: a 4-region word whose armed and bitmap bytes agree has nothing fired. */
  private scanAndRearm(): Uint32Array {
    const bm = this.bitmap.bytes;
    const armed = this.armed;
    const n = this.regionCount;
    const words = n >>> 2;
    const bmWords = new Uint32Array(bm.buffer, bm.byteOffset, words);
    const armedWords = new Uint32Array(armed.buffer, armed.byteOffset, words);
    // Fired indices go straight into a typed array sized for the worst case (no JS array growth).
    const out = this.scratch;
    let count = 0;
    for (let w = 0; w < words; w++) {
      if (bmWords[w] === armedWords[w]) continue;
      const base = w << 2;
      for (let r = base; r < base + 4; r++) {
        if (armed[r] === 1 && bm[r] === 0) { out[count++] = r; bm[r] = 1; }
      }
    }
    for (let r = words << 2; r < n; r++) {
      if (armed[r] === 1 && bm[r] === 0) { out[count++] = r; bm[r] = 1; }
    }
    this.collections++;
    this.firedTotal += count;
    return out.slice(0, count);
  }
}
