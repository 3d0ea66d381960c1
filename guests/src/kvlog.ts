// kvlog: an append-only key-value log on the Ferry block device.
//
// vCPU 0 appends 64-byte checksummed records to the disk, keeps a RAM copy of the whole log and an
// index (key -> latest sequence number) in RAM, and flushes every `flush` records. At boot it reads
// the disk back (in the first steps, never blocking a step on I/O) and verifies every record found;
// ferry_selfcheck re-verifies every record through the RAM copy and the index. Other vCPUs halt.
//
// Record i (0-based) lives at disk offset 64*i and at LOG + 64*i in RAM:
//   +0  u32 magic "KVL1" (0x314c564b)    +4  u32 epoch (boot generation that wrote it, >= 1)
//   +8  u64 seq = i + 1                   +16 u64 key   = derived from (seq, epoch), < 4096
//   +24 u64 value = derived from (key, seq, epoch)
//   +32 3 x u64 payload = mix64 chain from value
//   +56 u32 0                             +60 u32 crc32 (IEEE) of bytes 0..59
// Every field is a function of (seq, epoch), so a reader can check a record completely. Epochs
// never decrease along the log: a record of an older epoch after a newer one is a stale survivor
// of an unflushed write before a crash, and ends the log like an invalid record does.
//
// Console (stable, tests parse it):
//   kvlog: disk=<size> max=<records> flush=<n> rate=<r>                    at boot
//   kvlog: found <n> records, all verified (epoch <e>)                       when the scan ends
//   kvlog: discarded the tail from record <n> (torn or stale)                if the scan ended on one
//   kvlog: flushed <F> records, holds <A>                                   after each completed flush
//   kvlog: full, holds <A> records                                          once, when the log is full
//   kvlog: I/O error <status> on <op> at record <n>, retrying
//
// Parameters: max=<n> (records; default and limit: disk size / 64), flush=<n> (default 256, at
// most 8192), rate=<n> (records per second, 0 = unlimited, default 0). The key space (4096 keys)
// is fixed: record contents must not depend on parameters a later boot may change.
// Budget unit: one record appended or verified.
//
// Memory: 0xf000 command line; STATE at 0x10000 (4 KiB: fields below, descriptor, CRC table);
// INDEX at 0x11000 (4096 x u64: latest seq of each key, 0 = none); LOG at 0x19000 (the RAM copy).

import { block_capacity, clock_ns } from "./lib/ferry";
import { conFlush, putSize, putStr, putU64, putI64 } from "./lib/console";
import { cmdlineLoad, keyIs, nextParam, panicUnknownKey, valU64 } from "./lib/cmdline";
import { mix64 } from "./lib/hash";
import { panicStr } from "./lib/panic";
import { HALT, IDLE, RUN } from "./lib/step";
import { BLOCK_FLUSH, BLOCK_MAX_REQUEST, BLOCK_OK, BLOCK_PENDING, BLOCK_READ, BLOCK_SECTOR, BLOCK_WRITE, blockPrepare, blockStatus, blockSubmit, roundUpToSector } from "./lib/block";

export const ferry_abi_version: i32 = 1;

const REC: u64 = 64;
const MAGIC: u32 = 0x314c564b;
const STATE_MAGIC: u32 = 0x534c564b; // "KVLS"
const KEYS: u64 = 4096;
/** Boot scan reads the disk in chunks of this size. */
const SCAN_CHUNK: u64 = 65536;
/** Records appended but not yet durable, at most: bounds what a crash can lose and one write's size. */
const WINDOW: u64 = 8192;
const REQ_RECORDS: u64 = BLOCK_MAX_REQUEST / REC;
const SECTOR_RECORDS: u64 = BLOCK_SECTOR / REC;
const NS_PER_S: u64 = 1000000000;
/** Rate schedule: after a stall, catch up at most 1/CATCH_UP_DIVISOR s worth of records (100 ms). */
const CATCH_UP_DIVISOR: u64 = 10;
/** Upper bound for an epoch check that has none. */
const ANY_EPOCH: u32 = 0xffffffff;

