// dirtier: a memory-dirtying Ferry guest (any number of vCPUs) with self-checking invariants.
//
// Each vCPU updates 4 KiB pages of a "hot set" as fast as allowed; every update leaves the page in
// a state that can be checked afterwards, so a VM that was saved, restored or migrated can prove
// that its RAM came through intact (ferry_selfcheck), and with check=1 it also verifies each page
// right before modifying it.
//
// PARAMETERS (command line, `key=value` separated by spaces; anything else panics)
//   hot=<size>            hot working set (default 16MiB); digits + optional K/KiB/M/MiB/G/GiB
//                         (binary units); rounded up to whole 4 KiB pages, at least one per vCPU
//   pattern=seq|random    page order (default seq)
//   rate=<n>              page updates per second for the whole VM, split evenly over the vCPUs;
//                         0 = unlimited (default 0)
//   fill=1|0              1: at boot write every 4 KiB page of all claimed RAM once, so no page of
//                         claimed RAM is zero (default 0: pages nothing has written yet stay zero)
//   check=1|0             1: verify each page before modifying it (default 1)
//   claim=need|all        RAM claimed at boot with memory.grow: what the layout below needs, rounded
//                         up to 64 KiB (default), or all of the VM's RAM (grow until it returns -1);
//                         either way only the hot set is updated after boot
//
// Budget unit of ferry_vcpu_step: one page update. With rate>0 a step returns IDLE (1) when its
// vCPU is ahead of schedule; after a stall it catches up at most 10 ms worth of updates.
//
// MEMORY LAYOUT (byte addresses in linear memory; "page" = 4 KiB; little-endian)
//   0x00000 .. 0x0f000  static data of the module (the module's initial memory is 1 wasm page):
//                       string literals and the boot-time console buffer (512 bytes); the rest,
//                       from __heap_base on, is unused (no allocation ever happens).
//   0x0f000 .. 0x10000  command line buffer (lib/cmdline.ts), written by the host at boot; with
//                       fill=1 its last 8 bytes get the fill marker after parsing. Not checked.
//   CTRL = 0x10000      control area, CTRL_SIZE = roundup(4096 + 512 * vcpus, 4096) bytes:
//     CTRL+0    u32 magic 0x52494446 ("FDIR"); written last at boot
//     CTRL+4    u32 layout version (1)
//     CTRL+8    u32 vcpus
//     CTRL+12   u32 pattern (0 = seq, 1 = random)
//     CTRL+16   u32 fill (0/1)
//     CTRL+20   u32 check (0/1)
//     CTRL+24   u64 rate (page updates per second, whole VM; 0 = unlimited)
//     CTRL+32   u64 hot size as requested, bytes
//     CTRL+40   u32 N = number of hot pages
//     CTRL+44   u32 HOT = address of hot page 0 (= CTRL + CTRL_SIZE)
//     CTRL+48   u32 CTRL_SIZE
//     CTRL+52   u32 claimed RAM in wasm pages (64 KiB) at boot
//     CTRL+56   u32 end of static data (__heap_base)
//     CTRL+64   u32 SHARED: step counter, atomic.add by every vCPU once per step (own cache line)
//     CTRL+4096 + 512*v  record of vCPU v (written only by vCPU v after boot):
//       +0   u32 pass c (seq)               +4   u32 cursor k (seq; slice-relative)
//       +8   u64 xorshift64 state (random)  +16  u64 total page updates by this vCPU
//       +24  u64 steps done                 +32  u64 max gap between consecutive clock reads, ns
//       +40  u64 last clock read, ns        +48  u64 rate epoch t0, ns
//       +56  u64 updates since rate epoch   +64  u32 slice: first hot page index
//       +68  u32 slice: page count S        +72  u32 flags (1 = clock read once, 2 = rate epoch set)
//       +76  .. +127 reserved (zero)
//       +128 .. +511 this vCPU's console line buffer (384 bytes)
//   HOT .. HOT + N*4096  hot set: hot page p (0 <= p < N) at HOT + p*4096. vCPU v owns the slice
//                        [first(v), first(v+1)) with first(v) = floor(v*N / vcpus).
//   HOT + N*4096 .. claimed end   cold RAM: never written after boot (see FILL MARKER).
//   If the layout does not fit in the VM's RAM, boot panics naming the sizes.
//
// HOT PAGE FORMAT, page p holding counter value w (all other bytes stay zero):
//   +0     u32 w
//   +1000  u8  w & 0xff
//   +2044  u32 w ^ tag(p)            tag(p) = fmix32(p * 0x9e3779b1) | 1, never 0
//   +4088  u64 (u64(p) << 32) | w
// A page that was never written (all four fields zero) counts as w = 0.
//
// COLD PAGES: the 4 KiB pages of claimed RAM outside the command line page, the control area and
// the hot set whose last 8 bytes lie beyond the static data (__heap_base). FILL MARKER (fill=1):
// each cold page (and the command line page) holds u64 0xf111f111_00000000 | (address >> 12) at
// offset 4088; with fill=0 those 8 bytes of cold pages stay zero. fill=1 writes hot pages with w = 0.
//
// INVARIANTS (checked by ferry_selfcheck over everything; with check=1 the per-page ones are also
// checked before each update, and a violation prints the details and panics)
//   page:    every hot page is consistent (all-zero, or the four fields agree for some w)
//   seq:     in vCPU v's slice, pages before the cursor hold c+1, pages at/after it hold c; k < S;
//            total updates == c*S + k
//   random:  sum of the counters of vCPU v's slice == its total updates
//   shared:  SHARED == (sum over vCPUs of steps done) mod 2^32   (only meaningful while paused)
//   cold:    the fill marker (fill=1) or zero (fill=0) at offset 4088 of every cold page
//   header:  magic, layout, slice bounds as computed from N and vcpus, memory.size >= claimed size

