/**
 * What an outgoing migration measured, as it runs, and the MigrationRecord built from it when it
 * ends. The parts of the job write here (through the JobContext); the record's schema is
 * src/migration/record.ts.
 */
import type { FerryError } from '../../lib/errors.js';
import type { MigrationOptions } from '../options.js';
import type { InstrumentationSource } from '../protocol/messages.js';
import type { DiskRecord, MigrationOutcome, MigrationPhase, MigrationRecord, RoundRecord, SwitchoverBreakdown, TraceRecord } from '../record.js';

/** The tracing a migration chose (options, or the VM's own): the fixed part of its TraceRecord. */
export type TracePlan = Pick<TraceRecord, 'install' | 'granularityBytes' | 'adaptive'>;

/** Who migrated what where: the part of the record the job knows from the start. */
export interface RecordHead {
  readonly migrationId: string;
  readonly vm: string;
  readonly to: string;
  readonly options: MigrationOptions;
}

export class RecordBuilder {
  readonly startedAt = new Date();
  readonly t0 = performance.now();
  private current: MigrationPhase = 'prepare';
  private readonly phases: { phase: MigrationPhase; atMs: number }[] = [];
  readonly rounds: RoundRecord[] = [];
  /** Bytes of page data sent (zero entries count nothing). */
  sentBytes = 0;
  /** The disk's part (null: the VM has none); filled by the disk sender and the switch-over. */
  disk: DiskRecord | null = null;
  zeroPagesSkipped = 0;
  private throttlePermille = 0;
  private maxThrottlePermille = 0;
  pauseLatencyMs: number | null = null;
  engineDowntimeMs: number | null = null;
  guestDowntimeMs: number | null = null;
  switchoverMs: SwitchoverBreakdown | null = null;
  forced = false;
  finalDigest: string | null = null;
  /** PREPARE's reply: where the target's instrumented module came from (null: it did not say). */
  instrumentation: InstrumentationSource | null = null;
  private readonly traces: TraceRecord;

  constructor(plan: TracePlan) {
    this.traces = {
      install: plan.install, granularityBytes: plan.granularityBytes,
      installations: 0, stallMaxMs: 0, stallTotalMs: 0, scanMsTotal: 0, barrierMsTotal: 0, unchangedPagesSkipped: 0,
      guestUnitsPerSecDuringPrecopy: null, adaptive: plan.adaptive, splits: [], splitRegions: 0,
    };
  }

  get phase(): MigrationPhase { return this.current; }
  get throttle(): number { return this.throttlePermille; }
  get tracePlan(): TracePlan { return this.traces; }

  elapsedMs(): number { return performance.now() - this.t0; }

  enter(phase: MigrationPhase): void {
    this.current = phase;
    this.phases.push({ phase, atMs: this.elapsedMs() });
  }

  setThrottle(permille: number): void {
    this.throttlePermille = permille;
    this.maxThrottlePermille = Math.max(this.maxThrottlePermille, permille);
  }

  /** One trace installation (arm, collect, split): its guest stall, scan and barrier times. */
  noteInstall(r: { stallMs: number; scanMs?: number; barrierMs?: number }): void {
    const t = this.traces;
    t.installations += 1;
    t.stallMaxMs = Math.max(t.stallMaxMs, r.stallMs);
    t.stallTotalMs += r.stallMs;
    t.scanMsTotal += r.scanMs ?? 0;
    t.barrierMsTotal += r.barrierMs ?? 0;
  }

  noteSplit(round: number, regions: number): void {
    this.traces.splits.push({ round, regions });
    this.traces.splitRegions += regions;
  }

  noteUnchangedPageSkipped(): void { this.traces.unchangedPagesSkipped += 1; }

  noteGuestRate(unitsPerSec: number): void { this.traces.guestUnitsPerSecDuringPrecopy = unitsPerSec; }

  build(head: RecordHead, outcome: MigrationOutcome, error: FerryError | null): MigrationRecord {
    return {
      migrationId: head.migrationId, vm: head.vm, to: head.to, outcome,
      error: recordError(outcome, error),
      startedAt: this.startedAt.toISOString(), totalMs: this.elapsedMs(), phases: this.phases, rounds: this.rounds,
      transferredBytes: this.sentBytes, zeroPagesSkipped: this.zeroPagesSkipped, pauseLatencyMs: this.pauseLatencyMs,
      engineDowntimeMs: this.engineDowntimeMs, guestDowntimeMs: this.guestDowntimeMs, switchoverMs: this.switchoverMs, maxThrottlePermille: this.maxThrottlePermille,
      forcedSwitchover: this.forced, verified: outcome === 'succeeded', digest: this.finalDigest,
      disk: this.disk === null ? null : { ...this.disk }, ...(this.instrumentation !== null ? { instrumentation: this.instrumentation } : {}), options: head.options,
      traces: { ...this.traces, splits: [...this.traces.splits] },
    };
  }
}

/** The record's error: none on success; in doubt, the code that says so (the cause stays in the message). */
function recordError(outcome: MigrationOutcome, error: FerryError | null): MigrationRecord['error'] {
  if (outcome === 'succeeded' || error === null) return null;
  if (outcome === 'in-doubt') return { code: 'MIGRATION_IN_DOUBT', message: `the target did not say whether it committed (${error.code}: ${error.message})` };
  return { code: error.code, message: error.message };
}
