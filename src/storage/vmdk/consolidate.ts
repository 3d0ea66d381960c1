/**
 * Consolidate: merge a delta's own grains into its parent, so the chain is one level shorter and
 * the guest-visible content is unchanged (docs/design/disk-snapshots.md has the steps and the
 * crash-safety argument of each).
 *
 * The hazard is the CID rule itself: the first write into the parent gives it a new CID, and from
 * then on the delta's chain is refused at open (DISK_CHAIN_MISMATCH) — correctly, for any other
 * writer. So before the parent is touched a journal `<delta>.consolidate.json` is made durable
 * next to the delta (written under a temporary name, then renamed into place), and opening a chain
 * for writing (`recoverChain`) finishes what a journal names: it copies the delta's grains into the
 * parent again (idempotent: the parent only ever receives the delta's own content) and reports the
 * parent as the chain's top. The content of "delta over parent" is the same at every step, because
 * only grains the delta holds are written into the parent, and those are exactly the grains the
 * delta hides.
 */
import { posix } from 'node:path';
import { z } from 'zod';
import { FerryError, errorMessage, isFerryError } from '../../lib/errors.js';
import { failpoint } from '../../lib/failpoints.js';
import type { Datastore } from '../datastore.js';
import type { VmdkDisk } from './disk.js';
import { dirOf, openDatastoreChain, openDeltaAlone, removeIfPresent, resolveHint } from './chain-ops.js';

/** A consolidate's journal sits next to its delta under the delta's name plus this. */
export const JOURNAL_SUFFIX = '.consolidate.json';
/** A journal is a few short fields; anything larger is not one of ours and is refused. */
export const MAX_JOURNAL_BYTES = 4096;
/** Copy reads and writes at most this much at once: adjacent grains are merged up to it. */
export const COPY_CHUNK_BYTES = 1024 * 1024;
const JOURNAL_VERSION = 1;
const TEMP_SUFFIX = '.tmp';

const journalSchema = z.object({
  version: z.literal(JOURNAL_VERSION),
  op: z.literal('consolidate'),
  /** The delta being merged (datastore path). */
  top: z.string().min(1),
  /** Its parent, which receives the grains and becomes the top. */
  parent: z.string().min(1),
  startedAtMs: z.number(),
}).strict();
export type ConsolidateJournal = z.infer<typeof journalSchema>;

export function journalPathOf(topPath: string): string {
  return `${topPath}${JOURNAL_SUFFIX}`;
}

/** Writes the journal durably under a temporary name, then renames it into place (readers see none or all of it). */
async function writeJournal(ds: Datastore, j: ConsolidateJournal): Promise<void> {
  const path = journalPathOf(j.top);
  const tmp = `${path}${TEMP_SUFFIX}`;
  await removeIfPresent(ds, tmp); // a crash's leftover
  const file = await ds.open(tmp, { create: true });
  try {
    await file.write(0, new TextEncoder().encode(`${JSON.stringify(j)}\n`));
    await file.flush();
  } finally {
    await file.close();
  }
  await ds.rename(tmp, path, { overwrite: true });
}

/** The journal at `path`, or null if there is none; DISK_CORRUPT if it is not one. */
export async function readJournal(ds: Datastore, path: string): Promise<ConsolidateJournal | null> {
  let file;
  try {
    file = await ds.open(path, { readOnly: true });
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return null;
    throw err;
  }
  try {
    const sizeBytes = await file.size();
    if (sizeBytes > MAX_JOURNAL_BYTES) throw new FerryError('DISK_CORRUPT', `${file.name}: ${sizeBytes} bytes is not a consolidate journal (at most ${MAX_JOURNAL_BYTES})`);
    const bytes = new Uint8Array(sizeBytes);
    await file.read(0, bytes);
    try {
      return journalSchema.parse(JSON.parse(new TextDecoder().decode(bytes)));
    } catch (err) {
      throw new FerryError('DISK_CORRUPT', `${file.name} is not a consolidate journal: ${errorMessage(err)}`);
    }
  } finally {
    await file.close();
  }
}

/** The journal of an unfinished consolidate of the delta at `topPath`, if there is one. */
export function pendingConsolidate(ds: Datastore, topPath: string): Promise<ConsolidateJournal | null> {
  return readJournal(ds, journalPathOf(topPath));
}

