/**
 * Hang detection. A guest that ignores its step budget is not waited for: every
 * WATCHDOG_INTERVAL_MS the VM asks which vCPU, if any, has been inside one step for longer than the
 * hang timeout, and crashes with reason `hung` (docs/design/runtime.md).
 *
 * The read order pairs with the worker's store order (src/vmm/vcpu/worker.ts): the worker
 * publishes the step's start time first and sets V_IN_STEP second; this reads V_IN_STEP (seq-cst)
 * first and the time second, so it never pairs "in a step" with a stale start time.
 */
import { performance } from 'node:perf_hooks';
import { S_STEP_START_MS, V_IN_STEP, type Control } from '../control.js';

/** How often the watchdog looks for a step that overran the hang timeout. */
export const WATCHDOG_INTERVAL_MS = 50;

export interface HungStep {
  readonly vcpu: number;
  /** How long the vCPU has been inside its current step. */
  readonly ageMs: number;
}

export class Watchdog {
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly control: Control, private readonly vcpus: number, private readonly hangTimeoutMs: number) {}

  /** Calls `tick` every WATCHDOG_INTERVAL_MS until stop(); the timer does not keep the process alive. */
  start(tick: () => void): void {
    this.timer = setInterval(tick, WATCHDOG_INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) { clearInterval(this.timer); this.timer = null; }
  }

  /** The first vCPU that has been inside one step for longer than the hang timeout, or null. */
  hungStep(): HungStep | null {
    const c = this.control;
    const now = performance.timeOrigin + performance.now();
    for (let v = 0; v < this.vcpus; v++) {
      if (c.load(v, V_IN_STEP) !== 1) continue;
      const startMs = c.f64[c.stat(v, S_STEP_START_MS)] ?? 0;
      if (startMs <= 0) continue; // not yet published (cannot happen with the worker's store order; belt and braces)
      const ageMs = now - startMs;
      if (ageMs > this.hangTimeoutMs) return { vcpu: v, ageMs };
    }
    return null;
  }
}
