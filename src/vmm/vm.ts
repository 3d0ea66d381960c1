/**
 * A VM on one host: an instrumented guest image, one shared memory (RAM + reserved regions) and N
 * vCPU worker threads. The VM object owns the lifecycle:
 *
 *   created --start--> running --pause--> paused --resume--> running
 *   running --all vCPUs halt--> halted
 *   running/paused --trap, panic, hang--> crashed        any --stop--> stopped
 *
 * It exposes what the migration engine needs: pause with a bounded, measured latency; per-vCPU
 * state capture; a throttle; the dirty tracker; direct RAM access for copying; save/restore.
 */
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { FerryError, errorMessage } from '../lib/errors.js';

import { MiB, formatBytes } from '../lib/units.js';
import {
  Control, RunRequest, VcpuState, isQuiescent,
  V_INSTALL_EPOCH_DONE, S_MAX_STEP_MS, S_STEPS, S_STEP_MS, S_STEP_START_MS, S_THROTTLED_MS, S_UNITS, V_ACK, V_BUDGET, V_IN_STEP, V_RESTORE_HALTED,
  V_STATE, V_THROTTLE_PERMILLE, W_BARRIER_WAITERS, W_FENCE, W_GO, W_INSTALL_COUNT, W_INSTALL_DONE, W_INSTALL_EPOCH, W_PARK_SEQ,
  W_RESTORE, W_STEP_SEQ,
} from './control.js';
import { instrumentImage, type FaultInjection, type InstrumentedImage } from './instrument.js';
import { CONTROL_CLAIMED_PAGES_OFFSET, granularityShift, regionCount, validateGranularity } from './layout.js';
import { MAX_GLOBALS_PER_VCPU, MAX_THROTTLE_PERMILLE, MIN_GRANULARITY_BYTES } from '../lib/limits.js';
import { normalizeConfig, type VmConfig, type VmConfigInput } from './config.js';
import { TraceBitmap } from './trace-bitmap.js';
import { DirtyTracker } from './traces.js';
import {
  INITIAL_BUDGET, type CrashReason, type VcpuWorkerData, type VcpuWorkerMessage,
} from './vcpu/protocol.js';
import type { GlobalValue, VcpuSnapshotState } from './vcpu/state.js';

/** How often the watchdog looks for a step that overran the hang timeout. */
export const WATCHDOG_INTERVAL_MS = 50;
/** The first part of a pause/barrier wait spins on Atomics.wait (accurate, sub-ms); then it yields. */
const SYNC_WAIT_WINDOW_MS = 5;
/** Time given to workers to leave their loop on stop before they are terminated. */
const STOP_GRACE_MS = 1000;
/** Spawning a thread and instantiating the guest takes milliseconds; allow for a loaded machine. */
const VCPU_START_TIMEOUT_MS = 10_000;
/**
 * ferry_boot may legitimately touch all of RAM (the dirtier's fill=1 does), and first-touch page
 * faults have been measured as slow as 65 MB/s on a loaded machine of this kind; the boot deadline
 * therefore grows with RAM at a rate 4x below that, so only a boot that is truly stuck times out.
 */
const BOOT_MIN_BYTES_PER_SEC = 16 * MiB;
/** How long to wait for a crashed vCPU's report message after seeing its Crashed state. */
const CRASH_REPORT_WAIT_MS = 1000;

export type VmState = 'created' | 'running' | 'paused' | 'halted' | 'crashed' | 'stopped';

export interface CrashInfo {
  readonly reason: CrashReason;
  readonly vcpu: number;
  readonly message: string;
}

export interface PauseResult {
  /** From the pause request until every vCPU was parked. */
  readonly latencyMs: number;
}

export interface VcpuStats {
  readonly vcpu: number;
  readonly state: VcpuState;
  readonly steps: number;
  readonly units: number;
  readonly stepMs: number;
  readonly maxStepMs: number;
  readonly throttledMs: number;
  readonly budget: number;
}

/** What a restore brings: memory is written by the caller (restoreMemory) before start. */
export interface RestoreState {
  readonly claimedPages: number;
  readonly clockNs: bigint;
  /**
   * Wall-clock time (ms since the epoch) at which `clockNs` was read. When set, the time since then
   * is added at start (a live migration: the guest observes its downtime); when absent the clock
   * continues from `clockNs` (a snapshot: the time spent saved is not counted).
   */
  readonly clockWallMs?: number;
  readonly vcpus: readonly VcpuSnapshotState[];
}

