/**
 * What a network file copy (NFC) is, as every part of Ferry sees it: the plan (which files, from
 * where to where), the boundary a copy resumes from, progress, and the record of who copied which
 * range. Declared once, as zod schemas, because the host API serves them verbatim, the center stores
 * them in its task journal, and both read them back through the same declaration.
 * docs/design/nfc.md is the design; docs/nfc-protocol.md the wire protocol of the remote form.
 *
 * Units: a copy moves files in chunks of NFC_CHUNK_BYTES at offsets that are multiples of it (the last
 * chunk of a file is shorter). A boundary is a position in the plan's file order:
 *   { fileIndex: i, offsetBytes: o } = every file before i is complete (verified and renamed into place),
 *   and bytes [0, o) of file i are written, verified by their checksums, and durable on the target.
 * o is a multiple of NFC_CHUNK_BYTES or the file's size; { fileIndex: files.length, offsetBytes: 0 } is
 * "everything done". A boundary only ever moves forward.
 */
import { z } from 'zod';
import { MiB } from '../lib/units.js';
import { MAX_DATASTORE_PATH_BYTES, MAX_DISK_CAPACITY_BYTES, VM_NAME_PATTERN } from '../lib/limits.js';

/**
 * A copy's unit of data, checksum and digest: 1 MiB — large enough that a chunk's header, checksum and
 * acknowledgement cost nothing next to its bytes, small enough that a hand-off or a resend redoes little.
 */
export const NFC_CHUNK_BYTES = 1 * MiB;
/** Files one copy moves at most (a VM's disk chain, its snapshot files, a few images). */
export const MAX_COPY_FILES = 1024;
/** Largest file a copy moves: the largest disk Ferry knows. */
export const MAX_COPY_FILE_BYTES = MAX_DISK_CAPACITY_BYTES;
/** Parallel streams of one copy at most (each a connection in the remote form). */
export const MAX_COPY_STREAMS = 8;
/** Two streams keep a disk and a socket busy while the other waits; more help only on fast networks. */
export const DEFAULT_COPY_STREAMS = 2;
/** A copy id: 32 lowercase hex digits (the center makes it; it names the target's journal). */
export const COPY_ID_PATTERN = /^[0-9a-f]{32}$/;
/** Hand-offs of one copy at most: each is an epoch; a copy handed on more often than this is stuck in a loop. */
export const MAX_COPY_EPOCHS = 1000;

export const copyIdSchema = z.string().regex(COPY_ID_PATTERN, 'must be 32 lowercase hex digits');
export const datastoreNameSchema = z.string().regex(VM_NAME_PATTERN, 'must be a datastore name');
export const copyPathSchema = z.string().min(1).max(MAX_DATASTORE_PATH_BYTES);

/** One file of a copy, as the center saw it when the copy was planned (the source must still match it). */
export const copyFileSchema = z.object({
  /** Path inside the source datastore; the target gets the same path in the target datastore. */
  path: copyPathSchema,
  sizeBytes: z.number().int().min(0).max(MAX_COPY_FILE_BYTES),
  /** The source's modification time (ms) when planned: a file modified since is SOURCE_CHANGED. */
  modifiedMs: z.number().nonnegative(),
}).strict();
export type CopyFile = z.infer<typeof copyFileSchema>;

export const copyPlanSchema = z.object({
  copyId: copyIdSchema,
  files: z.array(copyFileSchema).min(1).max(MAX_COPY_FILES),
}).strict().refine((p) => new Set(p.files.map((f) => f.path)).size === p.files.length, { message: 'a file is listed twice', path: ['files'] });
export type CopyPlan = z.infer<typeof copyPlanSchema>;

export const boundarySchema = z.object({
  fileIndex: z.number().int().min(0).max(MAX_COPY_FILES),
  offsetBytes: z.number().int().min(0).max(MAX_COPY_FILE_BYTES),
}).strict();
export type Boundary = z.infer<typeof boundarySchema>;

export const COPY_START: Boundary = { fileIndex: 0, offsetBytes: 0 };

/** Total bytes of the plan (holes included: the unit of progress). */
export function planBytes(plan: Pick<CopyPlan, 'files'>): number {
  return plan.files.reduce((s, f) => s + f.sizeBytes, 0);
}

/** Bytes of the plan before `b` (the progress a boundary stands for). */
export function bytesBefore(plan: Pick<CopyPlan, 'files'>, b: Boundary): number {
  let s = 0;
  for (let i = 0; i < b.fileIndex && i < plan.files.length; i++) s += plan.files[i]?.sizeBytes ?? 0;
  return s + (b.fileIndex < plan.files.length ? b.offsetBytes : 0);
}

/** Negative, 0 or positive as `a` is before, at or after `b`. */
export function compareBoundaries(a: Boundary, b: Boundary): number {
  return a.fileIndex !== b.fileIndex ? a.fileIndex - b.fileIndex : a.offsetBytes - b.offsetBytes;
}

