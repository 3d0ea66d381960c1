/**
 * A copy's journal in its target datastore (docs/design/nfc.md, "The target's journal"): the durable
 * truth about how far the copy got, which epoch last opened it, and each finished file's digests.
 *
 *     .ferry-copies/<copyId>.json        the journal (replaced atomically: temporary file, fsync, rename, fsync of the directory)
 *     .ferry-copies/<copyId>.lock        the writer's lock: the sink holds its write lease for its whole life
 *     .ferry-copies/<copyId>/<i>.sums    file i's chunk checksums, CHUNK_SHA256_BYTES per chunk, positional
 *     <path>.ferry-copy-<copyId8>        file i's staging file (renamed to <path> once it verified)
 *
 * A journal is trusted only whole: one that is truncated, too large, not JSON, of another version or
 * inconsistent in itself (a boundary past a file's end, a file marked done after the boundary) is
 * COPY_JOURNAL_INVALID — never read as "no journal" (that would restart a copy from zero over its
 * own staging files) and never half-believed.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { MiB } from '../lib/units.js';
import { COPY_AREA_DIR, COPY_STAGING_INFIX, type CopyArea } from '../storage/datastore.js';
import {
  MAX_COPY_EPOCHS, MAX_COPY_FILES, NFC_CHUNK_BYTES, boundarySchema, copyIdSchema, copyPathSchema,
  type Boundary, type CopyJournalView, type CopyPlan,
} from './plan.js';

export const COPY_JOURNAL_VERSION = 1;
/**
 * Largest journal read: MAX_COPY_FILES entries of a path (at most 1 KiB) and two digests each come to
 * about 1.3 MiB; a larger file is not one this build wrote.
 */
export const MAX_COPY_JOURNAL_BYTES = 4 * MiB;

const digestSchema = z.string().regex(/^[0-9a-f]{64}$/);

const journalFileSchema = z.object({
  index: z.number().int().min(0).max(MAX_COPY_FILES),
  path: copyPathSchema,
  sizeBytes: z.number().int().min(0),
  /** Verified and renamed into place. */
  done: z.boolean(),
  sourceDigest: digestSchema.optional(),
  targetDigest: digestSchema.optional(),
  /** Bytes from the start read back after they were durable and found to match their checksums (a chunk multiple, or the size). */
  verifiedBytes: z.number().int().min(0).optional(),
}).strict();
export type CopyJournalFile = z.infer<typeof journalFileSchema>;

const copyJournalSchema = z.object({
  version: z.literal(COPY_JOURNAL_VERSION),
  copyId: copyIdSchema,
  /** SHA-256 of the plan (planDigestOf): a copy id reused for other files is COPY_CONFLICT. */
  planDigest: digestSchema,
  /** The latest epoch that opened the journal: a sink of an older one is fenced out. */
  epoch: z.number().int().min(1).max(MAX_COPY_EPOCHS),
  /** Durable: every chunk before it is written, fdatasynced and has its checksum in the sums file. */
  boundary: boundarySchema,
  complete: z.boolean(),
  files: z.array(journalFileSchema).min(1).max(MAX_COPY_FILES),
}).strict();
export type CopyJournal = z.infer<typeof copyJournalSchema>;

export function copyJournalPath(copyId: string): string {
  return `${COPY_AREA_DIR}/${copyId}.json`;
}

export function copyLockPath(copyId: string): string {
  return `${COPY_AREA_DIR}/${copyId}.lock`;
}

export function copySumsDir(copyId: string): string {
  return `${COPY_AREA_DIR}/${copyId}`;
}

export function copySumsPath(copyId: string, fileIndex: number): string {
  return `${copySumsDir(copyId)}/${fileIndex}.sums`;
}

/** Where file `path` of copy `copyId` is written until it verifies (8 digits of the id: two copies of one path do not collide). */
export function stagingPathOf(path: string, copyId: string): string {
  return `${path}${COPY_STAGING_INFIX}${copyId.slice(0, 8)}`;
}

/** SHA-256 of what identifies a plan: its id and each file's path, size and modification time, in order. */
export function planDigestOf(plan: CopyPlan): string {
  const h = createHash('sha256').update(`ferry-copy-plan/1\n${plan.copyId}\n`);
  for (const f of plan.files) h.update(`${JSON.stringify([f.path, f.sizeBytes, f.modifiedMs])}\n`);
  return h.digest('hex');
}

/** A new copy's journal, at the start, under `epoch`. */
export function newJournal(plan: CopyPlan, epoch: number): CopyJournal {
  return {
    version: COPY_JOURNAL_VERSION, copyId: plan.copyId, planDigest: planDigestOf(plan), epoch,
    boundary: { fileIndex: 0, offsetBytes: 0 }, complete: false,
    files: plan.files.map((f, index) => ({ index, path: f.path, sizeBytes: f.sizeBytes, done: false })),
  };
}