const STATE: usize = 0x10000;
const INDEX: usize = 0x11000;
const LOG: usize = INDEX + <usize>(KEYS * 8);
// STATE fields
const S_MAGIC = 0;       // u32
const S_EPOCH = 4;       // u32: this boot's epoch (set when the scan ends)
const S_MAX = 8;         // u64: records the log may hold
const S_FLUSH = 24;      // u64
const S_RATE = 32;       // u64
const S_PHASE = 40;      // u32: 0 scan, 1 run
const S_IO = 44;         // u32: 0 none, 1 scan read, 2 write, 3 flush
const S_APPENDED = 48;   // u64: records in the RAM copy (A)
const S_WRITTEN = 56;    // u64: records whose write completed (W)
const S_FLUSHED = 64;    // u64: records durable (F)
const S_IO_END = 72;     // u64: records the current write or flush covers / end of the chunk being scanned
const S_SCAN = 80;       // u64: records scanned and verified
const S_FOUND = 88;      // u64: records found at boot
const S_LAST_NS = 96;    // u64: rate schedule: clock at the last credit update
const S_CREDIT = 104;    // u64: rate schedule: credit in record-nanoseconds
const S_IO_ERRORS = 112; // u64
const S_MAX_EPOCH = 128; // u32: highest epoch seen by the scan
const S_FULL_SAID = 132; // u32
const S_CHUNK_READ = 136; // u32: 1 while the chunk at S_SCAN has been read and is being verified
const DESC: usize = STATE + 256;   // 32-byte block descriptor (8-aligned)
const CRC_TABLE: usize = STATE + 1024; // 256 x u32

@inline function st64(f: usize): u64 { return load<u64>(STATE + f); }
@inline function set64(f: usize, v: u64): void { store<u64>(STATE + f, v); }
@inline function st32(f: usize): u32 { return load<u32>(STATE + f); }
@inline function set32(f: usize, v: u32): void { store<u32>(STATE + f, v); }

function crc32(p: usize, n: usize): u32 {
  let c: u32 = 0xffffffff;
  for (let i: usize = 0; i < n; i++) c = load<u32>(CRC_TABLE + (<usize>((c ^ <u32>load<u8>(p + i)) & 0xff) << 2)) ^ (c >>> 8);
  return ~c;
}

function buildCrcTable(): void {
  for (let n: u32 = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    store<u32>(CRC_TABLE + (<usize>n << 2), c);
  }
}

@inline function keyOf(seq: u64, epoch: u32): u64 { return mix64(seq * 0x9e3779b97f4a7c15 ^ (<u64>epoch << 40)) % KEYS; }
@inline function valueOf(key: u64, seq: u64, epoch: u32): u64 { return mix64(key ^ (seq << 8) ^ (<u64>epoch << 48)); }
@inline function recAt(i: u64): usize { return LOG + <usize>(i * REC); }

function writeRecord(i: u64, epoch: u32): void {
  const p = recAt(i);
  const seq = i + 1;
  const key = keyOf(seq, epoch);
  const value = valueOf(key, seq, epoch);
  store<u32>(p, MAGIC, 0);
  store<u32>(p, epoch, 4);
  store<u64>(p, seq, 8);
  store<u64>(p, key, 16);
  store<u64>(p, value, 24);
  let x = value;
  for (let j: usize = 0; j < 3; j++) { x = mix64(x); store<u64>(p + 32 + (j << 3), x); }
  store<u32>(p, 0, 56);
  store<u32>(p, crc32(p, 60), 60);
}

