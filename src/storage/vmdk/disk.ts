/**
 * A VMDK disk as a guest sees it: one extent (monolithicSparse or streamOptimized) and, for a delta,
 * its parent chain. Byte-addressed reads and writes of any offset and length; a grain the extent does
 * not hold reads from the parent, or as zeros at the bottom of the chain; writing part of such a
 * grain copies the whole grain up from the parent first.
 *
 * Content IDs (the contract cross-site migration relies on): a disk's CID changes on its first write
 * after open and never on a read-only open; a delta records its parent's CID as parentCID, and a
 * chain whose parent's CID no longer equals it is refused at open (DISK_CHAIN_MISMATCH) — the parent
 * was written after the delta was made, so the delta's grains sit over content that is gone.
 *
 * Parents are opened read-only through an `openParent` callback the datastore provides: no disk code
 * opens a path itself. The disk owns every file of its chain: close() closes them all. open() and
 * create() own the file they are given from the call on: on failure the file is closed, so a caller
 * has nothing to clean up but what it made itself (a created path to remove).
 *
 * Concurrency and ordering (./io-order.ts). Operations run concurrently: reads, and writes into
 * grains the disk already holds, go to the file at once, with many in flight. What must not
 * interleave is serialized where it happens, in the extent: choosing the sector of a new grain, the
 * CID renewal of the first write, a flush's table writes (./sparse-extent.ts). The guarantees the
 * rest of the code relies on:
 *  - per byte, operations run in the order they were issued: a read waits for the writes that
 *    overlap it issued before it (so a read issued after a write sees it — what the changed-block
 *    contract of ../changed-blocks.ts needs: a copier that takes the set and then reads gets the
 *    new data or finds the block marked again), and a write waits for the reads and writes it
 *    overlaps issued before it (the last write issued wins; a read never sees a later write);
 *  - every write issued before a flush is durable when the flush resolves (flushes run one at a time);
 *  - crash consistency is the extent's: grain data durable before the table entry that points to it,
 *    the redundant table copy before the primary one;
 *  - check(), allocatedBytes(), forEachAllocatedRange() (and `serial` in general) run alone.
 */
import { posix } from 'node:path';
import { FerryError } from '../../lib/errors.js';
import { MAX_CHAIN_DEPTH } from '../../lib/limits.js';
import type { BlockFile } from '../block-file.js';
import { type CreateType, CID_NO_PARENT, formatCid } from './descriptor.js';
import type { GrainExtent } from './extent.js';
import { FLAG_COMPRESSED, HEADER_BYTES, parseHeader } from './header.js';
import { type CreateSparseOptions, type GrainBase, SparseExtent } from './sparse-extent.js';
import { StreamOptimizedExtent } from './stream-optimized.js';
import { type IoKind, IoOrder } from './io-order.js';

export { MAX_CHAIN_DEPTH };

/**
 * Opens a parent read-only. `hint` is the child's parentFileNameHint verbatim, `childName` the
 * child's BlockFile name: the datastore resolves the hint relative to the child's directory.
 */
export type OpenParent = (hint: string, childName: string) => Promise<BlockFile>;

export interface OpenDiskOptions {
  /** Needed when the disk is a delta; a delta opened without one is refused. */
  readonly openParent?: OpenParent;
  /**
   * Open a delta (read-only) without its parent chain: only the grains it holds itself can be read,
   * anything else is refused. What finishing an interrupted consolidate needs, when the parent was
   * already written and the chain no longer opens (its CID check fails by design).
   */
  readonly withoutParent?: boolean;
}

export interface DiskInfo {
  readonly name: string;
  readonly createType: CreateType;
  readonly capacityBytes: number;
  readonly grainSizeBytes: number;
  /** 8 hex digits, as in the descriptor. */
  readonly cid: string;
  readonly parentCid: string;
  readonly parentFileNameHint?: string;
  /** This disk first, its base last. */
  readonly chain: readonly string[];
}

export interface CreateDiskOptions {
  readonly capacityBytes: number;
  readonly grainSizeSectors?: number;
}

export class VmdkDisk {
  /** Runs operations concurrently, in issue order wherever they overlap (see the header). */
  private readonly order = new IoOrder();
  private closed = false;

  /** `detached`: a delta opened withoutParent (reads below its own grains are refused, not zeros). */
  private constructor(private readonly extent: GrainExtent, readonly parent: VmdkDisk | undefined, private readonly detached = false) {}

  get name(): string { return this.extent.name; }
  get capacityBytes(): number { return this.extent.capacityBytes; }
  get cid(): number { return this.extent.descriptor.cid; }
  get parentCid(): number { return this.extent.descriptor.parentCid; }

