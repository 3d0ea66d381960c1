// diskbench: a block-device benchmark guest that proves its data.
//
// vCPU 0 issues `count` requests of `size` bytes to the disk, keeping up to `depth` of them in
// flight, and times the run with clock_ns; other vCPUs halt. Every byte it writes is a function
// of the disk offset and `seed` (below), and every read is checked against that function, so a run
// that reports throughput also proves the data came back right. It never blocks a step on I/O: a
// step reaps completed requests, submits new ones into the freed slots, and returns IDLE when
// nothing completed and nothing could be submitted (the host then sleeps one tick), so a step is
// bounded and the guest never spins.
//
// PARAMETERS (command line, `key=value` separated by spaces; anything else panics)
//   pattern=seq|rand   slot order: 0, 1, 2, ... or a seeded permutation of the slots (default seq)
//   op=read|write|mixed   mixed: each request is a read or a write by a hash of its index and seed
//                      (about half each); every request in a run uses the same seed (default write)
//   size=<size>        bytes per request: a multiple of 512 from 512 to 1MiB (default 4096)
//   slot=<size>        distance between request slots: a multiple of 512, >= size (default = size).
//                      Request slot k covers [base + k*slot, base + k*slot + size); with slot=64KiB
//                      4 KiB requests each touch a different 64 KiB grain of a VMDK.
//   base=<size>        disk offset of slot 0, a multiple of 512 (default 0)
//   count=<n>          requests (default: as many slots as fit on the disk after base); every
//                      slot 0..count-1 is used exactly once, so no two requests overlap
//   bytes=<size>       alternative to count: count = bytes / size
//   depth=<n>          requests kept in flight, 1..64 (default 1)
//   seed=<n>           content and permutation seed (default 1)
//   verify=1|0         check every read against the content function (default 1)
//   flush=<n>          0 = no flushes (default). n > 0: after every n writes submitted (and after
//                      the last), wait until every request in flight has completed, then submit a
//                      FLUSH and time it from submit to completion (guest-observed flush latency).
//                      Needs op=write or op=mixed.
//
// CONTENT: the u32 at disk byte offset o (o % 4 == 0), with w = o / 4 (a u64), is
//   ((lo32(w) ^ keyLo) * 0x9e3779b1) ^ ((hi32(w) ^ keyHi) * 0x85ebca77)   (u32 arithmetic)
// where keyLo/keyHi are the low/high halves of mix64(seed) (splitmix64 finalizer). The map is a
// bijection of lo32(w) for a fixed hi32(w): inside any 16 GiB no two words of a disk written with
// one seed are equal, so a misplaced, stale (other seed), zero or torn block is always caught.
//
// PERMUTATION (pattern=rand): with k = the bits needed for count - 1 and m = 2^k - 1, request i
// goes to slot p(i), where p walks the cycle of the bijection b on [0, 2^k) until it lands below
// count: x = i; do x = b(x) while x >= count. b(x): x ^= permA; x *= 0x2c1b3c6d; x ^= x >> h;
// x *= 0x297a2d39; x ^= x >> h; x += permB (each & m; h = (k + 1) / 2; permA, permB from
// mix64(seed ^ 0x5045524d)). bench/disk-pattern.ts has the same functions in TypeScript.
//
// CONSOLE (stable; bench/disk.ts and test/vmm/diskbench.test.ts parse it)
//   diskbench: disk=<size> pattern=<p> op=<o> size=<n> slot=<n> base=<n> count=<n> depth=<n> seed=<n> verify=<0|1> flush=<n>
//   diskbench: flush <k> ns=<t>                              one per flush (k from 1)
//   diskbench: bad data at offset=<o> expected=<hex> found=<hex>   o = the bad sector's start
//   diskbench: I/O error <status> on <read|write|flush> at offset=<o>
// (those two share MAX_REPORTED = 8 lines per run; the done line counts every bad sector and error)
//   diskbench: done ops=<n> bytes=<b> ns=<t> reads=<r> writes=<w> flushes=<f> bad=<sectors> errors=<n>
// ns in the done line runs from the first submit to the step that saw the last completion.
// After the done line every step returns HALT.
//
// Budget unit of ferry_vcpu_step: one request reaped or submitted (at most 1 MiB of content
// generated or checked).
//
// MEMORY: 0xf000 command line; DESC at 0x10000 (64 x 32-byte descriptors, then the flush
// descriptor); BUF at 0x20000: slot k's buffer at BUF + k*size (depth*size bytes, claimed at boot).

