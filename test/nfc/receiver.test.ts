/**
 * The copy receiver on a real socket (127.0.0.1, port 0) over a real target datastore (the local sink),
 * driven by a raw protocol client: what it answers, what it refuses (each PROTOCOL_* code, the ticket's
 * refusals, a damaged chunk), how it bounds what it holds, how sessions share and close the sink, and
 * fencing by a newer epoch.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { tcpTransport } from '../../src/dataplane/tcp.js';
import { MiB } from '../../src/lib/units.js';
import { planDigestOf } from '../../src/nfc/journal.js';
import { openLocalSink, readCopyJournal } from '../../src/nfc/local-sink.js';
import type { CopyPlan } from '../../src/nfc/plan.js';
import { Command } from '../../src/nfc/protocol/frame.js';
import {
  dataCrc32, encodeAbort, encodeData, encodeEmpty, encodeFinishFile, encodeHello, encodeHole, type HelloBody,
} from '../../src/nfc/protocol/messages.js';
import { MAX_OPEN_TICKETS, type CopyTicketInfo } from '../../src/nfc/receiver.js';
import type { CopySink } from '../../src/nfc/sink.js';
import type { LocalDatastore } from '../../src/storage/local-datastore.js';
import { HOST_B, mountAs, newCopyId, nfcDirs, type NfcDirs } from '../helpers/nfc.js';
import { LOOPBACK, RawClient, TARGET_DATASTORE, startReceiver, type TestReceiver } from '../helpers/nfc-remote.js';
import { rawFrame, rawHeader } from './protocol/fixtures.js';

const SESSION_A = 'a1'.repeat(16);
const SESSION_B = 'b2'.repeat(16);

/** Two files: three chunks (the last short) and one short chunk. */
function planFor(copyId = newCopyId()): CopyPlan {
  return { copyId, files: [{ path: 'big.raw', sizeBytes: 2 * MiB + 300, modifiedMs: 1 }, { path: 'small.raw', sizeBytes: 100, modifiedMs: 2 }] };
}

function chunk(fileIndex: number, offsetBytes: number, n: number): Buffer {
  return Buffer.alloc(n, (fileIndex * 7 + offsetBytes / MiB + 1) & 0xff);
}

function dataFrame(requestId: number, fileIndex: number, offsetBytes: number, n: number, damage = false): Buffer {
  const data = chunk(fileIndex, offsetBytes, n);
  const body = { fileIndex, offsetBytes, crc32: dataCrc32(data), sha256: createHash('sha256').update(data).digest(), data };
  return encodeData(requestId, damage ? { ...body, data: Buffer.from(data).fill(0xee, 0, 1) } : body);
}

function hello(t: CopyTicketInfo, plan: CopyPlan, o: Partial<HelloBody> = {}): HelloBody {
  return { protocol: 1, ticket: t.ticket, copyId: plan.copyId, epoch: 1, session: SESSION_A, stream: 0, streams: 1, planDigest: planDigestOf(plan), ...o };
}

