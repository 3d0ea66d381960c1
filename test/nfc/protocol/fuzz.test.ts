// Bounded, deterministic fuzzing of the NFC receive path: FrameReader → StreamState → decodeMessage
// (JSON schemas, the DATA layout, chunks of the plan) → the CRC-32 check. The only acceptable outcomes
// are success or a FerryError with a PROTOCOL_* code (a CHUNK_CORRUPT DATA is refused alone, as the
// receiver does, and the stream goes on); anything else (TypeError, RangeError, an AssertionError, another
// FerryError) fails the test with the seed and case to replay it (test/helpers/fuzz.ts):
//
//   FERRY_FUZZ_SEED=<seed> [FERRY_FUZZ_CASE=<index>] node --test dist/test/nfc/protocol/fuzz.test.js
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { FerryError } from '../../../src/lib/errors.js';
import { Command, MAX_PAYLOAD_BYTES, type FrameCommand } from '../../../src/nfc/protocol/frame.js';
import { FrameReader } from '../../../src/nfc/protocol/reader.js';
import {
  checkDataCrc, decodeMessage, encodeAbort, encodeData, encodeEmpty, encodeError, encodeHello, encodeHole, encodeOk,
} from '../../../src/nfc/protocol/messages.js';
import { StreamState } from '../../../src/nfc/protocol/stream-state.js';
import {
  CASES, INTERESTING_U32, ONLY_CASE, Rng, SEED, base, feedReader, fullRun, jsonish, mutate, randomFrames, runGroup, summary, type Base, type Outcome,
} from '../../helpers/fuzz.js';
import { MiB, PLAN, copyStream, dataBody, docDataPayload, helloBody, rawHeader } from './fixtures.js';

const BASES: readonly Base[] = [
  base('copy', copyStream()),
  base('abort', Buffer.concat([
    encodeHello(1, helloBody(1, 2)),
    encodeHole(2, { fileIndex: 0, offsetBytes: MiB, lengthBytes: MiB }),
    encodeData(3, dataBody(2, 0, Buffer.alloc(100, 0x5a))),
    encodeAbort(4, { reason: 'cancelled' }),
  ])),
  base('writes', Buffer.concat([
    encodeHello(1, helloBody()),
    encodeData(2, dataBody(2, 0, Buffer.from('x'.repeat(100)))),
    encodeData(3, dataBody(0, 2 * MiB, Buffer.alloc(300, 1))),
    encodeEmpty(Command.SYNC, 4),
  ])),
  // Replies only: OK and ERROR are never valid requests, but must decode or fail cleanly.
  base('replies', Buffer.concat([encodeOk(1, { resumeAt: { fileIndex: 0, offsetBytes: 0 } }), encodeError(2, { code: 'COPY_FENCED', message: 'm' })])),
];

const FIELDS = ['fileIndex', 'offsetBytes', 'lengthBytes', 'reason', 'code', 'message', 'ticket', 'epoch', 'stream', 'streams'];

function randomJson(rng: Rng): Buffer {
  if (!rng.chance(0.4)) return jsonish(rng);
  // Schema-shaped objects with random values: they get past JSON parsing to the schemas and the plan checks.
  const o: Record<string, unknown> = {};
  for (let i = rng.int(4); i > 0; i--) o[rng.pick(FIELDS)] = rng.chance(0.5) ? rng.pick(INTERESTING_U32) : rng.pick([-1, 0, 1, 2, 3, 'x', null, MiB, 2 * MiB]);
  return Buffer.from(JSON.stringify(o));
}

function randomDataPayload(rng: Rng): Buffer {
  const data = rng.bytes(rng.pick([0, 1, 100, 300, 299, 301]));
  return docDataPayload({
    fileIndex: rng.pick([0, 1, 2, 3, rng.u32()]),
    offsetBytes: BigInt(rng.pick([0, 1, MiB, 2 * MiB, 3 * MiB, rng.u32()])),
    crc32: rng.chance(0.5) ? crc32(data) : rng.u32(),
    reserved: rng.chance(0.9) ? 0 : rng.u32(),
    sha256: rng.bytes(32),
    data,
    ...(rng.chance(0.9) ? {} : { lengthBytes: rng.pick(INTERESTING_U32) }),
  });
}

