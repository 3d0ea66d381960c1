/**
 * A VM's vCPU worker threads (src/vmm/vcpu/worker.ts): spawning them, knowing when every one has
 * exited, terminating them. What runs in them is driven through the control block, not from here.
 */
import { Worker } from 'node:worker_threads';
import { VcpuState, V_BUDGET, V_STATE, type Control } from '../control.js';
import { INITIAL_BUDGET, type VcpuWorkerData, type VcpuWorkerMessage } from './protocol.js';

export interface VcpuThreadEvents {
  message(msg: VcpuWorkerMessage): void;
  /** A thread failed outside the guest (its own crash reports come as messages). */
  failed(vcpu: number, err: Error): void;
  /** The last thread has exited. */
  allExited(): void;
}

export class VcpuThreads {
  private readonly workers: Worker[] = [];
  private readonly exited = new Set<number>();
  private exitWaiters: (() => void)[] = [];

  constructor(private readonly events: VcpuThreadEvents) {}

  get count(): number { return this.workers.length; }
  get allExited(): boolean { return this.exited.size === this.workers.length; }

  /** One thread per vCPU, each marked Starting with the initial budget before its thread exists. */
  spawn(control: Control, vcpus: number, dataFor: (vcpu: number) => VcpuWorkerData): void {
    for (let v = 0; v < vcpus; v++) {
      control.store(v, V_BUDGET, INITIAL_BUDGET);
      control.store(v, V_STATE, VcpuState.Starting);
      this.workers.push(this.spawnOne(v, dataFor(v)));
    }
  }

  /** Resolves when every thread has exited; threads still running after `graceMs` are terminated. */
  async exit(graceMs: number): Promise<void> {
    const allExited = new Promise<void>((resolve) => { this.exitWaiters.push(resolve); });
    const timer = setTimeout(() => { this.terminate(); }, graceMs);
    await allExited;
    clearTimeout(timer);
  }

  /** Ends every thread now (V8 interrupts running wasm). */
  terminate(): void {
    for (const w of this.workers) void w.terminate();
  }

  /** Ends the threads still running after `graceMs`, without keeping the process alive meanwhile. */
  terminateAfter(graceMs: number): void {
    const timer = setTimeout(() => { this.terminate(); }, graceMs);
    timer.unref();
  }

  private spawnOne(vcpu: number, data: VcpuWorkerData): Worker {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: data });
    worker.on('message', (msg: VcpuWorkerMessage) => { this.events.message(msg); });
    worker.on('error', (err) => { this.events.failed(vcpu, err); });
    worker.on('exit', () => { this.onExit(vcpu); });
    return worker;
  }

  private onExit(vcpu: number): void {
    this.exited.add(vcpu);
    if (!this.allExited) return;
    this.events.allExited();
    const waiters = this.exitWaiters;
    this.exitWaiters = [];
    for (const w of waiters) w();
  }
}
