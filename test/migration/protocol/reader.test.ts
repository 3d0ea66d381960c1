import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { isFerryError } from '../../../src/lib/errors.js';
import { Command, encodeFrame, type Frame } from '../../../src/migration/protocol/frame.js';
import { FrameReader } from '../../../src/migration/protocol/reader.js';
import { encodeMemory, encodePrepare } from '../../../src/migration/protocol/messages.js';
import {
  KiB, MiB, abortStream, controlStream, dataStream, makeImage, prepareBody, rawHeader, throwsCode,
} from './fixtures.js';

/** Frame boundaries of a valid stream (offsets where a frame starts, plus the end). */
function boundaries(stream: Buffer): number[] {
  const out = [0];
  let pos = 0;
  while (pos < stream.length) {
    pos += 16 + stream.readUInt32LE(pos + 12);
    out.push(pos);
  }
  return out;
}

function readAll(chunks: Buffer[]): Frame[] {
  const reader = new FrameReader();
  const frames: Frame[] = [];
  for (const c of chunks) frames.push(...reader.push(c));
  reader.end();
  assert.equal(reader.bufferedBytes, 0);
  return frames;
}

function plain(frames: Frame[]): { command: number; requestId: number; payload: string }[] {
  return frames.map((f) => ({ command: f.command, requestId: f.requestId, payload: f.payload.toString('hex') }));
}

// A small stream with every kind of frame, including an empty payload.
function mixedStream(): Buffer {
  return Buffer.concat([
    encodeFrame(Command.OK, 1, new Uint8Array(0)),
    encodeFrame(Command.ROUND, 2, Buffer.from('{"round":1,"regions":2,"bytes":8192}')),
    encodeFrame(Command.OK, 3, Buffer.from('{}')),
    encodeFrame(Command.COMMIT, 4, Buffer.from('{"digest":"00112233445566ff"}')),
  ]);
}