export interface VmEvents {
  console: [text: string, vcpu: number];
  state: [state: VmState];
  crash: [info: CrashInfo];
}

export class Vm extends EventEmitter<VmEvents> {
  readonly config: VmConfig;
  readonly image: InstrumentedImage;
  /** The original, uninstrumented image bytes (saved in snapshots, sent on migration). */
  readonly imageBytes: Uint8Array;
  readonly memory: WebAssembly.Memory;
  /** Guest RAM, [0, ramBytes). */
  readonly ram: Uint8Array;
  private trackerImpl: DirtyTracker;
  private readonly control: Control;
  private readonly bitmap: TraceBitmap;
  private readonly claimedPagesWord: Int32Array;
  private readonly workers: Worker[] = [];
  private readonly exited = new Set<number>();
  private restore: RestoreState | null = null;
  private vmState: VmState = 'created';
  private crashInfo: CrashInfo | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  private exitWaiters: (() => void)[] = [];

  private constructor(imageBytes: Uint8Array, config: VmConfig, image: InstrumentedImage, restore: RestoreState | null) {
    super();
    this.config = config;
    this.imageBytes = imageBytes;
    this.image = image;
    const layout = image.layout;
    this.memory = new WebAssembly.Memory({ initial: layout.totalPages, maximum: layout.totalPages, shared: true });
    this.ram = new Uint8Array(this.memory.buffer, 0, layout.ramBytes);
    this.bitmap = new TraceBitmap(this.memory.buffer, layout);
    this.bitmap.setShift(granularityShift(config.granularityBytes));
    this.claimedPagesWord = new Int32Array(this.memory.buffer, layout.controlOffset + CONTROL_CLAIMED_PAGES_OFFSET, 1);
    this.control = Control.create(config.vcpus, Math.max(1, image.globals.length), regionCount(layout.ramBytes, MIN_GRANULARITY_BYTES));
    this.trackerImpl = this.newTracker();
    Atomics.store(this.claimedPagesWord, 0, image.initialPages);
    this.control.setGuestClockNs(0n);
    if (restore !== null) this.setRestoreState(restore);
  }

  /**
   * Makes the VM continue from captured state instead of booting: claimed size, clock, and each
   * vCPU's globals and halted flag (RAM is written separately). Only before start.
   */
  setRestoreState(restore: RestoreState): void {
    this.requireState('set restore state', ['created']);
    const layout = this.image.layout;
    if (restore.vcpus.length !== this.config.vcpus) throw new FerryError('VM_CONFIG_INVALID', `restore state has ${restore.vcpus.length} vCPUs, the VM ${this.config.vcpus}`);
    if (restore.claimedPages > layout.ramPages || restore.claimedPages < this.image.initialPages) {
      throw new FerryError('VM_CONFIG_INVALID', `restored claimed memory (${restore.claimedPages} pages) does not fit the guest's range ${this.image.initialPages}..${layout.ramPages}`);
    }
    const c = this.control;
    restore.vcpus.forEach((state, v) => {
      if (state.globals.length !== this.image.globals.length) {
        throw new FerryError('VM_CONFIG_INVALID', `vCPU ${v} state has ${state.globals.length} globals; the guest has ${this.image.globals.length}`);
      }
      state.globals.forEach((g, i) => {
        const want = this.image.globals[i]?.type;
        if (g.type !== want) throw new FerryError('VM_CONFIG_INVALID', `vCPU ${v} global ${i} is ${g.type} in the restore state but ${want ?? 'absent'} in the guest`);
        const slot = c.globalSlot(v, i);
        if (g.type === 'i64') c.globalsI64[slot] = g.value;
        else c.globalsF64[slot] = g.value;
      });
      c.store(v, V_RESTORE_HALTED, state.halted ? 1 : 0);
    });
    Atomics.store(this.claimedPagesWord, 0, restore.claimedPages);
    this.control.setGuestClockNs(restore.clockNs);
    Atomics.store(c.i32, W_RESTORE, 1);
    this.restore = restore;
  }

  /** The dirty tracker for the current trace granularity (a new one after setTraceGranularity). */
  get tracker(): DirtyTracker { return this.trackerImpl; }
  /** The current trace granularity (the configured one until a migration picks another). */
  get granularityBytes(): number { return this.bitmap.granularityBytes; }