import { clock_ns } from "./lib/ferry";
import { conFlush, conReset, conUse, putHex0x, putSize, putStr, putU64 } from "./lib/console";
import {
  CMDLINE_BUF, cmdlineLoad, keyIs, nextParam, panicBadValue, panicUnknownKey, valBool, valIs, valSize, valU64,
} from "./lib/cmdline";
import { panicLine, panicStr } from "./lib/panic";
import { mix64 } from "./lib/hash";
import { IDLE, RUN } from "./lib/step";

export const ferry_abi_version: i32 = 1;

const WHO = "dirtier";

const PAGE_SHIFT: u32 = 12;
const PAGE: u64 = 4096;
const MAX_VCPUS: u32 = 4096;

const CTRL: usize = 0x10000;
const MAGIC: u32 = 0x52494446;
const LAYOUT_VERSION: u32 = 1;
const H_MAGIC: usize = 0;
const H_LAYOUT: usize = 4;
const H_VCPUS: usize = 8;
const H_PATTERN: usize = 12;
const H_FILL: usize = 16;
const H_CHECK: usize = 20;
const H_RATE: usize = 24;
const H_HOT_BYTES: usize = 32;
const H_HOT_PAGES: usize = 40;
const H_HOT_BASE: usize = 44;
const H_CTRL_SIZE: usize = 48;
const H_RAM_PAGES: usize = 52;
const H_STATIC_END: usize = 56;
const H_SHARED: usize = 64;

const RECORDS: usize = 4096;
const REC_SIZE: usize = 512;
const R_PASS: usize = 0;
const R_CURSOR: usize = 4;
const R_XS: usize = 8;
const R_TOTAL: usize = 16;
const R_STEPS: usize = 24;
const R_MAX_GAP: usize = 32;
const R_LAST_NS: usize = 40;
const R_RATE_T0: usize = 48;
const R_RATE_N: usize = 56;
const R_FIRST: usize = 64;
const R_COUNT: usize = 68;
const R_FLAGS: usize = 72;
const R_CON: usize = 128;
const R_CON_CAP: i32 = 384;
const F_CLOCK: u32 = 1;
const F_RATE: u32 = 2;

const W_BYTE: usize = 1000;
const W_TAG: usize = 2044;
const W_ID: usize = 4088;
const FILL_BASE: u64 = 0xf111f111_00000000;

