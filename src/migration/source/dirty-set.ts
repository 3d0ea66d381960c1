import { DIGEST_PAGE_BYTES } from '../digest.js';

/** What a round must send: fired regions (at the tracking granularity) and fired 4 KiB pages of split regions. */
export interface DirtySet {
  readonly regions: Uint32Array;
  readonly pages: Uint32Array;
}

/** Every region, no page: round 1's work. */
export function allRegions(regionCount: number): DirtySet {
  return { regions: Uint32Array.from({ length: regionCount }, (_, i) => i), pages: new Uint32Array(0) };
}

/** Regions plus pages: how many things fired. */
export function firedCount(d: DirtySet): number {
  return d.regions.length + d.pages.length;
}

/** What either set holds. */
export function union(a: DirtySet, b: DirtySet): DirtySet {
  return { regions: mergeSorted(a.regions, b.regions), pages: mergeSorted(a.pages, b.pages) };
}

/** Union of two ascending index lists, ascending, without duplicates. */
function mergeSorted(a: Uint32Array, b: Uint32Array): Uint32Array {
  if (b.length === 0) return a;
  if (a.length === 0) return b;
  return Uint32Array.from(new Set([...a, ...b])).sort();
}

/** Bytes of RAM the set covers: regions at the tracking granularity, pages at 4 KiB. */
export function coveredBytes(d: DirtySet, granularityBytes: number): number {
  return d.regions.length * granularityBytes + d.pages.length * DIGEST_PAGE_BYTES;
}
