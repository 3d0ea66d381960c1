/**
 * What a migration reports: progress while it runs and its record when it ends. Declared once, as
 * zod schemas, because the host API serves them verbatim (src/api/host-v1.ts imports these) and
 * clients validate what they receive against the same declaration.
 */
import { z } from 'zod';
import { instrumentationSourceSchema } from './protocol/messages.js';
import { migrationOptionsSchema } from './options.js';

export const migrationPhaseSchema = z.enum(['prepare', 'precopy', 'switchover', 'release', 'rollback', 'resolve']);
export type MigrationPhase = z.infer<typeof migrationPhaseSchema>;

export const migrationOutcomeSchema = z.enum(['succeeded', 'failed', 'cancelled', 'in-doubt']);
export type MigrationOutcome = z.infer<typeof migrationOutcomeSchema>;

export const roundRecordSchema = z.object({
  round: z.number().int(),
  regions: z.number().int(),
  bytes: z.number(),
  durationMs: z.number(),
  throughputBytesPerSec: z.number(),
  /** Bytes found dirty when the round ended (what the next round or the switch-over must send). */
  dirtyBytesAfter: z.number(),
  /** Disk block bytes sent in the round (copy mode; 0 otherwise). Included in dirtyBytesAfter's estimate. */
  diskBytes: z.number(),
  throttlePermille: z.number(),
  expectedDowntimeMs: z.number(),
});
export type RoundRecord = z.infer<typeof roundRecordSchema>;

export const migrationProgressSchema = z.object({
  migrationId: z.string(),
  phase: migrationPhaseSchema,
  round: z.number().int(),
  sentBytes: z.number(),
  /** Disk bytes sent so far (copy mode), apart from memory's sentBytes. */
  diskSentBytes: z.number(),
  roundSentBytes: z.number(),
  roundTotalBytes: z.number(),
  dirtyBytes: z.number(),
  dirtyRateBytesPerSec: z.number(),
  throughputBytesPerSec: z.number(),
  etaMs: z.number().nullable(),
  throttlePermille: z.number(),
  elapsedMs: z.number(),
});
export type MigrationProgress = z.infer<typeof migrationProgressSchema>;

/** The parts of the engine downtime, in order. */
export const switchoverBreakdownSchema = z.object({
  /** Stun: pause request until every vCPU parked. */
  pauseMs: z.number(),
  /** Collect the last dirty set, send it, every frame acknowledged. */
  finalRoundMs: z.number(),
  /** vCPU and device state to the target, acknowledged. */
  stateMs: z.number(),
  /** COMMIT: the target checks the digest, records the commit durably, resumes the VM, replies. */
  commitMs: z.number(),
});
export type SwitchoverBreakdown = z.infer<typeof switchoverBreakdownSchema>;

/** What write tracing cost this migration. */
export const traceRecordSchema = z.object({
  install: z.enum(['single', 'stop-all']),
  granularityBytes: z.number().int(),
  installations: z.number().int(),
  /** Guest-visible stall of one installation (stop-all), max and total. */
  stallMaxMs: z.number(),
  stallTotalMs: z.number(),
  /** Bitmap scan (+ re-arm for 'single') time, total. */
  scanMsTotal: z.number(),
  /** Epoch barrier waits ('single'), total. */
  barrierMsTotal: z.number(),
  /** Pages of fired regions that had not changed since last sent, skipped (coarse granularity). */
  unchangedPagesSkipped: z.number().int(),
  /** Guest work units per second during pre-copy (all vCPUs): what tracing and throttling left it. */
  guestUnitsPerSecDuringPrecopy: z.number().nullable(),
  adaptive: z.boolean(),
  /** Adaptive refinement: regions switched to per-page tracing, and after which round. */
  splits: z.array(z.object({ round: z.number().int(), regions: z.number().int() })),
  splitRegions: z.number().int(),
});
export type TraceRecord = z.infer<typeof traceRecordSchema>;

/** The VM's disk in the migration (null: it had none). */
export const diskRecordSchema = z.object({
  mode: z.enum(['shared', 'copy']),
  capacityBytes: z.number(),
  /** Copy mode: block bytes sent (all rounds). */
  sentBytes: z.number(),
  /** Copy mode: the digest the target verified at COMMIT. */
  digest: z.string().nullable(),
  /** Shared mode: flush + lease release on the source, inside the downtime. */
  releaseMs: z.number().nullable(),
  /**
   * Copy mode over a seed (docs/design/cross-site.md): how many levels at the chain's base the target
   * held already (0 or absent: none), the bytes those levels hold (they did not move), where the top
   * seeded level lies on the target, and the bytes of seed files it hashed before round 1's answer.
   */
  seededLevels: z.number().optional(),
  seededBytes: z.number().optional(),
  seedPath: z.string().nullable().optional(),
  seedVerifyBytes: z.number().optional(),
  /** The chain as announced (top first) with what the target answered for each level; absent before this field existed or without a chain. */
  chain: z.array(z.object({ path: z.string(), cid: z.string(), allocatedBytes: z.number(), migrate: z.boolean() })).optional(),
});
export type DiskRecord = z.infer<typeof diskRecordSchema>;

export const migrationErrorSchema = z.object({ code: z.string(), message: z.string() });

export const migrationRecordSchema = z.object({
  migrationId: z.string(),
  vm: z.string(),
  /** The target as its peer names it (for a host agent: its URL). */
  to: z.string(),
  outcome: migrationOutcomeSchema,
  error: migrationErrorSchema.nullable(),
  startedAt: z.string(),
  totalMs: z.number(),
  phases: z.array(z.object({ phase: migrationPhaseSchema, atMs: z.number() })),
  rounds: z.array(roundRecordSchema),
  transferredBytes: z.number(),
  zeroPagesSkipped: z.number().int(),
  pauseLatencyMs: z.number().nullable(),
  /** Source stun until the target acknowledged it resumed the VM. */
  engineDowntimeMs: z.number().nullable(),
  /** Largest gap between the guest's last clock read on the source and its first on the target. */
  guestDowntimeMs: z.number().nullable(),
  /** Where the engine downtime went (null if the switch-over did not finish). */
  switchoverMs: switchoverBreakdownSchema.nullable(),
  maxThrottlePermille: z.number(),
  forcedSwitchover: z.boolean(),
  verified: z.boolean(),
  digest: z.string().nullable(),
  disk: diskRecordSchema.nullable(),
  /**
   * How the target came by the VM's instrumented module (PREPARE's reply): its cache, this source's
   * offer, or instrumenting the image itself. Absent: the target did not say (an older target, or one
   * that was offered nothing because it does not read offers).
   */
  instrumentation: instrumentationSourceSchema.optional(),
  options: migrationOptionsSchema,
  traces: traceRecordSchema,
});
export type MigrationRecord = z.infer<typeof migrationRecordSchema>;

/** A job as its host reports it: running (with its latest progress) or ended (with its record). */
export const migrationJobStatusSchema = z.object({
  migrationId: z.string(),
  vm: z.string(),
  to: z.string(),
  state: z.union([z.literal('running'), migrationOutcomeSchema]),
  phase: migrationPhaseSchema,
  progress: migrationProgressSchema.nullable(),
  record: migrationRecordSchema.nullable(),
});
export type MigrationJobStatus = z.infer<typeof migrationJobStatusSchema>;
