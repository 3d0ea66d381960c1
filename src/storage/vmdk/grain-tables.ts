/**
 * The two-level grain map of a sparse extent: the grain directory (GD) names the sector of each grain
 * table (GT); a GT's 512 entries name the sector of each grain. The GD is read and checked whole at
 * open; a GT is read when first needed and every one of its entries is checked before any is used,
 * so a hostile entry can never steer a read or a write. Entry updates are held in memory until
 * writeDirty(), which the extent calls only after the grains they point to are durable.
 */
import { FerryError } from '../../lib/errors.js';
import type { BlockFile } from '../block-file.js';
import { GTE_BYTES, GTES_PER_GT, SECTOR_BYTES } from './header.js';

export const GT_BYTES = GTES_PER_GT * GTE_BYTES;
export const GT_SECTORS = GT_BYTES / SECTOR_BYTES;
/**
 * Clean grain tables kept in memory (2 KiB each: 8 MiB maps 2 TiB of 64 KiB grains at 1/256 — enough
 * for the working set of a VM; a miss costs one 2 KiB read).
 */
export const MAX_CACHED_GTS = 4096;
/**
 * Disks with at most this many tables (2 MiB of them: 32 GiB of 64 KiB grains) have every table read
 * and checked at open, so a bad entry is refused before the disk is used; larger ones have each
 * table checked whole when first read (before any of its entries is used) and by checkAll().
 */
export const EAGER_CHECK_MAX_GTS = 1024;
/** Tables read at once by a walk over all of them (512 KiB per read). */
export const WALK_BATCH_GTS = 256;

/** Where a grain table may lie, in sectors: [loSectors, hiSectors). */
export interface SectorRange { readonly loSectors: number; readonly hiSectors: number }

export interface GrainTablesOptions {
  readonly name: string;
  readonly gdOffsetSectors: number;
  /** The redundant copy, kept in step on every update (writable extents with the redundant flag). */
  readonly rgdOffsetSectors?: number;
  readonly gdEntries: number;
  /** Where the GD itself and every GT must lie (metadata area, or the whole file for streamOptimized). */
  readonly tableRange: SectorRange;
  /** Throws a FerryError for an entry that may not be used (outside the file, inside metadata, …). */
  readonly checkEntry: (entry: number, grainIndex: number) => void;
}

export const gdSectors = (gdEntries: number): number => Math.ceil((gdEntries * GTE_BYTES) / SECTOR_BYTES);

function corrupt(name: string, msg: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('DISK_CORRUPT', `${name}: ${msg}`, details);
}

async function readU32s(file: BlockFile, offsetSectors: number, count: number): Promise<Uint32Array> {
  const bytes = new Uint8Array(count * GTE_BYTES);
  await file.read(offsetSectors * SECTOR_BYTES, bytes);
  const view = new DataView(bytes.buffer);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getUint32(i * GTE_BYTES, true);
  return out;
}

/**
 * Safe under concurrent callers (VmdkDisk runs reads and writes concurrently): a table is read from
 * the file once however many misses wait for it (two reads racing would let the second replace a
 * table the first had already changed); a table with unwritten changes, or whose changes a flush
 * is writing, is never evicted (only clean tables are: they equal the file, so one that a caller
 * still holds is never stale); writeDirty writes the sectors as they were when it started.
 */
export class GrainTables {
  private readonly cache = new Map<number, Uint32Array>();
  /** GT index → the indices of its sectors that hold entries not yet written. */
  private dirty = new Map<number, Set<number>>();
  /** Tables being read from the file: every miss on one of them waits for the same read. */
  private readonly loading = new Map<number, Promise<Uint32Array | undefined>>();
  /** GT index → writeDirty calls writing its sectors now: pinned in the cache until they finish. */
  private readonly pinned = new Map<number, number>();

  private constructor(
    private readonly file: BlockFile,
    private readonly opts: GrainTablesOptions,
    private readonly gd: Uint32Array,
    private readonly rgd: Uint32Array | undefined,
  ) {}

  static async load(file: BlockFile, opts: GrainTablesOptions): Promise<GrainTables> {
    const gdLen = gdSectors(opts.gdEntries);
    const checkDirectory = (offsetSectors: number, what: string): void => {
      if (offsetSectors < opts.tableRange.loSectors || offsetSectors + gdLen > opts.tableRange.hiSectors) {
        throw corrupt(opts.name, `${what} at sector ${offsetSectors} lies outside the metadata area`, { offsetSectors });
      }
    };
    checkDirectory(opts.gdOffsetSectors, 'grain directory');
    const gd = await readU32s(file, opts.gdOffsetSectors, opts.gdEntries);
    let rgd: Uint32Array | undefined;
    if (opts.rgdOffsetSectors !== undefined) {
      checkDirectory(opts.rgdOffsetSectors, 'redundant grain directory');
      rgd = await readU32s(file, opts.rgdOffsetSectors, opts.gdEntries);
    }
    const checkGt = (dir: Uint32Array, what: string): void => {
      for (let i = 0; i < dir.length; i++) {
        const s = dir[i] as number;
        if (s === 0) continue; // no table: every grain it would map is unallocated
        if (s < opts.tableRange.loSectors || s + GT_SECTORS > opts.tableRange.hiSectors) {
          throw corrupt(opts.name, `${what} entry ${i} points at sector ${s}, outside the metadata area`, { gdIndex: i, sector: s });
        }
      }
    };
    checkGt(gd, 'grain directory');
    if (rgd !== undefined) {
      checkGt(rgd, 'redundant grain directory');
      for (let i = 0; i < gd.length; i++) {
        if ((gd[i] === 0) !== (rgd[i] === 0)) throw corrupt(opts.name, `grain directories disagree at entry ${i}`);
      }
    }
    const tables = new GrainTables(file, opts, gd, rgd);
    if (gd.length <= EAGER_CHECK_MAX_GTS) await tables.checkAll();
    return tables;
  }


