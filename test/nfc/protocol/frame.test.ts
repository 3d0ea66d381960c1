import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  Command, HEADER_BYTES, MAX_CHUNK_RESENDS, MAX_IN_FLIGHT_PER_STREAM, MAX_PAYLOAD_BYTES, commandName, decodeHeader, encodeFrame,
  isFrameCommand, type FrameCommand,
} from '../../../src/nfc/protocol/frame.js';
import { FrameReader } from '../../../src/nfc/protocol/reader.js';
import { DOC_HEADER_BYTES, DOC_MAGIC, DOC_MAX_PAYLOAD, copyStream, rawHeader, throwsCode } from './fixtures.js';

const COMMANDS: readonly FrameCommand[] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

describe('NFC frame header', () => {
  it('is laid out as the document says: magic FNFC, version 1, command, flags 0, requestId, length (little-endian)', () => {
    assert.equal(HEADER_BYTES, DOC_HEADER_BYTES);
    const f = encodeFrame(Command.SYNC, 0x0102_0304, Buffer.from('{}'));
    assert.deepEqual([...f.subarray(0, 4)], DOC_MAGIC);
    assert.equal(f.subarray(0, 4).toString('latin1'), 'FNFC');
    assert.equal(f[4], 1);
    assert.equal(f[5], 4);
    assert.equal(f.readUInt16LE(6), 0);
    assert.equal(f.readUInt32LE(8), 0x0102_0304);
    assert.equal(f.readUInt32LE(12), 2);
    assert.equal(f.subarray(16).toString(), '{}');
  });

  it('numbers the commands as the document does', () => {
    assert.deepEqual(
      COMMANDS.map((c) => commandName(c)),
      ['HELLO', 'DATA', 'HOLE', 'SYNC', 'FINISH_FILE', 'COMPLETE', 'CLOSE', 'ABORT', 'OK', 'ERROR']);
    assert.equal(commandName(0), 'INVALID');
    assert.equal(commandName(11), 'command 11');
    assert.equal(isFrameCommand(0), false);
    assert.equal(isFrameCommand(11), false);
  });

  it('bounds each command\'s payload as the document does, refused from the header alone', () => {
    for (const command of COMMANDS) {
      const max = DOC_MAX_PAYLOAD[command] ?? -1;
      assert.equal(MAX_PAYLOAD_BYTES[command], max, commandName(command));
      assert.equal(decodeHeader(rawHeader({ command, length: max })).payloadLength, max);
      throwsCode(() => decodeHeader(rawHeader({ command, length: max + 1 })), 'PROTOCOL_TOO_LARGE');
      throwsCode(() => encodeFrame(command, 1, Buffer.alloc(max + 1)), 'PROTOCOL_TOO_LARGE');
    }
  });

  it('states the stream limits of the document', () => {
    assert.equal(MAX_IN_FLIGHT_PER_STREAM, 4);
    assert.equal(MAX_CHUNK_RESENDS, 3);
  });

  it('refuses bad magic, versions, commands and flags with their codes', () => {
    throwsCode(() => decodeHeader(rawHeader({ magic: [0x46, 0x4d, 0x49, 0x47], command: 1, length: 0 })), 'PROTOCOL_BAD_MAGIC', /FNFC/);
    throwsCode(() => decodeHeader(Buffer.from('GET / HTTP/1.1\r\n\r\n')), 'PROTOCOL_BAD_MAGIC', /copy port/);
    for (const version of [0, 2, 255]) throwsCode(() => decodeHeader(rawHeader({ version, command: 1, length: 0 })), 'PROTOCOL_VERSION');
    for (const command of [0, 11, 255]) throwsCode(() => decodeHeader(rawHeader({ command, length: 0 })), 'PROTOCOL_BAD_COMMAND');
    for (const flags of [1, 0x8000]) throwsCode(() => decodeHeader(rawHeader({ command: 1, flags, length: 0 })), 'PROTOCOL_VERSION', /flags/);
    for (let n = 0; n < 16; n++) throwsCode(() => decodeHeader(rawHeader({ command: 1, length: 0 }).subarray(0, n)), 'PROTOCOL_TRUNCATED');
    throwsCode(() => encodeFrame(Command.INVALID, 1, Buffer.alloc(0)), 'PROTOCOL_BAD_COMMAND');
    throwsCode(() => encodeFrame(Command.SYNC, 2 ** 32, Buffer.alloc(0)), 'INVALID_ARGUMENT');
  });
});

describe('NFC FrameReader', () => {
  it('decodes a stream split at every byte boundary into the same frames', () => {
    const stream = copyStream();
    const whole = new FrameReader().push(stream);
    assert.equal(whole.length, 11);
    assert.deepEqual(whole.map((f) => f.command), [1, 3, 3, 2, 5, 5, 2, 4, 5, 6, 7]);
    for (let cut = 1; cut < stream.length; cut++) {
      const reader = new FrameReader();
      const frames = [...reader.push(stream.subarray(0, cut)), ...reader.push(stream.subarray(cut))];
      assert.deepEqual(frames.map((f) => [f.command, f.requestId, f.payload.toString('hex')]), whole.map((f) => [f.command, f.requestId, f.payload.toString('hex')]));
      reader.end();
    }
  });

  it('refuses an oversize DATA from its header, before buffering its payload', () => {
    const reader = new FrameReader();
    throwsCode(() => reader.push(rawHeader({ command: Command.DATA, length: DOC_MAX_PAYLOAD[2]! + 1 })), 'PROTOCOL_TOO_LARGE');
    assert.equal(reader.bufferedBytes, 0);
    throwsCode(() => reader.push(Buffer.alloc(1)), 'PROTOCOL_TOO_LARGE');
  });

  it('says PROTOCOL_TRUNCATED when the stream ends inside a frame, not between frames', () => {
    const stream = copyStream();
    const ok = new FrameReader();
    ok.push(stream);
    ok.end();
    const cut = new FrameReader();
    cut.push(stream.subarray(0, stream.length - 1));
    throwsCode(() => { cut.end(); }, 'PROTOCOL_TRUNCATED');
    const inHeader = new FrameReader();
    inHeader.push(stream.subarray(0, 5));
    throwsCode(() => { inHeader.end(); }, 'PROTOCOL_TRUNCATED', /5 of 16/);
  });

  it('takes large payloads from the allocator and gives them back through release()', () => {
    const given: Buffer[] = [];
    const back: Buffer[] = [];
    const reader = new FrameReader({ minBytes: 64, acquire: (n) => { const b = Buffer.alloc(n + 10); given.push(b); return b; }, release: (b) => { back.push(b); } });
    const payload = Buffer.alloc(200, 7);
    const [frame] = reader.push(rawHeader({ command: Command.OK, length: 200 })).concat(reader.push(payload));
    assert.ok(frame !== undefined);
    assert.equal(frame.payload.length, 200);
    assert.ok(frame.payload.equals(payload));
    assert.equal(given.length, 1);
    frame.release?.();
    assert.deepEqual(back, given);
  });
});