import { block_capacity, clock_ns } from "./lib/ferry";
import { conFlush, putHex, putI64, putSize, putStr, putU64 } from "./lib/console";
import { cmdlineLoad, keyIs, nextParam, panicBadValue, panicUnknownKey, valBool, valIs, valSize, valU64 } from "./lib/cmdline";
import { panicStr } from "./lib/panic";
import { mix64 } from "./lib/hash";
import { HALT, IDLE, RUN } from "./lib/step";
import {
  BLOCK_DESC_BYTES, BLOCK_E_QUEUE_FULL, BLOCK_FLUSH, BLOCK_MAX_IN_FLIGHT, BLOCK_MAX_REQUEST, BLOCK_OK, BLOCK_PENDING,
  BLOCK_READ, BLOCK_SECTOR, BLOCK_WRITE, blockPrepare, blockStatus, blockSubmit,
} from "./lib/block";

export const ferry_abi_version: i32 = 1;

const OP_READ: u32 = 0;
const OP_WRITE: u32 = 1;
const OP_MIXED: u32 = 2;

/** Console lines for bad sectors and I/O errors, each: enough to diagnose, bounded for a broken disk. */
const MAX_REPORTED: u32 = 8;
/** The permutation works in u32 arithmetic: at most 2^32 slots. */
const MAX_COUNT: u64 = <u64>1 << 32;
const WORD_BYTES: u64 = 4;
const WASM_PAGE_BYTES: u64 = 65536;
const SECTOR_WORDS: usize = <usize>(BLOCK_SECTOR / WORD_BYTES);
/** Content multipliers (odd, so each multiply is a bijection mod 2^32). */
const MUL_LO: u32 = 0x9e3779b1;
const MUL_HI: u32 = 0x85ebca77;
/** Permutation multipliers (odd). */
const PERM_MUL_1: u32 = 0x2c1b3c6d;
const PERM_MUL_2: u32 = 0x297a2d39;
/** Mixed into the seed for the permutation keys ("PERM"), so content and order keys differ. */
const PERM_SEED_TWEAK: u64 = 0x5045524d;

const DESC: usize = 0x10000;
const FLUSH_DESC: usize = DESC + <usize>BLOCK_MAX_IN_FLIGHT * BLOCK_DESC_BYTES;
const BUF: usize = 0x20000;
/** The descriptor's guest-owned u64 (+24): request index + 1 while in flight, 0 when the slot is free. */
const DESC_TAG: usize = 24;

// Parameters (set at boot).
let gPattern: u32 = 0; // 0 seq, 1 rand
let gOp: u32 = 1; // OP_WRITE (a literal: any other initialiser makes a start function)
let gSize: u64 = 4096;
let gSlot: u64 = 0;
let gBase: u64 = 0;
let gCount: u64 = 0;
let gDepth: i32 = 1;
let gSeed: u64 = 1;
let gVerify: bool = true;
let gFlushEvery: u64 = 0;
// Derived keys.
let gKeyLo: u32 = 0;
let gKeyHi: u32 = 0;
let gPermA: u32 = 0;
let gPermB: u32 = 0;
let gPermMask: u32 = 0;
let gPermShift: u32 = 0;
// Progress.
let gNext: u64 = 0;      // requests submitted
let gDone: u64 = 0;      // requests completed
let gInFlight: i32 = 0;
let gCursor: i32 = 0;    // slot where the next step's pass starts (fairness when the budget ends a pass)
let gReads: u64 = 0;
let gWrites: u64 = 0;
let gBad: u64 = 0;       // bad sectors
let gErrors: u64 = 0;
let gReported: u32 = 0;
let gSinceFlush: u64 = 0; // writes submitted since the last flush
let gFlushing: bool = false;
let gFlushT0: i64 = 0;
let gFlushes: u64 = 0;
let gT0: i64 = 0;
let gTLast: i64 = 0;
let gStarted: bool = false;
let gFinished: bool = false;

