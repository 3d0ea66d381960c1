/**
 * The local form's sink (docs/design/nfc.md): writes a copy's chunks into a datastore this host
 * mounts, and keeps the copy's journal there (./journal.ts has the layout). Everything that makes a
 * copy durable, resumable and verified is here; the remote form's receiver runs this same sink over
 * its own datastore.
 *
 * - Each file is written to its staging file, created at its full size (truncate) so that holes stay
 *   sparse, and its chunk checksums to its sums file, positionally.
 * - The written prefix (the *frontier*) is the longest prefix of the plan whose every chunk was
 *   written; chunks written ahead of it (the copier's streams finish out of order) wait in a bounded
 *   set. The frontier stops at the end of a file until finishFile() verified and renamed it.
 * - sync() fdatasyncs the open staging and sums files, checks the epoch (the journal is read again:
 *   a later epoch fences this sink out), and only then replaces the journal with the new boundary.
 * - finishFile() reads the staging file back, checks every chunk against the source's checksums,
 *   renames it into place, fsyncs the directory and journals the file done with its digests.
 *
 * One writer per copy: the sink holds the write lease of the copy's lock file for its whole life (so
 * two sinks never replace one journal at once) and the write lease of each staging and sums file it
 * has open. A writer that lost its lease (stalled past its expiry) and finds a later epoch in the
 * journal at its next sync is COPY_FENCED from then on.
 */
import { FerryError, isFerryError } from '../lib/errors.js';
import { failpoint } from '../lib/failpoints.js';
import { COPY_AREA_DIR, DATASTORE_ROOT, type CopyArea, type Datastore, type DatastoreFile } from '../storage/datastore.js';
import { CHUNK_SHA256_BYTES, FileDigest, chunkBuffer, chunkCount, chunkLength, chunkSha256, isZeroChunk, zeroChunkSha256 } from './chunk-hash.js';
import {
  type CopyJournal, copyJournalPath, copyLockPath, copySumsDir, copySumsPath, endOfFile, journalView, newJournal, planDigestOf,
  readJournal, stagingPathOf, writeJournal,
} from './journal.js';
import {
  COPY_ID_PATTERN, MAX_COPY_EPOCHS, NFC_CHUNK_BYTES, compareBoundaries, copyPlanSchema, formatBoundary,
  type Boundary, type CopiedFile, type CopyJournalView, type CopyPlan,
} from './plan.js';
import type { CopySink, CopySinkOpen } from './sink.js';

/**
 * Chunks a sink accepts ahead of its written prefix: bounds the set that remembers them whoever
 * drives the sink (a remote peer drives a receiver's); the copier keeps far fewer in flight
 * (MAX_COPY_INFLIGHT_BYTES), so only a broken or hostile writer reaches it. 1 GiB of chunks.
 */
export const MAX_SINK_CHUNKS_AHEAD = 1024;
/** Chunks read back and hashed at once when a finished file is verified: enough to keep the disk and both cores busy. */
export const VERIFY_INFLIGHT_CHUNKS = 4;
/**
 * Chunks verified per batch (their checksums read at once, 512 bytes): also the step in which verification
 * progress is recorded, so that a stop loses at most this much of a long file's verification.
 */
const VERIFY_BATCH_CHUNKS = 16;

interface OpenFile {
  readonly staging: DatastoreFile;
  readonly sums: DatastoreFile;
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? DATASTORE_ROOT : path.slice(0, slash);
}

async function exists(area: CopyArea, path: string): Promise<boolean> {
  try {
    await area.stat(path);
    return true;
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return false;
    throw err;
  }
}

/** Opens `path` for writing, creating it (ALREADY_EXISTS from a concurrent creator: opened instead) when `create` allows. */
async function openWritable(area: CopyArea, path: string, sizeBytes: number | null): Promise<DatastoreFile> {
  if (await exists(area, path)) return area.open(path);
  try {
    const f = await area.open(path, { create: true });
    if (sizeBytes !== null && sizeBytes > 0) {
      try { await f.truncate(sizeBytes); } catch (err) { await f.close(); throw err; }
    }
    return f;
  } catch (err) {
    if (isFerryError(err, 'ALREADY_EXISTS')) return area.open(path);
    throw err;
  }
}

interface Digests {
  readonly source: FileDigest;
  readonly target: FileDigest;
}

/** How a verification goes: stop early when `halted()`, report each batch verified (the chunk verified up to). */
interface VerifyControl {
  readonly halted: () => boolean;
  readonly progress: (upToChunk: number) => void;
}