  private newTracker(): DirtyTracker {
    return new DirtyTracker(this.bitmap, this.bitmap.granularityBytes, {
      barrier: () => this.traceBarrier(),
      installStopped: (regions) => this.installWithAllStopped(regions),
    });
  }

  /**
   * Changes the trace granularity while the guest runs: every trace is disarmed, the shift word is
   * changed, and an epoch barrier makes sure no vCPU still computes regions with the old shift (a
   * store that does is harmless: the bitmap is all zero). Returns the new tracker (same strategy).
   */
  async setTraceGranularity(granularityBytes: number): Promise<DirtyTracker> {
    validateGranularity(granularityBytes);
    if (granularityBytes === this.granularityBytes) return this.trackerImpl;
    const strategy = this.trackerImpl.strategy;
    this.bitmap.bytes.fill(0);
    this.bitmap.setShift(granularityShift(granularityBytes));
    if (this.vmState === 'running') await this.traceBarrier();
    this.trackerImpl = this.newTracker();
    this.trackerImpl.strategy = strategy;
    return this.trackerImpl;
  }

  /** The clock value each vCPU read last (0n: never): a migration source sends them at stun. */
  lastClockReads(): bigint[] {
    return Array.from({ length: this.config.vcpus }, (_, v) => this.control.lastClockRead(v));
  }

  /** The first clock value each vCPU read in this VM instance (0n: not yet). */
  firstClockReads(): bigint[] {
    return Array.from({ length: this.config.vcpus }, (_, v) => this.control.firstClockRead(v));
  }

  /** Validates and instruments the image and allocates the VM's memory. Does not start vCPUs. */
  static create(imageBytes: Uint8Array, input: VmConfigInput, restore: RestoreState | null = null, faultInjection?: FaultInjection): Vm {
    const config = normalizeConfig(input);
    const image = instrumentImage(imageBytes, {
      ramBytes: config.memoryBytes, granularityBytes: config.granularityBytes, ...(faultInjection ? { faultInjection } : {}),
    });
    if (image.globals.length > MAX_GLOBALS_PER_VCPU) {
      throw new FerryError('IMAGE_UNSUPPORTED_FEATURE', `guest has ${image.globals.length} mutable globals; at most ${MAX_GLOBALS_PER_VCPU} can be saved per vCPU`);
    }
    return new Vm(imageBytes, config, image, restore);
  }

  get state(): VmState { return this.vmState; }
  get crash(): CrashInfo | null { return this.crashInfo; }
  get claimedPages(): number { return Atomics.load(this.claimedPagesWord, 0); }
  get guestClockNs(): bigint { return this.control.guestClockNs(); }

  /**
   * Creates the vCPU threads and instantiates the guest in each, without running it. A migration
   * target does this at prepare time so that resuming the VM later is only a wake-up.
   */
  async spawn(): Promise<void> {
    this.requireState('spawn vCPUs', ['created']);
    if (this.workers.length > 0) return;
    const c = this.control;
    c.setRequest(RunRequest.Run);
    for (let v = 0; v < this.config.vcpus; v++) {
      c.store(v, V_BUDGET, INITIAL_BUDGET);
      c.store(v, V_STATE, VcpuState.Starting);
      const data: VcpuWorkerData = {
        module: this.image.module, memory: this.memory, control: c.buffers, vcpus: this.config.vcpus, vcpu: v,
        maxGlobals: c.maxGlobals, ramBytes: this.image.layout.ramBytes, layout: this.image.layout, cmdline: this.config.cmdline,
        globals: this.image.globals, stepTargetUs: this.config.stepTargetUs,
      };
      const worker = new Worker(new URL('./vcpu/worker.js', import.meta.url), { workerData: data });
      worker.on('message', (msg: VcpuWorkerMessage) => { this.onWorkerMessage(msg); });
      worker.on('error', (err) => { this.onCrash({ reason: 'internal', vcpu: v, message: `vCPU thread failed: ${errorMessage(err)}` }); });
      worker.on('exit', () => { this.onWorkerExit(v); });
      this.workers.push(worker);
    }
    await this.waitForVcpus((s) => s !== VcpuState.Starting, 'instantiate the guest');
  }

