/**
 * The one place a VM's parts are made and wired (ARCHITECTURE.md §5; Firecracker's builder.rs):
 *
 *   configuration (checked, defaults filled in)
 *     -> guest image instrumented for that RAM size and trace granularity
 *     -> one shared memory laid out as RAM, control page, trace bitmaps (src/vmm/layout.ts)
 *     -> trace bitmap at the configured granularity, claimed-pages word, guest clock at 0
 *     -> control block sized for the vCPUs and the guest's globals
 *     -> devices: what each vCPU's worker serves the guest's device imports from, and the
 *        main-thread services behind them (the block device's BlockService)
 *     -> restore state, when the VM continues a saved or migrated one
 *
 * The Vm (src/vmm/vm.ts) runs the parts returned here and creates nothing but its vCPU threads and
 * its dirty tracker (whose hooks are its own barrier and stop-all installation, and which it
 * replaces when the trace granularity changes).
 */
import { createHash } from 'node:crypto';
import { assert } from '../lib/assert.js';
import { FerryError } from '../lib/errors.js';
import { MAX_GLOBALS_PER_VCPU, MIN_GRANULARITY_BYTES } from '../lib/limits.js';
import { normalizeConfig, type VmConfig, type VmConfigInput } from './config.js';
import { Control, W_RESTORE } from './control.js';
import { BlockService, checkDiskCapacity, createBlockShared, type BlockBackend } from './devices/block.js';
import { instrumentImage, type FaultInjection, type InstrumentedImage } from './instrument.js';
import { CONTROL_CLAIMED_PAGES_OFFSET, granularityShift, regionCount, type MemoryLayout } from './layout.js';
import { TraceBitmap } from './trace-bitmap.js';
import type { VcpuWorkerData } from './vcpu/protocol.js';
import { takeWarmMemory } from './warm-memory.js';
import { writeVcpuState, type VcpuSnapshotState } from './vcpu/state.js';

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

/** A VM's parts, wired: what the Vm lifecycle runs. */
export interface VmParts {
  readonly config: VmConfig;
  /** The original, uninstrumented image bytes (saved in snapshots, sent on migration). */
  readonly imageBytes: Uint8Array;
  readonly image: InstrumentedImage;
  readonly memory: WebAssembly.Memory;
  /** Guest RAM, [0, ramBytes). */
  readonly ram: Uint8Array;
  readonly bitmap: TraceBitmap;
  /** The claimed page count that virtualises memory.size/grow (in the control page after RAM). */
  readonly claimedPagesWord: Int32Array;
  readonly control: Control;
  /** The block device: its service (main thread) and the counters it shares with the vCPUs; null without a disk. */
  readonly block: BlockDevice | null;
  readonly restore: RestoreState | null;
}

export interface BlockDevice {
  readonly service: BlockService;
  readonly shared: SharedArrayBuffer;
}

/**
 * Checks the configuration, instruments the image and wires every part. Starts nothing.
 * `instrumented`: the image already instrumented for exactly this VM (a migration target that adopted
 * its source's module, src/vmm/instrument-offer.ts); it is used instead of instrumenting here.
 */
export function buildVm(imageBytes: Uint8Array, input: VmConfigInput, restore: RestoreState | null, faultInjection?: FaultInjection, instrumented?: InstrumentedImage): VmParts {
  const config = normalizeConfig(input);
  const image = instrumented !== undefined ? checkInstrumented(instrumented, imageBytes, config, faultInjection) : instrumentGuest(imageBytes, config, faultInjection);
  const memory = sharedMemory(image.layout);
  const bitmap = traceBitmap(memory, image.layout, config.granularityBytes);
  const control = Control.create(config.vcpus, Math.max(1, image.globals.length), regionCount(image.layout.ramBytes, MIN_GRANULARITY_BYTES));
  const parts: VmParts = {
    config, imageBytes, image, memory,
    ram: new Uint8Array(memory.buffer, 0, image.layout.ramBytes),
    bitmap,
    claimedPagesWord: new Int32Array(memory.buffer, image.layout.controlOffset + CONTROL_CLAIMED_PAGES_OFFSET, 1),
    control,
    block: input.disk === undefined ? null : blockDevice(input.disk, memory, image.layout.ramBytes, bitmap, control),
    restore,
  };
  Atomics.store(parts.claimedPagesWord, 0, image.initialPages);
  parts.control.setGuestClockNs(0n);
  if (restore !== null) applyRestoreState(parts, restore);
  return parts;
}

function instrumentGuest(imageBytes: Uint8Array, config: VmConfig, faultInjection?: FaultInjection): InstrumentedImage {
  const image = instrumentImage(imageBytes, {
    ramBytes: config.memoryBytes, granularityBytes: config.granularityBytes, ...(faultInjection ? { faultInjection } : {}),
  });
  return checkGlobalCount(image);
}