/**
 * Reads chunks [fromChunk, toChunk) of `file` back and checks each against its checksum in `sums`
 * (COPY_VERIFY_FAILED at the first that differs); `digests`, if given, gets each chunk's checksum
 * (source) and read-back hash (target) in order. Stops early when halted; answers the chunk it
 * verified up to.
 */
async function verifyChunks(
  file: DatastoreFile, sums: DatastoreFile, sizeBytes: number, fileIndex: number, fromChunk: number, toChunk: number,
  digests: Digests | null, control: VerifyControl,
): Promise<number> {
  const buffers = Array.from({ length: Math.min(VERIFY_INFLIGHT_CHUNKS, Math.max(1, toChunk - fromChunk)) }, chunkBuffer);
  for (let first = fromChunk; first < toChunk; first += VERIFY_BATCH_CHUNKS) {
    if (control.halted()) return first;
    const count = Math.min(VERIFY_BATCH_CHUNKS, toChunk - first);
    const expected = Buffer.allocUnsafe(count * CHUNK_SHA256_BYTES);
    await sums.read(first * CHUNK_SHA256_BYTES, expected);
    const got: Uint8Array[] = new Array<Uint8Array>(count);
    let next = 0;
    await Promise.all(buffers.map(async (buffer) => {
      for (let k = next++; k < count; k = next++) {
        const offset = (first + k) * NFC_CHUNK_BYTES;
        const data = buffer.subarray(0, chunkLength(sizeBytes, offset));
        await file.read(offset, data);
        got[k] = isZeroChunk(data) ? zeroChunkSha256(data.length) : await chunkSha256(data);
      }
    }));
    for (let k = 0; k < count; k++) {
      const want = expected.subarray(k * CHUNK_SHA256_BYTES, (k + 1) * CHUNK_SHA256_BYTES);
      const sum = got[k] ?? new Uint8Array(CHUNK_SHA256_BYTES);
      if (!want.equals(sum)) {
        throw new FerryError('COPY_VERIFY_FAILED', `${file.name}: the chunk at ${(first + k) * NFC_CHUNK_BYTES} read back does not match the source's checksum; the file is not renamed into place`, { fileIndex, offsetBytes: (first + k) * NFC_CHUNK_BYTES });
      }
      digests?.source.add(want);
      digests?.target.add(sum);
    }
    control.progress(first + count);
  }
  return toChunk;
}

/**
 * The two digests of a file whose chunks before `verifiedChunks` were read back and checked already
 * (by this sink in the background, or by an earlier host: the journal says so — their read-back hash
 * was their checksum), the rest read back and checked now.
 */
async function verifyFile(
  file: DatastoreFile, sums: DatastoreFile, sizeBytes: number, fileIndex: number, verifiedChunks = 0,
  control: VerifyControl = { halted: () => false, progress: () => undefined },
): Promise<{ sourceDigest: string; targetDigest: string }> {
  const n = chunkCount(sizeBytes);
  const sumsSize = await sums.size();
  if (sumsSize < n * CHUNK_SHA256_BYTES) {
    throw new FerryError('COPY_VERIFY_FAILED', `${file.name}: its checksum file holds ${Math.floor(sumsSize / CHUNK_SHA256_BYTES)} of its ${n} chunks' checksums`, { fileIndex });
  }
  const digests: Digests = { source: new FileDigest(), target: new FileDigest() };
  const before = Math.min(verifiedChunks, n);
  for (let first = 0; first < before; first += VERIFY_BATCH_CHUNKS) {
    const known = Buffer.allocUnsafe(Math.min(VERIFY_BATCH_CHUNKS, before - first) * CHUNK_SHA256_BYTES);
    await sums.read(first * CHUNK_SHA256_BYTES, known);
    digests.source.add(known);
    digests.target.add(known);
  }
  if (await verifyChunks(file, sums, sizeBytes, fileIndex, before, n, digests, control) < n) {
    throw new FerryError('CANCELLED', `${file.name}: its verification was cut short (the sink is closing)`, { fileIndex });
  }
  return { sourceDigest: digests.source.hex(), targetDigest: digests.target.hex() };
}