  /** A new monolithicSparse disk with no parent on an empty file; on failure the file is closed. */
  static async create(file: BlockFile, opts: CreateDiskOptions): Promise<VmdkDisk> {
    const sparse = sparseOptions(file, opts.capacityBytes, opts.grainSizeSectors);
    return closeOnFailure([file], async () => new VmdkDisk(await SparseExtent.create(file, sparse), undefined));
  }

  /**
   * A new delta over `parent` (same capacity and grain size, parentCID = the parent's CID now).
   * `parentHint` is written as parentFileNameHint: the parent's path relative to the delta's directory.
   * The delta takes ownership of `parent`. Unlike open and create, a failure leaves `file` and
   * `parent` open: the caller still has both, and the file to remove.
   */
  static async createDelta(parent: VmdkDisk, file: BlockFile, parentHint: string): Promise<VmdkDisk> {
    const opts: CreateSparseOptions = {
      ...sparseOptions(file, parent.capacityBytes, parent.extent.header.grainSizeSectors),
      parent: { cid: parent.cid, fileNameHint: parentHint },
    };
    return new VmdkDisk(await SparseExtent.create(file, opts), parent);
  }

  /**
   * Opens a disk and its chain; everything is checked before the first byte is served. On failure
   * the file is closed, and so is every parent opened on the way.
   */
  static async open(file: BlockFile, opts: OpenDiskOptions = {}): Promise<VmdkDisk> {
    if (opts.withoutParent === true) return closeOnFailure([file], () => VmdkDisk.openDetached(file));
    // openChain adds each parent it opens, so that a failure further down closes it too.
    const opened: BlockFile[] = [file];
    return closeOnFailure(opened, () => VmdkDisk.openChain(file, opts, [], opened));
  }

  private static async openDetached(file: BlockFile): Promise<VmdkDisk> {
    if (!file.readOnly) throw new FerryError('INVALID_ARGUMENT', `${file.name}: a delta opened without its parent must be opened read-only`);
    const extent = await openExtent(file);
    return new VmdkDisk(extent, undefined, extent.descriptor.parentCid !== CID_NO_PARENT);
  }

  private static async openChain(file: BlockFile, opts: OpenDiskOptions, seen: string[], opened: BlockFile[]): Promise<VmdkDisk> {
    if (seen.includes(file.name)) throw new FerryError('DISK_CHAIN_INVALID', `parent chain loops back to ${file.name}`, { chain: [...seen, file.name] });
    if (seen.length >= MAX_CHAIN_DEPTH) throw new FerryError('DISK_CHAIN_INVALID', `parent chain deeper than ${MAX_CHAIN_DEPTH}`, { chain: seen });
    const extent = await openExtent(file);
    const desc = extent.descriptor;
    if (desc.parentCid === CID_NO_PARENT) {
      if (desc.parentFileNameHint !== undefined) throw new FerryError('DISK_CHAIN_INVALID', `${file.name}: a parentFileNameHint without a parentCID`);
      return new VmdkDisk(extent, undefined);
    }
    if (desc.parentFileNameHint === undefined) throw new FerryError('DISK_CHAIN_INVALID', `${file.name}: parentCID ${formatCid(desc.parentCid)} without a parentFileNameHint`);
    if (opts.openParent === undefined) throw new FerryError('DISK_CHAIN_INVALID', `${file.name} is a delta and no way to open its parent was given`);
    const parentFile = await opts.openParent(desc.parentFileNameHint, file.name);
    opened.push(parentFile);
    if (!parentFile.readOnly) throw new FerryError('INVALID_ARGUMENT', `${parentFile.name}: a parent must be opened read-only`);
    const parent = await VmdkDisk.openChain(parentFile, opts, [...seen, file.name], opened);
    if (parent.cid !== desc.parentCid) {
      throw new FerryError('DISK_CHAIN_MISMATCH',
        `${file.name}: its parent ${parentFile.name} was modified since the delta was made (parent CID ${formatCid(parent.cid)}, expected ${formatCid(desc.parentCid)})`,
        { child: file.name, parent: parentFile.name, parentCid: formatCid(parent.cid), expected: formatCid(desc.parentCid) });
    }
    if (parent.capacityBytes !== extent.capacityBytes) {
      throw new FerryError('DISK_CHAIN_MISMATCH', `${file.name}: capacity ${extent.capacityBytes} differs from its parent's (${parent.capacityBytes})`);
    }
    return new VmdkDisk(extent, parent);
  }

