/**
 * Files for network file copy tests: real files in a datastore directory (random data with holes of
 * whole zero chunks, a short last chunk), their plan entries as the center would make them, the digest
 * a copy must report for each (computed here independently of src/nfc), and the check that a target
 * directory holds exactly the source's bytes.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { mkdir, open, readFile, readdir, stat } from 'node:fs/promises';
import { COPY_START, NFC_CHUNK_BYTES, compareBoundaries, type CopyFile, type CopyJobRecord } from '../../src/nfc/plan.js';
import { LEASE_SUFFIX } from '../../src/storage/datastore.js';
import type { HostClient } from '../../src/api/host-client.js';

/** Bound on a copy of a few tens of MiB on a loaded machine, or on its first boundary (a failure, never a pace). */
export const COPY_TIMEOUT_MS = 60_000;

export interface TestFileSpec {
  readonly path: string;
  readonly sizeBytes: number;
  /** Chunk indexes left all zeros (holes: written as nothing, the file stays sparse there). */
  readonly holes?: readonly number[];
}

/** A fresh copy id (what the center makes: 32 lowercase hex digits). */
export function newCopyId(): string {
  return randomBytes(16).toString('hex');
}

/** Writes each file under `dir` (random bytes, zeros in its holes) and answers the plan's entries for them. */
export async function writeSourceFiles(dir: string, specs: readonly TestFileSpec[]): Promise<CopyFile[]> {
  const files: CopyFile[] = [];
  for (const spec of specs) {
    const full = join(dir, spec.path);
    await mkdir(dirname(full), { recursive: true });
    const fh = await open(full, 'w');
    try {
      await fh.truncate(spec.sizeBytes);
      for (let off = 0, i = 0; off < spec.sizeBytes; off += NFC_CHUNK_BYTES, i++) {
        if (spec.holes?.includes(i) === true) continue;
        await fh.write(randomBytes(Math.min(NFC_CHUNK_BYTES, spec.sizeBytes - off)), 0, undefined, off);
      }
    } finally {
      await fh.close();
    }
    files.push(await planEntry(dir, spec.path));
  }
  return files;
}

/** The plan entry of a file as it is now (size and modification time). */
export async function planEntry(dir: string, path: string): Promise<CopyFile> {
  const s = await stat(join(dir, path));
  return { path, sizeBytes: s.size, modifiedMs: s.mtimeMs };
}

/** docs/design/nfc.md: SHA-256 over the concatenation of each NFC_CHUNK_BYTES chunk's SHA-256 (lowercase hex). */
export function copyDigest(data: Uint8Array): string {
  const list = createHash('sha256');
  for (let off = 0; off < data.length; off += NFC_CHUNK_BYTES) list.update(createHash('sha256').update(data.subarray(off, off + NFC_CHUNK_BYTES)).digest());
  return list.digest('hex');
}

/** Every file of the plan is in `targetDir` with exactly the bytes it has in `sourceDir`; answers each one's digest. */
export async function assertSameFiles(sourceDir: string, targetDir: string, files: readonly CopyFile[]): Promise<Map<string, string>> {
  const digests = new Map<string, string>();
  for (const f of files) {
    const [a, b] = await Promise.all([readFile(join(sourceDir, f.path)), readFile(join(targetDir, f.path))]);
    assert.equal(b.length, a.length, `${f.path}: size`);
    assert.ok(a.equals(b), `${f.path}: the target's bytes are the source's`);
    digests.set(f.path, copyDigest(a));
  }
  return digests;
}

/** The record of a completed copy names every file with equal source and target digests: the ones computed here from the bytes. */
export function assertCompleted(record: CopyJobRecord, digests: ReadonlyMap<string, string>, files: readonly CopyFile[], earlier: readonly CopyJobRecord[] = []): void {
  assert.equal(record.outcome, 'completed', JSON.stringify(record.error));
  // Completed: every file of the plan, those finished by earlier runs (from the target's journal) too.
  assert.deepEqual(record.files.map((f) => f.path), files.map((f) => f.path));
  assert.deepEqual(record.to, { fileIndex: files.length, offsetBytes: 0 });
  // And the runs before it (a hand-off): each file they finished, with the same digests.
  for (const f of [...record.files, ...earlier.flatMap((r) => r.files)]) {
    assert.equal(f.sourceDigest, f.targetDigest, `${f.path}: source and target digests`);
    assert.equal(f.targetDigest, digests.get(f.path), `${f.path}: the digest of its bytes`);
  }
}

/**
 * No staging file is left in the target directory (each was renamed into place or removed). A lease's
 * files are not staging files: a host killed with SIGKILL while it renewed a staging file's lease leaves
 * that renewal's temporary file (`….lck.<id>.<n>.tmp`, litter of any kill -9 mid-renewal: no lock, no
 * data, never listed by a datastore) — counting it failed a kill test in CI.
 */
export async function noStaging(targetDir: string): Promise<void> {
  const names = await readdir(targetDir, { recursive: true });
  assert.deepEqual(names.filter((n) => n.includes('.ferry-copy-') && !n.includes(LEASE_SUFFIX)), []);
}

/** This host's part of the copy, to its end. */
export function waitCopy(client: HostClient, id: string, timeoutMs = COPY_TIMEOUT_MS): Promise<CopyJobRecord> {
  return client.waitForCopy(id, { signal: AbortSignal.timeout(timeoutMs) });
}

/** Waits (on the event stream) for the first boundary the target acknowledged past the start: the copy is under way. */
export async function underway(client: HostClient, id: string, timeoutMs = COPY_TIMEOUT_MS): Promise<void> {
  for await (const e of client.copyEvents(id, AbortSignal.timeout(timeoutMs))) {
    if (e.event === 'progress' && compareBoundaries(e.data.boundary, COPY_START) > 0) return;
    if (e.event === 'done') assert.fail(`copy ${id} ended (${e.data.outcome}) before it acknowledged a boundary`);
  }
  assert.fail(`the events of copy ${id} ended before a boundary`);
}