class LocalSink implements CopySink {
  readonly resumeAt: Boundary;
  /** The written prefix: every chunk before it was written (durable only once a sync said so). */
  private frontier: Boundary;
  /** Chunk offsets written beyond the frontier, by file (at most MAX_SINK_CHUNKS_AHEAD in all). */
  private readonly ahead = new Map<number, Set<number>>();
  private aheadCount = 0;
  private readonly open = new Map<number, Promise<OpenFile>>();
  private readonly finishing = new Set<number>();
  /** Journal writes (sync, finishFile, complete) one at a time, in order. */
  private tail: Promise<unknown> = Promise.resolve();
  private fenced: FerryError | null = null;
  private closing: Promise<void> | null = null;
  /**
   * Chunks of the unfinished files read back and checked so far, from the start of each (the journal's
   * verifiedBytes of the boundary's file, then this sink's background verification of what each sync
   * made durable): a finish reads back only the rest, and a hand-off in the middle of a long file's
   * verification loses little of it.
   */
  private readonly verified = new Map<number, number>();
  private verifier: Promise<void> | null = null;
  private verifyError: Error | null = null;

  constructor(
    private readonly datastore: Datastore,
    private readonly area: CopyArea,
    private readonly plan: CopyPlan,
    private readonly epoch: number,
    private journal: CopyJournal,
    private readonly lock: DatastoreFile,
  ) {
    this.resumeAt = { ...journal.boundary };
    this.frontier = { ...journal.boundary };
    const verifiedBytes = journal.files[journal.boundary.fileIndex]?.verifiedBytes ?? 0;
    if (verifiedBytes > 0) this.verified.set(journal.boundary.fileIndex, chunkCount(verifiedBytes));
  }

  async write(fileIndex: number, offsetBytes: number, data: Uint8Array, sha256: Uint8Array): Promise<void> {
    const length = this.checkChunk(fileIndex, offsetBytes, data.length);
    if (sha256.length !== CHUNK_SHA256_BYTES) throw new FerryError('INVALID_ARGUMENT', `a chunk's checksum is ${CHUNK_SHA256_BYTES} bytes, not ${sha256.length}`);
    const f = await this.file(fileIndex);
    this.usable();
    await Promise.all([f.staging.write(offsetBytes, data), f.sums.write((offsetBytes / NFC_CHUNK_BYTES) * CHUNK_SHA256_BYTES, sha256)]);
    this.mark(fileIndex, offsetBytes, length);
  }

  async hole(fileIndex: number, offsetBytes: number, lengthBytes: number): Promise<void> {
    const length = this.checkChunk(fileIndex, offsetBytes, lengthBytes);
    const f = await this.file(fileIndex);
    this.usable();
    await f.sums.write((offsetBytes / NFC_CHUNK_BYTES) * CHUNK_SHA256_BYTES, zeroChunkSha256(length));
    this.mark(fileIndex, offsetBytes, length);
  }

  sync(): Promise<Boundary> {
    return this.exclusive(async () => {
      this.usable();
      if (this.verifyError !== null) throw this.verifyError;
      // Fenced before anything: a later epoch's host may be writing these files now (its lease over ours).
      await this.checkEpoch();
      const b = { ...this.frontier };
      // Data first: every chunk behind `b` completed before this point, so these flushes cover it.
      const files = await Promise.all([...this.open.values()].map((p) => p.catch(() => null)));
      await Promise.all(files.flatMap((f) => (f === null ? [] : [f.staging.flush(), f.sums.flush()])));
      await this.checkEpoch();
      const verifiedBytes = this.verifiedBytes(b.fileIndex);
      if (compareBoundaries(b, this.journal.boundary) > 0 || verifiedBytes !== (this.journal.files[b.fileIndex]?.verifiedBytes ?? 0)) {
        await failpoint('nfc.sink.before-journal');
        const files = this.journal.files.map((f) => (f.index === b.fileIndex && verifiedBytes > 0 ? { ...f, verifiedBytes } : f));
        await this.saveJournal({ ...this.journal, files, boundary: b });
        await failpoint('nfc.sink.after-sync');
      }
      this.startVerifier();
      return { ...this.journal.boundary };
    });
  }

  private noteVerified(fileIndex: number, upToChunk: number): void {
    if (upToChunk > (this.verified.get(fileIndex) ?? 0)) this.verified.set(fileIndex, upToChunk);
  }

  /** Bytes of file `fileIndex` read back and checked so far (0 for none; its size at most). */
  private verifiedBytes(fileIndex: number): number {
    const size = this.plan.files[fileIndex]?.sizeBytes ?? 0;
    return Math.min(size, (this.verified.get(fileIndex) ?? 0) * NFC_CHUNK_BYTES);
  }

