/**
 * The shared control block between a VM (main thread) and its vCPU worker threads: a small
 * SharedArrayBuffer of Int32 words plus Float64 statistics and a per-vCPU globals area. All
 * cross-thread transitions go through seq-cst Atomics on these words (never through messages),
 * so pausing and trace epochs do not depend on either event loop.
 */
/** Requested run state, written by the VM, read by every vCPU between steps. */
export const enum RunRequest { Run = 0, Pause = 1, Stop = 2, Install = 3 }

/**
 * vCPU state machine (written only by the vCPU's own worker, except Starting):
 *   Starting --instantiated--> Ready --go--> Running --pause--> Parked --resume--> Running
 *   Running --IDLE--> Idle --tick/resume--> Running
 *   Running --HALT--> Halted (counts as parked; leaves only on stop)
 *   any --trap/panic--> Crashed;  any --stop--> Exited
 */
export const enum VcpuState { Starting = 0, Running = 1, Parked = 2, Idle = 3, Halted = 4, Crashed = 5, Exited = 6, Ready = 7 }

// Global words.
export const W_REQUEST = 0;
/** Incremented (and notified) by a vCPU each time it parks, halts, crashes or exits. */
export const W_PARK_SEQ = 1;
/** Collector fence: an Atomics.add here is the full barrier after re-arming traces. */
export const W_FENCE = 2;
/** Set to 1 by vCPU 0 after the first boot (data segments + ferry_boot); others wait for it. */
export const W_BOOTED = 3;
/** 0 until the VM says go: spawned vCPUs instantiate the guest, report Ready, then wait here. */
export const W_GO = 4;
/** 1 when the vCPUs start from a restore (globals and halted flags in the control block). */
export const W_RESTORE = 5;
/** Number of trace-epoch barriers waiting: while > 0, vCPUs bump W_STEP_SEQ and notify after each step. */
export const W_BARRIER_WAITERS = 6;
/** Incremented (and notified) after a step while a barrier waits, so it sleeps instead of polling. */
export const W_STEP_SEQ = 7;
/**
 * "stop-all" trace installation (docs/dirty-tracking.md): with every vCPU parked, the VM bumps
 * W_INSTALL_EPOCH and requests Install; each vCPU re-arms its share of the install list
 * (W_INSTALL_COUNT entries, or every region when it is -1), then increments W_INSTALL_DONE.
 */
export const W_INSTALL_EPOCH = 8;
export const W_INSTALL_COUNT = 9;
export const W_INSTALL_DONE = 10;
/**
 * Incremented (and notified) on every request change. vCPUs sleep on this word, never on
 * W_REQUEST itself: a request can go Install -> Pause -> Run -> Pause -> Install while a preempted
 * vCPU is between reading it and waiting, and a wait on the request value would then sleep through
 * the new Install (ABA). The sequence number never repeats (in practice: 2^32 changes).
 */
export const W_REQUEST_SEQ = 11;
/**
 * Idle wake-up: an IDLE vCPU sleeps on this sequence (its tick as the timeout), and nothing else
 * does, so bumping it ends idle sleeps only — never a throttle sleep or a park. Bumped by every
 * request change (so an idle sleep never delays a pause) and by a device after it publishes a
 * completion the guest may be waiting for (`wakeIdle`).
 */
export const W_IDLE_WAKE_SEQ = 12;
/** vCPUs inside an idle sleep: `wakeIdle` pays for a notify only while this is above 0. */
export const W_IDLE_SLEEPERS = 13;
const GLOBAL_WORDS = 16;

// Per-vCPU words.
export const V_STATE = 0;
/** 1 while the vCPU is inside ferry_vcpu_step. */
export const V_IN_STEP = 1;
/** Steps completed (seq-cst increment after each step: the vCPU's trace-epoch acknowledgement). */
export const V_ACK = 2;
export const V_BUDGET = 3;
/** Throttle: share of time the vCPU spends parked, in permille (0 = none, 990 = max). */
export const V_THROTTLE_PERMILLE = 4;
export const V_GLOBAL_COUNT = 5;
/** Restore only: 1 if this vCPU had halted when its state was captured. */
export const V_RESTORE_HALTED = 6;
/** The last stop-all install epoch this vCPU completed its share of. */
export const V_INSTALL_EPOCH_DONE = 7;
const VCPU_WORDS = 16;

// Per-vCPU Float64 statistics.
export const S_STEP_START_MS = 0; // epoch ms (performance.timeOrigin + now) of the current step
export const S_UNITS = 1;         // guest work units completed
export const S_STEPS = 2;         // steps completed
export const S_STEP_MS = 3;       // total time inside steps
export const S_THROTTLED_MS = 4;  // total time parked by the throttle
export const S_MAX_STEP_MS = 5;   // longest step seen
const VCPU_STATS = 8;

/** Longest single throttle sleep: under heavy throttle steps get shorter instead of sleeps longer. */
export const MAX_THROTTLE_SLEEP_MS = 5;

export interface ControlBuffers {
  readonly words: SharedArrayBuffer;
  /** Regions to re-arm in a stop-all installation (Uint32, one per region at most). */
  readonly installList: SharedArrayBuffer;
  /** Per vCPU: [last clock_ns value read, first clock_ns value read in this VM instance]. */
  readonly clockReads: SharedArrayBuffer;
  readonly stats: SharedArrayBuffer;
  readonly globals: SharedArrayBuffer;
  readonly clock: SharedArrayBuffer;
}

