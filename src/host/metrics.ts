/**
 * A host's Prometheus metrics (`GET /metrics`, docs/design/observability.md): migrations in flight and
 * finished by role and outcome, bytes moved, downtime and duration, network file copies running and
 * ended, VMs by state, HTTP requests, and the process's own (CPU, memory, event loop lag, GC;
 * src/lib/process-metrics.ts). Each host has its own
 * Registry, never the global one: several hosts in one process (tests, the demo) each count only their own.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { PATH_DRIVER_KINDS } from '../dataplane/path/spec.js';
import { metricsText } from '../lib/process-metrics.js';
import type { MigrationRecord } from '../migration/record.js';
import { copyOutcomeSchema, type CopyJobRecord } from '../nfc/plan.js';
import type { IncomingIds, IncomingObserver } from '../migration/target/hooks.js';
import { vmStateSchema } from '../api/host-v1.js';
import { httpRequestCounter, type HttpRequestLabels } from '../api/http-metrics.js';

/**
 * Switch-over downtime buckets, in seconds: from 1 ms (an idle small VM on a fast link) to 5 s (far past
 * any downtime target; a forced switch-over of a busy VM). The protocol's targets are tens of ms, so the
 * buckets are densest there.
 */
export const DOWNTIME_BUCKETS_SECONDS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Whole-migration buckets, in seconds: a small VM in well under a second to a large disk copied for half an hour. */
export const MIGRATION_DURATION_BUCKETS_SECONDS: readonly number[] = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

/** What a target counts an incoming migration as: the same words as a source's outcomes where they mean the same. */
const TARGET_OUTCOMES = { committed: 'succeeded', aborted: 'aborted' } as const;

export class HostMetrics {
  readonly registry = new Registry();
  private readonly inFlight: Gauge<'role'>;
  private readonly finished: Counter<'role' | 'outcome'>;
  private readonly bytes: Counter<'role' | 'kind'>;
  private readonly downtime: Histogram;
  private readonly duration: Histogram<'role' | 'outcome'>;
  readonly httpRequests: Counter<HttpRequestLabels>;
  private readonly copiesRunning: Gauge;
  private readonly copiesFinished: Counter<'outcome'>;
  private readonly copyBytes: Counter;

  /** `vmStates`: the state of every VM on the host now; `pathDrivers`: the driver of every virtual path open now (both read at each scrape). */
  constructor(vmStates: () => Iterable<string>, pathDrivers: () => Iterable<string> = () => []) {
    const registers = [this.registry];
    this.inFlight = new Gauge({ name: 'ferry_migrations_in_flight', help: 'migrations running now, by role (source or target)', labelNames: ['role'], registers });
    this.finished = new Counter({
      name: 'ferry_migrations_total', help: 'migrations ended, by role and outcome (source: succeeded, failed, cancelled, in-doubt; target: succeeded, aborted)',
      labelNames: ['role', 'outcome'], registers,
    });
    this.bytes = new Counter({ name: 'ferry_migration_bytes_total', help: 'migration payload bytes sent (source) or applied (target), by kind (memory, disk)', labelNames: ['role', 'kind'], registers });
    this.downtime = new Histogram({
      name: 'ferry_migration_downtime_seconds', help: 'switch-over downtime of migrations that reached it, as the source engine measured it (guest stunned to resumed)',
      buckets: [...DOWNTIME_BUCKETS_SECONDS], registers,
    });
    this.duration = new Histogram({
      name: 'ferry_migration_duration_seconds', help: 'whole migrations, start to end, by role and outcome',
      labelNames: ['role', 'outcome'], buckets: [...MIGRATION_DURATION_BUCKETS_SECONDS], registers,
    });
    for (const role of ['source', 'target']) this.inFlight.set({ role }, 0);
    new Gauge({
      name: 'ferry_vms', help: 'VMs on this host, by state', labelNames: ['state'], registers,
      collect() {
        const counts = new Map<string, number>(vmStateSchema.options.map((s) => [s, 0]));
        for (const s of vmStates()) counts.set(s, (counts.get(s) ?? 0) + 1);
        for (const [state, n] of counts) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'ferry_paths_open', help: 'virtual paths of mobility operations open on this host now, by driver (portable, kernel)', labelNames: ['driver'], registers,
      collect() {
        const counts = new Map<string, number>(PATH_DRIVER_KINDS.map((k) => [k, 0]));
        for (const d of pathDrivers()) counts.set(d, (counts.get(d) ?? 0) + 1);
        for (const [driver, n] of counts) this.set({ driver }, n);
      },
    });
    this.copiesRunning = new Gauge({ name: 'ferry_copies_running', help: 'network file copies this host runs now (its part, as the copying host)', registers });
    this.copiesFinished = new Counter({ name: 'ferry_copies_total', help: 'this host\'s parts of network file copies ended, by outcome (completed, stopped, failed, cancelled)', labelNames: ['outcome'], registers });
    this.copyBytes = new Counter({ name: 'ferry_copy_bytes_total', help: 'data bytes this host\'s copies moved (holes move none; resent chunks count again)', registers });
    for (const outcome of copyOutcomeSchema.options) this.copiesFinished.inc({ outcome }, 0);
    this.httpRequests = httpRequestCounter(this.registry, 'ferry');
  }

  /** A copy started on this host (its source is held). */
  copyStarted(): void { this.copiesRunning.inc(); }

  /** A copy of this host ended with this record. */
  copyEnded(record: CopyJobRecord): void {
    this.copiesRunning.dec();
    this.copiesFinished.inc({ outcome: record.outcome });
    this.copyBytes.inc(record.sentBytes);
  }

  /** An outgoing migration started. */
  outgoingStarted(): void { this.inFlight.inc({ role: 'source' }); }

  /** An outgoing migration ended with this record. */
  outgoingEnded(record: MigrationRecord): void {
    this.inFlight.dec({ role: 'source' });
    this.finished.inc({ role: 'source', outcome: record.outcome });
    this.bytes.inc({ role: 'source', kind: 'memory' }, record.transferredBytes);
    if (record.disk !== null) this.bytes.inc({ role: 'source', kind: 'disk' }, record.disk.sentBytes);
    if (record.engineDowntimeMs !== null) this.downtime.observe(record.engineDowntimeMs / 1000);
    this.duration.observe({ role: 'source', outcome: record.outcome }, record.totalMs / 1000);
  }

  /** What the migration receiver tells about incoming migrations. */
  readonly incoming: IncomingObserver = {
    started: (_ids: IncomingIds) => { this.inFlight.inc({ role: 'target' }); },
    received: (kind, n) => { this.bytes.inc({ role: 'target', kind }, n); },
    ended: (_ids, outcome, durationMs) => {
      this.inFlight.dec({ role: 'target' });
      this.finished.inc({ role: 'target', outcome: TARGET_OUTCOMES[outcome] });
      this.duration.observe({ role: 'target', outcome: TARGET_OUTCOMES[outcome] }, durationMs / 1000);
    },
  };

  /** The text exposition format (version 0.0.4), and its content type. */
  text(): Promise<string> { return metricsText(this.registry); }
  get contentType(): string { return this.registry.contentType; }
}
