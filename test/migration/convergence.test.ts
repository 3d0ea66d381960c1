import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_POLICY, SWITCHOVER_OVERHEAD_MS, decideConvergence, rateThrottlePermille, RATE_THROTTLE_TO_MAX_ABOVE_PERMILLE, type RoundObservation } from '../../src/migration/convergence.js';

const GBps = 1e9;
const obs = (o: Partial<RoundObservation>): RoundObservation => ({
  round: 3, dirtyBytes: 0, previousDirtyBytes: null, throughputBytesPerSec: GBps, elapsedMs: 100, throttlePermille: 0, ...o,
});

/** MB the switch-over can move within the default target at 1 GB/s. */
const SWITCHABLE_MB = DEFAULT_POLICY.downtimeTargetMs - SWITCHOVER_OVERHEAD_MS;

describe('convergence policy', () => {
  it('switches over when the remaining dirty set fits the downtime target at the measured rate', () => {
    const d = decideConvergence(obs({ dirtyBytes: 10e6 }), DEFAULT_POLICY); // 10 ms + overhead
    assert.equal(d.action, 'switchover');
    assert.ok(Math.abs(d.expectedDowntimeMs - (10 + SWITCHOVER_OVERHEAD_MS)) < 1e-9);
    assert.equal(decideConvergence(obs({ dirtyBytes: 0 }), DEFAULT_POLICY).action, 'switchover');
  });

  it('keeps copying without throttle while the dirty set shrinks', () => {
    const d = decideConvergence(obs({ dirtyBytes: 100e6, previousDirtyBytes: 300e6 }), DEFAULT_POLICY);
    assert.deepEqual(d.action === 'continue' ? d.throttlePermille : null, 0);
  });

  it('escalates the throttle progressively when the guest outruns the link, up to the maximum', () => {
    let throttle = 0;
    const seen: number[] = [];
    for (let round = 2; round < 30; round++) {
      const d = decideConvergence(obs({ round, dirtyBytes: 64e6, previousDirtyBytes: 64e6, throttlePermille: throttle }), DEFAULT_POLICY);
      assert.equal(d.action, 'continue');
      if (d.action === 'continue') throttle = d.throttlePermille;
      seen.push(throttle);
    }
    assert.equal(seen[0], DEFAULT_POLICY.initialThrottlePermille);
    assert.equal(seen[1], DEFAULT_POLICY.initialThrottlePermille + 2 * DEFAULT_POLICY.throttleStepPermille, 'no progress at all: a double step');
    assert.ok(seen.every((t, i) => i === 0 || t >= (seen[i - 1] ?? 0)), 'monotonic');
    assert.equal(seen.at(-1), DEFAULT_POLICY.maxThrottlePermille);
  });

  it('escalates by a single step when the dirty set shrinks a little but not enough', () => {
    const d = decideConvergence(obs({ round: 4, dirtyBytes: 90e6, previousDirtyBytes: 100e6, throttlePermille: 200 }), DEFAULT_POLICY);
    assert.equal(d.action === 'continue' ? d.throttlePermille : null, 200 + DEFAULT_POLICY.throttleStepPermille);
  });

  it('does not throttle after the first round, nor when auto-converge is off', () => {
    assert.equal((decideConvergence(obs({ round: 1, dirtyBytes: 64e6 }), DEFAULT_POLICY) as { throttlePermille: number }).throttlePermille, 0);
    const off = { ...DEFAULT_POLICY, autoConverge: false };
    assert.equal((decideConvergence(obs({ round: 5, dirtyBytes: 64e6, previousDirtyBytes: 64e6 }), off) as { throttlePermille: number }).throttlePermille, 0);
  });

  it('at a limit, forces the switch-over or aborts as the operator chose', () => {
    const atLimit = obs({ round: DEFAULT_POLICY.maxRounds, dirtyBytes: 500e6 });
    const forced = decideConvergence(atLimit, DEFAULT_POLICY);
    assert.equal(forced.action, 'switchover');
    assert.equal(forced.action === 'switchover' && forced.forced, true);
    const aborted = decideConvergence(atLimit, { ...DEFAULT_POLICY, onLimit: 'abort' });
    assert.equal(aborted.action, 'abort');
    assert.match(aborted.action === 'abort' ? aborted.reason : '', /did not converge within 60 rounds/);
    assert.equal(decideConvergence(obs({ elapsedMs: 1e9, dirtyBytes: 500e6 }), { ...DEFAULT_POLICY, onLimit: 'abort' }).action, 'abort');
  });

  it('with a measured dirty rate, throttles after round 1 as much as the next round needs to fit the target', () => {
    // 64 MB dirty at 1 GB/s: the next round takes 64 ms; the switch-over can move (20 - overhead) ms x 1 GB/s.
    // Dirtying at 1 GB/s the guest would redirty 64 MB in it: it must run at most that share of the time.
    const d = decideConvergence(obs({ round: 1, dirtyBytes: 64e6, dirtyRateBytesPerSec: GBps }), DEFAULT_POLICY);
    assert.equal(d.action === 'continue' ? d.throttlePermille : null, Math.ceil(1000 * (1 - SWITCHABLE_MB / 64)));
    // A faster guest gets the maximum at once, instead of after rounds that each re-send the hot set.
    const fast = decideConvergence(obs({ round: 1, dirtyBytes: 64e6, dirtyRateBytesPerSec: 1000 * GBps }), DEFAULT_POLICY);
    assert.equal(fast.action === 'continue' ? fast.throttlePermille : null, DEFAULT_POLICY.maxThrottlePermille);
  });

  it('a rate that needs a near-total throttle gets the maximum (the measured rate is a lower bound)', () => {
    // At 4 GB/s: 1 - 14/256 = 945 permille by the rate alone.
    const o = obs({ round: 1, dirtyBytes: 64e6, dirtyRateBytesPerSec: 4 * GBps });
    assert.ok(rateThrottlePermille(o, DEFAULT_POLICY) > RATE_THROTTLE_TO_MAX_ABOVE_PERMILLE);
    const d = decideConvergence(o, DEFAULT_POLICY);
    assert.equal(d.action === 'continue' ? d.throttlePermille : null, DEFAULT_POLICY.maxThrottlePermille);
  });

  it('a measured rate is scaled by the throttle it was measured under, and never lowers the throttle', () => {
    // Measured at 50 % throttle: unthrottled it is twice that.
    assert.equal(rateThrottlePermille(obs({ dirtyBytes: 64e6, dirtyRateBytesPerSec: 0.5 * GBps, throttlePermille: 500 }), DEFAULT_POLICY),
      Math.ceil(1000 * (1 - SWITCHABLE_MB / 64)));
    const d = decideConvergence(obs({ round: 4, dirtyBytes: 64e6, previousDirtyBytes: 64e6, dirtyRateBytesPerSec: 1, throttlePermille: 400 }), DEFAULT_POLICY);
    assert.equal(d.action === 'continue' ? d.throttlePermille : null, 400 + 2 * DEFAULT_POLICY.throttleStepPermille, 'the escalation still applies');
  });

  it('a slow measured rate, or auto-converge off, adds no throttle', () => {
    // 64 MB dirty, the next round 64 ms; at 100 MB/s the guest dirties 6.4 MB in it: below the 18 MB the switch-over moves.
    assert.equal(rateThrottlePermille(obs({ dirtyBytes: 64e6, dirtyRateBytesPerSec: 100e6 }), DEFAULT_POLICY), 0);
    const off = { ...DEFAULT_POLICY, autoConverge: false };
    assert.equal((decideConvergence(obs({ round: 1, dirtyBytes: 64e6, dirtyRateBytesPerSec: 100 * GBps }), off) as { throttlePermille: number }).throttlePermille, 0);
  });

  it('a zero or unknown throughput never switches over on a non-empty dirty set', () => {
    assert.equal(decideConvergence(obs({ dirtyBytes: 4096, throughputBytesPerSec: 0 }), DEFAULT_POLICY).action, 'continue');
  });
});