  /** Starts every vCPU; resolves once all have booted (or restored) and run, or rejects on a boot crash. */
  async start(): Promise<void> {
    this.requireState('start', ['created']);
    await this.spawn();
    if (this.restore?.clockWallMs !== undefined) {
      const elapsedNs = BigInt(Math.max(0, Math.round((Date.now() - this.restore.clockWallMs) * 1e6)));
      this.control.setGuestClockNs(this.restore.clockNs + elapsedNs);
    }
    Atomics.store(this.control.i32, W_GO, 1);
    Atomics.notify(this.control.i32, W_GO);
    this.setState('running');
    this.watchdog = setInterval(() => { this.checkHung(); }, WATCHDOG_INTERVAL_MS);
    this.watchdog.unref();
    const bootAllowanceMs = this.restore === null ? (this.config.memoryBytes / BOOT_MIN_BYTES_PER_SEC) * 1000 : 0;
    await this.waitForVcpus((s) => s !== VcpuState.Starting && s !== VcpuState.Ready, 'boot', bootAllowanceMs);
  }

  private async waitForVcpus(done: (s: VcpuState) => boolean, what: string, extraMs = 0): Promise<void> {
    const deadline = performance.now() + Math.max(this.config.hangTimeoutMs, VCPU_START_TIMEOUT_MS) + extraMs;
    const ok = await this.waitUntil(() => this.vcpuStates().every(done) || this.crashInfo !== null, W_PARK_SEQ, deadline);
    if (!ok && this.crashInfo === null) {
      this.onCrash({ reason: 'hung', vcpu: this.vcpuStates().findIndex((s) => !done(s)), message: `vCPU did not ${what} in time` });
    }
    await this.awaitCrashReport();
    if (this.crashInfo !== null) {
      throw new FerryError('VM_CRASHED', `VM ${this.config.name} crashed while starting: ${this.crashInfo.message}`, { crash: this.crashInfo });
    }
  }

  /**
   * Parks every vCPU at its next safepoint. Bounded by the step target in the normal case and by
   * the hang timeout in the worst: a vCPU that does not park in time crashes the VM (reason hung).
   */
  async pause(timeoutMs: number = this.config.hangTimeoutMs): Promise<PauseResult> {
    if (this.vmState === 'halted' || this.vmState === 'paused') return { latencyMs: 0 };
    this.requireState('pause', ['running']);
    const t0 = performance.now();
    this.control.setRequest(RunRequest.Pause);
    const ok = await this.waitUntil(() => this.allQuiescent(), W_PARK_SEQ, t0 + timeoutMs);
    const latencyMs = performance.now() - t0;
    await this.awaitCrashReport();
    if (this.crashInfo !== null) throw new FerryError('VM_CRASHED', `VM crashed while pausing: ${this.crashInfo.message}`, { crash: this.crashInfo });
    if (!ok) {
      const stuck = this.vcpuStates().map((s, i) => (isQuiescent(s) ? -1 : i)).filter((i) => i >= 0);
      this.onCrash({ reason: 'hung', vcpu: stuck[0] ?? 0, message: `vCPU(s) ${stuck.join(', ')} did not reach a safepoint within ${timeoutMs} ms` });
      throw new FerryError('VCPU_HUNG', `VM ${this.config.name}: vCPU(s) ${stuck.join(', ')} did not pause within ${timeoutMs} ms; the VM is marked crashed (hung)`, { vcpus: stuck });
    }
    this.setState('paused');
    return { latencyMs };
  }

  resume(): void {
    this.requireState('resume', ['paused']);
    this.control.setRequest(RunRequest.Run);
    this.setState('running');
  }

  /** Stops every vCPU and releases the threads. Safe to call in any state, more than once. */
  async stop(): Promise<void> {
    if (this.watchdog !== null) { clearInterval(this.watchdog); this.watchdog = null; }
    if (this.workers.length === 0 || this.exited.size === this.workers.length) {
      if (this.vmState !== 'crashed') this.setState('stopped');
      return;
    }
    this.control.setRequest(RunRequest.Stop);
    const allExited = new Promise<void>((resolve) => { this.exitWaiters.push(resolve); });
    const timer = setTimeout(() => { for (const w of this.workers) void w.terminate(); }, STOP_GRACE_MS);
    await allExited;
    clearTimeout(timer);
    if (this.vmState !== 'crashed') this.setState('stopped');
  }

