/**
 * Who may touch a VM now. A long operation (a migration today; a disk snapshot or a copy later)
 * claims its VM for as long as it runs; every other verb on that VM is refused with BUSY and the
 * owner's name, so nothing stops, pauses or deletes a VM under a running operation's feet.
 * One entry per claimed VM at most, so the map is bounded by the VMs of the host.
 */
import { FerryError } from '../lib/errors.js';

export interface Claim {
  readonly vm: string;
  readonly owner: string;
  /** Gives the VM back; idempotent. */
  release(): void;
}

export class OperationsRegistry {
  private readonly owners = new Map<string, string>();

  ownerOf(vm: string): string | null {
    return this.owners.get(vm) ?? null;
  }

  /** Throws BUSY when an operation owns the VM. */
  requireFree(vm: string, action: string): void {
    const owner = this.owners.get(vm);
    if (owner !== undefined) {
      throw new FerryError('BUSY', `cannot ${action} VM ${vm}: it is owned by ${owner}; wait for it to finish or cancel it`, { owner });
    }
  }

  /** Claims the VM for `owner` (e.g. "migration 3f2a…"), or throws BUSY. */
  claim(vm: string, owner: string, action: string): Claim {
    this.requireFree(vm, action);
    this.owners.set(vm, owner);
    let released = false;
    return {
      vm, owner,
      release: () => {
        if (released) return;
        released = true;
        if (this.owners.get(vm) === owner) this.owners.delete(vm);
      },
    };
  }

  get size(): number { return this.owners.size; }
}
