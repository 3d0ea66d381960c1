/**
 * MEMORY payloads: a batch of guest-RAM ranges (docs/migration-protocol.md, "MEMORY payload").
 *
 *   u32 round, u32 entry count (≤ MAX_ENTRIES_PER_BATCH), then per entry:
 *   u64 guest offset (multiple of 4096), u32 length (multiple of 4096, 4096..2 MiB),
 *   u8 encoding (0 raw, 1 zero, 2 deflate-raw), u8 reserved = 0, u16 reserved = 0, then
 *   raw: `length` bytes | zero: nothing | deflate-raw: u32 compressed length (1..length), that many bytes.
 *
 * The entries must exactly fill the payload, and every range must lie inside guest RAM.
 *
 * DISK payloads (storage live migration) have the same layout over a disk's bytes instead of RAM,
 * in units of 512-byte sectors instead of 4 KiB pages (a disk's size is a sector multiple): the
 * codec takes the `BatchSpace` it works in.
 * Decoding never copies: entry data are views into the payload. Deflate data are passed through
 * as they are (the target inflates them and must check the inflated size equals `length`).
 */
import { assert } from '../../lib/assert.js';
import { FerryError } from '../../lib/errors.js';
import { formatBytes } from '../../lib/units.js';
import { MAX_ENTRIES_PER_BATCH, MAX_ENTRY_BYTES, MAX_MEMORY_PAYLOAD_BYTES, PAGE_ALIGN_BYTES } from './frame.js';

export type MemoryEncoding = 'raw' | 'zero' | 'deflate';

/** What a batch addresses: guest RAM (MEMORY) or a disk (DISK); offsets and lengths are multiples of `unitBytes`. */
export interface BatchSpace {
  readonly label: 'MEMORY' | 'DISK';
  readonly unitBytes: number;
  /** What the decoder calls the space in errors. */
  readonly noun: string;
}
export const MEMORY_SPACE: BatchSpace = { label: 'MEMORY', unitBytes: PAGE_ALIGN_BYTES, noun: 'guest RAM' };
/** Disk sectors: the unit every disk format maps. */
export const DISK_UNIT_BYTES = 512;
export const DISK_SPACE: BatchSpace = { label: 'DISK', unitBytes: DISK_UNIT_BYTES, noun: 'the disk' };

/** Bytes before the first entry: u32 round, u32 entry count. */
export const MEMORY_BATCH_HEADER_BYTES = 8;
/** Bytes of an entry header: u64 offset, u32 length, u8 encoding, u8 + u16 reserved. */
export const MEMORY_ENTRY_HEADER_BYTES = 16;
/** Bytes of the compressed-length prefix of a deflate-raw entry. */
export const DEFLATE_LENGTH_BYTES = 4;

const ENCODING_CODES: Readonly<Record<MemoryEncoding, number>> = { raw: 0, zero: 1, deflate: 2 };
const ENCODINGS: readonly MemoryEncoding[] = ['raw', 'zero', 'deflate'];
const U32_LIMIT = 2 ** 32;
/** A u64 whose high word is above this is ≥ 2^53: beyond any RAM a JS number can describe. */
const MAX_SAFE_HIGH_WORD = 0x1f_ffff;

/** An entry to encode. `data`: raw = the `length` bytes; zero = absent/null; deflate = the compressed bytes. */
export interface MemoryEntryInput {
  readonly offset: number;
  readonly length: number;
  readonly encoding: MemoryEncoding;
  readonly data?: Uint8Array | null;
}

/** A decoded entry. `data` is a view into the payload: raw = `length` bytes, deflate = compressed bytes, zero = null. */
export interface MemoryEntry {
  readonly offset: number;
  readonly length: number;
  readonly encoding: MemoryEncoding;
  readonly data: Buffer | null;
}

export interface MemoryBatch {
  readonly round: number;
  readonly entries: MemoryEntry[];
}

function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v < U32_LIMIT;
}

function badBatch(message: string, details: Record<string, unknown> = {}, space: BatchSpace = MEMORY_SPACE): FerryError {
  return new FerryError('PROTOCOL_BAD_PAYLOAD', `${space.label} batch: ${message}`, details);
}

/** Why an entry's length is invalid, or undefined if it is valid. */
function lengthProblem(length: number, unit: number): string | undefined {
  if (!Number.isSafeInteger(length) || length < unit || length > MAX_ENTRY_BYTES) {
    return `length ${length} is outside ${unit}..${MAX_ENTRY_BYTES} bytes`;
  }
  if (length % unit !== 0) return `length ${length} is not a multiple of ${unit}`;
  return undefined;
}

