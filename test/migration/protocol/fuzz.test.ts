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
import { FerryError, type FerryErrorCode } from '../../../src/lib/errors.js';
import { HEADER_BYTES, MAX_PAYLOAD_BYTES } from '../../../src/migration/protocol/frame.js';
import { FrameReader } from '../../../src/migration/protocol/reader.js';
import { decodeMemoryBatch } from '../../../src/migration/protocol/memory-batch.js';
import { decodeMessage, encodeHello, encodeMemory, encodeOk } from '../../../src/migration/protocol/messages.js';
import { ConnectionState } from '../../../src/migration/protocol/session-state.js';
import { RAM_BYTES, abortStream, controlStream, dataStream, helloBody, rawHeader } from './fixtures.js';

const SEED = parseIntEnv('FERRY_FUZZ_SEED', 0x5eed_f3a7);
const CASES = parseIntEnv('FERRY_FUZZ_CASES', 20_000);
const ONLY_CASE = process.env.FERRY_FUZZ_CASE === undefined ? undefined : parseIntEnv('FERRY_FUZZ_CASE', 0);

function parseIntEnv(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const v = Number(text);
  if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${name}=${text} is not a non-negative integer`);
  return v;
}

/** xorshift32 seeded per case, so any single case can be replayed on its own. */
class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = (seed >>> 0) || 0x9e37_79b9;
    for (let i = 0; i < 4; i++) this.u32();
  }
  u32(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return n <= 0 ? 0 : Math.floor((this.u32() / 2 ** 32) * n);
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(items: readonly T[]): T {
    const v = items[this.int(items.length)];
    if (v === undefined) throw new Error('pick from an empty list');
    return v;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

function caseSeed(group: number, index: number): number {
  return (SEED ^ Math.imul(index + 1, 0x9e37_79b9) ^ Math.imul(group + 1, 0x85eb_ca6b)) >>> 0;
}

type Outcome = 'ok' | FerryErrorCode;

interface Base { name: string; bytes: Buffer; frameStarts: number[] }

function frameStarts(stream: Buffer): number[] {
  const starts: number[] = [];
  let pos = 0;
  while (pos + HEADER_BYTES <= stream.length) {
    starts.push(pos);
    pos += HEADER_BYTES + stream.readUInt32LE(pos + 12);
  }
  return starts;
}

function base(name: string, bytes: Buffer): Base {
  return { name, bytes, frameStarts: frameStarts(bytes) };
}

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

const INTERESTING_U32 = [0, 1, 2, 3, 4, 7, 8, 15, 16, 0x7f, 0x80, 0xff, 0x100, 4095, 4096, 4097, 8192, 0xffff, 0x1_0000,
  0x10_0000, 0x20_0000, 0x20_1000, 0x80_0000, 0x81_0000, 0x400_0000, 0x401_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_f000, 0xffff_ffff];

/** A position biased toward frame headers and the first bytes of payloads (where structure lives). */
function structuralPos(rng: Rng, b: Base, length: number): number {
  if (length === 0) return 0;
  if (rng.chance(0.5) || b.frameStarts.length === 0) return rng.int(length);
  const start = rng.pick(b.frameStarts);
  return Math.min(length - 1, start + rng.int(rng.chance(0.5) ? HEADER_BYTES : 96));
}

function mutate(rng: Rng, b: Base): Buffer {
  let buf = Buffer.from(b.bytes);
  const rounds = 1 + rng.int(3);
  for (let r = 0; r < rounds; r++) {
    const kind = rng.int(9);
    switch (kind) {
      case 0: { // bit flips
        const flips = 1 + rng.int(4);
        for (let i = 0; i < flips && buf.length > 0; i++) {
          const p = structuralPos(rng, b, buf.length);
          buf[p] = (buf[p] ?? 0) ^ (1 << rng.int(8));
        }
        break;
      }
      case 1: { // byte set
        if (buf.length === 0) break;
        const p = structuralPos(rng, b, buf.length);
        buf[p] = rng.pick([0, 1, 0x7f, 0x80, 0xff, 0x22, 0x7b, 0x7d, 0x2d, rng.int(256)]);
        break;
      }
      case 2: { // truncate
        buf = buf.subarray(0, rng.int(buf.length + 1));
        break;
      }
      case 3: { // duplicate a range (often a whole frame) at a random or frame-aligned position
        if (buf.length === 0) break;
        let from = rng.int(buf.length);
        let to = Math.min(buf.length, from + 1 + rng.int(64));
        if (rng.chance(0.5) && b.frameStarts.length > 1) {
          const i = rng.int(b.frameStarts.length - 1);
          from = b.frameStarts[i] ?? 0;
          to = Math.min(buf.length, b.frameStarts[i + 1] ?? buf.length);
        }
        const at = rng.chance(0.5) && b.frameStarts.length > 0 ? rng.pick(b.frameStarts) : rng.int(buf.length + 1);
        const at2 = Math.min(at, buf.length);
        buf = Buffer.concat([buf.subarray(0, at2), buf.subarray(from, to), buf.subarray(at2)]);
        break;
      }
      case 4: { // delete a range
        if (buf.length === 0) break;
        const from = structuralPos(rng, b, buf.length);
        const to = Math.min(buf.length, from + 1 + rng.int(32));
        buf = Buffer.concat([buf.subarray(0, from), buf.subarray(to)]);
        break;
      }
      case 5: { // insert random bytes
        const at = structuralPos(rng, b, buf.length + 1);
        buf = Buffer.concat([buf.subarray(0, at), rng.bytes(1 + rng.int(16)), buf.subarray(at)]);
        break;
      }
      case 6: { // overwrite a u32 with an interesting value
        if (buf.length < 4) break;
        const p = Math.min(buf.length - 4, structuralPos(rng, b, buf.length));
        buf.writeUInt32LE(rng.pick(INTERESTING_U32), p);
        break;
      }
      case 7: { // splice with another stream
        const other = rng.pick(BASES).bytes;
        const cut = rng.int(buf.length + 1);
        buf = Buffer.concat([buf.subarray(0, cut), other.subarray(rng.int(other.length + 1))]);
        break;
      }
      default: { // overwrite the length field of a frame
        if (b.frameStarts.length === 0) break;
        const p = rng.pick(b.frameStarts) + 12;
        if (p + 4 <= buf.length) buf.writeUInt32LE(rng.pick(INTERESTING_U32), p);
        break;
      }
    }
  }
  return buf;
}

const JSONISH = '{}[]":,0123456789abcdef-.eEtruefalsnl "\\u';

function randomStream(rng: Rng): Buffer {
  const parts: Buffer[] = [];
  if (rng.chance(0.3)) parts.push(encodeHello(1, helloBody(rng.chance(0.5) ? 'control' : 'data', rng.int(16))));
  const frames = rng.int(4);
  for (let f = 0; f < frames || parts.length === 0; f++) {
    const style = rng.int(4);
    if (style === 0) {
      parts.push(rng.bytes(rng.int(128)));
      continue;
    }
    const command = rng.chance(0.9) ? 1 + rng.int(9) : rng.int(256);
    let payload: Buffer;
    if (style === 1) {
      payload = rng.bytes(rng.int(96));
    } else {
      let text = '{';
      const n = rng.int(80);
      for (let i = 0; i < n; i++) text += rng.pick([...JSONISH]);
      payload = Buffer.from(rng.chance(0.3) ? `${text}}` : text, 'utf8');
    }
    const header = rawHeader({
      magic: rng.chance(0.95) ? undefined : [...rng.bytes(4)],
      version: rng.chance(0.95) ? 1 : rng.int(256),
      command,
      flags: rng.chance(0.95) ? 0 : rng.int(65536),
      requestId: rng.u32(),
      length: rng.chance(0.85) ? payload.length : rng.pick(INTERESTING_U32),
    });
    parts.push(header, payload);
  }
  return Buffer.concat(parts);
}

interface RunResult { outcome: Outcome; frames: number }

/** Feeds `input` through the whole receive path in random chunks. */
function run(rng: Rng, input: Buffer): RunResult {
  const reader = new FrameReader();
  const state = new ConnectionState();
  let ramBytes: number | undefined;
  let pushed = 0;
  let frames = 0;
  const checkBuffering = (): void => {
    const buffered = reader.bufferedBytes;
    assert.ok(buffered <= pushed, `buffered ${buffered} > pushed ${pushed}`);
    const pending = reader.pendingHeader;
    const bound = pending === undefined ? HEADER_BYTES - 1 : HEADER_BYTES + MAX_PAYLOAD_BYTES[pending.command] - 1;
    assert.ok(buffered <= bound, `buffered ${buffered} exceeds ${bound}`);
  };
  let readerFailed = false;
  try {
    let pos = 0;
    while (pos < input.length) {
      const size = rng.chance(0.2) ? input.length - pos : 1 + rng.int(rng.chance(0.5) ? 8 : 200);
      const chunk = input.subarray(pos, pos + size);
      pos += chunk.length;
      pushed += chunk.length;
      readerFailed = true;
      const got = reader.push(chunk);
      readerFailed = false;
      checkBuffering();
      for (const frame of got) {
        frames++;
        if (frame.command === 1) {
          const msg = decodeMessage(frame);
          if (msg.command !== 1) throw new Error('HELLO decoded to another command');
          state.accept(msg.command, msg.body.role);
          if (msg.body.role === 'data') {
            state.markPrepared();
            ramBytes = RAM_BYTES;
          }
          continue;
        }
        state.accept(frame.command);
        const msg = decodeMessage(frame, ramBytes === undefined ? {} : { ramBytes });
        if (msg.command === 2) ramBytes = msg.body.vm.memoryBytes;
      }
    }
    readerFailed = true;
    reader.end();
    return { outcome: 'ok', frames };
  } catch (err) {
    if (err instanceof FerryError && err.code.startsWith('PROTOCOL_')) {
      if (readerFailed) assert.equal(reader.bufferedBytes, 0, 'a failed reader holds no payload');
      return { outcome: err.code, frames };
    }
    throw err;
  }
}

function describeCase(group: string, index: number, seed: number, input: Buffer): string {
  const shown = input.subarray(0, 1024).toString('hex');
  return `fuzz ${group} case ${index} failed (FERRY_FUZZ_SEED=${SEED} FERRY_FUZZ_CASE=${index}, case seed ${seed}); ` +
    `input ${input.length} bytes: ${shown}${input.length > 1024 ? '…' : ''}`;
}

function runGroup(group: number, name: string, make: (rng: Rng) => Buffer): Map<Outcome, number> {
  const outcomes = new Map<Outcome, number>();
  const indices = ONLY_CASE === undefined ? Array.from({ length: CASES }, (_, i) => i) : [ONLY_CASE];
  for (const i of indices) {
    const seed = caseSeed(group, i);
    const rng = new Rng(seed);
    const input = make(rng);
    let result: RunResult;
    try {
      result = run(rng, input);
    } catch (err) {
      const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
      assert.fail(`${describeCase(name, i, seed, input)}\n${detail}`);
    }
    outcomes.set(result.outcome, (outcomes.get(result.outcome) ?? 0) + 1);
  }
  return outcomes;
}

function summary(outcomes: Map<Outcome, number>): string {
  return [...outcomes.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}=${v}`).join(' ');
}

describe(`protocol fuzz (seed ${SEED}, ${CASES} cases per group)`, () => {
  it('the bases themselves decode cleanly', () => {
    for (const b of BASES) {
      const result = run(new Rng(1), b.bytes);
      const expected = b.name === 'replies' ? 'PROTOCOL_OUT_OF_ORDER' : 'ok';
      assert.equal(result.outcome, expected, b.name);
    }
  });

  it('random byte streams fail only with PROTOCOL_* errors', (t) => {
    const started = performance.now();
    const outcomes = runGroup(0, 'random', randomStream);
    t.diagnostic(`random: ${ONLY_CASE === undefined ? CASES : 1} cases in ${(performance.now() - started).toFixed(0)} ms: ${summary(outcomes)}`);
    if (ONLY_CASE === undefined && CASES >= 5000) {
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
    if (ONLY_CASE === undefined && CASES >= 5000) {
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
    const indices = ONLY_CASE === undefined ? Array.from({ length: CASES }, (_, i) => i) : [ONLY_CASE];
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
    if (ONLY_CASE === undefined && CASES >= 5000) assert.ok(direct > 0, 'no mutated MEMORY payload decoded');
  });
});
