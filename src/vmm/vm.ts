/**
 * A VM on one host: an instrumented guest image, one shared memory (RAM + reserved regions) and N
 * vCPU worker threads. Its parts are made and wired by src/vmm/builder.ts; this object owns the
 * lifecycle:
 *
 *   created --start--> running --pause--> paused --resume--> running
 *   running --all vCPUs halt--> halted
 *   running/paused --trap, panic, hang--> crashed        any --stop--> stopped
 *
 * It exposes what the migration engine needs: pause with a bounded, measured latency; per-vCPU
 * state capture; a throttle; the dirty tracker; direct RAM access for copying; save/restore.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { FerryError, errorMessage } from '../lib/errors.js';
import { MiB, formatBytes } from '../lib/units.js';
import { MAX_THROTTLE_PERMILLE } from '../lib/limits.js';
import { applyRestoreState, buildVm, vcpuWorkerData, type RestoreState, type VmParts } from './builder.js';
import type { VmConfig, VmConfigInput } from './config.js';
import { RunRequest, VcpuState, isQuiescent, V_STATE, V_THROTTLE_PERMILLE, W_GO, W_PARK_SEQ, type Control } from './control.js';
import { BLOCK_DRAIN_TIMEOUT_MS, BLOCK_E_NO_DISK, type BlockServiceStats } from './devices/block.js';
import type { FaultInjection, InstrumentedImage } from './instrument.js';
import { granularityShift, validateGranularity } from './layout.js';
import type { TraceBitmap } from './trace-bitmap.js';
import { DirtyTracker } from './traces.js';
import type { CrashReason, VcpuWorkerMessage } from './vcpu/protocol.js';
import { readVcpuState, type VcpuSnapshotState } from './vcpu/state.js';
import { readVcpuStats, type VcpuStats } from './vcpu/stats.js';
import { delay, epochBarrier, installProgress, installWhileParked, waitUntil } from './vcpu/sync.js';
import { VcpuThreads } from './vcpu/threads.js';
import { Watchdog } from './vcpu/watchdog.js';

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
  /** From the pause request until every vCPU was parked and every block request had completed. */
  readonly latencyMs: number;
  /** The part of latencyMs spent waiting for in-flight block requests after the vCPUs parked. */
  readonly blockDrainMs: number;
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
  private readonly parts: VmParts;
  private readonly control: Control;
  private readonly bitmap: TraceBitmap;
  private readonly threads: VcpuThreads;
  private readonly watchdog: Watchdog;
  private trackerImpl: DirtyTracker;
  private restore: RestoreState | null;
  private vmState: VmState = 'created';
  private crashInfo: CrashInfo | null = null;
  private readonly crashed = (): boolean => this.crashInfo !== null;

  /**
   * Validates and instruments the image and allocates the VM's memory (src/vmm/builder.ts). Does not
   * start vCPUs. `instrumented`: the image already instrumented for this VM (see buildVm).
   */
  static create(imageBytes: Uint8Array, input: VmConfigInput, restore: RestoreState | null = null, faultInjection?: FaultInjection, instrumented?: InstrumentedImage): Vm {
    return new Vm(buildVm(imageBytes, input, restore, faultInjection, instrumented));
  }

  private constructor(parts: VmParts) {
    super();
    this.parts = parts;
    this.config = parts.config;
    this.image = parts.image;
    this.imageBytes = parts.imageBytes;
    this.memory = parts.memory;
    this.ram = parts.ram;
    this.control = parts.control;
    this.bitmap = parts.bitmap;
    this.restore = parts.restore;
    this.threads = new VcpuThreads({
      message: (msg) => { this.onWorkerMessage(msg); },
      failed: (vcpu, err) => { this.onCrash({ reason: 'internal', vcpu, message: `vCPU thread failed: ${errorMessage(err)}` }); },
      allExited: () => { this.watchdog.stop(); },
    });
    this.watchdog = new Watchdog(this.control, this.config.vcpus, this.config.hangTimeoutMs);
    this.trackerImpl = this.newTracker();
  }

  /**
   * Makes the VM continue from captured state instead of booting: claimed size, clock, and each
   * vCPU's globals and halted flag (RAM is written separately). Only before start.
   */
  setRestoreState(restore: RestoreState): void {
    this.requireState('set restore state', ['created']);
    applyRestoreState(this.parts, restore);
    this.restore = restore;
  }

  get state(): VmState { return this.vmState; }
  get crash(): CrashInfo | null { return this.crashInfo; }
  get claimedPages(): number { return Atomics.load(this.parts.claimedPagesWord, 0); }
  get guestClockNs(): bigint { return this.control.guestClockNs(); }

  // ---------------------------------------------------------------------------------------------
  // Lifecycle

  /**
   * Creates the vCPU threads and instantiates the guest in each, without running it. A migration
   * target does this at prepare time so that resuming the VM later is only a wake-up.
   */
  async spawn(): Promise<void> {
    this.requireState('spawn vCPUs', ['created']);
    if (this.threads.count > 0) return;
    this.control.setRequest(RunRequest.Run);
    this.threads.spawn(this.control, this.config.vcpus, (v) => vcpuWorkerData(this.parts, v));
    await this.waitForVcpus((s) => s !== VcpuState.Starting, 'instantiate the guest');
  }

  /** Starts every vCPU; resolves once all have booted (or restored) and run, or rejects on a boot crash. */
  async start(): Promise<void> {
    this.requireState('start', ['created']);
    await this.spawn();
    this.continueGuestClock();
    Atomics.store(this.control.i32, W_GO, 1);
    Atomics.notify(this.control.i32, W_GO);
    this.setState('running'); // created --start--> running
    this.watchdog.start(() => { this.onWatchdogTick(); });
    const bootAllowanceMs = this.restore === null ? (this.config.memoryBytes / BOOT_MIN_BYTES_PER_SEC) * 1000 : 0;
    await this.waitForVcpus((s) => s !== VcpuState.Starting && s !== VcpuState.Ready, 'boot', bootAllowanceMs);
  }

  /** A migrated VM's clock moves on by the time since its source read it (RestoreState.clockWallMs). */
  private continueGuestClock(): void {
    if (this.restore?.clockWallMs === undefined) return;
    const elapsedNs = BigInt(Math.max(0, Math.round((Date.now() - this.restore.clockWallMs) * 1e6)));
    this.control.setGuestClockNs(this.restore.clockNs + elapsedNs);
  }

  private async waitForVcpus(done: (s: VcpuState) => boolean, what: string, extraMs = 0): Promise<void> {
    const deadline = performance.now() + Math.max(this.config.hangTimeoutMs, VCPU_START_TIMEOUT_MS) + extraMs;
    const ok = await waitUntil(this.control.i32, () => this.vcpuStates().every(done), W_PARK_SEQ, deadline, this.crashed);
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
    if (this.vmState === 'paused') return { latencyMs: 0, blockDrainMs: 0 };
    if (this.vmState === 'halted') {
      // A guest may halt with requests in flight; a halted VM is saved like a paused one.
      const t0 = performance.now();
      await this.drainBlock();
      const ms = performance.now() - t0;
      return { latencyMs: ms, blockDrainMs: ms };
    }
    this.requireState('pause', ['running']);
    const t0 = performance.now();
    this.control.setRequest(RunRequest.Pause);
    const ok = await waitUntil(this.control.i32, () => this.allQuiescent(), W_PARK_SEQ, t0 + timeoutMs, this.crashed);
    const parkedAt = performance.now();
    await this.awaitCrashReport();
    if (this.crashInfo !== null) throw new FerryError('VM_CRASHED', `VM crashed while pausing: ${this.crashInfo.message}`, { crash: this.crashInfo });
    if (!ok) this.pauseTimedOut(timeoutMs);
    // Parked vCPUs submit nothing new; what they submitted before completes now, so that a save
    // or a switch-over copies RAM with every completion in it and no request is lost or redone.
    try {
      await this.drainBlock();
    } catch (err) {
      this.control.setRequest(RunRequest.Run); // the pause failed: the guest keeps running, its I/O still pending
      throw err;
    }
    // One end time for both figures: the drain is part of the latency, and 'state' listeners are neither.
    const endAt = performance.now();
    this.setState('paused'); // running --pause--> paused
    return { latencyMs: endAt - t0, blockDrainMs: endAt - parkedAt };
  }

  /** Waits (bounded by BLOCK_DRAIN_TIMEOUT_MS) until no block request is in flight. */
  private async drainBlock(): Promise<void> {
    const service = this.parts.block?.service;
    if (service === undefined || await service.drain(BLOCK_DRAIN_TIMEOUT_MS)) return;
    throw new FerryError('STORE_IO',
      `VM ${this.config.name}: ${service.inFlight} block request(s) did not complete within ${BLOCK_DRAIN_TIMEOUT_MS} ms (last I/O error: ${service.stats().lastIoError ?? 'none'})`,
      { inFlight: service.inFlight });
  }

  /** running --pause timeout--> crashed (hung): the vCPUs that did not park are named. */
  private pauseTimedOut(timeoutMs: number): never {
    const stuck = this.vcpuStates().map((s, i) => (isQuiescent(s) ? -1 : i)).filter((i) => i >= 0);
    this.onCrash({ reason: 'hung', vcpu: stuck[0] ?? 0, message: `vCPU(s) ${stuck.join(', ')} did not reach a safepoint within ${timeoutMs} ms` });
    throw new FerryError('VCPU_HUNG', `VM ${this.config.name}: vCPU(s) ${stuck.join(', ')} did not pause within ${timeoutMs} ms; the VM is marked crashed (hung)`, { vcpus: stuck });
  }

  resume(): void {
    this.requireState('resume', ['paused']);
    this.control.setRequest(RunRequest.Run);
    this.setState('running'); // paused --resume--> running
  }

  /** Stops every vCPU and releases the threads. Safe to call in any state, more than once. */
  async stop(): Promise<void> {
    this.watchdog.stop();
    if (this.threads.count > 0 && !this.threads.allExited) {
      this.control.setRequest(RunRequest.Stop);
      await this.threads.exit(STOP_GRACE_MS);
    }
    // The owner closes the disk after stop: no request may still be using it then. Requests a
    // terminated vCPU accepted but never posted (they go out when a step ends) are not waited for.
    if (this.threads.allExited) this.parts.block?.service.abandonUnposted();
    await this.drainBlock().catch(() => undefined);
    if (this.vmState !== 'crashed') this.setState('stopped'); // any --stop--> stopped (a crash stays a crash)
  }

  /** Every watchdog interval while running or paused: a step that overran the hang timeout, or every vCPU halted. */
  private onWatchdogTick(): void {
    if (this.vmState !== 'running' && this.vmState !== 'paused') return;
    const hung = this.watchdog.hungStep();
    if (hung !== null) {
      const { vcpu, ageMs } = hung;
      this.onCrash({ reason: 'hung', vcpu, message: `vCPU ${vcpu} has been inside one step for ${Math.round(ageMs)} ms (limit ${this.config.hangTimeoutMs} ms); the guest ignores its step budget` });
      return;
    }
    if (this.vmState === 'running' && this.vcpuStates().every((s) => s === VcpuState.Halted)) this.setState('halted'); // running --all vCPUs halt--> halted
  }

  /** running/paused --trap, panic, hang--> crashed. First crash wins: every other vCPU is stopped, threads are released. */
  private onCrash(info: CrashInfo): void {
    if (this.crashInfo !== null || this.vmState === 'stopped') return;
    this.crashInfo = info;
    this.setState('crashed');
    this.emit('crash', info);
    this.control.setRequest(RunRequest.Stop);
    // A hung vCPU never reaches a safepoint: terminate its thread (V8 interrupts running wasm).
    if (info.reason === 'hung') this.threads.terminate();
    else this.threads.terminateAfter(STOP_GRACE_MS);
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

  private onWorkerMessage(msg: VcpuWorkerMessage): void {
    switch (msg.kind) {
      case 'console': this.emit('console', msg.text, msg.vcpu); break;
      case 'crash': this.onCrash({ reason: msg.reason, vcpu: msg.vcpu, message: msg.message }); break;
      case 'block':
        // A worker only posts requests when the VM has a disk (BlockSubmitter refuses otherwise).
        if (this.parts.block !== null) for (const r of msg.requests) this.parts.block.service.handle(r);
        break;
      case 'exit': break;
    }
  }

  private setState(state: VmState): void {
    if (this.vmState === state) return;
    this.vmState = state;
    this.emit('state', state);
  }

  /** A request the current state does not allow gets a typed "not allowed" answer (VM_STATE). */
  private requireState(action: string, allowed: readonly VmState[]): void {
    if (!allowed.includes(this.vmState)) {
      const extra = this.crashInfo !== null ? ` (${this.crashInfo.reason}: ${this.crashInfo.message})` : '';
      throw new FerryError('VM_STATE', `cannot ${action}: VM ${this.config.name} is ${this.vmState}${extra}; allowed when ${allowed.join(' or ')}`, { state: this.vmState });
    }
  }

  private vcpuStates(): VcpuState[] {
    const out: VcpuState[] = [];
    for (let v = 0; v < this.config.vcpus; v++) out.push(this.control.load(v, V_STATE));
    return out;
  }

  private allQuiescent(): boolean {
    return this.vcpuStates().every(isQuiescent);
  }

  // ---------------------------------------------------------------------------------------------
  // What a running or quiescent VM offers: throttle, state capture, statistics, host writes, guest checks

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
    return Array.from({ length: this.config.vcpus }, (_, v) => readVcpuState(this.control, v, this.image.globals));
  }

  /** The block device's counters; null when the VM has no disk. */
  blockStats(): BlockServiceStats | null {
    return this.parts.block?.service.stats() ?? null;
  }

  vcpuStats(): VcpuStats[] {
    return readVcpuStats(this.control, this.config.vcpus);
  }

  /** The clock value each vCPU read last (0n: never): a migration source sends them at stun. */
  lastClockReads(): bigint[] {
    return Array.from({ length: this.config.vcpus }, (_, v) => this.control.lastClockRead(v));
  }

  /** The first clock value each vCPU read in this VM instance (0n: not yet). */
  firstClockReads(): bigint[] {
    return Array.from({ length: this.config.vcpus }, (_, v) => this.control.firstClockRead(v));
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
      ferry: {
        console_write: () => undefined, clock_ns: () => this.control.guestClockNs(), cmdline: fail, panic: fail,
        // Submitting is not reading: refused like on a VM without a disk (the guest's check must not need it).
        block_submit: () => BLOCK_E_NO_DISK, block_capacity: () => BigInt(this.parts.block?.service.capacityBytes ?? 0),
      },
    });
    return (instance.exports[name] as () => unknown)();
  }

  // ---------------------------------------------------------------------------------------------
  // Write traces (docs/dirty-tracking.md)

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

  /**
   * Trace epoch barrier (src/vmm/vcpu/sync.ts): resolves once every vCPU that was inside a step
   * has finished it, so every later step sees traces re-armed before this call.
   */
  async traceBarrier(): Promise<void> {
    const outcome = await epochBarrier(this.control, this.config.vcpus, this.config.hangTimeoutMs, this.crashed);
    if (outcome === 'clear') return;
    if (this.crashInfo !== null) throw new FerryError('VM_CRASHED', `VM crashed during a trace epoch: ${this.crashInfo.message}`, { crash: this.crashInfo });
    if (outcome === 'timeout') throw new FerryError('VCPU_HUNG', `a vCPU did not finish its step within ${this.config.hangTimeoutMs} ms during a trace epoch`);
  }

  /**
   * "stop-all" installation: parks every vCPU, has each one re-arm its share of `regions` (null:
   * all regions), and resumes when the last finished. Returns the guest-visible stall. A VM that is
   * not running (paused, halted, created) is installed by the caller's thread directly.
   */
  async installWithAllStopped(regions: Uint32Array | null): Promise<{ stallMs: number }> {
    if (this.vmState !== 'running') {
      if (regions === null) this.bitmap.bytes.fill(1, 0, this.bitmap.regionCount);
      else for (const r of regions) this.bitmap.bytes[r] = 1;
      return { stallMs: 0 };
    }
    const t0 = performance.now();
    await this.pause(); // running --pause--> paused
    const ok = await installWhileParked(this.control, this.config.vcpus, regions, this.config.hangTimeoutMs, this.crashed);
    if (!ok || this.crashInfo !== null) {
      throw new FerryError('VCPU_HUNG', `vCPUs did not finish installing traces in time (${installProgress(this.control, this.config.vcpus, this.vcpuStates())})`);
    }
    this.resume(); // paused --resume--> running
    return { stallMs: performance.now() - t0 };
  }
}
