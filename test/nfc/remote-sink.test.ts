/**
 * The remote form end to end: the copier writes through the remote sink over TCP (127.0.0.1, port 0)
 * to a receiver that runs the real local sink on a target datastore — several files, many streams;
 * resume after the connections are cut mid-copy (the next session resumes at the receiver's journal);
 * fencing by a newer epoch; the receiver's refusals arriving as FerryErrors with its own codes; a
 * broken connection failing every pending and later call (never a hang); a chunk damaged on the wire
 * detected and sent again (a failpoint in a child process), and a link that damages every send.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tcpTransport } from '../../src/dataplane/tcp.js';
import type { ByteStream, Listener, TransportAddress } from '../../src/dataplane/transport.js';
import { FerryError, isFerryError } from '../../src/lib/errors.js';
import { FAILPOINTS_ENV, failpointHitLine } from '../../src/lib/failpoints.js';
import { MiB } from '../../src/lib/units.js';
import { openLocalSink, readCopyJournal } from '../../src/nfc/local-sink.js';
import { MAX_COPY_STREAMS, NFC_CHUNK_BYTES, compareBoundaries, type CopyJobRecord, type CopyPlan } from '../../src/nfc/plan.js';
import { Command, MAX_CHUNK_RESENDS, type Frame } from '../../src/nfc/protocol/frame.js';
import { encodeError, encodeOk } from '../../src/nfc/protocol/messages.js';
import { FrameReader } from '../../src/nfc/protocol/reader.js';
import { CORRUPT_FAILPOINT, openRemoteSink } from '../../src/nfc/remote-sink.js';
import type { CopySink } from '../../src/nfc/sink.js';
import type { LocalDatastore } from '../../src/storage/local-datastore.js';
import {
  HOST_A, HOST_B, expectedDigest, instrumentedSink, mountAs, newCopyId, nfcDirs, planOf, sameBytes, writeSourceFile, type NfcDirs,
} from '../helpers/nfc.js';
import { CuttableTransport, LOOPBACK, remoteCopyJob, remoteSinkOptions, startReceiver, type TestReceiver } from '../helpers/nfc-remote.js';
import type { CopyTicketInfo } from '../../src/nfc/receiver.js';

const CHILD = fileURLToPath(new URL('../helpers/nfc-corrupt-child.js', import.meta.url));

const SHAPES = [
  { path: 'vm/disk-flat.raw', content: { kind: 'random', sizeBytes: 3 * MiB + 12_345 } },
  { path: 'vm/sparse.raw', content: { kind: 'sparse', sizeBytes: 32 * MiB, dataAt: [5 * MiB, 20 * MiB + 7], dataBytes: 100_000 } },
  { path: 'vm/empty.raw', content: { kind: 'random', sizeBytes: 0 } },
  { path: 'images/exact.img', content: { kind: 'random', sizeBytes: 2 * MiB } },
] as const;
/** Past the copier's SYNC_EVERY_BYTES (64 MiB): a sync lands inside it, with chunks still to go. */
const BIG_PATH = 'vm/big.raw';
const BIG_BYTES = 72 * MiB + 4321;
/** Four whole chunks: whichever chunk a failpoint damages, it is NFC_CHUNK_BYTES long. */
const FOUR_PATH = 'vm/four.raw';
/** Paced so that time-based syncs (SYNC_EVERY_MS) land inside BIG_PATH with most of it still to go. */
const PACED_BYTES_PER_SEC = 24 * MiB;

/** A receiver that speaks only as `answer` says (one frame at a time): for what a real one never does. */
async function fakeReceiver(answer: (frame: Frame, socket: ByteStream) => boolean): Promise<{ readonly address: TransportAddress; close(): Promise<void> }> {
  const sockets: ByteStream[] = [];
  const listener: Listener = await tcpTransport.listen(LOOPBACK, (socket) => {
    sockets.push(socket);
    const reader = new FrameReader();
    socket.on('data', (chunk: Buffer) => { for (const f of reader.push(chunk)) answer(f, socket); });
  });
  return {
    address: listener.address,
    close: async () => { for (const s of sockets) s.destroy(); await listener.close(); },
  };
}

