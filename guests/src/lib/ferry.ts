// Host imports of a Ferry guest (module "ferry"), ABI version 1: see docs/guest-abi.md.
// These are the only imports a guest may have; every one of them is optional.

/** Appends `len` UTF-8 bytes at `ptr` to the VM console (line-buffered per vCPU by the host). */
@external("ferry", "console_write")
export declare function console_write(ptr: usize, len: i32): void;

/** Monotonic nanoseconds since the VM first booted; same clock on every vCPU. */
@external("ferry", "clock_ns")
export declare function clock_ns(): i64;

/** Writes up to `cap` bytes of the VM command line at `ptr`; returns its full length. */
@external("ferry", "cmdline")
export declare function cmdline(ptr: usize, cap: i32): i32;

/** Fatal guest error: the VM goes to `crashed` with this message. Does not return. */
@external("ferry", "panic")
export declare function panic(ptr: usize, len: i32): void;

/**
 * Queues the block request described at `desc` (32 bytes, 8-aligned; see lib/block.ts) and
 * returns at once: 0 queued, < 0 refused. The completion arrives later in the status word.
 */
@external("ferry", "block_submit")
export declare function block_submit(desc: usize): i32;

/** The disk's size in bytes (a multiple of 512), 0 when the VM has no disk. */
@external("ferry", "block_capacity")
export declare function block_capacity(): i64;
