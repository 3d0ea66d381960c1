/**
 * A copy's source: the plan's files in the source datastore, held by their write leases for the
 * duration of this host's part (docs/design/nfc.md, "The source: held by leases") — a VM cannot open
 * a disk being copied for writing and a snapshot cannot consolidate into it — and opened for reading
 * only. Each file's size and modification time must stay the plan's: checked when its lease is
 * taken, and again whenever the copier asks (at each sync and at each file's end); a file changed
 * anyway, by something that ignores leases, is SOURCE_CHANGED.
 */
import { FerryError } from '../lib/errors.js';
import type { Datastore, DatastoreFile } from '../storage/datastore.js';
import type { CopyFile, CopyPlan } from './plan.js';

export interface CopySource {
  readonly plan: CopyPlan;
  /** Reads exactly buf.length bytes of file `fileIndex` at `offsetBytes` (the last chunk of a file is shorter: the caller sizes buf). */
  read(fileIndex: number, offsetBytes: number, buf: Uint8Array): Promise<void>;
  /** SOURCE_CHANGED if the file's size or modification time is not the plan's. */
  check(fileIndex: number): Promise<void>;
  /** Gives the leases up and closes the files. Idempotent. */
  close(): Promise<void>;
}

class SourceFiles implements CopySource {
  private closing: Promise<void> | null = null;

  constructor(private readonly datastore: Datastore, readonly plan: CopyPlan, private readonly files: readonly DatastoreFile[]) {}

  async read(fileIndex: number, offsetBytes: number, buf: Uint8Array): Promise<void> {
    if (this.closing !== null) throw new FerryError('INVALID_ARGUMENT', `the source of copy ${this.plan.copyId} is closed`);
    const file = this.files[fileIndex];
    const planned = this.plan.files[fileIndex];
    if (file === undefined || planned === undefined) throw new FerryError('INVALID_ARGUMENT', `the copy has no file ${fileIndex}`);
    if (offsetBytes < 0 || offsetBytes + buf.length > planned.sizeBytes) {
      throw new FerryError('INVALID_ARGUMENT', `${file.name}: bytes [${offsetBytes}, ${offsetBytes + buf.length}) are outside its ${planned.sizeBytes}`);
    }
    await file.read(offsetBytes, buf);
  }

  async check(fileIndex: number): Promise<void> {
    const planned = this.plan.files[fileIndex];
    if (planned === undefined) throw new FerryError('INVALID_ARGUMENT', `the copy has no file ${fileIndex}`);
    await checkUnchanged(this.datastore, planned);
  }

  close(): Promise<void> {
    this.closing ??= closeAll(this.files);
    return this.closing;
  }
}

async function checkUnchanged(datastore: Datastore, f: CopyFile): Promise<void> {
  const st = await datastore.stat(f.path);
  if (st.kind !== 'file' || st.sizeBytes !== f.sizeBytes || st.modifiedMs !== f.modifiedMs) {
    throw new FerryError('SOURCE_CHANGED', `${datastore.name}:${f.path} changed under the copy: it is ${st.kind === 'file' ? `${st.sizeBytes} bytes modified at ${new Date(st.modifiedMs).toISOString()}` : `a ${st.kind}`}, the plan says ${f.sizeBytes} bytes modified at ${new Date(f.modifiedMs).toISOString()}`, {
      path: f.path, sizeBytes: st.sizeBytes, modifiedMs: st.modifiedMs, plannedSizeBytes: f.sizeBytes, plannedModifiedMs: f.modifiedMs,
    });
  }
}

async function closeAll(files: readonly DatastoreFile[]): Promise<void> {
  const results = await Promise.allSettled(files.map((f) => f.close()));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
}

/** Takes the write lease of every file of the plan (DISK_LOCKED if anyone holds a live one — e.g. a running VM's top disk) without opening it for writing, opens it for reading, checks size and mtime (SOURCE_CHANGED). Releases what it took if any step fails. */
export async function openCopySource(datastore: Datastore, plan: CopyPlan): Promise<CopySource> {
  // All at once: each lease take is a small fsync, and the file system commits concurrent ones together.
  const opened = await Promise.allSettled(plan.files.map(async (f) => {
    const file = await datastore.open(f.path, { readOnly: true, lease: true });
    try {
      // After the lease: from here on nobody who respects leases changes it, so what is checked now holds.
      await checkUnchanged(datastore, f);
    } catch (err) {
      await file.close();
      throw err;
    }
    return file;
  }));
  const files = opened.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = opened.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed === undefined) return new SourceFiles(datastore, plan, files);
  await closeAll(files).catch(() => undefined);
  const err: unknown = failed.reason;
  if (err instanceof FerryError && err.code === 'DISK_LOCKED') {
    throw new FerryError('DISK_LOCKED', `${err.message} — a disk a VM is writing cannot be copied; copy a snapshot's read-only base instead`, err.details);
  }
  throw err;
}