function invalid(copyId: string, reason: string, why: string): FerryError {
  return new FerryError('COPY_JOURNAL_INVALID', `the journal of copy ${copyId} (${copyJournalPath(copyId)}) ${why}; it is not trusted (discard the copy to start it again)`, { copyId, reason });
}

/** The journal's consistency with itself (the schema checked its shape): the reason it is not, or null. */
function inconsistency(j: CopyJournal): string | null {
  const { fileIndex, offsetBytes } = j.boundary;
  if (fileIndex > j.files.length) return `its boundary names file ${fileIndex} of ${j.files.length}`;
  const at = j.files[fileIndex];
  if (at !== undefined && offsetBytes > at.sizeBytes) return `its boundary is past the end of file ${fileIndex}`;
  if (at !== undefined && offsetBytes % NFC_CHUNK_BYTES !== 0 && offsetBytes !== at.sizeBytes) return 'its boundary is not at a chunk';
  if (at === undefined && offsetBytes !== 0) return 'its boundary is past the last file';
  if (new Set(j.files.map((f) => f.path)).size !== j.files.length) return 'it lists a file twice';
  for (const [k, f] of j.files.entries()) {
    if (f.index !== k) return `its file ${k} says it is file ${f.index}`;
    if (f.done !== (k < fileIndex)) return `file ${k} is ${f.done ? 'done after' : 'not done before'} its boundary`;
    if (f.done && (f.sourceDigest === undefined || f.targetDigest === undefined)) return `done file ${k} has no digests`;
    const verified = f.verifiedBytes ?? 0;
    const verifiedLimit = f.done ? f.sizeBytes : k === fileIndex ? offsetBytes : 0;
    if (verified > verifiedLimit || (verified % NFC_CHUNK_BYTES !== 0 && verified !== f.sizeBytes)) return `file ${k} says more of it is verified than is written`;
  }
  if (j.complete && fileIndex !== j.files.length) return 'it says complete before its last file';
  return null;
}

/** The journal of `copyId` in the copy area, null if there is none, COPY_JOURNAL_INVALID if it cannot be trusted. */
export async function readJournal(area: CopyArea, copyId: string): Promise<CopyJournal | null> {
  let file;
  try {
    file = await area.open(copyJournalPath(copyId), { readOnly: true });
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return null;
    throw err;
  }
  let raw: Buffer;
  try {
    const size = await file.size();
    if (size > MAX_COPY_JOURNAL_BYTES) throw invalid(copyId, 'too-large', `is ${size} bytes, more than the ${MAX_COPY_JOURNAL_BYTES} a journal can be`);
    raw = Buffer.alloc(size);
    await file.read(0, raw);
  } finally {
    await file.close();
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw invalid(copyId, 'not-json', `is truncated or not JSON (${errorMessage(err)})`);
  }
  const version = typeof parsed === 'object' && parsed !== null && 'version' in parsed ? parsed.version : undefined;
  if (version !== COPY_JOURNAL_VERSION) throw invalid(copyId, 'version', `is of version ${JSON.stringify(version) ?? 'none'}; this build reads version ${COPY_JOURNAL_VERSION}`);
  const r = copyJournalSchema.safeParse(parsed);
  if (!r.success) throw invalid(copyId, 'schema', `does not hold a journal (${r.error.issues.slice(0, 3).map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')})`);
  if (r.data.copyId !== copyId) throw invalid(copyId, 'copy-id', `is the journal of copy ${r.data.copyId}`);
  const why = inconsistency(r.data);
  if (why !== null) throw invalid(copyId, 'inconsistent', `is inconsistent: ${why}`);
  return r.data;
}

/** Replaces the journal atomically and durably (the copy area's directory exists: the sink made it). */
export async function writeJournal(area: CopyArea, j: CopyJournal): Promise<void> {
  await area.replaceFile(copyJournalPath(j.copyId), Buffer.from(`${JSON.stringify(j)}\n`));
}

/** What the journal says, as the API shows it (null: no journal). */
export function journalView(copyId: string, j: CopyJournal | null): CopyJournalView {
  return j === null
    ? { copyId, boundary: null, epoch: 0, complete: false }
    : { copyId, boundary: { ...j.boundary }, epoch: j.epoch, complete: j.complete };
}

/** The boundary at the end of file `fileIndex` (all written, not yet finished). */
export function endOfFile(j: CopyJournal, fileIndex: number): Boundary {
  return { fileIndex, offsetBytes: j.files[fileIndex]?.sizeBytes ?? 0 };
}