  /**
   * Reads back and checks, in the background, the chunks of the boundary's file that the last sync
   * made durable and no one has checked yet. A finish of that file (which goes on from where this
   * got to) or a close halts it at its next batch; what it found wrong fails the next sync or finish.
   */
  private startVerifier(): void {
    const b = this.journal.boundary;
    const f = this.plan.files[b.fileIndex];
    const open = this.open.get(b.fileIndex);
    if (this.verifier !== null || this.closing !== null || f === undefined || open === undefined || this.finishing.has(b.fileIndex)) return;
    const i = b.fileIndex;
    const from = this.verified.get(i) ?? 0;
    const to = b.offsetBytes >= f.sizeBytes ? chunkCount(f.sizeBytes) : b.offsetBytes / NFC_CHUNK_BYTES;
    if (to <= from) return;
    this.verifier = (async () => {
      const file = await open;
      await verifyChunks(file.staging, file.sums, f.sizeBytes, i, from, to, null, {
        halted: () => this.closing !== null || this.finishing.has(i),
        progress: (upTo) => { this.noteVerified(i, upTo); },
      });
    })().catch((err: unknown) => {
      // A read that a close cut short is not a finding.
      if (this.verifyError === null && this.closing === null) this.verifyError = err instanceof Error ? err : new FerryError('INTERNAL', String(err));
    }).finally(() => { this.verifier = null; });
  }

  async finishFile(fileIndex: number): Promise<CopiedFile> {
    this.usable();
    const entry = this.journal.files[fileIndex];
    const planned = this.plan.files[fileIndex];
    if (entry === undefined || planned === undefined) throw new FerryError('INVALID_ARGUMENT', `the copy has no file ${fileIndex}`);
    if (entry.done) return this.copied(fileIndex);
    const end = endOfFile(this.journal, fileIndex);
    if (compareBoundaries(this.frontier, end) !== 0) {
      throw new FerryError('INVALID_ARGUMENT', `file ${fileIndex} cannot be finished: its chunks are written up to ${formatBoundary(this.frontier)}, not to its end`);
    }
    if (this.finishing.has(fileIndex)) throw new FerryError('INVALID_ARGUMENT', `file ${fileIndex} is being finished already`);
    this.finishing.add(fileIndex);
    try {
      await this.verifier; // halts at its next batch (the file is finishing); the finish goes on from there
      if (this.verifyError !== null) throw this.verifyError;
      await this.verifyAndPlace(fileIndex, planned.path, planned.sizeBytes);
      return this.copied(fileIndex);
    } finally {
      this.finishing.delete(fileIndex);
    }
  }

