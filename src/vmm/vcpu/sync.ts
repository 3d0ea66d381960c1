/**
 * How the VM (main thread) waits for its vCPUs: on control-block words (src/vmm/control.ts), never
 * on messages, so pausing and trace epochs do not depend on either event loop. The host process is
 * never blocked: a wait spins on Atomics.wait for at most SYNC_WAIT_WINDOW_MS, then yields.
 */
import { performance } from 'node:perf_hooks';
import {
  RunRequest, VcpuState, V_ACK, V_INSTALL_EPOCH_DONE, V_IN_STEP, V_STATE, W_BARRIER_WAITERS, W_FENCE, W_INSTALL_COUNT, W_INSTALL_DONE,
  W_INSTALL_EPOCH, W_STEP_SEQ, type Control,
} from '../control.js';

/** The first part of a pause/barrier wait spins on Atomics.wait (accurate, sub-ms); then it yields. */
const SYNC_WAIT_WINDOW_MS = 5;

/**
 * Waits for `cond`: first spinning on Atomics.wait for up to SYNC_WAIT_WINDOW_MS (sub-ms accuracy),
 * then yielding to the event loop between checks so a slow vCPU never blocks the host's loop.
 * Sleeps on `seqWord` (a sequence the vCPUs bump and notify) when given. False at the deadline or
 * as soon as `aborted()` (the VM crashed).
 */
export async function waitUntil(i32: Int32Array, cond: () => boolean, seqWord: number | null, deadline: number, aborted: () => boolean): Promise<boolean> {
  const syncEnd = Math.min(deadline, performance.now() + SYNC_WAIT_WINDOW_MS);
  const scratch = new Int32Array(new SharedArrayBuffer(4));
  // cond() is evaluated once per check: a vCPU that saw an older Run can flip Parked -> Running ->
  // Parked while it re-reads the request, so a second evaluation could contradict the first.
  while (performance.now() < syncEnd) {
    if (cond()) return true;
    if (aborted()) return false;
    if (seqWord !== null) {
      const seq = Atomics.load(i32, seqWord);
      if (cond()) return true;
      Atomics.wait(i32, seqWord, seq, 0.5);
    } else {
      Atomics.wait(scratch, 0, 0, 0.02);
    }
  }
  while (performance.now() < deadline) {
    if (cond()) return true;
    if (aborted()) return false;
    await delay(1);
  }
  return cond();
}

/** 'clear': no vCPU was inside a step; 'acked': each that was has finished it; 'timeout': not in time. */
export type BarrierOutcome = 'clear' | 'acked' | 'timeout';

/**
 * Trace epoch barrier (docs/dirty-tracking.md). Called after re-arming traces: a seq-cst RMW on the
 * fence word orders the re-arm before everything below; then every vCPU that is inside a step
 * must finish that step (its ack is a seq-cst increment after the step's stores). A vCPU not in a
 * step starts its next step after this point and so sees the re-armed traces.
 */
export async function epochBarrier(control: Control, vcpus: number, timeoutMs: number, aborted: () => boolean): Promise<BarrierOutcome> {
  const c = control;
  Atomics.add(c.i32, W_FENCE, 1);
  const pending: { vcpu: number; ack: number }[] = [];
  for (let v = 0; v < vcpus; v++) {
    const ack = c.load(v, V_ACK);
    if (c.load(v, V_IN_STEP) === 1) pending.push({ vcpu: v, ack });
  }
  if (pending.length === 0) return 'clear';
  const done = (): boolean => pending.every(({ vcpu, ack }) => {
    const s = c.load(vcpu, V_STATE);
    return c.load(vcpu, V_ACK) !== ack || s === VcpuState.Crashed || s === VcpuState.Exited;
  });
  // vCPUs signal step ends while a barrier waits, so the wait sleeps on a word instead of polling
  // (polling would take CPU from the very vCPU it waits for).
  Atomics.add(c.i32, W_BARRIER_WAITERS, 1);
  try {
    return await waitUntil(c.i32, done, W_STEP_SEQ, performance.now() + timeoutMs, aborted) ? 'acked' : 'timeout';
  } finally {
    Atomics.sub(c.i32, W_BARRIER_WAITERS, 1);
  }
}

/**
 * "stop-all" installation with every vCPU parked: each re-arms its share of `regions` (null: all
 * regions) under a new install epoch; the request goes back to Pause when all are done, the time
 * is up or the VM crashed. True when all did their share.
 */
export async function installWhileParked(control: Control, vcpus: number, regions: Uint32Array | null, timeoutMs: number, aborted: () => boolean): Promise<boolean> {
  const c = control;
  const count = regions === null ? -1 : regions.length;
  if (regions !== null) c.installList.set(regions);
  Atomics.store(c.i32, W_INSTALL_COUNT, count);
  Atomics.store(c.i32, W_INSTALL_DONE, 0);
  Atomics.add(c.i32, W_INSTALL_EPOCH, 1);
  c.setRequest(RunRequest.Install);
  const allDone = (): boolean => Atomics.load(c.i32, W_INSTALL_DONE) >= vcpus;
  const ok = await waitUntil(c.i32, allDone, W_INSTALL_DONE, performance.now() + timeoutMs, aborted);
  c.setRequest(RunRequest.Pause);
  return ok;
}

/** What an unfinished stop-all installation got to, for its error message. */
export function installProgress(control: Control, vcpus: number, states: readonly VcpuState[]): string {
  const c = control;
  const perVcpu = Array.from({ length: vcpus }, (_, v) => c.load(v, V_INSTALL_EPOCH_DONE)).join(',');
  return `${Atomics.load(c.i32, W_INSTALL_DONE)} of ${vcpus} done; states ${states.join(',')}; epoch ${Atomics.load(c.i32, W_INSTALL_EPOCH)}, per vCPU ${perVcpu}; request ${c.request()}`;
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
