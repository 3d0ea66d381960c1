/**
 * The 512-byte sparse extent header (VMware's "SparseExtentHeader", little-endian, packed), shared by
 * monolithicSparse and streamOptimized extents. parseHeader() trusts nothing: every field is checked
 * against the limits below (QEMU's block/vmdk.c enforces the same ones, Ferry is stricter where a
 * field has one sane value) before any other code computes an offset from it.
 */
import { FerryError } from '../../lib/errors.js';

export const SECTOR_BYTES = 512;
export const HEADER_BYTES = SECTOR_BYTES;
/** "KDMV" read as a little-endian u32. */
export const VMDK_MAGIC = 0x564d444b;

export const FLAG_NEWLINE_DETECTION = 1 << 0;
export const FLAG_REDUNDANT_GD = 1 << 1;
/** Grain table entry 1 means "a grain of zeros" (version 2 and later only). */
export const FLAG_ZEROED_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;
/** Bits we understand; a disk with any other bit set means something we would misread, so it is refused. */
const KNOWN_FLAGS = FLAG_NEWLINE_DETECTION | FLAG_REDUNDANT_GD | FLAG_ZEROED_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS;

export const COMPRESS_NONE = 0;
export const COMPRESS_DEFLATE = 1;

/** gdOffset all-ones: the grain directory's place is in the footer at the end (streamOptimized). */
export const GD_AT_END = 0xffffffffffffffffn;

/** The 4 bytes a binary-mode transfer keeps and a text-mode (CR-LF) transfer mangles. */
export const NEWLINE_CHECK = Uint8Array.of(0x0a, 0x20, 0x0d, 0x0a);

/** QEMU opens versions 1–3; a later one has fields we do not know. */
export const MAX_VERSION = 3;
/** QEMU refuses more than 512; every VMware and QEMU disk has exactly 512, and Ferry's layout assumes it. */
export const GTES_PER_GT = 512;
export const GTE_BYTES = 4;
/** QEMU's limit on the grain size (1 GiB grains). */
export const MAX_GRAIN_SECTORS = 0x200000;
/** 4 KiB: a smaller grain would make the tables larger than the data they map. */
export const MIN_GRAIN_SECTORS = 8;
/** The grain sizes Ferry reads and creates, as error messages spell it. */
export const GRAIN_SIZE_RULE = `a power of two in ${MIN_GRAIN_SECTORS}..${MAX_GRAIN_SECTORS}`;

/** GRAIN_SIZE_RULE: what parseHeader accepts and SparseExtent.create lays out. */
export function isValidGrainSize(grainSizeSectors: number): boolean {
  return grainSizeSectors >= MIN_GRAIN_SECTORS && grainSizeSectors <= MAX_GRAIN_SECTORS && (grainSizeSectors & (grainSizeSectors - 1)) === 0;
}
/** QEMU's bound on the grain directory (L1): 32 Mi entries, i.e. at most 128 MiB of directory. */
export const MAX_GD_ENTRIES = 32 * 1024 * 1024;
/** QEMU's bound on the descriptor: 1 MiB. */
export const MAX_DESCRIPTOR_SECTORS = (1024 * 1024) / SECTOR_BYTES;
/**
 * 2 TiB: grain table entries are 32-bit sector numbers, so a sparse extent cannot address more
 * (QEMU refuses larger sparse allocations for the same reason).
 */
export const MAX_CAPACITY_SECTORS = 2 ** 32;

export interface SparseHeader {
  readonly version: number;
  readonly flags: number;
  readonly capacitySectors: number;
  readonly grainSizeSectors: number;
  readonly descriptorOffsetSectors: number;
  readonly descriptorSizeSectors: number;
  readonly numGTEsPerGT: number;
  readonly rgdOffsetSectors: number;
  /** GD_AT_END is kept as -1 here (the footer holds the real value). */
  readonly gdOffsetSectors: number;
  readonly overHeadSectors: number;
  readonly uncleanShutdown: boolean;
  readonly compressAlgorithm: number;
}

const bad = (code: 'DISK_NOT_VMDK' | 'DISK_TRUNCATED' | 'DISK_CORRUPT' | 'DISK_UNSUPPORTED' | 'DISK_TOO_LARGE', name: string, msg: string, details: Record<string, unknown> = {}): FerryError =>
  new FerryError(code, `${name}: ${msg}`, details);

/** Sectors a u64 field may hold before number arithmetic on it would lose precision: far above any valid offset. */
const MAX_SAFE_SECTORS = BigInt(Number.MAX_SAFE_INTEGER) / BigInt(SECTOR_BYTES);

function sectorsField(view: DataView, at: number, name: string, field: string, allowAtEnd = false): number {
  const v = view.getBigUint64(at, true);
  if (allowAtEnd && v === GD_AT_END) return -1;
  if (v > MAX_SAFE_SECTORS) throw bad('DISK_CORRUPT', name, `header field ${field} is out of range (${v})`, { field });
  return Number(v);
}

/** Grain directory entries (= grain tables) needed to map `capacitySectors`. */
export function gdEntries(capacitySectors: number, grainSizeSectors: number): number {
  return Math.ceil(capacitySectors / (grainSizeSectors * GTES_PER_GT));
}

/**
 * Parses and validates a header sector. `fileBytes` is the extent file's length (the header must
 * describe a file at least overHead long). Checks that need the footer or the descriptor are the
 * caller's.
 */
