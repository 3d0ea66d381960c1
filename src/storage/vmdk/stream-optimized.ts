/**
 * streamOptimized extents (what VMware exports in OVAs and `qemu-img convert -o
 * subformat=streamOptimized` writes): every grain is deflate-compressed (zlib stream) behind a grain
 * marker {lba u64, size u32}; the grain directory is either at the front (qemu) or, with gdOffset
 * all-ones, named by a footer — a footer marker, a copy of the header, an end-of-stream marker — in
 * the last three sectors (VMware). Ferry reads them (read-only) and imports them into a sparse disk.
 */
import { inflateSync } from 'node:zlib';
import { FerryError } from '../../lib/errors.js';
import type { BlockFile } from '../block-file.js';
import { readDescriptor, type Descriptor } from './descriptor.js';
import type { GrainExtent, GrainState } from './extent.js';
import { GrainTables } from './grain-tables.js';
import { type SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, HEADER_BYTES, SECTOR_BYTES, gdEntries, parseHeader } from './header.js';

export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;
/** lba (u64) + size (u32): the bytes before a grain's compressed data. */
export const GRAIN_MARKER_BYTES = 12;
/** Footer marker + footer header + end-of-stream marker. */
export const FOOTER_BYTES = 3 * SECTOR_BYTES;
/** QEMU's bound: a compressed grain (incompressible data plus zlib framing) is at most two grains long. */
export const MAX_COMPRESSED_GRAINS = 2;

/** The header that holds the directory's place: the one at the front, or the footer's when gdOffset is all-ones. */
export async function streamHeader(file: BlockFile, front: SparseHeader, fileBytes: number): Promise<SparseHeader> {
  if (front.gdOffsetSectors >= 0) return front;
  const name = file.name;
  if (fileBytes < front.overHeadSectors * SECTOR_BYTES + FOOTER_BYTES) throw new FerryError('DISK_TRUNCATED', `${name}: no room for a footer`);
  const tail = new Uint8Array(FOOTER_BYTES);
  const tailAt = Math.floor(fileBytes / SECTOR_BYTES) * SECTOR_BYTES - FOOTER_BYTES;
  await file.read(tailAt, tail);
  const view = new DataView(tail.buffer);
  const footerType = view.getUint32(12, true);
  const eosType = view.getUint32(2 * SECTOR_BYTES + 12, true);
  if (view.getUint32(8, true) !== 0 || footerType !== MARKER_FOOTER || eosType !== MARKER_EOS || view.getBigUint64(2 * SECTOR_BYTES, true) !== 0n) {
    throw new FerryError('DISK_CORRUPT', `${name}: gdOffset says "in the footer" but there is no footer and end-of-stream marker`);
  }
  const footer = parseHeader(tail.subarray(SECTOR_BYTES, SECTOR_BYTES + HEADER_BYTES), fileBytes, name);
  if (footer.gdOffsetSectors < 0) throw new FerryError('DISK_CORRUPT', `${name}: the footer does not place the grain directory`);
  if (footer.capacitySectors !== front.capacitySectors || footer.grainSizeSectors !== front.grainSizeSectors || footer.flags !== front.flags) {
    throw new FerryError('DISK_CORRUPT', `${name}: the footer and the header disagree`);
  }
  return footer;
}

export class StreamOptimizedExtent implements GrainExtent {
  readonly grainBytes: number;
  readonly capacityBytes: number;
  /** The last grain inflated: reads of one grain in pieces inflate it once. */
  private lastGrain: { index: number; data: Uint8Array } | undefined;

  private constructor(
    private readonly file: BlockFile,
    readonly header: SparseHeader,
    readonly descriptor: Descriptor,
    private readonly tables: GrainTables,
    private readonly fileBytes: number,
  ) {
    this.grainBytes = header.grainSizeSectors * SECTOR_BYTES;
    this.capacityBytes = header.capacitySectors * SECTOR_BYTES;
  }

  get name(): string { return this.file.name; }