  complete(): Promise<readonly CopiedFile[]> {
    return this.exclusive(async () => {
      this.usable();
      if (this.journal.boundary.fileIndex !== this.plan.files.length) {
        throw new FerryError('INVALID_ARGUMENT', `copy ${this.plan.copyId} cannot complete: it is at ${formatBoundary(this.journal.boundary)}, not every file is finished`);
      }
      if (!this.journal.complete) {
        await this.checkEpoch();
        await this.saveJournal({ ...this.journal, complete: true });
        // The checksums are in the journal's digests now; the per-chunk files are not needed any more.
        await removeSums(this.area, this.plan.copyId);
      }
      return this.plan.files.map((_, i) => this.copied(i));
    });
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.tail.catch(() => undefined);
      await this.verifier;
      const files = await Promise.all([...this.open.values()].map((p) => p.catch(() => null)));
      this.open.clear();
      const closes: Array<Promise<void>> = files.flatMap((f) => (f === null ? [] : [f.staging.close(), f.sums.close()]));
      const results = await Promise.allSettled(closes);
      await this.lock.close();
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
    })();
    return this.closing;
  }

  async discard(): Promise<void> {
    await this.close();
    await discardCopy(this.datastore, this.plan.copyId);
  }

  /** Checks a chunk's place and length against the plan and the sink's state; answers its length. */
  private checkChunk(fileIndex: number, offsetBytes: number, lengthBytes: number): number {
    this.usable();
    const f = this.plan.files[fileIndex];
    if (f === undefined) throw new FerryError('INVALID_ARGUMENT', `the copy has no file ${fileIndex}`);
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || offsetBytes % NFC_CHUNK_BYTES !== 0 || offsetBytes >= f.sizeBytes) {
      throw new FerryError('INVALID_ARGUMENT', `file ${fileIndex} has no chunk at ${offsetBytes} (chunks are ${NFC_CHUNK_BYTES} bytes, the file ${f.sizeBytes})`);
    }
    const length = chunkLength(f.sizeBytes, offsetBytes);
    if (lengthBytes !== length) throw new FerryError('INVALID_ARGUMENT', `the chunk of file ${fileIndex} at ${offsetBytes} is ${length} bytes, not ${lengthBytes}`);
    if (this.journal.files[fileIndex]?.done === true || this.finishing.has(fileIndex) || fileIndex < this.frontier.fileIndex) {
      throw new FerryError('INVALID_ARGUMENT', `file ${fileIndex} is finished (or being finished): no more chunks`);
    }
    // Behind the durable boundary a chunk is written, durable and perhaps read back and checked already.
    if (compareBoundaries({ fileIndex, offsetBytes }, this.journal.boundary) < 0) {
      throw new FerryError('INVALID_ARGUMENT', `the chunk of file ${fileIndex} at ${offsetBytes} is behind the copy's durable boundary (${formatBoundary(this.journal.boundary)})`);
    }
    // (The chunk at the prefix itself is always taken: it is the one that lets the prefix run over the others.)
    const atFrontier = fileIndex === this.frontier.fileIndex && offsetBytes === this.frontier.offsetBytes;
    if (this.aheadCount >= MAX_SINK_CHUNKS_AHEAD && !atFrontier) {
      throw new FerryError('INVALID_ARGUMENT', `more than ${MAX_SINK_CHUNKS_AHEAD} chunks written ahead of the copy's written prefix (${formatBoundary(this.frontier)})`);
    }
    return length;
  }

  /** Records a written chunk and moves the frontier over every chunk now contiguous with it. */
  private mark(fileIndex: number, offsetBytes: number, lengthBytes: number): void {
    if (fileIndex === this.frontier.fileIndex && offsetBytes === this.frontier.offsetBytes) {
      this.frontier = { fileIndex, offsetBytes: offsetBytes + lengthBytes };
      this.advance();
      return;
    }
    if (compareBoundaries({ fileIndex, offsetBytes }, this.frontier) < 0) return; // written again behind the frontier: same bytes, same place
    let set = this.ahead.get(fileIndex);
    if (set === undefined) { set = new Set(); this.ahead.set(fileIndex, set); }
    if (!set.has(offsetBytes)) { set.add(offsetBytes); this.aheadCount++; }
  }

  /** Moves the frontier over the chunks written ahead of it, up to the end of its file. */
  private advance(): void {
    const { fileIndex } = this.frontier;
    const set = this.ahead.get(fileIndex);
    const size = this.plan.files[fileIndex]?.sizeBytes ?? 0;
    let offsetBytes = this.frontier.offsetBytes;
    while (set !== undefined && offsetBytes < size && set.delete(offsetBytes)) {
      this.aheadCount--;
      offsetBytes += chunkLength(size, offsetBytes);
    }
    if (set?.size === 0) this.ahead.delete(fileIndex);
    this.frontier = { fileIndex, offsetBytes };
  }

  /** File `fileIndex`'s staging and sums files, opened (leases taken) at its first chunk. */
  private file(fileIndex: number): Promise<OpenFile> {
    let p = this.open.get(fileIndex);
    if (p === undefined) {
      p = this.openFile(fileIndex);
      this.open.set(fileIndex, p);
      p.catch(() => { if (this.open.get(fileIndex) === p) this.open.delete(fileIndex); });
    }
    return p;
  }

  private async openFile(fileIndex: number): Promise<OpenFile> {
    const f = this.plan.files[fileIndex];
    if (f === undefined) throw new FerryError('INVALID_ARGUMENT', `the copy has no file ${fileIndex}`);
    const parent = parentOf(f.path);
    if (parent !== DATASTORE_ROOT) await this.area.mkdir(parent);
    // Both at once: each takes a lease (a small fsync), and the file system commits the two together.
    const [staging, sums] = await Promise.allSettled([
      openWritable(this.area, stagingPathOf(f.path, this.plan.copyId), f.sizeBytes),
      openWritable(this.area, copySumsPath(this.plan.copyId, fileIndex), null),
    ]);
    try {
      if (staging.status === 'rejected') throw staging.reason;
      if (sums.status === 'rejected') throw sums.reason;
      const size = await staging.value.size();
      if (size !== f.sizeBytes) {
        throw new FerryError('COPY_JOURNAL_INVALID', `${staging.value.name}: the staging file is ${size} bytes, not the ${f.sizeBytes} of the plan`, { copyId: this.plan.copyId, reason: 'staging' });
      }
      return { staging: staging.value, sums: sums.value };
    } catch (err) {
      await Promise.all([staging, sums].flatMap((r) => (r.status === 'fulfilled' ? [r.value.close()] : [])));
      throw err;
    }
  }

  /** Opens the file the copy resumes in (its leases taken) now, when it has begun or is to begin with a chunk. */
  async openResumeFile(): Promise<void> {
    const { fileIndex, offsetBytes } = this.frontier;
    const f = this.plan.files[fileIndex];
    if (f === undefined || f.sizeBytes === 0) return;
    if (offsetBytes === 0 || await exists(this.area, stagingPathOf(f.path, this.plan.copyId))) await this.file(fileIndex);
  }

  private async closeFile(fileIndex: number): Promise<void> {
    const p = this.open.get(fileIndex);
    if (p === undefined) return;
    this.open.delete(fileIndex);
    const f = await p;
    await Promise.all([f.staging.close(), f.sums.close()]);
  }

  /**
   * Verifies file `fileIndex` and puts it at its path. The staging file is read back; when it is gone
   * but the path exists (a crash after the rename, before the journal said so), or the rename finds the
   * path taken (a crash between its link and unlink), the file at the path is verified instead — it
   * is then byte for byte what the copy would put there, else ALREADY_EXISTS.
   */
  private async verifyAndPlace(fileIndex: number, path: string, sizeBytes: number): Promise<void> {
    const staging = stagingPathOf(path, this.plan.copyId);
    // An empty file has no chunk that would have made its staging file: it is made here.
    const begun = this.open.has(fileIndex) || await exists(this.area, staging) || (sizeBytes === 0 && !(await exists(this.area, path)));
    if (begun) {
      const f = await this.file(fileIndex);
      await Promise.all([f.staging.flush(), f.sums.flush()]);
      // Its progress is recorded as it goes (and journaled by the syncs meanwhile): a stop in the middle
      // of a long file's verification leaves the next host only the rest of it.
      const digests = await verifyFile(f.staging, f.sums, sizeBytes, fileIndex, this.verified.get(fileIndex) ?? 0, {
        halted: () => this.closing !== null,
        progress: (upTo) => { this.noteVerified(fileIndex, upTo); },
      });
      // Placed between syncs (a sync flushes every open file: this one must not close under it), and
      // not once the sink is closing: a copier that stopped does not wait for a finish it began — the
      // next host finishes the file again — while close() waits for a placement under way, so that the
      // next host never finds it half done.
      await this.exclusive(async () => {
        this.usable();
        await this.closeFile(fileIndex);
        try {
          await this.area.rename(staging, path);
        } catch (err) {
          if (!isFerryError(err, 'ALREADY_EXISTS')) throw err;
          await this.verifyInPlace(fileIndex, path, sizeBytes);
          await this.area.remove(staging);
        }
        await this.placed(fileIndex, path, digests);
      });
      return;
    }
    if (await exists(this.area, path)) {
      const digests = await this.verifyInPlace(fileIndex, path, sizeBytes);
      await this.exclusive(async () => { this.usable(); await this.placed(fileIndex, path, digests); });
      return;
    }
    throw new FerryError('COPY_JOURNAL_INVALID', `copy ${this.plan.copyId}: the staging file of file ${fileIndex} (${staging}) is missing`, { copyId: this.plan.copyId, reason: 'staging' });
  }

  /** File `fileIndex` is at its path, verified: its directory is made durable, then the journal says it is done. */
  private async placed(fileIndex: number, path: string, digests: { sourceDigest: string; targetDigest: string }): Promise<void> {
    await this.area.syncDirectory(parentOf(path));
    await this.checkEpoch();
    const files = this.journal.files.map((f) => (f.index === fileIndex ? { ...f, done: true, ...digests, verifiedBytes: f.sizeBytes } : f));
    await this.saveJournal({ ...this.journal, files, boundary: { fileIndex: fileIndex + 1, offsetBytes: 0 } });
    this.verified.delete(fileIndex);
    this.frontier = { fileIndex: fileIndex + 1, offsetBytes: 0 };
    this.advance();
  }

  private async verifyInPlace(fileIndex: number, path: string, sizeBytes: number): Promise<{ sourceDigest: string; targetDigest: string }> {
    const target = await this.area.open(path, { readOnly: true });
    try {
      const sums = await this.area.open(copySumsPath(this.plan.copyId, fileIndex), { readOnly: true });
      try {
        if (await target.size() !== sizeBytes) throw new FerryError('ALREADY_EXISTS', `${target.name} already exists and is not the copy's file (its size differs); the copy does not overwrite it`);
        return await verifyFile(target, sums, sizeBytes, fileIndex).catch((err: unknown) => {
          throw isFerryError(err, 'COPY_VERIFY_FAILED') ? new FerryError('ALREADY_EXISTS', `${target.name} already exists and is not the copy's file; the copy does not overwrite it`) : err;
        });
      } finally {
        await sums.close();
      }
    } finally {
      await target.close();
    }
  }

  private copied(fileIndex: number): CopiedFile {
    const f = this.journal.files[fileIndex];
    if (f?.done !== true || f.sourceDigest === undefined || f.targetDigest === undefined) throw new FerryError('INTERNAL', `file ${fileIndex} is not finished`);
    return { path: f.path, sizeBytes: f.sizeBytes, sourceDigest: f.sourceDigest, targetDigest: f.targetDigest };
  }

  /** Writes this sink's (later) epoch into the journal: from now on, sinks of earlier epochs are fenced. */
  takeEpoch(): Promise<void> {
    return this.exclusive(() => this.saveJournal({ ...this.journal, epoch: this.epoch }));
  }

  /** LEASE_LOST if the copy's lock is lost; COPY_FENCED (from now on) if a later epoch opened the journal. */
  private async checkEpoch(): Promise<void> {
    // The journal first: a sink whose lease was broken because a later epoch took over is told so (COPY_FENCED), not just LEASE_LOST.
    const j = await readJournal(this.area, this.plan.copyId);
    if (j === null || j.epoch > this.epoch) {
      this.fenced = new FerryError('COPY_FENCED', j === null
        ? `copy ${this.plan.copyId}: its journal was removed (the copy was discarded); this host's part under epoch ${this.epoch} writes no more`
        : `copy ${this.plan.copyId}: epoch ${j.epoch} opened its journal after this host's epoch ${this.epoch}; this part writes no more`,
      { copyId: this.plan.copyId, epoch: this.epoch, journalEpoch: j?.epoch ?? null });
      throw this.fenced;
    }
    this.lock.lease?.check();
  }

  private async saveJournal(j: CopyJournal): Promise<void> {
    await writeJournal(this.area, j);
    this.journal = j;
  }

  private usable(): void {
    if (this.fenced !== null) throw this.fenced;
    if (this.closing !== null) throw new FerryError('INVALID_ARGUMENT', `copy ${this.plan.copyId}: the sink is closed`);
  }

  private exclusive<T>(op: () => Promise<T>): Promise<T> {
    const run = this.tail.then(op, op);
    this.tail = run.catch(() => undefined);
    return run;
  }
}