const RATE_BURST_NS: u64 = 10_000_000; // at most 10 ms worth of updates are caught up after a stall

@inline function recAddr(v: u32): usize {
  return CTRL + RECORDS + <usize>v * REC_SIZE;
}

@inline function sliceFirst(v: u32, pages: u32, vcpus: u32): u32 {
  return <u32>((<u64>v * <u64>pages) / <u64>vcpus);
}

@inline function tag(p: u32): u32 {
  let h = p * 0x9e3779b1;
  h ^= h >> 16;
  h *= 0x85ebca6b;
  h ^= h >> 13;
  h *= 0xc2b2ae35;
  h ^= h >> 16;
  return h | 1;
}

@inline function pageAddr(hot: usize, p: u32): usize {
  return hot + (<usize>p << PAGE_SHIFT);
}

@inline function writePage(addr: usize, p: u32, w: u32): void {
  store<u32>(addr, w, 0);
  store<u8>(addr, <u8>w, W_BYTE);
  store<u32>(addr, w ^ tag(p), W_TAG);
  store<u64>(addr, (<u64>p << 32) | <u64>w, W_ID);
}

/** Whether hot page p at addr is all-zero or holds four mutually consistent fields. */
@inline function pageConsistent(addr: usize, p: u32): bool {
  const w = load<u32>(addr, 0);
  const b = <u32>load<u8>(addr, W_BYTE);
  const t = load<u32>(addr, W_TAG);
  const id = load<u64>(addr, W_ID);
  if ((w | b | t) == 0 && id == 0) return true;
  return b == (w & 0xff) && t == (w ^ tag(p)) && id == ((<u64>p << 32) | <u64>w);
}

@inline function fillWord(addr: u64): u64 {
  return FILL_BASE | (addr >> PAGE_SHIFT);
}

// ---------------------------------------------------------------------------------------------
// boot

/** Grows the memory until even one more wasm page is refused (= all of the VM's RAM). */
function growToMax(): void {
  let delta: i32 = 32768;
  while (delta > 0) {
    if (memory.grow(delta) < 0) delta >>= 1;
  }
}

function panicNoFit(hot: u64, hotPages: u64, ctrlSize: u64, need: u64, ram: u64): void {
  conReset();
  putStr("dirtier: hot set ");
  putSize(hot);
  putStr(" (");
  putU64(hotPages);
  putStr(" pages of 4KiB) + control area ");
  putSize(ctrlSize);
  putStr(" at 0x10000 need ");
  putU64(need);
  putStr(" bytes of RAM, but the VM has ");
  putU64(ram);
  putStr(" bytes (");
  putSize(ram);
  putStr(")");
  panicLine();
}

function printPageField(name: string, v: u64): void {
  putStr(name);
  putHex0x(v);
}

