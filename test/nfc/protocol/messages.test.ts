import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Command, type Frame, type FrameCommand } from '../../../src/nfc/protocol/frame.js';
import {
  checkChunkInPlan, checkDataCrc, completeReplySchema, copiedFileFromWire, copiedFileToWire, decodeData, decodeMessage, encodeAbort,
  encodeData, encodeDataHead, encodeEmpty, encodeError, encodeErrorFor, encodeFinishFile, encodeHello, encodeHole, encodeMessage, encodeOk,
  helloReplySchema, parseReply, type Message,
} from '../../../src/nfc/protocol/messages.js';
import { FerryError } from '../../../src/lib/errors.js';
import {
  DOC_CHUNK_BYTES, DOC_DATA_HEADER_BYTES, KiB, MiB, PLAN, chunkBytes, dataBody, docDataPayload, helloBody, jsonFrame, rawFrame, throwsCode,
} from './fixtures.js';

function frameOf(bytes: Buffer): Frame {
  return { command: bytes[5] as FrameCommand, requestId: bytes.readUInt32LE(8), payload: bytes.subarray(16) };
}

function decode(bytes: Buffer, plan = true): Message {
  return decodeMessage(frameOf(bytes), plan ? { plan: PLAN } : {});
}

describe('NFC messages', () => {
  it('every command decodes and re-encodes to the same bytes', () => {
    const frames = [
      encodeHello(1, helloBody(1, 3)),
      encodeData(2, dataBody(0, 1 * MiB, chunkBytes(0, 1 * MiB, 1 * MiB))),
      encodeData(3, dataBody(0, 2 * MiB, chunkBytes(0, 2 * MiB, 300))),
      encodeHole(4, { fileIndex: 0, offsetBytes: 2 * MiB, lengthBytes: 300 }),
      encodeEmpty(Command.SYNC, 5),
      encodeFinishFile(6, { fileIndex: 1 }),
      encodeEmpty(Command.COMPLETE, 7),
      encodeEmpty(Command.CLOSE, 8),
      encodeAbort(9, { reason: 'cancelled by the operator' }),
      encodeOk(10, { resumeAt: { fileIndex: 1, offsetBytes: 0 } }),
      encodeError(11, { code: 'COPY_FENCED', message: 'a later epoch took over' }),
    ];
    for (const bytes of frames) {
      const msg = decode(bytes);
      assert.equal(msg.requestId, bytes.readUInt32LE(8));
      assert.ok(encodeMessage(msg).equals(bytes), `${msg.command} re-encodes to the same bytes`);
    }
  });

  it('lays DATA out as the document says: file index, length, offset (u64), CRC-32, reserved, SHA-256, data', () => {
    const data = chunkBytes(2, 0, 100);
    const sha = createHash('sha256').update(data).digest();
    const mine = encodeData(7, dataBody(2, 0, data));
    const doc = docDataPayload({ fileIndex: 2, offsetBytes: 0n, crc32: dataBody(2, 0, data).crc32, sha256: sha, data });
    assert.ok(mine.subarray(16).equals(doc));
    assert.equal(mine.readUInt32LE(12), DOC_DATA_HEADER_BYTES + 100);
    const head = encodeDataHead(7, { ...dataBody(2, 0, data), lengthBytes: 100 });
    assert.ok(Buffer.concat([head, data]).equals(mine), 'the head and the chunk make the frame');
    const body = decodeData(doc);
    assert.ok(Buffer.from(body.sha256).equals(sha));
    assert.ok(Buffer.from(body.data).equals(data));
  });

  it('refuses a DATA whose layout is wrong', () => {
    const data = Buffer.alloc(100, 1);
    const ok = { fileIndex: 2, offsetBytes: 0n, crc32: 0, sha256: Buffer.alloc(32), data };
    throwsCode(() => decodeData(Buffer.alloc(55)), 'PROTOCOL_BAD_PAYLOAD', /56-byte header/);
    throwsCode(() => decodeData(docDataPayload({ ...ok, lengthBytes: 99 })), 'PROTOCOL_BAD_PAYLOAD', /says 99/);
    throwsCode(() => decodeData(docDataPayload({ ...ok, reserved: 1 })), 'PROTOCOL_BAD_PAYLOAD', /reserved/);
    throwsCode(() => decodeData(docDataPayload({ ...ok, offsetBytes: 2n ** 63n })), 'PROTOCOL_BAD_PAYLOAD', /offset/);
    throwsCode(() => decodeData(docDataPayload({ ...ok, fileIndex: 2 ** 32 - 1 })), 'PROTOCOL_BAD_PAYLOAD', /file index/);
    throwsCode(() => encodeDataHead(1, { fileIndex: 0, offsetBytes: 0, crc32: 0, sha256: Buffer.alloc(31), lengthBytes: 1 }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeDataHead(1, { fileIndex: 0, offsetBytes: 0, crc32: 0, sha256: Buffer.alloc(32), lengthBytes: DOC_CHUNK_BYTES + 1 }), 'PROTOCOL_TOO_LARGE');
  });

  it('takes only whole chunks of the plan, in DATA and in HOLE', () => {
    const bad: [number, number, number, RegExp][] = [
      [3, 0, 100, /not in the plan/],
      [0, 1, DOC_CHUNK_BYTES, /does not start at a chunk/],
      [0, 3 * MiB, 300, /does not start at a chunk/],
      [0, 0, DOC_CHUNK_BYTES - 1, /one whole chunk/],
      [0, 2 * MiB, 299, /one whole chunk/],
      [0, 2 * MiB, 301, /one whole chunk/],
      [1, 0, 0, /does not start at a chunk/],
      [2, 0, 99, /one whole chunk/],
    ];
    for (const command of [Command.DATA, Command.HOLE] as const) {
      for (const [f, o, n, why] of bad) throwsCode(() => { checkChunkInPlan(command, PLAN, f, o, n); }, 'PROTOCOL_BAD_PAYLOAD', why);
      checkChunkInPlan(command, PLAN, 0, 0, DOC_CHUNK_BYTES);
      checkChunkInPlan(command, PLAN, 0, MiB, DOC_CHUNK_BYTES);
      checkChunkInPlan(command, PLAN, 0, 2 * MiB, 300);
      checkChunkInPlan(command, PLAN, 2, 0, 100);
      throwsCode(() => { checkChunkInPlan(command, PLAN, 0, 0, 2 * MiB); }, 'PROTOCOL_BAD_PAYLOAD', /one whole chunk/);
    }
    throwsCode(() => decode(encodeHole(1, { fileIndex: 0, offsetBytes: 0, lengthBytes: 2 * MiB })), 'PROTOCOL_BAD_PAYLOAD');
    // Through decodeMessage, with the plan; before HELLO (no plan) they are out of order.
    throwsCode(() => decode(encodeData(1, dataBody(0, 0, Buffer.alloc(100)))), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decode(encodeFinishFile(1, { fileIndex: 3 })), 'PROTOCOL_BAD_PAYLOAD', /not in the plan/);
    throwsCode(() => decode(encodeData(1, dataBody(2, 0, Buffer.alloc(100))), false), 'PROTOCOL_OUT_OF_ORDER');
    throwsCode(() => decode(encodeHole(1, { fileIndex: 0, offsetBytes: 0, lengthBytes: MiB }), false), 'PROTOCOL_OUT_OF_ORDER');
  });

  it('says CHUNK_CORRUPT for a DATA whose bytes do not match its CRC-32, and nothing for one that does', () => {
    const body = dataBody(2, 0, chunkBytes(2, 0, 100));
    checkDataCrc(body);
    const damaged = Buffer.from(body.data);
    damaged[50] = (damaged[50] ?? 0) ^ 0x10;
    throwsCode(() => { checkDataCrc({ ...body, data: damaged }); }, 'CHUNK_CORRUPT', /send it again/);
  });

  it('validates JSON bodies strictly: UTF-8, an object, the schema, no unknown keys', () => {
    const hello = { ...helloBody() };
    throwsCode(() => decode(jsonFrame(Command.HELLO, { ...hello, extra: 1 })), 'PROTOCOL_BAD_PAYLOAD', /extra|Unrecognized/);
    throwsCode(() => decode(jsonFrame(Command.HELLO, { ...hello, protocol: 2 })), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decode(jsonFrame(Command.HELLO, { ...hello, stream: 2, streams: 2 })), 'PROTOCOL_BAD_PAYLOAD', /stream/);
    throwsCode(() => decode(jsonFrame(Command.HELLO, { ...hello, streams: 9 })), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decode(jsonFrame(Command.HELLO, { ...hello, epoch: 0 })), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decode(jsonFrame(Command.HELLO, [hello])), 'PROTOCOL_BAD_PAYLOAD', /array/);
    throwsCode(() => decode(rawFrame(Command.SYNC, Buffer.from([0x7b, 0xff, 0x7d]))), 'PROTOCOL_BAD_PAYLOAD', /UTF-8/);
    throwsCode(() => decode(rawFrame(Command.SYNC, Buffer.from('{'))), 'PROTOCOL_BAD_PAYLOAD', /not JSON/);
    throwsCode(() => decode(jsonFrame(Command.SYNC, { now: true })), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decode(jsonFrame(Command.HOLE, { fileIndex: 0, offsetBytes: 0, lengthBytes: 0 })), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decode(jsonFrame(Command.ABORT, { reason: 'x'.repeat(513) })), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decode(jsonFrame(Command.ERROR, { code: '', message: 'm' })), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeHello(1, { ...hello, ticket: 'nothex' }), 'PROTOCOL_BAD_PAYLOAD', /cannot encode HELLO/);
  });

  it('keeps a FerryError\'s code in ERROR and clips long messages and reasons instead of refusing them', () => {
    const e = decode(encodeErrorFor(3, new FerryError('SOURCE_CHANGED', 'disk.vmdk changed')));
    assert.deepEqual(e, { command: Command.ERROR, requestId: 3, body: { code: 'SOURCE_CHANGED', message: 'disk.vmdk changed' } });
    const other = decode(encodeErrorFor(4, new TypeError('boom')));
    assert.equal(other.command === Command.ERROR && other.body.code, 'INTERNAL');
    const long = decode(encodeError(5, { code: 'INTERNAL', message: 'm'.repeat(10 * KiB) }));
    assert.ok(long.command === Command.ERROR && long.body.message.length === 4096 && long.body.message.endsWith('…'));
    const abort = decode(encodeAbort(6, { reason: 'r'.repeat(1000) }));
    assert.ok(abort.command === Command.ABORT && abort.body.reason.length === 512);
  });

  it('checks each reply against its request\'s schema and names finished files by the plan\'s paths', () => {
    assert.deepEqual(parseReply(Command.HELLO, helloReplySchema, { resumeAt: { fileIndex: 0, offsetBytes: MiB } }), { resumeAt: { fileIndex: 0, offsetBytes: MiB } });
    throwsCode(() => parseReply(Command.HELLO, helloReplySchema, {}), 'PROTOCOL_BAD_PAYLOAD', /OK to HELLO/);
    const file = { path: 'images/b.img', sizeBytes: 100, sourceDigest: 'a'.repeat(64), targetDigest: 'a'.repeat(64) };
    const wire = copiedFileToWire(2, file);
    assert.deepEqual(parseReply(Command.COMPLETE, completeReplySchema, { files: [wire] }), { files: [wire] });
    assert.deepEqual(copiedFileFromWire(PLAN, wire), file);
    throwsCode(() => copiedFileFromWire(PLAN, { ...wire, sizeBytes: 101 }), 'PROTOCOL_BAD_PAYLOAD', /not a file of the plan/);
  });
});
