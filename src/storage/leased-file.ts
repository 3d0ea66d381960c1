/**
 * A BlockFile opened through a datastore: the file, plus the write lease its writer holds (none for
 * a reader). Every write, flush and truncate first checks the lease, so that once a renewal has
 * found it lost (Lease `lost` event) no later write reaches the disk; close releases it.
 */
import type { BlockFile } from './block-file.js';
import type { DatastoreFile } from './datastore.js';
import type { Lease } from './lease.js';

export class LeasedFile implements DatastoreFile {
  private closing: Promise<void> | undefined;

  constructor(private readonly file: BlockFile, readonly lease: Lease | null) {}

  get name(): string { return this.file.name; }
  get readOnly(): boolean { return this.file.readOnly; }

  read(position: number, buf: Uint8Array): Promise<void> { return this.file.read(position, buf); }
  size(): Promise<number> { return this.file.size(); }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.lease?.check();
    await this.file.write(position, data);
  }

  async flush(): Promise<void> {
    this.lease?.check();
    await this.file.flush();
  }

  async truncate(length: number): Promise<void> {
    this.lease?.check();
    await this.file.truncate(length);
  }

  /**
   * Closes the file, then gives the lease up (after the last write has been handed to the file system).
   * Idempotent on its own, whatever the file's close does, and a second call waits for the first: a
   * concurrent close that skipped ahead to the release could give the lease up before the file is closed.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        await this.file.close();
      } finally {
        await this.lease?.release();
      }
    })();
    return this.closing;
  }
}