export function parseHeader(sector: Uint8Array, fileBytes: number, name: string): SparseHeader {
  if (sector.length < HEADER_BYTES || fileBytes < HEADER_BYTES) throw bad('DISK_TRUNCATED', name, `shorter than a VMDK header (${fileBytes} bytes)`);
  const view = new DataView(sector.buffer, sector.byteOffset, HEADER_BYTES);
  if (view.getUint32(0, true) !== VMDK_MAGIC) throw bad('DISK_NOT_VMDK', name, 'no VMDK sparse extent magic (KDMV)');
  const version = view.getUint32(4, true);
  if (version < 1 || version > MAX_VERSION) throw bad('DISK_UNSUPPORTED', name, `VMDK version ${version} (1..${MAX_VERSION} supported)`, { version });
  const flags = view.getUint32(8, true);
  if ((flags & ~KNOWN_FLAGS) !== 0) throw bad('DISK_UNSUPPORTED', name, `unknown header flags 0x${flags.toString(16)}`, { flags });
  if ((flags & FLAG_ZEROED_GRAIN) !== 0 && version < 2) throw bad('DISK_CORRUPT', name, 'zeroed-grain flag on a version 1 header');
  const capacitySectors = sectorsField(view, 12, name, 'capacity');
  const grainSizeSectors = sectorsField(view, 20, name, 'grainSize');
  const descriptorOffsetSectors = sectorsField(view, 28, name, 'descriptorOffset');
  const descriptorSizeSectors = sectorsField(view, 36, name, 'descriptorSize');
  const numGTEsPerGT = view.getUint32(44, true);
  const rgdOffsetSectors = sectorsField(view, 48, name, 'rgdOffset');
  const gdOffsetSectors = sectorsField(view, 56, name, 'gdOffset', true);
  const overHeadSectors = sectorsField(view, 64, name, 'overHead');
  const uncleanShutdown = view.getUint8(72) !== 0;
  const compressAlgorithm = view.getUint16(77, true);

  if ((flags & FLAG_NEWLINE_DETECTION) !== 0 && !NEWLINE_CHECK.every((b, i) => sector[73 + i] === b)) {
    throw bad('DISK_CORRUPT', name, 'newline check bytes are damaged: the file went through a text-mode (CR-LF) transfer');
  }
  if (numGTEsPerGT !== GTES_PER_GT) throw bad('DISK_UNSUPPORTED', name, `${numGTEsPerGT} entries per grain table (only ${GTES_PER_GT})`, { numGTEsPerGT });
  if (!isValidGrainSize(grainSizeSectors)) throw bad('DISK_UNSUPPORTED', name, `grain size ${grainSizeSectors} sectors (${GRAIN_SIZE_RULE})`, { grainSizeSectors });
  if (capacitySectors === 0) throw bad('DISK_CORRUPT', name, 'capacity 0');
  if (capacitySectors > MAX_CAPACITY_SECTORS) throw bad('DISK_TOO_LARGE', name, `capacity ${capacitySectors} sectors is above 2 TiB`, { capacitySectors });
  if (gdEntries(capacitySectors, grainSizeSectors) > MAX_GD_ENTRIES) throw bad('DISK_TOO_LARGE', name, 'grain directory above 32 Mi entries');
  if (descriptorSizeSectors > MAX_DESCRIPTOR_SECTORS) throw bad('DISK_TOO_LARGE', name, `descriptor of ${descriptorSizeSectors} sectors (at most ${MAX_DESCRIPTOR_SECTORS})`, { descriptorSizeSectors });
  if (descriptorSizeSectors === 0 || descriptorOffsetSectors === 0) throw bad('DISK_UNSUPPORTED', name, 'no embedded descriptor (a separate descriptor file is not supported)');
  if (descriptorOffsetSectors + descriptorSizeSectors > overHeadSectors) throw bad('DISK_CORRUPT', name, 'descriptor lies outside the metadata area');
  if (overHeadSectors * SECTOR_BYTES > fileBytes) throw bad('DISK_TRUNCATED', name, `file of ${fileBytes} bytes is shorter than its overHead (${overHeadSectors} sectors)`);
  const compressed = (flags & FLAG_COMPRESSED) !== 0;
  if (compressed ? compressAlgorithm !== COMPRESS_DEFLATE : compressAlgorithm !== COMPRESS_NONE) {
    throw bad('DISK_UNSUPPORTED', name, `compression algorithm ${compressAlgorithm} with compressed flag ${compressed}`, { compressAlgorithm });
  }
  return {
    version, flags, capacitySectors, grainSizeSectors, descriptorOffsetSectors, descriptorSizeSectors, numGTEsPerGT,
    rgdOffsetSectors, gdOffsetSectors, overHeadSectors, uncleanShutdown, compressAlgorithm,
  };
}

export function encodeHeader(h: SparseHeader): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES);
  const view = new DataView(out.buffer);
  view.setUint32(0, VMDK_MAGIC, true);
  view.setUint32(4, h.version, true);
  view.setUint32(8, h.flags, true);
  view.setBigUint64(12, BigInt(h.capacitySectors), true);
  view.setBigUint64(20, BigInt(h.grainSizeSectors), true);
  view.setBigUint64(28, BigInt(h.descriptorOffsetSectors), true);
  view.setBigUint64(36, BigInt(h.descriptorSizeSectors), true);
  view.setUint32(44, h.numGTEsPerGT, true);
  view.setBigUint64(48, BigInt(h.rgdOffsetSectors), true);
  view.setBigUint64(56, h.gdOffsetSectors < 0 ? GD_AT_END : BigInt(h.gdOffsetSectors), true);
  view.setBigUint64(64, BigInt(h.overHeadSectors), true);
  view.setUint8(72, h.uncleanShutdown ? 1 : 0);
  out.set(NEWLINE_CHECK, 73);
  view.setUint16(77, h.compressAlgorithm, true);
  return out;
}