async function removeSums(area: CopyArea, copyId: string): Promise<void> {
  const dir = copySumsDir(copyId);
  let listing;
  try {
    listing = await area.list(dir);
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return;
    throw err;
  }
  for (const e of listing.entries) await removeIfThere(area, `${dir}/${e.name}`);
  try {
    await removeIfThere(area, dir);
  } catch (err) {
    // Not empty: a killed writer's lease renewal left a temporary lock file there (the lease module's,
    // hidden from list). The copy is done with the directory all the same; it stays, empty to users.
    if (!isFerryError(err, 'INVALID_ARGUMENT')) throw err;
  }
}

async function removeIfThere(area: CopyArea, path: string): Promise<void> {
  try {
    await area.remove(path);
  } catch (err) {
    if (!isFerryError(err, 'NOT_FOUND')) throw err;
  }
}

function checkCopyId(copyId: string): void {
  if (!COPY_ID_PATTERN.test(copyId)) throw new FerryError('INVALID_ARGUMENT', `copy id "${copyId.slice(0, 40)}" is not 32 lowercase hex digits`);
}

/** Takes the copy's lock (its write lease: DISK_LOCKED while another sink or discard holds it). */
async function takeLock(area: CopyArea, copyId: string): Promise<DatastoreFile> {
  await area.mkdir(COPY_AREA_DIR);
  return openWritable(area, copyLockPath(copyId), null);
}