export function ferry_boot(vcpus: i32): void {
  let hot: u64 = 16 << 20;
  let random = false;
  let rate: u64 = 0;
  let fill = false;
  let check = true;
  let claimAll = false;

  cmdlineLoad(WHO);
  while (nextParam(WHO)) {
    if (keyIs("hot")) {
      hot = valSize(WHO);
      if (hot == 0) panicBadValue(WHO, "a size > 0");
    } else if (keyIs("pattern")) {
      if (valIs("seq")) random = false;
      else if (valIs("random")) random = true;
      else panicBadValue(WHO, "seq or random");
    } else if (keyIs("rate")) {
      rate = valU64(WHO);
    } else if (keyIs("fill")) {
      fill = valBool(WHO);
    } else if (keyIs("check")) {
      check = valBool(WHO);
    } else if (keyIs("claim")) {
      if (valIs("need")) claimAll = false;
      else if (valIs("all")) claimAll = true;
      else panicBadValue(WHO, "need or all");
    } else {
      panicUnknownKey(WHO, "hot, pattern, rate, fill, check, claim");
    }
  }
  if (vcpus < 1 || <u32>vcpus > MAX_VCPUS) {
    conReset();
    putStr("dirtier: unsupported vCPU count ");
    putU64(<u64>vcpus);
    putStr(" (1..4096)");
    panicLine();
  }
  const nv = <u32>vcpus;

  const ctrlSize: u64 = (<u64>RECORDS + <u64>nv * <u64>REC_SIZE + PAGE - 1) & ~(PAGE - 1);
  const hotPages64: u64 = (hot + PAGE - 1) >> PAGE_SHIFT;
  const hotBase: u64 = <u64>CTRL + ctrlSize;
  const need: u64 = hotBase + hotPages64 * PAGE;

  // Claim RAM: what the layout needs (whole wasm pages), or everything with claim=all.
  const needPages: u64 = (need + 0xffff) >> 16;
  const have = <u64>memory.size();
  let fits = needPages <= 65536;
  if (fits && needPages > have) fits = memory.grow(<i32>(needPages - have)) >= 0;
  if (!fits || claimAll) growToMax();
  const ramPages = <u32>memory.size();
  const ram: u64 = <u64>ramPages << 16;
  if (!fits || need > ram) panicNoFit(hot, hotPages64, ctrlSize, need, ram);
  if (hotPages64 < <u64>nv) {
    conReset();
    putStr("dirtier: hot set ");
    putSize(hot);
    putStr(" has ");
    putU64(hotPages64);
    putStr(" pages of 4KiB, fewer than one per vCPU (");
    putU64(<u64>nv);
    putStr(" vCPUs)");
    panicLine();
  }
  const hotPages = <u32>hotPages64;
  const hotEnd: u64 = need;

  // Control area: start from zero, then header and records; the magic last.
  memory.fill(CTRL, 0, <usize>ctrlSize);
  store<u32>(CTRL, LAYOUT_VERSION, H_LAYOUT);
  store<u32>(CTRL, nv, H_VCPUS);
  store<u32>(CTRL, random ? 1 : 0, H_PATTERN);
  store<u32>(CTRL, fill ? 1 : 0, H_FILL);
  store<u32>(CTRL, check ? 1 : 0, H_CHECK);
  store<u64>(CTRL, rate, H_RATE);
  store<u64>(CTRL, hot, H_HOT_BYTES);
  store<u32>(CTRL, hotPages, H_HOT_PAGES);
  store<u32>(CTRL, <u32>hotBase, H_HOT_BASE);
  store<u32>(CTRL, <u32>ctrlSize, H_CTRL_SIZE);
  store<u32>(CTRL, ramPages, H_RAM_PAGES);
  store<u32>(CTRL, <u32>__heap_base, H_STATIC_END);
  for (let v: u32 = 0; v < nv; v++) {
    const rec = recAddr(v);
    const first = sliceFirst(v, hotPages, nv);
    store<u32>(rec, first, R_FIRST);
    store<u32>(rec, sliceFirst(v + 1, hotPages, nv) - first, R_COUNT);
    store<u64>(rec, mix64(<u64>v + 1) | 1, R_XS);
  }

  if (fill) {
    for (let p: u32 = 0; p < hotPages; p++) writePage(pageAddr(<usize>hotBase, p), p, 0);
    for (let a: u64 = 0; a < <u64>CTRL; a += PAGE) {
      if (a + <u64>W_ID >= <u64>__heap_base) store<u64>(<usize>a, fillWord(a), W_ID); // includes CMDLINE_BUF
    }
    for (let a: u64 = hotEnd; a < ram; a += PAGE) store<u64>(<usize>a, fillWord(a), W_ID);
  }
  store<u32>(CTRL, MAGIC, H_MAGIC);

  const minSlice = hotPages / nv;
  putStr("dirtier: vcpus=");
  putU64(<u64>nv);
  putStr(" hot=");
  putSize(hot);
  putStr(" (");
  putU64(<u64>hotPages);
  putStr(" pages, ");
  putU64(<u64>minSlice);
  if (hotPages % nv != 0) {
    putStr("-");
    putU64(<u64>minSlice + 1);
  }
  putStr(" per vcpu) pattern=");
  putStr(random ? "random" : "seq");
  putStr(" rate=");
  putU64(rate);
  putStr(rate == 0 ? " (unlimited)" : " pages/s");
  putStr(" fill=");
  putStr(fill ? "1" : "0");
  putStr(" check=");
  putStr(check ? "1" : "0");
  putStr(" claimed=");
  putSize(ram);
  if (claimAll) putStr(" (claim=all)");
  putStr(" ctrl=0x10000+");
  putSize(ctrlSize);
  putStr(" hot@");
  putHex0x(hotBase);
  conFlush();
}

