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
 *   With a seed (docs/design/cross-site.md): PREPARE announces the chain's levels with their CIDs;
 *   the target answers which base levels it holds already (PreparedDisk), makes its new top a delta
 *   over them, and hashes their files before it answers round 1; round 1 then reads only the levels
 *   above them.
 */
import type { ChangedBlocks } from '../storage/changed-blocks.js';
import type { BlockBackend } from '../vmm/devices/block.js';
import type { ChainLevelSpec, PrepareDisk, PreparedDisk } from './protocol/messages.js';

export type { ChainLevelSpec, PrepareDisk, PreparedDisk };

/** The source's side of the VM's disk. */
export interface MigrationSourceDisk {
  /** What PREPARE announces (mode, and where the target finds or puts the disk). */
  readonly plan: PrepareDisk;
  /** Starts reporting the guest's writes by block (copy mode). */
  track(blockBytes: number): ChangedBlocks;
  untrack(tracker: ChangedBlocks): void;
  /** Every range any disk of the chain holds (copy mode: round 1 reads these). */
  forEachAllocatedRange(fn: (offsetBytes: number, lengthBytes: number) => void): Promise<void>;
  /**
   * Every range the top `levels` levels of the chain hold themselves (copy mode over a seed: round 1
   * reads these; the levels below are on the target already). `levels` is 1..the chain's length.
   */
  forEachAllocatedRangeInTop(levels: number, fn: (offsetBytes: number, lengthBytes: number) => void): Promise<void>;
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
  /**
   * Copy mode: what the target made of the chain PREPARE announced (sent back in PREPARE's reply);
   * undefined when PREPARE announced none (an older source): everything moves.
   */
  readonly prepared?: PreparedDisk;
  /**
   * Copy mode over a seed: reads and hashes every seeded file and compares each digest with the one
   * the source's file had when it was seeded; resolves at once when nothing is seeded. Rejects with
   * SEED_DAMAGED (the migration fails before any switch-over; the seed is not used again) or with the
   * signal's reason. Called once, right after PREPARE; round 1's ROUND is answered only after it.
   */
  verifySeed(signal: AbortSignal): Promise<void>;
  /** At COMMIT, before the VM resumes: shared mode takes the lease and opens the chain. */
  activate(): Promise<void>;
  /** The migration did not commit: close; a copied disk is removed. */
  discard(): Promise<void>;
}
