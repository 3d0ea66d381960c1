// What ferry_vcpu_step returns (docs/guest-abi.md, "Exports"): shared so every guest means the same.

/** The step did work; call it again at once. */
export const RUN: i32 = 0;
/** Nothing to do now (e.g. waiting for a block completion): the host sleeps one idle tick (1 ms) or until it needs the vCPU. */
export const IDLE: i32 = 1;
/** This vCPU is done; it is never stepped again. */
export const HALT: i32 = 2;
