/**
 * A monolithicSparse extent on a BlockFile: create (laid out like `qemu-img create -f vmdk`), open
 * (header, descriptor and directories checked), grain reads and writes, flush.
 *
 * Crash consistency — the order of every write:
 *  1. the first write after open rewrites the descriptor with a new CID and flushes it, before any data;
 *  2. a write into an allocated grain overwrites it in place; a write into an unallocated grain
 *     appends a new grain at the end of the file — copied up from the parent and written whole, or,
 *     when nothing below holds the grain, the file extended over it and only the data written (the
 *     rest is a hole: zeros) — and records its entry in memory only, once that write resolved;
 *  3. flush() takes the changed grain-table sectors, makes the data durable (fsync), only then
 *     writes the sectors it took (the redundant copy, then the primary) and fsyncs again. The
 *     directories never change: every table is allocated at create, as qemu-img and VMware do.
 * So a table entry on disk never points at a grain that is not durable, and a kill at any point
 * leaves either the old entry (the grain is leaked, which is harmless) or the new one.
 *
 * Concurrency: writes may run at once, into one grain too (VmdkDisk keeps only overlapping bytes
 * apart, and runs one flush at a time): the new grain's sector is reserved before any await, two
 * writes into one grain not yet here take turns (the first allocates, the other then writes in
 * place), every first write waits for the one CID renewal, the file is extended without ever being
 * shortened, and a flush writes only entries whose grains had been written when it took them.
 */
import { FerryError } from '../../lib/errors.js';
import type { BlockFile } from '../block-file.js';
import { type Descriptor, CID_NO_PARENT, defaultDdb, encodeDescriptor, newCid, readDescriptor } from './descriptor.js';
import type { GrainExtent, GrainState } from './extent.js';
import { GT_SECTORS, GrainTables, gdSectors } from './grain-tables.js';
import {
  type SparseHeader, COMPRESS_NONE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_DETECTION, FLAG_REDUNDANT_GD, FLAG_ZEROED_GRAIN,
  GRAIN_SIZE_RULE, GTES_PER_GT, MAX_CAPACITY_SECTORS, SECTOR_BYTES, encodeHeader, gdEntries, isValidGrainSize,
} from './header.js';

/** 64 KiB, qemu-img's default: small enough for cheap copy-up, large enough for small tables. */
export const DEFAULT_GRAIN_SECTORS = 128;
/** Where qemu-img and VMware put the embedded descriptor, and how large (10 KiB). */
export const DESCRIPTOR_OFFSET_SECTORS = 1;
export const DESCRIPTOR_SIZE_SECTORS = 20;
/** Grain table entry meaning "a grain of zeros" when the header has FLAG_ZEROED_GRAIN. */
export const GTE_ZERO_GRAIN = 1;

export interface CreateSparseOptions {
  readonly capacityBytes: number;
  readonly grainSizeSectors?: number;
  /** The file name written in the extent line (the extent is this file: a base name, as qemu-img writes). */
  readonly fileName: string;
  readonly parent?: { readonly cid: number; readonly fileNameHint: string };
}

/** What the disk shows below this extent (the parent chain, or zeros): what a new grain starts from. */
export interface GrainBase {
  /** Whether anything below holds data for the grain (false: it reads as zeros there). Table lookups only. */
  holdsData(grainIndex: number): Promise<boolean>;
  /** Fills a whole grain buffer with what the disk shows there before this extent has it. */
  fill(grainIndex: number, grain: Uint8Array): Promise<void>;
}

export class SparseExtent implements GrainExtent {
  readonly grainBytes: number;
  readonly capacityBytes: number;
  private cidWritten = false;
  /** The CID renewal in progress: concurrent first writes all wait for the one renewal. */
  private cidRenewal: Promise<void> | null = null;
  private nextFreeSector: number;
  /**
   * Grains being allocated now → the allocation: a write into the same grain (VmdkDisk runs writes
   * of disjoint bytes of one grain at once) waits for it and then writes in place, so one grain is
   * never allocated twice.
   */
  private readonly allocating = new Map<number, Promise<void>>();
  /**
   * How far the file is known to reach. A new grain written only in part (nothing below it to copy
   * up) is first covered by extending the file, so its entry never points past the end of the file.
   */
  private coveredBytes: number;
  /** The file extension in progress: one truncate covers every grain reserved when it started. */
  private extending: Promise<void> | null = null;