/** Wire size of one entry (header + data). Throws PROTOCOL_BAD_PAYLOAD if the entry cannot be encoded. */
export function memoryEntryWireBytes(entry: MemoryEntryInput, space: BatchSpace = MEMORY_SPACE): number {
  const where = `entry at offset ${entry.offset}`;
  const unit = space.unitBytes;
  if (!Number.isSafeInteger(entry.offset) || entry.offset < 0 || entry.offset % unit !== 0) {
    throw badBatch(`${where}: the offset must be a non-negative multiple of ${unit}`, { offset: entry.offset }, space);
  }
  const problem = lengthProblem(entry.length, unit);
  if (problem !== undefined) throw badBatch(`${where}: ${problem}`, { offset: entry.offset, length: entry.length });
  const data = entry.data ?? null;
  switch (entry.encoding) {
    case 'raw':
      if (data === null || data.byteLength !== entry.length) {
        throw badBatch(`${where}: a raw entry needs exactly ${entry.length} data bytes, got ${data?.byteLength ?? 'none'}`,
          { offset: entry.offset, length: entry.length });
      }
      return MEMORY_ENTRY_HEADER_BYTES + entry.length;
    case 'zero':
      if (data !== null) throw badBatch(`${where}: a zero entry carries no data`, { offset: entry.offset });
      return MEMORY_ENTRY_HEADER_BYTES;
    case 'deflate':
      if (data === null || data.byteLength < 1 || data.byteLength > entry.length) {
        throw badBatch(`${where}: a deflate entry needs 1..${entry.length} compressed bytes, got ${data?.byteLength ?? 'none'}` +
          ' (send it raw if it does not compress)', { offset: entry.offset, length: entry.length });
      }
      return MEMORY_ENTRY_HEADER_BYTES + DEFLATE_LENGTH_BYTES + data.byteLength;
    default:
      throw badBatch(`${where}: unknown encoding ${String(entry.encoding)}`);
  }
}

/**
 * Encodes a MEMORY payload. Throws PROTOCOL_BAD_PAYLOAD for an invalid entry or round,
 * PROTOCOL_TOO_LARGE for more than MAX_ENTRIES_PER_BATCH entries or a payload over
 * MAX_MEMORY_PAYLOAD_BYTES. (Offsets are checked against RAM by the decoder, which knows its size.)
 */
export function encodeMemoryBatch(round: number, entries: readonly MemoryEntryInput[], space: BatchSpace = MEMORY_SPACE): Buffer {
  const size = memoryBatchBytes(round, entries, space);
  const out = Buffer.allocUnsafe(size);
  writeMemoryBatch(out, 0, round, entries);
  return out;
}

/** Validates a batch and returns its payload size in bytes (PROTOCOL_TOO_LARGE / PROTOCOL_BAD_PAYLOAD). */
export function memoryBatchBytes(round: number, entries: readonly MemoryEntryInput[], space: BatchSpace = MEMORY_SPACE): number {
  if (!isU32(round)) throw badBatch(`round ${round} is not a u32`, { round });
  if (entries.length > MAX_ENTRIES_PER_BATCH) {
    throw new FerryError('PROTOCOL_TOO_LARGE',
      `MEMORY batch: ${entries.length} entries; the limit is ${MAX_ENTRIES_PER_BATCH} per batch`, { count: entries.length });
  }
  let total = MEMORY_BATCH_HEADER_BYTES;
  for (const e of entries) total += memoryEntryWireBytes(e, space);
  if (total > MAX_MEMORY_PAYLOAD_BYTES) {
    throw new FerryError('PROTOCOL_TOO_LARGE',
      `MEMORY batch: ${formatBytes(total)} payload; the limit is ${formatBytes(MAX_MEMORY_PAYLOAD_BYTES)}`,
      { payloadBytes: total, maxPayloadBytes: MAX_MEMORY_PAYLOAD_BYTES });
  }
  return total;
}

/**
 * Writes a validated batch (see memoryBatchBytes) into `out` at `at`: the sender's zero-extra-copy
 * path, where entry data are views of guest RAM copied once, straight into a reused frame buffer.
 * Returns, per entry, the position of its data in `out` (-1 for zero entries).
 */