@inline function permStep(v: u32): u32 {
  const m = gPermMask;
  const h = gPermShift;
  let x = (v ^ gPermA) & m;
  x = (x * PERM_MUL_1) & m;
  x ^= x >> h;
  x = (x * PERM_MUL_2) & m;
  x ^= x >> h;
  return (x + gPermB) & m;
}

/** Disk offset of request i. */
function offsetOf(i: u64): u64 {
  if (gPattern == 0) return gBase + i * gSlot;
  // Cycle walking: b is a permutation of [0, 2^k) and count > 2^(k-1), so this ends, in under two
  // rounds on average, and maps [0, count) onto itself one to one.
  let x = <u32>i;
  do { x = permStep(x); } while (<u64>x >= gCount);
  return gBase + <u64>x * gSlot;
}

/** Whether request i reads (op=mixed decides by a hash of i and the seed). */
function isRead(i: u64): bool {
  if (gOp != OP_MIXED) return gOp == OP_READ;
  return (mix64(i ^ gSeed) & 1) == 0;
}

/** Fills [ptr, ptr + n) with the content of the disk at `off` (n a multiple of 16). */
function fill(ptr: usize, off: u64, n: u64): void {
  let w = off / WORD_BYTES;
  const end = ptr + <usize>n;
  let p = ptr;
  while (p < end) {
    // hi32(w) is constant up to the next 2^32-word boundary (16 GiB); a request crosses one at most once.
    const hi = <u32>(w >> 32);
    const toBoundary = ((<u64>hi + 1) << 32) - w;
    const words = (<u64>(end - p) >> 2) < toBoundary ? <u64>(end - p) >> 2 : toBoundary;
    const partEnd = p + <usize>(words << 2);
    const hiTerm = i32x4.splat((hi ^ gKeyHi) * MUL_HI);
    const key = i32x4.splat(gKeyLo);
    const mul = i32x4.splat(MUL_LO);
    let lo = i32x4.add(i32x4.splat(<u32>w), i32x4(0, 1, 2, 3));
    const four = i32x4.splat(4);
    while (p < partEnd) {
      v128.store(p, v128.xor(i32x4.mul(v128.xor(lo, key), mul), hiTerm));
      lo = i32x4.add(lo, four);
      p += 16;
    }
    w += words;
  }
}

/** Checks a read buffer sector by sector; returns the number of bad sectors (reporting the first few). */
function check(ptr: usize, off: u64, n: u64): u64 {
  let bad: u64 = 0;
  let w = off / WORD_BYTES;
  const sectors = n / BLOCK_SECTOR;
  for (let s: u64 = 0; s < sectors; s++) {
    const sp = ptr + <usize>(s * BLOCK_SECTOR);
    // A sector never crosses a 2^32-word boundary (both are powers of two and 512 is smaller).
    const hiTerm = i32x4.splat((<u32>(w >> 32) ^ gKeyHi) * MUL_HI);
    const key = i32x4.splat(gKeyLo);
    const mul = i32x4.splat(MUL_LO);
    let lo = i32x4.add(i32x4.splat(<u32>w), i32x4(0, 1, 2, 3));
    const four = i32x4.splat(4);
    let diff = i32x4.splat(0);
    for (let j: usize = 0; j < SECTOR_WORDS; j += 4) {
      const want = v128.xor(i32x4.mul(v128.xor(lo, key), mul), hiTerm);
      diff = v128.or(diff, v128.xor(want, v128.load(sp + (j << 2))));
      lo = i32x4.add(lo, four);
    }
    if (v128.any_true(diff)) {
      bad++;
      reportBad(sp, w);
    }
    w += <u64>SECTOR_WORDS;
  }
  return bad;
}

