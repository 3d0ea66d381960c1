/**
 * One vCPU: a worker thread running its own instance of the instrumented guest over the VM's
 * shared memory. The loop is a small state machine driven by the control block (src/vmm/control.ts):
 *
 *   Running: step -> ack -> (throttle sleep) -> Running
 *   Running --request=Pause--> Parked (globals published) --request=Run--> Running
 *   Running --step returns IDLE--> Idle (sleep one tick, or until a block completion or a request change) --> Running
 *   Running --step returns HALT--> Halted (until Stop)
 *   any --trap/panic/bad status--> Crashed (message posted)    any --request=Stop--> Exited
 *
 * Between two steps the vCPU is at a safepoint: that is the only place it parks, publishes its
 * state, or sleeps. The ack after each step is a seq-cst increment: the trace-epoch acknowledgement
 * that the collector waits for (docs/dirty-tracking.md).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import {
  Control, MAX_THROTTLE_SLEEP_MS, RunRequest, VcpuState, V_ACK, V_BUDGET, V_GLOBAL_COUNT, V_INSTALL_EPOCH_DONE, V_IN_STEP, V_RESTORE_HALTED,
  V_STATE, V_THROTTLE_PERMILLE, S_MAX_STEP_MS, S_STEPS, S_STEP_MS, S_STEP_START_MS, S_THROTTLED_MS, S_UNITS, W_BOOTED,
  W_BARRIER_WAITERS, W_GO, W_INSTALL_COUNT, W_INSTALL_DONE, W_INSTALL_EPOCH, W_PARK_SEQ, W_RESTORE, W_STEP_SEQ,
} from '../control.js';
import { BlockSubmitter } from '../devices/block.js';
import { TraceBitmap } from '../trace-bitmap.js';
import type { VcpuWorkerData, VcpuWorkerMessage } from './protocol.js';
import {
  CONSOLE_WRITE_MAX_BYTES, IDLE_TICK_MS, MAX_BUDGET, MIN_BUDGET, PANIC_MESSAGE_MAX_BYTES, STEP_STATUS_HALT,
  STEP_STATUS_IDLE, STEP_STATUS_RUN,
} from './protocol.js';

const data = workerData as VcpuWorkerData;
const port = parentPort;
if (port === null) throw new Error('src/vmm/vcpu/worker.ts must run as a worker thread');

const control = new Control(data.control, data.vcpus, data.maxGlobals);
const memory = data.memory;
const bitmap = new TraceBitmap(memory.buffer, data.layout);
const vcpu = data.vcpu;
const i32 = control.i32;
const idx = (field: number): number => control.word(vcpu, field);
const st = (field: number): number => control.stat(vcpu, field);
const post = (msg: VcpuWorkerMessage): void => { port.postMessage(msg); };
/** Shortest step target under throttle (the per-step overhead is ~1 µs). */
const MIN_THROTTLED_STEP_MS = 0.01;

/** Thrown by device imports to unwind the guest with a crash reason. */
class GuestFault extends Error {
  constructor(readonly reason: 'panic' | 'fault', message: string) { super(message); }
}

function guestBytes(ptr: number, len: number, what: string): Uint8Array {
  const p = ptr >>> 0, n = len >>> 0;
  if (p + n > data.ramBytes) {
    throw new GuestFault('fault', `${what}: span ${p}+${n} lies outside guest RAM (${data.ramBytes} bytes)`);
  }
  return new Uint8Array(memory.buffer, p, n);
}

let consoleBuffer = '';
const decoder = new TextDecoder('utf-8', { fatal: false });
function flushConsole(): void {
  if (consoleBuffer.length > 0) {
    post({ kind: 'console', vcpu, text: consoleBuffer });
    consoleBuffer = '';
  }
}