  /** Throttle: every vCPU spends `permille`/1000 of its time parked (0 = off). */
  setThrottle(permille: number): void {
    if (!Number.isInteger(permille) || permille < 0 || permille > MAX_THROTTLE_PERMILLE) {
      throw new FerryError('INVALID_ARGUMENT', `throttle must be an integer from 0 to ${MAX_THROTTLE_PERMILLE} permille, got ${permille}`);
    }
    for (let v = 0; v < this.config.vcpus; v++) this.control.store(v, V_THROTTLE_PERMILLE, permille);
  }

  /** Per-vCPU state as published at the last safepoint; the VM must be paused, halted or stopped. */
  captureVcpuStates(): VcpuSnapshotState[] {
    this.requireState('capture vCPU state', ['paused', 'halted', 'stopped']);
    const c = this.control;
    const states: VcpuSnapshotState[] = [];
    for (let v = 0; v < this.config.vcpus; v++) {
      const globals: GlobalValue[] = this.image.globals.map((g, i) => {
        const slot = c.globalSlot(v, i);
        if (g.type === 'i64') return { type: 'i64', value: c.globalsI64[slot] ?? 0n };
        return { type: g.type, value: c.globalsF64[slot] ?? 0 };
      });
      states.push({ halted: c.load(v, V_STATE) === VcpuState.Halted, globals });
    }
    return states;
  }

  /** Writes into guest RAM from the host (a device or a restore) and fires the traces it covers. */
  hostWrite(offset: number, bytes: Uint8Array): void {
    if (!Number.isInteger(offset) || offset < 0 || offset + bytes.byteLength > this.ram.byteLength) {
      throw new FerryError('INVALID_ARGUMENT', `host write of ${bytes.byteLength} bytes at ${offset} is outside guest RAM (${formatBytes(this.ram.byteLength)})`);
    }
    this.ram.set(bytes, offset);
    this.bitmap.markRange(offset, bytes.byteLength);
  }

  /** Fires traces for a host write already done directly into `ram` (bulk restore). */
  markWritten(offset: number, length: number): void {
    this.bitmap.markRange(offset, length);
  }

  /** Runs the guest's own invariant check (ferry_selfcheck) on a quiescent VM; returns violations. */
  selfcheck(): number {
    if (!this.image.hasSelfcheck) throw new FerryError('IMAGE_MISSING_EXPORT', 'this guest does not export ferry_selfcheck');
    return this.callReadOnlyExport('ferry_selfcheck', 'run the guest self-check') as number;
  }

  /**
   * The guest's own record of the largest gap between two consecutive clock reads of one vCPU since
   * it booted (ferry_max_clock_gap_ns), on a quiescent VM; null when the guest does not keep one.
   */
  guestMaxClockGapNs(): bigint | null {
    if (!this.image.hasMaxClockGap) return null;
    return this.callReadOnlyExport('ferry_max_clock_gap_ns', 'read the guest\'s clock-gap record') as bigint;
  }

  /** Calls a read-only guest export from a fresh instance over the (quiescent) RAM. */
  private callReadOnlyExport(name: string, what: string): unknown {
    this.requireState(what, ['created', 'paused', 'halted', 'stopped', 'crashed']);
    const fail = (): never => { throw new WebAssembly.RuntimeError(`${name} must only read memory`); };
    const instance = new WebAssembly.Instance(this.image.module, {
      ferry_rt: { memory: this.memory, oob: fail },
      ferry: { console_write: () => undefined, clock_ns: () => this.control.guestClockNs(), cmdline: fail, panic: fail },
    });
    return (instance.exports[name] as () => unknown)();
  }

  vcpuStats(): VcpuStats[] {
    const c = this.control;
    const out: VcpuStats[] = [];
    for (let v = 0; v < this.config.vcpus; v++) {
      out.push({
        vcpu: v, state: c.load(v, V_STATE), steps: c.f64[c.stat(v, S_STEPS)] ?? 0,
        units: c.f64[c.stat(v, S_UNITS)] ?? 0, stepMs: c.f64[c.stat(v, S_STEP_MS)] ?? 0,
        maxStepMs: c.f64[c.stat(v, S_MAX_STEP_MS)] ?? 0, throttledMs: c.f64[c.stat(v, S_THROTTLED_MS)] ?? 0,
        budget: c.load(v, V_BUDGET),
      });
    }
    return out;
  }