  static async open(file: BlockFile, front: SparseHeader, fileBytes: number): Promise<StreamOptimizedExtent> {
    const name = file.name;
    if ((front.flags & FLAG_COMPRESSED) === 0 || (front.flags & FLAG_MARKERS) === 0) {
      throw new FerryError('DISK_UNSUPPORTED', `${name}: streamOptimized without compressed grains and markers`);
    }
    const header = await streamHeader(file, front, fileBytes);
    // The descriptor is where the front header says (streamHeader made sure a footer agrees on the capacity).
    const descriptor = await readDescriptor(file, front, 'streamOptimized');
    if (descriptor.parentCid !== 0xffffffff) throw new FerryError('DISK_UNSUPPORTED', `${name}: a streamOptimized disk with a parent`);
    const fileSectors = Math.floor(fileBytes / SECTOR_BYTES);
    const tables = await GrainTables.load(file, {
      name,
      gdOffsetSectors: header.gdOffsetSectors,
      gdEntries: gdEntries(header.capacitySectors, header.grainSizeSectors),
      // Tables may follow the grains (VMware writes them at the end): anywhere after the descriptor.
      tableRange: { loSectors: header.descriptorOffsetSectors + header.descriptorSizeSectors, hiSectors: fileSectors },
      checkEntry: (entry, grainIndex) => {
        if (entry < header.overHeadSectors || entry >= fileSectors) {
          throw new FerryError('DISK_CORRUPT', `${name}: grain ${grainIndex} points at sector ${entry}, outside the grain area`, { grainIndex, entry });
        }
      },
    });
    return new StreamOptimizedExtent(file, header, descriptor, tables, fileBytes);
  }

  async readGrain(grainIndex: number, offsetInGrainBytes: number, buf: Uint8Array): Promise<boolean> {
    const grain = await this.inflateGrain(grainIndex);
    if (grain === undefined) return false;
    buf.set(grain.subarray(offsetInGrainBytes, offsetInGrainBytes + buf.length));
    return true;
  }

  async grainState(grainIndex: number): Promise<GrainState> {
    return (await this.tables.entry(grainIndex)) === 0 ? 'absent' : 'data';
  }

  async check(): Promise<void> {
    const grains = Math.ceil(this.header.capacitySectors / this.header.grainSizeSectors);
    for (let g = 0; g < grains; g++) await this.inflateGrain(g);
  }

  async allocatedBytes(): Promise<number> {
    return this.grainBytes * await this.tables.count((e) => e !== 0);
  }

  forEachAllocatedGrain(fn: (grainIndex: number) => void): Promise<void> {
    return this.tables.forEachGrain((e) => e !== 0, fn);
  }

  async close(): Promise<void> {
    await this.file.close();
  }

  private async inflateGrain(grainIndex: number): Promise<Uint8Array | undefined> {
    if (this.lastGrain?.index === grainIndex) return this.lastGrain.data;
    const entry = await this.tables.entry(grainIndex);
    if (entry === 0) return undefined;
    const name = this.name;
    const at = entry * SECTOR_BYTES;
    const marker = new Uint8Array(GRAIN_MARKER_BYTES);
    await this.file.read(at, marker);
    const view = new DataView(marker.buffer);
    const lba = view.getBigUint64(0, true);
    const size = view.getUint32(8, true);
    if (lba !== BigInt(grainIndex) * BigInt(this.header.grainSizeSectors)) {
      throw new FerryError('DISK_CORRUPT', `${name}: grain ${grainIndex}'s marker is for sector ${lba}`, { grainIndex });
    }
    if (size === 0 || size > MAX_COMPRESSED_GRAINS * this.grainBytes || at + GRAIN_MARKER_BYTES + size > this.fileBytes) {
      throw new FerryError('DISK_CORRUPT', `${name}: grain ${grainIndex} has a compressed size of ${size} bytes`, { grainIndex, size });
    }
    const compressed = new Uint8Array(size);
    await this.file.read(at + GRAIN_MARKER_BYTES, compressed);
    let raw: Buffer;
    try {
      // Bounded: a grain never inflates past its size, whatever the stream claims (a zip bomb stops here).
      raw = inflateSync(compressed, { maxOutputLength: this.grainBytes });
    } catch {
      throw new FerryError('DISK_CORRUPT', `${name}: grain ${grainIndex} does not inflate to at most one grain`, { grainIndex });
    }
    const data = new Uint8Array(this.grainBytes); // a short last grain reads as zeros past its end
    data.set(raw);
    this.lastGrain = { index: grainIndex, data };
    return data;
  }
}
