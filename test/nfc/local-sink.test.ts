/**
 * The local form's sink on a real temp datastore, driven directly (chunks and checksums made here):
 * the written prefix with chunks out of order, finish (read-back verification, rename) and complete;
 * the negative space of its input; a staging file damaged behind its back (COPY_VERIFY_FAILED); a
 * rename that landed before its journal (resumed by verifying in place); COPY_CONFLICT; epoch fencing
 * between two mounts ("hosts") of one directory; one writer per copy; journals that cannot be trusted
 * (truncated, oversized, not JSON, another version, inconsistent) refused without touching the
 * staging files; discardCopy.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, readdir, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../../src/lib/errors.js';
import { MiB } from '../../src/lib/units.js';
import { copyJournalPath, stagingPathOf } from '../../src/nfc/journal.js';
import { MAX_SINK_CHUNKS_AHEAD, discardCopy, openLocalSink, readCopyJournal } from '../../src/nfc/local-sink.js';
import { NFC_CHUNK_BYTES, type CopyPlan } from '../../src/nfc/plan.js';
import type { CopySink } from '../../src/nfc/sink.js';
import type { LocalDatastore } from '../../src/storage/local-datastore.js';
import { HOST_A, HOST_B, mountAs, newCopyId, nfcDirs, type NfcDirs } from '../helpers/nfc.js';

const SIZE = 3 * MiB + 5;
/** Syncs a test makes at most while the background read-back of 4 MiB catches up (each sync is a few fsyncs: plenty). */
const MAX_SYNCS_FOR_VERIFIED = 1000;

function planFor(copyId: string): CopyPlan {
  return { copyId, files: [{ path: 'vm/a.raw', sizeBytes: SIZE, modifiedMs: 1_000 }, { path: 'vm/empty.raw', sizeBytes: 0, modifiedMs: 2_000 }] };
}

/** Chunk `k` of file a.raw: bytes that differ per chunk. */
function chunk(k: number): Buffer {
  return Buffer.alloc(Math.min(NFC_CHUNK_BYTES, SIZE - k * NFC_CHUNK_BYTES), k + 1);
}