// ---------------------------------------------------------------------------------------------
// steps

/** Prints the details of a failed check of page p (expected counter `want`, or any if !seq), then panics. */
function violation(vcpu: u32, p: u32, addr: usize, want: u32, seq: bool): void {
  const w = load<u32>(addr, 0);
  const e: u32 = seq ? want : w;
  putStr("dirtier: vcpu ");
  putU64(<u64>vcpu);
  putStr(" page ");
  putU64(<u64>p);
  putStr(" at ");
  putHex0x(<u64>addr);
  putStr(" before update: expected");
  printPageField(" counter=", <u64>e);
  printPageField(" byte1000=", <u64>(e & 0xff));
  printPageField(" word2044=", <u64>(e ^ tag(p)));
  printPageField(" word4088=", (<u64>p << 32) | <u64>e);
  if (seq && want == 0) putStr(" (or an all-zero page)");
  putStr(", found");
  printPageField(" counter=", <u64>w);
  printPageField(" byte1000=", <u64>load<u8>(addr, W_BYTE));
  printPageField(" word2044=", <u64>load<u32>(addr, W_TAG));
  printPageField(" word4088=", load<u64>(addr, W_ID));
  conFlush();
  putStr("dirtier invariant violated: vcpu ");
  putU64(<u64>vcpu);
  putStr(" page ");
  putU64(<u64>p);
  putStr(" (");
  putStr(seq ? "seq" : "random");
  putStr("); details on the console");
  panicLine();
}

function updateSeq(vcpu: u32, rec: usize, hot: usize, n: u32, check: bool): void {
  const first = load<u32>(rec, R_FIRST);
  const count = load<u32>(rec, R_COUNT);
  let c = load<u32>(rec, R_PASS);
  let k = load<u32>(rec, R_CURSOR);
  for (let j: u32 = 0; j < n; j++) {
    const p = first + k;
    const addr = pageAddr(hot, p);
    if (check && (load<u32>(addr, 0) != c || !pageConsistent(addr, p))) violation(vcpu, p, addr, c, true);
    writePage(addr, p, c + 1);
    k++;
    if (k == count) {
      k = 0;
      c++;
    }
  }
  store<u32>(rec, c, R_PASS);
  store<u32>(rec, k, R_CURSOR);
  store<u64>(rec, load<u64>(rec, R_TOTAL) + <u64>n, R_TOTAL);
}

function updateRandom(vcpu: u32, rec: usize, hot: usize, n: u32, check: bool): void {
  const first = load<u32>(rec, R_FIRST);
  const count = <u64>load<u32>(rec, R_COUNT);
  let x = load<u64>(rec, R_XS);
  for (let j: u32 = 0; j < n; j++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const p = first + <u32>(((x >> 32) * count) >> 32);
    const addr = pageAddr(hot, p);
    if (check && !pageConsistent(addr, p)) violation(vcpu, p, addr, 0, false);
    writePage(addr, p, load<u32>(addr, 0) + 1);
  }
  store<u64>(rec, x, R_XS);
  store<u64>(rec, load<u64>(rec, R_TOTAL) + <u64>n, R_TOTAL);
}

