/**
 * The center's Prometheus metrics (`GET /metrics`, docs/design/observability.md): tasks by state and
 * kind (queue depth), how long tasks waited, each host's heartbeat age, store latency per operation,
 * HTTP requests, and the process's own. One Registry per center, never the global one.
 *
 * What is read from the store is read at scrape time, by bounded queries; every label takes a bounded
 * set of values (the constants below say how many and why).
 */
import { Gauge, Histogram, Registry, type Counter } from 'prom-client';
import { metricsText } from '../lib/process-metrics.js';
import { httpRequestCounter, type HttpRequestLabels } from '../api/http-metrics.js';
import type { CenterStore, Clock } from './store/store.js';

/**
 * Hosts whose heartbeat age is labelled, at most (the first by name): one series per host is what an
 * operator wants up to a large fleet; beyond it a scrape would list and label without end.
 */
export const MAX_HEARTBEAT_AGE_HOSTS = 1000;
/**
 * Distinct `reason` (and `kind`) values the task wait histogram labels; later new ones count as `other`.
 * Waiting reasons are words the task engine chooses, but a free-text reason must not become a series each.
 */
export const MAX_TASK_WAIT_LABEL_VALUES = 32;
/** Task waits, in seconds: from a task claimed at once to one that waited an hour for capacity. */
export const TASK_WAIT_BUCKETS_SECONDS: readonly number[] = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600];
/** Store operations, in seconds: an SQLite read in well under a ms to a PostgreSQL write stuck for seconds. */
export const STORE_OP_BUCKETS_SECONDS: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** The label value beyond a bound. */
export const OTHER_LABEL = 'other';

/** What the task engine calls when a task leaves `queued`: its kind, why it waited ('none': it did not), and for how long. */
export type ObserveTaskWait = (kind: string, reason: string, seconds: number) => void;

/** A label's values, the first `max` seen as they are and the rest as OTHER_LABEL. */
class BoundedLabel {
  private readonly seen = new Set<string>();
  constructor(private readonly max: number) {}
  of(value: string): string {
    if (this.seen.has(value)) return value;
    if (this.seen.size >= this.max) return OTHER_LABEL;
    this.seen.add(value);
    return value;
  }
}

export class CenterMetrics {
  readonly registry = new Registry();
  readonly httpRequests: Counter<HttpRequestLabels>;
  readonly storeOps: Histogram<'op'>;
  private readonly taskWait: Histogram<'kind' | 'reason'>;
  private readonly waitKinds = new BoundedLabel(MAX_TASK_WAIT_LABEL_VALUES);
  private readonly waitReasons = new BoundedLabel(MAX_TASK_WAIT_LABEL_VALUES);
  private source: { store: CenterStore; clock: Clock } | null = null;

  constructor() {
    const registers = [this.registry];
    this.httpRequests = httpRequestCounter(this.registry, 'ferry_center');
    this.storeOps = new Histogram({
      name: 'ferry_center_store_op_seconds', help: 'store operations, by operation (the CenterStore method), successful or not',
      labelNames: ['op'], buckets: [...STORE_OP_BUCKETS_SECONDS], registers,
    });
    this.taskWait = new Histogram({
      name: 'ferry_center_task_wait_seconds', help: 'how long tasks stayed queued, by kind and the reason they waited',
      labelNames: ['kind', 'reason'], buckets: [...TASK_WAIT_BUCKETS_SECONDS], registers,
    });
    // The gauges' collect() has the gauge as `this`; what they read comes through this arrow.
    const source = (): { store: CenterStore; clock: Clock } | null => this.source;
    new Gauge({
      name: 'ferry_center_tasks', help: 'unfinished tasks by state (queued, running) and kind: state="queued" is the queue depth',
      labelNames: ['state', 'kind'], registers,
      async collect() {
        this.reset();
        const s = source();
        if (s === null) return;
        for (const c of await s.store.countTasksByState()) this.set({ state: c.state, kind: c.kind }, c.count);
      },
    });
    new Gauge({
      name: 'ferry_center_host_heartbeat_age_seconds', help: `seconds since each host's last heartbeat (hosts that ever sent one; the first ${MAX_HEARTBEAT_AGE_HOSTS} by name)`,
      labelNames: ['host'], registers,
      async collect() {
        this.reset();
        const s = source();
        if (s === null) return;
        const now = s.clock();
        for (const h of await s.store.listHosts({ limit: MAX_HEARTBEAT_AGE_HOSTS })) {
          if (h.lastHeartbeatAtMs !== null) this.set({ host: h.name }, Math.max(0, now - h.lastHeartbeatAtMs) / 1000);
        }
      },
    });
  }

  /** The store (measured: see measuredStore) and clock the scrape-time gauges read. */
  readFrom(store: CenterStore, clock: Clock): void { this.source = { store, clock }; }

  /** For the task engine: a bare function, so it can be handed on as it is. */
  readonly observeTaskWait: ObserveTaskWait = (kind, reason, seconds) => {
    this.taskWait.observe({ kind: this.waitKinds.of(kind), reason: this.waitReasons.of(reason) }, Math.max(0, seconds));
  };

  /** The text exposition format (version 0.0.4), and its content type. */
  text(): Promise<string> { return metricsText(this.registry); }
  get contentType(): string { return this.registry.contentType; }
}

/**
 * The store, each method's time observed in `histogram` under the method's name (the interface's
 * methods: a bounded label). A method that throws or rejects is observed too. Properties that are
 * not methods (backend) pass through.
 */
export function measuredStore(store: CenterStore, histogram: Histogram<'op'>): CenterStore {
  const wrapped = new Map<string, unknown>();
  return new Proxy(store, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function' || typeof prop !== 'string') return value;
      let w = wrapped.get(prop);
      if (w === undefined) {
        const method = value as (...args: unknown[]) => unknown;
        w = (...args: unknown[]): unknown => {
          const end = histogram.startTimer({ op: prop });
          let result: unknown;
          try {
            result = method.apply(target, args);
          } catch (err) {
            end();
            throw err;
          }
          if (result instanceof Promise) return result.finally(() => { end(); });
          end();
          return result;
        };
        wrapped.set(prop, w);
      }
      return w;
    },
  });
}