  /** Entries for which `pred` holds, over every table (absent tables hold none). */
  async count(pred: (entry: number) => boolean): Promise<number> {
    let n = 0;
    await this.forEachTable((gt) => { for (const e of gt) if (pred(e)) n++; });
    return n;
  }

  /** Calls `fn` with the index of every grain whose entry satisfies `pred`, ascending. */
  async forEachGrain(pred: (entry: number) => boolean, fn: (grainIndex: number) => void): Promise<void> {
    await this.forEachTable((gt, gtIndex) => {
      for (let i = 0; i < gt.length; i++) if (pred(gt[i] as number)) fn(gtIndex * GTES_PER_GT + i);
    });
  }

  /**
   * Visits every table, each checked whole. Tables not in the cache are read in runs of up to
   * WALK_BATCH_GTS that lie back to back (as every layout has them) and are not cached: a walk of a
   * 2 TiB disk is 256 reads of 512 KiB, not 65536 of 2 KiB, and does not evict the working set.
   */
  private async forEachTable(fn: (gt: Uint32Array, gtIndex: number) => void): Promise<void> {
    const gd = this.gd;
    for (let i = 0; i < gd.length;) {
      const cached = this.cache.get(i);
      if (cached !== undefined || gd[i] === 0) {
        if (cached !== undefined) fn(cached, i);
        i++;
        continue;
      }
      let run = 1;
      while (run < WALK_BATCH_GTS && i + run < gd.length && !this.cache.has(i + run) && gd[i + run] === (gd[i] as number) + run * GT_SECTORS) run++;
      const all = await readU32s(this.file, gd[i] as number, run * GTES_PER_GT);
      for (let k = 0; k < run; k++) {
        const gt = all.subarray(k * GTES_PER_GT, (k + 1) * GTES_PER_GT);
        this.checkTable(i + k, gt);
        fn(gt, i + k);
      }
      i += run;
    }
  }

  /**
   * Refuses two entries whose grains overlap (a write through one would show through the other).
   * `isData` says which entries name grains (not 0, not the zero-grain marker).
   */
  async checkNoOverlap(grainSectors: number, isData: (entry: number) => boolean): Promise<void> {
    const starts: number[] = [];
    await this.forEachTable((gt) => { for (const e of gt) if (isData(e)) starts.push(e); });
    const sorted = Float64Array.from(starts).sort();
    for (let i = 1; i < sorted.length; i++) {
      if ((sorted[i] as number) - (sorted[i - 1] as number) < grainSectors) {
        throw corrupt(this.opts.name, `two grain-table entries share the grain at sector ${sorted[i]}`, { sector: sorted[i] });
      }
    }
  }

  get checkedAtLoad(): boolean { return this.gd.length <= EAGER_CHECK_MAX_GTS; }

  /** Reads and checks every grain table. */
  async checkAll(): Promise<void> {
    for (let i = 0; i < this.gd.length; i++) await this.table(i);
  }

  /** The entry of a grain (0 = unallocated) — from a table checked whole when it was read. */
  async entry(grainIndex: number): Promise<number> {
    const gt = await this.table(Math.floor(grainIndex / GTES_PER_GT));
    return gt === undefined ? 0 : (gt[grainIndex % GTES_PER_GT] as number);
  }

  /** Sets an entry in memory; it reaches the file (both copies) at the next writeDirty(). */
  async setEntry(grainIndex: number, value: number): Promise<void> {
    const gtIndex = Math.floor(grainIndex / GTES_PER_GT);
    const loaded = await this.table(gtIndex);
    if (loaded === undefined) {
      throw new FerryError('DISK_UNSUPPORTED', `${this.opts.name}: grain ${grainIndex} has no grain table (Ferry writes only disks whose tables are all allocated, as qemu-img and VMware make them)`);
    }
    // Evicted while this waited (it was clean: the file holds what it held)? Then it goes back in,
    // and the entry is set in the copy the cache holds, which writeDirty writes.
    let gt = this.cache.get(gtIndex);
    if (gt === undefined) { gt = loaded; this.cache.set(gtIndex, gt); }
    gt[grainIndex % GTES_PER_GT] = value;
    this.markDirty(gtIndex, Math.floor(((grainIndex % GTES_PER_GT) * GTE_BYTES) / SECTOR_BYTES));
  }