function expectedWord(w: u64): u32 {
  return ((<u32>w ^ gKeyLo) * MUL_LO) ^ ((<u32>(w >> 32) ^ gKeyHi) * MUL_HI);
}

function reportBad(sectorPtr: usize, w: u64): void {
  if (gReported >= MAX_REPORTED) return;
  gReported++;
  // The first word of the sector that differs.
  let j: usize = 0;
  while (j < SECTOR_WORDS - 1 && load<u32>(sectorPtr + (j << 2)) == expectedWord(w + <u64>j)) j++;
  putStr("diskbench: bad data at offset=");
  putU64(w * WORD_BYTES);
  putStr(" expected=");
  putHex(expectedWord(w + <u64>j), 8);
  putStr(" found=");
  putHex(load<u32>(sectorPtr + (j << 2)), 8);
  conFlush();
}

function reportError(status: i32, op: u32, off: u64): void {
  gErrors++;
  if (gReported >= MAX_REPORTED) return;
  gReported++;
  putStr("diskbench: I/O error ");
  putI64(status);
  putStr(op == BLOCK_READ ? " on read" : op == BLOCK_WRITE ? " on write" : " on flush");
  putStr(" at offset=");
  putU64(off);
  conFlush();
}

function bitsFor(n: u64): u32 {
  let k: u32 = 0;
  while (k < 32 && (<u64>1 << k) < n) k++;
  return k;
}

