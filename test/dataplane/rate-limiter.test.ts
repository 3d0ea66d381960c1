/** The bandwidth cap: a paced send can be abandoned at once (cancel must not wait for bandwidth). */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RateLimiter, MIN_RATE_BYTES_PER_SEC } from '../../src/dataplane/rate-limiter.js';
import { FerryError } from '../../src/lib/errors.js';

describe('rate limiter', () => {
  it('a take waiting for bandwidth rejects with the abort reason as soon as its signal aborts', async () => {
    const limiter = new RateLimiter(MIN_RATE_BYTES_PER_SEC);
    await limiter.take(64 * 1024 * 1024); // drives the bucket ~64 s into debt
    const ac = new AbortController();
    const waiting = limiter.take(1024, ac.signal);
    ac.abort(new FerryError('MIGRATION_CANCELLED', 'cancelled by the operator'));
    // Without the signal this would resolve after about a minute; the test would time out.
    await assert.rejects(waiting, { code: 'MIGRATION_CANCELLED' });
  });

  it('refuses a cap below the minimum', () => {
    assert.throws(() => new RateLimiter(MIN_RATE_BYTES_PER_SEC - 1), { code: 'INVALID_ARGUMENT' });
  });
});
