/** The write pattern of the crash-consistency writer, replayed by the test that kills it. */
import { type PatternWrite, writePattern } from './vmdk.js';

/** Writes per epoch and the longest one: several grains touched, partial and whole, per flush. */
const WRITES_PER_EPOCH = 6;
const MAX_WRITE_BYTES = 150_000;
/** Epochs of one writer get seeds far apart from another's. */
const SEED_STRIDE = 100_000;

export function crashEpoch(seed: number, epoch: number, capacityBytes: number): PatternWrite[] {
  return writePattern(seed * SEED_STRIDE + epoch, WRITES_PER_EPOCH, capacityBytes, MAX_WRITE_BYTES);
}