export function writeMemoryBatch(out: Buffer, at: number, round: number, entries: readonly MemoryEntryInput[]): number[] {
  const dataAt: number[] = [];
  out.writeUInt32LE(round, at);
  out.writeUInt32LE(entries.length, at + 4);
  let pos = at + MEMORY_BATCH_HEADER_BYTES;
  for (const e of entries) {
    out.writeUInt32LE(e.offset % U32_LIMIT, pos);
    out.writeUInt32LE(Math.floor(e.offset / U32_LIMIT), pos + 4);
    out.writeUInt32LE(e.length, pos + 8);
    out.writeUInt8(ENCODING_CODES[e.encoding], pos + 12);
    out.writeUInt8(0, pos + 13);
    out.writeUInt16LE(0, pos + 14);
    pos += MEMORY_ENTRY_HEADER_BYTES;
    const data = e.data ?? null;
    if (e.encoding === 'deflate' && data !== null) {
      out.writeUInt32LE(data.byteLength, pos);
      pos += DEFLATE_LENGTH_BYTES;
    }
    dataAt.push(data === null ? -1 : pos);
    if (data !== null) {
      out.set(data, pos);
      pos += data.byteLength;
    }
  }
  return dataAt;
}

/**
 * Decodes and validates a MEMORY payload for a VM with `ramBytes` of RAM. Every rule is enforced
 * (PROTOCOL_BAD_PAYLOAD unless noted): header present; count ≤ MAX_ENTRIES_PER_BATCH; per entry:
 * offset 4096-aligned, length a multiple of 4096 in 4096..2 MiB, offset + length ≤ ramBytes,
 * known encoding, reserved bytes 0, data present in full, compressed length 1..length; the entries
 * exactly fill the payload. A payload over MAX_MEMORY_PAYLOAD_BYTES is PROTOCOL_TOO_LARGE.
 */
export function decodeMemoryBatch(payload: Uint8Array, ramBytes: number, space: BatchSpace = MEMORY_SPACE): MemoryBatch {
  const unit = space.unitBytes;
  const badBatch = (message: string, details: Record<string, unknown> = {}): FerryError => new FerryError('PROTOCOL_BAD_PAYLOAD', `${space.label} batch: ${message}`, details);
  assert(Number.isSafeInteger(ramBytes) && ramBytes >= 0, `ramBytes ${ramBytes} is a byte count`);
  const buf = Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (buf.length > MAX_MEMORY_PAYLOAD_BYTES) {
    throw new FerryError('PROTOCOL_TOO_LARGE',
      `MEMORY batch: ${formatBytes(buf.length)} payload; the limit is ${formatBytes(MAX_MEMORY_PAYLOAD_BYTES)}`,
      { payloadBytes: buf.length, maxPayloadBytes: MAX_MEMORY_PAYLOAD_BYTES });
  }
  if (buf.length < MEMORY_BATCH_HEADER_BYTES) {
    throw badBatch(`payload is ${buf.length} bytes, shorter than its ${MEMORY_BATCH_HEADER_BYTES}-byte header`,
      { payloadBytes: buf.length });
  }
  const round = buf.readUInt32LE(0);
  const count = buf.readUInt32LE(4);
  if (count > MAX_ENTRIES_PER_BATCH) {
    throw badBatch(`${count} entries; the limit is ${MAX_ENTRIES_PER_BATCH} per batch`, { count });
  }
  if (count * MEMORY_ENTRY_HEADER_BYTES > buf.length - MEMORY_BATCH_HEADER_BYTES) {
    throw badBatch(`${count} entries cannot fit in a ${buf.length}-byte payload`, { count, payloadBytes: buf.length });
  }
  const entries: MemoryEntry[] = [];
  let pos = MEMORY_BATCH_HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    const where = `entry ${i} (payload byte ${pos})`;
    if (buf.length - pos < MEMORY_ENTRY_HEADER_BYTES) {
      throw badBatch(`${where}: the payload ends inside the entry header`, { entry: i });
    }
    const low = buf.readUInt32LE(pos);
    const high = buf.readUInt32LE(pos + 4);
    const length = buf.readUInt32LE(pos + 8);
    const code = buf.readUInt8(pos + 12);
    const reserved8 = buf.readUInt8(pos + 13);
    const reserved16 = buf.readUInt16LE(pos + 14);
    if (low % unit !== 0) {
      // 2^32 is a multiple of 4096 (and 512), so alignment depends on the low word only.
      throw badBatch(`${where}: offset is not a multiple of ${unit}`,
        { entry: i, offset: (BigInt(high) << 32n | BigInt(low)).toString() });
    }
    const problem = lengthProblem(length, unit);
    if (problem !== undefined) throw badBatch(`${where}: ${problem}`, { entry: i, length });
    // offset ≤ 2^53 - 1 here, so it is exact; compare without adding (offset + length could round).
    const offset = high > MAX_SAFE_HIGH_WORD ? Number.POSITIVE_INFINITY : high * U32_LIMIT + low;
    if (offset > ramBytes - length) {
      throw badBatch(`${where}: range [${(BigInt(high) << 32n | BigInt(low)).toString()}, +${length}) ` +
        `lies outside ${space.noun} (${ramBytes} bytes)`,
      { entry: i, offset: (BigInt(high) << 32n | BigInt(low)).toString(), length, ramBytes });
    }
    const encoding = ENCODINGS[code];
    if (encoding === undefined) throw badBatch(`${where}: unknown encoding ${code}`, { entry: i, encoding: code });
    if (reserved8 !== 0 || reserved16 !== 0) {
      throw badBatch(`${where}: reserved bytes must be 0`, { entry: i, reserved8, reserved16 });
    }
    pos += MEMORY_ENTRY_HEADER_BYTES;
    let data: Buffer | null = null;
    if (encoding === 'raw') {
      if (buf.length - pos < length) {
        throw badBatch(`${where}: raw data needs ${length} bytes but only ${buf.length - pos} remain`, { entry: i, length });
      }
      data = buf.subarray(pos, pos + length);
      pos += length;
    } else if (encoding === 'deflate') {
      if (buf.length - pos < DEFLATE_LENGTH_BYTES) {
        throw badBatch(`${where}: the payload ends before the compressed length`, { entry: i });
      }
      const compressed = buf.readUInt32LE(pos);
      pos += DEFLATE_LENGTH_BYTES;
      if (compressed < 1 || compressed > length) {
        throw badBatch(`${where}: compressed length ${compressed} is outside 1..${length}`, { entry: i, compressed, length });
      }
      if (buf.length - pos < compressed) {
        throw badBatch(`${where}: compressed data needs ${compressed} bytes but only ${buf.length - pos} remain`,
          { entry: i, compressed });
      }
      data = buf.subarray(pos, pos + compressed);
      pos += compressed;
    }
    entries.push({ offset, length, encoding, data });
  }
  if (pos !== buf.length) {
    throw badBatch(`${buf.length - pos} bytes follow the last of ${count} entries; entries must exactly fill the payload`,
      { trailingBytes: buf.length - pos, count });
  }
  return { round, entries };
}

