import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  Command, HEADER_BYTES, MAGIC, MAGIC_BYTES, MAX_ENTRIES_PER_BATCH, MAX_ENTRY_BYTES, MAX_IN_FLIGHT,
  MAX_MEMORY_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES, PAGE_ALIGN_BYTES, PROTOCOL_VERSION, TICKET_TTL_MS, commandName,
  decodeHeader, encodeFrame, encodeHeader, isFrameCommand, type FrameCommand,
} from '../../../src/migration/protocol/frame.js';
import { DOC_HEADER_BYTES, DOC_MAGIC, DOC_MAX_PAYLOAD, KiB, MiB, rawHeader, throwsCode } from './fixtures.js';

const FRAME_COMMANDS: FrameCommand[] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

describe('frame constants', () => {
  it('match the document', () => {
    assert.equal(MAGIC, 'FMIG');
    assert.deepEqual([...MAGIC_BYTES], [...DOC_MAGIC]);
    assert.equal(PROTOCOL_VERSION, 1);
    assert.equal(HEADER_BYTES, DOC_HEADER_BYTES);
    assert.deepEqual(Command, {
      INVALID: 0, HELLO: 1, PREPARE: 2, MEMORY: 3, ROUND: 4, STATE: 5, COMMIT: 6, ABORT: 7, OK: 8, ERROR: 9, DISK: 10,
    });
    for (const c of FRAME_COMMANDS) assert.equal(MAX_PAYLOAD_BYTES[c], DOC_MAX_PAYLOAD[c], commandName(c));
    assert.equal(MAX_IN_FLIGHT, 8);
    assert.equal(TICKET_TTL_MS, 30_000);
    assert.equal(MAX_ENTRIES_PER_BATCH, 4096);
    assert.equal(MAX_ENTRY_BYTES, 2 * MiB);
    assert.equal(PAGE_ALIGN_BYTES, 4096);
    assert.equal(MAX_MEMORY_PAYLOAD_BYTES, 8 * MiB + 64 * KiB);
  });

  it('names commands', () => {
    assert.equal(commandName(Command.PREPARE), 'PREPARE');
    assert.equal(commandName(42), 'command 42');
    assert.equal(isFrameCommand(0), false);
    assert.equal(isFrameCommand(9), true);
    assert.equal(isFrameCommand(11), false);
    assert.equal(isFrameCommand(1.5), false);
  });
});

describe('encodeFrame', () => {
  it('writes the documented little-endian header followed by the payload', () => {
    const payload = Buffer.from('{"a":1}');
    const frame = encodeFrame(Command.ROUND, 0x01020304, payload);
    assert.equal(frame.length, 16 + payload.length);
    assert.deepEqual([...frame.subarray(0, 4)], [0x46, 0x4d, 0x49, 0x47]);
    assert.equal(frame[4], 1);
    assert.equal(frame[5], 4);
    assert.equal(frame.readUInt16LE(6), 0);
    assert.deepEqual([...frame.subarray(8, 12)], [0x04, 0x03, 0x02, 0x01]);
    assert.equal(frame.readUInt32LE(12), payload.length);
    assert.deepEqual(frame.subarray(16), payload);
  });

  it('accepts an empty payload, requestId 0 and 2^32-1, and a payload exactly at the bound', () => {
    assert.equal(encodeFrame(Command.OK, 0, new Uint8Array(0)).length, 16);
    assert.equal(encodeFrame(Command.OK, 2 ** 32 - 1, new Uint8Array(0)).readUInt32LE(8), 2 ** 32 - 1);
    assert.equal(encodeFrame(Command.HELLO, 1, new Uint8Array(4 * KiB)).length, 16 + 4 * KiB);
  });

  it('copies the payload (later changes to it do not alter the frame)', () => {
    const payload = Buffer.from([1, 2, 3]);
    const frame = encodeFrame(Command.OK, 1, payload);
    payload[0] = 9;
    assert.equal(frame[16], 1);
  });

  it('rejects command codes outside 1..10', () => {
    throwsCode(() => encodeFrame(0, 1, new Uint8Array(0)), 'PROTOCOL_BAD_COMMAND');
    throwsCode(() => encodeFrame(11 as Command, 1, new Uint8Array(0)), 'PROTOCOL_BAD_COMMAND');
  });

  it('rejects a requestId that is not a u32', () => {
    for (const id of [-1, 2 ** 32, 1.5, Number.NaN]) {
      throwsCode(() => encodeFrame(Command.OK, id, new Uint8Array(0)), 'INVALID_ARGUMENT');
    }
  });

  it('rejects a payload over the command bound', () => {
    for (const c of [Command.HELLO, Command.ROUND, Command.COMMIT, Command.ABORT, Command.ERROR] as const) {
      throwsCode(() => encodeFrame(c, 1, new Uint8Array((DOC_MAX_PAYLOAD[c] ?? 0) + 1)), 'PROTOCOL_TOO_LARGE');
    }
    throwsCode(() => encodeHeader(Command.PREPARE, 1, 64 * MiB + 64 * KiB + 1), 'PROTOCOL_TOO_LARGE');
    assert.equal(encodeHeader(Command.PREPARE, 1, 64 * MiB + 64 * KiB).readUInt32LE(12), 64 * MiB + 64 * KiB);
  });
});

