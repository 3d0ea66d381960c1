// Bounded, deterministic fuzzing of Ferry's wire protocols (the migration's, the network file copy's):
// a seeded generator, structure-aware mutations of valid streams, random chunking, and a runner that
// names the seed and case of any failure so it can be replayed on its own:
//
//   FERRY_FUZZ_SEED=<seed> [FERRY_FUZZ_CASE=<index>] node --test dist/test/<protocol>/fuzz.test.js
//
// FERRY_FUZZ_CASES overrides the number of cases per group (default 20000).
import assert from 'node:assert/strict';
import { FerryError, type FerryErrorCode } from '../../src/lib/errors.js';

const HEADER_BYTES = 16;

export const SEED = parseIntEnv('FERRY_FUZZ_SEED', 0x5eed_f3a7);
export const CASES = parseIntEnv('FERRY_FUZZ_CASES', 20_000);
export const ONLY_CASE = process.env.FERRY_FUZZ_CASE === undefined ? undefined : parseIntEnv('FERRY_FUZZ_CASE', 0);

function parseIntEnv(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const v = Number(text);
  if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${name}=${text} is not a non-negative integer`);
  return v;
}

/** xorshift32 seeded per case, so any single case can be replayed on its own. */
export class Rng {
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

export function caseSeed(group: number, index: number): number {
  return (SEED ^ Math.imul(index + 1, 0x9e37_79b9) ^ Math.imul(group + 1, 0x85eb_ca6b)) >>> 0;
}

export type Outcome = 'ok' | FerryErrorCode;

/** A valid stream to mutate, with the offsets of its frames (where structure lives). */
export interface Base { name: string; bytes: Buffer; frameStarts: number[] }

function frameStarts(stream: Buffer): number[] {
  const starts: number[] = [];
  let pos = 0;
  while (pos + HEADER_BYTES <= stream.length) {
    starts.push(pos);
    pos += HEADER_BYTES + stream.readUInt32LE(pos + 12);
  }
  return starts;
}

export function base(name: string, bytes: Buffer): Base {
  return { name, bytes, frameStarts: frameStarts(bytes) };
}

export const INTERESTING_U32 = [0, 1, 2, 3, 4, 7, 8, 15, 16, 0x7f, 0x80, 0xff, 0x100, 4095, 4096, 4097, 8192, 0xffff, 0x1_0000,
  0x10_0000, 0x20_0000, 0x20_1000, 0x80_0000, 0x81_0000, 0x400_0000, 0x401_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_f000, 0xffff_ffff];

/** A position biased toward frame headers and the first bytes of payloads (where structure lives). */
function structuralPos(rng: Rng, b: Base, length: number): number {
  if (length === 0) return 0;
  if (rng.chance(0.5) || b.frameStarts.length === 0) return rng.int(length);
  const start = rng.pick(b.frameStarts);
  return Math.min(length - 1, start + rng.int(rng.chance(0.5) ? HEADER_BYTES : 96));
}

/** One to three mutations of `b`: bit flips, byte sets, truncation, duplicated or deleted ranges, inserted bytes, interesting u32s, splices with `others`, rewritten length fields. */
export function mutate(rng: Rng, b: Base, others: readonly Base[]): Buffer {
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
        const other = rng.pick(others).bytes;
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

/** `input` cut into random chunks (often tiny, sometimes the rest at once), as a socket might deliver it. */
export function* randomChunks(rng: Rng, input: Buffer): Generator<Buffer> {
  let pos = 0;
  while (pos < input.length) {
    const size = rng.chance(0.2) ? input.length - pos : 1 + rng.int(rng.chance(0.5) ? 8 : 200);
    const chunk = input.subarray(pos, pos + size);
    pos += chunk.length;
    yield chunk;
  }
}

const JSONISH = [...'{}[]":,0123456789abcdef-.eEtruefalsnl "\\u'];

/** Text that looks like JSON (an opening brace, JSON's characters at random, sometimes a closing brace). */
export function jsonish(rng: Rng): Buffer {
  let text = '{';
  const n = rng.int(80);
  for (let i = 0; i < n; i++) text += rng.pick(JSONISH);
  return Buffer.from(rng.chance(0.3) ? `${text}}` : text, 'utf8');
}

export interface RawHeaderFields {
  magic?: readonly number[] | undefined; version?: number | undefined; command: number; flags?: number | undefined;
  requestId?: number | undefined; length: number;
}

/**
 * Appends up to `maxFrames` random frames to `parts` (at least one part in all): raw bytes, or a header
 * with mostly valid fields (magic, version 1, flags 0, a command 1..lastCommand, the true length) over a
 * `payload` of the given style (1: random bytes; otherwise the protocol's choice).
 */
export function randomFrames(rng: Rng, parts: Buffer[], o: {
  readonly maxFrames: number; readonly lastCommand: number;
  readonly header: (fields: RawHeaderFields) => Buffer; readonly payload: (rng: Rng, command: number) => Buffer;
}): Buffer {
  const frames = rng.int(o.maxFrames);
  for (let f = 0; f < frames || parts.length === 0; f++) {
    const style = rng.int(4);
    if (style === 0) {
      parts.push(rng.bytes(rng.int(128)));
      continue;
    }
    const command = rng.chance(0.9) ? 1 + rng.int(o.lastCommand) : rng.int(256);
    const payload = style === 1 ? rng.bytes(rng.int(96)) : o.payload(rng, command);
    parts.push(o.header({
      magic: rng.chance(0.95) ? undefined : [...rng.bytes(4)],
      version: rng.chance(0.95) ? 1 : rng.int(256),
      command,
      flags: rng.chance(0.95) ? 0 : rng.int(65536),
      requestId: rng.u32(),
      length: rng.chance(0.85) ? payload.length : rng.pick(INTERESTING_U32),
    }), payload);
  }
  return Buffer.concat(parts);
}

/** A protocol's frame reader, as the fuzzer drives it. */
export interface FuzzedReader<F> {
  push(chunk: Buffer): F[];
  end(): void;
  readonly bufferedBytes: number;
  readonly pendingHeader: { readonly command: number } | undefined;
}

/**
 * Feeds `input` to `reader` in random chunks and each frame to `onFrame`; 'ok' or the PROTOCOL_* code it
 * failed with (anything else is rethrown: a defect). After every push it asserts that the reader holds no
 * more than it was given, nor more than the frame in progress may be (`maxPayloadBytes` of its command),
 * and a reader that failed holds nothing.
 */
export function feedReader<F>(rng: Rng, reader: FuzzedReader<F>, input: Buffer, maxPayloadBytes: (command: number) => number, onFrame: (frame: F) => void): Outcome {
  let pushed = 0;
  let readerFailed = false;
  try {
    for (const chunk of randomChunks(rng, input)) {
      pushed += chunk.length;
      readerFailed = true;
      const frames = reader.push(chunk);
      readerFailed = false;
      const buffered = reader.bufferedBytes;
      assert.ok(buffered <= pushed, `buffered ${buffered} > pushed ${pushed}`);
      const pending = reader.pendingHeader;
      const bound = pending === undefined ? HEADER_BYTES - 1 : HEADER_BYTES + maxPayloadBytes(pending.command) - 1;
      assert.ok(buffered <= bound, `buffered ${buffered} exceeds ${bound}`);
      for (const frame of frames) onFrame(frame);
    }
    readerFailed = true;
    reader.end();
    return 'ok';
  } catch (err) {
    const outcome = outcomeOf(err, (code) => code.startsWith('PROTOCOL_'));
    if (readerFailed) assert.equal(reader.bufferedBytes, 0, 'a failed reader holds no payload');
    return outcome;
  }
}

/** An outcome: 'ok', or the code of a FerryError the protocol may answer (any other throw is a defect and is rethrown). */
export function outcomeOf(err: unknown, acceptable: (code: FerryErrorCode) => boolean): Outcome {
  if (err instanceof FerryError && acceptable(err.code)) return err.code;
  throw err;
}

export function describeCase(group: string, index: number, seed: number, input: Buffer): string {
  const shown = input.subarray(0, 1024).toString('hex');
  return `fuzz ${group} case ${index} failed (FERRY_FUZZ_SEED=${SEED} FERRY_FUZZ_CASE=${index}, case seed ${seed}); ` +
    `input ${input.length} bytes: ${shown}${input.length > 1024 ? '…' : ''}`;
}

/** The case indices of a group: all CASES, or only FERRY_FUZZ_CASE. */
export function caseIndices(): number[] {
  return ONLY_CASE === undefined ? Array.from({ length: CASES }, (_, i) => i) : [ONLY_CASE];
}

/** Runs `CASES` cases of a group (`run` returns the outcome; anything it throws fails with the case to replay). */
export function runGroup(group: number, name: string, make: (rng: Rng) => Buffer, run: (rng: Rng, input: Buffer) => Outcome): Map<Outcome, number> {
  const outcomes = new Map<Outcome, number>();
  for (const i of caseIndices()) {
    const seed = caseSeed(group, i);
    const rng = new Rng(seed);
    const input = make(rng);
    let outcome: Outcome;
    try {
      outcome = run(rng, input);
    } catch (err) {
      const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
      assert.fail(`${describeCase(name, i, seed, input)}\n${detail}`);
    }
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
  }
  return outcomes;
}

export function summary(outcomes: Map<Outcome, number>): string {
  return [...outcomes.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}=${v}`).join(' ');
}

/** True when the whole run (not a replayed case) was big enough to expect every outcome to show up. */
export function fullRun(): boolean {
  return ONLY_CASE === undefined && CASES >= 5000;
}