/**
 * Opens the sink of `open.plan` in `datastore` under `open.epoch`: a new copy's journal is created
 * (ALREADY_EXISTS if a target path is taken); an existing one must hold the same plan (COPY_CONFLICT)
 * and no later epoch (COPY_FENCED), and its boundary is where the copy resumes. DISK_LOCKED while
 * another sink of the copy is open (its lock's lease is live).
 */
export async function openLocalSink(datastore: Datastore, open: CopySinkOpen): Promise<CopySink> {
  const parsed = copyPlanSchema.safeParse(open.plan);
  if (!parsed.success) throw new FerryError('INVALID_ARGUMENT', `copy plan: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
  const plan = open.plan;
  if (!Number.isInteger(open.epoch) || open.epoch < 1 || open.epoch > MAX_COPY_EPOCHS) throw new FerryError('INVALID_ARGUMENT', `epoch ${open.epoch} is not 1..${MAX_COPY_EPOCHS}`);
  const area = datastore.copyArea();
  const lock = await takeLock(area, plan.copyId);
  let journal: CopyJournal | null;
  try {
    journal = await readJournal(area, plan.copyId);
    if (journal === null) {
      for (const f of plan.files) {
        if (await exists(area, f.path)) throw new FerryError('ALREADY_EXISTS', `${datastore.name}:${f.path} already exists; a copy does not overwrite a file`, { path: f.path });
      }
      journal = newJournal(plan, open.epoch);
      await area.mkdir(copySumsDir(plan.copyId));
      await writeJournal(area, journal);
    } else {
      if (journal.planDigest !== planDigestOf(plan)) {
        throw new FerryError('COPY_CONFLICT', `copy ${plan.copyId}: the journal in ${datastore.name} holds another plan (other files, sizes or modification times)`, { copyId: plan.copyId });
      }
      if (journal.epoch > open.epoch) {
        throw new FerryError('COPY_FENCED', `copy ${plan.copyId}: its journal was opened under epoch ${journal.epoch}, after this part's epoch ${open.epoch}`, { copyId: plan.copyId, epoch: open.epoch, journalEpoch: journal.epoch });
      }
      if (!journal.complete) await checkResumable(area, journal);
    }
  } catch (err) {
    await lock.close();
    throw err;
  }
  const sink = new LocalSink(datastore, area, plan, open.epoch, journal, lock);
  try {
    // The resume file's leases and the new epoch at once: their small fsyncs are committed together.
    const epochWritten = journal.epoch < open.epoch ? sink.takeEpoch() : Promise.resolve();
    const [opened, written] = await Promise.allSettled([journal.complete ? Promise.resolve() : sink.openResumeFile(), epochWritten]);
    if (written.status === 'rejected') throw written.reason;
    if (opened.status === 'rejected') throw opened.reason;
  } catch (err) {
    await sink.close();
    throw err;
  }
  return sink;
}

