// Console line builder that never allocates.
//
// A line is assembled byte by byte in a buffer in linear memory and handed to ferry.console_write
// by conFlush(). The buffer is chosen per instance with conUse(): each vCPU is its own instance
// (own globals) over one shared memory, so a guest that prints from several vCPUs gives each vCPU
// its own buffer. Until conUse() is called, a small static buffer is used (boot runs on vCPU 0
// only; selfcheck never prints). Text that does not fit is truncated; one byte is always kept for
// the final newline. Strings are AssemblyScript string literals (UTF-16); non-ASCII code units are
// printed as '?'.

import { console_write } from "./ferry";

const DEFAULT_CAP: i32 = 512;
const DEFAULT_BUF: usize = memory.data(512, 16);

// conBase == 0 means "the static default buffer".
let conBase: usize = 0;
let conCap: i32 = 0;
let conLen: i32 = 0;

/** Selects the line buffer of this instance (`cap` bytes at `base`) and empties it. */
export function conUse(base: usize, cap: i32): void {
  conBase = base;
  conCap = cap;
  conLen = 0;
}

/** Start address of the current line buffer. */
export function conPtr(): usize {
  return conBase != 0 ? conBase : DEFAULT_BUF;
}

@inline function conLimit(): i32 {
  // last usable index + 1, leaving room for '\n'
  return (conBase != 0 ? conCap : DEFAULT_CAP) - 1;
}

/** Number of bytes in the current line. */
export function conLength(): i32 {
  return conLen;
}

/** Discards the current line. */
export function conReset(): void {
  conLen = 0;
}

export function putByte(b: u32): void {
  if (conLen < conLimit()) {
    store<u8>(conPtr() + <usize>conLen, <u8>b);
    conLen++;
  }
}

/** Appends an ASCII string literal. */
export function putStr(s: string): void {
  const p = changetype<usize>(s);
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = <u32>load<u16>(p + (<usize>i << 1));
    putByte(c >= 0x20 && c < 0x7f ? c : 0x3f);
  }
}

/** Appends `len` raw bytes from memory (non-printable bytes become '?'). */
export function putBytes(ptr: usize, len: i32): void {
  for (let i = 0; i < len; i++) {
    const c = <u32>load<u8>(ptr + <usize>i);
    putByte(c >= 0x20 && c < 0x7f ? c : 0x3f);
  }
}

/** Appends an unsigned decimal number. */
export function putU64(v: u64): void {
  let digits = 1;
  let t = v;
  while (t >= 10) {
    t /= 10;
    digits++;
  }
  // emit most significant digit first: divide by 10^(digits-1), 10^(digits-2), ...
  let pow: u64 = 1;
  for (let i = 1; i < digits; i++) pow *= 10;
  while (pow != 0) {
    putByte(<u32>((v / pow) % 10) + 0x30);
    pow /= 10;
  }
}

/** Appends a signed decimal number. */
export function putI64(v: i64): void {
  if (v < 0) {
    putByte(0x2d);
    putU64(<u64>(-v)); // -i64.MIN wraps to 2^63, which is correct as u64
  } else {
    putU64(<u64>v);
  }
}

/** Appends exactly `digits` lowercase hex digits of `v` (no prefix). */
export function putHex(v: u64, digits: i32): void {
  for (let i = digits - 1; i >= 0; i--) {
    const d = <u32>((v >> (<u64>i << 2)) & 0xf);
    putByte(d < 10 ? d + 0x30 : d + 0x57);
  }
}

/** Appends "0x" and the shortest hex form of `v`. */
export function putHex0x(v: u64): void {
  putStr("0x");
  let digits = 1;
  while (digits < 16 && (v >> (<u64>digits << 2)) != 0) digits++;
  putHex(v, digits);
}

/** Appends a byte size: "16MiB" when an exact multiple of KiB/MiB/GiB, else "1234B". */
export function putSize(bytes: u64): void {
  const KI: u64 = 1 << 10;
  const MI: u64 = 1 << 20;
  const GI: u64 = 1 << 30;
  if (bytes != 0 && bytes % GI == 0) {
    putU64(bytes / GI);
    putStr("GiB");
  } else if (bytes != 0 && bytes % MI == 0) {
    putU64(bytes / MI);
    putStr("MiB");
  } else if (bytes != 0 && bytes % KI == 0) {
    putU64(bytes / KI);
    putStr("KiB");
  } else {
    putU64(bytes);
    putStr("B");
  }
}

/** Terminates the current line with '\n', writes it to the console and empties the buffer. */
export function conFlush(): void {
  const p = conPtr();
  store<u8>(p + <usize>conLen, 0x0a);
  console_write(p, conLen + 1);
  conLen = 0;
}