export function ferry_vcpu_step(vcpu: i32, budget: i32): i32 {
  if (load<u32>(CTRL, H_MAGIC) != MAGIC) panicStr("dirtier: ferry_vcpu_step before ferry_boot (no control area)");
  const vcpus = load<u32>(CTRL, H_VCPUS);
  if (<u32>vcpu >= vcpus) {
    conReset();
    putStr("dirtier: step for vcpu ");
    putU64(<u64>vcpu);
    putStr(" but the VM booted with ");
    putU64(<u64>vcpus);
    panicLine();
  }
  const v = <u32>vcpu;
  const rec = recAddr(v);
  conUse(rec + R_CON, R_CON_CAP);

  // clock gap bookkeeping (downtime measurement)
  const now = <u64>clock_ns();
  let flags = load<u32>(rec, R_FLAGS);
  if ((flags & F_CLOCK) != 0) {
    const last = load<u64>(rec, R_LAST_NS);
    if (now > last && now - last > load<u64>(rec, R_MAX_GAP)) store<u64>(rec, now - last, R_MAX_GAP);
  }
  store<u64>(rec, now, R_LAST_NS);
  flags |= F_CLOCK;

  // step counting: one shared atomic add and one private count per step
  atomic.add<u32>(CTRL + H_SHARED, 1);
  store<u64>(rec, load<u64>(rec, R_STEPS) + 1, R_STEPS);

  let n: u32 = budget > 0 ? <u32>budget : 0;
  const rate = load<u64>(CTRL, H_RATE);
  if (rate != 0 && n != 0) {
    const perSec: f64 = <f64>rate / <f64>vcpus;
    if ((flags & F_RATE) == 0) {
      store<u64>(rec, now, R_RATE_T0);
      store<u64>(rec, 0, R_RATE_N);
      flags |= F_RATE;
    }
    let t0 = load<u64>(rec, R_RATE_T0);
    let done = load<u64>(rec, R_RATE_N);
    const elapsed: u64 = now > t0 ? now - t0 : 0;
    let allowed = <u64>(<f64>elapsed * perSec / 1e9);
    let burst = <u64>(perSec / 100);
    if (burst == 0) burst = 1;
    if (allowed > done + burst) {
      // after a stall (pause, migration, slow host) do not try to catch up more than 10 ms
      t0 = now > RATE_BURST_NS ? now - RATE_BURST_NS : 0;
      done = 0;
      store<u64>(rec, t0, R_RATE_T0);
      allowed = <u64>(<f64>(now - t0) * perSec / 1e9);
    }
    if (done >= allowed) {
      store<u64>(rec, done, R_RATE_N);
      store<u32>(rec, flags, R_FLAGS);
      return IDLE;
    }
    if (allowed - done < <u64>n) n = <u32>(allowed - done);
    store<u64>(rec, done + <u64>n, R_RATE_N);
  }
  store<u32>(rec, flags, R_FLAGS);
  if (n == 0) return RUN;

  const hot = <usize>load<u32>(CTRL, H_HOT_BASE);
  const check = load<u32>(CTRL, H_CHECK) != 0;
  if (load<u32>(CTRL, H_PATTERN) == 0) updateSeq(v, rec, hot, n, check);
  else updateRandom(v, rec, hot, n, check);
  return RUN;
}

// ---------------------------------------------------------------------------------------------
// read-only inspection

// Address of the first violation found by the last ferry_selfcheck (-1 = none). A global, so that
// the check itself writes no memory.
let firstBad: i64 = -1;

@inline function bad(addr: u64): void {
  if (firstBad < 0) firstBad = <i64>addr;
}

/**
 * Checks every invariant listed at the top of this file and returns the number of violations.
 * Only reads memory. Meaningful while the VM is paused (between steps of every vCPU).
 */