const cmdlineBytes = new TextEncoder().encode(data.cmdline);
const block = new BlockSubmitter(data.block, {
  memory, ramBytes: data.ramBytes, bitmap, post: (requests) => { post({ kind: 'block', vcpu, requests }); },
});
const imports: WebAssembly.Imports = {
  ferry_rt: {
    memory,
    oob: (ptr: number, offset: number, size: number): void => {
      const addr = (ptr >>> 0) + (offset >>> 0);
      throw new WebAssembly.RuntimeError(
        `out of bounds memory access: a ${size >>> 0}-byte write at 0x${addr.toString(16)} is outside guest RAM (0x0..0x${data.ramBytes.toString(16)}); host-reserved memory is not writable by the guest`);
    },
  },
  ferry: {
    console_write: (ptr: number, len: number): void => {
      if (len >>> 0 > CONSOLE_WRITE_MAX_BYTES) throw new GuestFault('fault', `console_write of ${len >>> 0} bytes exceeds the ${CONSOLE_WRITE_MAX_BYTES}-byte limit per call`);
      consoleBuffer += decoder.decode(guestBytes(ptr, len, 'console_write').slice());
      const nl = consoleBuffer.lastIndexOf('\n');
      if (nl >= 0) {
        post({ kind: 'console', vcpu, text: consoleBuffer.slice(0, nl + 1) });
        consoleBuffer = consoleBuffer.slice(nl + 1);
      }
    },
    clock_ns: (): bigint => {
      const now = control.guestClockNs();
      // Remember what the guest saw: the guest-observed downtime of a migration is the gap between
      // its last read on the source and its first read on the target.
      Atomics.store(control.clockReads, vcpu * 2, now);
      if (control.clockReads[vcpu * 2 + 1] === 0n) Atomics.store(control.clockReads, vcpu * 2 + 1, now);
      return now;
    },
    cmdline: (ptr: number, cap: number): number => {
      const n = Math.min(cap >>> 0, cmdlineBytes.byteLength);
      guestBytes(ptr, n, 'cmdline').set(cmdlineBytes.subarray(0, n));
      bitmap.markRange(ptr >>> 0, n); // a device write fires traces like a guest store
      return cmdlineBytes.byteLength;
    },
    panic: (ptr: number, len: number): void => {
      const n = Math.min(len >>> 0, PANIC_MESSAGE_MAX_BYTES);
      let message = '(unreadable panic message)';
      try { message = decoder.decode(guestBytes(ptr, n, 'panic').slice()); } catch { /* keep the placeholder */ }
      throw new GuestFault('panic', message);
    },
    // Only queues the request (src/vmm/devices/block.ts): the vCPU never waits for file I/O.
    block_submit: (descPtr: number): number => block.submit(descPtr),
    block_capacity: (): bigint => block.capacity(),
  },
};

function publishGlobals(exports: WebAssembly.Exports): void {
  data.globals.forEach((g, i) => {
    const value = (exports[g.exportName] as WebAssembly.Global).value;
    const slot = control.globalSlot(vcpu, i);
    if (g.type === 'i64') control.globalsI64[slot] = value as bigint;
    else control.globalsF64[slot] = value as number;
  });
  Atomics.store(i32, idx(V_GLOBAL_COUNT), data.globals.length);
}

function setState(state: VcpuState): void {
  Atomics.store(i32, idx(V_STATE), state);
  if (state !== VcpuState.Running && state !== VcpuState.Idle) {
    Atomics.add(i32, 0 + W_PARK_SEQ, 1);
    Atomics.notify(i32, W_PARK_SEQ);
  }
}

function crash(reason: 'trap' | 'panic' | 'fault' | 'abi' | 'internal', message: string): void {
  flushConsole();
  Atomics.store(i32, idx(V_IN_STEP), 0);
  post({ kind: 'crash', vcpu, reason, message });
  setState(VcpuState.Crashed);
}

function classify(err: unknown): { reason: 'trap' | 'panic' | 'fault' | 'internal'; message: string } {
  if (err instanceof GuestFault) return { reason: err.reason, message: err.message };
  if (err instanceof WebAssembly.RuntimeError) return { reason: 'trap', message: err.message };
  if (err instanceof RangeError && /call stack/i.test(err.message)) return { reason: 'trap', message: `stack overflow: ${err.message}` };
  return { reason: 'internal', message: err instanceof Error ? `${err.name}: ${err.message}` : String(err) };
}

let installEpochDone = 0;
/**
 * stop-all trace installation: this vCPU re-arms its contiguous share of the install list while
 * every vCPU is parked, once per install epoch, then reports done.
 */
