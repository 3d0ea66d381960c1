/** A BlockFile over a local file (node:fs FileHandle): positional I/O, fsync on flush. */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { FerryError, errnoCode, errorMessage } from '../lib/errors.js';
import type { BlockFile } from './block-file.js';

export interface OpenLocalFileOptions {
  readonly readOnly?: boolean;
  /** Create the file (it must not exist yet: an existing disk is never overwritten by a create). */
  readonly create?: boolean;
  /** Refuse (STORE_IO) if the last component is a symlink: a datastore opens the real path it checked. */
  readonly noFollow?: boolean;
}

export class LocalFile implements BlockFile {
  private closed = false;

  private constructor(readonly name: string, private readonly fh: FileHandle, readonly readOnly: boolean) {}

  static async open(path: string, options: OpenLocalFileOptions = {}, name: string = path): Promise<LocalFile> {
    const readOnly = options.readOnly === true;
    const { O_CREAT, O_EXCL, O_RDWR, O_RDONLY, O_NOFOLLOW } = constants;
    const flags = (options.create === true ? O_CREAT | O_EXCL | O_RDWR : readOnly ? O_RDONLY : O_RDWR) | (options.noFollow === true ? O_NOFOLLOW : 0);
    try {
      return new LocalFile(name, await open(path, flags), readOnly);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT') throw new FerryError('NOT_FOUND', `${name}: no such file`);
      if (code === 'EEXIST') throw new FerryError('ALREADY_EXISTS', `${name} already exists`);
      throw new FerryError('STORE_IO', `cannot open ${name}: ${errorMessage(err)}`);
    }
  }

  async read(position: number, buf: Uint8Array): Promise<void> {
    this.check();
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.io('read', () => this.fh.read(buf, done, buf.length - done, position + done));
      if (bytesRead === 0) { buf.fill(0, done); return; } // past the end: zeros
      done += bytesRead;
    }
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.check();
    if (this.readOnly) throw new FerryError('STORE_IO', `${this.name} is open read-only`);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.io('write', () => this.fh.write(data, done, data.length - done, position + done));
      done += bytesWritten;
    }
  }

  async flush(): Promise<void> {
    this.check();
    if (this.readOnly) return;
    await this.io('flush', () => this.fh.sync());
  }

  async size(): Promise<number> {
    this.check();
    return (await this.io('stat', () => this.fh.stat())).size;
  }

  async truncate(length: number): Promise<void> {
    this.check();
    if (this.readOnly) throw new FerryError('STORE_IO', `${this.name} is open read-only`);
    await this.io('truncate', () => this.fh.truncate(length));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }

  private check(): void {
    if (this.closed) throw new FerryError('STORE_IO', `${this.name} is closed`);
  }

  private async io<T>(what: string, op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (err) {
      throw new FerryError('STORE_IO', `${what} of ${this.name} failed: ${errorMessage(err)}`);
    }
  }
}
