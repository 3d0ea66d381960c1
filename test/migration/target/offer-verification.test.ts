/** OfferVerifier: bounded, cancellable by the task's signal and by close(), runs each task once after its delay. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_PENDING_OFFER_VERIFICATIONS, OfferVerifier } from '../../../src/migration/target/offer-verification.js';

describe('OfferVerifier', () => {
  it(`runs a task once after its delay, waits at most ${MAX_PENDING_OFFER_VERIFICATIONS}, and logs a skipped one`, async () => {
    const v = new OfferVerifier();
    const lines: string[] = [];
    let ran = 0;
    let last: () => void = () => undefined;
    const done = new Promise<void>((resolve) => { last = resolve; });
    for (let i = 0; i < MAX_PENDING_OFFER_VERIFICATIONS; i++) {
      assert.equal(v.schedule({ what: `m${i}`, log: (l) => lines.push(l), run: () => { ran++; if (ran === MAX_PENDING_OFFER_VERIFICATIONS) last(); } }), true);
    }
    assert.equal(v.schedule({ what: 'one too many', log: (l) => lines.push(l), run: () => { ran += 100; } }), false);
    assert.match(lines[0] ?? '', /verification of one too many skipped/);
    // Its timers are unref'd (they never keep a host process alive): this test keeps the loop alive meanwhile.
    const keepAlive = setInterval(() => undefined, 100);
    try { await done; } finally { clearInterval(keepAlive); }
    assert.equal(ran, MAX_PENDING_OFFER_VERIFICATIONS);
    assert.equal(v.waiting, 0);
  });

  it('drops a task whose signal aborts, and every task on close (and takes none after)', () => {
    const v = new OfferVerifier();
    const gone = new AbortController();
    const run = (): void => { assert.fail('a cancelled verification ran'); };
    assert.equal(v.schedule({ what: 'a', log: () => undefined, run, signal: gone.signal }), true);
    assert.equal(v.schedule({ what: 'b', log: () => undefined, run }), true);
    assert.equal(v.waiting, 2);
    gone.abort();
    assert.equal(v.waiting, 1);
    v.close();
    assert.equal(v.waiting, 0);
    assert.equal(v.schedule({ what: 'c', log: () => undefined, run }), false);
  });

  it('a task that throws is logged; not even a log that throws too escapes the timer', async () => {
    const v = new OfferVerifier();
    const lines: string[] = [];
    let after: () => void = () => undefined;
    const ran = new Promise<void>((resolve) => { after = resolve; });
    v.schedule({ what: 'boom', log: (l) => lines.push(l), run: () => { throw new Error('instrumenter broke'); } });
    v.schedule({ what: 'closed log', log: () => { throw new Error('log closed'); }, run: () => { throw new Error('again'); } });
    v.schedule({ what: 'last', log: () => undefined, run: () => { after(); } });
    const keepAlive = setInterval(() => undefined, 100);
    try { await ran; } finally { clearInterval(keepAlive); }
    assert.match(lines[0] ?? '', /verification of boom failed: instrumenter broke/);
  });

  it('waits while a migration is in progress in the process (it would stall its main thread), runs once none is, skips after too many waits', async () => {
    let busy = 1;
    // Postponed without end here: whatever the timer's lateness, it cannot be skipped meanwhile.
    const v = new OfferVerifier(() => busy, 5, Number.MAX_SAFE_INTEGER);
    const lines: string[] = [];
    let ran = 0;
    let wake: () => void = () => undefined;
    v.schedule({ what: 'held', log: (l) => lines.push(l), run: () => { ran++; wake(); } });
    const keepAlive = setInterval(() => undefined, 100);
    try {
      // Still waiting after two of its waits (not run, not dropped): the migration goes on.
      await new Promise<void>((resolve) => { setTimeout(resolve, 12); });
      assert.equal(ran, 0);
      assert.equal(v.waiting, 1);
      const ranOnce = new Promise<void>((resolve) => { wake = resolve; });
      busy = 0;
      await ranOnce;
      assert.equal(ran, 1);
      const starving = new OfferVerifier(() => 1, 5, 3);
      const skipped = new Promise<void>((resolve) => {
        starving.schedule({ what: 'starved', log: (l) => { lines.push(l); resolve(); }, run: () => { ran += 100; } });
      });
      await skipped;
    } finally {
      clearInterval(keepAlive);
    }
    assert.equal(ran, 1);
    assert.match(lines.join('\n'), /verification of starved skipped: migrations kept this host busy for 3 waits of 5 ms/);
  });
});
