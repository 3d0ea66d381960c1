/**
 * The idle wake-up word (src/vmm/control.ts): a block completion ends an idle sleep at once, a
 * wake between the step and the sleep is not lost, a request change still ends it, and a throttle
 * sleep (the request sequence) is never cut short by completions. The sleeper is this thread
 * (Node allows Atomics.wait on the main thread); the waker is a worker thread on the same control
 * block. Sleeps are long (IDLE_SLEEP_MS) so that "woken early" is far from "timed out" even on a
 * loaded machine; only lower bounds are asserted for sleeps that must not be cut.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { Control, RunRequest, W_IDLE_SLEEPERS } from '../../src/vmm/control.js';

/** Long enough that a sleep that was not woken is unmistakable. */
const IDLE_SLEEP_MS = 10_000;
/** What "woken early" must beat: generous for a loaded 2-core machine, far below IDLE_SLEEP_MS. */
const WOKEN_WITHIN_MS = 5_000;
const THROTTLE_SLEEP_MS = 300;
/** Timer slack allowed below a sleep that must run to its timeout. */
const TIMER_SLACK_MS = 15;

type Action = 'wake-when-asleep' | 'pause-when-asleep' | 'wake-repeatedly';

/**
 * Starts a worker that acts on `control`: wakeIdle() or a Pause request once this thread is inside
 * an idle sleep, or wakeIdle() every 2 ms (word 1 of `stop` set once it has begun) until told to
 * stop (word 0).
 */
function waker(control: Control, action: Action, stop: Int32Array): Worker {
  const controlUrl = new URL('../../src/vmm/control.js', import.meta.url).href;
  const code = `
    const { workerData } = require('node:worker_threads');
    import(workerData.controlUrl).then(({ Control, W_IDLE_SLEEPERS }) => {
      const c = new Control(workerData.buffers, 1, 1);
      const stop = new Int32Array(workerData.stop);
      const nap = new Int32Array(new SharedArrayBuffer(4));
      if (workerData.action === 'wake-repeatedly') {
        Atomics.store(stop, 1, 1); Atomics.notify(stop, 1);
        while (Atomics.load(stop, 0) === 0) { c.wakeIdle(); Atomics.wait(nap, 0, 0, 2); }
        return;
      }
      while (Atomics.load(c.i32, W_IDLE_SLEEPERS) === 0) Atomics.wait(nap, 0, 0, 1);
      if (workerData.action === 'pause-when-asleep') c.setRequest(1); else c.wakeIdle();
    });`;
  return new Worker(code, { eval: true, workerData: { controlUrl, buffers: control.buffers, action, stop: stop.buffer } });
}

function exited(w: Worker): Promise<void> {
  return new Promise((resolve, reject) => { w.on('exit', () => { resolve(); }); w.on('error', reject); });
}

/** Sleeps idle on a new control block while a worker does `action` once the sleep began; asserts it was woken early. */
async function idleSleepUntil(action: Action): Promise<Control> {
  const c = Control.create(1, 1, 1);
  const w = waker(c, action, new Int32Array(new SharedArrayBuffer(8)));
  const t0 = performance.now();
  c.idleSleep(c.idleWakeSeq(), IDLE_SLEEP_MS);
  const ms = performance.now() - t0;
  await exited(w);
  assert.ok(ms < WOKEN_WITHIN_MS, `idle sleep lasted ${ms.toFixed(0)} ms`);
  return c;
}

describe('idle wake-up', () => {
  it('wakeIdle ends an idle sleep at once, and the sleeper count goes back to 0', async () => {
    const c = await idleSleepUntil('wake-when-asleep');
    assert.equal(Atomics.load(c.i32, W_IDLE_SLEEPERS), 0);
  });

  it('a wake after the sequence was read (during the step) makes the sleep return at once', () => {
    const c = Control.create(1, 1, 1);
    const seq = c.idleWakeSeq(); // before the step
    c.wakeIdle(); // a completion published during the step
    const t0 = performance.now();
    c.idleSleep(seq, IDLE_SLEEP_MS);
    assert.ok(performance.now() - t0 < WOKEN_WITHIN_MS);
  });

  it('a request change (pause) ends an idle sleep', async () => {
    const c = await idleSleepUntil('pause-when-asleep');
    assert.equal(c.request(), RunRequest.Pause);
  });

  it('completions never cut a throttle sleep short', async () => {
    const c = Control.create(1, 1, 1);
    const stop = new Int32Array(new SharedArrayBuffer(8));
    const w = waker(c, 'wake-repeatedly', stop);
    while (Atomics.load(stop, 1) === 0) Atomics.wait(stop, 1, 0, IDLE_SLEEP_MS);
    const t0 = performance.now();
    c.waitRequestChange(c.requestSeq(), THROTTLE_SLEEP_MS);
    const ms = performance.now() - t0;
    Atomics.store(stop, 0, 1);
    await exited(w);
    assert.ok(ms >= THROTTLE_SLEEP_MS - TIMER_SLACK_MS, `throttle sleep lasted only ${ms.toFixed(0)} ms`);
  });
});
