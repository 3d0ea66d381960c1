/**
 * What the parts of one outgoing migration share. The job builds it once; session, pre-copy,
 * sender, switch-over and in-doubt resolution are each given it explicitly and reach nothing else
 * of the job.
 */
import { FerryError, isFerryError } from '../../lib/errors.js';
import type { Vm } from '../../vmm/vm.js';
import type { MigrationOptions } from '../options.js';
import type { MigrationTargetPeer } from '../peer.js';
import type { MigrationSourceDisk, PreparedDisk } from '../disk.js';
import type { ProgressReporter } from './progress.js';
import type { RecordBuilder } from './record.js';

export interface JobContext {
  /** The source's id of the migration (the target has its own: Session.remoteId). */
  readonly id: string;
  /** The VM being migrated: the job owns it while it runs. */
  readonly vm: Vm;
  /** The VM's disk and how it moves; null for a VM without one. */
  readonly disk: MigrationSourceDisk | null;
  /**
   * Copy mode: what the target made of the announced chain (PREPARE's reply); null before PREPARE,
   * or when the target said nothing of it (an older target: every level moves). Set by the session.
   */
  preparedDisk: PreparedDisk | null;
  readonly target: MigrationTargetPeer;
  readonly options: MigrationOptions;
  /** Bound of every request on the migration streams (COMMIT and PREPARE have their own defaults). */
  readonly requestTimeoutMs: number;
  readonly record: RecordBuilder;
  readonly progress: ProgressReporter;
  /** Aborted by cancel(); its reason is the cancellation error. */
  readonly signal: AbortSignal;
  readonly log: (line: string) => void;
}

/** Throws the cancellation error once the job was cancelled. */
export function checkCancelled(ctx: JobContext): void {
  if (!ctx.signal.aborted) return;
  const reason: unknown = ctx.signal.reason;
  throw isFerryError(reason) ? reason : new FerryError('MIGRATION_CANCELLED', 'migration cancelled');
}

/** The log prefix of this migration. */
export function tag(ctx: JobContext): string {
  return `migration ${ctx.id.slice(0, 8)}`;
}
