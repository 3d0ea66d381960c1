/** Rollback: before COMMIT was sent, the target discards its copy and the VM continues here. */
import type { FerryError } from '../../lib/errors.js';
import type { InstallStrategy } from '../../vmm/traces.js';
import type { Vm } from '../../vmm/vm.js';
import type { Session } from './session.js';

/** The VM as it was before the migration touched it: what a rollback restores. */
export interface VmBefore {
  readonly granularityBytes: number;
  readonly strategy: InstallStrategy;
  readonly wasRunning: boolean;
}

export async function rollback(vm: Vm, session: Session, error: FerryError, before: VmBefore): Promise<void> {
  try {
    await session.abort(error.message);
  } finally {
    vm.setThrottle(0);
    vm.tracker.disarmAll();
    // Back to the VM's own tracing configuration.
    await vm.setTraceGranularity(before.granularityBytes).catch(() => undefined);
    vm.tracker.strategy = before.strategy;
    if (vm.state === 'paused' && before.wasRunning) vm.resume();
  }
}
