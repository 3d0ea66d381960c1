// Command line parsing without allocation.
//
// The command line is `key=value` tokens separated by spaces (tabs and newlines also separate).
// cmdlineLoad() has the host write it (ferry.cmdline, boot only, vCPU 0) into the 4 KiB page
// CMDLINE_BUF = 0xF000 .. 0x10000 (the last 4 KiB of the module's initial memory, above its
// static data; Ferry allows command lines of up to 4096 bytes); then
//
//   while (nextParam(who)) {
//     if (keyIs("hot")) hot = valSize(who);
//     else if (keyIs("fill")) fill = valBool(who);
//     else panicUnknownKey(who);
//   }
//
// Every error panics with a message that starts with `who` (the guest's name) and quotes the token.

import { cmdline } from "./ferry";
import { conReset, putStr, putBytes } from "./console";
import { panicLine } from "./panic";

/** The command line buffer: a fixed page just below 64 KiB, outside the static data. */
export const CMDLINE_BUF: usize = 0xf000;
export const CMDLINE_CAP: i32 = 4096;
const CMD_BUF: usize = CMDLINE_BUF;

let cmdLen: i32 = 0;
let cmdPos: i32 = 0;
let keyPtr: usize = 0;
let keyLen: i32 = 0;
let valPtr: usize = 0;
let valLen: i32 = 0;

/** Reads the VM command line into CMDLINE_BUF (needs initial memory >= 1 wasm page). */
export function cmdlineLoad(who: string): void {
  if (__heap_base > CMD_BUF) {
    conReset();
    putStr(who);
    putStr(": static data overlaps the command line buffer at 0xf000");
    panicLine();
  }
  const n = cmdline(CMD_BUF, CMDLINE_CAP);
  if (n < 0 || n > CMDLINE_CAP) {
    conReset();
    putStr(who);
    putStr(": command line too long (at most 4096 bytes)");
    panicLine();
  }
  cmdLen = n;
  cmdPos = 0;
}

@inline function isSpace(c: u32): bool {
  return c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d || c == 0;
}

/** Advances to the next `key=value` token; false at the end. Panics on a token without '='. */
export function nextParam(who: string): bool {
  while (cmdPos < cmdLen && isSpace(<u32>load<u8>(CMD_BUF + <usize>cmdPos))) cmdPos++;
  if (cmdPos >= cmdLen) return false;
  const start = cmdPos;
  let eq: i32 = -1;
  while (cmdPos < cmdLen) {
    const c = <u32>load<u8>(CMD_BUF + <usize>cmdPos);
    if (isSpace(c)) break;
    if (c == 0x3d && eq < 0) eq = cmdPos;
    cmdPos++;
  }
  if (eq <= start) {
    conReset();
    putStr(who);
    putStr(": bad command line token '");
    putBytes(CMD_BUF + <usize>start, cmdPos - start);
    putStr("': expected key=value");
    panicLine();
  }
  keyPtr = CMD_BUF + <usize>start;
  keyLen = eq - start;
  valPtr = CMD_BUF + <usize>(eq + 1);
  valLen = cmdPos - (eq + 1);
  return true;
}

function bytesEqual(ptr: usize, len: i32, s: string): bool {
  if (len != s.length) return false;
  const p = changetype<usize>(s);
  for (let i = 0; i < len; i++) {
    if (<u32>load<u8>(ptr + <usize>i) != <u32>load<u16>(p + (<usize>i << 1))) return false;
  }
  return true;
}

/** Whether the current key is `s`. */
export function keyIs(s: string): bool {
  return bytesEqual(keyPtr, keyLen, s);
}

/** Whether the current value is `s`. */
export function valIs(s: string): bool {
  return bytesEqual(valPtr, valLen, s);
}

/** Panics: "<who>: bad value in '<key>=<value>': expected <what>". */
export function panicBadValue(who: string, what: string): void {
  conReset();
  putStr(who);
  putStr(": bad value in '");
  putBytes(keyPtr, keyLen);
  putStr("=");
  putBytes(valPtr, valLen);
  putStr("': expected ");
  putStr(what);
  panicLine();
}

/** Panics: "<who>: unknown parameter '<key>' (known: <known>)". */
export function panicUnknownKey(who: string, known: string): void {
  conReset();
  putStr(who);
  putStr(": unknown parameter '");
  putBytes(keyPtr, keyLen);
  putStr("' (known: ");
  putStr(known);
  putStr(")");
  panicLine();
}

const U64_LIMIT: u64 = 1 << 62;

// Parses the leading decimal digits of the value; returns the number of digits consumed
// (0 = none) and leaves the number in parsedNumber. Panics (via the caller's message) on overflow.
let parsedNumber: u64 = 0;
function parseDigits(who: string, what: string): i32 {
  let v: u64 = 0;
  let i: i32 = 0;
  while (i < valLen) {
    const c = <u32>load<u8>(valPtr + <usize>i);
    if (c < 0x30 || c > 0x39) break;
    v = v * 10 + <u64>(c - 0x30);
    if (v >= U64_LIMIT) panicBadValue(who, what);
    i++;
  }
  parsedNumber = v;
  return i;
}

/** The current value as a plain unsigned decimal number. */
export function valU64(who: string): u64 {
  const what = "an unsigned decimal number";
  const n = parseDigits(who, what);
  if (n == 0 || n != valLen) panicBadValue(who, what);
  return parsedNumber;
}

/** The current value as a size: digits with an optional K, KiB, M, MiB, G or GiB suffix (binary units). */
export function valSize(who: string): u64 {
  const what = "a size: digits with an optional K, KiB, M, MiB, G or GiB suffix";
  const n = parseDigits(who, what);
  if (n == 0) panicBadValue(who, what);
  const v = parsedNumber;
  const rest = valLen - n;
  let shift: u64 = 0;
  if (rest != 0) {
    const unit = <u32>load<u8>(valPtr + <usize>n);
    if (unit == 0x4b) shift = 10; // K
    else if (unit == 0x4d) shift = 20; // M
    else if (unit == 0x47) shift = 30; // G
    else panicBadValue(who, what);
    if (rest == 3) {
      if (load<u8>(valPtr + <usize>(n + 1)) != 0x69 || load<u8>(valPtr + <usize>(n + 2)) != 0x42) panicBadValue(who, what); // "iB"
    } else if (rest != 1) {
      panicBadValue(who, what);
    }
  }
  if (v >= (U64_LIMIT >> shift)) panicBadValue(who, what);
  return v << shift;
}

/** The current value as a flag: exactly "1" or "0". */
export function valBool(who: string): bool {
  if (valIs("1")) return true;
  if (valIs("0")) return false;
  panicBadValue(who, "1 or 0");
  return false;
}
