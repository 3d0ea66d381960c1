// compute: a CPU-bound Ferry guest with few stores.
//
// vCPU 0 runs a 64-bit hash chain  h = mix64(h ^ i), i = 0, 1, ..., iters-1  (mix64 = the splitmix64
// finalizer, lib/hash.ts), starting from h = H0. The chain state (i, h, done) lives in mutable module globals,
// NOT in memory: for a run to survive save/restore or migration, the runtime must capture and
// restore the vCPU instance's globals. Other vCPUs halt at their first step.
//
// Console output (a deterministic function of the parameters only, never of step boundaries):
//   compute: iters=<iters> report=<report>                 at boot
//   compute: i=<i> h=<16 hex digits>                       each time i reaches a multiple of report
//   compute: done i=<iters> h=<16 hex digits>              once, then every step returns HALT
//
// Parameters (command line, key=value separated by spaces):
//   iters=<n>    iterations (default 20000000)
//   report=<n>   progress line every n iterations, 0 = none (default 1000000)
//
// Budget unit: one iteration.
//
// Memory: only the module's initial memory (1 wasm page): static data, and the command line
// buffer at 0xf000 (lib/cmdline.ts). STATE below holds the parameters (written at boot) and, at
// each report, a copy of i and h (the only stores of a step besides the console line buffer).

import { conFlush, putHex, putStr, putU64 } from "./lib/console";
import { cmdlineLoad, keyIs, nextParam, panicUnknownKey, valU64 } from "./lib/cmdline";
import { mix64 } from "./lib/hash";
import { HALT, RUN } from "./lib/step";

export const ferry_abi_version: i32 = 1;

// STATE: +0 u64 iters, +8 u64 report, +16 u64 i at last report, +24 u64 h at last report
const STATE: usize = memory.data(32, 16);

let gI: u64 = 0;
// H0 = 0x243f6a8885a308d3. Initializers are literals so that the module needs no start function.
let gH: u64 = 0x243f6a8885a308d3;
let gDone: bool = false;

export function ferry_boot(_vcpus: i32): void {
  let iters: u64 = 20000000;
  let report: u64 = 1000000;
  cmdlineLoad("compute");
  while (nextParam("compute")) {
    if (keyIs("iters")) iters = valU64("compute");
    else if (keyIs("report")) report = valU64("compute");
    else panicUnknownKey("compute", "iters, report");
  }
  store<u64>(STATE, iters, 0);
  store<u64>(STATE, report, 8);
  putStr("compute: iters=");
  putU64(iters);
  putStr(" report=");
  putU64(report);
  conFlush(); // (the vCPU count is deliberately not printed: output depends on iters and report only)
}

function printProgress(prefix: string, i: u64, h: u64): void {
  putStr(prefix);
  putU64(i);
  putStr(" h=");
  putHex(h, 16);
  conFlush();
}

export function ferry_vcpu_step(vcpu: i32, budget: i32): i32 {
  if (vcpu != 0 || gDone) return HALT;
  const iters = load<u64>(STATE, 0);
  const report = load<u64>(STATE, 8);
  let i = gI;
  let h = gH;
  const n: u64 = budget > 0 ? <u64>budget : 1;
  const end = iters - i > n ? i + n : iters;
  while (i < end) {
    let stop = end;
    const next: u64 = report != 0 ? (i / report + 1) * report : end;
    if (next < stop) stop = next;
    while (i < stop) {
      h = mix64(h ^ i);
      i++;
    }
    if (i == next && report != 0) {
      store<u64>(STATE, i, 16);
      store<u64>(STATE, h, 24);
      printProgress("compute: i=", i, h);
    }
  }
  gI = i;
  gH = h;
  if (i >= iters) {
    gDone = true;
    printProgress("compute: done i=", i, h);
    return HALT;
  }
  return RUN;
}

/** Iterations done so far (the chain's i) of this instance. */
export function compute_i(): i64 {
  return <i64>gI;
}

/** Current chain value h of this instance. */
export function compute_h(): i64 {
  return <i64>gH;
}