export function ferry_selfcheck(): i32 {
  firstBad = -1;
  if (<u64>memory.size() << 16 < <u64>CTRL + 4096) {
    bad(0);
    return 1;
  }
  if (load<u32>(CTRL, H_MAGIC) != MAGIC || load<u32>(CTRL, H_LAYOUT) != LAYOUT_VERSION) {
    bad(<u64>CTRL);
    return 1;
  }
  const nv = load<u32>(CTRL, H_VCPUS);
  const pages = load<u32>(CTRL, H_HOT_PAGES);
  const hot = load<u32>(CTRL, H_HOT_BASE);
  const ctrlSize = load<u32>(CTRL, H_CTRL_SIZE);
  const ramPages = load<u32>(CTRL, H_RAM_PAGES);
  const ram: u64 = <u64>ramPages << 16;
  const hotEnd: u64 = <u64>hot + (<u64>pages << PAGE_SHIFT);
  if (nv == 0 || nv > MAX_VCPUS || pages < nv
    || <u64>ctrlSize != ((<u64>RECORDS + <u64>nv * <u64>REC_SIZE + PAGE - 1) & ~(PAGE - 1))
    || <u64>hot != <u64>CTRL + <u64>ctrlSize || hotEnd > ram) {
    bad(<u64>CTRL);
    return 1;
  }
  if (<u32>memory.size() < ramPages) {
    // claimed size not preserved: the rest cannot even be read safely
    bad(ram);
    return 1;
  }
  let errors: u32 = 0;
  const random = load<u32>(CTRL, H_PATTERN) != 0;
  let steps: u64 = 0;
  for (let v: u32 = 0; v < nv; v++) {
    const rec = recAddr(v);
    steps += load<u64>(rec, R_STEPS);
    const first = load<u32>(rec, R_FIRST);
    const count = load<u32>(rec, R_COUNT);
    if (first != sliceFirst(v, pages, nv) || count != sliceFirst(v + 1, pages, nv) - first) {
      errors++;
      bad(<u64>rec);
      continue;
    }
    const c = load<u32>(rec, R_PASS);
    const k = load<u32>(rec, R_CURSOR);
    const total = load<u64>(rec, R_TOTAL);
    let sum: u64 = 0;
    for (let j: u32 = 0; j < count; j++) {
      const p = first + j;
      const addr = pageAddr(<usize>hot, p);
      const w = load<u32>(addr, 0);
      let ok = pageConsistent(addr, p);
      if (!random && w != (j < k ? c + 1 : c)) ok = false;
      if (!ok) {
        errors++;
        bad(<u64>addr);
      }
      sum += <u64>w;
    }
    if (random) {
      if (sum != total) {
        errors++;
        bad(<u64>rec);
      }
    } else if (k >= count || total != <u64>c * <u64>count + <u64>k) {
      errors++;
      bad(<u64>rec);
    }
  }
  if (atomic.load<u32>(CTRL + H_SHARED) != <u32>steps) {
    errors++;
    bad(<u64>CTRL + <u64>H_SHARED);
  }
  const fill = load<u32>(CTRL, H_FILL) != 0;
  const staticEnd = <u64>load<u32>(CTRL, H_STATIC_END);
  for (let a: u64 = 0; a < ram; a += PAGE) {
    if (a == <u64>CMDLINE_BUF) continue;
    if (a == <u64>CTRL) {
      a = hotEnd - PAGE; // skip control area and hot set
      continue;
    }
    if (a + <u64>W_ID < staticEnd) continue;
    if (load<u64>(<usize>a, W_ID) != (fill ? fillWord(a) : 0)) {
      errors++;
      bad(a + <u64>W_ID);
    }
  }
  return errors > <u32>i32.MAX_VALUE ? i32.MAX_VALUE : <i32>errors;
}

/** Address of the first violation found by the last ferry_selfcheck of this instance, or -1. */
export function dirtier_selfcheck_first_bad(): i64 {
  return firstBad;
}

/**
 * ABI ferry_max_clock_gap_ns: the largest gap between two consecutive clock reads (step starts) of
 * one vCPU since boot, max over vCPUs, ns — the guest's own view of its longest stall (a migration's
 * downtime shows up here). Only reads memory.
 */
export function ferry_max_clock_gap_ns(): i64 {
  if (load<u32>(CTRL, H_MAGIC) != MAGIC) return 0;
  const nv = load<u32>(CTRL, H_VCPUS);
  let m: u64 = 0;
  for (let v: u32 = 0; v < nv && v < MAX_VCPUS; v++) {
    const g = load<u64>(recAddr(v), R_MAX_GAP);
    if (g > m) m = g;
  }
  return <i64>m;
}

/** Total page updates done so far by all vCPUs. */
export function dirtier_updates(): i64 {
  if (load<u32>(CTRL, H_MAGIC) != MAGIC) return 0;
  const nv = load<u32>(CTRL, H_VCPUS);
  let t: u64 = 0;
  for (let v: u32 = 0; v < nv && v < MAX_VCPUS; v++) t += load<u64>(recAddr(v), R_TOTAL);
  return <i64>t;
}
