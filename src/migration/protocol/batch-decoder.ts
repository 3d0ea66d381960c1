/**
 * The one decoder of MEMORY and DISK payloads (layout: ./memory-batch.ts), incremental: it is given the
 * payload's length up front and then its bytes in pieces, in order, as a socket delivers them, and it
 * reports each entry as soon as its bytes are in — raw data piece by piece, never buffered. That lets a
 * migration target copy each page from the socket's chunk straight into guest RAM (one copy per byte,
 * and the chunk dies young), instead of joining a multi-MiB frame first and copying it again.
 *
 * Every rule of the layout is checked, in the order decodeMemoryBatch documents, and as early as the
 * bytes allow: an entry's header is validated before any of its data is reported, and a rule that the
 * payload's length decides (an entry that cannot fit, trailing bytes) fails before the bytes arrive.
 * What was reported before a failure must then be discarded by the consumer (a target discards the
 * whole incoming VM on any error, so nothing partial is ever run).
 */
import { assert } from '../../lib/assert.js';
import { FerryError } from '../../lib/errors.js';
import { formatBytes } from '../../lib/units.js';
import { MAX_ENTRIES_PER_BATCH, MAX_ENTRY_BYTES, MAX_MEMORY_PAYLOAD_BYTES } from './frame.js';

export type MemoryEncoding = 'raw' | 'zero' | 'deflate';

/** What a batch addresses: guest RAM (MEMORY) or a disk (DISK); offsets and lengths are multiples of `unitBytes`. */
export interface BatchSpace {
  readonly label: 'MEMORY' | 'DISK';
  readonly unitBytes: number;
  /** What the decoder calls the space in errors. */
  readonly noun: string;
}

/** Bytes before the first entry: u32 round, u32 entry count. */
export const MEMORY_BATCH_HEADER_BYTES = 8;
/** Bytes of an entry header: u64 offset, u32 length, u8 encoding, u8 + u16 reserved. */
export const MEMORY_ENTRY_HEADER_BYTES = 16;
/** Bytes of the compressed-length prefix of a deflate-raw entry. */
export const DEFLATE_LENGTH_BYTES = 4;

export const ENCODINGS: readonly MemoryEncoding[] = ['raw', 'zero', 'deflate'];
const U32_LIMIT = 2 ** 32;
/** A u64 whose high word is above this is ≥ 2^53: beyond any RAM a JS number can describe. */
const MAX_SAFE_HIGH_WORD = 0x1f_ffff;

/** An entry's header, validated. */
export interface EntryHeader {
  readonly offset: number;
  readonly length: number;
  readonly encoding: MemoryEncoding;
}

/** Where the decoder reports what it decoded, in payload order. */
export interface BatchSink {
  /** The batch header: its round and entry count (before any entry). */
  batch?(round: number, count: number): void;
  /** Bytes of a raw entry's data, at `at` bytes into the space (a view into a pushed piece: copy it or keep it). */
  rawBytes(at: number, bytes: Buffer): void;
  /** An entry is complete: its header, and for deflate its compressed bytes (joined); null for raw and zero. */
  entry(header: EntryHeader, compressed: Buffer | null): void;
}

/** Why an entry's length is invalid, or undefined if it is valid. */
export function lengthProblem(length: number, unit: number): string | undefined {
  if (!Number.isSafeInteger(length) || length < unit || length > MAX_ENTRY_BYTES) {
    return `length ${length} is outside ${unit}..${MAX_ENTRY_BYTES} bytes`;
  }
  if (length % unit !== 0) return `length ${length} is not a multiple of ${unit}`;
  return undefined;
}

function u64Text(high: number, low: number): string {
  return (BigInt(high) << 32n | BigInt(low)).toString();
}

type Phase = 'batch-header' | 'entry-header' | 'raw' | 'deflate-length' | 'deflate-data' | 'done';

export class BatchDecoder {
  private phase: Phase = 'batch-header';
  /** Bytes of the payload consumed so far. */
  private pos = 0;
  /** A fixed-size part being collected (batch header, entry header, deflate length). */
  private readonly small = Buffer.alloc(MEMORY_ENTRY_HEADER_BYTES);
  private smallFilled = 0;
  private count = 0;
  private index = 0;
  /** Start of the current entry's header (for messages). */
  private entryAt = 0;
  private current: EntryHeader | null = null;
  /** Data bytes of the current entry (raw or compressed) still to come. */
  private left = 0;
  private compressed: Buffer[] = [];

