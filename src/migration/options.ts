/** The options of one live migration, as a caller (API, CLI, center) gives them. Validated at every boundary. */
import { z } from 'zod';
import { MIN_RATE_BYTES_PER_SEC } from '../dataplane/rate-limiter.js';
import { MAX_DATA_CHANNELS, MIN_DATA_CHANNELS, granularitySchema } from '../lib/limits.js';

export const migrationOptionsSchema = z.object({
  dataChannels: z.number().int().min(MIN_DATA_CHANNELS).max(MAX_DATA_CHANNELS).optional(),
  bandwidthBytesPerSec: z.number().min(MIN_RATE_BYTES_PER_SEC).optional(),
  compression: z.enum(['none', 'deflate']).optional(),
  downtimeTargetMs: z.number().positive().max(60_000).optional(),
  maxRounds: z.number().int().min(1).max(10_000).optional(),
  maxTotalMs: z.number().positive().optional(),
  autoConverge: z.boolean().optional(),
  onLimit: z.enum(['force', 'abort']).optional(),
  /** Per-request timeout (a target that never answers is given up on). */
  requestTimeoutMs: z.number().int().min(100).max(600_000).optional(),
  /** How long to keep asking an unreachable target whether it committed before reporting in-doubt. */
  inDoubtTimeoutMs: z.number().int().min(0).max(3_600_000).optional(),
  /** How write traces are (re-)installed: 'single' (default) or 'stop-all' (docs/dirty-tracking.md). */
  traceInstall: z.enum(['single', 'stop-all']).optional(),
  /** Trace granularity for this migration (power of two, 4 KiB .. 2 MiB); default: the VM's. */
  traceGranularityBytes: granularitySchema().optional(),
  /**
   * Adaptive granularity: start coarse (traceGranularityBytes, default 2 MiB) and switch the regions
   * that keep firing with mostly unchanged pages to per-4 KiB-page tracing (the guest is parked for
   * the switch).
   */
  traceAdaptive: z.boolean().optional(),
  /** Tests only: damage the data of one page sent in this round (the digest must catch it). */
  corruptPageInRound: z.number().int().min(1).optional(),
  /** Tests only: damage one disk block sent in this round (copy mode; the disk digest must catch it). */
  corruptDiskBlockInRound: z.number().int().min(1).optional(),
}).strict();
export type MigrationOptions = z.infer<typeof migrationOptionsSchema>;