export function ferry_boot(_vcpus: i32): void {
  const capacity = <u64>block_capacity();
  let slot: u64 = 0;
  let count: u64 = 0;
  let bytes: u64 = 0;
  let depth: u64 = 1;
  cmdlineLoad("diskbench");
  while (nextParam("diskbench")) {
    if (keyIs("pattern")) {
      if (valIs("seq")) gPattern = 0;
      else if (valIs("rand")) gPattern = 1;
      else panicBadValue("diskbench", "seq or rand");
    } else if (keyIs("op")) {
      if (valIs("read")) gOp = OP_READ;
      else if (valIs("write")) gOp = OP_WRITE;
      else if (valIs("mixed")) gOp = OP_MIXED;
      else panicBadValue("diskbench", "read, write or mixed");
    } else if (keyIs("size")) gSize = valSize("diskbench");
    else if (keyIs("slot")) slot = valSize("diskbench");
    else if (keyIs("base")) gBase = valSize("diskbench");
    else if (keyIs("count")) count = valU64("diskbench");
    else if (keyIs("bytes")) bytes = valSize("diskbench");
    else if (keyIs("depth")) depth = valU64("diskbench");
    else if (keyIs("seed")) gSeed = valU64("diskbench");
    else if (keyIs("verify")) gVerify = valBool("diskbench");
    else if (keyIs("flush")) gFlushEvery = valU64("diskbench");
    else panicUnknownKey("diskbench", "pattern, op, size, slot, base, count, bytes, depth, seed, verify, flush");
  }
  if (capacity == 0) panicStr("diskbench: the VM has no disk (ferry vm run ... --disk <file>)");
  if (gSize < BLOCK_SECTOR || gSize > BLOCK_MAX_REQUEST || gSize % BLOCK_SECTOR != 0) panicStr("diskbench: size must be a multiple of 512 from 512 to 1MiB");
  gSlot = slot == 0 ? gSize : slot;
  if (gSlot < gSize || gSlot % BLOCK_SECTOR != 0) panicStr("diskbench: slot must be a multiple of 512 and at least size");
  if (gBase % BLOCK_SECTOR != 0 || gBase >= capacity) panicStr("diskbench: base must be a multiple of 512 inside the disk");
  // Checked as a u64 before narrowing: depth=4294967297 must not wrap to 1.
  if (depth < 1 || depth > <u64>BLOCK_MAX_IN_FLIGHT) panicStr("diskbench: depth must be from 1 to 64");
  gDepth = <i32>depth;
  if (count != 0 && bytes != 0) panicStr("diskbench: give count or bytes, not both");
  if (bytes != 0) {
    count = bytes / gSize;
    if (count == 0) panicStr("diskbench: bytes must be at least size");
  }
  // Slots that fit: slot k ends at base + k*slot + size <= capacity.
  const fit = capacity - gBase < gSize ? 0 : (capacity - gBase - gSize) / gSlot + 1;
  if (count == 0) count = fit < MAX_COUNT ? fit : MAX_COUNT;
  if (count == 0 || count > fit) panicStr("diskbench: count slots do not fit on the disk after base");
  if (count > MAX_COUNT) panicStr("diskbench: at most 2^32 requests");
  gCount = count;
  if (gFlushEvery != 0 && gOp == OP_READ) panicStr("diskbench: flush= needs op=write or op=mixed");

  const bufEnd = <u64>BUF + <u64>gDepth * gSize;
  const needPages = (bufEnd + WASM_PAGE_BYTES - 1) / WASM_PAGE_BYTES;
  const have = <u64>memory.size();
  if (needPages > have && memory.grow(<i32>(needPages - have)) < 0) {
    putStr("diskbench: depth x size needs ");
    putSize(bufEnd);
    putStr(" of RAM; give the VM more memory");
    conFlush();
    panicStr("diskbench: not enough RAM for the buffers");
  }
  memory.fill(DESC, 0, BUF - DESC);

  const key = mix64(gSeed);
  gKeyLo = <u32>key;
  gKeyHi = <u32>(key >> 32);
  const pk = mix64(gSeed ^ PERM_SEED_TWEAK);
  const bits = bitsFor(gCount);
  gPermMask = bits == 32 ? 0xffffffff : (<u32>1 << bits) - 1;
  gPermShift = (bits + 1) >> 1;
  gPermA = <u32>pk & gPermMask;
  gPermB = <u32>(pk >> 32) & gPermMask;

  putStr("diskbench: disk=");
  putSize(capacity);
  putStr(gPattern == 0 ? " pattern=seq" : " pattern=rand");
  putStr(gOp == OP_READ ? " op=read" : gOp == OP_WRITE ? " op=write" : " op=mixed");
  putStr(" size=");
  putU64(gSize);
  putStr(" slot=");
  putU64(gSlot);
  putStr(" base=");
  putU64(gBase);
  putStr(" count=");
  putU64(gCount);
  putStr(" depth=");
  putU64(<u64>gDepth);
  putStr(" seed=");
  putU64(gSeed);
  putStr(gVerify ? " verify=1" : " verify=0");
  putStr(" flush=");
  putU64(gFlushEvery);
  conFlush();
}

@inline function descAt(k: i32): usize { return DESC + <usize>k * BLOCK_DESC_BYTES; }
@inline function bufAt(k: i32): usize { return BUF + <usize>(<u64>k * gSize); }

/** Handles a finished request in slot k. */
function reap(k: i32, status: i32): void {
  const d = descAt(k);
  const i = load<u64>(d, DESC_TAG) - 1;
  const op = load<u32>(d, 0);
  const off = offsetOf(i);
  if (status != BLOCK_OK) reportError(status, op, off);
  else if (op == BLOCK_READ && gVerify) gBad += check(bufAt(k), off, gSize);
  store<u64>(d, 0, DESC_TAG);
  gDone++;
  gInFlight--;
}

