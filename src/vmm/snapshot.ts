/**
 * Ferry VM snapshot files, format version 1. docs/snapshot-format.md is the normative description
 * (byte tables, validation order, error codes); this header is only a summary.
 *
 *   header (88 bytes, little-endian, own crc32)
 *   metadata section   UTF-8 JSON, validated against a strict schema on read
 *   image section      the original (uninstrumented) guest image, crc32 + sha256 checked
 *   memory section     records (u64 offset, u32 length, u32 crc32(data), data) of 64 KiB chunks
 *                      of RAM in strictly increasing offset order; all-zero chunks are not stored
 *
 * Writing goes to `path + '.tmp'`, is fsynced and then renamed over `path`: a crash leaves either
 * the previous file or the complete new one under the real name, never a partial snapshot. The
 * header is written last (at offset 0) once every checksum is known.
 *
 * Reading never trusts the file: every length is bounded before anything is allocated, every
 * section and record is checksummed, and each failure has its own FerryError code and a message
 * that says what is wrong and what to do.
 */
import { createHash } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { crc32 } from 'node:zlib';
// zod (runtime dependency, added for this file): the metadata section is untrusted input from disk.
// A declarative strict schema states every field, type and bound in one place and reports precise
// field paths on failure; the hand-written equivalent is several hundred lines of easy-to-get-wrong
// checks. zod has no dependencies of its own.
import { z } from 'zod';
import { FerryError, errnoCode, errorMessage } from '../lib/errors.js';
import { KiB, MiB, formatBytes } from '../lib/units.js';
import { globalValueSchema, globalValueToWire, u64StringSchema, type GlobalValue } from '../lib/wire-values.js';
import {
  MAX_GLOBALS_PER_VCPU, MAX_IMAGE_BYTES, MAX_RAM_BYTES, MAX_VCPUS, MIN_VCPUS, WASM_PAGE_BYTES, cmdlineSchema, granularitySchema,
  ramBytesSchema, vcpusSchema, vmNameSchema,
} from '../lib/limits.js';

export const SNAPSHOT_MAGIC = 'FERRYSNP';
export const SNAPSHOT_FORMAT_VERSION = 1;
/** Memory is stored in 64 KiB chunks; all-zero chunks are skipped. */
export const SNAPSHOT_CHUNK_BYTES = 64 * KiB;
/** Size of the fixed header of format version 1. */
export const SNAPSHOT_HEADER_BYTES = 88;
/** Size of the header of one memory record (u64 offset, u32 length, u32 crc32). */
export const SNAPSHOT_RECORD_HEADER_BYTES = 16;
/** Largest metadata section accepted. */
export const SNAPSHOT_MAX_METADATA_BYTES = 16 * MiB;