/**
 * Accumulates entries for one round until the next one would not fit in a MEMORY payload.
 *
 *   const b = new BatchBuilder(round);
 *   for (const e of ranges) { if (!b.add(e)) { send(b.build()); b.add(e); } }
 *   if (!b.isEmpty) send(b.build());
 *
 * Entries are validated when added; their data are referenced, not copied, until build().
 */
export class BatchBuilder {
  private entries: MemoryEntryInput[] = [];
  private bytes = MEMORY_BATCH_HEADER_BYTES;

  constructor(readonly round: number, readonly maxPayloadBytes: number = MAX_MEMORY_PAYLOAD_BYTES) {
    if (!isU32(round)) throw badBatch(`round ${round} is not a u32`, { round });
    assert(Number.isSafeInteger(maxPayloadBytes) && maxPayloadBytes >= MEMORY_BATCH_HEADER_BYTES &&
      maxPayloadBytes <= MAX_MEMORY_PAYLOAD_BYTES, `BatchBuilder payload limit ${maxPayloadBytes} is within 8..MAX`);
  }

  get count(): number {
    return this.entries.length;
  }

  get payloadBytes(): number {
    return this.bytes;
  }

  get isEmpty(): boolean {
    return this.entries.length === 0;
  }

  /** True when not even a zero entry (the smallest) fits any more: build() now. */
  get isFull(): boolean {
    return this.entries.length >= MAX_ENTRIES_PER_BATCH || this.bytes + MEMORY_ENTRY_HEADER_BYTES > this.maxPayloadBytes;
  }

  /** Whether `entry` fits in the current batch (validates it: throws PROTOCOL_BAD_PAYLOAD if it is invalid). */
  fits(entry: MemoryEntryInput): boolean {
    return this.entries.length < MAX_ENTRIES_PER_BATCH && this.bytes + memoryEntryWireBytes(entry) <= this.maxPayloadBytes;
  }

  /** Adds `entry` if it fits and returns true; returns false (and adds nothing) if the batch is full for it. */
  add(entry: MemoryEntryInput): boolean {
    const size = memoryEntryWireBytes(entry);
    if (this.entries.length >= MAX_ENTRIES_PER_BATCH || this.bytes + size > this.maxPayloadBytes) return false;
    this.entries.push(entry);
    this.bytes += size;
    return true;
  }

  /** Encodes the accumulated entries as one MEMORY payload and empties the builder. */
  build(): Buffer {
    const payload = encodeMemoryBatch(this.round, this.entries);
    this.entries = [];
    this.bytes = MEMORY_BATCH_HEADER_BYTES;
    return payload;
  }
}
