/** What the host gives the target side of a migration: admission, adoption, the durable outcome store, a log. */
import type { Vm } from '../../vmm/vm.js';
import type { IncomingDisk, PrepareDisk } from '../disk.js';

/** The ids of one incoming migration: the source's (the one the operator and the center know; the target's own when the source did not say it) and this host's. */
export interface IncomingIds {
  readonly migrationId: string;
  readonly incomingId: string;
  /** The VM, once PREPARE has named it. */
  readonly vm?: string;
}

/** Told what incoming migrations do (the host's metrics); every call is cheap and never throws. */
export interface IncomingObserver {
  started(ids: IncomingIds): void;
  /** Bytes of MEMORY or DISK payload applied. */
  received(kind: 'memory' | 'disk', bytes: number): void;
  ended(ids: IncomingIds, outcome: 'committed' | 'aborted', durationMs: number): void;
}

/** What the host's store keeps per incoming migration (the commit record). */
export type StoredOutcome = 'committed' | 'aborted';

export interface ReceiverHooks {
  /** Throws (ALREADY_EXISTS, CAPACITY, …) to refuse a VM. */
  admit(vm: { name: string; memoryBytes: number }): void;
  /** The VM committed and runs here now: register it at once (synchronously), persist it in the returned promise. */
  adopt(vm: Vm, imageBytes: Uint8Array, disk: IncomingDisk | null): Promise<void>;
  /**
   * The disk PREPARE announced, checked and made ready: shared mode checks this host mounts the
   * datastore (by id) and the disk is there; copy mode creates it (never over an existing file).
   * Throws to refuse the migration. A copy is noted durably under `migrationId` first, so that a
   * host restarted after a crash removes a copy that never committed.
   */
  prepareDisk(migrationId: string, vmName: string, plan: PrepareDisk): Promise<IncomingDisk>;
  recordOutcome(id: string, outcome: StoredOutcome, vmName: string): Promise<void>;
  /** The durable record; null only when there is none. Rejects when it cannot be read (never "none" for that). */
  storedOutcome(id: string): Promise<StoredOutcome | null>;
  log(line: string): void;
  /** The log of one incoming migration (default: log): the host binds the migration's ids to every line of it. */
  logFor?(ids: IncomingIds): (line: string) => void;
  observer?: IncomingObserver;
}
