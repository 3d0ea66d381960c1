/**
 * The copier with the local form's sink, end to end on real files in temp directories: several files
 * (random, sparse, empty, not a multiple of the chunk, nested), digests against an independent
 * computation and bytes against the source; progress; the bandwidth cap; resume after a cancel and
 * after a SIGKILLed copier (a child process crashed by a failpoint right after a sync); the stop()
 * hand-off between two mounts (two "hosts") of shared source and target directories; a source
 * changed mid-copy (SOURCE_CHANGED, nothing renamed into place from it).
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FAILPOINTS_ENV, failpointHitLine } from '../../src/lib/failpoints.js';
import { MiB } from '../../src/lib/units.js';
import { SYNC_EVERY_BYTES } from '../../src/nfc/copier.js';
import { readCopyJournal } from '../../src/nfc/local-sink.js';
import { NFC_CHUNK_BYTES, compareBoundaries, type CopyJobRecord, type CopyPlan, type CopyProgress } from '../../src/nfc/plan.js';
import type { LocalDatastore } from '../../src/storage/local-datastore.js';
import {
  HOST_A, HOST_B, expectedDigest, instrumentedSink, localCopyJob, mountAs, newCopyId, nfcDirs, planOf, retryWhileLocked, runLocalCopy,
  sameBytes, writeSourceFile, type NfcDirs,
} from '../helpers/nfc.js';

const CHILD = fileURLToPath(new URL('../helpers/nfc-copy-child.js', import.meta.url));
/** Paced so that a time-based sync (SYNC_EVERY_MS) lands about a second into BIG_PATH: a boundary mid-file, with most of it still to go. */
const PACED_BYTES_PER_SEC = 8 * MiB;
const BIG_PATH = 'vm/big.raw';
const BIG_BYTES = 24 * MiB + 4321;
/** The sync that the crash lands after is well before the end: SYNC_EVERY_BYTES is beyond the big file. */
void SYNC_EVERY_BYTES;

/** Files of every shape a copy must handle. */
const SHAPES = [
  { path: 'vm/disk-flat.raw', content: { kind: 'random', sizeBytes: 3 * MiB + 12_345 } },
  { path: 'vm/sparse.raw', content: { kind: 'sparse', sizeBytes: 64 * MiB, dataAt: [5 * MiB, 40 * MiB + 7], dataBytes: 100_000 } },
  { path: 'vm/empty.raw', content: { kind: 'random', sizeBytes: 0 } },
  { path: 'images/exact.img', content: { kind: 'random', sizeBytes: 2 * MiB } },
] as const;

async function checkCopied(dirs: NfcDirs, plan: CopyPlan, record: CopyJobRecord): Promise<void> {
  assert.equal(record.outcome, 'completed', JSON.stringify(record.error));
  assert.equal(record.files.length, plan.files.length);
  for (const [i, f] of plan.files.entries()) {
    const got = record.files[i];
    const want = await expectedDigest(join(dirs.src, f.path));
    assert.deepEqual(got, { path: f.path, sizeBytes: f.sizeBytes, sourceDigest: want, targetDigest: want }, f.path);
    assert.ok(await sameBytes(join(dirs.src, f.path), join(dirs.dst, f.path)), `${f.path}: bytes differ`);
  }
  // Nothing of the copy's own is left beside the files: no staging file, no checksum directory.
  // (Lease files are the lease module's: a killed host may leave a renewal's temporary file behind.)
  const left = (await readdir(dirs.dst, { recursive: true })).filter((n) => !n.includes('.lck') && (n.includes('.ferry-copy-') || n.endsWith('.sums')));
  assert.deepEqual(left, []);
}

