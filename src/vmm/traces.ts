/**
 * Dirty tracking API for the migration engine: arm write traces, collect-and-re-arm the regions
 * whose traces fired, report counts. The memory-ordering argument for why no guest write can be
 * missed between "collect" and "copy" is in docs/dirty-tracking.md; in short, `collect()` resolves
 * only after every vCPU has acknowledged a trace epoch that began after the re-arm.
 */
import { performance } from 'node:perf_hooks';
import { FerryError } from '../lib/errors.js';
import type { TraceBitmap } from './trace-bitmap.js';
import { SPLIT_MARK } from './layout.js';
import { MIN_GRANULARITY_BYTES } from '../lib/limits.js';

/**
 * How traces are (re-)installed (docs/dirty-tracking.md):
 *  - 'single': the collector thread (a helper acting for one vCPU) re-arms while every vCPU keeps
 *    running; copying waits for an epoch every vCPU acknowledges at its next step boundary.
 *  - 'stop-all': every vCPU is parked, each re-arms its share of the regions, all resume when the
 *    last is done (the naive way, the analogue of a TLB shootdown with all CPUs stopped).
 */
export type InstallStrategy = 'single' | 'stop-all';
export const INSTALL_STRATEGIES: readonly InstallStrategy[] = ['single', 'stop-all'];

/** What the tracker needs from its VM. */
export interface TrackerHooks {
  /** Resolves once every vCPU has acknowledged an epoch begun after this call. */
  barrier(): Promise<void>;
  /** Parks all vCPUs, has them re-arm `regions` (null: all), resumes; returns the stall. */
  installStopped(regions: Uint32Array | null): Promise<{ stallMs: number }>;
}

export interface CollectResult {
  /** Indices of regions whose trace fired since they were last armed, ascending. */
  readonly regions: Uint32Array;
  /** 4 KiB page indices that fired inside split regions (adaptive tracing), ascending. */
  readonly pages: Uint32Array;
  /** Time to scan the bitmap and re-arm fired regions. */
  readonly scanMs: number;
  /** Time waiting for every vCPU to acknowledge the new epoch ('single'). */
  readonly barrierMs: number;
  /** Time the guest was stopped for the installation ('stop-all'; 0 for 'single'). */
  readonly stallMs: number;
}

export interface TraceStats {
  readonly regionCount: number;
  readonly granularityBytes: number;
  readonly armedRegions: number;
  readonly collections: number;
  readonly firedTotal: number;
}

const EMPTY = new Uint32Array(0);

export class DirtyTracker {
  readonly regionCount: number;
  /** Host-side record of which regions are armed, to tell "fired" from "never armed". */
  private readonly armed: Uint8Array;
  private armedCount = 0;
  private collections = 0;
  private firedTotal = 0;
  /** Regions traced per 4 KiB page (their coarse byte holds SPLIT_MARK), ascending. */
  private splitList: number[] = [];

  /** How later installations are done; settable per migration. */
  strategy: InstallStrategy = 'single';

  constructor(
    private readonly bitmap: TraceBitmap,
    readonly granularityBytes: number,
    private readonly hooks: TrackerHooks,
  ) {
    this.regionCount = bitmap.regionCount;
    // Only the prefix for this granularity is used; the rest of the bitmap stays zero.
    this.armed = new Uint8Array(this.regionCount);
    this.scratch = new Uint32Array(this.regionCount);
  }

  private readonly scratch: Uint32Array;

  get splitRegions(): readonly number[] { return this.splitList; }

  /**
   * Traces `regions` per 4 KiB page from now on (adaptive refinement of regions that keep firing).
   * The caller must have every vCPU parked: the switch rewrites bytes a running store may be
   * clearing. Their pages start armed.
   */
  split(regions: Iterable<number>): number {
    let added = 0;
    for (const r of regions) {
      if (!Number.isInteger(r) || r < 0 || r >= this.regionCount || this.armed[r] === SPLIT_MARK) continue;
      if (this.armed[r] !== 1) this.armedCount++;
      this.armFine(r);
      this.splitList.push(r);
      added++;
    }
    this.splitList.sort((a, b) => a - b);
    return added;
  }