  constructor(readonly payloadBytes: number, private readonly spaceBytes: number, private readonly space: BatchSpace, private readonly sink: BatchSink) {
    assert(Number.isSafeInteger(spaceBytes) && spaceBytes >= 0, `spaceBytes ${spaceBytes} is a byte count`);
    if (payloadBytes > MAX_MEMORY_PAYLOAD_BYTES) {
      throw new FerryError('PROTOCOL_TOO_LARGE',
        `MEMORY batch: ${formatBytes(payloadBytes)} payload; the limit is ${formatBytes(MAX_MEMORY_PAYLOAD_BYTES)}`,
        { payloadBytes, maxPayloadBytes: MAX_MEMORY_PAYLOAD_BYTES });
    }
    if (payloadBytes < MEMORY_BATCH_HEADER_BYTES) {
      throw this.bad(`payload is ${payloadBytes} bytes, shorter than its ${MEMORY_BATCH_HEADER_BYTES}-byte header`, { payloadBytes });
    }
  }

  private bad(message: string, details: Record<string, unknown> = {}): FerryError {
    return new FerryError('PROTOCOL_BAD_PAYLOAD', `${this.space.label} batch: ${message}`, details);
  }

  private get remaining(): number {
    return this.payloadBytes - this.pos;
  }

  /** True once every byte of the payload was decoded. */
  get done(): boolean {
    return this.phase === 'done';
  }

  /** Decodes the next piece of the payload (never more than the payload's length in all). Throws PROTOCOL_* errors. */
  push(piece: Buffer): void {
    assert(piece.length <= this.remaining, `${piece.length} bytes pushed with ${this.remaining} of the payload left`);
    let at = 0;
    while (at < piece.length) {
      if (this.phase === 'raw' || this.phase === 'deflate-data') {
        at += this.data(piece, at);
      } else {
        assert(this.phase !== 'done', 'no bytes after the payload');
        const need = this.smallNeed();
        const take = Math.min(need - this.smallFilled, piece.length - at);
        piece.copy(this.small, this.smallFilled, at, at + take);
        this.smallFilled += take;
        at += take;
        this.pos += take;
        if (this.smallFilled === need) {
          this.smallFilled = 0;
          this.smallDone();
        }
      }
    }
  }

  /** Declares the payload complete; throws if it is not (a caller that pushed fewer bytes than it announced). */
  end(): void {
    assert(this.phase === 'done' && this.pos === this.payloadBytes, `the ${this.space.label} payload was decoded to its end`);
  }

  private smallNeed(): number {
    switch (this.phase) {
      case 'batch-header': return MEMORY_BATCH_HEADER_BYTES;
      case 'deflate-length': return DEFLATE_LENGTH_BYTES;
      default: return MEMORY_ENTRY_HEADER_BYTES;
    }
  }

  private smallDone(): void {
    switch (this.phase) {
      case 'batch-header': this.batchHeader(); break;
      case 'entry-header': this.entryHeader(); break;
      case 'deflate-length': this.deflateLength(); break;
      default: assert(false, `no fixed-size part in phase ${this.phase}`);
    }
  }

  private batchHeader(): void {
    const round = this.small.readUInt32LE(0);
    const count = this.small.readUInt32LE(4);
    if (count > MAX_ENTRIES_PER_BATCH) throw this.bad(`${count} entries; the limit is ${MAX_ENTRIES_PER_BATCH} per batch`, { count });
    if (count * MEMORY_ENTRY_HEADER_BYTES > this.payloadBytes - MEMORY_BATCH_HEADER_BYTES) {
      throw this.bad(`${count} entries cannot fit in a ${this.payloadBytes}-byte payload`, { count, payloadBytes: this.payloadBytes });
    }
    this.count = count;
    this.sink.batch?.(round, count);
    this.nextEntry();
  }

  /** Starts entry `index`, or ends the batch after the last: what the length decides is checked now. */
  private nextEntry(): void {
    if (this.index === this.count) {
      if (this.remaining !== 0) {
        throw this.bad(`${this.remaining} bytes follow the last of ${this.count} entries; entries must exactly fill the payload`,
          { trailingBytes: this.remaining, count: this.count });
      }
      this.phase = 'done';
      return;
    }
    this.entryAt = this.pos;
    if (this.remaining < MEMORY_ENTRY_HEADER_BYTES) throw this.bad(`${this.where()}: the payload ends inside the entry header`, { entry: this.index });
    this.phase = 'entry-header';
  }

