/** Progress events of an outgoing migration: rate-limited while a round is sent, one forced per round. */
import type { MigrationProgress } from '../record.js';
import type { RecordBuilder } from './record.js';

/** Progress events are rate-limited to this period (plus one per round). */
const PROGRESS_INTERVAL_MS = 100;

/** Where the migration stands: a round being sent (totalBytes known) or a round just ended (dirtyBytes known). */
export interface ProgressPoint {
  readonly round: number;
  readonly roundBytes: number;
  readonly totalBytes?: number;
  readonly dirtyBytes?: number;
  readonly throughput?: number;
}

export class ProgressReporter {
  private latest: MigrationProgress | null = null;
  private lastAt = 0;

  constructor(
    private readonly migrationId: string,
    private readonly record: RecordBuilder,
    private readonly emit: (p: MigrationProgress) => void,
  ) {}

  get last(): MigrationProgress | null { return this.latest; }

  /** Emits a progress event, unless one went out less than PROGRESS_INTERVAL_MS ago and `force` is false. */
  report(force: boolean, p: ProgressPoint): void {
    const now = performance.now();
    if (!force && now - this.lastAt < PROGRESS_INTERVAL_MS) return;
    this.lastAt = now;
    const last = this.record.rounds.at(-1);
    const throughput = p.throughput ?? last?.throughputBytesPerSec ?? 0;
    const dirtyBytes = p.dirtyBytes ?? last?.dirtyBytesAfter ?? 0;
    const dirtyRate = last !== undefined && last.durationMs > 0 ? (last.dirtyBytesAfter * 1000) / last.durationMs : 0;
    const remaining = p.totalBytes !== undefined ? p.totalBytes - p.roundBytes : dirtyBytes;
    this.latest = {
      migrationId: this.migrationId, phase: this.record.phase, round: p.round, sentBytes: this.record.sentBytes,
      diskSentBytes: this.record.disk?.sentBytes ?? 0, roundSentBytes: p.roundBytes,
      roundTotalBytes: p.totalBytes ?? p.roundBytes, dirtyBytes, dirtyRateBytesPerSec: dirtyRate, throughputBytesPerSec: throughput,
      etaMs: throughput > 0 ? (remaining * 1000) / throughput : null, throttlePermille: this.record.throttle, elapsedMs: now - this.record.t0,
    };
    this.emit(this.latest);
  }
}
