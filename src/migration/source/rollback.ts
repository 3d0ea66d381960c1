/** Rollback: before COMMIT was sent, the target discards its copy and the VM continues here. */
import type { InstallStrategy } from '../../vmm/traces.js';
import type { Vm } from '../../vmm/vm.js';
import { FerryError, errorMessage } from '../../lib/errors.js';
import type { MigrationSourceDisk } from '../disk.js';
import type { Session } from './session.js';

/** The VM as it was before the migration touched it: what a rollback restores. */
export interface VmBefore {
  readonly granularityBytes: number;
  readonly strategy: InstallStrategy;
  readonly wasRunning: boolean;
}

/**
 * Throws (and leaves the VM paused) only when a shared disk handed over for COMMIT cannot be taken
 * back: a VM must never run without its disk, nor beside another writer of it.
 */
export async function rollback(vm: Vm, session: Session, error: FerryError, before: VmBefore, disk: MigrationSourceDisk | null): Promise<void> {
  try {
    // The target lets the disk go before it answers ABORT (it never took it unless COMMIT arrived).
    await session.abort(error.message);
  } finally {
    vm.setThrottle(0);
    vm.tracker.disarmAll();
    // Back to the VM's own tracing configuration.
    await vm.setTraceGranularity(before.granularityBytes).catch(() => undefined);
    vm.tracker.strategy = before.strategy;
  }
  if (disk?.released === true) {
    try {
      await disk.reacquire();
    } catch (err) {
      throw new FerryError('MIGRATION_FAILED',
        `rolled back, but VM ${vm.config.name}'s disk could not be taken back (${errorMessage(err)}); the VM stays paused here — resume it only once the disk is attached`,
        { cause: errorMessage(err) });
    }
  }
  if (vm.state === 'paused' && before.wasRunning) vm.resume();
}
