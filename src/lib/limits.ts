/**
 * Bounds shared by the runtime (src/vmm), the snapshot format, the migration wire protocol and the
 * host's data directory. Each is defined here once: a VM one part accepts must be one every other
 * part accepts too, or a VM could be created that cannot be saved, migrated or reloaded. Bounds
 * private to one module (frame payload sizes, snapshot chunk size, console buffer) stay there.
 *
 * Changing a value here changes the snapshot format and the wire protocol: update
 * docs/snapshot-format.md, docs/migration-protocol.md and docs/guest-abi.md with it.
 */
import { z } from 'zod';
import { GiB, KiB, MiB, formatBytes } from './units.js';

// ---------------------------------------------------------------------------------------------
// vCPUs

/** A PEM certificate, key or CSR (P-256: about 1 KiB); larger input is refused unread. */
export const MAX_PEM_CHARS = 16 * KiB;

export const MIN_VCPUS = 1;
/**
 * Each vCPU is a worker thread over the one shared memory and every pause barrier waits for all
 * of them; 64 is far above the core count of the hosts Ferry targets. A snapshot's vcpuStates and
 * a STATE message carry one entry per vCPU, bounded by this.
 */
export const MAX_VCPUS = 64;
/**
 * Mutable globals whose values a vCPU publishes at each park (the control block reserves room for
 * that many per vCPU), and so the most a snapshot or a STATE message carries per vCPU. Real guests
 * have a handful (AssemblyScript: the stack pointer and a few runtime globals).
 */
export const MAX_GLOBALS_PER_VCPU = 4096;

// ---------------------------------------------------------------------------------------------
// Memory

/** Fixed by the WebAssembly spec: RAM is a whole number of these, and claimedPages counts them. */
export const WASM_PAGE_BYTES = 64 * KiB;
/** Smallest VM: one wasm page. */
export const MIN_RAM_BYTES = WASM_PAGE_BYTES;
/**
 * Largest VM RAM. wasm32 addresses 4 GiB in all; RAM plus the host-reserved regions beyond it
 * (src/vmm/layout.ts) must fit, and V8 refuses a shared memory of exactly 65536 pages on some
 * builds, so stay a whole GiB below.
 */
export const MAX_RAM_BYTES = 3 * GiB;

/** RAM sizes every part accepts: a whole number of wasm pages from MIN_RAM_BYTES to MAX_RAM_BYTES. */
export function isValidRamBytes(bytes: number): boolean {
  return Number.isSafeInteger(bytes) && bytes >= MIN_RAM_BYTES && bytes <= MAX_RAM_BYTES && bytes % WASM_PAGE_BYTES === 0;
}

// ---------------------------------------------------------------------------------------------
// Write-trace granularity

/** Smallest trace granularity: one x86 page (the fine bitmap has one byte per such page). */
export const MIN_GRANULARITY_BYTES = 4 * KiB;
/** Largest trace granularity: one x86 huge page; coarser regions mostly resend clean memory. */
export const MAX_GRANULARITY_BYTES = 2 * MiB;

/** Granularities every part accepts: a power of two from MIN_ to MAX_GRANULARITY_BYTES. */
export function isValidGranularity(bytes: number): boolean {
  return Number.isInteger(bytes) && bytes >= MIN_GRANULARITY_BYTES && bytes <= MAX_GRANULARITY_BYTES && (bytes & (bytes - 1)) === 0;
}

// ---------------------------------------------------------------------------------------------
// Guest image and command line

/**
 * Largest guest image: the biggest real guests are a few MiB, and one image travels whole in a
 * PREPARE frame, in a snapshot's image section and (base64) in one host API request body.
 */
export const MAX_IMAGE_BYTES = 64 * MiB;
/**
 * Largest command line, in UTF-8 bytes: the guest reads it as bytes (the `cmdline` device), so
 * bytes are what is bounded everywhere, never string length. One 4 KiB page is ample for
 * `key=value` options.
 */
export const MAX_CMDLINE_BYTES = 4096;

/** The command line's size as the guest and every bound see it. */
export function cmdlineBytes(cmdline: string): number {
  return Buffer.byteLength(cmdline, 'utf8');
}

// ---------------------------------------------------------------------------------------------
// VM names

/**
 * A VM name is a directory name in the host's data directory (vms/<name>/) and travels in
 * snapshots and PREPARE, so it is short and filesystem-safe on every platform.
 */