/** Submits request gNext in slot k; false if the device refused it (nothing changed then). */
function submit(k: i32): bool {
  const i = gNext;
  const off = offsetOf(i);
  const read = isRead(i);
  const d = descAt(k);
  const buf = bufAt(k);
  if (!read) fill(buf, off, gSize);
  blockPrepare(d, read ? BLOCK_READ : BLOCK_WRITE, off, <u32>gSize, buf);
  store<u64>(d, i + 1, DESC_TAG);
  if (!gStarted) { gStarted = true; gT0 = clock_ns(); }
  const r = blockSubmit(d);
  if (r == BLOCK_E_QUEUE_FULL) { store<u64>(d, 0, DESC_TAG); return false; }
  if (r != 0) panicStr("diskbench: block_submit refused a request (not queue-full): the disk is gone or the descriptor is bad");
  gNext++;
  gInFlight++;
  if (read) gReads++;
  else { gWrites++; gSinceFlush++; }
  return true;
}

/** Whether the next request may be submitted now (a flush point holds new requests back). */
@inline function maySubmit(): bool {
  if (gNext >= gCount || gFlushing) return false;
  return gFlushEvery == 0 || gSinceFlush < gFlushEvery;
}

/** Flush mode: once everything before the flush point completed, submit the flush; reap it. */
function flushStep(): bool {
  if (gFlushing) {
    const s = blockStatus(FLUSH_DESC);
    if (s == BLOCK_PENDING) return false;
    const ns = clock_ns() - gFlushT0;
    gTLast = clock_ns();
    gFlushing = false;
    gSinceFlush = 0;
    gFlushes++;
    if (s != BLOCK_OK) reportError(s, BLOCK_FLUSH, 0);
    putStr("diskbench: flush ");
    putU64(gFlushes);
    putStr(" ns=");
    putI64(ns);
    conFlush();
    return true;
  }
  const point = gSinceFlush >= gFlushEvery || (gNext == gCount && gSinceFlush > 0);
  if (!point || gInFlight != 0) return false;
  blockPrepare(FLUSH_DESC, BLOCK_FLUSH, 0, 0, 0);
  gFlushT0 = clock_ns();
  const r = blockSubmit(FLUSH_DESC);
  if (r == BLOCK_E_QUEUE_FULL) return false;
  if (r != 0) panicStr("diskbench: block_submit refused a flush (not queue-full)");
  gFlushing = true;
  return true;
}

function finish(): void {
  gFinished = true;
  putStr("diskbench: done ops=");
  putU64(gDone);
  putStr(" bytes=");
  putU64(gDone * gSize);
  putStr(" ns=");
  putI64(gTLast - gT0);
  putStr(" reads=");
  putU64(gReads);
  putStr(" writes=");
  putU64(gWrites);
  putStr(" flushes=");
  putU64(gFlushes);
  putStr(" bad=");
  putU64(gBad);
  putStr(" errors=");
  putU64(gErrors);
  conFlush();
}

export function ferry_vcpu_step(vcpu: i32, budget: i32): i32 {
  if (vcpu != 0 || gFinished) return HALT;
  const b: i32 = budget > 0 ? budget : 1;
  let n: i32 = 0;
  let worked = false;
  let reaped = false;
  // One pass over the slots from the cursor: reap what completed, refill free slots.
  const depth = gDepth;
  let k = gCursor;
  for (let seen = 0; seen < depth && n < b; seen++) {
    const d = descAt(k);
    if (load<u64>(d, DESC_TAG) != 0) {
      const s = blockStatus(d);
      if (s != BLOCK_PENDING) { reap(k, s); n++; reaped = true; }
    }
    if (load<u64>(d, DESC_TAG) == 0 && n < b && maySubmit()) {
      if (!submit(k)) break;
      n++;
      worked = true;
    }
    k = k + 1 == depth ? 0 : k + 1;
  }
  gCursor = k;
  if (reaped) { worked = true; gTLast = clock_ns(); }
  if (gFlushEvery != 0 && flushStep()) worked = true;
  if (gDone == gCount && !gFlushing && (gFlushEvery == 0 || gSinceFlush == 0)) {
    finish();
    return HALT;
  }
  return worked ? RUN : IDLE;
}

/** Requests completed so far (exported for tests and tools). */
export function diskbench_done(): i64 {
  return <i64>gDone;
}

/** Bad sectors found by reads so far. */
export function diskbench_bad(): i64 {
  return <i64>gBad;
}