/** A pre-built image must be this image's, for this RAM size and granularity, and never with faults asked for (a programmer error otherwise). */
function checkInstrumented(image: InstrumentedImage, imageBytes: Uint8Array, config: VmConfig, faultInjection?: FaultInjection): InstrumentedImage {
  assert(faultInjection === undefined, 'a pre-built image is never fault-injected');
  assert(image.imageSha256 === createHash('sha256').update(imageBytes).digest('hex'), 'the pre-built image is of this image');
  assert(image.layout.ramBytes === config.memoryBytes && image.granularityBytes === config.granularityBytes, 'the pre-built image is for this RAM size and granularity');
  return checkGlobalCount(image);
}

function checkGlobalCount(image: InstrumentedImage): InstrumentedImage {
  if (image.globals.length > MAX_GLOBALS_PER_VCPU) {
    throw new FerryError('IMAGE_UNSUPPORTED_FEATURE', `guest has ${image.globals.length} mutable globals; at most ${MAX_GLOBALS_PER_VCPU} can be saved per vCPU`);
  }
  return image;
}

/** RAM and the host-reserved regions after it, in one fixed-size shared memory: a warm one if the host keeps one of this size. */
function sharedMemory(layout: MemoryLayout): WebAssembly.Memory {
  return takeWarmMemory(layout.totalPages) ?? new WebAssembly.Memory({ initial: layout.totalPages, maximum: layout.totalPages, shared: true });
}

function traceBitmap(memory: WebAssembly.Memory, layout: MemoryLayout, granularityBytes: number): TraceBitmap {
  const bitmap = new TraceBitmap(memory.buffer, layout);
  bitmap.setShift(granularityShift(granularityBytes));
  return bitmap;
}

// ---------------------------------------------------------------------------------------------
// Devices. The guest's device imports (console_write, clock_ns, cmdline, panic, block_submit,
// block_capacity) are served inside each vCPU's worker (src/vmm/vcpu/worker.ts) from what it is
// handed here. A new device is attached in this section: its backing becomes a part of VmParts, built
// in buildVm, and reaches the vCPUs through vcpuWorkerData; its imports go beside the others in
// the worker, and its docs in docs/guest-abi.md.

/**
 * The block device: a service on the main thread doing the I/O on `backend`, and the in-flight
 * counter it shares with every vCPU's BlockSubmitter (src/vmm/devices/block.ts). A restored VM
 * starts with none in flight: a pause (so every save and switch-over) drains them first. Each
 * completion wakes the idle vCPUs (the guest may be waiting for it).
 */
function blockDevice(backend: BlockBackend, memory: WebAssembly.Memory, ramBytes: number, bitmap: TraceBitmap, control: Control): BlockDevice {
  checkDiskCapacity(backend.capacityBytes);
  const shared = createBlockShared();
  return { service: new BlockService({ backend, memory, ramBytes, bitmap, shared, wakeIdle: () => { control.wakeIdle(); } }), shared };
}

/** What vCPU `vcpu`'s worker thread is handed: the guest, the memory, the control block, the devices. */
export function vcpuWorkerData(parts: VmParts, vcpu: number): VcpuWorkerData {
  const { config, image, memory, control } = parts;
  return {
    module: image.module, memory, control: control.buffers, vcpus: config.vcpus, vcpu,
    maxGlobals: control.maxGlobals, ramBytes: image.layout.ramBytes, layout: image.layout, cmdline: config.cmdline,
    globals: image.globals, stepTargetUs: config.stepTargetUs,
    block: parts.block === null ? null : { capacityBytes: parts.block.service.capacityBytes, shared: parts.block.shared },
  };
}

// ---------------------------------------------------------------------------------------------
// Restore.

/**
 * Makes the VM continue from captured state instead of booting: claimed size, clock, and each
 * vCPU's globals and halted flag (RAM is written separately). Only before the vCPUs start.
 */
export function applyRestoreState(parts: VmParts, restore: RestoreState): void {
  const { config, image, control } = parts;
  if (restore.vcpus.length !== config.vcpus) throw new FerryError('VM_CONFIG_INVALID', `restore state has ${restore.vcpus.length} vCPUs, the VM ${config.vcpus}`);
  if (restore.claimedPages > image.layout.ramPages || restore.claimedPages < image.initialPages) {
    throw new FerryError('VM_CONFIG_INVALID', `restored claimed memory (${restore.claimedPages} pages) does not fit the guest's range ${image.initialPages}..${image.layout.ramPages}`);
  }
  restore.vcpus.forEach((state, v) => { writeVcpuState(control, v, state, image.globals); });
  Atomics.store(parts.claimedPagesWord, 0, restore.claimedPages);
  control.setGuestClockNs(restore.clockNs);
  Atomics.store(control.i32, W_RESTORE, 1);
}