/** True if record i is complete and correct, with an epoch in [minEpoch, maxEpoch]. Only reads. */
function recordValid(i: u64, minEpoch: u32, maxEpoch: u32): bool {
  const p = recAt(i);
  if (load<u32>(p, 0) != MAGIC || load<u32>(p, 60) != crc32(p, 60)) return false;
  const epoch = load<u32>(p, 4);
  if (epoch < minEpoch || epoch > maxEpoch || epoch == 0) return false;
  const seq = i + 1;
  if (load<u64>(p, 8) != seq || load<u32>(p, 56) != 0) return false;
  const key = keyOf(seq, epoch);
  const value = valueOf(key, seq, epoch);
  if (load<u64>(p, 16) != key || load<u64>(p, 24) != value) return false;
  let x = value;
  for (let j: usize = 0; j < 3; j++) { x = mix64(x); if (load<u64>(p + 32 + (j << 3)) != x) return false; }
  return true;
}

@inline function indexSlot(key: u64): usize { return INDEX + (<usize>key << 3); }

export function ferry_boot(_vcpus: i32): void {
  const capacity = <u64>block_capacity();
  let max: u64 = capacity / REC;
  let flush: u64 = 256;
  let rate: u64 = 0;
  cmdlineLoad("kvlog");
  while (nextParam("kvlog")) {
    if (keyIs("max")) max = valU64("kvlog");
    else if (keyIs("flush")) flush = valU64("kvlog");
    else if (keyIs("rate")) rate = valU64("kvlog");
    else panicUnknownKey("kvlog", "max, flush, rate");
  }
  if (capacity == 0) panicStr("kvlog: the VM has no disk (ferry vm run ... --disk <file>)");
  if (max > capacity / REC) max = capacity / REC;
  if (max == 0) panicStr("kvlog: max must be at least 1");
  if (flush == 0) flush = 1;
  if (flush > WINDOW) flush = WINDOW;
  const log: u64 = <u64>LOG;
  const logBytes = roundUpToSector(max * REC);
  const needPages = (log + logBytes + 65535) >> 16;
  const have = <u64>memory.size();
  if (needPages > have && memory.grow(<i32>(needPages - have)) < 0) {
    putStr("kvlog: the log needs ");
    putSize(needPages << 16);
    putStr(" of RAM; give the VM more memory or a smaller max=");
    conFlush();
    panicStr("kvlog: not enough RAM for the log");
  }
  buildCrcTable();
  memory.fill(STATE, 0, 256);
  memory.fill(INDEX, 0, LOG - INDEX);
  set32(S_MAGIC, STATE_MAGIC);
  set64(S_MAX, max);
  set64(S_FLUSH, flush);
  set64(S_RATE, rate);
  putStr("kvlog: disk=");
  putSize(capacity);
  putStr(" max=");
  putU64(max);
  putStr(" flush=");
  putU64(flush);
  putStr(" rate=");
  putU64(rate);
  conFlush();
}

@inline function logBytes(): u64 { return roundUpToSector(st64(S_MAX) * REC); }

/** Boot scan, one bounded piece per step: read a chunk, then verify its records. */
function scanStep(budget: u64): i32 {
  const io = st32(S_IO);
  if (io == 1) {
    const s = blockStatus(DESC);
    if (s == BLOCK_PENDING) return IDLE;
    set32(S_IO, 0);
    if (s != BLOCK_OK) { ioError(s, "read", st64(S_SCAN)); return RUN; }
    set32(S_CHUNK_READ, 1);
  }
  let scan = st64(S_SCAN);
  const max = st64(S_MAX);
  if (st32(S_CHUNK_READ) == 0) {
    if (scan >= max) { endScan(scan); return RUN; }
    const off = scan * REC; // chunk starts are multiples of SCAN_CHUNK
    let len = logBytes() - off;
    if (len > SCAN_CHUNK) len = SCAN_CHUNK;
    set64(S_IO_END, (off + len) / REC < max ? (off + len) / REC : max);
    blockPrepare(DESC, BLOCK_READ, off, <u32>len, recAt(scan));
    if (blockSubmit(DESC) == 0) set32(S_IO, 1);
    return IDLE;
  }
  const end = st64(S_IO_END);
  let minEpoch: u32 = scan == 0 ? 1 : load<u32>(recAt(scan - 1), 4);
  let n: u64 = 0;
  while (scan < end && n < budget) {
    if (!recordValid(scan, minEpoch, ANY_EPOCH)) { set64(S_SCAN, scan); endScan(scan); return RUN; }
    const p = recAt(scan);
    minEpoch = load<u32>(p, 4);
    if (minEpoch > st32(S_MAX_EPOCH)) set32(S_MAX_EPOCH, minEpoch);
    store<u64>(indexSlot(load<u64>(p, 16)), scan + 1);
    scan++;
    n++;
  }
  set64(S_SCAN, scan);
  if (scan == end) set32(S_CHUNK_READ, 0);
  return RUN;
}

