/**
 * The bodies of the host API's disk snapshot routes (declared with the other routes in
 * ./host-v1.ts): a VM disk's chain, and the requests and results of snapshot, revert and
 * consolidate. docs/design/disk-snapshots.md is the design.
 */
import { z } from '@hono/zod-openapi';
import { MAX_DATASTORE_PATH_BYTES } from '../storage/datastore.js';

export const diskLevelSchema = z.object({
  /** Datastore path of this level's file. */
  path: z.string(),
  cid: z.string(),
  parentCid: z.string(),
  parentFileNameHint: z.string().optional(),
  /** Bytes of grains this level holds itself. */
  allocatedBytes: z.number().int().nonnegative(),
  /** `top` takes the VM's writes; every `snapshot` below it is read-only and never changes its CID. */
  role: z.enum(['top', 'snapshot']),
});
export type DiskLevelView = z.infer<typeof diskLevelSchema>;

export const diskOperationKindSchema = z.enum(['snapshot', 'revert', 'consolidate']);
export type DiskOperationKind = z.infer<typeof diskOperationKindSchema>;

/** A disk operation in progress on a VM (what a CLI progress bar polls). */
export const diskOperationSchema = z.object({
  kind: diskOperationKindSchema,
  phase: z.string(),
  /** Consolidate: bytes merged into the parent so far, and the total known so far (it grows by what the guest rewrites). */
  doneBytes: z.number().int().nonnegative(),
  totalBytes: z.number().int().nonnegative(),
  startedAtMs: z.number(),
});
export type DiskOperationView = z.infer<typeof diskOperationSchema>;

export const diskChainSchema = z.object({
  vm: z.string(),
  datastore: z.string(),
  capacityBytes: z.number().int().positive(),
  /** Top first, base last. */
  chain: z.array(diskLevelSchema),
  operation: diskOperationSchema.nullable(),
}).openapi('DiskChain');
export type DiskChainView = z.infer<typeof diskChainSchema>;

const levelRef = z.object({ path: z.string(), cid: z.string() });
const topRef = z.object({ path: z.string(), cid: z.string(), parentCid: z.string() });

export const snapshotResultSchema = z.object({
  vm: z.string(),
  /** The disk that became read-only: the snapshot's content, and its name for revert --to. */
  snapshot: levelRef,
  /** The new delta that takes the VM's writes. */
  top: topRef,
  /** How long the guest was paused (pause request to resume); null if the VM was not running. */
  pauseMs: z.number().nullable(),
  totalMs: z.number(),
}).openapi('DiskSnapshot');
export type SnapshotResultView = z.infer<typeof snapshotResultSchema>;

export const revertRequestSchema = z.object({
  /** The snapshot (a chain level's datastore path) to go back to; default: the newest. */
  to: z.string().min(1).max(MAX_DATASTORE_PATH_BYTES).optional(),
}).strict().openapi('RevertRequest');
export type RevertRequest = z.infer<typeof revertRequestSchema>;

export const revertResultSchema = z.object({
  vm: z.string(),
  revertedTo: levelRef,
  /** The fresh, empty delta over the snapshot. */
  top: topRef,
  /** Levels that were above the snapshot, removed from the datastore. */
  discarded: z.array(z.string()),
  /** The VM was running (or paused) and was restarted on the reverted disk. */
  restarted: z.boolean(),
  totalMs: z.number(),
}).openapi('DiskRevert');
export type RevertResultView = z.infer<typeof revertResultSchema>;

export const consolidateResultSchema = z.object({
  vm: z.string(),
  /** The delta that was merged (and removed). */
  merged: z.string(),
  /** Its parent, now the top (its CID changed). */
  top: topRef,
  copiedBytes: z.number().int().nonnegative(),
  /** Copy passes: the bulk pass, the rounds of what the guest rewrote meanwhile, the final one. */
  rounds: z.number().int().positive(),
  /** The VM was running: the copy ran alongside it and only the final round paused it. */
  live: z.boolean(),
  pauseMs: z.number().nullable(),
  totalMs: z.number(),
}).openapi('DiskConsolidate');
export type ConsolidateResultView = z.infer<typeof consolidateResultSchema>;
