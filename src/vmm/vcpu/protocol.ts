/** What the VM hands a vCPU worker, what the worker reports back, and the step-loop limits. */
import type { ControlBuffers } from '../control.js';
import type { BlockRequest, BlockWorkerData } from '../devices/block.js';
import type { ExportedGlobal } from '../instrument.js';
import type { MemoryLayout } from '../layout.js';

/** Per-call cap on console output: a guest cannot make the host buffer unbounded text at once. */
export const CONSOLE_WRITE_MAX_BYTES = 64 * 1024;
export const PANIC_MESSAGE_MAX_BYTES = 4096;
/** How long an IDLE vCPU sleeps before its next step (it wakes at once on pause/stop). */
export const IDLE_TICK_MS = 1;
/** Step budget bounds (guest work units). */
export const MIN_BUDGET = 1;
export const MAX_BUDGET = 1 << 30;
export const INITIAL_BUDGET = 64;

export const STEP_STATUS_RUN = 0;
export const STEP_STATUS_IDLE = 1;
export const STEP_STATUS_HALT = 2;

export interface VcpuWorkerData {
  readonly module: WebAssembly.Module;
  readonly memory: WebAssembly.Memory;
  readonly control: ControlBuffers;
  readonly vcpus: number;
  readonly vcpu: number;
  readonly maxGlobals: number;
  readonly ramBytes: number;
  readonly layout: MemoryLayout;
  readonly cmdline: string;
  readonly globals: readonly ExportedGlobal[];

  readonly stepTargetUs: number;
  /** The block device (src/vmm/devices/block.ts), null when the VM has no disk. */
  readonly block: BlockWorkerData | null;
}

export type CrashReason = 'trap' | 'panic' | 'fault' | 'abi' | 'internal' | 'hung';

export type VcpuWorkerMessage =
  | { readonly kind: 'console'; readonly vcpu: number; readonly text: string }
  | { readonly kind: 'crash'; readonly vcpu: number; readonly reason: CrashReason; readonly message: string }
  | { readonly kind: 'exit'; readonly vcpu: number }
  /** The block requests ferry.block_submit accepted during one step, for the main thread's BlockService. */
  | { readonly kind: 'block'; readonly vcpu: number; readonly requests: readonly BlockRequest[] };