export class Control {
  readonly i32: Int32Array;
  readonly f64: Float64Array;
  /** Per-vCPU globals area, MAX... slots of 8 bytes, viewed both as f64 (i32/f32/f64) and i64. */
  readonly globalsF64: Float64Array;
  readonly globalsI64: BigInt64Array;
  /** [0] = hrtime (ns) at which the guest clock reads 0. */
  readonly clockBase: BigInt64Array;
  readonly clockReads: BigInt64Array;
  readonly installList: Uint32Array;

  constructor(readonly buffers: ControlBuffers, readonly vcpus: number, readonly maxGlobals: number) {
    this.i32 = new Int32Array(buffers.words);
    this.f64 = new Float64Array(buffers.stats);
    this.globalsF64 = new Float64Array(buffers.globals);
    this.globalsI64 = new BigInt64Array(buffers.globals);
    this.clockBase = new BigInt64Array(buffers.clock);
    this.clockReads = new BigInt64Array(buffers.clockReads);
    this.installList = new Uint32Array(buffers.installList);
  }

  static create(vcpus: number, maxGlobals: number, regionCount: number): Control {
    const buffers: ControlBuffers = {
      installList: new SharedArrayBuffer(Math.max(1, regionCount) * 4),
      words: new SharedArrayBuffer((GLOBAL_WORDS + vcpus * VCPU_WORDS) * 4),
      clockReads: new SharedArrayBuffer(vcpus * 2 * 8),
      stats: new SharedArrayBuffer(vcpus * VCPU_STATS * 8),
      globals: new SharedArrayBuffer(Math.max(1, vcpus * maxGlobals) * 8),
      clock: new SharedArrayBuffer(8),
    };
    return new Control(buffers, vcpus, maxGlobals);
  }

  word(vcpu: number, field: number): number { return GLOBAL_WORDS + vcpu * VCPU_WORDS + field; }
  stat(vcpu: number, field: number): number { return vcpu * VCPU_STATS + field; }
  globalSlot(vcpu: number, index: number): number { return vcpu * this.maxGlobals + index; }

  load(vcpu: number, field: number): number { return Atomics.load(this.i32, this.word(vcpu, field)); }
  store(vcpu: number, field: number, value: number): void { Atomics.store(this.i32, this.word(vcpu, field), value); }

  request(): RunRequest { return Atomics.load(this.i32, W_REQUEST); }
  /** Read before request(), then passed to waitRequestChange(): no change in between is missed. */
  requestSeq(): number { return Atomics.load(this.i32, W_REQUEST_SEQ); }
  setRequest(req: RunRequest): void {
    Atomics.store(this.i32, W_REQUEST, req);
    Atomics.add(this.i32, W_REQUEST_SEQ, 1);
    Atomics.notify(this.i32, W_REQUEST_SEQ);
    Atomics.add(this.i32, W_IDLE_WAKE_SEQ, 1);
    Atomics.notify(this.i32, W_IDLE_WAKE_SEQ);
  }

  /** Read by a vCPU *before* its step, then passed to idleSleep(): a wake during the step is not missed. */
  idleWakeSeq(): number { return Atomics.load(this.i32, W_IDLE_WAKE_SEQ); }

  /**
   * Ends every idle sleep now, and makes a vCPU about to sleep not sleep (any thread). The bump is
   * unconditional (one atomic add); the notify only happens when some vCPU is asleep. Pairs with
   * idleSleep: the sleeper increments W_IDLE_SLEEPERS and then waits on the sequence it read before
   * its step, this bumps the sequence and then reads the sleepers (all seq-cst) — so either this
   * sees the sleeper and notifies, or the sleeper's wait sees the new sequence and returns at once.
   */
  wakeIdle(): void {
    Atomics.add(this.i32, W_IDLE_WAKE_SEQ, 1);
    if (Atomics.load(this.i32, W_IDLE_SLEEPERS) > 0) Atomics.notify(this.i32, W_IDLE_WAKE_SEQ);
  }

  /**
   * Blocks (worker threads only) for up to `timeoutMs`, or until wakeIdle() or a request change
   * after `seq` was read (idleWakeSeq(), before the step that returned IDLE).
   */
  idleSleep(seq: number, timeoutMs: number): void {
    Atomics.add(this.i32, W_IDLE_SLEEPERS, 1);
    try {
      Atomics.wait(this.i32, W_IDLE_WAKE_SEQ, seq, timeoutMs);
    } finally {
      Atomics.sub(this.i32, W_IDLE_SLEEPERS, 1);
    }
  }
  /** Blocks (worker threads only) until the request changes after `seq` was read, or `timeoutMs`. */
  waitRequestChange(seq: number, timeoutMs = Infinity): void {
    Atomics.wait(this.i32, W_REQUEST_SEQ, seq, timeoutMs);
  }

  /** The clock_ns value vCPU `vcpu` read last / first (0n: never). */
  lastClockRead(vcpu: number): bigint { return Atomics.load(this.clockReads, vcpu * 2); }
  firstClockRead(vcpu: number): bigint { return Atomics.load(this.clockReads, vcpu * 2 + 1); }

  /** Guest monotonic clock, ns. */
  guestClockNs(): bigint { return process.hrtime.bigint() - Atomics.load(this.clockBase, 0); }
  setGuestClockNs(ns: bigint): void { Atomics.store(this.clockBase, 0, process.hrtime.bigint() - ns); }
}

/** True for the states in which a vCPU runs no guest code (and has acknowledged every epoch). */
export function isQuiescent(state: number): boolean {
  return state === VcpuState.Parked || state === VcpuState.Halted || state === VcpuState.Crashed || state === VcpuState.Exited;
}
