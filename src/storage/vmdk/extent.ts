/**
 * What a disk asks of its one extent, whatever its kind (monolithicSparse: read-write,
 * streamOptimized: read-only): reads grain by grain, with "not allocated here" an answer of its own
 * so that the disk can go to the parent.
 */
import type { Descriptor } from './descriptor.js';
import type { SparseHeader } from './header.js';

export type GrainState = 'data' | 'zeros' | 'absent';

export interface GrainExtent {
  readonly name: string;
  readonly header: SparseHeader;
  readonly descriptor: Descriptor;
  readonly capacityBytes: number;
  readonly grainBytes: number;
  /**
   * Reads `buf.length` bytes from `offsetInGrainBytes` within grain `grainIndex` (never past the
   * grain's end). Resolves false, with `buf` untouched, when this extent holds no data for the grain.
   */
  readGrain(grainIndex: number, offsetInGrainBytes: number, buf: Uint8Array): Promise<boolean>;
  /**
   * What this extent holds for the grain, from its table alone (no grain is read): 'data', 'zeros'
   * (an explicit zero grain: what is below does not show) or 'absent' (what is below shows).
   */
  grainState(grainIndex: number): Promise<GrainState>;
  /** Reads and checks all of this extent's metadata (every table; for streamOptimized every grain too). */
  check(): Promise<void>;
  /** Bytes of grains this extent holds (walks every grain table). */
  allocatedBytes(): Promise<number>;
  /** Calls `fn` with every grain this extent answers for (data or an explicit zero grain), ascending. */
  forEachAllocatedGrain(fn: (grainIndex: number) => void): Promise<void>;
  close(): Promise<void>;
}