  private where(): string {
    return `entry ${this.index} (payload byte ${this.entryAt})`;
  }

  private entryHeader(): void {
    const h = this.small;
    const i = this.index;
    const where = this.where();
    const unit = this.space.unitBytes;
    const low = h.readUInt32LE(0);
    const high = h.readUInt32LE(4);
    const length = h.readUInt32LE(8);
    const code = h.readUInt8(12);
    const reserved8 = h.readUInt8(13);
    const reserved16 = h.readUInt16LE(14);
    // 2^32 is a multiple of 4096 (and 512), so alignment depends on the low word only.
    if (low % unit !== 0) throw this.bad(`${where}: offset is not a multiple of ${unit}`, { entry: i, offset: u64Text(high, low) });
    const problem = lengthProblem(length, unit);
    if (problem !== undefined) throw this.bad(`${where}: ${problem}`, { entry: i, length });
    // offset ≤ 2^53 - 1 here, so it is exact; compare without adding (offset + length could round).
    const offset = high > MAX_SAFE_HIGH_WORD ? Number.POSITIVE_INFINITY : high * U32_LIMIT + low;
    if (offset > this.spaceBytes - length) {
      throw this.bad(`${where}: range [${u64Text(high, low)}, +${length}) lies outside ${this.space.noun} (${this.spaceBytes} bytes)`,
        { entry: i, offset: u64Text(high, low), length, ramBytes: this.spaceBytes });
    }
    const encoding = ENCODINGS[code];
    if (encoding === undefined) throw this.bad(`${where}: unknown encoding ${code}`, { entry: i, encoding: code });
    if (reserved8 !== 0 || reserved16 !== 0) throw this.bad(`${where}: reserved bytes must be 0`, { entry: i, reserved8, reserved16 });
    this.current = { offset, length, encoding };
    if (encoding === 'zero') { this.entryDone(null); return; }
    if (encoding === 'raw') {
      if (this.remaining < length) throw this.bad(`${where}: raw data needs ${length} bytes but only ${this.remaining} remain`, { entry: i, length });
      this.left = length;
      this.phase = 'raw';
      return;
    }
    if (this.remaining < DEFLATE_LENGTH_BYTES) throw this.bad(`${where}: the payload ends before the compressed length`, { entry: i });
    this.phase = 'deflate-length';
  }

  private deflateLength(): void {
    const e = this.current;
    assert(e !== null, 'a deflate entry is being decoded');
    const compressed = this.small.readUInt32LE(0);
    const where = this.where();
    if (compressed < 1 || compressed > e.length) {
      throw this.bad(`${where}: compressed length ${compressed} is outside 1..${e.length}`, { entry: this.index, compressed, length: e.length });
    }
    if (this.remaining < compressed) {
      throw this.bad(`${where}: compressed data needs ${compressed} bytes but only ${this.remaining} remain`, { entry: this.index, compressed });
    }
    this.left = compressed;
    this.phase = 'deflate-data';
  }

  /** Takes the current entry's data from `piece` at `at`; returns the bytes taken. */
  private data(piece: Buffer, at: number): number {
    const e = this.current;
    assert(e !== null, 'an entry with data is being decoded');
    const take = Math.min(this.left, piece.length - at);
    const view = piece.subarray(at, at + take);
    if (this.phase === 'raw') this.sink.rawBytes(e.offset + (e.length - this.left), view);
    else this.compressed.push(view);
    this.left -= take;
    this.pos += take;
    if (this.left === 0) {
      const parts = this.compressed;
      this.compressed = [];
      this.entryDone(this.phase === 'deflate-data' ? (parts.length === 1 ? (parts[0] ?? Buffer.alloc(0)) : Buffer.concat(parts)) : null);
    }
    return take;
  }

  private entryDone(compressed: Buffer | null): void {
    const e = this.current;
    assert(e !== null, 'an entry is being decoded');
    this.current = null;
    this.sink.entry(e, compressed);
    this.index++;
    this.nextEntry();
  }
}