function sha(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

async function writeChunk(sink: CopySink, k: number): Promise<void> {
  const data = chunk(k);
  await sink.write(0, k * NFC_CHUNK_BYTES, data, sha(data));
}

/** SHA-256 over the chunks' SHA-256s of a.raw as chunk() makes it. */
function digestOfA(): string {
  const h = createHash('sha256');
  for (let k = 0; k * NFC_CHUNK_BYTES < SIZE; k++) h.update(sha(chunk(k)));
  return h.digest('hex');
}

async function codeOf(p: Promise<unknown>): Promise<FerryError> {
  const err = await p.then(() => null, (e: unknown) => e);
  assert.ok(err instanceof FerryError, `a FerryError, got ${String(err)}`);
  return err;
}

describe('local sink', () => {
  let dirs: NfcDirs;
  let dsA: LocalDatastore;
  let dsB: LocalDatastore;
  before(async () => {
    dirs = await nfcDirs();
    dsA = await mountAs(dirs.dst, 'dst', HOST_A);
    dsB = await mountAs(dirs.dst, 'dst', HOST_B);
  });
  after(async () => { await dirs.cleanup(); });
  afterEach(async () => {
    for (const name of await readdir(dirs.dst)) if (name !== '.ferry-datastore') await rm(join(dirs.dst, name), { recursive: true, force: true });
  });

  it('syncs to the longest written prefix whatever the order of the chunks, stops it at a file end until the file is finished, and completes', async () => {
    const plan = planFor(newCopyId());
    const sink = await openLocalSink(dsA, { plan, epoch: 1 });
    assert.deepEqual(sink.resumeAt, { fileIndex: 0, offsetBytes: 0 });
    const staging = join(dirs.dst, stagingPathOf('vm/a.raw', plan.copyId));
    await writeChunk(sink, 1);
    assert.equal((await stat(staging)).size, SIZE, 'created at its full size by its first chunk');
    assert.deepEqual(await sink.sync(), { fileIndex: 0, offsetBytes: 0 }, 'chunk 0 is missing: nothing durable');
    await writeChunk(sink, 0);
    assert.deepEqual(await sink.sync(), { fileIndex: 0, offsetBytes: 2 * NFC_CHUNK_BYTES });
    assert.deepEqual((await readCopyJournal(dsB, plan.copyId)).boundary, { fileIndex: 0, offsetBytes: 2 * NFC_CHUNK_BYTES });
    await writeChunk(sink, 3);
    await sink.hole(0, 2 * NFC_CHUNK_BYTES, NFC_CHUNK_BYTES);
    assert.deepEqual(await sink.sync(), { fileIndex: 0, offsetBytes: SIZE }, 'at the end of the file, not past it');
    await assert.rejects(sink.complete(), { code: 'INVALID_ARGUMENT' });
    const a = await sink.finishFile(0);
    const holeSum = sha(Buffer.alloc(NFC_CHUNK_BYTES));
    const h = createHash('sha256').update(sha(chunk(0))).update(sha(chunk(1))).update(holeSum).update(sha(chunk(3)));
    assert.deepEqual(a, { path: 'vm/a.raw', sizeBytes: SIZE, sourceDigest: h.digest('hex'), targetDigest: a.targetDigest });
    assert.equal(a.sourceDigest, a.targetDigest);
    await assert.rejects(stat(staging), { code: 'ENOENT' });
    const placed = await readFile(join(dirs.dst, 'vm/a.raw'));
    assert.ok(placed.subarray(2 * NFC_CHUNK_BYTES, 3 * NFC_CHUNK_BYTES).equals(Buffer.alloc(NFC_CHUNK_BYTES)), 'the hole reads as zeros');
    assert.ok(placed.subarray(0, NFC_CHUNK_BYTES).equals(chunk(0)));
    const empty = await sink.finishFile(1);
    assert.equal(empty.targetDigest, createHash('sha256').digest('hex'), 'an empty file: the digest of no checksums');
    assert.equal((await stat(join(dirs.dst, 'vm/empty.raw'))).size, 0);
    const files = await sink.complete();
    assert.deepEqual(files, [a, empty]);
    await sink.close();
    await sink.close();
    assert.deepEqual(await readCopyJournal(dsA, plan.copyId), { copyId: plan.copyId, boundary: { fileIndex: 2, offsetBytes: 0 }, epoch: 1, complete: true });
    // Opened again (another epoch, another host): at the end, complete, the same files.
    const again = await openLocalSink(dsB, { plan, epoch: 2 });
    assert.deepEqual(again.resumeAt, { fileIndex: 2, offsetBytes: 0 });
    assert.deepEqual(await again.complete(), files);
    await again.close();
  });

  it('refuses what is not the plan\'s: no such file, an offset off a chunk or past the end, a wrong length or checksum size, a finished file, an early finish', async () => {
    const plan = planFor(newCopyId());
    const sink = await openLocalSink(dsA, { plan, epoch: 1 });
    const data = chunk(0);
    const bad: Array<[string, () => Promise<unknown>]> = [
      ['file 2', () => sink.write(2, 0, data, sha(data))],
      ['offset off a chunk', () => sink.write(0, 4096, data, sha(data))],
      ['past the end', () => sink.write(0, 4 * NFC_CHUNK_BYTES, data, sha(data))],
      ['wrong length', () => sink.write(0, 0, data.subarray(1), sha(data))],
      ['short last chunk as a full one', () => sink.hole(0, 3 * NFC_CHUNK_BYTES, NFC_CHUNK_BYTES)],
      ['checksum size', () => sink.write(0, 0, data, sha(data).subarray(0, 31))],
      ['an empty file has no chunk', () => sink.hole(1, 0, 0)],
      ['finish with chunks missing', () => sink.finishFile(0)],
      ['finish a later file', () => sink.finishFile(1)],
      ['finish file 9', () => sink.finishFile(9)],
    ];
    for (const [what, op] of bad) assert.equal((await codeOf(op())).code, 'INVALID_ARGUMENT', what);
    for (let k = 0; k < 4; k++) await writeChunk(sink, k);
    await sink.finishFile(0);
    assert.equal((await codeOf(sink.write(0, 0, data, sha(data)))).code, 'INVALID_ARGUMENT', 'a finished file');
    await sink.close();
    assert.equal((await codeOf(sink.sync())).code, 'INVALID_ARGUMENT', 'a closed sink');
    await assert.rejects(openLocalSink(dsA, { plan: { ...plan, copyId: 'nope' }, epoch: 1 }), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(openLocalSink(dsA, { plan, epoch: 0 }), { code: 'INVALID_ARGUMENT' });
    // Chunks ahead of the written prefix are remembered up to a bound (a writer that never fills the gap is refused, not remembered).
    const big = { copyId: newCopyId(), files: [{ path: 'vm/big.raw', sizeBytes: (MAX_SINK_CHUNKS_AHEAD + 2) * NFC_CHUNK_BYTES, modifiedMs: 1 }] };
    const wide = await openLocalSink(dsA, { plan: big, epoch: 1 });
    for (let k = 1; k <= MAX_SINK_CHUNKS_AHEAD; k++) await wide.hole(0, k * NFC_CHUNK_BYTES, NFC_CHUNK_BYTES);
    assert.equal((await codeOf(wide.hole(0, (MAX_SINK_CHUNKS_AHEAD + 1) * NFC_CHUNK_BYTES, NFC_CHUNK_BYTES))).code, 'INVALID_ARGUMENT');
    await wide.hole(0, 0, NFC_CHUNK_BYTES); // fills the gap: the prefix runs over everything remembered
    assert.deepEqual(await wide.sync(), { fileIndex: 0, offsetBytes: (MAX_SINK_CHUNKS_AHEAD + 1) * NFC_CHUNK_BYTES });
    await wide.close();
  });

  it('a staging file damaged behind the sink fails its finish with COPY_VERIFY_FAILED at that chunk, whether it was found at the finish or by the read-back after a sync; it is not renamed into place', async () => {
    for (const when of ['finish', 'sync'] as const) {
      const plan = planFor(newCopyId());
      const sink = await openLocalSink(dsA, { plan, epoch: 1 });
      for (let k = 0; k < 4; k++) await writeChunk(sink, k);
      if (when === 'finish') await sink.sync(); // (read back after it in the background: before the damage)
      const staging = join(dirs.dst, stagingPathOf('vm/a.raw', plan.copyId));
      const bytes = await readFile(staging);
      bytes[2 * NFC_CHUNK_BYTES + 17] = 0xee;
      await writeFile(staging, bytes);
      if (when === 'finish') {
        // Damaged after its background check: a second sink (after a restart) reads the whole file back.
        await sink.close();
        const again = await openLocalSink(dsA, { plan, epoch: 1 });
        const err = await codeOf(again.finishFile(0));
        assert.deepEqual([err.code, err.details.offsetBytes], ['COPY_VERIFY_FAILED', 2 * NFC_CHUNK_BYTES], when);
        await again.close();
      } else {
        assert.deepEqual(await sink.sync(), { fileIndex: 0, offsetBytes: SIZE });
        const err = await codeOf(sink.finishFile(0));
        assert.deepEqual([err.code, err.details.offsetBytes], ['COPY_VERIFY_FAILED', 2 * NFC_CHUNK_BYTES], when);
        await sink.close();
      }
      await assert.rejects(stat(join(dirs.dst, 'vm/a.raw')), { code: 'ENOENT' });
    }
  });

  it('what a sync made durable is read back and checked in the background, journaled as verified, and not read back again by a later sink', async () => {
    const plan = planFor(newCopyId());
    const sink = await openLocalSink(dsA, { plan, epoch: 1 });
    for (let k = 0; k < 3; k++) await writeChunk(sink, k);
    assert.deepEqual(await sink.sync(), { fileIndex: 0, offsetBytes: 3 * NFC_CHUNK_BYTES });
    await writeChunk(sink, 3);
    // A sync does not wait for the background check; it journals what the check has done by then.
    const journaledVerified = async (): Promise<number> => {
      const j = JSON.parse(await readFile(join(dirs.dst, copyJournalPath(plan.copyId)), 'utf8')) as { files: Array<{ verifiedBytes?: number }> };
      return j.files[0]?.verifiedBytes ?? 0;
    };
    let verified = 0;
    for (let attempt = 0; attempt < MAX_SYNCS_FOR_VERIFIED && verified === 0; attempt++) {
      await sink.sync();
      verified = await journaledVerified();
    }
    assert.ok(verified > 0 && verified <= SIZE && (verified % NFC_CHUNK_BYTES === 0 || verified === SIZE), `verifiedBytes ${verified}`);
    await sink.close();
    // Damage a verified chunk: a sink that trusts the journal does not read it again (the damage is at rest, not the copy's).
    const staging = join(dirs.dst, stagingPathOf('vm/a.raw', plan.copyId));
    const bytes = await readFile(staging);
    bytes[5] = (bytes[5] ?? 0) ^ 0xff;
    await writeFile(staging, bytes);
    const again = await openLocalSink(dsB, { plan, epoch: 2 });
    const a = await again.finishFile(0);
    assert.equal(a.targetDigest, digestOfA());
    await again.close();
  });

  it('a file renamed into place before its journal said so (a crash in between) is verified where it is and journaled done; a different file there is ALREADY_EXISTS', async () => {
    const plan = planFor(newCopyId());
    const first = await openLocalSink(dsA, { plan, epoch: 1 });
    for (let k = 0; k < 4; k++) await writeChunk(first, k);
    assert.deepEqual(await first.sync(), { fileIndex: 0, offsetBytes: SIZE });
    await first.close();
    await rename(join(dirs.dst, stagingPathOf('vm/a.raw', plan.copyId)), join(dirs.dst, 'vm/a.raw'));
    const second = await openLocalSink(dsB, { plan, epoch: 2 });
    assert.deepEqual(second.resumeAt, { fileIndex: 0, offsetBytes: SIZE });
    const a = await second.finishFile(0);
    assert.equal(a.targetDigest, digestOfA());
    await second.close();
    // Now a file that is not the copy's at the path of a file written to its end.
    const other = planFor(newCopyId());
    const third = await openLocalSink(dsA, { plan: { ...other, files: [{ path: 'vm/b.raw', sizeBytes: SIZE, modifiedMs: 1 }] }, epoch: 1 });
    for (let k = 0; k < 4; k++) await writeChunk(third, k);
    await writeFile(join(dirs.dst, 'vm/b.raw'), Buffer.alloc(SIZE, 9));
    assert.equal((await codeOf(third.finishFile(0))).code, 'ALREADY_EXISTS');
    assert.ok((await readFile(join(dirs.dst, 'vm/b.raw'))).equals(Buffer.alloc(SIZE, 9)), 'left as it was');
    await third.close();
  });

  it('a new copy whose target path is taken is ALREADY_EXISTS; a copy id whose journal holds another plan is COPY_CONFLICT', async () => {
    const plan = planFor(newCopyId());
    await writeFile(join(dirs.dst, 'vm-a.raw'), 'user data');
    await assert.rejects(openLocalSink(dsA, { plan: { ...plan, files: [{ path: 'vm-a.raw', sizeBytes: 9, modifiedMs: 1 }] }, epoch: 1 }), { code: 'ALREADY_EXISTS' });
    assert.equal(await readFile(join(dirs.dst, 'vm-a.raw'), 'utf8'), 'user data');
    const sink = await openLocalSink(dsA, { plan, epoch: 1 });
    await sink.close();
    const changed = { ...plan, files: plan.files.map((f, i) => (i === 0 ? { ...f, modifiedMs: f.modifiedMs + 1 } : f)) };
    assert.equal((await codeOf(openLocalSink(dsB, { plan: changed, epoch: 2 }))).code, 'COPY_CONFLICT');
  });

  it('one writer per copy: a second open (this host or another) is DISK_LOCKED while the first is open', async () => {
    const plan = planFor(newCopyId());
    const sink = await openLocalSink(dsA, { plan, epoch: 1 });
    assert.equal((await codeOf(openLocalSink(dsB, { plan, epoch: 2 }))).code, 'DISK_LOCKED');
    assert.equal((await codeOf(openLocalSink(dsA, { plan, epoch: 1 }))).code, 'DISK_LOCKED');
    assert.equal((await codeOf(discardCopy(dsB, plan.copyId))).code, 'DISK_LOCKED');
    await sink.close();
    const next = await openLocalSink(dsB, { plan, epoch: 2 });
    await next.close();
  });

  it('fencing: once epoch 2 opened the journal, the epoch-1 sink (whose leases were broken) gets COPY_FENCED at its sync and every write after; an epoch-1 open is COPY_FENCED', async () => {
    const plan = planFor(newCopyId());
    const old = await openLocalSink(dsA, { plan, epoch: 1 });
    await writeChunk(old, 0);
    assert.deepEqual(await old.sync(), { fileIndex: 0, offsetBytes: NFC_CHUNK_BYTES });
    // Host A stalls past its leases' expiry: they are broken (as a breaker removes a stale lock) and B takes over.
    for (const name of await readdir(dirs.dst, { recursive: true })) if (name.endsWith('.lck')) await rm(join(dirs.dst, name));
    const next = await openLocalSink(dsB, { plan, epoch: 2 });
    assert.deepEqual(next.resumeAt, { fileIndex: 0, offsetBytes: NFC_CHUNK_BYTES });
    await writeChunk(next, 1);
    await writeChunk(old, 1).catch(() => undefined); // may land (same bytes, same place) or find its lease lost
    assert.equal((await codeOf(old.sync())).code, 'COPY_FENCED');
    assert.equal((await codeOf(writeChunk(old, 2))).code, 'COPY_FENCED');
    assert.equal((await codeOf(old.finishFile(0))).code, 'COPY_FENCED');
    assert.deepEqual(await next.sync(), { fileIndex: 0, offsetBytes: 2 * NFC_CHUNK_BYTES });
    assert.equal((await readCopyJournal(dsA, plan.copyId)).epoch, 2);
    await old.close();
    await next.close();
    assert.equal((await codeOf(openLocalSink(dsA, { plan, epoch: 1 }))).code, 'COPY_FENCED');
  });

  it('a journal that cannot be trusted — truncated, oversized, not JSON, another version, inconsistent, another copy\'s — is COPY_JOURNAL_INVALID, and the staging file is left as it was', async () => {
    const plan = planFor(newCopyId());
    const sink = await openLocalSink(dsA, { plan, epoch: 1 });
    await writeChunk(sink, 0);
    await sink.sync();
    await sink.close();
    const journal = join(dirs.dst, copyJournalPath(plan.copyId));
    const good = await readFile(journal, 'utf8');
    const staging = join(dirs.dst, stagingPathOf('vm/a.raw', plan.copyId));
    const stagingBytes = await readFile(staging);
    const parsed = JSON.parse(good) as Record<string, unknown>;
    const cases: Array<[string, string | null, string]> = [
      ['truncated', good.slice(0, good.length >> 1), 'not-json'],
      ['oversized', `${good}${' '.repeat(4 * MiB)}`, 'too-large'],
      ['not JSON', 'garbage\n', 'not-json'],
      ['another version', JSON.stringify({ ...parsed, version: 2 }), 'version'],
      ['no version', JSON.stringify([1, 2]), 'version'],
      ['an unknown field', JSON.stringify({ ...parsed, extra: 1 }), 'schema'],
      ['a boundary past the file', JSON.stringify({ ...parsed, boundary: { fileIndex: 0, offsetBytes: SIZE + 1 } }), 'inconsistent'],
      ['a boundary off a chunk', JSON.stringify({ ...parsed, boundary: { fileIndex: 0, offsetBytes: 5 } }), 'inconsistent'],
      ['a file done after the boundary', JSON.stringify({ ...parsed, files: (parsed.files as Array<Record<string, unknown>>).map((f) => ({ ...f, done: true, sourceDigest: 'a'.repeat(64), targetDigest: 'a'.repeat(64) })) }), 'inconsistent'],
      ['another copy\'s', JSON.stringify({ ...parsed, copyId: newCopyId() }), 'copy-id'],
      ['an empty file', '', 'not-json'],
      ['truncated to nothing by a crash (size 0 by truncate)', null, 'not-json'],
    ];
    for (const [what, text, reason] of cases) {
      if (text === null) await truncate(journal, 0); else await writeFile(journal, text);
      for (const op of [() => readCopyJournal(dsA, plan.copyId), () => openLocalSink(dsA, { plan, epoch: 2 })]) {
        const err = await codeOf(op());
        assert.deepEqual([err.code, err.details.reason], ['COPY_JOURNAL_INVALID', reason], `${what}: ${err.message}`);
      }
      assert.ok((await readFile(staging)).equals(stagingBytes), `${what}: the staging file is untouched`);
    }
    // The checksums the journal's boundary needs must be there too.
    await writeFile(journal, good);
    await truncate(join(dirs.dst, '.ferry-copies', plan.copyId, '0.sums'), 16);
    assert.deepEqual((await codeOf(openLocalSink(dsA, { plan, epoch: 2 }))).details.reason, 'sums');
  });

  it('discardCopy removes the staging files, checksums and journal (finished files stay); the journal then reads as none', async () => {
    const plan = planFor(newCopyId());
    const sink = await openLocalSink(dsA, { plan, epoch: 1 });
    for (let k = 0; k < 4; k++) await writeChunk(sink, k);
    await sink.finishFile(0);
    await sink.sync();
    await sink.close();
    assert.deepEqual(await discardCopy(dsB, plan.copyId), { copyId: plan.copyId, boundary: null, epoch: 0, complete: false });
    assert.deepEqual(await readCopyJournal(dsA, plan.copyId), { copyId: plan.copyId, boundary: null, epoch: 0, complete: false });
    assert.equal((await stat(join(dirs.dst, 'vm/a.raw'))).size, SIZE, 'a finished file stays');
    const left = (await readdir(dirs.dst, { recursive: true })).filter((n) => n.includes(plan.copyId.slice(0, 8)));
    assert.deepEqual(left, []);
    // A copy discarded before it finished leaves no staging file; discarding nothing is fine.
    const plan2 = planFor(newCopyId());
    const s2 = await openLocalSink(dsA, { plan: { ...plan2, files: [{ path: 'vm/c.raw', sizeBytes: SIZE, modifiedMs: 1 }] }, epoch: 1 });
    await writeChunk(s2, 0);
    await s2.discard();
    assert.deepEqual((await readdir(join(dirs.dst, 'vm'))).sort(), ['a.raw']);
    assert.equal((await discardCopy(dsA, newCopyId())).boundary, null);
    await assert.rejects(discardCopy(dsA, '../x'), { code: 'INVALID_ARGUMENT' });
  });
});