  private constructor(
    private readonly file: BlockFile,
    readonly header: SparseHeader,
    private desc: Descriptor,
    private readonly tables: GrainTables,
    fileBytes: number,
  ) {
    this.grainBytes = header.grainSizeSectors * SECTOR_BYTES;
    this.capacityBytes = header.capacitySectors * SECTOR_BYTES;
    this.nextFreeSector = Math.max(header.overHeadSectors, Math.ceil(fileBytes / SECTOR_BYTES));
    this.coveredBytes = fileBytes;
  }

  get name(): string { return this.file.name; }
  get descriptor(): Descriptor { return this.desc; }
  get writable(): boolean { return !this.file.readOnly; }

  static async create(file: BlockFile, opts: CreateSparseOptions): Promise<SparseExtent> {
    const grainSizeSectors = opts.grainSizeSectors ?? DEFAULT_GRAIN_SECTORS;
    if (!Number.isSafeInteger(opts.capacityBytes) || opts.capacityBytes <= 0 || opts.capacityBytes % SECTOR_BYTES !== 0) {
      throw new FerryError('INVALID_SIZE', `disk capacity ${opts.capacityBytes} bytes is not a positive multiple of ${SECTOR_BYTES}`);
    }
    const capacitySectors = opts.capacityBytes / SECTOR_BYTES;
    if (capacitySectors > MAX_CAPACITY_SECTORS) throw new FerryError('DISK_TOO_LARGE', `disk capacity ${opts.capacityBytes} bytes is above 2 TiB`);
    if (!isValidGrainSize(grainSizeSectors)) throw new FerryError('INVALID_SIZE', `grain size ${grainSizeSectors} sectors is not ${GRAIN_SIZE_RULE}`);
    const entries = gdEntries(capacitySectors, grainSizeSectors);
    const gdLen = gdSectors(entries);
    const rgdOffsetSectors = DESCRIPTOR_OFFSET_SECTORS + DESCRIPTOR_SIZE_SECTORS;
    const gdOffsetSectors = rgdOffsetSectors + gdLen + entries * GT_SECTORS;
    const metadataEnd = gdOffsetSectors + gdLen + entries * GT_SECTORS;
    // The first grain starts on a grain boundary, as qemu-img lays it out.
    const overHeadSectors = Math.ceil(metadataEnd / grainSizeSectors) * grainSizeSectors;
    const header: SparseHeader = {
      version: 1, flags: FLAG_NEWLINE_DETECTION | FLAG_REDUNDANT_GD, capacitySectors, grainSizeSectors,
      descriptorOffsetSectors: DESCRIPTOR_OFFSET_SECTORS, descriptorSizeSectors: DESCRIPTOR_SIZE_SECTORS,
      numGTEsPerGT: GTES_PER_GT, rgdOffsetSectors, gdOffsetSectors, overHeadSectors, uncleanShutdown: false,
      compressAlgorithm: COMPRESS_NONE,
    };
    const desc: Descriptor = {
      cid: newCid(), parentCid: opts.parent?.cid ?? CID_NO_PARENT, createType: 'monolithicSparse',
      ...(opts.parent !== undefined ? { parentFileNameHint: opts.parent.fileNameHint } : {}),
      extent: { access: 'RW', sectors: capacitySectors, fileName: opts.fileName },
      ddb: defaultDdb(capacitySectors),
    };
    const descBytes = encodeDescriptor(desc, DESCRIPTOR_SIZE_SECTORS * SECTOR_BYTES); // refuses unsafe names before anything is written
    await file.truncate(overHeadSectors * SECTOR_BYTES);
    await file.write(0, encodeHeader(header));
    await file.write(DESCRIPTOR_OFFSET_SECTORS * SECTOR_BYTES, descBytes);
    for (const gdAt of [rgdOffsetSectors, gdOffsetSectors]) {
      const dir = new Uint8Array(gdLen * SECTOR_BYTES);
      const view = new DataView(dir.buffer);
      for (let i = 0; i < entries; i++) view.setUint32(i * 4, gdAt + gdLen + i * GT_SECTORS, true);
      await file.write(gdAt * SECTOR_BYTES, dir);
    }
    await file.flush();
    const extent = await SparseExtent.open(file, header, overHeadSectors * SECTOR_BYTES);
    extent.cidWritten = true; // a new disk's CID is already fresh
    return extent;
  }