describe('FrameReader', () => {
  it('decodes one frame, several frames and empty payloads from one chunk', () => {
    const stream = mixedStream();
    const frames = readAll([stream]);
    assert.deepEqual(frames.map((f) => [f.command, f.requestId, f.payload.length]),
      [[8, 1, 0], [4, 2, 36], [8, 3, 2], [6, 4, 29]]);
    assert.equal(frames[1]?.payload.toString(), '{"round":1,"regions":2,"bytes":8192}');
  });

  it('accepts plain Uint8Array chunks', () => {
    const stream = mixedStream();
    const reader = new FrameReader();
    const frames = reader.push(new Uint8Array(stream));
    assert.equal(frames.length, 4);
    assert.equal(reader.frameCount, 4);
  });

  it('decodes identically whatever the chunk boundaries (every split in two, byte by byte)', () => {
    for (const stream of [mixedStream(), controlStream(), dataStream(), abortStream()]) {
      const expected = plain(readAll([stream]));
      assert.ok(expected.length >= 3);
      for (let i = 0; i <= stream.length; i++) {
        assert.deepEqual(plain(readAll([stream.subarray(0, i), stream.subarray(i)])), expected, `split at ${i}`);
      }
      const bytes: Buffer[] = [];
      for (let i = 0; i < stream.length; i++) bytes.push(stream.subarray(i, i + 1));
      assert.deepEqual(plain(readAll(bytes)), expected, 'byte by byte');
    }
  });

  it('decodes identically for every split of a small stream in three', () => {
    const stream = mixedStream();
    const expected = plain(readAll([stream]));
    for (let i = 0; i <= stream.length; i++) {
      for (let j = i; j <= stream.length; j++) {
        const got = plain(readAll([stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)]));
        assert.deepEqual(got, expected, `splits at ${i}, ${j}`);
      }
    }
  });

  it('reports PROTOCOL_TRUNCATED when the stream ends at any byte inside a frame', () => {
    for (const stream of [mixedStream(), controlStream(), dataStream()]) {
      const bounds = boundaries(stream);
      for (let cut = 0; cut <= stream.length; cut++) {
        const reader = new FrameReader();
        const frames = reader.push(stream.subarray(0, cut));
        const complete = bounds.filter((b) => b > 0 && b <= cut).length;
        assert.equal(frames.length, complete, `cut at ${cut}`);
        if (bounds.includes(cut)) {
          reader.end();
        } else {
          throwsCode(() => reader.end(), 'PROTOCOL_TRUNCATED');
          // A failed reader stays failed.
          throwsCode(() => reader.push(Buffer.alloc(1)), 'PROTOCOL_TRUNCATED');
        }
      }
    }
  });

  it('rejects an oversize payload from the header alone, before any payload byte arrives', () => {
    const reader = new FrameReader();
    throwsCode(() => reader.push(rawHeader({ command: Command.MEMORY, requestId: 9, length: 8 * MiB + 64 * KiB + 1 })),
      'PROTOCOL_TOO_LARGE');
    assert.equal(reader.bufferedBytes, 0);
    // ...even when the header arrives byte by byte, the error comes with its 16th byte.
    const header = rawHeader({ command: Command.HELLO, requestId: 7, length: 4 * KiB + 1 });
    const r2 = new FrameReader();
    for (let i = 0; i < 15; i++) assert.deepEqual(r2.push(header.subarray(i, i + 1)), []);
    assert.throws(() => r2.push(header.subarray(15)), (err: unknown) =>
      isFerryError(err, 'PROTOCOL_TOO_LARGE') && err.details.requestId === 7);
  });

  it('rejects each bad header rule while streaming', () => {
    throwsCode(() => new FrameReader().push(Buffer.from('SSH-2.0-OpenSSH_9.6\r\n')), 'PROTOCOL_BAD_MAGIC');
    throwsCode(() => new FrameReader().push(rawHeader({ version: 2, command: 1, length: 0 })), 'PROTOCOL_VERSION');
    throwsCode(() => new FrameReader().push(rawHeader({ command: 0, length: 0 })), 'PROTOCOL_BAD_COMMAND');
    throwsCode(() => new FrameReader().push(rawHeader({ command: 11, length: 0 })), 'PROTOCOL_BAD_COMMAND');
    throwsCode(() => new FrameReader().push(rawHeader({ command: 1, flags: 2, length: 0 })), 'PROTOCOL_VERSION');
    // A bad frame after a good one in the same chunk.
    const r = new FrameReader();
    throwsCode(() => r.push(Buffer.concat([encodeFrame(Command.OK, 1, Buffer.from('{}')), Buffer.from('garbage-garbage!')])),
      'PROTOCOL_BAD_MAGIC');
    throwsCode(() => r.end(), 'PROTOCOL_BAD_MAGIC');
  });

  it('buffers only what arrived: a large declared payload is not allocated up front', () => {
    const before = process.memoryUsage().arrayBuffers;
    const reader = new FrameReader();
    assert.deepEqual(reader.push(rawHeader({ command: Command.PREPARE, requestId: 2, length: 64 * MiB })), []);
    assert.deepEqual(reader.pendingHeader, { command: Command.PREPARE, requestId: 2, payloadLength: 64 * MiB });
    assert.equal(reader.bufferedBytes, 16);
    reader.push(Buffer.alloc(10));
    assert.equal(reader.bufferedBytes, 26);
    const grown = process.memoryUsage().arrayBuffers - before;
    assert.ok(grown < 16 * MiB, `arrayBuffers grew by ${grown} bytes`);
    throwsCode(() => reader.end(), 'PROTOCOL_TRUNCATED', /10 of 67108864/);
  });

  it('returns payloads that do not alias the pushed chunks', () => {
    const stream = encodeFrame(Command.OK, 1, Buffer.from('{"x":1}'));
    const reader = new FrameReader();
    const [frame] = reader.push(stream);
    stream.fill(0);
    assert.equal(frame?.payload.toString(), '{"x":1}');
  });

  it('reassembles an 8 MiB MEMORY frame from 64 KiB chunks and a 48 MiB PREPARE from 64 KiB chunks, in linear time', () => {
    const entries = [];
    for (let i = 0; i < 4; i++) {
      entries.push({ offset: i * 2 * MiB, length: 2 * MiB, encoding: 'raw' as const, data: Buffer.alloc(2 * MiB, i + 1) });
    }
    const memory = encodeMemory(5, 3, entries);
    const image = makeImage(48 * MiB);
    const prepare = encodePrepare(6, prepareBody(image));
    const started = performance.now();
    for (const stream of [memory, prepare]) {
      const reader = new FrameReader();
      const frames: Frame[] = [];
      let maxBuffered = 0;
      for (let pos = 0; pos < stream.length; pos += 64 * KiB) {
        frames.push(...reader.push(stream.subarray(pos, pos + 64 * KiB)));
        maxBuffered = Math.max(maxBuffered, reader.bufferedBytes);
      }
      reader.end();
      assert.equal(frames.length, 1);
      assert.ok(frames[0]?.payload.equals(stream.subarray(16)));
      assert.ok(maxBuffered <= stream.length);
    }
    const ms = performance.now() - started;
    // Quadratic concatenation of 48 MiB in 64 KiB steps copies ~18 GiB (many seconds).
    assert.ok(ms < 3000, `took ${ms.toFixed(0)} ms`);
  });
});