  /**
   * Trace epoch barrier (docs/dirty-tracking.md). Called after re-arming traces: a seq-cst RMW on the
   * fence word orders the re-arm before everything below; then every vCPU that is inside a step
   * must finish that step (its ack is a seq-cst increment after the step's stores). A vCPU not in a
   * step starts its next step after this point and so sees the re-armed traces.
   */
  async traceBarrier(): Promise<void> {
    const c = this.control;
    Atomics.add(c.i32, W_FENCE, 1);
    const pending: { vcpu: number; ack: number }[] = [];
    for (let v = 0; v < this.config.vcpus; v++) {
      const ack = c.load(v, V_ACK);
      if (c.load(v, V_IN_STEP) === 1) pending.push({ vcpu: v, ack });
    }
    if (pending.length === 0) return;
    const done = (): boolean => pending.every(({ vcpu, ack }) => {
      const s = c.load(vcpu, V_STATE);
      return c.load(vcpu, V_ACK) !== ack || s === VcpuState.Crashed || s === VcpuState.Exited;
    });
    // vCPUs signal step ends while a barrier waits, so the wait sleeps on a word instead of polling
    // (polling would take CPU from the very vCPU it waits for).
    Atomics.add(c.i32, W_BARRIER_WAITERS, 1);
    let ok: boolean;
    try {
      ok = await this.waitUntil(done, W_STEP_SEQ, performance.now() + this.config.hangTimeoutMs);
    } finally {
      Atomics.sub(c.i32, W_BARRIER_WAITERS, 1);
    }
    if (this.crashInfo !== null) throw new FerryError('VM_CRASHED', `VM crashed during a trace epoch: ${this.crashInfo.message}`, { crash: this.crashInfo });
    if (!ok) throw new FerryError('VCPU_HUNG', `a vCPU did not finish its step within ${this.config.hangTimeoutMs} ms during a trace epoch`);
  }

  /**
   * A vCPU marks itself Crashed in the control block right after posting its crash report; the
   * report arrives through the event loop. Wait for it so callers see the reason, not just the state.
   */
  private async awaitCrashReport(): Promise<void> {
    const crashed = this.vcpuStates().indexOf(VcpuState.Crashed);
    if (crashed < 0 || this.crashInfo !== null) return;
    const deadline = performance.now() + CRASH_REPORT_WAIT_MS;
    while (this.crashInfo === null && performance.now() < deadline) await delay(1);
    if (this.crashInfo === null) this.onCrash({ reason: 'internal', vcpu: crashed, message: `vCPU ${crashed} crashed without a report` });
  }

  /**
   * "stop-all" installation: parks every vCPU, has each one re-arm its share of `regions` (null:
   * all regions), and resumes when the last finished. Returns the guest-visible stall. A VM that is
   * not running (paused, halted, created) is installed by the caller's thread directly.
   */
  async installWithAllStopped(regions: Uint32Array | null): Promise<{ stallMs: number }> {
    const c = this.control;
    if (this.vmState !== 'running') {
      if (regions === null) this.bitmap.bytes.fill(1, 0, this.bitmap.regionCount);
      else for (const r of regions) this.bitmap.bytes[r] = 1;
      return { stallMs: 0 };
    }
    const t0 = performance.now();
    await this.pause();
    const count = regions === null ? -1 : regions.length;
    if (regions !== null) c.installList.set(regions);
    Atomics.store(c.i32, W_INSTALL_COUNT, count);
    Atomics.store(c.i32, W_INSTALL_DONE, 0);
    Atomics.add(c.i32, W_INSTALL_EPOCH, 1);
    c.setRequest(RunRequest.Install);
    const ok = await this.waitUntil(() => Atomics.load(c.i32, W_INSTALL_DONE) >= this.config.vcpus || this.crashInfo !== null, W_INSTALL_DONE, performance.now() + this.config.hangTimeoutMs);
    c.setRequest(RunRequest.Pause);
    if (!ok || this.crashInfo !== null) throw new FerryError('VCPU_HUNG', `vCPUs did not finish installing traces in time (${Atomics.load(c.i32, W_INSTALL_DONE)} of ${this.config.vcpus} done; states ${this.vcpuStates().join(',')}; epoch ${Atomics.load(c.i32, W_INSTALL_EPOCH)}, per vCPU ${Array.from({ length: this.config.vcpus }, (_, v) => c.load(v, V_INSTALL_EPOCH_DONE)).join(',')}; request ${c.request()})`);
    this.resume();
    return { stallMs: performance.now() - t0 };
  }

