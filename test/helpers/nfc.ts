/**
 * Shared by the network file copy tests, the crash child and the benchmark: temp datastores (source
 * and target, each mountable by several "hosts"), source files with known content (random, sparse,
 * empty), plans built from what the source holds, the digest a file must get computed independently
 * of src/nfc (plain SHA-256 over each 1 MiB chunk's SHA-256), and a local copy run end to end.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Datastore } from '../../src/storage/datastore.js';
import type { LeaseOwner, LeaseTiming } from '../../src/storage/lease.js';
import { LocalDatastore } from '../../src/storage/local-datastore.js';
import { CopyJob, type CopyJobOptions } from '../../src/nfc/copier.js';
import { openLocalSink } from '../../src/nfc/local-sink.js';
import { NFC_CHUNK_BYTES, type CopyJobRecord, type CopyPlan } from '../../src/nfc/plan.js';
import type { CopySink } from '../../src/nfc/sink.js';
import { openCopySource } from '../../src/nfc/source-files.js';
import { CRASH_LEASE_TIMING, retryWhileLocked } from './consolidate-crash.js';

export const HOST_A: LeaseOwner = { hostName: 'a', hostId: 'aaaaaaaaaaaaaaaa' };
export const HOST_B: LeaseOwner = { hostName: 'b', hostId: 'bbbbbbbbbbbbbbbb' };
/** Short leases, the crash tests' (a killed copier's leases expire in a moment; a loaded machine does not lose a live one). */
export const NFC_TEST_TIMING: LeaseTiming = CRASH_LEASE_TIMING;
/** Waits out a killed copier's leases (DISK_LOCKED until their expiry), under NFC_TEST_TIMING. */
export { retryWhileLocked };

export interface NfcDirs {
  readonly base: string;
  /** The source datastore's directory. */
  readonly src: string;
  /** The target datastore's directory. */
  readonly dst: string;
  cleanup(): Promise<void>;
}

export async function nfcDirs(prefix = 'ferry-nfc-'): Promise<NfcDirs> {
  const base = await mkdtemp(join(tmpdir(), prefix));
  const src = join(base, 'src');
  const dst = join(base, 'dst');
  await mkdir(src);
  await mkdir(dst);
  return { base, src, dst, cleanup: () => rm(base, { recursive: true, force: true }) };
}

export function mountAs(root: string, name: string, owner: LeaseOwner, timing: LeaseTiming = NFC_TEST_TIMING): Promise<LocalDatastore> {
  return LocalDatastore.mount(name, root, { owner, leaseTiming: timing });
}

/** A file's content: `random` bytes, or `sparse` (a hole of sizeBytes with random data at `dataAt` offsets, dataBytes each). */
export type SourceContent =
  | { readonly kind: 'random'; readonly sizeBytes: number }
  | { readonly kind: 'sparse'; readonly sizeBytes: number; readonly dataAt: readonly number[]; readonly dataBytes: number };

/** Writes `content` at `path` under `root` (parents made). */
export async function writeSourceFile(root: string, path: string, content: SourceContent): Promise<void> {
  const full = join(root, path);
  await mkdir(dirname(full), { recursive: true });
  const fh = await open(full, 'wx');
  try {
    if (content.kind === 'random') {
      const piece = 16 * NFC_CHUNK_BYTES;
      for (let off = 0; off < content.sizeBytes; off += piece) await fh.write(randomBytes(Math.min(piece, content.sizeBytes - off)), 0, undefined, off);
    } else {
      await fh.truncate(content.sizeBytes);
      for (const at of content.dataAt) await fh.write(randomBytes(content.dataBytes), 0, undefined, at);
    }
  } finally {
    await fh.close();
  }
}

/** The plan of copying `paths` as the source datastore holds them now. */
export async function planOf(ds: Datastore, copyId: string, paths: readonly string[]): Promise<CopyPlan> {
  const files = [];
  for (const path of paths) {
    const st = await ds.stat(path);
    files.push({ path, sizeBytes: st.sizeBytes, modifiedMs: st.modifiedMs });
  }
  return { copyId, files };
}

export function newCopyId(): string {
  return randomBytes(16).toString('hex');
}

/** The digest a copy must report for the file at `full`: SHA-256 over each chunk's SHA-256 (independent of src/nfc). */
export async function expectedDigest(full: string): Promise<string> {
  const data = await readFile(full);
  const h = createHash('sha256');
  for (let off = 0; off < data.length; off += NFC_CHUNK_BYTES) h.update(createHash('sha256').update(data.subarray(off, off + NFC_CHUNK_BYTES)).digest());
  return h.digest('hex');
}

export async function sameBytes(a: string, b: string): Promise<boolean> {
  return (await readFile(a)).equals(await readFile(b));
}

export interface LocalCopyOptions extends Partial<Omit<CopyJobOptions, 'plan' | 'source' | 'openSink'>> {
  /** Wraps the sink the job gets (a test's instrument: count writes, stop or cancel the job at one). */
  readonly wrap?: (sink: CopySink, job: CopyJob) => CopySink;
}

/** A local copy job of `plan` from `src` into `dst` (source leases taken now; run() not called). */
export async function localCopyJob(src: Datastore, dst: Datastore, plan: CopyPlan, o: LocalCopyOptions = {}): Promise<CopyJob> {
  const source = await openCopySource(src, plan);
  const epoch = o.epoch ?? 1;
  const job: CopyJob = new CopyJob({
    plan, epoch, host: o.host ?? 'test', source, ...(o.streams === undefined ? {} : { streams: o.streams }),
    ...(o.rateBytesPerSec === undefined ? {} : { rateBytesPerSec: o.rateBytesPerSec }), ...(o.log === undefined ? {} : { log: o.log }),
    openSink: async () => {
      const sink = await openLocalSink(dst, { plan, epoch });
      return o.wrap === undefined ? sink : o.wrap(sink, job);
    },
  });
  return job;
}

export async function runLocalCopy(src: Datastore, dst: Datastore, plan: CopyPlan, o: LocalCopyOptions = {}): Promise<CopyJobRecord> {
  return (await localCopyJob(src, dst, plan, o)).run();
}

/** A sink that passes everything on and calls (and awaits) `onWrite` after each acknowledged data write (n = writes so far). */
export function instrumentedSink(sink: CopySink, onWrite: (fileIndex: number, offsetBytes: number, n: number) => void | Promise<void>): CopySink {
  let n = 0;
  return {
    get resumeAt() { return sink.resumeAt; },
    write: async (i, off, data, sha) => { await sink.write(i, off, data, sha); await onWrite(i, off, ++n); },
    hole: (i, off, len) => sink.hole(i, off, len),
    sync: () => sink.sync(),
    finishFile: (i) => sink.finishFile(i),
    complete: () => sink.complete(),
    close: () => sink.close(),
    discard: () => sink.discard(),
  };
}