export interface ByteRange {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/** The grains `disk` holds itself, adjacent ones merged into ranges of at most COPY_CHUNK_BYTES. */
export async function ownRanges(disk: VmdkDisk): Promise<ByteRange[]> {
  const out: { offsetBytes: number; lengthBytes: number }[] = [];
  await disk.forEachOwnAllocatedRange((offsetBytes, lengthBytes) => {
    const last = out[out.length - 1];
    if (last !== undefined && last.offsetBytes + last.lengthBytes === offsetBytes && last.lengthBytes + lengthBytes <= COPY_CHUNK_BYTES) last.lengthBytes += lengthBytes;
    else out.push({ offsetBytes, lengthBytes });
  });
  return out;
}

export function totalBytes(ranges: readonly ByteRange[]): number {
  return ranges.reduce((a, r) => a + r.lengthBytes, 0);
}

/**
 * Copies `ranges` as `from` shows them into `to`, one chunk at a time; `onCopied(bytes)` after each.
 * Returns the bytes copied.
 */
export async function copyRanges(from: VmdkDisk, to: VmdkDisk, ranges: readonly ByteRange[], onCopied?: (bytes: number) => void): Promise<number> {
  let done = 0;
  const buf = new Uint8Array(COPY_CHUNK_BYTES);
  for (const r of ranges) {
    for (let at = 0; at < r.lengthBytes; at += COPY_CHUNK_BYTES) {
      const part = buf.subarray(0, Math.min(COPY_CHUNK_BYTES, r.lengthBytes - at));
      await from.read(r.offsetBytes + at, part);
      await to.write(r.offsetBytes + at, part);
      await failpoint('consolidate.chunk');
      done += part.length;
      onCopied?.(part.length);
    }
  }
  return done;
}

/**
 * One consolidate of the delta at `topPath` into its parent at `parentPath`, from the journal to
 * the removal of the delta. The caller copies (copyRanges into `parent`), makes `parentPath` the
 * chain's top durably (its commit), stops using the delta, then calls finish().
 */
export class Consolidation {
  private constructor(private readonly ds: Datastore, readonly topPath: string, readonly parentPath: string, readonly parent: VmdkDisk) {}

  /** The journal is durable, then the parent is opened for writing (its lease taken). Nothing is merged yet. */
  static async begin(ds: Datastore, topPath: string, parentPath: string): Promise<Consolidation> {
    await writeJournal(ds, { version: JOURNAL_VERSION, op: 'consolidate', top: topPath, parent: parentPath, startedAtMs: Date.now() });
    await failpoint('consolidate.journaled');
    const parent = await openDatastoreChain(ds, parentPath);
    return new Consolidation(ds, topPath, parentPath, parent);
  }

  /** Every grain written into the parent is durable (before the caller commits). */
  async flush(): Promise<void> {
    await this.parent.flush();
    await failpoint('consolidate.flushed');
  }

  /** After the commit, with the delta closed: the delta goes, then the journal (a crash between leaves a journal naming a missing delta: harmless). */
  async finish(): Promise<void> {
    await failpoint('consolidate.committed');
    await removeIfPresent(this.ds, this.topPath);
    await failpoint('consolidate.delta-removed');
    await removeIfPresent(this.ds, journalPathOf(this.topPath));
  }

