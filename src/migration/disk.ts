/**
 * The VM's disk as a migration sees it (docs/migration-protocol.md, "Disks"). The engine is given
 * these interfaces; the host implements them over its datastores and the VM's disk handle, so the
 * engine opens no file and takes no lease itself.
 *
 * - shared: both hosts mount the datastore. No disk data moves; the source flushes and gives up
 *   the disk's lease with the VM stunned, just before COMMIT, and the target takes it at COMMIT
 *   before it resumes the VM. Never two writers (the lease), never none while the VM runs (the VM
 *   is stunned in between; a rollback takes the lease back before it resumes).
 * - copy: the target creates a disk on one of its datastores; the source sends every allocated
 *   block in round 1 and the blocks the guest changed in each later round, together with memory,
 *   and the last changed blocks with the VM stunned. COMMIT carries a digest of the disk blocks.
 */
import type { ChangedBlocks } from '../storage/changed-blocks.js';
import type { BlockBackend } from '../vmm/devices/block.js';
import type { PrepareDisk } from './protocol/messages.js';

export type { PrepareDisk };

/** The source's side of the VM's disk. */
export interface MigrationSourceDisk {
  /** What PREPARE announces (mode, and where the target finds or puts the disk). */
  readonly plan: PrepareDisk;
  /** Starts reporting the guest's writes by block (copy mode). */
  track(blockBytes: number): ChangedBlocks;
  untrack(tracker: ChangedBlocks): void;
  /** Every range any disk of the chain holds (copy mode: round 1 reads these). */
  forEachAllocatedRange(fn: (offsetBytes: number, lengthBytes: number) => void): Promise<void>;
  /** Reads the guest-visible content (the chain's). */
  read(offsetBytes: number, buf: Uint8Array): Promise<void>;
  /** Shared mode, VM stunned: flush and give the lease up, for the target to take. */
  release(): Promise<void>;
  /** Shared mode, rollback: take the lease back (DISK_LOCKED if someone else holds it now). */
  reacquire(): Promise<void>;
  /** True between release() and a successful reacquire(). */
  readonly released: boolean;
}

/** The target's side: the disk an incoming VM will run on. */
export interface IncomingDisk {
  /** The VM's block device (attached at COMMIT in shared mode). */
  readonly backend: BlockBackend;
  /** Copy mode: writes received blocks (not through the VM's device: nothing tracks them). */
  write(offsetBytes: number, data: Uint8Array): Promise<void>;
  /** Copy mode: makes every received block durable (before the commit record). */
  flush(): Promise<void>;
  /** At COMMIT, before the VM resumes: shared mode takes the lease and opens the chain. */
  activate(): Promise<void>;
  /** The migration did not commit: close; a copied disk is removed. */
  discard(): Promise<void>;
}
