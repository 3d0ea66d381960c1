// Bounded, deterministic fuzzing of the whole receive path: FrameReader → decodeMessage (JSON
// schemas, PREPARE layout, MEMORY batches) → ConnectionState. The only acceptable outcomes are
// success or a FerryError with a PROTOCOL_* code; anything else (TypeError, RangeError, an
// AssertionError, a non-protocol FerryError) fails the test with the seed and case to reproduce it:
//
//   FERRY_FUZZ_SEED=<seed> [FERRY_FUZZ_CASE=<index>] node --test dist/test/migration/protocol/fuzz.test.js
//
// FERRY_FUZZ_CASES overrides the number of cases per group (default 20000).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../../src/lib/errors.js';
import { MAX_PAYLOAD_BYTES, type FrameCommand } from '../../../src/migration/protocol/frame.js';
import { FrameReader } from '../../../src/migration/protocol/reader.js';
import { decodeMemoryBatch } from '../../../src/migration/protocol/memory-batch.js';
import { decodeMessage, encodeHello, encodeMemory, encodeOk } from '../../../src/migration/protocol/messages.js';
import { ConnectionState } from '../../../src/migration/protocol/session-state.js';
import {
  CASES, ONLY_CASE, Rng, SEED, base, caseIndices, caseSeed, describeCase, feedReader, fullRun, jsonish, mutate as mutateBase, randomFrames,
  runGroup as runFuzzGroup, summary, type Base, type Outcome,
} from '../../helpers/fuzz.js';
import { RAM_BYTES, abortStream, controlStream, dataStream, helloBody, rawHeader } from './fixtures.js';

const BASES: readonly Base[] = [
  base('control', controlStream()),
  base('abort', abortStream()),
  base('data', dataStream()),
  // A data stream of small (zero / deflate) entries: mutations land on structure, not page data.
  base('data-small', Buffer.concat([
    encodeHello(1, helloBody('data', 3)),
    encodeMemory(2, 5, [
      { offset: 0, length: 4096, encoding: 'zero' },
      { offset: 8192, length: 8192, encoding: 'deflate', data: Buffer.from([0x63, 0x60, 0x00, 0x00]) },
      { offset: RAM_BYTES - 4096, length: 4096, encoding: 'zero' },
    ]),
    encodeMemory(3, 6, []),
  ])),
  // Replies only: OK and ERROR are never valid requests, but must decode or fail cleanly.
  base('replies', Buffer.concat([encodeOk(1, { a: [1, 2, { b: 'c' }] }), encodeOk(2)])),
];

function mutate(rng: Rng, b: Base): Buffer {
  return mutateBase(rng, b, BASES);
}

function randomStream(rng: Rng): Buffer {
  const parts: Buffer[] = [];
  if (rng.chance(0.3)) parts.push(encodeHello(1, helloBody(rng.chance(0.5) ? 'control' : 'data', rng.int(16))));
  return randomFrames(rng, parts, { maxFrames: 4, lastCommand: 9, header: rawHeader, payload: jsonish });
}

/** Feeds `input` through the whole receive path in random chunks. */
function run(rng: Rng, input: Buffer): Outcome {
  const state = new ConnectionState();
  let ramBytes: number | undefined;
  return feedReader(rng, new FrameReader(), input, (c) => MAX_PAYLOAD_BYTES[c as FrameCommand], (frame) => {
    if (frame.command === 1) {
      const msg = decodeMessage(frame);
      if (msg.command !== 1) throw new Error('HELLO decoded to another command');
      state.accept(msg.command, msg.body.role);
      if (msg.body.role === 'data') {
        state.markPrepared();
        ramBytes = RAM_BYTES;
      }
      return;
    }
    state.accept(frame.command);
    const msg = decodeMessage(frame, ramBytes === undefined ? {} : { ramBytes });
    if (msg.command === 2) ramBytes = msg.body.vm.memoryBytes;
  });
}

function runGroup(group: number, name: string, make: (rng: Rng) => Buffer): Map<Outcome, number> {
  return runFuzzGroup(group, name, make, run);
}

