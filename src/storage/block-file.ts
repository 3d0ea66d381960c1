/**
 * A file as disks see it: positional reads and writes, a flush that makes every acknowledged write
 * durable, and its size. Every disk format (VMDK extents, raw images) reads and writes through this
 * interface, and a datastore hands it out — no disk code opens a path itself, so a datastore can add
 * leases, accounting or a remote backend without the formats changing.
 */
export interface BlockFile {
  /** For errors and logs: the datastore and path, e.g. "ds1:vm/disk.vmdk". */
  readonly name: string;
  readonly readOnly: boolean;
  /** Reads exactly `buf.length` bytes at `position`; past the end the missing bytes read as zero. */
  read(position: number, buf: Uint8Array): Promise<void>;
  /** Writes all of `data` at `position` (growing the file if needed). Durable only after flush(). */
  write(position: number, data: Uint8Array): Promise<void>;
  /** Every write acknowledged before this call is on stable storage when it resolves. */
  flush(): Promise<void>;
  /** Current length in bytes. */
  size(): Promise<number>;
  truncate(length: number): Promise<void>;
  /**
   * Idempotent: closing a closed file does nothing. Whoever ends up owning a file after a failure
   * (the opener or the disk it was handed to) may close it, so closing twice must be harmless.
   */
  close(): Promise<void>;
}
