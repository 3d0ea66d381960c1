/**
 * A vCPU's architectural state as Ferry captures it at a safepoint: its instance's mutable globals
 * and whether it had halted. The vCPU publishes its globals into the control block whenever it
 * parks; these read them out (capture) and write them in (restore, before the vCPUs start).
 */
import type { GlobalValue } from '../../lib/wire-values.js';
import { FerryError } from '../../lib/errors.js';
import { VcpuState, V_RESTORE_HALTED, V_STATE, type Control } from '../control.js';
import type { ExportedGlobal } from '../instrument.js';

export type { GlobalValue };

export interface VcpuSnapshotState {
  readonly halted: boolean;
  readonly globals: readonly GlobalValue[];
}

/** vCPU `vcpu`'s state as published at its last safepoint. */
export function readVcpuState(control: Control, vcpu: number, globals: readonly ExportedGlobal[]): VcpuSnapshotState {
  const c = control;
  const values: GlobalValue[] = globals.map((g, i) => {
    const slot = c.globalSlot(vcpu, i);
    if (g.type === 'i64') return { type: 'i64', value: c.globalsI64[slot] ?? 0n };
    return { type: g.type, value: c.globalsF64[slot] ?? 0 };
  });
  return { halted: c.load(vcpu, V_STATE) === VcpuState.Halted, globals: values };
}

/** Writes `state` for vCPU `vcpu` to restore from; throws VM_CONFIG_INVALID if it does not fit the guest's globals. */
export function writeVcpuState(control: Control, vcpu: number, state: VcpuSnapshotState, globals: readonly ExportedGlobal[]): void {
  const c = control;
  if (state.globals.length !== globals.length) {
    throw new FerryError('VM_CONFIG_INVALID', `vCPU ${vcpu} state has ${state.globals.length} globals; the guest has ${globals.length}`);
  }
  state.globals.forEach((g, i) => {
    const want = globals[i]?.type;
    if (g.type !== want) throw new FerryError('VM_CONFIG_INVALID', `vCPU ${vcpu} global ${i} is ${g.type} in the restore state but ${want ?? 'absent'} in the guest`);
    const slot = c.globalSlot(vcpu, i);
    if (g.type === 'i64') c.globalsI64[slot] = g.value;
    else c.globalsF64[slot] = g.value;
  });
  c.store(vcpu, V_RESTORE_HALTED, state.halted ? 1 : 0);
}
