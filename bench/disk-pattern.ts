/**
 * The diskbench guest's request order and disk content, in TypeScript (guests/src/diskbench.ts
 * documents both; the two must stay identical). bench/disk.ts uses them to drive the raw-file
 * baseline through the same offsets with the same bytes; test/vmm/diskbench.test.ts checks the
 * guest's disk against them.
 */

export type DiskPattern = 'seq' | 'rand';
export type DiskOp = 'read' | 'write' | 'mixed';

/** What fixes a run's offsets and content: the guest's command-line parameters of the same names. */
export interface DiskRunShape {
  readonly pattern: DiskPattern;
  readonly op: DiskOp;
  readonly sizeBytes: number;
  /** Distance between request slots (>= sizeBytes). */
  readonly slotBytes: number;
  readonly baseBytes: number;
  readonly count: number;
  readonly seed: number;
}

const WORD_BYTES = 4;
const U32 = 2 ** 32;
const MUL_LO = 0x9e3779b1;
const MUL_HI = 0x85ebca77;
const PERM_MUL_1 = 0x2c1b3c6d;
const PERM_MUL_2 = 0x297a2d39;
const PERM_SEED_TWEAK = 0x5045524dn;
const MASK64 = (1n << 64n) - 1n;
/** The guest's permutation is u32 arithmetic: at most 2^32 slots. */
export const MAX_DISK_RUN_COUNT = U32;

/** splitmix64's finalizer, as the guest's mix64. */
export function mix64(v: bigint): bigint {
  let x = (v + 0x9e3779b97f4a7c15n) & MASK64;
  x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return x ^ (x >> 31n);
}

interface ContentKey { readonly lo: number; readonly hi: number }

function contentKey(seed: number): ContentKey {
  const k = mix64(BigInt(seed));
  return { lo: Number(k & 0xffffffffn), hi: Number(k >> 32n) };
}

/** The u32 the guest writes at disk byte offset 4*w. */
function word(w: number, key: ContentKey): number {
  const lo = w >>> 0; // ToUint32 is w mod 2^32 for integers below 2^53
  const hi = Math.floor(w / U32) >>> 0;
  return (Math.imul(lo ^ key.lo, MUL_LO) ^ Math.imul(hi ^ key.hi, MUL_HI)) >>> 0;
}

/** Fills `buf` with what the guest writes at disk offset `offsetBytes` with `seed`. */
export function fillContent(buf: Uint8Array, offsetBytes: number, seed: number): void {
  const key = contentKey(seed);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const w0 = offsetBytes / WORD_BYTES;
  for (let j = 0; j * WORD_BYTES < buf.length; j++) view.setUint32(j * WORD_BYTES, word(w0 + j, key), true);
}

/** Byte offset (on the disk) of the first word of `buf` that is not the guest's content, or -1. */
export function firstBadOffset(buf: Uint8Array, offsetBytes: number, seed: number): number {
  const key = contentKey(seed);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const w0 = offsetBytes / WORD_BYTES;
  for (let j = 0; j * WORD_BYTES < buf.length; j++) {
    if (view.getUint32(j * WORD_BYTES, true) !== word(w0 + j, key)) return offsetBytes + j * WORD_BYTES;
  }
  return -1;
}

/** The disk offset of every request, in submission order. */
export function requestOffsets(shape: DiskRunShape): Float64Array {
  const { pattern, count, slotBytes, baseBytes } = shape;
  if (!Number.isInteger(count) || count < 1 || count > MAX_DISK_RUN_COUNT) throw new Error(`count ${count} is not in 1..2^32`);
  const out = new Float64Array(count);
  if (pattern === 'seq') {
    for (let i = 0; i < count; i++) out[i] = baseBytes + i * slotBytes;
    return out;
  }
  let bits = 0;
  while (bits < 32 && 2 ** bits < count) bits++;
  const mask = bits === 32 ? 0xffffffff : 2 ** bits - 1;
  const shift = (bits + 1) >> 1;
  const pk = mix64(BigInt(shape.seed) ^ PERM_SEED_TWEAK);
  const a = Number(pk & 0xffffffffn) & mask;
  const b = Number(pk >> 32n) & mask;
  // >>> 0 after each & keeps every value a u32 (for 32 bits & alone would give a negative number).
  const step = (v: number): number => {
    let x = ((v ^ a) & mask) >>> 0;
    x = (Math.imul(x, PERM_MUL_1) & mask) >>> 0;
    x = (x ^ (x >>> shift)) >>> 0;
    x = (Math.imul(x, PERM_MUL_2) & mask) >>> 0;
    x = (x ^ (x >>> shift)) >>> 0;
    return ((x + b) & mask) >>> 0;
  };
  for (let i = 0; i < count; i++) {
    let x = i;
    do { x = step(x); } while (x >= count);
    out[i] = baseBytes + x * slotBytes;
  }
  return out;
}

/** Whether request i reads (op=mixed: by a hash of i and the seed, as the guest decides). */
export function requestIsRead(shape: DiskRunShape, i: number): boolean {
  if (shape.op !== 'mixed') return shape.op === 'read';
  return (mix64(BigInt(i) ^ BigInt(shape.seed)) & 1n) === 0n;
}

/** The guest's command line for a run of this shape. */
export function diskbenchCmdline(shape: DiskRunShape, extra: { readonly depth: number; readonly verify?: boolean; readonly flushEvery?: number }): string {
  const parts = [
    `pattern=${shape.pattern}`, `op=${shape.op}`, `size=${shape.sizeBytes}`, `slot=${shape.slotBytes}`, `base=${shape.baseBytes}`,
    `count=${shape.count}`, `depth=${extra.depth}`, `seed=${shape.seed}`, `verify=${extra.verify === false ? 0 : 1}`,
    `flush=${extra.flushEvery ?? 0}`,
  ];
  return parts.join(' ');
}

/** The guest's `diskbench: done ...` line, parsed. */
export interface DiskbenchDone {
  readonly ops: number;
  readonly bytes: number;
  readonly ns: number;
  readonly reads: number;
  readonly writes: number;
  readonly flushes: number;
  readonly bad: number;
  readonly errors: number;
}

const DONE_LINE = /^diskbench: done ops=(\d+) bytes=(\d+) ns=(-?\d+) reads=(\d+) writes=(\d+) flushes=(\d+) bad=(\d+) errors=(\d+)$/;
const FLUSH_LINE = /^diskbench: flush (\d+) ns=(\d+)$/;

export function parseDoneLine(line: string): DiskbenchDone | null {
  const m = DONE_LINE.exec(line);
  if (m === null) return null;
  const n = (k: number): number => Number(m[k]);
  return { ops: n(1), bytes: n(2), ns: n(3), reads: n(4), writes: n(5), flushes: n(6), bad: n(7), errors: n(8) };
}

/** The latency of a `diskbench: flush <k> ns=<t>` line, in ns, or null. */
export function parseFlushLine(line: string): number | null {
  const m = FLUSH_LINE.exec(line);
  return m === null ? null : Number(m[2]);
}