function endScan(n: u64): void {
  // Whatever the last chunk held beyond the end of the log is not part of it: clear it so the RAM
  // copy past the log is zero (selfcheck checks that) and a partial sector is rewritten with zeros.
  const tail = n < st64(S_MAX) && load<u32>(recAt(n), 0) != 0;
  const end = st64(S_IO_END) > n ? st64(S_IO_END) : n;
  if (end > n) memory.fill(recAt(n), 0, <usize>((end - n) * REC));
  const epoch = st32(S_MAX_EPOCH) + 1;
  set32(S_EPOCH, epoch);
  set64(S_FOUND, n);
  set64(S_APPENDED, n);
  set64(S_WRITTEN, n);
  set64(S_FLUSHED, n);
  set64(S_LAST_NS, <u64>clock_ns());
  set32(S_CHUNK_READ, 0);
  set32(S_PHASE, 1);
  putStr("kvlog: found ");
  putU64(n);
  putStr(" records, all verified (epoch ");
  putU64(epoch);
  putStr(")");
  conFlush();
  if (tail) {
    putStr("kvlog: discarded the tail from record ");
    putU64(n);
    putStr(" (torn or stale)");
    conFlush();
  }
}

function ioError(status: i32, op: string, at: u64): void {
  set64(S_IO_ERRORS, st64(S_IO_ERRORS) + 1);
  putStr("kvlog: I/O error ");
  putI64(status);
  putStr(" on ");
  putStr(op);
  putStr(" at record ");
  putU64(at);
  putStr(", retrying");
  conFlush();
}

/** How many records the rate allows now (budget when unlimited). */
function allowed(budget: u64): u64 {
  const rate = st64(S_RATE);
  if (rate == 0) return budget;
  const now = <u64>clock_ns();
  const last = st64(S_LAST_NS);
  // Elapsed time is capped at 1 s before the multiplication so it cannot overflow.
  const elapsed = now > last ? (now - last < NS_PER_S ? now - last : NS_PER_S) : 0;
  let credit = st64(S_CREDIT) + elapsed * rate;
  // After a long stall catch up at most 100 ms worth: a burst must not fill the window at once.
  const cap = (rate / CATCH_UP_DIVISOR + 1) * NS_PER_S;
  if (credit > cap) credit = cap;
  set64(S_LAST_NS, now);
  set64(S_CREDIT, credit);
  const n = credit / NS_PER_S;
  return n < budget ? n : budget;
}

