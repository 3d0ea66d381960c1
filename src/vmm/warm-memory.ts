/**
 * A warm guest memory: one shared WebAssembly.Memory of a configured VM size, allocated and faulted in
 * ahead of need, handed to the next VM of that size that this process builds (`ferry host --warm-memory`).
 *
 * Why: a VM's memory is fresh, so its first touch of each 4 KiB page is a page fault. For a migration
 * target that is the largest single cost of round 1 (docs/benchmarks.md, issue 14: ~0.9 s of kernel time
 * per GiB on the 2-core machine, about half of the target's CPU), and it sits on the critical path. A
 * host that expects VMs of one size (a drain or rebalance target) can take those faults while it is idle.
 * The price is resident memory: the spare is real RAM while it waits (it is not counted as committed to
 * VMs: it is dropped at close, and handed over, never kept, when a VM of its size comes).
 *
 * Filling runs on the main thread in slices of WARM_FILL_SLICE_BYTES, one per event-loop turn, so the
 * host keeps answering. A VM of the right size that arrives while the spare is still filling takes it
 * as it is (the part already touched is warm; the rest faults as it would anyway) and the filling stops;
 * the next spare is filled WARM_REFILL_DELAY_MS after a hand-over, not at once, so that refilling does not
 * compete with the migration that just took one. Memory never used is all zero, which is what a VM and a
 * migration's round 1 (zero pages are not sent) require.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { errorMessage } from '../lib/errors.js';
import { MiB } from '../lib/units.js';
import { computeLayout } from './layout.js';

/** Bytes faulted in per event-loop turn (~5-20 ms here): the host stays responsive while it fills. */
export const WARM_FILL_SLICE_BYTES = 16 * MiB;
/** How long after a hand-over the next spare starts filling. */
export const WARM_REFILL_DELAY_MS = 5_000;

/** The byte a slice writes over each page: zero, so that the memory stays as fresh memory is. */
const ZERO = 0;

export class WarmMemory {
  readonly totalPages: number;
  /** Bytes of the whole memory (RAM and the runtime's regions after it): what is faulted in. */
  private readonly totalBytes: number;
  private spare: WebAssembly.Memory | null = null;
  /** Bytes of `spare` faulted in so far (== its size once full). */
  private warmBytes = 0;
  private filling: Promise<void> | null = null;
  private readonly closing = new AbortController();
  private takenCount = 0;

  /** `ramBytes`: the RAM of the VMs to keep a spare for (a valid VM size: VM_CONFIG_INVALID otherwise). */
  constructor(readonly ramBytes: number, private readonly log: (line: string) => void = () => undefined) {
    const layout = computeLayout(ramBytes);
    this.totalPages = layout.totalPages;
    this.totalBytes = layout.totalBytes;
  }

  /** Spares handed to VMs so far. */
  get taken(): number { return this.takenCount; }
  /** True when a spare is fully faulted in and waiting. */
  get ready(): boolean { return this.spare !== null && this.filling === null; }

  /** Starts filling a spare now (no-op if one is there or being filled, or after close). */
  fill(): Promise<void> {
    if (this.closing.signal.aborted || this.spare !== null) return this.filling ?? Promise.resolve();
    const memory = new WebAssembly.Memory({ initial: this.totalPages, maximum: this.totalPages, shared: true });
    this.spare = memory;
    this.warmBytes = 0;
    const t0 = performance.now();
    const filling = this.faultIn(memory, this.totalBytes).then(
      (done) => { if (done) this.log(`warm memory: ${this.ramBytes / MiB} MiB guest memory ready in ${(performance.now() - t0).toFixed(0)} ms`); },
      (err: unknown) => { this.log(`warm memory: filling failed: ${errorMessage(err)}`); if (this.spare === memory) this.spare = null; },
    ).finally(() => { if (this.filling === filling) this.filling = null; });
    this.filling = filling;
    return filling;
  }

  /** Writes every page of `memory` slice by slice; false when it was handed over or closed meanwhile. */
  private async faultIn(memory: WebAssembly.Memory, totalBytes: number): Promise<boolean> {
    const bytes = new Uint8Array(memory.buffer);
    for (let at = 0; at < totalBytes; at += WARM_FILL_SLICE_BYTES) {
      if (this.spare !== memory || this.closing.signal.aborted) return false;
      bytes.fill(ZERO, at, Math.min(totalBytes, at + WARM_FILL_SLICE_BYTES));
      this.warmBytes = Math.min(totalBytes, at + WARM_FILL_SLICE_BYTES);
      await new Promise<void>((resolve) => { setImmediate(resolve); });
    }
    return this.spare === memory;
  }

  /**
   * The spare, if it has exactly `totalPages` (a VM of this pool's size), as far as it is warm; null
   * otherwise. The next spare is filled WARM_REFILL_DELAY_MS later.
   */
  take(totalPages: number): WebAssembly.Memory | null {
    const memory = this.spare;
    if (memory === null || totalPages !== this.totalPages || this.closing.signal.aborted) return null;
    this.spare = null;
    this.takenCount++;
    this.log(`warm memory: handed over ${this.ramBytes / MiB} MiB (${Math.round((this.warmBytes * 100) / this.totalBytes)}% faulted in)`);
    void delay(WARM_REFILL_DELAY_MS, undefined, { signal: this.closing.signal, ref: false }).then(() => this.fill(), () => undefined);
    return memory;
  }

  /** Stops filling and drops the spare. */
  close(): void {
    this.closing.abort();
    this.spare = null;
    this.filling = null;
  }
}

/**
 * The warm memories VMs built in this process may take (a host registers its own; several hosts in one
 * process, as tests make, share theirs). Bounded by the hosts of the process.
 */
const registered = new Set<WarmMemory>();

/** Makes `warm` available to VMs built in this process; returns the function that withdraws it. */
export function registerWarmMemory(warm: WarmMemory): () => void {
  registered.add(warm);
  return () => { registered.delete(warm); };
}

/** A warm memory of exactly `totalPages` if a registered one has it, else null (the builder then allocates). */
export function takeWarmMemory(totalPages: number): WebAssembly.Memory | null {
  for (const w of registered) {
    const m = w.take(totalPages);
    if (m !== null) return m;
  }
  return null;
}