  /** Opens a monolithicSparse extent whose header has been parsed (and checked) by the caller. */
  static async open(file: BlockFile, header: SparseHeader, fileBytes: number): Promise<SparseExtent> {
    const name = file.name;
    if ((header.flags & (FLAG_COMPRESSED | FLAG_MARKERS)) !== 0 || header.gdOffsetSectors < 0) {
      throw new FerryError('DISK_CORRUPT', `${name}: compressed grains or markers in a monolithicSparse header`);
    }
    const desc = await readDescriptor(file, header, 'monolithicSparse');
    const fileSectors = Math.floor(fileBytes / SECTOR_BYTES);
    const zeroGrain = (header.flags & FLAG_ZEROED_GRAIN) !== 0;
    const grainSectors = header.grainSizeSectors;
    const redundant = (header.flags & FLAG_REDUNDANT_GD) !== 0;
    const tables = await GrainTables.load(file, {
      name,
      gdOffsetSectors: header.gdOffsetSectors,
      ...(redundant ? { rgdOffsetSectors: header.rgdOffsetSectors } : {}),
      gdEntries: gdEntries(header.capacitySectors, grainSectors),
      // Tables live between the descriptor and the first grain, never over the header or the descriptor.
      tableRange: { loSectors: header.descriptorOffsetSectors + header.descriptorSizeSectors, hiSectors: header.overHeadSectors },
      checkEntry: (entry, grainIndex) => {
        if (entry === GTE_ZERO_GRAIN && zeroGrain) return;
        if (entry < header.overHeadSectors) {
          throw new FerryError('DISK_CORRUPT', `${name}: grain ${grainIndex} points into the metadata (sector ${entry})`, { grainIndex, entry });
        }
        if (entry + grainSectors > fileSectors) {
          throw new FerryError('DISK_CORRUPT', `${name}: grain ${grainIndex} points outside the file (sector ${entry} of ${fileSectors})`, { grainIndex, entry });
        }
      },
    });
    const extent = new SparseExtent(file, header, desc, tables, fileBytes);
    if (tables.checkedAtLoad) await extent.checkGrains();
    return extent;
  }

  /** Reads every grain table and refuses overlapping grains (done at open for disks whose tables are all read then). */
  check(): Promise<void> {
    return this.checkGrains();
  }

  private async checkGrains(): Promise<void> {
    await this.tables.checkNoOverlap(this.header.grainSizeSectors, (e) => this.holdsData(e));
  }

  /** Entry 1 is "a grain of zeros" only with the zeroed-grain flag (otherwise open refused it). */
  private isZeroEntry(entry: number): boolean {
    return entry === GTE_ZERO_GRAIN && (this.header.flags & FLAG_ZEROED_GRAIN) !== 0;
  }

  private holdsData(entry: number): boolean {
    return entry !== 0 && !this.isZeroEntry(entry);
  }

  async grainState(grainIndex: number): Promise<GrainState> {
    const e = await this.tables.entry(grainIndex);
    return e === 0 ? 'absent' : this.isZeroEntry(e) ? 'zeros' : 'data';
  }

  async readGrain(grainIndex: number, offsetInGrainBytes: number, buf: Uint8Array): Promise<boolean> {
    const e = await this.tables.entry(grainIndex);
    if (e === 0) return false;
    if (this.isZeroEntry(e)) { buf.fill(0); return true; }
    await this.file.read(e * SECTOR_BYTES + offsetInGrainBytes, buf);
    return true;
  }

  /**
   * Writes `data` at `offsetInGrainBytes` of grain `grainIndex`. A grain not yet here is appended
   * (see allocate: copied up from `base` when it holds data); its entry is written at flush().
   */
  async writeGrain(grainIndex: number, offsetInGrainBytes: number, data: Uint8Array, base: GrainBase): Promise<void> {
    if (!this.writable) throw new FerryError('DISK_READ_ONLY', `${this.name} is open read-only`);
    await this.renewCid();
    let zero: boolean;
    for (;;) {
      const e = await this.tables.entry(grainIndex);
      zero = this.isZeroEntry(e);
      if (e !== 0 && !zero) {
        await this.file.write(e * SECTOR_BYTES + offsetInGrainBytes, data);
        return;
      }
      const other = this.allocating.get(grainIndex);
      if (other === undefined) break;
      await other.catch(() => undefined); // its failure is its own; then this one allocates
    }
    // No await between the check above and this: the map is how the next write of the grain knows.
    const allocation = this.allocate(grainIndex, zero, offsetInGrainBytes, data, base);
    this.allocating.set(grainIndex, allocation);
    try {
      await allocation;
    } finally {
      if (this.allocating.get(grainIndex) === allocation) this.allocating.delete(grainIndex);
    }
  }

