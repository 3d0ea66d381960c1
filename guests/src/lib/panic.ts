// Fatal errors: ferry.panic with a message assembled without allocation.

import { panic } from "./ferry";
import { conPtr, conLength, conReset, putStr, putU64 } from "./console";

/** Panics with the current console line (built with put*()) as the message. Does not return. */
export function panicLine(): void {
  panic(conPtr(), conLength());
  unreachable();
}

/** Panics with a string literal as the message. Does not return. */
export function panicStr(msg: string): void {
  conReset();
  putStr(msg);
  panicLine();
}

/**
 * AssemblyScript abort handler, wired in with `--use abort=guests/src/lib/panic/ferryAbort` so that
 * the module imports nothing from "env". Failed assertions, out-of-range checks etc. end up here.
 */
export function ferryAbort(message: string | null, fileName: string | null, lineNumber: u32, columnNumber: u32): void {
  conReset();
  putStr("abort: ");
  if (changetype<usize>(message) != 0) putStr(changetype<string>(message));
  if (changetype<usize>(fileName) != 0) {
    putStr(" at ");
    putStr(changetype<string>(fileName));
    putStr(":");
    putU64(lineNumber);
    putStr(":");
    putU64(columnNumber);
  }
  panicLine();
}