describe(`protocol fuzz (seed ${SEED}, ${CASES} cases per group)`, () => {
  it('the bases themselves decode cleanly', () => {
    for (const b of BASES) {
      const outcome = run(new Rng(1), b.bytes);
      const expected = b.name === 'replies' ? 'PROTOCOL_OUT_OF_ORDER' : 'ok';
      assert.equal(outcome, expected, b.name);
    }
  });

  it('random byte streams fail only with PROTOCOL_* errors', (t) => {
    const started = performance.now();
    const outcomes = runGroup(0, 'random', randomStream);
    t.diagnostic(`random: ${ONLY_CASE === undefined ? CASES : 1} cases in ${(performance.now() - started).toFixed(0)} ms: ${summary(outcomes)}`);
    if (fullRun()) {
      for (const code of ['PROTOCOL_BAD_MAGIC', 'PROTOCOL_VERSION', 'PROTOCOL_BAD_COMMAND', 'PROTOCOL_TOO_LARGE',
        'PROTOCOL_TRUNCATED', 'PROTOCOL_BAD_PAYLOAD', 'PROTOCOL_OUT_OF_ORDER'] as const) {
        assert.ok((outcomes.get(code) ?? 0) > 0, `random fuzz never produced ${code}: ${summary(outcomes)}`);
      }
    }
  });

  it('mutated valid streams fail only with PROTOCOL_* errors', (t) => {
    const started = performance.now();
    const outcomes = runGroup(1, 'mutated', (rng) => mutate(rng, rng.pick(BASES)));
    t.diagnostic(`mutated: ${ONLY_CASE === undefined ? CASES : 1} cases in ${(performance.now() - started).toFixed(0)} ms: ${summary(outcomes)}`);
    if (fullRun()) {
      assert.ok((outcomes.get('ok') ?? 0) > 0, `no mutated stream survived: ${summary(outcomes)}`);
      for (const code of ['PROTOCOL_TRUNCATED', 'PROTOCOL_BAD_PAYLOAD', 'PROTOCOL_OUT_OF_ORDER', 'PROTOCOL_TOO_LARGE'] as const) {
        assert.ok((outcomes.get(code) ?? 0) > 0, `mutation fuzz never produced ${code}: ${summary(outcomes)}`);
      }
    }
  });

  it('mutated MEMORY payloads decode or fail only with PROTOCOL_* errors, for any RAM size', (t) => {
    // MEMORY payloads as bases; their "structural" positions are the batch header and the entry headers.
    const payloads = BASES.filter((b) => b.name.startsWith('data')).flatMap((b) =>
      b.frameStarts.filter((s) => b.bytes[s + 5] === 3).map((s): Base => {
        const bytes = b.bytes.subarray(s + 16, s + 16 + b.bytes.readUInt32LE(s + 12));
        const starts = [0];
        let pos = 8;
        for (const e of decodeMemoryBatch(bytes, RAM_BYTES).entries) {
          starts.push(pos);
          pos += 16 + (e.encoding === 'deflate' ? 4 : 0) + (e.data?.length ?? 0);
        }
        return { name: 'memory', bytes, frameStarts: starts };
      }));
    assert.ok(payloads.length >= 3);
    const ramSizes = [0, 4096, 65536, RAM_BYTES, 3 * 1024 ** 3, 2 ** 53 - 4096];
    const started = performance.now();
    const outcomes = new Map<Outcome, number>();
    let direct = 0;
    const indices = caseIndices();
    for (const i of indices) {
      const seed = caseSeed(2, i);
      const rng = new Rng(seed);
      const payload = mutate(rng, rng.pick(payloads));
      const ram = rng.pick(ramSizes);
      try {
        const batch = decodeMemoryBatch(payload, ram);
        for (const e of batch.entries) {
          assert.ok(e.offset % 4096 === 0 && e.offset + e.length <= ram && e.length >= 4096 && e.length <= 2 * 1024 * 1024);
        }
        direct++;
        outcomes.set('ok', (outcomes.get('ok') ?? 0) + 1);
      } catch (err) {
        if (err instanceof FerryError && err.code.startsWith('PROTOCOL_')) {
          outcomes.set(err.code, (outcomes.get(err.code) ?? 0) + 1);
          continue;
        }
        const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
        assert.fail(`${describeCase(`memory-direct ram=${ram}`, i, seed, payload)}\n${detail}`);
      }
    }
    t.diagnostic(`memory payloads: ${indices.length} cases in ${(performance.now() - started).toFixed(0)} ms: ${summary(outcomes)}`);
    if (fullRun()) assert.ok(direct > 0, 'no mutated MEMORY payload decoded');
  });
});