export interface VcpuSnapshot { halted: boolean; globals: GlobalValue[] }
export interface SnapshotMetadata {
  vm: { name: string; ramBytes: number; vcpus: number; granularityBytes: number; cmdline: string };
  /** Hex sha256 of the embedded image. */
  imageSha256: string;
  /** Guest's claimed memory size in 64 KiB pages (<= ramBytes/65536). */
  claimedPages: number;
  /** Guest monotonic clock at save. */
  clockNs: bigint;
  /** One per vCPU: length === vm.vcpus. */
  vcpuStates: VcpuSnapshot[];
  /** ISO 8601 time of the save. */
  createdAt: string;
}
export interface SnapshotProgress { doneBytes: number; totalBytes: number }
export interface WriteResult { sizeBytes: number; chunksWritten: number; zeroChunksSkipped: number }
export interface OpenSnapshot {
  readonly meta: SnapshotMetadata;
  readonly image: Uint8Array;
  /**
   * Streams the memory records into `ram` (length must be meta.vm.ramBytes); calls
   * mark(offset, length) for every chunk written; verifies every checksum. Zero chunks are left
   * untouched (caller gives a zeroed ram). On failure `ram` holds a partial restore: discard it.
   */
  restoreMemory(ram: Uint8Array, mark?: (offset: number, length: number) => void,
    onProgress?: (p: SnapshotProgress) => void): Promise<{ chunksRead: number }>;
  /** Closes the file. Idempotent. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Layout constants

const CHUNK = SNAPSHOT_CHUNK_BYTES;
const RECORD_HEADER = SNAPSHOT_RECORD_HEADER_BYTES;
const RECORD_BYTES = RECORD_HEADER + CHUNK;
/** Records gathered per write / read call: 64 records ≈ 4 MiB. */
const BATCH_RECORDS = 64;
const BATCH_BYTES = BATCH_RECORDS * RECORD_BYTES;
/** The most records any valid snapshot can hold (largest RAM, every chunk non-zero). */
const MAX_RECORDS = MAX_RAM_BYTES / CHUNK;
const MAGIC_BYTES = Buffer.from(SNAPSHOT_MAGIC, 'latin1');
const ZERO_CHUNK = Buffer.alloc(CHUNK);
const U32 = 2 ** 32;

/** Byte offsets of the header fields (format version 1). */
const H = {
  magic: 0,
  version: 8,
  headerLength: 12,
  metadataOffset: 16,
  metadataLength: 24,
  imageOffset: 32,
  imageLength: 40,
  memoryOffset: 48,
  memoryLength: 56,
  recordCount: 64,
  metadataCrc: 68,
  imageCrc: 72,
  memoryIndexCrc: 76,
  chunkBytes: 80,
  headerCrc: 84,
} as const;

interface Header {
  metadataOffset: number;
  metadataLength: number;
  imageOffset: number;
  imageLength: number;
  memoryOffset: number;
  memoryLength: number;
  recordCount: number;
  metadataCrc: number;
  imageCrc: number;
  memoryIndexCrc: number;
}

function encodeHeader(h: Header): Buffer {
  const b = Buffer.alloc(SNAPSHOT_HEADER_BYTES);
  MAGIC_BYTES.copy(b, H.magic);
  b.writeUInt32LE(SNAPSHOT_FORMAT_VERSION, H.version);
  b.writeUInt32LE(SNAPSHOT_HEADER_BYTES, H.headerLength);
  b.writeBigUInt64LE(BigInt(h.metadataOffset), H.metadataOffset);
  b.writeBigUInt64LE(BigInt(h.metadataLength), H.metadataLength);
  b.writeBigUInt64LE(BigInt(h.imageOffset), H.imageOffset);
  b.writeBigUInt64LE(BigInt(h.imageLength), H.imageLength);
  b.writeBigUInt64LE(BigInt(h.memoryOffset), H.memoryOffset);
  b.writeBigUInt64LE(BigInt(h.memoryLength), H.memoryLength);
  b.writeUInt32LE(h.recordCount, H.recordCount);
  b.writeUInt32LE(h.metadataCrc, H.metadataCrc);
  b.writeUInt32LE(h.imageCrc, H.imageCrc);
  b.writeUInt32LE(h.memoryIndexCrc, H.memoryIndexCrc);
  b.writeUInt32LE(CHUNK, H.chunkBytes);
  b.writeUInt32LE(crc32(b.subarray(0, H.headerCrc)), H.headerCrc);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Metadata: in-memory form <-> JSON wire form (bigints as decimal strings, special floats as strings)

const u64Wire = u64StringSchema({ formatMessage: 'must be a non-negative decimal integer string' });

const globalWire = globalValueSchema({ formatMessage: 'must be a decimal integer string', allowNegativeZero: true });

const vcpuWire = z.object({
  halted: z.boolean(),
  globals: z.array(globalWire).max(MAX_GLOBALS_PER_VCPU),
}).strict();

const vmWire = z.object({
  // Bounds shared with the runtime and the protocol (src/lib/limits.ts), checked on write and on read.
  name: vmNameSchema(),
  ramBytes: ramBytesSchema(),
  vcpus: vcpusSchema(),
  granularityBytes: granularitySchema(),
  cmdline: cmdlineSchema(),
}).strict();

const metadataWire = z.object({
  vm: vmWire,
  imageSha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits'),
  claimedPages: z.number().int().min(0),
  clockNs: u64Wire,
  vcpuStates: z.array(vcpuWire).min(MIN_VCPUS).max(MAX_VCPUS),
  createdAt: z.string().datetime({ offset: true }),
}).strict().superRefine((m, ctx) => {
  const ramPages = m.vm.ramBytes / WASM_PAGE_BYTES;
  if (m.claimedPages > ramPages) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['claimedPages'],
      message: `is ${m.claimedPages} pages but the VM has only ${ramPages} pages of RAM` });
  }
  if (m.vcpuStates.length !== m.vm.vcpus) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['vcpuStates'],
      message: `has ${m.vcpuStates.length} entries but vm.vcpus is ${m.vm.vcpus}` });
  }
});