async function checkCopied(dirs: NfcDirs, plan: CopyPlan, record: CopyJobRecord): Promise<void> {
  assert.equal(record.outcome, 'completed', JSON.stringify(record.error));
  assert.equal(record.files.length, plan.files.length);
  for (const [i, f] of plan.files.entries()) {
    const want = await expectedDigest(join(dirs.src, f.path));
    assert.deepEqual(record.files[i], { path: f.path, sizeBytes: f.sizeBytes, sourceDigest: want, targetDigest: want }, f.path);
    assert.ok(await sameBytes(join(dirs.src, f.path), join(dirs.dst, f.path)), `${f.path}: bytes differ`);
  }
}

describe('remote sink ↔ receiver (remote form over TCP)', () => {
  let dirs: NfcDirs;
  let src: LocalDatastore;
  let dst: LocalDatastore;
  let r: TestReceiver;
  before(async () => {
    dirs = await nfcDirs('ferry-nfc-remote-');
    src = await mountAs(dirs.src, 'src', HOST_A);
    dst = await mountAs(dirs.dst, 'dst', HOST_B);
    for (const s of SHAPES) await writeSourceFile(dirs.src, s.path, s.content);
    await writeSourceFile(dirs.src, BIG_PATH, { kind: 'random', sizeBytes: BIG_BYTES });
    await writeSourceFile(dirs.src, FOUR_PATH, { kind: 'random', sizeBytes: 4 * NFC_CHUNK_BYTES });
  });
  after(async () => { await dirs.cleanup(); });
  afterEach(async () => {
    await r.receiver.close();
    for (const name of await readdir(dirs.dst)) if (name !== '.ferry-datastore') await rm(join(dirs.dst, name), { recursive: true, force: true });
  });

  it('copies several files — random, sparse, empty, a chunk multiple — over 3 streams, verified; the copy\'s ticket ends with it', async () => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), SHAPES.map((s) => s.path));
    const { job, sink } = await remoteCopyJob(src, r, plan, await r.ticket(plan), { streams: 3 });
    const record = await job.run();
    await checkCopied(dirs, plan, record);
    assert.equal(record.sentBytes, 3 * MiB + 12_345 + 2 * NFC_CHUNK_BYTES + 2 * MiB, 'holes move no data');
    assert.equal(sink()?.resentBytes, 0);
    assert.deepEqual(await readCopyJournal(dst, plan.copyId), { copyId: plan.copyId, boundary: record.to, epoch: 1, complete: true });
    await r.until(() => r.receiver.openTickets === 0 && r.closedSinks() === 1, 'the ticket ended and the sink closed');
  });

  it(`spreads a copy over MAX_COPY_STREAMS (${MAX_COPY_STREAMS}) streams`, async (t) => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), [SHAPES[0].path, BIG_PATH]);
    const transport = new CuttableTransport();
    const { job } = await remoteCopyJob(src, r, plan, await r.ticket(plan), { streams: MAX_COPY_STREAMS, transport });
    const t0 = performance.now();
    const record = await job.run();
    const ms = performance.now() - t0;
    await checkCopied(dirs, plan, record);
    assert.equal(transport.streams.length, MAX_COPY_STREAMS);
    // A figure for the report, not a goal of this test (the benchmark has the goals).
    t.diagnostic(`remote copy of ${((3 * MiB + 12_345 + BIG_BYTES) / MiB).toFixed(0)} MiB over ${MAX_COPY_STREAMS} streams: ${ms.toFixed(0)} ms (${((3 * MiB + BIG_BYTES) / MiB / (ms / 1000)).toFixed(0)} MiB/s, verification included)`);
  });

  it('resumes at the receiver\'s journal after the connections were cut mid-copy, to the same files and digests', async () => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), [SHAPES[0].path, BIG_PATH]);
    const ticket = await r.ticket(plan);
    const transport = new CuttableTransport();
    let synced = false;
    const first = await remoteCopyJob(src, r, plan, ticket, {
      transport, rateBytesPerSec: PACED_BYTES_PER_SEC,
      wrap: (sink) => {
        const inner = instrumentedSink(sink, () => { if (synced) transport.cut(); });
        return { ...inner, get resumeAt() { return sink.resumeAt; }, sync: async () => { const b = await sink.sync(); if (b.fileIndex === 1 && b.offsetBytes > 0) synced = true; return b; } };
      },
    });
    const cut = await first.job.run();
    assert.equal(cut.outcome, 'failed');
    assert.equal(cut.error?.code, 'HOST_UNREACHABLE');
    assert.match(cut.error?.message ?? '', new RegExp(`127\\.0\\.0\\.1:${ticket.port}`));
    // The receiver closes the session's sink when its last stream goes; the journal says how far the copy got.
    await r.until(() => r.closedSinks() === 1, 'the cut session\'s sink closed');
    const journal = await readCopyJournal(dst, plan.copyId);
    assert.ok(journal.boundary !== null && journal.boundary.fileIndex === 1 && journal.boundary.offsetBytes > 0, `journal at ${JSON.stringify(journal.boundary)}`);
    // What the sender last heard as durable is what the journal holds (a sync's reply comes after its journal write).
    assert.ok(compareBoundaries(journal.boundary, cut.to) >= 0, `journal ${JSON.stringify(journal.boundary)} behind the acknowledged ${JSON.stringify(cut.to)}`);
    // The same ticket (same epoch) opens a new session: it resumes exactly at the journal's boundary.
    const second = await remoteCopyJob(src, r, plan, ticket);
    const record = await second.job.run();
    assert.deepEqual(record.from, journal.boundary);
    assert.ok(record.sentBytes < 3 * MiB + BIG_BYTES, 'the resumed copy did not start over');
    await checkCopied(dirs, plan, record);
  });

  it('a newer epoch fences the running one out (COPY_FENCED), and the newer epoch finishes from the journal', async () => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), [SHAPES[0].path, BIG_PATH]);
    const t1 = await r.ticket(plan, 1);
    const fencing: { ticket: Promise<CopyTicketInfo> | null } = { ticket: null };
    const first = await remoteCopyJob(src, r, plan, t1, {
      wrap: (sink) => instrumentedSink(sink, (_i, _off, n) => { if (n === 8) fencing.ticket = r.ticket(plan, 2); }),
    });
    const fenced = await first.job.run();
    assert.equal(fenced.outcome, 'failed');
    assert.equal(fenced.error?.code, 'COPY_FENCED', fenced.error?.message);
    assert.ok(fencing.ticket !== null, 'the eighth write asked for epoch 2');
    const t2 = await fencing.ticket;
    const second = await remoteCopyJob(src, r, plan, t2, { epoch: 2 });
    const record = await second.job.run();
    await checkCopied(dirs, plan, record);
    assert.equal((await readCopyJournal(dst, plan.copyId)).epoch, 2);
    // Epoch 1's ticket is refused from now on, as COPY_FENCED.
    await assert.rejects(openRemoteSink(remoteSinkOptions(r, plan, t1)), (err: unknown) => isFerryError(err, 'COPY_FENCED') && err.origin === 'remote');
  });

  it('rethrows the receiver\'s refusals with its own codes: another plan, a bad ticket, a locked copy, a write the sink refuses', async () => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), [SHAPES[0].path]);
    const t = await r.ticket(plan);
    const changed = { ...plan, files: plan.files.map((f) => ({ ...f, modifiedMs: f.modifiedMs + 1 })) };
    const refused = async (p: Promise<unknown>, code: string): Promise<void> => {
      await assert.rejects(p, (err: unknown) => {
        assert.ok(err instanceof FerryError && err.code === code && err.origin === 'remote', `expected remote ${code}, got ${String(err)}`);
        return true;
      });
    };
    await refused(openRemoteSink(remoteSinkOptions(r, changed, t)), 'COPY_CONFLICT');
    await refused(openRemoteSink(remoteSinkOptions(r, plan, { ...t, ticket: 'e'.repeat(64) })), 'TICKET_INVALID');
    const holder: CopySink = await openLocalSink(await mountAs(dirs.dst, 'dst', { hostName: 'x', hostId: 'cccccccccccccccc' }), { plan, epoch: 1 });
    await refused(openRemoteSink(remoteSinkOptions(r, plan, t)), 'DISK_LOCKED');
    await holder.close();
    const sink = await openRemoteSink(remoteSinkOptions(r, plan, t));
    const data = Buffer.alloc(NFC_CHUNK_BYTES, 1);
    const sha = createHash('sha256').update(data).digest();
    await sink.write(0, 0, data, sha);
    // File 0 cannot be finished before all its chunks are written: the local sink says so, and the sink fails with its word.
    await refused(sink.finishFile(0), 'INVALID_ARGUMENT');
    await refused(sink.sync(), 'INVALID_ARGUMENT');
    await sink.close();
  });

  it('a broken connection fails every pending and later call with HOST_UNREACHABLE naming the receiver; close() still returns', async () => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), [BIG_PATH]);
    const t = await r.ticket(plan);
    const transport = new CuttableTransport();
    const sink = await openRemoteSink(remoteSinkOptions(r, plan, t, { transport, streams: 2 }));
    const data = Buffer.alloc(NFC_CHUNK_BYTES, 7);
    const sha = createHash('sha256').update(data).digest();
    const writes = Array.from({ length: 12 }, (_, i) => sink.write(0, i * NFC_CHUNK_BYTES, data, sha));
    transport.cut();
    const where = new RegExp(`127\\.0\\.0\\.1:${t.port}`);
    const results = await Promise.allSettled(writes);
    const failed = results.filter((x): x is PromiseRejectedResult => x.status === 'rejected');
    assert.ok(failed.length > 0, 'writes in flight when the connection broke fail');
    for (const f of failed) assert.ok(isFerryError(f.reason, 'HOST_UNREACHABLE') && where.test(f.reason.message), String(f.reason));
    await assert.rejects(sink.sync(), (err: unknown) => isFerryError(err, 'HOST_UNREACHABLE') && where.test(err.message));
    await assert.rejects(sink.write(0, 0, data, sha), { code: 'HOST_UNREACHABLE' });
    await sink.close();
    await r.until(() => r.closedSinks() === 1, 'the receiver closed the sink of the broken session');
  });

  it('a receiver that is not there: HOST_UNREACHABLE naming the address', async () => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), [SHAPES[0].path]);
    const t = await r.ticket(plan);
    const port = r.receiver.port;
    await r.receiver.close();
    await assert.rejects(openRemoteSink(remoteSinkOptions(r, plan, { ...t, port })), (err: unknown) => isFerryError(err, 'HOST_UNREACHABLE') && err.message.includes(`127.0.0.1:${port}`));
    r = await startReceiver(dst);
  });

  it('cancelling (the signal) fails the sink\'s calls with CANCELLED', async () => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), [SHAPES[0].path]);
    const abort = new AbortController();
    const sink = await openRemoteSink(remoteSinkOptions(r, plan, await r.ticket(plan), { signal: abort.signal }));
    abort.abort(new FerryError('CANCELLED', 'the test cancels'));
    await assert.rejects(sink.sync(), { code: 'CANCELLED' });
    await sink.close();
  });

  it('discard() gives the copy up on the receiver: its journal and staging files are removed', async () => {
    r = await startReceiver(dst);
    const plan = await planOf(src, newCopyId(), [SHAPES[0].path]);
    const sink = await openRemoteSink(remoteSinkOptions(r, plan, await r.ticket(plan)));
    const data = Buffer.alloc(NFC_CHUNK_BYTES, 3);
    await sink.write(0, 0, data, createHash('sha256').update(data).digest());
    assert.deepEqual(await sink.sync(), { fileIndex: 0, offsetBytes: NFC_CHUNK_BYTES });
    await sink.discard();
    assert.equal((await readCopyJournal(dst, plan.copyId)).boundary, null);
    assert.equal(r.receiver.openTickets, 0);
    assert.deepEqual((await readdir(join(dirs.dst, 'vm'))).filter((n) => n.includes('.ferry-copy-')), []);
  });

  it(`a link that damages every send: the chunk is sent ${MAX_CHUNK_RESENDS} times more, then the write fails with CHUNK_CORRUPT`, async () => {
    r = await startReceiver(dst);
    let datas = 0;
    const fake = await fakeReceiver((f, socket) => {
      if (f.command !== Command.DATA) return socket.write(encodeOk(f.requestId, f.command === Command.HELLO ? { resumeAt: { fileIndex: 0, offsetBytes: 0 } } : {}));
      datas++;
      return socket.write(encodeError(f.requestId, { code: 'CHUNK_CORRUPT', message: 'damaged' }));
    });
    try {
      const plan = await planOf(src, newCopyId(), [SHAPES[0].path]);
      const sink = await openRemoteSink({ ...remoteSinkOptions(r, plan, await r.ticket(plan)), address: fake.address, streams: 2 });
      const data = Buffer.alloc(NFC_CHUNK_BYTES, 9);
      await assert.rejects(sink.write(0, 0, data, createHash('sha256').update(data).digest()), (err: unknown) => isFerryError(err, 'CHUNK_CORRUPT') && /4 times/.test(err.message));
      assert.equal(datas, 1 + MAX_CHUNK_RESENDS);
      assert.equal(sink.resentBytes, MAX_CHUNK_RESENDS * NFC_CHUNK_BYTES);
      await sink.close();
    } finally {
      await fake.close();
    }
  });

  it('a receiver that stops answering fails the waiting call, and every later one, with HOST_UNREACHABLE: no hang', async () => {
    r = await startReceiver(dst);
    const fake = await fakeReceiver((f, socket) => (f.command === Command.HELLO ? socket.write(encodeOk(f.requestId, { resumeAt: { fileIndex: 0, offsetBytes: 0 } })) : true));
    try {
      const plan = await planOf(src, newCopyId(), [SHAPES[0].path]);
      const sink = await openRemoteSink({ ...remoteSinkOptions(r, plan, await r.ticket(plan)), address: fake.address, streams: 1, requestTimeoutMs: 300 });
      const data = Buffer.alloc(NFC_CHUNK_BYTES, 9);
      await assert.rejects(sink.write(0, 0, data, createHash('sha256').update(data).digest()),
        (err: unknown) => isFerryError(err, 'HOST_UNREACHABLE') && /no reply to DATA at 0 of file 0 within 300 ms/.test(err.message) && err.message.includes(`127.0.0.1:${fake.address.port}`));
      await assert.rejects(sink.complete(), { code: 'HOST_UNREACHABLE' });
      await sink.close();
    } finally {
      await fake.close();
    }
  });

  it('a chunk damaged on the wire after its CRC-32 (failpoint, in a child process) is detected by the receiver and sent again; the copy verifies', async () => {
    const plan = await planOf(src, newCopyId(), [FOUR_PATH, SHAPES[2].path]);
    const planFile = join(dirs.base, 'corrupt-plan.json');
    await writeFile(planFile, JSON.stringify(plan));
    const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [CHILD, dirs.src, dirs.dst, planFile, '2'], {
        stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, [FAILPOINTS_ENV]: `${CORRUPT_FAILPOINT}=drop:3` },
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.once('error', reject);
      child.once('close', (c) => { resolve({ code: c, stdout: out, stderr: err }); });
    });
    assert.equal(code, 0, stderr);
    assert.ok(stderr.includes(failpointHitLine(CORRUPT_FAILPOINT, 'drop')), `the failpoint fired: ${stderr}`);
    const line = stdout.split('\n').find((l) => l.startsWith('result '));
    assert.ok(line !== undefined, stdout);
    const result = JSON.parse(line.slice('result '.length)) as { record: CopyJobRecord; resentBytes: number; lines: string[] };
    assert.equal(result.resentBytes, NFC_CHUNK_BYTES, 'one chunk was sent again');
    assert.ok(result.lines.some((l) => /arrived damaged: CRC-32/.test(l)), result.lines.join('\n'));
    await checkCopied(dirs, plan, result.record);
    r = await startReceiver(dst);
  });
});