  /**
   * Writes `data` into a new grain for grain `grainIndex`, which holds no data here (`zero`: its
   * entry says "zeros", so nothing below shows), and records the entry in memory. Three ways:
   *  - `data` is the whole grain: written as it is;
   *  - nothing below holds data (no parent, a parent without the grain, or a zero entry): the file is
   *    extended over the grain and only `data` is written — the rest is a hole of the sparse file,
   *    which reads as zeros (a 4 KiB write costs 4 KiB, not a 64 KiB grain of mostly zeros);
   *  - otherwise the grain is copied up from below and written whole.
   */
  private async allocate(grainIndex: number, zero: boolean, offsetInGrainBytes: number, data: Uint8Array, base: GrainBase): Promise<void> {
    // Reserved before any await: concurrent allocations get distinct sectors.
    const at = this.nextFreeSector;
    this.nextFreeSector += this.header.grainSizeSectors;
    const atBytes = at * SECTOR_BYTES;
    const endBytes = atBytes + this.grainBytes;
    if (offsetInGrainBytes === 0 && data.length === this.grainBytes) {
      await this.writeGrainAt(atBytes, data);
    } else if (zero || !(await base.holdsData(grainIndex))) {
      await this.coverFile(endBytes);
      await this.file.write(atBytes + offsetInGrainBytes, data);
    } else {
      const grain = new Uint8Array(this.grainBytes);
      await base.fill(grainIndex, grain);
      grain.set(data, offsetInGrainBytes);
      await this.writeGrainAt(atBytes, grain);
    }
    // Only once the grain's write resolved: a flush that takes this entry fsyncs after taking it.
    await this.tables.setEntry(grainIndex, at);
  }

  /**
   * Writes a whole new grain, which extends the file by itself. Not while an extension runs: that
   * truncate was sized before this grain was reserved and would cut the grain off if it landed after
   * this write. (A truncate started later is sized to every grain reserved by then, this one included.)
   */
  private async writeGrainAt(atBytes: number, grain: Uint8Array): Promise<void> {
    if (this.extending !== null) await this.extending.catch(() => undefined);
    await this.file.write(atBytes, grain);
    this.coveredBytes = Math.max(this.coveredBytes, atBytes + grain.length);
  }

  /**
   * Resolves once the file reaches at least `endBytes`. Concurrent callers share one truncate, to
   * the end of every grain reserved when it starts: it never shortens the file, since no grain
   * reserved later is written until it finished (writeGrainAt waits for it, this loops).
   */
  private async coverFile(endBytes: number): Promise<void> {
    while (this.coveredBytes < endBytes) {
      if (this.extending === null) {
        const target = this.nextFreeSector * SECTOR_BYTES;
        this.extending = this.file.truncate(target)
          .then(() => { this.coveredBytes = Math.max(this.coveredBytes, target); })
          .finally(() => { this.extending = null; });
      }
      await this.extending;
    }
  }

  /**
   * Every write that resolved before this call is durable, and the tables that point to new grains
   * too (in that order). One at a time (VmdkDisk orders flushes); writes may run meanwhile.
   */
  async flush(): Promise<void> {
    if (!this.writable) return;
    // The changed table sectors are taken before the fsync, so every grain they point to is durable
    // before they are written; grains allocated meanwhile wait for the next flush.
    if (await this.tables.writeDirty(() => this.file.flush())) await this.file.flush();
  }

  async allocatedBytes(): Promise<number> {
    return this.grainBytes * await this.tables.count((e) => this.holdsData(e));
  }

  /** A zero grain counts: it hides the parent's grain, so a copy must carry it. */
  forEachAllocatedGrain(fn: (grainIndex: number) => void): Promise<void> {
    return this.tables.forEachGrain((e) => e !== 0, fn);
  }

  async close(): Promise<void> {
    await this.file.close();
  }

  /** The CID rule: the first write after open gives the disk a new content ID, durable before the data. */
  private renewCid(): Promise<void> {
    if (this.cidWritten) return Promise.resolve();
    // Cleared when done: after a failure the next write tries again.
    this.cidRenewal ??= this.writeNewCid().finally(() => { this.cidRenewal = null; });
    return this.cidRenewal;
  }

  private async writeNewCid(): Promise<void> {
    const next: Descriptor = { ...this.desc, cid: newCid(this.desc.cid) };
    const bytes = encodeDescriptor(next, this.header.descriptorSizeSectors * SECTOR_BYTES);
    await this.file.write(this.header.descriptorOffsetSectors * SECTOR_BYTES, bytes);
    await this.file.flush();
    this.desc = next;
    this.cidWritten = true;
  }
}
