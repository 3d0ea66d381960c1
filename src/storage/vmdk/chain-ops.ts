/**
 * Delta chains on a datastore: open a disk's chain (each parent hint resolved against its own
 * child's directory), name the next delta of a disk, create a delta over any level, describe the
 * chain level by level. The building blocks of snapshot, revert and consolidate
 * (docs/design/disk-snapshots.md); the orchestration around a VM is src/host/disk-snapshots.ts.
 *
 * Deltas are named VMware-like after the disk they continue: `<stem>-000001.vmdk`,
 * `<stem>-000002.vmdk`, … in that disk's directory, where the stem is the disk's name without
 * `.vmdk` and without a sequence suffix. A new name is one past the highest sequence number in the
 * directory, and the file is created with O_EXCL, so a name is never reused while a file has it —
 * an orphan left by a crash keeps its number, and the next snapshot takes the one after.
 */
import { posix } from 'node:path';
import { FerryError, isFerryError } from '../../lib/errors.js';
import type { BlockFile } from '../block-file.js';
import { DATASTORE_ROOT, type Datastore, type DatastoreFile } from '../datastore.js';
import { VmdkDisk, type OpenParent } from './disk.js';

/** Digits of a delta's sequence number (VMware's `-000001` form). */
export const DELTA_SEQUENCE_DIGITS = 6;
export const MAX_DELTA_SEQUENCE = 10 ** DELTA_SEQUENCE_DIGITS - 1;
/** Names tried past the listed highest when one is taken meanwhile (another creator, a listing cut short). */
export const MAX_DELTA_NAME_ATTEMPTS = 16;

const VMDK_EXTENSION = '.vmdk';

/** The directory of a datastore path, as list() takes it (the root is ''). */
export function dirOf(path: string): string {
  const dir = posix.dirname(path);
  return dir === '.' ? DATASTORE_ROOT : dir;
}

/** A parent hint is relative to its child's directory (docs/disk-format.md). */
export function resolveHint(childPath: string, hint: string): string {
  return posix.join(posix.dirname(childPath), hint);
}

/** The hint a delta at `deltaPath` records for its parent at `parentPath`. */
export function hintFor(deltaPath: string, parentPath: string): string {
  return posix.relative(posix.dirname(deltaPath), parentPath);
}

/** Parents of a delta are opened read-only relative to the directory of the child that names them. */
export function parentOpener(ds: Datastore, topPath: string): OpenParent {
  const paths = new Map<string, string>();
  return async (hint, childName) => {
    // Deeper children are files this opener opened; any other child is the top.
    const childPath = paths.get(childName) ?? topPath;
    const path = resolveHint(childPath, hint);
    const file = await ds.open(path, { readOnly: true });
    paths.set(file.name, path);
    return file;
  };
}

/** Opens the chain whose top is `path` (for writing unless readOnly: the top's lease is taken). The file is closed if the open fails. */
export async function openDatastoreChain(ds: Datastore, path: string, opts: { readOnly?: boolean } = {}): Promise<VmdkDisk> {
  const file = await ds.open(path, opts.readOnly === true ? { readOnly: true } : {});
  return openOnFile(file, (f) => VmdkDisk.open(f, { openParent: parentOpener(ds, path) }));
}

/** Opens a delta read-only without its parent: only its own grains can be read (consolidate's recovery). */
export async function openDeltaAlone(ds: Datastore, path: string): Promise<VmdkDisk> {
  const file = await ds.open(path, { readOnly: true });
  return openOnFile(file, (f) => VmdkDisk.open(f, { withoutParent: true }));
}

async function openOnFile(file: DatastoreFile, open: (f: BlockFile) => Promise<VmdkDisk>): Promise<VmdkDisk> {
  try {
    return await open(file);
  } catch (err) {
    await file.close().catch(() => undefined);
    throw err;
  }
}

/** The datastore path of every level of `disk`'s chain, top first (`topPath` is where the top was opened). */
export function chainPaths(disk: VmdkDisk, topPath: string): string[] {
  const out = [topPath];
  let path = topPath;
  for (let d: VmdkDisk | undefined = disk; d?.parent !== undefined; d = d.parent) {
    const hint = d.info().parentFileNameHint;
    if (hint === undefined) break;
    path = resolveHint(path, hint);
    out.push(path);
  }
  return out;
}

export interface ChainLevel {
  readonly path: string;
  readonly cid: string;
  readonly parentCid: string;
  readonly parentFileNameHint?: string;
  /** Bytes of grains this level holds itself. */
  readonly allocatedBytes: number;
}

