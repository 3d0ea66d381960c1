/**
 * Token-bucket bandwidth cap shared by all connections of one operation: `take(n)` resolves when n
 * bytes may be sent. Burst is BURST_MS worth of the rate, so small frames are not delayed and
 * large ones are paced.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../lib/errors.js';

/** Tokens that may accumulate while idle: this much time at the configured rate. */
export const BURST_MS = 50;
/** Slowest cap accepted: anything below is a typo (1 MiB/s). */
export const MIN_RATE_BYTES_PER_SEC = 1024 * 1024;

export class RateLimiter {
  private tokens: number;
  private last = performance.now();
  private readonly burst: number;

  constructor(readonly bytesPerSec: number) {
    if (!Number.isFinite(bytesPerSec) || bytesPerSec < MIN_RATE_BYTES_PER_SEC) {
      throw new FerryError('INVALID_ARGUMENT', `bandwidth cap must be at least ${MIN_RATE_BYTES_PER_SEC} bytes/s`);
    }
    this.burst = (bytesPerSec * BURST_MS) / 1000;
    this.tokens = this.burst;
  }

  /** Resolves when `bytes` may be sent; rejects with the signal's reason as soon as `signal` aborts. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    for (;;) {
      const now = performance.now();
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.bytesPerSec) / 1000);
      this.last = now;
      // A frame bigger than the burst goes once the bucket is full, and drives it negative.
      if (this.tokens >= Math.min(bytes, this.burst)) { this.tokens -= bytes; return; }
      try {
        await sleep(Math.max(1, ((Math.min(bytes, this.burst) - this.tokens) * 1000) / this.bytesPerSec), undefined, signal !== undefined ? { signal } : {});
      } catch {
        const reason: unknown = signal?.reason;
        throw reason instanceof FerryError ? reason : new FerryError('CANCELLED', 'waiting for bandwidth was cancelled');
      }
    }
  }
}