function describeIssues(error: z.ZodError): string {
  const shown = error.issues.slice(0, 5).map((i) => `${i.path.length > 0 ? i.path.join('.') : '(root)'} ${i.message}`);
  const more = error.issues.length > shown.length ? ` (and ${error.issues.length - shown.length} more)` : '';
  return shown.join('; ') + more;
}

function parseMetadata(raw: unknown): { ok: true; meta: SnapshotMetadata } | { ok: false; problem: string } {
  const result = metadataWire.safeParse(raw);
  if (!result.success) return { ok: false, problem: describeIssues(result.error) };
  const meta: SnapshotMetadata = result.data;
  return { ok: true, meta };
}

function invalidMeta(message: string): FerryError {
  return new FerryError('INVALID_ARGUMENT', `snapshot metadata is invalid: ${message}`);
}

function encodeGlobal(g: GlobalValue, where: string): unknown {
  const fail = (problem: string): FerryError => invalidMeta(`${where}: ${problem}`);
  // The shared encoder leaves i32 values to the schema; snapshots refuse a non-number here, with this message.
  if (g.type === 'i32' && typeof g.value !== 'number') throw fail('an i32 value must be a number');
  return globalValueToWire(g, fail);
}

/** In-memory metadata -> JSON-able wire object; throws INVALID_ARGUMENT for values that cannot be encoded. */
function encodeMetadata(meta: SnapshotMetadata): unknown {
  if (typeof meta.clockNs !== 'bigint') throw invalidMeta('clockNs must be a bigint');
  return {
    vm: {
      name: meta.vm.name,
      ramBytes: meta.vm.ramBytes,
      vcpus: meta.vm.vcpus,
      granularityBytes: meta.vm.granularityBytes,
      cmdline: meta.vm.cmdline,
    },
    imageSha256: meta.imageSha256,
    claimedPages: meta.claimedPages,
    clockNs: meta.clockNs.toString(),
    vcpuStates: meta.vcpuStates.map((v, i) => ({
      halted: v.halted,
      globals: v.globals.map((g, j) => encodeGlobal(g, `vcpuStates.${i}.globals.${j}`)),
    })),
    createdAt: meta.createdAt,
  };
}

// ---------------------------------------------------------------------------------------------
// I/O helpers

/** Runs a file operation; any non-Ferry error becomes SNAPSHOT_IO naming the path and what failed. */
async function io<T>(path: string, action: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('SNAPSHOT_IO', `snapshot ${path}: cannot ${action}: ${errorMessage(err)}`,
      { path, action, errno: errnoCode(err) }, { cause: err });
  }
}

async function writeFully(fh: FileHandle, buf: Uint8Array, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await fh.write(buf, done, length - done, position + done);
    if (bytesWritten <= 0) throw new Error(`write at ${position + done} made no progress`);
    done += bytesWritten;
  }
}

/** Reads up to `length` bytes at `position` into `buf`; returns how many were read (short only at end of file). */
async function readAt(fh: FileHandle, buf: Uint8Array, length: number, position: number): Promise<number> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** Makes a rename durable. Best effort: some file systems refuse fsync on a directory. */
async function syncDirectory(dir: string): Promise<void> {
  let dh: FileHandle | undefined;
  try {
    dh = await open(dir, 'r');
    await dh.sync();
  } catch {
    // The data itself was fsynced before the rename; only the rename's durability is at stake.
  } finally {
    await dh?.close().catch(() => undefined);
  }
}

function ignore(): void { /* rejection observed elsewhere */ }

