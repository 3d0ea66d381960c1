/** What the host gives the target side of a migration: admission, adoption, the durable outcome store, a log. */
import type { Vm } from '../../vmm/vm.js';

/** What the host's store keeps per incoming migration (the commit record). */
export type StoredOutcome = 'committed' | 'aborted';

export interface ReceiverHooks {
  /** Throws (ALREADY_EXISTS, CAPACITY, …) to refuse a VM. */
  admit(vm: { name: string; memoryBytes: number }): void;
  /** The VM committed and runs here now: register it at once (synchronously), persist it in the returned promise. */
  adopt(vm: Vm, imageBytes: Uint8Array): Promise<void>;
  recordOutcome(id: string, outcome: StoredOutcome, vmName: string): Promise<void>;
  /** The durable record; null only when there is none. Rejects when it cannot be read (never "none" for that). */
  storedOutcome(id: string): Promise<StoredOutcome | null>;
  log(line: string): void;
}