  info(): DiskInfo {
    const chain: string[] = [this.name];
    for (let d = this.parent; d !== undefined; d = d.parent) chain.push(d.name);
    const desc = this.extent.descriptor;
    return {
      name: this.name, createType: desc.createType, capacityBytes: this.capacityBytes, grainSizeBytes: this.extent.grainBytes,
      cid: formatCid(desc.cid), parentCid: formatCid(desc.parentCid),
      ...(desc.parentFileNameHint !== undefined ? { parentFileNameHint: desc.parentFileNameHint } : {}),
      chain,
    };
  }

  /** Reads and checks everything of every disk in the chain that open did not (what `ferry disk check` runs). */
  async check(): Promise<void> {
    await this.parent?.check();
    await this.serial(() => this.extent.check());
  }

  /** Bytes of grains this disk itself holds (not its parents). */
  allocatedBytes(): Promise<number> {
    return this.serial(() => this.extent.allocatedBytes());
  }

  /**
   * Calls `fn(offsetBytes, lengthBytes)` for every grain that any disk of the chain holds: what a
   * copy of the chain's content must read (everything else reads as zeros). Ranges may repeat
   * (a grain held at two levels) and are clipped to the capacity.
   */
  async forEachAllocatedRange(fn: (offsetBytes: number, lengthBytes: number) => void): Promise<void> {
    await this.parent?.forEachAllocatedRange(fn);
    await this.forEachOwnAllocatedRange(fn);
  }

  /**
   * Calls `fn` for every grain the top `levels` disks of the chain hold themselves (this one first):
   * what a copy above a base that is already there must read. `levels` ≥ 1; more than the chain has
   * is the whole chain.
   */
  async forEachAllocatedRangeInTop(levels: number, fn: (offsetBytes: number, lengthBytes: number) => void): Promise<void> {
    if (!Number.isInteger(levels) || levels < 1) throw new FerryError('INVALID_ARGUMENT', `levels must be a positive integer, not ${levels}`);
    await this.forEachOwnAllocatedRange(fn);
    if (levels > 1) await this.parent?.forEachAllocatedRangeInTop(levels - 1, fn);
  }

  /**
   * Calls `fn(offsetBytes, lengthBytes)` for every grain this disk holds itself (not its parents),
   * ascending, clipped to the capacity: what a consolidate merges into the parent.
   */
  async forEachOwnAllocatedRange(fn: (offsetBytes: number, lengthBytes: number) => void): Promise<void> {
    const grainBytes = this.extent.grainBytes;
    await this.serial(() => this.extent.forEachAllocatedGrain((g) => {
      const at = g * grainBytes;
      if (at < this.capacityBytes) fn(at, Math.min(grainBytes, this.capacityBytes - at));
    }));
  }

  async read(offsetBytes: number, buf: Uint8Array): Promise<void> {
    this.checkRange(offsetBytes, buf.length);
    return this.ordered('read', offsetBytes, buf.length, () => this.readNow(offsetBytes, buf));
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.checkRange(offsetBytes, data.length);
    const extent = this.extent;
    if (!(extent instanceof SparseExtent) || !extent.writable) throw new FerryError('DISK_READ_ONLY', `${this.name} is read-only`);
    return this.ordered('write', offsetBytes, data.length, async () => {
      const grainBytes = extent.grainBytes;
      const base: GrainBase = { holdsData: (g) => this.belowHoldsData(g), fill: (g, grain) => this.readBelow(g * grainBytes, grain) };
      await eachGrain(offsetBytes, data.length, grainBytes, (grainIndex, inGrain, from, to) =>
        extent.writeGrain(grainIndex, inGrain, data.subarray(from, to), base));
    });
  }

  /** Every write issued before this call is durable when it resolves. */
  flush(): Promise<void> {
    const extent = this.extent;
    return this.order.run('flush', 0, 0, async () => { if (extent instanceof SparseExtent) await extent.flush(); });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.order.idle();
    this.closed = true;
    await this.extent.close();
    await this.parent?.close();
  }

  private async readNow(offsetBytes: number, buf: Uint8Array): Promise<void> {
    await eachGrain(offsetBytes, buf.length, this.extent.grainBytes, async (grainIndex, inGrain, from, to) => {
      const part = buf.subarray(from, to);
      if (!(await this.extent.readGrain(grainIndex, inGrain, part))) await this.readBelow(offsetBytes + from, part);
    });
  }

