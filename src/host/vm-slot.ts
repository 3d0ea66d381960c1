/**
 * A VM as the host agent holds it: its definition (config + image), the running Vm (if any), its
 * console log, and the record of the last migration that involved it here. Who may touch it right
 * now is the operations registry's business (./operations.ts).
 */
import type { MigrationRecord } from '../migration/record.js';
import type { VmConfig } from '../vmm/config.js';
import type { Vm, VmState } from '../vmm/vm.js';
import { ConsoleLog } from './console-log.js';
import type { DiskSpec, VmDisk } from './vm-disk.js';
import { FerryError } from '../lib/errors.js';

export type SlotState = VmState | 'defined';

export class VmSlot {
  vm: Vm | null = null;
  readonly console = new ConsoleLog();
  /** Summary of the last migration that involved this VM on this host. */
  lastMigration: MigrationRecord | null = null;
  /**
   * The disk the definition names that could not be attached at the last host start (locked, gone),
   * and why: start() tries again (a lease left by this host's own previous run expires by itself).
   */
  diskProblem: { readonly spec: DiskSpec; readonly message: string } | null = null;

  constructor(readonly config: VmConfig, readonly imageBytes: Uint8Array, public disk: VmDisk | null = null) {}

  get name(): string { return this.config.name; }
  get state(): SlotState { return this.vm?.state ?? 'defined'; }

  attach(vm: Vm): void {
    this.vm = vm;
    vm.on('console', (text) => { this.console.append(text); });
  }

  requireVm(action: string): Vm {
    if (this.vm === null) throw new FerryError('VM_STATE', `cannot ${action} VM ${this.name}: it is not running (start it first)`);
    return this.vm;
  }
}