function installShare(): void {
  const epoch = Atomics.load(i32, W_INSTALL_EPOCH);
  if (epoch === installEpochDone) return;
  installEpochDone = epoch;
  const count = Atomics.load(i32, W_INSTALL_COUNT);
  const total = count < 0 ? bitmap.regionCount : count;
  const from = Math.floor((vcpu * total) / data.vcpus);
  const to = Math.floor(((vcpu + 1) * total) / data.vcpus);
  const bytes = bitmap.bytes;
  if (count < 0) bytes.fill(1, from, to);
  else for (let i = from; i < to; i++) bytes[control.installList[i] ?? 0] = 1;
  Atomics.store(i32, idx(V_INSTALL_EPOCH_DONE), epoch);
  Atomics.add(i32, W_INSTALL_DONE, 1);
  Atomics.notify(i32, W_INSTALL_DONE);
}

/** The throttle sleep. */
function sleep(ms: number): void {
  // Wakes early when the VM changes the request (pause/stop), so sleeping never delays a pause;
  // nothing else ends it (a block completion wakes idle sleeps only: see idleSleep).
  const seq = control.requestSeq();
  if (control.request() !== RunRequest.Run) return;
  control.waitRequestChange(seq, ms);
}

/**
 * The IDLE sleep: one tick at most, ended early by a request change (pause/stop) and by a block
 * completion (BlockService calls Control.wakeIdle), so a guest waiting for I/O runs again as soon
 * as the I/O is done instead of at the next tick. `seq` was read before the step: anything that
 * happened since — a completion the guest had not seen yet when it decided it was idle — makes the
 * sleep return at once (at worst one extra step that finds nothing new). A throttle sleep waits on
 * the request sequence instead, which completions never touch: I/O cannot cut auto-converge short.
 */
function idleSleep(seq: number): void {
  if (control.request() !== RunRequest.Run) return;
  control.idleSleep(seq, IDLE_TICK_MS);
}