/** Calls onProgress with strictly increasing doneBytes. */
function progressReporter(totalBytes: number, onProgress?: (p: SnapshotProgress) => void): (doneBytes: number) => void {
  let last = -1;
  return (doneBytes) => {
    if (!onProgress || doneBytes <= last) return;
    last = doneBytes;
    onProgress({ doneBytes, totalBytes });
  };
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * Writes a snapshot of a paused VM. `ram` must be exactly meta.vm.ramBytes long and
 * meta.imageSha256 must be the sha256 of `image`. Progress counts RAM bytes processed (zero
 * chunks included) out of ramBytes and ends with doneBytes === totalBytes once the file is written.
 * Throws INVALID_ARGUMENT for bad arguments, SNAPSHOT_TOO_LARGE, SNAPSHOT_IO; an error thrown by
 * onProgress is passed through. On any failure nothing is left under `path` (an earlier file
 * there is kept) and `path.tmp` is removed.
 */
export async function writeSnapshot(path: string, meta: SnapshotMetadata, image: Uint8Array, ram: Uint8Array,
  onProgress?: (p: SnapshotProgress) => void): Promise<WriteResult> {
  const wire = encodeMetadata(meta);
  const checked = parseMetadata(wire);
  if (!checked.ok) throw invalidMeta(checked.problem);
  const ramBytes = meta.vm.ramBytes;
  if (ram.byteLength !== ramBytes) {
    throw new FerryError('INVALID_ARGUMENT',
      `snapshot RAM buffer is ${ram.byteLength} bytes but the metadata says the VM has ${ramBytes} bytes (${formatBytes(ramBytes)})`,
      { ramLength: ram.byteLength, ramBytes });
  }
  if (image.byteLength > MAX_IMAGE_BYTES) {
    throw new FerryError('SNAPSHOT_TOO_LARGE',
      `guest image is ${formatBytes(image.byteLength)}; a snapshot can embed at most ${formatBytes(MAX_IMAGE_BYTES)}`,
      { imageBytes: image.byteLength });
  }
  const sha = createHash('sha256').update(image).digest('hex');
  if (sha !== meta.imageSha256) {
    throw invalidMeta(`imageSha256 is ${meta.imageSha256} but the image given hashes to ${sha}`);
  }
  const metaBytes = Buffer.from(JSON.stringify(wire), 'utf8');
  if (metaBytes.byteLength > SNAPSHOT_MAX_METADATA_BYTES) {
    throw new FerryError('SNAPSHOT_TOO_LARGE',
      `snapshot metadata is ${formatBytes(metaBytes.byteLength)}; the limit is ${formatBytes(SNAPSHOT_MAX_METADATA_BYTES)}`,
      { metadataBytes: metaBytes.byteLength });
  }

  const metadataOffset = SNAPSHOT_HEADER_BYTES;
  const imageOffset = metadataOffset + metaBytes.byteLength;
  const memoryOffset = imageOffset + image.byteLength;
  const ramBuf = Buffer.from(ram.buffer, ram.byteOffset, ram.byteLength);
  const report = progressReporter(ramBytes, onProgress);
  const tmp = `${path}.tmp`;

  let fh: FileHandle | undefined;
  let pending: Promise<void> | undefined;
  try {
    fh = await io(tmp, 'create the temporary file', () => open(tmp, 'w'));
    const file = fh;
    await io(tmp, 'write', () => writeFully(file, metaBytes, metaBytes.byteLength, metadataOffset));
    await io(tmp, 'write', () => writeFully(file, image, image.byteLength, imageOffset));

    // Memory: records are gathered into one of two batch buffers; while one is being written
    // the other is filled. Chunks are copied before their crc is computed, so the crc always
    // matches the bytes written even if the RAM were to change underneath.
    const batchA = Buffer.allocUnsafeSlow(BATCH_BYTES);
    const batchB = Buffer.allocUnsafeSlow(BATCH_BYTES);
    let batch = batchA;
    let fill = 0;
    let position = memoryOffset;
    let indexCrc = 0;
    let chunksWritten = 0;
    let zeroChunksSkipped = 0;
    const flush = async (): Promise<void> => {
      if (fill === 0) return;
      const buf = batch;
      const length = fill;
      const at = position;
      if (pending) await pending;
      pending = io(tmp, 'write', () => writeFully(file, buf, length, at));
      pending.catch(ignore);
      position += length;
      fill = 0;
      batch = buf === batchA ? batchB : batchA;
    };

    const chunkCount = ramBytes / CHUNK;
    for (let i = 0; i < chunkCount; i++) {
      const off = i * CHUNK;
      if (ZERO_CHUNK.compare(ramBuf, off, off + CHUNK) === 0) {
        zeroChunksSkipped++;
        continue;
      }
      const data = fill + RECORD_HEADER;
      ramBuf.copy(batch, data, off, off + CHUNK);
      batch.writeUInt32LE(off % U32, fill);
      batch.writeUInt32LE(Math.floor(off / U32), fill + 4);
      batch.writeUInt32LE(CHUNK, fill + 8);
      batch.writeUInt32LE(crc32(batch.subarray(data, data + CHUNK)), fill + 12);
      indexCrc = crc32(batch.subarray(fill, data), indexCrc);
      fill += RECORD_BYTES;
      chunksWritten++;
      if (fill === BATCH_BYTES) {
        await flush();
        if (off + CHUNK < ramBytes) report(off + CHUNK);
      }
    }
    await flush();
    if (pending) await pending;
    pending = undefined;

    const header = encodeHeader({
      metadataOffset,
      metadataLength: metaBytes.byteLength,
      imageOffset,
      imageLength: image.byteLength,
      memoryOffset,
      memoryLength: chunksWritten * RECORD_BYTES,
      recordCount: chunksWritten,
      metadataCrc: crc32(metaBytes),
      imageCrc: crc32(image),
      memoryIndexCrc: indexCrc,
    });
    await io(tmp, 'write', () => writeFully(file, header, header.byteLength, 0));
    await io(tmp, 'flush to disk (fsync)', () => file.sync());
    fh = undefined;
    await io(tmp, 'close', () => file.close());
    await io(path, `rename ${tmp} to it`, () => rename(tmp, path));
    await syncDirectory(dirname(path));
    report(ramBytes);
    return { sizeBytes: position, chunksWritten, zeroChunksSkipped };
  } catch (err) {
    if (pending) await pending.catch(ignore);
    if (fh) await fh.close().catch(ignore);
    await rm(tmp, { force: true }).catch(ignore);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

const ACTION_HINT = {
  truncated: 'the file was cut short (an interrupted copy or download, or a full disk): copy it again or take a new snapshot',
  corrupt: 'the file is damaged: copy it again from a good source or take a new snapshot',
} as const;

function truncated(path: string, what: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('SNAPSHOT_TRUNCATED', `snapshot ${path} is truncated: ${what}; ${ACTION_HINT.truncated}`, { path, ...details });
}

function corrupt(path: string, what: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('SNAPSHOT_CORRUPT', `snapshot ${path} is corrupt: ${what}; ${ACTION_HINT.corrupt}`, { path, ...details });
}

function tooLarge(path: string, what: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('SNAPSHOT_TOO_LARGE',
    `snapshot ${path} cannot be opened: ${what}; the file is damaged or was not written by Ferry`, { path, ...details });
}

function hex32(v: number): string {
  return `0x${v.toString(16).padStart(8, '0')}`;
}

/**
 * Parses and checks the fixed header against the file size. Order: magic, version, header length,
 * header crc, chunk size, section size limits, section layout, file size.
 */
async function readHeader(path: string, fh: FileHandle, fileBytes: number): Promise<Header> {
  if (fileBytes === 0) {
    throw new FerryError('SNAPSHOT_NOT_FERRY', `${path} is empty (0 bytes), not a Ferry snapshot`, { path });
  }
  const head = Buffer.alloc(SNAPSHOT_HEADER_BYTES);
  const n = await io(path, 'read', () => readAt(fh, head, Math.min(fileBytes, SNAPSHOT_HEADER_BYTES), 0));
  const magicSeen = Math.min(n, MAGIC_BYTES.byteLength);
  if (!head.subarray(0, magicSeen).equals(MAGIC_BYTES.subarray(0, magicSeen))) {
    throw new FerryError('SNAPSHOT_NOT_FERRY',
      `${path} is not a Ferry snapshot (it does not start with "${SNAPSHOT_MAGIC}"); check the path`, { path });
  }
  if (n < H.version + 4) throw truncated(path, `the file is only ${n} bytes, shorter than the header`, { fileBytes });
  const version = head.readUInt32LE(H.version);
  if (version !== SNAPSHOT_FORMAT_VERSION) {
    const why = version > SNAPSHOT_FORMAT_VERSION
      ? `it was written by a newer Ferry (snapshot format version ${version}); this Ferry reads version ${SNAPSHOT_FORMAT_VERSION}: upgrade Ferry to open it`
      : `it has unknown snapshot format version ${version}; this Ferry reads version ${SNAPSHOT_FORMAT_VERSION}`;
    throw new FerryError('SNAPSHOT_VERSION', `snapshot ${path} cannot be opened: ${why}`, { path, version });
  }
  if (n < H.headerLength + 4) throw truncated(path, `the file is only ${n} bytes, shorter than the header`, { fileBytes });
  const headerLength = head.readUInt32LE(H.headerLength);
  if (headerLength !== SNAPSHOT_HEADER_BYTES) {
    throw corrupt(path, `header length is ${headerLength}, format version 1 has ${SNAPSHOT_HEADER_BYTES}`, { headerLength });
  }
  if (n < SNAPSHOT_HEADER_BYTES) {
    throw truncated(path, `the file is only ${n} bytes, shorter than the ${SNAPSHOT_HEADER_BYTES}-byte header`, { fileBytes });
  }
  const stored = head.readUInt32LE(H.headerCrc);
  const actual = crc32(head.subarray(0, H.headerCrc));
  if (stored !== actual) {
    throw corrupt(path, `header checksum mismatch (stored ${hex32(stored)}, computed ${hex32(actual)})`);
  }
  const chunkBytes = head.readUInt32LE(H.chunkBytes);
  if (chunkBytes !== CHUNK) throw corrupt(path, `chunk size is ${chunkBytes}, format version 1 uses ${CHUNK}`, { chunkBytes });

  const u64 = (at: number): bigint => head.readBigUInt64LE(at);
  const metadataLength = u64(H.metadataLength);
  const imageLength = u64(H.imageLength);
  const recordCount = head.readUInt32LE(H.recordCount);
  if (metadataLength > BigInt(SNAPSHOT_MAX_METADATA_BYTES)) {
    throw tooLarge(path, `its metadata section claims ${metadataLength} bytes, the limit is ${formatBytes(SNAPSHOT_MAX_METADATA_BYTES)}`,
      { metadataLength: metadataLength.toString() });
  }
  if (imageLength > BigInt(MAX_IMAGE_BYTES)) {
    throw tooLarge(path, `its image section claims ${imageLength} bytes, the limit is ${formatBytes(MAX_IMAGE_BYTES)}`,
      { imageLength: imageLength.toString() });
  }
  if (recordCount > MAX_RECORDS) {
    throw tooLarge(path, `it claims ${recordCount} memory records, more than the ${MAX_RECORDS} chunks of the largest VM (${formatBytes(MAX_RAM_BYTES)})`,
      { recordCount });
  }
  // Sections are contiguous and in a fixed order: anything else is damage.
  const expect: [string, bigint, bigint][] = [
    ['metadata offset', u64(H.metadataOffset), BigInt(SNAPSHOT_HEADER_BYTES)],
    ['image offset', u64(H.imageOffset), BigInt(SNAPSHOT_HEADER_BYTES) + metadataLength],
    ['memory offset', u64(H.memoryOffset), BigInt(SNAPSHOT_HEADER_BYTES) + metadataLength + imageLength],
    ['memory length', u64(H.memoryLength), BigInt(recordCount) * BigInt(RECORD_BYTES)],
  ];
  for (const [what, got, want] of expect) {
    if (got !== want) throw corrupt(path, `header ${what} is ${got}, expected ${want}`);
  }
  const h: Header = {
    metadataOffset: SNAPSHOT_HEADER_BYTES,
    metadataLength: Number(metadataLength),
    imageOffset: SNAPSHOT_HEADER_BYTES + Number(metadataLength),
    imageLength: Number(imageLength),
    memoryOffset: SNAPSHOT_HEADER_BYTES + Number(metadataLength) + Number(imageLength),
    memoryLength: recordCount * RECORD_BYTES,
    recordCount,
    metadataCrc: head.readUInt32LE(H.metadataCrc),
    imageCrc: head.readUInt32LE(H.imageCrc),
    memoryIndexCrc: head.readUInt32LE(H.memoryIndexCrc),
  };
  const end = h.memoryOffset + h.memoryLength;
  if (fileBytes < end) {
    let where: string;
    if (fileBytes < h.imageOffset) where = 'the metadata section is cut short';
    else if (fileBytes < h.memoryOffset) where = 'the image section is cut short';
    else where = `memory record ${Math.floor((fileBytes - h.memoryOffset) / RECORD_BYTES)} of ${recordCount} is cut short`;
    throw truncated(path, `the file is ${fileBytes} bytes but its header describes ${end} bytes (${where})`, { fileBytes, expectedBytes: end });
  }
  if (fileBytes > end) {
    throw corrupt(path, `${fileBytes - end} bytes of unexpected data follow the last memory record (the file is ${fileBytes} bytes, its header describes ${end})`,
      { fileBytes, expectedBytes: end });
  }
  return h;
}

async function readSection(path: string, fh: FileHandle, name: string, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  const n = await io(path, 'read', () => readAt(fh, buf, length, offset));
  if (n < length) throw truncated(path, `the ${name} section is cut short (read ${n} of ${length} bytes)`);
  return buf;
}

async function readMetadata(path: string, fh: FileHandle, h: Header): Promise<SnapshotMetadata> {
  const bytes = await readSection(path, fh, 'metadata', h.metadataOffset, h.metadataLength);
  const crc = crc32(bytes);
  if (crc !== h.metadataCrc) {
    throw corrupt(path, `metadata checksum mismatch (stored ${hex32(h.metadataCrc)}, computed ${hex32(crc)})`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw corrupt(path, 'metadata is not valid UTF-8');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw corrupt(path, `metadata is not valid JSON (${errorMessage(err)})`);
  }
  const parsed = parseMetadata(raw);
  if (!parsed.ok) throw corrupt(path, `metadata is invalid: ${parsed.problem}`);
  const ramChunks = parsed.meta.vm.ramBytes / CHUNK;
  if (h.recordCount > ramChunks) {
    throw corrupt(path, `it has ${h.recordCount} memory records but the VM's ${formatBytes(parsed.meta.vm.ramBytes)} of RAM has only ${ramChunks} chunks`,
      { recordCount: h.recordCount, ramChunks });
  }
  return parsed.meta;
}

async function readImage(path: string, fh: FileHandle, h: Header, meta: SnapshotMetadata): Promise<Uint8Array> {
  const image = await readSection(path, fh, 'image', h.imageOffset, h.imageLength);
  const crc = crc32(image);
  if (crc !== h.imageCrc) throw corrupt(path, `image checksum mismatch (stored ${hex32(h.imageCrc)}, computed ${hex32(crc)})`);
  const sha = createHash('sha256').update(image).digest('hex');
  if (sha !== meta.imageSha256) {
    throw corrupt(path, `the embedded image's sha-256 is ${sha} but the metadata records ${meta.imageSha256}`);
  }
  return image;
}

class SnapshotFile implements OpenSnapshot {
  #fh: FileHandle | undefined;
  readonly #path: string;
  readonly #header: Header;

  constructor(path: string, fh: FileHandle, header: Header, readonly meta: SnapshotMetadata, readonly image: Uint8Array) {
    this.#path = path;
    this.#fh = fh;
    this.#header = header;
  }

  async restoreMemory(ram: Uint8Array, mark?: (offset: number, length: number) => void,
    onProgress?: (p: SnapshotProgress) => void): Promise<{ chunksRead: number }> {
    const fh = this.#fh;
    const path = this.#path;
    if (!fh) throw new FerryError('INVALID_ARGUMENT', `snapshot ${path} is closed: open it again to restore its memory`, { path });
    const ramBytes = this.meta.vm.ramBytes;
    if (ram.byteLength !== ramBytes) {
      throw new FerryError('INVALID_ARGUMENT',
        `cannot restore snapshot ${path}: the RAM buffer is ${ram.byteLength} bytes, the snapshot's VM has ${ramBytes}`,
        { path, ramLength: ram.byteLength, ramBytes });
    }
    const { recordCount, memoryOffset } = this.#header;
    const ramBuf = Buffer.from(ram.buffer, ram.byteOffset, ram.byteLength);
    const totalBytes = recordCount * CHUNK;
    const report = progressReporter(totalBytes, onProgress);
    const batchBytes = Math.min(BATCH_BYTES, recordCount * RECORD_BYTES);
    const batchA = Buffer.allocUnsafeSlow(batchBytes);
    const batchB = Buffer.allocUnsafeSlow(batchBytes);

    const readBatch = async (first: number, buf: Buffer): Promise<Buffer> => {
      const length = Math.min(BATCH_RECORDS, recordCount - first) * RECORD_BYTES;
      const n = await io(path, 'read', () => readAt(fh, buf, length, memoryOffset + first * RECORD_BYTES));
      if (n < length) {
        throw truncated(path, `memory record ${first + Math.floor(n / RECORD_BYTES)} of ${recordCount} is cut short (the file shrank after it was opened)`);
      }
      return buf;
    };

    // Double-buffered: batch k+1 is being read while batch k is checked and copied.
    const startRead = (first: number): Promise<Buffer> | undefined => {
      if (first >= recordCount) return undefined;
      const read = readBatch(first, (first / BATCH_RECORDS) % 2 === 0 ? batchA : batchB);
      read.catch(ignore); // awaited below; this only keeps an early failure from being reported as unhandled
      return read;
    };
    let next = startRead(0);
    let indexCrc = 0;
    let previous = -1;
    try {
      for (let first = 0; next !== undefined; first += BATCH_RECORDS) {
        const buf = await next;
        next = startRead(first + BATCH_RECORDS);
        const count = Math.min(BATCH_RECORDS, recordCount - first);
        for (let r = 0; r < count; r++) {
          const p = r * RECORD_BYTES;
          const index = first + r;
          const offset = buf.readBigUInt64LE(p);
          const length = buf.readUInt32LE(p + 8);
          const stored = buf.readUInt32LE(p + 12);
          indexCrc = crc32(buf.subarray(p, p + RECORD_HEADER), indexCrc);
          const where = `memory record ${index} (guest offset ${offset})`;
          if (length !== CHUNK) throw corrupt(path, `${where} has length ${length}, expected ${CHUNK}`, { index });
          if (offset % BigInt(CHUNK) !== 0n) throw corrupt(path, `${where} is not aligned to 64 KiB`, { index });
          if (offset + BigInt(CHUNK) > BigInt(ramBytes)) {
            throw corrupt(path, `${where} lies outside the VM's ${ramBytes} bytes of RAM`, { index });
          }
          const off = Number(offset);
          if (off <= previous) {
            throw corrupt(path, `${where} is out of order (the previous record is at ${previous}; offsets must strictly increase)`, { index });
          }
          const data = buf.subarray(p + RECORD_HEADER, p + RECORD_BYTES);
          const crc = crc32(data);
          if (crc !== stored) {
            throw corrupt(path, `${where} checksum mismatch (stored ${hex32(stored)}, computed ${hex32(crc)})`, { index });
          }
          data.copy(ramBuf, off);
          previous = off;
          mark?.(off, CHUNK);
        }
        const done = (first + count) * CHUNK;
        if (done < totalBytes) report(done);
      }
    } finally {
      // Never leave a read in flight on a handle the caller may close next.
      if (next !== undefined) await next.catch(ignore);
    }
    if (indexCrc !== this.#header.memoryIndexCrc) {
      throw corrupt(path, `memory index checksum mismatch (stored ${hex32(this.#header.memoryIndexCrc)}, computed ${hex32(indexCrc)})`);
    }
    report(totalBytes);
    return { chunksRead: recordCount };
  }

  async close(): Promise<void> {
    const fh = this.#fh;
    this.#fh = undefined;
    if (fh) await io(this.#path, 'close', () => fh.close());
  }
}

/**
 * Opens a snapshot and checks everything but the memory records: header, metadata (schema and
 * bounds), embedded image (crc32 and sha256), section layout and exact file size. The memory is
 * read and verified by restoreMemory. The caller must close() the result.
 */
export async function openSnapshot(path: string): Promise<OpenSnapshot> {
  const fh = await io(path, 'open', () => open(path, 'r'));
  try {
    const stat = await io(path, 'stat', () => fh.stat());
    if (!stat.isFile()) {
      throw new FerryError('SNAPSHOT_NOT_FERRY', `${path} is not a regular file, so not a Ferry snapshot`, { path });
    }
    const header = await readHeader(path, fh, stat.size);
    const meta = await readMetadata(path, fh, header);
    const image = await readImage(path, fh, header, meta);
    return new SnapshotFile(path, fh, header, meta, image);
  } catch (err) {
    await fh.close().catch(ignore);
    throw err;
  }
}