/**
 * What an existing journal's boundary needs on disk: the checksums of every chunk before it, and (for a
 * file begun) its staging file; and no later file's path taken.
 */
async function checkResumable(area: CopyArea, j: CopyJournal): Promise<void> {
  const { fileIndex, offsetBytes } = j.boundary;
  const at = j.files[fileIndex];
  if (at !== undefined && offsetBytes > 0) {
    const sums = await area.stat(copySumsPath(j.copyId, fileIndex)).catch(() => null);
    const need = chunkCount(offsetBytes) * CHUNK_SHA256_BYTES;
    if (sums === null || sums.sizeBytes < need) {
      throw new FerryError('COPY_JOURNAL_INVALID', `copy ${j.copyId}: the journal's boundary ${formatBoundary(j.boundary)} needs ${need} bytes of checksums, the checksum file holds ${sums?.sizeBytes ?? 'none'}`, { copyId: j.copyId, reason: 'sums' });
    }
  }
  for (const f of j.files.slice(fileIndex)) {
    // The boundary's own file may be at the path already when it is at that file's end (see verifyAndPlace).
    if (f.index === fileIndex && offsetBytes === f.sizeBytes) continue;
    if (await exists(area, f.path)) throw new FerryError('ALREADY_EXISTS', `${area.name}:${f.path} already exists; a copy does not overwrite a file`, { path: f.path });
  }
}

/** What the journal of `copyId` in `datastore` says (COPY_JOURNAL_INVALID if it cannot be trusted). */
export async function readCopyJournal(datastore: Datastore, copyId: string): Promise<CopyJournalView> {
  checkCopyId(copyId);
  return journalView(copyId, await readJournal(datastore.copyArea(), copyId));
}

/**
 * Removes a copy's staging files, checksum files and journal (finished files stay). A copy being
 * written (its lock's or a staging file's lease live) is DISK_LOCKED. A journal that cannot be
 * trusted is removed all the same (with the checksums): the staging files it named cannot be found
 * then, and stay (under their reserved names) — the one thing a damaged journal costs.
 */
export async function discardCopy(datastore: Datastore, copyId: string): Promise<CopyJournalView> {
  checkCopyId(copyId);
  const area = datastore.copyArea();
  const lock = await takeLock(area, copyId);
  try {
    let journal: CopyJournal | null = null;
    try {
      journal = await readJournal(area, copyId);
    } catch (err) {
      if (!isFerryError(err, 'COPY_JOURNAL_INVALID')) throw err;
    }
    for (const f of journal?.files ?? []) if (!f.done) await removeIfThere(area, stagingPathOf(f.path, copyId));
    await removeSums(area, copyId);
    await removeIfThere(area, copyJournalPath(copyId));
  } finally {
    await lock.close();
  }
  await removeIfThere(area, copyLockPath(copyId));
  return journalView(copyId, null);
}