function run(): void {
  let instance: WebAssembly.Instance;
  try {
    instance = new WebAssembly.Instance(data.module, imports);
  } catch (err) {
    crash('internal', `cannot instantiate the guest: ${classify(err).message}`);
    return;
  }
  const exports = instance.exports;
  const step = exports['ferry_vcpu_step'] as (vcpu: number, budget: number) => number;

  // Instantiated: report Ready, then wait for the VM to say go (a migration target spawns its vCPUs
  // early so that resuming is only this wake-up).
  Atomics.store(i32, idx(V_STATE), VcpuState.Ready);
  Atomics.notify(i32, idx(V_STATE));
  while (Atomics.load(i32, W_GO) === 0) {
    if (control.request() === RunRequest.Stop) return;
    Atomics.wait(i32, W_GO, 0, 50);
  }
  if (control.request() === RunRequest.Stop) return;

  // Boot or restore.
  const restoring = Atomics.load(i32, W_RESTORE) === 1;
  try {
    if (restoring) {
      data.globals.forEach((g, i) => {
        const slot = control.globalSlot(vcpu, i);
        (exports[g.exportName] as WebAssembly.Global).value = g.type === 'i64' ? control.globalsI64[slot] : control.globalsF64[slot];
      });
    } else if (vcpu === 0) {
      (exports['__ferry_init'] as () => void)();
      (exports['ferry_boot'] as (vcpus: number) => void)(data.vcpus);
      Atomics.store(i32, W_BOOTED, 1);
      Atomics.notify(i32, W_BOOTED);
    } else {
      while (Atomics.load(i32, W_BOOTED) === 0 && control.request() !== RunRequest.Stop) Atomics.wait(i32, W_BOOTED, 0, 50);
    }
  } catch (err) {
    const c = classify(err);
    crash(c.reason, `during boot: ${c.message}`);
    return;
  }
  flushConsole();

  let budget = Math.max(MIN_BUDGET, Atomics.load(i32, idx(V_BUDGET)));
  const baseTargetMs = data.stepTargetUs / 1000;
  let targetMs = baseTargetMs;
  let halted = restoring && Atomics.load(i32, idx(V_RESTORE_HALTED)) === 1;
  setState(halted ? VcpuState.Halted : VcpuState.Running);

  for (;;) {
    const req = control.request();
    if (req === RunRequest.Stop) break;
    // Install is a kind of pause: a vCPU that saw Run a moment ago may meet Install here (the VM
    // counted it as parked before it left the park loop) and must park and do its share.
    if (req === RunRequest.Pause || req === RunRequest.Install || halted) {
      // Safepoint: publish state, then park until the request changes.
      flushConsole();
      publishGlobals(exports);
      setState(halted ? VcpuState.Halted : VcpuState.Parked);
      for (;;) {
        // Sequence first, request second: a change after the read bumps the sequence, so the
        // wait below returns at once (see W_REQUEST_SEQ for the ABA this avoids).
        const seq = control.requestSeq();
        const r = control.request();
        if (r === RunRequest.Stop || (r === RunRequest.Run && !halted)) break;
        if (r === RunRequest.Install) installShare();
        control.waitRequestChange(seq);
      }
      if (control.request() === RunRequest.Stop) break;
      setState(VcpuState.Running);
      continue;
    }

    // Start time first, then the flag: the watchdog reads the flag (seq-cst) and then the time, so
    // it never pairs "in a step" with a stale time — on the first step that time was 0, and a
    // preemption between the two stores once made a healthy VM look hung for 56 years.
    const wakeSeq = control.idleWakeSeq();
    const t0 = performance.now();
    control.f64[st(S_STEP_START_MS)] = performance.timeOrigin + t0;
    Atomics.store(i32, idx(V_IN_STEP), 1);
    let status: number;
    try {
      status = step(vcpu, budget);
    } catch (err) {
      block.postAccepted(); // counted in flight: they must reach the service, or a drain would wait for them
      const c = classify(err);
      crash(c.reason, c.message);
      return;
    }
    // The step's block requests, in one message (before the ack: a pause that sees the step
    // finished finds them counted and on their way).
    block.postAccepted();
    const stepMs = performance.now() - t0;
    Atomics.add(i32, idx(V_ACK), 1);
    Atomics.store(i32, idx(V_IN_STEP), 0);
    if (Atomics.load(i32, W_BARRIER_WAITERS) > 0) {
      Atomics.add(i32, W_STEP_SEQ, 1);
      Atomics.notify(i32, W_STEP_SEQ);
    }

    const f = control.f64;
    f[st(S_STEPS)] = (f[st(S_STEPS)] ?? 0) + 1;
    f[st(S_STEP_MS)] = (f[st(S_STEP_MS)] ?? 0) + stepMs;
    if (stepMs > (f[st(S_MAX_STEP_MS)] ?? 0)) f[st(S_MAX_STEP_MS)] = stepMs;

    const throttle = Atomics.load(i32, idx(V_THROTTLE_PERMILLE));
    // Under throttle, shorten steps so that no single sleep exceeds MAX_THROTTLE_SLEEP_MS.
    targetMs = throttle > 0 ? Math.max(MIN_THROTTLED_STEP_MS, Math.min(baseTargetMs, MAX_THROTTLE_SLEEP_MS * (1000 - throttle) / throttle)) : baseTargetMs;
    if (status === STEP_STATUS_RUN) {
      f[st(S_UNITS)] = (f[st(S_UNITS)] ?? 0) + budget;
      // Adapt the budget so a step lasts about the target: that is what bounds pause latency.
      if (stepMs < targetMs / 2) budget = Math.min(MAX_BUDGET, Math.ceil(budget * 1.5));
      else if (stepMs > targetMs * 1.5) budget = Math.max(MIN_BUDGET, Math.floor(budget * targetMs / stepMs));
      Atomics.store(i32, idx(V_BUDGET), budget);
    } else if (status === STEP_STATUS_IDLE) {
      setState(VcpuState.Idle);
      idleSleep(wakeSeq);
      setState(VcpuState.Running);
    } else if (status === STEP_STATUS_HALT) {
      halted = true;
      continue;
    } else {
      crash('abi', `ferry_vcpu_step returned ${status}; the ABI allows 0 (run), 1 (idle) or 2 (halt)`);
      return;
    }

    if (throttle > 0) {
      // Park for a share of wall time: throttle/1000 of (step + sleep). A step longer than the
      // throttled target (the budget is still adapting) does not earn a longer sleep: the guest
      // must never stall for long at once.
      const sleepMs = Math.min(MAX_THROTTLE_SLEEP_MS, stepMs * throttle / (1000 - throttle));
      const s0 = performance.now();
      sleep(sleepMs);
      f[st(S_THROTTLED_MS)] = (f[st(S_THROTTLED_MS)] ?? 0) + (performance.now() - s0);
    }
  }
  flushConsole();
  publishGlobals(exports);
  setState(VcpuState.Exited);
}

run();
post({ kind: 'exit', vcpu });
