/**
 * A VM as the host agent holds it: its definition (config + image), the running Vm (if any), its
 * console log, and which long operation owns it right now. A migration *owns* its VM while it runs:
 * other verbs get BUSY (the VM must not be stopped or paused under the migration's feet).
 */
import { FerryError } from '../lib/errors.js';
import type { Vm, VmConfig, VmState } from '../vmm/vm.js';
import { ConsoleLog } from './console-log.js';

export type SlotState = VmState | 'defined';

export class VmSlot {
  vm: Vm | null = null;
  readonly console = new ConsoleLog();
  /** Name of the operation that owns the VM (e.g. "migration 3f2a…"), or null. */
  owner: string | null = null;
  /** Summary of the last migration that involved this VM on this host. */
  lastMigration: unknown = null;

  constructor(readonly config: VmConfig, readonly imageBytes: Uint8Array) {}

  get name(): string { return this.config.name; }
  get state(): SlotState { return this.vm?.state ?? 'defined'; }

  attach(vm: Vm): void {
    this.vm = vm;
    vm.on('console', (text) => { this.console.append(text); });
  }

  /** Throws BUSY when another operation owns the VM. */
  requireFree(action: string): void {
    if (this.owner !== null) throw new FerryError('BUSY', `cannot ${action} VM ${this.name}: it is owned by ${this.owner}; wait for it to finish or cancel it`, { owner: this.owner });
  }

  requireVm(action: string): Vm {
    if (this.vm === null) throw new FerryError('VM_STATE', `cannot ${action} VM ${this.name}: it is not running (start it first)`);
    return this.vm;
  }

  describe(): Record<string, unknown> {
    const vm = this.vm;
    return {
      name: this.name,
      state: this.state,
      owner: this.owner,
      config: { memoryBytes: this.config.memoryBytes, vcpus: this.config.vcpus, granularityBytes: this.config.granularityBytes, cmdline: this.config.cmdline },
      crash: vm?.crash ?? null,
      vcpus: vm?.vcpuStats() ?? [],
      lastMigration: this.lastMigration,
    };
  }
}