describe('copy receiver', () => {
  let dirs: NfcDirs;
  let dst: LocalDatastore;
  let r: TestReceiver;
  before(async () => {
    dirs = await nfcDirs('ferry-nfc-recv-');
    dst = await mountAs(dirs.dst, 'dst', HOST_B);
  });
  after(async () => { await dirs.cleanup(); });
  afterEach(async () => {
    await r.receiver.close();
    for (const name of await readdir(dirs.dst)) if (name !== '.ferry-datastore') await rm(join(dirs.dst, name), { recursive: true, force: true });
  });

  /** A receiver, a plan with its ticket, and a client whose HELLO was accepted (resumeAt checked). */
  async function opened(o: Parameters<typeof startReceiver>[1] = {}): Promise<{ plan: CopyPlan; t: CopyTicketInfo; c: RawClient }> {
    r = await startReceiver(dst, o);
    const plan = planFor();
    const t = await r.ticket(plan);
    const c = await RawClient.connect(r.address);
    c.send(encodeHello(1, hello(t, plan)));
    assert.deepEqual(await c.ok(1), { resumeAt: { fileIndex: 0, offsetBytes: 0 } });
    return { plan, t, c };
  }

  it('writes a whole copy sent over one stream: holes, data, syncs, finished files, COMPLETE, CLOSE', async () => {
    const { plan, c } = await opened();
    c.send(
      encodeHole(2, { fileIndex: 0, offsetBytes: 0, lengthBytes: MiB }),
      dataFrame(3, 0, MiB, MiB),
      dataFrame(4, 0, 2 * MiB, 300),
      encodeEmpty(Command.SYNC, 5),
    );
    assert.deepEqual(await c.ok(2), {});
    assert.deepEqual(await c.ok(3), {});
    assert.deepEqual(await c.ok(4), {});
    assert.deepEqual(await c.ok(5), { boundary: { fileIndex: 0, offsetBytes: 2 * MiB + 300 } });
    c.send(encodeFinishFile(6, { fileIndex: 0 }), dataFrame(7, 1, 0, 100), encodeFinishFile(8, { fileIndex: 1 }), encodeEmpty(Command.COMPLETE, 9));
    const f0 = await c.ok(6);
    assert.deepEqual(Object.keys(f0), ['file']);
    await c.ok(7);
    await c.ok(8);
    const all = await c.ok(9);
    assert.ok(Array.isArray(all.files) && all.files.length === 2);
    c.send(encodeEmpty(Command.CLOSE, 10));
    assert.deepEqual(await c.ok(10), {});
    assert.deepEqual((await readCopyJournal(dst, plan.copyId)).complete, true);
    assert.equal(r.receiver.openTickets, 0, 'the copy is over: its ticket ended');
    c.close();
  });

  it('refuses a damaged chunk alone (CHUNK_CORRUPT) and takes it again on the same stream', async () => {
    const { c } = await opened();
    c.send(dataFrame(2, 1, 0, 100, true), dataFrame(3, 1, 0, 100));
    await c.refused('CHUNK_CORRUPT', 2, { stays: true, message: /CRC-32/ });
    await c.ok(3);
    assert.ok(r.lines.some((l) => l.includes('arrived damaged')));
    c.close();
  });

  it('refuses bad frames with their PROTOCOL_* codes and closes the connection', async () => {
    r = await startReceiver(dst);
    const cases: Array<[Buffer, string]> = [
      [rawHeader({ magic: [0x46, 0x4d, 0x49, 0x47], command: 1, length: 0 }), 'PROTOCOL_BAD_MAGIC'],
      [rawHeader({ version: 2, command: 1, length: 0 }), 'PROTOCOL_VERSION'],
      [rawHeader({ flags: 1, command: 1, length: 0 }), 'PROTOCOL_VERSION'],
      [rawHeader({ command: 42, length: 0 }), 'PROTOCOL_BAD_COMMAND'],
      [rawHeader({ command: Command.DATA, length: 56 + MiB + 1 }), 'PROTOCOL_TOO_LARGE'],
      [rawFrame(Command.HELLO, Buffer.from('{"protocol":1}'), 7), 'PROTOCOL_BAD_PAYLOAD'],
      [dataFrame(7, 0, 0, MiB), 'PROTOCOL_OUT_OF_ORDER'],
      [encodeEmpty(Command.SYNC, 7), 'PROTOCOL_OUT_OF_ORDER'],
    ];
    for (const [bytes, code] of cases) {
      const c = await RawClient.connect(r.address);
      c.send(bytes);
      await c.refused(code, code === 'PROTOCOL_BAD_PAYLOAD' || code === 'PROTOCOL_OUT_OF_ORDER' ? 7 : 0);
    }
  });

  it('refuses, after HELLO, a second HELLO, a DATA outside the plan, a frame past its bound, and a replies-only command', async () => {
    const plan = planFor();
    const cases: Array<[(t: CopyTicketInfo) => Buffer, string, RegExp]> = [
      [(t) => encodeHello(2, hello(t, plan)), 'PROTOCOL_OUT_OF_ORDER', /twice/],
      [() => dataFrame(2, 2, 0, 100), 'PROTOCOL_BAD_PAYLOAD', /not in the plan/],
      [() => dataFrame(2, 0, 0, 300), 'PROTOCOL_BAD_PAYLOAD', /one whole chunk/],
      [() => dataFrame(2, 1, MiB, 100), 'PROTOCOL_BAD_PAYLOAD', /does not start at a chunk/],
      [() => encodeHole(2, { fileIndex: 0, offsetBytes: 2 * MiB, lengthBytes: MiB }), 'PROTOCOL_BAD_PAYLOAD', /one whole chunk/],
      [() => rawFrame(Command.OK, Buffer.from('{}'), 2), 'PROTOCOL_OUT_OF_ORDER', /reply/],
    ];
    for (const [frame, code, why] of cases) {
      r = await startReceiver(dst);
      const t = await r.ticket(plan);
      const c = await RawClient.connect(r.address);
      c.send(encodeHello(1, hello(t, plan)));
      await c.ok(1);
      c.send(frame(t));
      await c.refused(code, 2, { message: why });
      await r.receiver.close();
    }
    r = await startReceiver(dst);
  });

  it('notices a stream truncated inside a frame (PROTOCOL_TRUNCATED) and closes the session\'s sink', async () => {
    const { c } = await opened();
    const half = dataFrame(2, 0, 0, MiB).subarray(0, 1000);
    c.socket.end(half);
    await c.refused('PROTOCOL_TRUNCATED', 0, { message: /the stream ended inside the payload of DATA \(request 2\): 984 of 1048632 bytes arrived/ });
    await r.until(() => r.closedSinks() === 1, 'the session\'s sink closed');
  });

  it('refuses tickets: unknown, for another copy, another epoch, another plan', async () => {
    r = await startReceiver(dst);
    const plan = planFor();
    const t = await r.ticket(plan);
    const cases: Array<[HelloBody, string]> = [
      [hello(t, plan, { ticket: 'f'.repeat(64) }), 'TICKET_INVALID'],
      [hello(t, plan, { copyId: newCopyId() }), 'TICKET_INVALID'],
      [hello(t, plan, { epoch: 2 }), 'TICKET_INVALID'],
      [hello(t, plan, { planDigest: planDigestOf({ ...plan, files: [{ path: 'other.raw', sizeBytes: 1, modifiedMs: 1 }] }) }), 'COPY_CONFLICT'],
    ];
    for (const [body, code] of cases) {
      const c = await RawClient.connect(r.address);
      c.send(encodeHello(1, body));
      await c.refused(code, 1);
    }
    assert.equal(r.opened.length, 0, 'no refused HELLO opened a sink');
  });

  it('a newer epoch\'s ticket fences the older epoch: its session gets COPY_FENCED, its ticket answers COPY_FENCED, an older ticket is refused', async () => {
    const ended: string[] = [];
    r = await startReceiver(dst);
    const plan = planFor();
    const t1 = await r.receiver.issueTicket({ copyId: plan.copyId, epoch: 1, datastore: TARGET_DATASTORE, plan }, { transport: tcpTransport, at: LOOPBACK, ended: () => { ended.push('1'); } });
    assert.notEqual(t1.port, r.receiver.port, 'a ticket via another transport has its own listener');
    const c1 = await RawClient.connect({ host: LOOPBACK.host, port: t1.port });
    c1.send(encodeHello(1, hello(t1, plan)));
    await c1.ok(1);
    c1.send(dataFrame(2, 1, 0, 100));
    await c1.ok(2);
    const t2 = await r.ticket(plan, 2);
    // The old session is told, unasked (request 0), and closed; its sink closed before epoch 2 opens the journal.
    await c1.refused('COPY_FENCED', 0, { message: /epoch 2 took the copy over/ });
    assert.deepEqual(ended, ['1']);
    const c2 = await RawClient.connect(r.address);
    c2.send(encodeHello(1, hello(t2, plan, { epoch: 2 })));
    await c2.ok(1);
    assert.equal((await readCopyJournal(dst, plan.copyId)).epoch, 2);
    const replay = await RawClient.connect(r.address);
    replay.send(encodeHello(1, hello(t1, plan)));
    await replay.refused('COPY_FENCED', 1, { message: /epoch 2 took it over/ });
    await assert.rejects(r.ticket(plan, 1), { code: 'COPY_FENCED' });
    c2.close();
  });

  it('asking again for the same copy and epoch answers the same ticket; another plan or datastore under it is COPY_CONFLICT', async () => {
    r = await startReceiver(dst);
    const plan = planFor();
    const t = await r.ticket(plan);
    assert.deepEqual(await r.ticket(plan), t);
    await assert.rejects(r.ticket({ ...plan, files: [...plan.files, { path: 'x.raw', sizeBytes: 1, modifiedMs: 1 }] }), { code: 'COPY_CONFLICT' });
    await assert.rejects(r.receiver.issueTicket({ copyId: plan.copyId, epoch: 1, datastore: 'elsewhere', plan }), { code: 'COPY_CONFLICT' });
    await assert.rejects(r.receiver.issueTicket({ copyId: newCopyId(), epoch: 1, datastore: TARGET_DATASTORE, plan }), { code: 'INVALID_ARGUMENT' });
  });

  it('holds at most MAX_OPEN_TICKETS tickets', async () => {
    r = await startReceiver(dst);
    for (let i = 0; i < MAX_OPEN_TICKETS; i++) await r.ticket(planFor());
    await assert.rejects(r.ticket(planFor()), { code: 'BUSY' });
    assert.equal(r.receiver.openTickets, MAX_OPEN_TICKETS);
  });

  it('a ticket without a session expires after its life; its via listener closes and its owner is told', async () => {
    r = await startReceiver(dst, { ticketTtlMs: 200 });
    const plan = planFor();
    let ended!: () => void;
    const endedP = new Promise<void>((resolve) => { ended = resolve; });
    const t = await r.receiver.issueTicket({ copyId: plan.copyId, epoch: 1, datastore: TARGET_DATASTORE, plan }, { transport: tcpTransport, at: LOOPBACK, ended });
    await endedP;
    assert.equal(r.receiver.openTickets, 0);
    const c = await RawClient.connect(r.address);
    c.send(encodeHello(1, hello(t, plan)));
    await c.refused('TICKET_INVALID', 1);
  });

  it('refuses a request past MAX_IN_FLIGHT_PER_STREAM on a stream (its buffers stay bounded)', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => { release = resolve; });
    r = await startReceiver(dst, { openSink: async (_name, open) => { await gate; return openLocalSink(dst, open); } });
    const plan = planFor();
    const t = await r.ticket(plan);
    const c = await RawClient.connect(r.address);
    // HELLO waits for its sink (the gate): the SYNCs queue up behind it; the fifth request in flight is refused.
    c.send(encodeHello(1, hello(t, plan)), ...[2, 3, 4, 5].map((id) => encodeEmpty(Command.SYNC, id)));
    await c.refused('PROTOCOL_OUT_OF_ORDER', 5, { message: /at most 4/ });
    release();
  });

  it('shares one sink among a session\'s streams, closes it (journal kept) when the last goes, and resumes the next session at the journal', async () => {
    const { plan, t, c } = await opened();
    c.send(dataFrame(2, 0, 0, MiB), dataFrame(3, 0, MiB, MiB), encodeEmpty(Command.SYNC, 4), dataFrame(5, 0, 2 * MiB, 300));
    for (const id of [2, 3]) await c.ok(id);
    assert.deepEqual(await c.ok(4), { boundary: { fileIndex: 0, offsetBytes: 2 * MiB } });
    await c.ok(5);
    c.close();
    await r.until(() => r.closedSinks() === 1, 'the session\'s sink closed when its only stream went');
    assert.equal(r.receiver.openTickets, 1, 'the ticket stays for the next session');
    // A new session (the sender opened its sink again): two streams, one sink, resuming at the journal's boundary.
    const s0 = await RawClient.connect(r.address);
    const s1 = await RawClient.connect(r.address);
    s0.send(encodeHello(1, hello(t, plan, { session: SESSION_B, streams: 2, stream: 0 })));
    s1.send(encodeHello(1, hello(t, plan, { session: SESSION_B, streams: 2, stream: 1 })));
    assert.deepEqual(await s0.ok(1), { resumeAt: { fileIndex: 0, offsetBytes: 2 * MiB } });
    assert.deepEqual(await s1.ok(1), { resumeAt: { fileIndex: 0, offsetBytes: 2 * MiB } });
    assert.equal(r.opened.length, 2, 'one sink for the first session, one for the second');
    const dup = await RawClient.connect(r.address);
    dup.send(encodeHello(1, hello(t, plan, { session: SESSION_B, streams: 2, stream: 1 })));
    await dup.refused('PROTOCOL_OUT_OF_ORDER', 1, { message: /connected already/ });
    const odd = await RawClient.connect(r.address);
    odd.send(encodeHello(1, hello(t, plan, { session: SESSION_B, streams: 3, stream: 2 })));
    await odd.refused('PROTOCOL_BAD_PAYLOAD', 1, { message: /has 2 streams/ });
    s1.send(dataFrame(2, 0, 2 * MiB, 300));
    await s1.ok(2);
    s0.send(encodeEmpty(Command.SYNC, 2));
    assert.deepEqual(await s0.ok(2), { boundary: { fileIndex: 0, offsetBytes: 2 * MiB + 300 } });
    // ABORT gives the copy up: the journal is gone, the ticket ended, the other stream dropped.
    s0.send(encodeAbort(3, { reason: 'the test gives up' }));
    await s0.ok(3);
    assert.deepEqual(await s1.next(), { kind: 'closed' });
    assert.equal((await readCopyJournal(dst, plan.copyId)).boundary, null);
    assert.equal(r.receiver.openTickets, 0);
    s0.close();
  });

  it('a sink that cannot open (the copy\'s lock held elsewhere) is refused with its own code, and the ticket stays for a retry', async () => {
    r = await startReceiver(dst);
    const plan = planFor();
    const t = await r.ticket(plan);
    const other: CopySink = await openLocalSink(await mountAs(dirs.dst, 'dst', { hostName: 'x', hostId: 'cccccccccccccccc' }), { plan, epoch: 1 });
    const c = await RawClient.connect(r.address);
    c.send(encodeHello(1, hello(t, plan)));
    await c.refused('DISK_LOCKED', 1);
    await other.close();
    const again = await RawClient.connect(r.address);
    again.send(encodeHello(1, hello(t, plan)));
    await again.ok(1);
    again.close();
  });

});