  /**
   * Whether a disk below this one holds data (not zeros) anywhere in this disk's grain `grainIndex`:
   * table lookups only. A parent's grains may be of another size, so its grains over the range count.
   */
  private async belowHoldsData(grainIndex: number): Promise<boolean> {
    const from = grainIndex * this.extent.grainBytes;
    const to = Math.min(from + this.extent.grainBytes, this.capacityBytes);
    return this.parent?.holdsData(from, to) ?? false;
  }

  /** Whether this disk's chain holds data in [fromBytes, toBytes) — the first level that has a grain answers for it. */
  private async holdsData(fromBytes: number, toBytes: number): Promise<boolean> {
    const grainBytes = this.extent.grainBytes;
    for (let g = Math.floor(fromBytes / grainBytes); g * grainBytes < toBytes; g++) {
      const state = await this.extent.grainState(g);
      if (state === 'data') return true;
      if (state === 'absent' && this.parent !== undefined) {
        if (await this.parent.holdsData(Math.max(fromBytes, g * grainBytes), Math.min(toBytes, (g + 1) * grainBytes))) return true;
      }
    }
    return false;
  }

  /** What the chain below this disk shows at `offsetBytes` (zeros past the parent's end, or with no parent). */
  private async readBelow(offsetBytes: number, buf: Uint8Array): Promise<void> {
    if (this.detached) {
      throw new FerryError('DISK_CHAIN_INVALID', `${this.name} was opened without its parent: ${buf.length} bytes at ${offsetBytes} are not held by this delta`);
    }
    const parent = this.parent;
    const inParent = parent === undefined ? 0 : Math.max(0, Math.min(buf.length, parent.capacityBytes - offsetBytes));
    if (parent !== undefined && inParent > 0) await parent.readNow(offsetBytes, buf.subarray(0, inParent));
    buf.fill(0, inParent);
  }

  private checkRange(offsetBytes: number, length: number): void {
    if (this.closed) throw new FerryError('STORE_IO', `${this.name} is closed`);
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || offsetBytes + length > this.capacityBytes) {
      throw new FerryError('DISK_OUT_OF_RANGE', `${this.name}: ${length} bytes at ${offsetBytes} are outside the disk (${this.capacityBytes} bytes)`);
    }
  }

  /** Runs `op` alone: after every operation issued before it, and before every one issued after. */
  private serial<T>(op: () => Promise<T>): Promise<T> {
    return this.order.run('exclusive', 0, 0, op);
  }

  /** Runs a read or write of [offsetBytes, offsetBytes + length) in issue order with those it overlaps. */
  private ordered<T>(kind: IoKind, offsetBytes: number, length: number, op: () => Promise<T>): Promise<T> {
    return this.order.run(kind, offsetBytes, offsetBytes + length, op);
  }
}

/** Splits [offsetBytes, offsetBytes + length) at grain boundaries; `from`/`to` index the caller's buffer. */
async function eachGrain(offsetBytes: number, length: number, grainBytes: number,
  fn: (grainIndex: number, offsetInGrainBytes: number, from: number, to: number) => Promise<void>): Promise<void> {
  let done = 0;
  while (done < length) {
    const at = offsetBytes + done;
    const inGrain = at % grainBytes;
    const n = Math.min(grainBytes - inGrain, length - done);
    await fn(Math.floor(at / grainBytes), inGrain, done, done + n);
    done += n;
  }
}

/**
 * Runs `op`; if it fails, closes `files` (as they stand then) and rethrows. A close error is
 * dropped: the failure is what the caller needs to see, and the file is unusable either way.
 */
async function closeOnFailure<T>(files: readonly BlockFile[], op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (err) {
    for (const f of files) await f.close().catch(() => undefined);
    throw err;
  }
}

function sparseOptions(file: BlockFile, capacityBytes: number, grainSizeSectors: number | undefined): CreateSparseOptions {
  return {
    capacityBytes, fileName: posix.basename(file.name.replace(/^.*:/, '')),
    ...(grainSizeSectors !== undefined ? { grainSizeSectors } : {}),
  };
}

async function openExtent(file: BlockFile): Promise<GrainExtent> {
  const fileBytes = await file.size();
  const sector = new Uint8Array(HEADER_BYTES);
  await file.read(0, sector);
  const header = parseHeader(sector, fileBytes, file.name);
  if ((header.flags & FLAG_COMPRESSED) !== 0) {
    if (!file.readOnly) throw new FerryError('DISK_READ_ONLY', `${file.name}: a streamOptimized disk is read-only in Ferry (import it into a sparse disk to write)`);
    return StreamOptimizedExtent.open(file, header, fileBytes);
  }
  return SparseExtent.open(file, header, fileBytes);
}