  private vcpuStates(): VcpuState[] {
    const out: VcpuState[] = [];
    for (let v = 0; v < this.config.vcpus; v++) out.push(this.control.load(v, V_STATE));
    return out;
  }

  private allQuiescent(): boolean {
    return this.vcpuStates().every(isQuiescent);
  }

  /**
   * Waits for `cond`: first spinning on Atomics.wait for up to SYNC_WAIT_WINDOW_MS (sub-ms accuracy),
   * then yielding to the event loop between checks so a slow vCPU never blocks the host's loop.
   */
  private async waitUntil(cond: () => boolean, seqWord: number | null, deadline: number): Promise<boolean> {
    const i32 = this.control.i32;
    const syncEnd = Math.min(deadline, performance.now() + SYNC_WAIT_WINDOW_MS);
    const scratch = new Int32Array(new SharedArrayBuffer(4));
    // cond() is evaluated once per check: a vCPU that saw an older Run can flip Parked -> Running ->
    // Parked while it re-reads the request, so a second evaluation could contradict the first.
    while (performance.now() < syncEnd) {
      if (cond()) return true;
      if (this.crashInfo !== null) return false;
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
      if (this.crashInfo !== null) return false;
      await delay(1);
    }
    return cond();
  }

  private checkHung(): void {
    if (this.vmState !== 'running' && this.vmState !== 'paused') return;
    const c = this.control;
    const now = performance.timeOrigin + performance.now();
    for (let v = 0; v < this.config.vcpus; v++) {
      if (c.load(v, V_IN_STEP) !== 1) continue;
      const startMs = c.f64[c.stat(v, S_STEP_START_MS)] ?? 0;
      if (startMs <= 0) continue; // not yet published (cannot happen with the worker's store order; belt and braces)
      const ageMs = now - startMs;
      if (ageMs > this.config.hangTimeoutMs) {
        this.onCrash({ reason: 'hung', vcpu: v, message: `vCPU ${v} has been inside one step for ${Math.round(ageMs)} ms (limit ${this.config.hangTimeoutMs} ms); the guest ignores its step budget` });
        return;
      }
    }
    if (this.vmState === 'running' && this.vcpuStates().every((s) => s === VcpuState.Halted)) this.setState('halted');
  }

  private onWorkerMessage(msg: VcpuWorkerMessage): void {
    switch (msg.kind) {
      case 'console': this.emit('console', msg.text, msg.vcpu); break;
      case 'crash': this.onCrash({ reason: msg.reason, vcpu: msg.vcpu, message: msg.message }); break;
      case 'exit': break;
    }
  }

  private onWorkerExit(vcpu: number): void {
    this.exited.add(vcpu);
    if (this.exited.size === this.workers.length) {
      if (this.watchdog !== null) { clearInterval(this.watchdog); this.watchdog = null; }
      const waiters = this.exitWaiters;
      this.exitWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** First crash wins: the VM goes to crashed, every other vCPU is stopped, threads are released. */
  private onCrash(info: CrashInfo): void {
    if (this.crashInfo !== null || this.vmState === 'stopped') return;
    this.crashInfo = info;
    this.setState('crashed');
    this.emit('crash', info);
    this.control.setRequest(RunRequest.Stop);
    // A hung vCPU never reaches a safepoint: terminate its thread (V8 interrupts running wasm).
    if (info.reason === 'hung') for (const w of this.workers) void w.terminate();
    else {
      const timer = setTimeout(() => { for (const w of this.workers) void w.terminate(); }, STOP_GRACE_MS);
      timer.unref();
    }
  }

  private setState(state: VmState): void {
    if (this.vmState === state) return;
    this.vmState = state;
    this.emit('state', state);
  }

  private requireState(action: string, allowed: readonly VmState[]): void {
    if (!allowed.includes(this.vmState)) {
      const extra = this.crashInfo !== null ? ` (${this.crashInfo.reason}: ${this.crashInfo.message})` : '';
      throw new FerryError('VM_STATE', `cannot ${action}: VM ${this.config.name} is ${this.vmState}${extra}; allowed when ${allowed.join(' or ')}`, { state: this.vmState });
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

