/**
 * Save a paused VM to a snapshot file and restore it, possibly in another process or on another
 * host. The file format is src/vmm/snapshot.ts (docs/snapshot-format.md); this module maps a VM's
 * state onto it: RAM, claimed size, guest clock, per-vCPU globals and halted flags, command line.
 */
import { FerryError } from '../lib/errors.js';
import { openSnapshot, writeSnapshot, type SnapshotMetadata, type SnapshotProgress, type WriteResult } from './snapshot.js';
import type { VmConfigInput } from './config.js';
import type { BlockBackend } from './devices/block.js';
import { Vm } from './vm.js';

export interface RestoreOverrides {
  readonly name?: string;
  readonly hangTimeoutMs?: number;
  readonly stepTargetUs?: number;
  /** Re-instrument with another trace granularity (the snapshot does not depend on it). */
  readonly granularityBytes?: number;
  /** The disk to attach (a snapshot holds RAM, not disks: attach the one the VM was saved with). */
  readonly disk?: BlockBackend;
}

/** Writes the VM (paused, halted or stopped) to `path`. The VM is not changed. */
export async function saveVm(vm: Vm, path: string, onProgress?: (p: SnapshotProgress) => void): Promise<WriteResult> {
  const vcpuStates = vm.captureVcpuStates(); // checks the state
  const meta: SnapshotMetadata = {
    vm: {
      name: vm.config.name, ramBytes: vm.config.memoryBytes, vcpus: vm.config.vcpus,
      granularityBytes: vm.granularityBytes, cmdline: vm.config.cmdline,
    },
    imageSha256: vm.image.imageSha256,
    claimedPages: vm.claimedPages,
    clockNs: vm.guestClockNs,
    vcpuStates: vcpuStates.map((s) => ({ halted: s.halted, globals: s.globals.map((g) => ({ ...g })) })),
    createdAt: new Date().toISOString(),
  };
  return writeSnapshot(path, meta, vm.imageBytes, vm.ram, onProgress);
}

/** Creates a VM from a snapshot (not started: call start() to continue the guest exactly). */
export async function restoreVm(path: string, overrides: RestoreOverrides = {}, onProgress?: (p: SnapshotProgress) => void): Promise<Vm> {
  const snap = await openSnapshot(path);
  try {
    const { meta } = snap;
    const config: VmConfigInput = {
      name: overrides.name ?? meta.vm.name,
      memoryBytes: meta.vm.ramBytes,
      vcpus: meta.vm.vcpus,
      granularityBytes: overrides.granularityBytes ?? meta.vm.granularityBytes,
      cmdline: meta.vm.cmdline,
      ...(overrides.hangTimeoutMs !== undefined ? { hangTimeoutMs: overrides.hangTimeoutMs } : {}),
      ...(overrides.stepTargetUs !== undefined ? { stepTargetUs: overrides.stepTargetUs } : {}),
      ...(overrides.disk !== undefined ? { disk: overrides.disk } : {}),
    };
    let vm: Vm;
    try {
      vm = Vm.create(snap.image, config, { claimedPages: meta.claimedPages, clockNs: meta.clockNs, vcpus: meta.vcpuStates });
    } catch (err) {
      // The snapshot's state does not fit its own image: the file is inconsistent.
      if (err instanceof FerryError && err.code === 'VM_CONFIG_INVALID' && overrides.name === undefined) {
        throw new FerryError('SNAPSHOT_CORRUPT', `snapshot ${path} does not match its embedded image: ${err.message}`, {}, { cause: err });
      }
      throw err;
    }
    await snap.restoreMemory(vm.ram, (offset, length) => { vm.markWritten(offset, length); }, onProgress);
    return vm;
  } finally {
    await snap.close();
  }
}