  /**
   * A failure before the commit: the parent is closed and the journal stays — once the parent has
   * been written, the delta's chain needs it to open again (recoverChain finishes the merge).
   */
  async abandon(): Promise<void> {
    await this.parent.close();
  }
}

export interface ConsolidateResult {
  readonly parentPath: string;
  readonly copiedBytes: number;
}

/**
 * Consolidates the chain whose top is `topPath` into the top's parent, for a chain nobody has open
 * (a stopped VM's chain is consolidated by the host through its own handle; this is the same
 * sequence for an offline chain, and what the kill -9 test runs). `commit(parentPath)` must make
 * the parent the chain's top durably — wherever the caller records it.
 */
export async function consolidateChain(ds: Datastore, topPath: string, opts: {
  commit: (parentPath: string) => Promise<void>;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}): Promise<ConsolidateResult> {
  const top = await openDatastoreChain(ds, topPath, { readOnly: true });
  let c: Consolidation | null = null;
  let committed = false;
  try {
    const hint = top.info().parentFileNameHint;
    if (top.parent === undefined || hint === undefined) throw new FerryError('INVALID_ARGUMENT', `${top.name} has no parent: there is nothing to consolidate into`);
    const ranges = await ownRanges(top);
    const total = totalBytes(ranges);
    c = await Consolidation.begin(ds, topPath, resolveHint(topPath, hint));
    let done = 0;
    opts.onProgress?.(0, total);
    const copiedBytes = await copyRanges(top, c.parent, ranges, (n) => { done += n; opts.onProgress?.(done, total); });
    await c.flush();
    await opts.commit(c.parentPath);
    committed = true;
    await top.close();
    await c.parent.close();
    await c.finish();
    return { parentPath: c.parentPath, copiedBytes };
  } catch (err) {
    await top.close().catch(() => undefined);
    if (c !== null && !committed) await c.abandon().catch(() => undefined);
    else if (c !== null) await c.parent.close().catch(() => undefined);
    throw err;
  }
}

export interface RecoveredChain {
  /** Where the chain's top is now: the journal's parent when an interrupted consolidate was finished. */
  readonly topPath: string;
  /** True when the top moved: the caller records topPath durably, then calls settle(). */
  readonly moved: boolean;
  /** Removes what a finished consolidate left (its delta, its journal); call once topPath is recorded. */
  settle(): Promise<void>;
}

/**
 * Before a chain is opened for writing at `topPath`: finishes an interrupted consolidate of that
 * delta (its grains are copied into the parent again, which becomes the top), and tidies after one
 * that had committed (a journal naming `topPath` as its parent). Nothing to do: `{ topPath, moved: false }`.
 */
export async function recoverChain(ds: Datastore, topPath: string): Promise<RecoveredChain> {
  const own = await pendingConsolidate(ds, topPath);
  if (own !== null) {
    await rollForward(ds, own);
    return { topPath: own.parent, moved: true, settle: () => settleJournal(ds, own, true) };
  }
  // A consolidate into this disk that committed and was killed before it removed its delta and journal.
  const done: ConsolidateJournal[] = [];
  for (const e of (await ds.list(dirOf(topPath))).entries) {
    if (e.kind !== 'file' || !e.name.endsWith(JOURNAL_SUFFIX)) continue;
    const j = await readJournal(ds, posix.join(dirOf(topPath), e.name));
    if (j?.parent === topPath) done.push(j);
  }
  return {
    topPath, moved: false,
    settle: async () => { for (const j of done) await settleJournal(ds, j, await isDeadDelta(ds, j)); },
  };
}

/** Copies the journal's delta into its parent again (the delta opened alone: its chain may no longer open). */
async function rollForward(ds: Datastore, j: ConsolidateJournal): Promise<void> {
  let delta: VmdkDisk;
  try {
    delta = await openDeltaAlone(ds, j.top);
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return; // removed after the commit: the parent has everything
    throw err;
  }
  try {
    const hint = delta.info().parentFileNameHint;
    if (hint === undefined || resolveHint(j.top, hint) !== j.parent) {
      throw new FerryError('DISK_CHAIN_INVALID', `${delta.name}: its consolidate journal names ${j.parent} as its parent, its descriptor ${hint ?? 'none'}`);
    }
    const parent = await openDatastoreChain(ds, j.parent);
    try {
      await copyRanges(delta, parent, await ownRanges(delta));
      await parent.flush();
    } finally {
      await parent.close();
    }
  } finally {
    await delta.close();
  }
}

/** True when the delta can no longer be opened over its parent (the parent was written since): nothing can use it. */
async function isDeadDelta(ds: Datastore, j: ConsolidateJournal): Promise<boolean> {
  let delta: VmdkDisk;
  try {
    delta = await openDeltaAlone(ds, j.top);
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return true;
    throw err;
  }
  try {
    const parent = await openDatastoreChain(ds, j.parent, { readOnly: true });
    try { return parent.cid !== delta.parentCid; } finally { await parent.close(); }
  } finally {
    await delta.close();
  }
}

async function settleJournal(ds: Datastore, j: ConsolidateJournal, removeDelta: boolean): Promise<void> {
  if (removeDelta) await removeIfPresent(ds, j.top);
  await removeIfPresent(ds, journalPathOf(j.top));
}