/** The boundary in its one normal form: a file's end is the next file's start. */
export function normalizeBoundary(plan: Pick<CopyPlan, 'files'>, b: Boundary): Boundary {
  let { fileIndex, offsetBytes } = b;
  while (fileIndex < plan.files.length && offsetBytes >= (plan.files[fileIndex]?.sizeBytes ?? 0)) { fileIndex++; offsetBytes = 0; }
  return { fileIndex, offsetBytes };
}

export function formatBoundary(b: Boundary): string {
  return `file ${b.fileIndex} @ ${b.offsetBytes}`;
}

/** Where the copy's bytes go. */
export const copyTargetFormSchema = z.enum(['local', 'remote']);
export type CopyTargetForm = z.infer<typeof copyTargetFormSchema>;

export const copyProgressSchema = z.object({
  copyId: copyIdSchema,
  /** The hand-off generation this host copies under (1 for the first host). */
  epoch: z.number().int().min(1),
  /** Plan bytes behind the last boundary the target acknowledged plus those in flight since (never lowered). */
  doneBytes: z.number().nonnegative(),
  totalBytes: z.number().nonnegative(),
  /** Data bytes this host actually moved (holes move no data: a sparse disk moves what is allocated). */
  sentBytes: z.number().nonnegative(),
  /** Of sentBytes, chunks sent again (a checksum failed on the wire). */
  resentBytes: z.number().nonnegative(),
  rateBytesPerSec: z.number().nonnegative(),
  etaMs: z.number().nonnegative().nullable(),
  /** The last boundary the target acknowledged as durable. */
  boundary: boundarySchema,
  elapsedMs: z.number().nonnegative(),
}).strict();
export type CopyProgress = z.infer<typeof copyProgressSchema>;

/** A file as the target verified it: its digest is SHA-256 over the SHA-256 of each NFC_CHUNK_BYTES chunk. */
export const copiedFileSchema = z.object({
  path: copyPathSchema,
  sizeBytes: z.number().int().min(0),
  /** Of the source, from the chunks' checksums as read (lowercase hex). */
  sourceDigest: z.string().regex(/^[0-9a-f]{64}$/),
  /** Of the file the target wrote, read back before it was renamed into place. */
  targetDigest: z.string().regex(/^[0-9a-f]{64}$/),
}).strict();
export type CopiedFile = z.infer<typeof copiedFileSchema>;

/** What one host's part of a copy did: the range it copied, between two boundaries. */
export const copySegmentSchema = z.object({
  host: datastoreNameSchema,
  epoch: z.number().int().min(1),
  from: boundarySchema,
  to: boundarySchema,
  sentBytes: z.number().nonnegative(),
}).strict();
export type CopySegment = z.infer<typeof copySegmentSchema>;

export const copyOutcomeSchema = z.enum(['completed', 'stopped', 'failed', 'cancelled']);
/**
 * completed: every file verified and renamed into place; stopped: ended at `to`, a boundary the target
 * acknowledged, for another host to go on from (a hand-off); failed / cancelled: ended at `to` (the last
 * acknowledged boundary: still a valid place to resume from) with `error`.
 */
export type CopyOutcome = z.infer<typeof copyOutcomeSchema>;

export const copyJobRecordSchema = z.object({
  copyId: copyIdSchema,
  epoch: z.number().int().min(1),
  outcome: copyOutcomeSchema,
  /** Where this host started (the target's journal said so) and the last boundary the target acknowledged. */
  from: boundarySchema,
  to: boundarySchema,
  sentBytes: z.number().nonnegative(),
  resentBytes: z.number().nonnegative(),
  /** The files finished by this host's part (all of them, verified, when completed). */
  files: z.array(copiedFileSchema),
  error: z.object({ code: z.string(), message: z.string() }).strict().nullable(),
  durationMs: z.number().nonnegative(),
}).strict();
export type CopyJobRecord = z.infer<typeof copyJobRecordSchema>;

export const copyJobPhaseSchema = z.enum(['opening', 'copying', 'stopping', 'ended']);
export type CopyJobPhase = z.infer<typeof copyJobPhaseSchema>;

export const copyJobStatusSchema = z.object({
  copyId: copyIdSchema,
  epoch: z.number().int().min(1),
  phase: copyJobPhaseSchema,
  progress: copyProgressSchema.nullable(),
  record: copyJobRecordSchema.nullable(),
}).strict();
export type CopyJobStatus = z.infer<typeof copyJobStatusSchema>;

/** What a target datastore's journal says about a copy (the durable truth a hand-off resumes from). */
export const copyJournalViewSchema = z.object({
  copyId: copyIdSchema,
  /** Null: no journal (the copy never wrote here, or it was discarded). */
  boundary: boundarySchema.nullable(),
  /** The latest epoch that opened it (0 without a journal). */
  epoch: z.number().int().min(0),
  complete: z.boolean(),
}).strict();
export type CopyJournalView = z.infer<typeof copyJournalViewSchema>;