function runStep(budget: u64): i32 {
  let worked = false;
  const io = st32(S_IO);
  if (io != 0) {
    const s = blockStatus(DESC);
    if (s != BLOCK_PENDING) {
      set32(S_IO, 0);
      worked = true;
      if (s != BLOCK_OK) ioError(s, io == 2 ? "write" : "flush", st64(io == 2 ? S_WRITTEN : S_FLUSHED));
      else if (io == 2) set64(S_WRITTEN, st64(S_IO_END));
      else {
        set64(S_FLUSHED, st64(S_IO_END));
        putStr("kvlog: flushed ");
        putU64(st64(S_FLUSHED));
        putStr(" records, holds ");
        putU64(st64(S_APPENDED));
        conFlush();
      }
    }
  }

  // Append into the RAM copy, within the window and the rate.
  const max = st64(S_MAX);
  let a = st64(S_APPENDED);
  let room = st64(S_FLUSHED) + WINDOW - a;
  if (a + room > max) room = max - a;
  let n = allowed(budget);
  if (n > room) n = room;
  if (n > 0) {
    const epoch = st32(S_EPOCH);
    for (let k: u64 = 0; k < n; k++) {
      writeRecord(a, epoch);
      store<u64>(indexSlot(load<u64>(recAt(a), 16)), a + 1);
      a++;
    }
    set64(S_APPENDED, a);
    if (st64(S_RATE) != 0) set64(S_CREDIT, st64(S_CREDIT) - n * NS_PER_S);
    worked = true;
  }

  // One request in flight at a time: a partial sector is rewritten with more records later, and
  // two writes of one sector in flight together would have no defined order.
  if (st32(S_IO) == 0) {
    const w = st64(S_WRITTEN);
    const f = st64(S_FLUSHED);
    if (w - f >= st64(S_FLUSH) || (a == max && w == a && f < w)) {
      set64(S_IO_END, w);
      blockPrepare(DESC, BLOCK_FLUSH, 0, 0, 0);
      if (blockSubmit(DESC) == 0) set32(S_IO, 3);
    } else if (a > w) {
      const from = w - w % SECTOR_RECORDS;
      let to = a;
      if (to - from > REQ_RECORDS) to = from + REQ_RECORDS;
      const len = roundUpToSector((to - from) * REC);
      set64(S_IO_END, to);
      blockPrepare(DESC, BLOCK_WRITE, from * REC, <u32>len, recAt(from));
      if (blockSubmit(DESC) == 0) set32(S_IO, 2);
    } else if (a == max && f == a && st32(S_FULL_SAID) == 0) {
      set32(S_FULL_SAID, 1);
      putStr("kvlog: full, holds ");
      putU64(a);
      putStr(" records");
      conFlush();
    }
  }
  return worked ? RUN : IDLE;
}

export function ferry_vcpu_step(vcpu: i32, budget: i32): i32 {
  if (vcpu != 0) return HALT;
  const b: u64 = budget > 0 ? <u64>budget : 1;
  return st32(S_PHASE) == 0 ? scanStep(b) : runStep(b);
}

/** Records the log holds now (verified at boot or appended since). */
function held(): u64 {
  return st32(S_PHASE) == 0 ? st64(S_SCAN) : st64(S_APPENDED);
}

/**
 * Re-verifies every record through the RAM copy, the index against the records, and the counters.
 * Only reads memory. Returns the number of violations.
 */
export function ferry_selfcheck(): i32 {
  let bad: i32 = 0;
  if (st32(S_MAGIC) != STATE_MAGIC) return 1;
  const n = held();
  const max = st64(S_MAX);
  if (n > max) bad++;
  const running = st32(S_PHASE) == 1;
  if (running && !(st64(S_FLUSHED) <= st64(S_WRITTEN) && st64(S_WRITTEN) <= n && st64(S_FOUND) <= n)) bad++;
  const maxEpoch = running ? st32(S_EPOCH) : ANY_EPOCH;
  let minEpoch: u32 = 1;
  for (let i: u64 = 0; i < n && i < max; i++) {
    if (!recordValid(i, minEpoch, maxEpoch)) { bad++; continue; }
    const p = recAt(i);
    minEpoch = load<u32>(p, 4);
    // The index holds the latest seq of each key: never older than any record with that key.
    if (load<u64>(indexSlot(load<u64>(p, 16))) < i + 1) bad++;
  }
  for (let k: u64 = 0; k < KEYS; k++) {
    const s = load<u64>(indexSlot(k));
    if (s == 0) continue;
    if (s > n || load<u64>(recAt(s - 1), 16) != k) bad++;
  }
  // Past the log the RAM copy is zero (what a partial sector write puts on the disk).
  if (running) for (let i = n; i < max; i++) if (load<u64>(recAt(i)) != 0) bad++;
  return bad;
}

/** Records held (exported for tests and tools). */
export function kvlog_records(): i64 {
  return <i64>held();
}

/** Records known durable (a completed flush covered them). */
export function kvlog_flushed(): i64 {
  return <i64>st64(S_FLUSHED);
}