describe('decodeHeader', () => {
  it('decodes a valid header', () => {
    assert.deepEqual(decodeHeader(rawHeader({ command: 5, requestId: 77, length: 300 })),
      { command: 5, requestId: 77, payloadLength: 300 });
  });

  it('decodes at an offset and reads only the header bytes', () => {
    const buf = Buffer.concat([Buffer.from([9, 9, 9]), rawHeader({ command: 8, requestId: 3, length: 2 })]);
    assert.deepEqual(decodeHeader(buf, 3), { command: 8, requestId: 3, payloadLength: 2 });
  });

  it('rejects fewer than 16 bytes as truncated', () => {
    const h = rawHeader({ command: 1, length: 0 });
    for (let n = 0; n < 16; n++) throwsCode(() => decodeHeader(h.subarray(0, n)), 'PROTOCOL_TRUNCATED');
  });

  it('rejects a bad magic', () => {
    throwsCode(() => decodeHeader(rawHeader({ magic: [0x46, 0x4d, 0x49, 0x48], command: 1, length: 0 })), 'PROTOCOL_BAD_MAGIC');
    throwsCode(() => decodeHeader(rawHeader({ magic: [0x47, 0x49, 0x4d, 0x46], command: 1, length: 0 })), 'PROTOCOL_BAD_MAGIC');
    throwsCode(() => decodeHeader(Buffer.from('GET / HTTP/1.1\r\n\r\n')), 'PROTOCOL_BAD_MAGIC', /FMIG/);
  });

  it('rejects any version but 1', () => {
    for (const version of [0, 2, 255]) {
      throwsCode(() => decodeHeader(rawHeader({ version, command: 1, length: 0 })), 'PROTOCOL_VERSION');
    }
  });

  it('rejects command 0 and 11..255', () => {
    for (const command of [0, 11, 12, 128, 255]) {
      throwsCode(() => decodeHeader(rawHeader({ command, length: 0 })), 'PROTOCOL_BAD_COMMAND');
    }
  });

  it('rejects non-zero reserved flags', () => {
    for (const flags of [1, 0x100, 0x8000, 0xffff]) {
      throwsCode(() => decodeHeader(rawHeader({ command: 1, flags, length: 0 })), 'PROTOCOL_VERSION', /flags/);
    }
  });

  it('rejects a payload length over each command bound, from the header alone', () => {
    for (const command of FRAME_COMMANDS) {
      const max = DOC_MAX_PAYLOAD[command] ?? 0;
      assert.equal(decodeHeader(rawHeader({ command, length: max })).payloadLength, max);
      throwsCode(() => decodeHeader(rawHeader({ command, length: max + 1 })), 'PROTOCOL_TOO_LARGE');
      throwsCode(() => decodeHeader(rawHeader({ command, length: 2 ** 32 - 1 })), 'PROTOCOL_TOO_LARGE');
    }
  });

  it('checks magic, then version, then command, then flags, then length', () => {
    throwsCode(() => decodeHeader(rawHeader({ magic: [0, 0, 0, 0], version: 2, command: 0, flags: 1, length: 2 ** 32 - 1 })), 'PROTOCOL_BAD_MAGIC');
    throwsCode(() => decodeHeader(rawHeader({ version: 2, command: 0, flags: 1, length: 2 ** 32 - 1 })), 'PROTOCOL_VERSION');
    throwsCode(() => decodeHeader(rawHeader({ command: 0, flags: 1, length: 2 ** 32 - 1 })), 'PROTOCOL_BAD_COMMAND');
    throwsCode(() => decodeHeader(rawHeader({ command: 1, flags: 1, length: 2 ** 32 - 1 })), 'PROTOCOL_VERSION');
  });

  it('round-trips encodeHeader', () => {
    for (const command of FRAME_COMMANDS) {
      assert.deepEqual(decodeHeader(encodeHeader(command, 123456, 17)), { command, requestId: 123456, payloadLength: 17 });
    }
  });
});