export const MAX_VM_NAME_CHARS = 64;
/** The characters a VM name may use, as a regular-expression character class body. */
export const VM_NAME_CHAR_CLASS = 'A-Za-z0-9._-';
/**
 * The VM name rule: 1..MAX_VM_NAME_CHARS characters of VM_NAME_CHAR_CLASS, but not "." or "..":
 * as vms/<name>/ those are the vms directory and the data directory itself, which deleting the VM
 * would remove.
 */
export const VM_NAME_PATTERN = new RegExp(`^(?!\\.{1,2}$)[${VM_NAME_CHAR_CLASS}]{1,${MAX_VM_NAME_CHARS}}$`);
/** The rule in words, for error messages. */
export const VM_NAME_RULE = `1-${MAX_VM_NAME_CHARS} characters of letters, digits, '.', '_' or '-', other than "." and ".."`;

export function isValidVmName(name: string): boolean {
  return VM_NAME_PATTERN.test(name);
}

// ---------------------------------------------------------------------------------------------
// Live migration

export const MIN_DATA_CHANNELS = 1;
/**
 * Parallel data connections per migration. Each costs a socket and in-flight frame buffers on both
 * hosts, and a link is saturated long before 16; a target accepts one control connection plus this
 * many, and HELLO's channel index is below it.
 */
export const MAX_DATA_CHANNELS = 16;
/**
 * Auto-converge throttle ceiling, in thousandths of each vCPU's time parked: 99.9 %, since a guest
 * that dirties memory far faster than the link must be slowed that much to converge. 1000 is not
 * a throttle but a pause (the worker sizes its sleeps by 1000 - permille).
 */
export const MAX_THROTTLE_PERMILLE = 999;
/**
 * ABORT reason, in characters: enough for an error message's gist, and even with worst-case JSON
 * escaping (6 bytes a character) it stays inside the 4 KiB ABORT payload bound.
 */
export const MAX_ABORT_REASON_CHARS = 512;

// Disks: shared by the block device, the datastores, changed-block tracking and the migration
// protocol (which carries disks and may import nothing but src/lib).

/** Largest disk: far beyond any real use, and keeps every offset + length exact in a double. */
export const MAX_DISK_CAPACITY_BYTES = 2 ** 44; // 16 TiB
/** Longest datastore path in bytes (UTF-8): well under PATH_MAX (4096) once joined to a root. */
export const MAX_DATASTORE_PATH_BYTES = 1024;
/** Smallest changed-block tracking block: a VMDK grain (64 KiB by default); finer costs bitmap and per-block overhead. */
export const MIN_CHANGED_BLOCK_BYTES = 64 * KiB;
/** Largest tracked block: a migration DISK entry carries at most 2 MiB. */
export const MAX_CHANGED_BLOCK_BYTES = 2 * MiB;
/** Deepest parent chain Ferry opens (and a migration announces): far above real snapshot chains, low enough to stop a hostile one. */
export const MAX_CHAIN_DEPTH = 32;

// ---------------------------------------------------------------------------------------------
// The same rules as zod schemas, for the wire formats and the store (each a fresh schema, so a
// caller may refine it further).

export const vcpusSchema = (): z.ZodNumber => z.number().int().min(MIN_VCPUS).max(MAX_VCPUS);

export const ramBytesSchema = (): z.ZodType<number> =>
  z.number().refine(isValidRamBytes, `must be a multiple of ${formatBytes(WASM_PAGE_BYTES)} from ${formatBytes(MIN_RAM_BYTES)} to ${formatBytes(MAX_RAM_BYTES)}`);

export const granularitySchema = (): z.ZodType<number> =>
  z.number().refine(isValidGranularity, `must be a power of two from ${formatBytes(MIN_GRANULARITY_BYTES)} to ${formatBytes(MAX_GRANULARITY_BYTES)}`);

export const cmdlineSchema = (): z.ZodType<string> =>
  z.string().refine((s) => cmdlineBytes(s) <= MAX_CMDLINE_BYTES, `must be at most ${MAX_CMDLINE_BYTES} bytes (UTF-8)`);

export const vmNameSchema = (): z.ZodString => z.string().regex(VM_NAME_PATTERN, `must be ${VM_NAME_RULE}`);