  /** Arms every region; resolves when every vCPU is guaranteed to observe the traces. */
  async armAll(): Promise<{ stallMs: number }> {
    this.armed.fill(1);
    this.armedCount = this.regionCount;
    for (const r of this.splitList) this.armFine(r);
    if (this.strategy === 'stop-all') {
      if (this.splitList.length === 0) return this.hooks.installStopped(null);
      const split = new Set(this.splitList);
      return this.hooks.installStopped(Uint32Array.from({ length: this.regionCount }, (_, i) => i).filter((r) => !split.has(r)));
    }
    this.bitmap.bytes.fill(1, 0, this.regionCount);
    for (const r of this.splitList) this.bitmap.bytes[r] = SPLIT_MARK;
    await this.hooks.barrier();
    return { stallMs: 0 };
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
      if (this.armed[r] === SPLIT_MARK) continue; // split regions stay traced per page
      if (this.armed[r] === 0) this.armedCount++;
      this.armed[r] = 1;
      this.bitmap.bytes[r] = 1;
    }
    await this.hooks.barrier();
  }

  /** Disarms everything (stray clears by in-flight stores are harmless: the bytes are 0 anyway). */
  disarmAll(): void {
    this.bitmap.bytes.fill(0, 0, this.regionCount);
    for (const r of this.splitList) this.fineRange(r, 0);
    this.splitList = [];
    this.armed.fill(0);
    this.armedCount = 0;
  }

  /**
   * Collects the regions whose traces fired and re-arms them. Resolves when copying those regions
   * is safe: every store that did not fire a trace after the re-arm is visible to the copier.
   */
  async collect(): Promise<CollectResult> {
    const t0 = performance.now();
    // Fired pages of split regions are re-armed here in both strategies: for stop-all the parking
    // that follows is the barrier (a store before it is visible to the copy, one after sees 1).
    const pages = this.scanFine();
    if (this.strategy === 'stop-all') {
      // Scan without re-arming; the parked vCPUs re-arm. No epoch is needed: parking and resuming
      // are seq-cst transitions, so every vCPU resumes seeing the new traces.
      const regions = this.scan(false);
      const t1 = performance.now();
      const { stallMs } = await this.hooks.installStopped(regions);
      return { regions, pages, scanMs: t1 - t0, barrierMs: 0, stallMs };
    }
    const regions = this.scan(true);
    const t1 = performance.now();
    await this.hooks.barrier();
    return { regions, pages, scanMs: t1 - t0, barrierMs: performance.now() - t1, stallMs: 0 };
  }

  /**
   * Bytes whose traces fired since they were last armed, read without re-arming anything (the
   * next collect still returns them): an estimate of the guest's dirtying while it runs.
   */
  firedBytesNow(): number {
    const bm = this.bitmap.bytes;
    const armed = this.armed;
    let regions = 0;
    for (let r = 0; r < this.regionCount; r++) if (armed[r] === 1 && bm[r] === 0) regions++;
    let pages = 0;
    const fine = this.bitmap.fine;
    const perRegion = this.granularityBytes / MIN_GRANULARITY_BYTES;
    for (const r of this.splitList) {
      const end = Math.min((r + 1) * perRegion, fine.length);
      for (let p = r * perRegion; p < end; p++) if (fine[p] === 0) pages++;
    }
    return regions * this.granularityBytes + pages * MIN_GRANULARITY_BYTES;
  }

  /** Collect while every vCPU is parked (the final round): no barrier is needed. */
  collectPaused(): CollectResult {
    const t0 = performance.now();
    const pages = this.scanFine();
    const regions = this.scan(true);
    return { regions, pages, scanMs: performance.now() - t0, barrierMs: 0, stallMs: 0 };
  }

  stats(): TraceStats {
    return {
      regionCount: this.regionCount, granularityBytes: this.granularityBytes, armedRegions: this.armedCount,
      collections: this.collections, firedTotal: this.firedTotal,
    };
  }

  private fineRange(r: number, value: number): void {
    const from = (r * this.granularityBytes) / MIN_GRANULARITY_BYTES;
    this.bitmap.fine.fill(value, from, Math.min(from + this.granularityBytes / MIN_GRANULARITY_BYTES, this.bitmap.fine.length));
  }

  private armFine(r: number): void {
    this.fineRange(r, 1);
    this.bitmap.bytes[r] = SPLIT_MARK;
    this.armed[r] = SPLIT_MARK;
  }

  /** Fired 4 KiB pages of split regions (re-armed on the way), ascending. */
  private scanFine(): Uint32Array {
    if (this.splitList.length === 0) return EMPTY;
    const fine = this.bitmap.fine;
    const perRegion = this.granularityBytes / MIN_GRANULARITY_BYTES;
    const out: number[] = [];
    for (const r of this.splitList) {
      const end = Math.min((r + 1) * perRegion, fine.length);
      for (let p = r * perRegion; p < end; p++) if (fine[p] === 0) { out.push(p); fine[p] = 1; }
    }
    this.firedTotal += out.length;
    return Uint32Array.from(out);
  }

  /**
   * Word-at-a-time scan: a 4-region word whose armed and bitmap bytes agree has nothing fired.
   * `rearm`: set fired bytes back to 1 here (else the caller has them re-armed).
   */
  private scan(rearm: boolean): Uint32Array {
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
        if (armed[r] === 1 && bm[r] === 0) { out[count++] = r; if (rearm) bm[r] = 1; }
      }
    }
    for (let r = words << 2; r < n; r++) {
      if (armed[r] === 1 && bm[r] === 0) { out[count++] = r; if (rearm) bm[r] = 1; }
    }
    this.collections++;
    this.firedTotal += count;
    return out.slice(0, count);
  }
}