function randomStream(rng: Rng): Buffer {
  const parts: Buffer[] = [];
  if (rng.chance(0.5)) parts.push(encodeHello(1, helloBody()));
  return randomFrames(rng, parts, {
    maxFrames: 5, lastCommand: 10, header: rawHeader,
    payload: (r, command) => (command === Command.DATA && r.chance(0.8) ? randomDataPayload(r) : randomJson(r)),
  });
}

let corruptChunks = 0;

/** Feeds `input` through the receive path in random chunks, as the receiver does (a CHUNK_CORRUPT DATA is refused alone). */
function run(rng: Rng, input: Buffer): Outcome {
  const state = new StreamState();
  let helloSeen = false;
  return feedReader(rng, new FrameReader(), input, (c) => MAX_PAYLOAD_BYTES[c as FrameCommand], (frame) => {
    state.accept(frame.command);
    const msg = decodeMessage(frame, helloSeen ? { plan: PLAN } : {});
    if (msg.command === Command.HELLO) helloSeen = true;
    if (msg.command !== Command.DATA) return;
    try {
      checkDataCrc(msg.body);
    } catch (err) {
      if (!(err instanceof FerryError && err.code === 'CHUNK_CORRUPT')) throw err;
      corruptChunks++;
    }
  });
}

describe(`NFC protocol fuzz (seed ${SEED}, ${CASES} cases per group)`, () => {
  it('the bases themselves decode cleanly', () => {
    for (const b of BASES) assert.equal(run(new Rng(1), b.bytes), b.name === 'replies' ? 'PROTOCOL_OUT_OF_ORDER' : 'ok', b.name);
  });

  it('random byte streams fail only with PROTOCOL_* errors', (t) => {
    const started = performance.now();
    const outcomes = runGroup(0, 'nfc-random', randomStream, run);
    t.diagnostic(`random: ${ONLY_CASE === undefined ? CASES : 1} cases in ${(performance.now() - started).toFixed(0)} ms: ${summary(outcomes)}`);
    if (fullRun()) {
      for (const code of ['PROTOCOL_BAD_MAGIC', 'PROTOCOL_VERSION', 'PROTOCOL_BAD_COMMAND', 'PROTOCOL_TOO_LARGE',
        'PROTOCOL_TRUNCATED', 'PROTOCOL_BAD_PAYLOAD', 'PROTOCOL_OUT_OF_ORDER'] as const) {
        assert.ok((outcomes.get(code) ?? 0) > 0, `random fuzz never produced ${code}: ${summary(outcomes)}`);
      }
      assert.ok((outcomes.get('ok') ?? 0) > 0, `no random stream decoded: ${summary(outcomes)}`);
    }
  });

  it('mutated valid streams fail only with PROTOCOL_* errors (a damaged chunk only with CHUNK_CORRUPT, alone)', (t) => {
    const started = performance.now();
    corruptChunks = 0;
    const outcomes = runGroup(1, 'nfc-mutated', (rng) => mutate(rng, rng.pick(BASES), BASES), run);
    t.diagnostic(`mutated: ${ONLY_CASE === undefined ? CASES : 1} cases in ${(performance.now() - started).toFixed(0)} ms: ${summary(outcomes)}; ${corruptChunks} chunks CHUNK_CORRUPT`);
    if (fullRun()) {
      assert.ok((outcomes.get('ok') ?? 0) > 0, `no mutated stream survived: ${summary(outcomes)}`);
      assert.ok(corruptChunks > 0, 'no mutation damaged a chunk\'s bytes only');
      for (const code of ['PROTOCOL_BAD_MAGIC', 'PROTOCOL_TRUNCATED', 'PROTOCOL_BAD_PAYLOAD', 'PROTOCOL_OUT_OF_ORDER', 'PROTOCOL_TOO_LARGE'] as const) {
        assert.ok((outcomes.get(code) ?? 0) > 0, `mutation fuzz never produced ${code}: ${summary(outcomes)}`);
      }
    }
  });
});