/** Every level of the chain, top first, base last. */
export async function describeChain(disk: VmdkDisk, topPath: string): Promise<ChainLevel[]> {
  const paths = chainPaths(disk, topPath);
  const out: ChainLevel[] = [];
  let i = 0;
  for (let d: VmdkDisk | undefined = disk; d !== undefined; d = d.parent, i++) {
    const info = d.info();
    out.push({
      path: paths[i] ?? info.name, cid: info.cid, parentCid: info.parentCid,
      ...(info.parentFileNameHint !== undefined ? { parentFileNameHint: info.parentFileNameHint } : {}),
      allocatedBytes: await d.allocatedBytes(),
    });
  }
  return out;
}

/** `dir/kv-000003.vmdk` → `kv`: the name deltas of this disk are numbered after. */
export function deltaStem(path: string): string {
  const base = posix.basename(path);
  const noExt = base.toLowerCase().endsWith(VMDK_EXTENSION) ? base.slice(0, -VMDK_EXTENSION.length) : base;
  return noExt.replace(new RegExp(`-\\d{${DELTA_SEQUENCE_DIGITS}}$`), '');
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The highest delta sequence number of `stem` in `dir` (0 if none). */
async function highestSequence(ds: Datastore, dir: string, stem: string): Promise<number> {
  const re = new RegExp(`^${escapeRegExp(stem)}-(\\d{${DELTA_SEQUENCE_DIGITS}})${escapeRegExp(VMDK_EXTENSION)}$`, 'i');
  let highest = 0;
  for (const e of (await ds.list(dir)).entries) {
    const m = re.exec(e.name);
    if (m?.[1] !== undefined) highest = Math.max(highest, Number(m[1]));
  }
  return highest;
}

function sequenceName(dir: string, stem: string, n: number): string {
  if (n > MAX_DELTA_SEQUENCE) throw new FerryError('CAPACITY', `no delta name left for ${stem} in ${dir === '' ? 'the datastore root' : dir} (sequence numbers end at ${MAX_DELTA_SEQUENCE})`);
  return posix.join(dir, `${stem}-${String(n).padStart(DELTA_SEQUENCE_DIGITS, '0')}${VMDK_EXTENSION}`);
}

/**
 * Creates a new, empty delta over the chain whose top is `parentPath` (opened read-only: its CID
 * does not change), named as the next delta of `namedAfter` in its directory. Returns the delta —
 * which owns the parent chain — and its path. Nothing is left behind if it fails.
 */
export async function createDeltaOver(ds: Datastore, parentPath: string, namedAfter: string): Promise<{ disk: VmdkDisk; path: string }> {
  const dir = dirOf(namedAfter);
  const stem = deltaStem(namedAfter);
  const parent = await openDatastoreChain(ds, parentPath, { readOnly: true });
  let created: { file: DatastoreFile; path: string } | null = null;
  try {
    const first = (await highestSequence(ds, dir, stem)) + 1;
    for (let n = first; created === null; n++) {
      const path = sequenceName(dir, stem, n);
      try {
        created = { file: await ds.open(path, { create: true }), path };
      } catch (err) {
        if (!isFerryError(err, 'ALREADY_EXISTS') || n - first + 1 >= MAX_DELTA_NAME_ATTEMPTS) throw err;
      }
    }
    const disk = await VmdkDisk.createDelta(parent, created.file, hintFor(created.path, parentPath));
    return { disk, path: created.path };
  } catch (err) {
    await parent.close().catch(() => undefined);
    if (created !== null) {
      await created.file.close().catch(() => undefined);
      await ds.remove(created.path).catch(() => undefined);
    }
    throw err;
  }
}

/**
 * Creates a new, empty delta at exactly `path` (O_EXCL: never over an existing file) over the chain
 * whose top is `parentPath` (read-only: its CID does not change), its parent hint relative to `path`.
 * The delta is then opened again from its file like any chain (for writing: its lease is taken), so
 * the parent's CID is checked against the one the delta recorded — the check every later open makes.
 * Nothing is left behind if it fails.
 */
export async function createDeltaAt(ds: Datastore, parentPath: string, path: string): Promise<VmdkDisk> {
  const parent = await openDatastoreChain(ds, parentPath, { readOnly: true });
  let file: DatastoreFile;
  try {
    file = await ds.open(path, { create: true });
  } catch (err) {
    await parent.close().catch(() => undefined);
    throw err;
  }
  try {
    const delta = await VmdkDisk.createDelta(parent, file, hintFor(path, parentPath));
    await delta.close();
    return await openDatastoreChain(ds, path);
  } catch (err) {
    await parent.close().catch(() => undefined);
    await file.close().catch(() => undefined);
    await ds.remove(path).catch(() => undefined);
    throw err;
  }
}

/** Removes a file; one that is already gone is fine (a crash may have removed it before). */
export async function removeIfPresent(ds: Datastore, path: string): Promise<void> {
  try {
    await ds.remove(path);
  } catch (err) {
    if (!isFerryError(err, 'NOT_FOUND')) throw err;
  }
}
