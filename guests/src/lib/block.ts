// The Ferry block device from the guest's side (docs/guest-abi.md, "Block device").
//
// A request is a 32-byte descriptor in linear memory: fill it with blockPrepare(), submit it with
// blockSubmit() (returns at once), then poll blockStatus() in later steps until it is no longer
// BLOCK_PENDING. The buffer belongs to the device until then; the descriptor fields do not (the
// host copies them at submit).

import { block_submit } from "./ferry";

export const BLOCK_DESC_BYTES: usize = 32;
export const BLOCK_SECTOR: u64 = 512;
export const BLOCK_MAX_REQUEST: u64 = 1 << 20;
export const BLOCK_MAX_IN_FLIGHT: i32 = 64;

export const BLOCK_READ: u32 = 0;
export const BLOCK_WRITE: u32 = 1;
export const BLOCK_FLUSH: u32 = 2;

export const BLOCK_PENDING: i32 = 0;
export const BLOCK_OK: i32 = 1;
export const BLOCK_E_QUEUE_FULL: i32 = -8;

/** `bytes` rounded up to whole sectors: the device reads and writes whole sectors only. */
@inline export function roundUpToSector(bytes: u64): u64 {
  return (bytes + BLOCK_SECTOR - 1) & ~(BLOCK_SECTOR - 1);
}

/** Fills the descriptor at `desc` (8-aligned). The status word is left to blockSubmit. */
export function blockPrepare(desc: usize, op: u32, offset: u64, length: u32, buf: usize): void {
  store<u32>(desc, op, 0);
  store<u64>(desc, offset, 8);
  store<u32>(desc, length, 16);
  store<u32>(desc, <u32>buf, 20);
}

/** 0 when queued (status is then BLOCK_PENDING), a negative code when refused. */
export function blockSubmit(desc: usize): i32 {
  return block_submit(desc);
}

/** BLOCK_PENDING while in flight, BLOCK_OK, or a negative error. An atomic load: the host stores it from another thread. */
export function blockStatus(desc: usize): i32 {
  return atomic.load<i32>(desc, 4);
}