  get hasDirty(): boolean { return this.dirty.size > 0; }

  /**
   * Takes the changed table sectors as they are now, runs `first` (the fsync that makes every grain
   * they point to durable: each entry was set after its grain's write resolved), then writes them to
   * the redundant copy and then to the primary one. Entries set meanwhile stay changed for the next
   * call; if `first` or a write fails, the taken sectors are changed again. Callers run one at a
   * time (a flush after another must not resolve before the other's table writes). False when
   * nothing had changed (`first` still ran).
   */
  async writeDirty(first: () => Promise<void>): Promise<boolean> {
    const taken = this.dirty;
    this.dirty = new Map();
    const writes: { gtIndex: number; sector: number; bytes: Uint8Array }[] = [];
    for (const [gtIndex, sectors] of taken) {
      const gt = this.cache.get(gtIndex) as Uint32Array;
      this.pinned.set(gtIndex, (this.pinned.get(gtIndex) ?? 0) + 1);
      for (const sector of sectors) writes.push({ gtIndex, sector, bytes: encodeSector(gt, sector) });
    }
    try {
      await first();
      if (this.rgd !== undefined) await this.writeRuns(writes, this.rgd);
      await this.writeRuns(writes, this.gd);
    } catch (err) {
      for (const [gtIndex, sectors] of taken) for (const sector of sectors) this.markDirty(gtIndex, sector);
      throw err;
    } finally {
      for (const gtIndex of taken.keys()) {
        const n = (this.pinned.get(gtIndex) ?? 1) - 1;
        if (n === 0) this.pinned.delete(gtIndex); else this.pinned.set(gtIndex, n);
      }
    }
    return writes.length > 0;
  }

  /**
   * Writes the taken sectors into the copy of the tables that `dir` places, each run of sectors
   * that lie back to back in the file in one write (tables are laid out contiguously, so the
   * sectors a flush changed are often neighbours), all runs at once.
   */
  private async writeRuns(writes: readonly { gtIndex: number; sector: number; bytes: Uint8Array }[], dir: Uint32Array): Promise<void> {
    const placed = writes.map((w) => ({ at: (dir[w.gtIndex] as number) + w.sector, bytes: w.bytes })).sort((a, b) => a.at - b.at);
    const runs: { at: number; parts: Uint8Array[] }[] = [];
    for (const p of placed) {
      const last = runs[runs.length - 1];
      if (last !== undefined && last.at + last.parts.length === p.at) last.parts.push(p.bytes);
      else runs.push({ at: p.at, parts: [p.bytes] });
    }
    await Promise.all(runs.map((r) => this.file.write(r.at * SECTOR_BYTES, r.parts.length === 1 ? r.parts[0] as Uint8Array : Buffer.concat(r.parts))));
  }

  private markDirty(gtIndex: number, sector: number): void {
    let set = this.dirty.get(gtIndex);
    if (set === undefined) this.dirty.set(gtIndex, (set = new Set()));
    set.add(sector);
  }

  private checkTable(gtIndex: number, gt: Uint32Array): void {
    for (let i = 0; i < GTES_PER_GT; i++) {
      const e = gt[i] as number;
      if (e !== 0) this.opts.checkEntry(e, gtIndex * GTES_PER_GT + i);
    }
  }

  private async table(gtIndex: number): Promise<Uint32Array | undefined> {
    const cached = this.cache.get(gtIndex);
    if (cached !== undefined) return cached;
    let loading = this.loading.get(gtIndex);
    if (loading === undefined) {
      loading = this.load(gtIndex).finally(() => { this.loading.delete(gtIndex); });
      this.loading.set(gtIndex, loading);
    }
    return loading;
  }

  private async load(gtIndex: number): Promise<Uint32Array | undefined> {
    const sector = this.gd[gtIndex];
    if (sector === undefined) throw new FerryError('DISK_OUT_OF_RANGE', `${this.opts.name}: grain table ${gtIndex} is beyond the directory`);
    if (sector === 0) return undefined;
    const gt = await readU32s(this.file, sector, GTES_PER_GT);
    this.checkTable(gtIndex, gt);
    if (this.cache.size >= MAX_CACHED_GTS) {
      for (const k of this.cache.keys()) {
        if (!this.dirty.has(k) && !this.pinned.has(k)) { this.cache.delete(k); break; }
      }
    }
    this.cache.set(gtIndex, gt);
    return gt;
  }
}

/** Sector `sector` of table `gt`, as it lies in the file. */
function encodeSector(gt: Uint32Array, sector: number): Uint8Array {
  const bytes = new Uint8Array(SECTOR_BYTES);
  const view = new DataView(bytes.buffer);
  const perSector = SECTOR_BYTES / GTE_BYTES;
  for (let i = 0; i < perSector; i++) view.setUint32(i * GTE_BYTES, gt[sector * perSector + i] as number, true);
  return bytes;
}