describe('copier (local form)', () => {
  let dirs: NfcDirs;
  let srcA: LocalDatastore;
  let dstA: LocalDatastore;
  let srcB: LocalDatastore;
  let dstB: LocalDatastore;
  before(async () => {
    dirs = await nfcDirs();
    srcA = await mountAs(dirs.src, 'src', HOST_A);
    dstA = await mountAs(dirs.dst, 'dst', HOST_A);
    srcB = await mountAs(dirs.src, 'src', HOST_B);
    dstB = await mountAs(dirs.dst, 'dst', HOST_B);
    for (const s of SHAPES) await writeSourceFile(dirs.src, s.path, s.content);
    await writeSourceFile(dirs.src, BIG_PATH, { kind: 'random', sizeBytes: BIG_BYTES });
  });
  const paths = (): string[] => [SHAPES[0].path, BIG_PATH, ...SHAPES.slice(1).map((s) => s.path)];

  /**
   * A job that `act`s (stop, cancel) as soon as a sync of its own acknowledged a boundary past the start:
   * in the turn after the job took the sync's answer (setImmediate runs after the promise continuations
   * that hand it over), so that the job's record knows that boundary.
   */
  async function pausedJob(src: LocalDatastore, dst: LocalDatastore, plan: CopyPlan, act: 'stop' | 'cancel', writes: Array<[number, number]>): Promise<CopyJobRecord> {
    let acted = false;
    const job = await localCopyJob(src, dst, plan, {
      rateBytesPerSec: PACED_BYTES_PER_SEC,
      wrap: (sink, j) => ({
        ...instrumentedSink(sink, (i, off) => { writes.push([i, off]); }),
        get resumeAt() { return sink.resumeAt; },
        sync: async () => {
          const b = await sink.sync();
          if (!acted && compareBoundaries(b, sink.resumeAt) > 0) {
            acted = true;
            setImmediate(() => { if (act === 'stop') j.stop(); else j.cancel('the test cancels'); });
          }
          return b;
        },
      }),
    });
    return job.run();
  }
  after(async () => { await dirs.cleanup(); });
  // Each case starts from an empty target (its identity file kept: the mounts stay valid).
  afterEach(async () => {
    for (const name of await readdir(dirs.dst)) if (name !== '.ferry-datastore') await rm(join(dirs.dst, name), { recursive: true, force: true });
  });

  it('copies several files — random, sparse (stays sparse), empty, a chunk multiple — verified, with progress that never goes back', async () => {
    const plan = await planOf(srcA, newCopyId(), SHAPES.map((s) => s.path));
    const job = await localCopyJob(srcA, dstA, plan, { streams: 3 });
    const progress: CopyProgress[] = [];
    job.on('progress', (p) => progress.push(p));
    const record = await job.run();
    await checkCopied(dirs, plan, record);
    assert.deepEqual(record.from, { fileIndex: 0, offsetBytes: 0 });
    assert.deepEqual(record.to, { fileIndex: plan.files.length, offsetBytes: 0 });
    // Holes move nothing: the sparse file's 62 all-zero chunks are not sent.
    assert.equal(record.sentBytes, 3 * MiB + 12_345 + 2 * NFC_CHUNK_BYTES + 2 * MiB);
    const sparse = await stat(join(dirs.dst, 'vm/sparse.raw'));
    assert.ok(sparse.blocks * 512 <= 4 * MiB, `the sparse copy allocates ${sparse.blocks * 512} bytes`);
    assert.ok(progress.length >= 1);
    for (let i = 1; i < progress.length; i++) assert.ok((progress[i]?.doneBytes ?? 0) >= (progress[i - 1]?.doneBytes ?? 0), 'doneBytes never lowered');
    assert.equal(progress.at(-1)?.doneBytes, progress.at(-1)?.totalBytes);
    assert.deepEqual(job.status().record, record);
    assert.equal(job.status().phase, 'ended');
    assert.deepEqual(await readCopyJournal(dstA, plan.copyId), { copyId: plan.copyId, boundary: record.to, epoch: 1, complete: true });
    // A second run of the completed copy answers completed at once (the journal says so), moving nothing.
    const again = await runLocalCopy(srcA, dstA, plan, { epoch: 2 });
    assert.equal(again.outcome, 'completed');
    assert.equal(again.sentBytes, 0);
    assert.deepEqual(again.files, record.files);
  });

  it('the bandwidth cap paces the data moved', async () => {
    const plan = await planOf(srcA, newCopyId(), [SHAPES[0].path]);
    const t0 = performance.now();
    const record = await runLocalCopy(srcA, dstA, plan, { rateBytesPerSec: 2 * MiB });
    await checkCopied(dirs, plan, record);
    // The limiter lets the first chunk go at once (its bucket is full), then the rest at 2 MiB/s.
    const minMs = ((record.sentBytes - NFC_CHUNK_BYTES) * 1000) / (2 * MiB) - 60;
    assert.ok(performance.now() - t0 >= minMs, `took ${performance.now() - t0} ms, at least ${minMs} expected`);
  });

  it('a cancelled copy keeps its journal and resumes from its boundary to the same files and digests', async () => {
    const plan = await planOf(srcA, newCopyId(), paths());
    const first = await pausedJob(srcA, dstA, plan, 'cancel', []);
    assert.equal(first.outcome, 'cancelled');
    assert.equal(first.error?.code, 'CANCELLED');
    assert.ok(compareBoundaries(first.to, { fileIndex: 0, offsetBytes: 0 }) > 0, `cancelled at ${JSON.stringify(first.to)}`);
    assert.deepEqual((await readCopyJournal(dstA, plan.copyId)).boundary, first.to);
    const second = await runLocalCopy(srcA, dstA, plan, { epoch: 2 });
    assert.deepEqual(second.from, first.to);
    await checkCopied(dirs, plan, second);
  });

  it('a copier killed (SIGKILL) right after a sync resumes, on another epoch, from the journal to the same files and digests', async () => {
    const plan = await planOf(srcA, newCopyId(), paths());
    const planFile = join(dirs.base, `${plan.copyId}.json`);
    await writeFile(planFile, JSON.stringify(plan));
    const child = spawn(process.execPath, [CHILD, dirs.src, dirs.dst, planFile, '1', String(PACED_BYTES_PER_SEC)], {
      env: { ...process.env, [FAILPOINTS_ENV]: 'nfc.sink.after-sync=crash' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])));
    assert.equal(signal, 'SIGKILL', `exit ${code}: ${stderr}`);
    assert.ok(stderr.includes(failpointHitLine('nfc.sink.after-sync', 'crash')), stderr);
    assert.ok(!stdout.includes('done'));
    const journal = await readCopyJournal(dstA, plan.copyId);
    assert.equal(journal.epoch, 1);
    assert.ok(journal.boundary !== null && compareBoundaries(journal.boundary, { fileIndex: 0, offsetBytes: 0 }) > 0 && !journal.complete, JSON.stringify(journal));
    // The dead child's leases (the sources', the copy's lock, its staging files) expire before anyone may take them.
    const job = await retryWhileLocked(() => localCopyJob(srcA, dstA, plan, { epoch: 2 }));
    const record = await job.run();
    assert.deepEqual(record.from, journal.boundary);
    await checkCopied(dirs, plan, record);
  });

  it('stop() hands off at a durable boundary: another host (mount) goes on from it, rewriting nothing before it, to the same digests and bytes', async () => {
    const plan = await planOf(srcA, newCopyId(), paths());
    const writesA: Array<[number, number]> = [];
    const first = await pausedJob(srcA, dstA, plan, 'stop', writesA);
    assert.equal(first.outcome, 'stopped', JSON.stringify(first.error));
    assert.ok(compareBoundaries(first.to, { fileIndex: 0, offsetBytes: 0 }) > 0);
    assert.deepEqual((await readCopyJournal(dstB, plan.copyId)).boundary, first.to, 'the boundary the record says is the one the target holds');
    const writesB: Array<[number, number]> = [];
    const second = await runLocalCopy(srcB, dstB, plan, { epoch: 2, host: 'b', wrap: (sink) => instrumentedSink(sink, (i, off) => { writesB.push([i, off]); }) });
    assert.deepEqual(second.from, first.to);
    await checkCopied(dirs, plan, second);
    // Host B writes only at or after the boundary; what host A wrote past it (a next file's chunks while its
    // file waited to be finished) B writes again, at the same place.
    for (const [i, off] of writesB) assert.ok(compareBoundaries({ fileIndex: i, offsetBytes: off }, first.to) >= 0, `B wrote ${i}@${off} before ${JSON.stringify(first.to)}`);
    const rewritten = new Set(writesB.map(([i, off]) => `${i}@${off}`));
    for (const [i, off] of writesA) if (compareBoundaries({ fileIndex: i, offsetBytes: off }, first.to) >= 0) assert.ok(rewritten.has(`${i}@${off}`));
    // The epoch fenced host A: its part cannot open the copy again.
    await assert.rejects(runLocalCopy(srcA, dstA, plan, { epoch: 1 }).then((r) => { if (r.outcome !== 'completed') throw new Error(r.error?.code); }), /COPY_FENCED/);
  });

  it('a source file changed under the copy (written around its lease) fails it with SOURCE_CHANGED; that file is not put into place', async () => {
    await writeSourceFile(dirs.src, 'vm/changing.raw', { kind: 'random', sizeBytes: 6 * MiB });
    const plan = await planOf(srcA, newCopyId(), [SHAPES[0].path, 'vm/changing.raw']);
    const record = await runLocalCopy(srcA, dstA, plan, {
      wrap: (sink) => instrumentedSink(sink, async (i, _off, n) => { if (i === 1 && n === 5) await appendFile(join(dirs.src, 'vm/changing.raw'), 'x'); }),
      streams: 1,
    });
    assert.equal(record.outcome, 'failed');
    assert.equal(record.error?.code, 'SOURCE_CHANGED', JSON.stringify(record.error));
    await assert.rejects(stat(join(dirs.dst, 'vm/changing.raw')), { code: 'ENOENT' });
    assert.ok(compareBoundaries(record.to, { fileIndex: 1, offsetBytes: 6 * MiB }) < 0, 'no boundary past what was read before the change');
  });
});
