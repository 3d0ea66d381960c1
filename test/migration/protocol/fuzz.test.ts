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
import { decodeMessage, decodeOk, encodeHello, encodeMemory, encodeOk, preparedFromOk, type PreparedBody } from '../../../src/migration/protocol/messages.js';
import { ConnectionState } from '../../../src/migration/protocol/session-state.js';
import {
  CASES, ONLY_CASE, Rng, SEED, base, caseIndices, caseSeed, describeCase, feedReader, fullRun, jsonish, mutate as mutateBase, randomFrames,
  runGroup as runFuzzGroup, summary, type Base, type Outcome,
} from '../../helpers/fuzz.js';
import { RAM_BYTES, abortStream, chainControlStream, chainSpec, controlStream, dataStream, helloBody, preparedFor, rawHeader } from './fixtures.js';

const BASES: readonly Base[] = [
  base('control', controlStream()),
  // PREPARE announcing a copied disk's chain (copy mode over a seed).
  base('control-chain', chainControlStream()),
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

/** The chain the source announced, against which the fuzzed replies are checked. */
const ANNOUNCED = chainSpec();

/** One structural change to a JSON value: a key dropped, added or retyped, an array shortened, grown or reordered, a leaf replaced. */
function mutateJson(rng: Rng, v: unknown, depth = 0): unknown {
  const leaves: unknown[] = [null, true, false, 0, -1, 1.5, 2 ** 53, '', 'x', '0000abcd', 'ffffffff', 'seeds/a.vmdk', [], {}];
  if (Array.isArray(v)) {
    const a = [...(v as unknown[])];
    const r = rng.int(5);
    if (r === 0 && a.length > 0) a.splice(rng.int(a.length), 1);
    else if (r === 1) a.push(a.length > 0 && rng.chance(0.7) ? rng.pick(a) : rng.pick(leaves));
    else if (r === 2 && a.length > 1) { const i = rng.int(a.length); const j = rng.int(a.length); [a[i], a[j]] = [a[j], a[i]]; }
    else if (a.length > 0) { const i = rng.int(a.length); a[i] = mutateJson(rng, a[i], depth + 1); }
    return a;
  }
  if (v !== null && typeof v === 'object') {
    const o: Record<string, unknown> = { ...(v as Record<string, unknown>) };
    const keys = Object.keys(o);
    const r = rng.int(4);
    if (r === 0 && keys.length > 0) delete o[rng.pick(keys)];
    else if (r === 1) o[rng.pick(['extra', 'migrate', 'seedPath', 'disk', 'accepted', 'verifyBytes', 'cid'])] = rng.pick(leaves);
    else if (keys.length > 0) { const k = rng.pick(keys); o[k] = mutateJson(rng, o[k], depth + 1); }
    return o;
  }
  if (typeof v === 'boolean' && rng.chance(0.7)) return !v;
  return depth > 6 || rng.chance(0.5) ? rng.pick(leaves) : v;
}

/** A PREPARE reply: a valid one (0..2 base levels kept) with 1..4 structural mutations, as JSON bytes. */
function mutatedReply(rng: Rng): Buffer {
  let reply: unknown = { accepted: true, disk: preparedFor(ANNOUNCED, rng.int(3)) };
  for (let n = 1 + rng.int(4); n > 0; n--) reply = mutateJson(rng, reply);
  return Buffer.from(JSON.stringify(reply));
}

/** What an accepted reply must satisfy, whatever the mutation left of it. */
function checkAccepted(p: PreparedBody): void {
  const d = p.disk;
  if (d === undefined) return;
  assert.equal(d.chain.length, ANNOUNCED.length);
  d.chain.forEach((l, i) => { assert.equal(l.path, ANNOUNCED[i]?.path); assert.equal(l.cid, ANNOUNCED[i]?.cid); });
  assert.equal(d.chain[0]?.migrate, true, 'the top always moves');
  const firstKept = d.chain.findIndex((l) => !l.migrate);
  if (firstKept >= 0) assert.ok(d.chain.slice(firstKept).every((l) => !l.migrate), 'only a run at the base end stays');
  assert.equal(firstKept >= 0, d.seedPath !== null);
  assert.ok(Number.isSafeInteger(d.verifyBytes) && d.verifyBytes >= 0);
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

  it('mutated PREPARE replies are accepted only when they fit the announced chain, else PROTOCOL_BAD_PAYLOAD', (t) => {
    const started = performance.now();
    const outcomes = runFuzzGroup(3, 'prepared-reply', mutatedReply, (_rng, input) => {
      try {
        checkAccepted(preparedFromOk(decodeOk(input), ANNOUNCED));
        return 'ok';
      } catch (err) {
        if (err instanceof FerryError && err.code === 'PROTOCOL_BAD_PAYLOAD') return err.code;
        throw err;
      }
    });
    t.diagnostic(`prepared replies: ${ONLY_CASE === undefined ? CASES : 1} cases in ${(performance.now() - started).toFixed(0)} ms: ${summary(outcomes)}`);
    if (fullRun()) {
      assert.ok((outcomes.get('ok') ?? 0) > 0, `no mutated reply was accepted: ${summary(outcomes)}`);
      assert.ok((outcomes.get('PROTOCOL_BAD_PAYLOAD') ?? 0) > 0, `no mutated reply was refused: ${summary(outcomes)}`);
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
