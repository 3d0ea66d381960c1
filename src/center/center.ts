/**
 * The `ferry center` process, wired: the store (SQLite in the data directory, or PostgreSQL), the admin
 * token, the HTTP app on `--listen`, and the one-per-fleet heartbeat sweeper. close() stops the sweeper
 * (releasing its duty so another center takes over at once), ends event streams, closes the server and
 * then the store — in that order, so no request runs against a closed store.
 *
 * The API is HTTPS only, with a server certificate made at each start and signed by the fleet's CA
 * (./ca.ts, kept in the store). It asks every client for a certificate but admits one without (API-token
 * clients have none): the heartbeat route checks the host's (./auth.ts), the others need none.
 *
 * Event streams are woken by the store (`onEventsCommitted`): this center's commits, and on PostgreSQL
 * every other center's (LISTEN/NOTIFY). The event log is bounded: one center at a time (the event-prune
 * duty) deletes events older than the retention or beyond the newest maximum count, in bounded batches.
 * Task workers claim tasks of any center; the scheduler duty admits them (docs/design/orchestration.md).
 */
import { createAdaptorServer } from '@hono/node-server';
import { createServer as createHttpsServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { HTTP_SERVER_IDLE_MS } from '../api/tls.js';
import { MobilityManager } from './mobility/paths.js';
import { releaseExpiredPaths } from './mobility/expiry.js';
import { MIN_MIGRATION_PATH_TTL_MS, mobilityPaths } from './tasks/migration-path.js';
import { MAX_PATH_TTL_MS } from '../dataplane/path/spec.js';
import { buildCenterApp } from './app.js';
import { CenterAuth } from './auth.js';
import { CenterCa } from './ca.js';
import { EventWakeups } from './events.js';
import { HostControl } from './host-control.js';
import { DEFAULT_BUDGETS, budgetLimitsSchema, type BudgetLimits } from './budgets.js';
import { SCHEDULER_DUTY, Scheduler } from './scheduler.js';
import type { TaskWorkers } from './tasks/workers.js';
import { buildWorkers } from './tasks/handlers.js';
import { DEFAULT_SITE, HEARTBEAT_FLUSH_MAX_MS, Inventory } from './inventory.js';
import { openCenterStore, storeLocation } from './store/open.js';
import { MAX_LEASE_MS, type EventRetention } from './store/model.js';
import type { CenterStore, Clock } from './store/store.js';
import { createLogger, lineLog, loggerFromLines, type Logger } from '../lib/logger.js';
import { CenterMetrics, measuredStore } from './metrics.js';

/** Hosts heartbeat this often unless the center says otherwise (it tells them in every answer). */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 5000;
/** A host that missed this many heartbeats in a row is `disconnected`: one lost packet is not a dead host. */
export const DEFAULT_MISSED_HEARTBEATS = 3;
/** The sweeper looks this often; a silent host is marked within missed × interval + this. */
export const DEFAULT_SWEEP_INTERVAL_MS = 1000;
/** The sweeper's duty name (one center at a time sweeps). */
export const HEARTBEAT_SWEEP_DUTY = 'heartbeat-sweep';
/** The duty's lease, in sweep intervals: renewed every sweep, so a dead center's duty is free after a few. */
const SWEEP_LEASE_INTERVALS = 3;
/** The scheduler looks this often even when nothing woke it (work enqueued by other centers). */
export const DEFAULT_SCHEDULER_INTERVAL_MS = 500;
/** The scheduler duty outlives a few passes: a pass may take a while on a large queue. */
const MIN_SCHEDULER_LEASE_MS = 5000;
/** Shortest lease the store accepts is 10 ms; a duty's interval below this makes a lease too short to renew. */
const MIN_DUTY_INTERVAL_MS = 10;

/**
 * Events are kept a week by default: a client (a UI left open, `ferry task watch`) that reconnects within
 * it misses nothing; one older is told events were lost (docs/design/center-api.md) and refetches.
 */
export const DEFAULT_EVENT_RETENTION_MS = 7 * 24 * 60 * 60_000;
/**
 * And at most this many (the newest): a busy fleet's log stays bounded in rows as well as in time —
 * 100,000 events of at most 7 KiB (MAX_EVENT_PAYLOAD_BYTES) is under 700 MiB, a few tens of MiB typically.
 */
export const DEFAULT_EVENT_RETENTION_MAX_EVENTS = 100_000;
/** The pruner looks this often: the log overshoots its bounds by at most a minute's worth of events. */
export const DEFAULT_EVENT_PRUNE_INTERVAL_MS = 60_000;
/** The pruner's duty name (one center at a time prunes). */
export const EVENT_PRUNE_DUTY = 'event-prune';
/** Events one prune statement deletes: short statements, so readers and writers never wait long for it. */
export const EVENT_PRUNE_BATCH = 1000;
/** Batches one prune run deletes at most: a huge backlog is worked off over several runs, each bounded. */
const MAX_PRUNE_BATCHES_PER_RUN = 20;
/** The pruner's lease in intervals (renewed at every run, like the sweeper's). */
const PRUNE_LEASE_INTERVALS = 3;

export interface CenterOptions {
  readonly dataDir: string;
  readonly listenHost: string;
  readonly listenPort: number;
  /** postgres://… ; default: SQLite in the data directory. */
  readonly db?: string;
  readonly heartbeatIntervalMs?: number;
  readonly missedHeartbeats?: number;
  readonly sweepIntervalMs?: number;
  readonly eventPollMs?: number;
  /** Budgets of admission (defaults: ./budgets.ts). */
  readonly budgets?: Partial<BudgetLimits>;
  readonly taskConcurrency?: number;
  /** A task's claim lease: a killed center's tasks are taken over after about this long. */
  readonly taskLeaseMs?: number;
  /** How often the scheduler (one center at a time) admits queued work. */
  readonly schedulerIntervalMs?: number;
  /** Events older than this are pruned (default DEFAULT_EVENT_RETENTION_MS). */
  readonly eventRetentionMs?: number;
  /** At most this many events are kept, the newest (default DEFAULT_EVENT_RETENTION_MAX_EVENTS). */
  readonly eventRetentionMaxEvents?: number;
  readonly eventPruneIntervalMs?: number;
  readonly clock?: Clock;
  /** How long a mobility operation's virtual path lives unless renewed (default DEFAULT_MIGRATION_PATH_TTL_MS; renewed every third of it). */
  readonly pathTtlMs?: number;
  /**
   * Where the center logs (default: JSON lines on stderr, pretty on a terminal); every line is bound to
   * the center's id. Task workers log through `center.logger.child({ taskId })`.
   */
  readonly logger?: Logger;
  /** An older form of `logger`: each line's message only. Ignored when `logger` is given. */
  readonly log?: (line: string) => void;
}

/** A duty run on a timer: one run at a time (a slow store makes the next wait, not pile up). */
interface DutyLoop {
  timer: NodeJS.Timeout | null;
  running: Promise<void>;
}

export class Center {
  readonly #shutdown = new AbortController();
  readonly #duties: DutyLoop[] = [];
  #unsubscribeEvents: () => void = () => undefined;
  #scheduling: Promise<void> = Promise.resolve();
  #workers: TaskWorkers | null = null;
  #hostControl: HostControl | null = null;
  #closed = false;

  private constructor(
    readonly store: CenterStore,
    readonly id: string,
    readonly adminTokenFile: string,
    /** The admin token: printed once at first start (by the CLI), kept here for tests and `ferry up`. */
    readonly adminToken: string,
    readonly adminTokenCreated: boolean,
    private readonly server: Server,
    /** The fleet's CA: clients and hosts trust its certificate (fingerprint shown at start). */
    readonly ca: CenterCa,
    /** Whether this start made the CA (the fleet's first center on an empty store). */
    readonly caCreated: boolean,
    private readonly inventory: Inventory,
    private readonly options: CenterOptions,
    /** The center's logger, bound to its id. */
    readonly logger: Logger,
    /** Its metrics; the task engine reports waits with `metrics.observeTaskWait`. */
    readonly metrics: CenterMetrics,
  ) {}

  static async start(options: CenterOptions): Promise<Center> {
    const heartbeatIntervalMs = options.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
    const sweepIntervalMs = options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS;
    const missed = options.missedHeartbeats ?? DEFAULT_MISSED_HEARTBEATS;
    if (!Number.isInteger(heartbeatIntervalMs) || heartbeatIntervalMs < 1) throw new FerryError('INVALID_ARGUMENT', 'the heartbeat interval must be a positive number of milliseconds');
    if (!Number.isInteger(sweepIntervalMs) || sweepIntervalMs < MIN_DUTY_INTERVAL_MS) throw new FerryError('INVALID_ARGUMENT', `the sweep interval must be at least ${MIN_DUTY_INTERVAL_MS} ms`);
    if (!Number.isInteger(missed) || missed < 1) throw new FerryError('INVALID_ARGUMENT', 'missed heartbeats must be a positive integer');
    const pruneIntervalMs = options.eventPruneIntervalMs ?? DEFAULT_EVENT_PRUNE_INTERVAL_MS;
    const retentionMs = options.eventRetentionMs ?? DEFAULT_EVENT_RETENTION_MS;
    const retentionMax = options.eventRetentionMaxEvents ?? DEFAULT_EVENT_RETENTION_MAX_EVENTS;
    if (!Number.isInteger(pruneIntervalMs) || pruneIntervalMs < MIN_DUTY_INTERVAL_MS) throw new FerryError('INVALID_ARGUMENT', `the event prune interval must be at least ${MIN_DUTY_INTERVAL_MS} ms`);
    if (!Number.isSafeInteger(retentionMs) || retentionMs < 1) throw new FerryError('INVALID_ARGUMENT', 'the event retention must be a positive number of milliseconds');
    if (!Number.isSafeInteger(retentionMax) || retentionMax < 1) throw new FerryError('INVALID_ARGUMENT', 'the most events kept must be a positive integer');
    const clock = options.clock ?? Date.now;
    if (options.pathTtlMs !== undefined && (!Number.isSafeInteger(options.pathTtlMs) || options.pathTtlMs < MIN_MIGRATION_PATH_TTL_MS || options.pathTtlMs > MAX_PATH_TTL_MS)) {
      throw new FerryError('INVALID_ARGUMENT', `a path's time to live must be ${MIN_MIGRATION_PATH_TTL_MS} ms to ${MAX_PATH_TTL_MS} ms (it is renewed every third of it)`);
    }
    const metrics = new CenterMetrics();
    const base = options.logger ?? (options.log !== undefined ? loggerFromLines(options.log) : createLogger());
    // Every store call the center makes is timed (ferry_center_store_op_seconds).
    const store = measuredStore(await openCenterStore(storeLocation(options.dataDir, options.db), { clock, log: lineLog(base) }), metrics.storeOps);
    metrics.readFrom(store, clock);
    try {
      const id = `center-${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
      const { ca, created: caCreated } = await CenterCa.ensure(store);
      const serverCert = await ca.serverCertificate(options.listenHost);
      const auth = new CenterAuth(store, clock, ca);
      const admin = await auth.ensureAdminToken(options.dataDir);
      await store.upsertSite({ name: DEFAULT_SITE });
      const wakeups = new EventWakeups();
      // Steady heartbeats are written in batches, a quarter of the silence that disconnects a host at most
      // (tests' intervals are short), so that another center's sweeper never mistakes one for silence.
      const inventory = new Inventory({ store, clock, heartbeatFlushMs: Math.max(1, Math.min(HEARTBEAT_FLUSH_MAX_MS, Math.floor((heartbeatIntervalMs * missed) / 4))) });
      const shutdownHolder = new AbortController();
      const hostControl = await HostControl.open(store, ca.certPem);
      const app = buildCenterApp({
        store, auth, ca, inventory, wakeups, heartbeatIntervalMs, hostControl, shutdown: shutdownHolder.signal, metrics,
        pathHosts: async (pathId) => {
          const row = await store.getPath(pathId).catch((err: unknown) => { if (isFerryError(err, 'NOT_FOUND')) return null; throw err; });
          return row === null ? null : { source: row.sourceHost, target: row.targetHost };
        },
        ...(options.eventPollMs !== undefined ? { eventPollMs: options.eventPollMs } : {}),
      });
      const server = createAdaptorServer({
        fetch: app.fetch, createServer: createHttpsServer,
        serverOptions: {
          key: serverCert.keyPem, cert: serverCert.certPem, ca: [ca.certPem],
          // Ask for a client certificate, admit a client without one: each route decides (./app.ts).
          requestCert: true, rejectUnauthorized: false,
        },
      }) as Server;
      server.keepAliveTimeout = HTTP_SERVER_IDLE_MS;
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => { reject(new FerryError('INVALID_ARGUMENT', `cannot listen on ${options.listenHost}:${options.listenPort}: ${errorMessage(err)}`)); };
        server.once('error', onError);
        server.listen(options.listenPort, options.listenHost, () => { server.off('error', onError); resolve(); });
      });
      const center = new Center(store, id, admin.file, admin.token, admin.created, server, ca, caCreated, inventory, options, base.child({ center: id }), metrics);
      center.#hostControl = hostControl;
      const paths = mobilityPaths(store, new MobilityManager(store));
      center.#workers = buildWorkers({ store, wakeups, hostControl, paths, centerId: id, logger: center.logger, observeWait: metrics.observeTaskWait, options });
      center.#workers.start();
      const limits = budgetLimitsSchema.parse({ ...DEFAULT_BUDGETS, ...(options.budgets ?? {}) });
      center.startScheduler(new Scheduler(store, limits, lineLog(center.logger)), wakeups, options.schedulerIntervalMs ?? DEFAULT_SCHEDULER_INTERVAL_MS);
      // The app's shutdown signal is the center's: ending it ends every event stream.
      center.#shutdown.signal.addEventListener('abort', () => { shutdownHolder.abort(); }, { once: true });
      // Every commit of an event, this center's or (PostgreSQL) another's, wakes the streams.
      center.#unsubscribeEvents = store.onEventsCommitted(() => { wakeups.poke(); });
      const silentAfterMs = heartbeatIntervalMs * missed;
      center.startDuty('heartbeat sweep', sweepIntervalMs, () => center.sweepOnce(silentAfterMs, sweepIntervalMs * SWEEP_LEASE_INTERVALS));
      const retention = { maxAgeMs: retentionMs, maxEvents: retentionMax, batch: EVENT_PRUNE_BATCH };
      center.startDuty('event prune', pruneIntervalMs, () => center.pruneEventsOnce(retention, Math.min(pruneIntervalMs * PRUNE_LEASE_INTERVALS, MAX_LEASE_MS)));
      center.logger.info(`center ${id}: API on ${center.url}, CA ${caCreated ? 'created' : 'loaded'}, fingerprint ${ca.fingerprint}, store ${store.backend}, heartbeats every ${heartbeatIntervalMs} ms, disconnected after ${missed} missed`);
      return center;
    } catch (err) {
      await store.close().catch(() => undefined);
      throw err;
    }
  }

  get url(): string {
    const h = this.options.listenHost;
    const port = (this.server.address() as AddressInfo).port;
    return `https://${h.includes(':') ? `[${h}]` : h}:${port}`;
  }

  /** One sweep now (also what the timer runs); answers the hosts it marked disconnected, or null without the duty. */
  async sweepOnce(silentAfterMs: number, leaseMs: number): Promise<string[] | null> {
    const lease = await this.store.tryAcquireDuty(HEARTBEAT_SWEEP_DUTY, this.id, leaseMs);
    if (!lease.acquired) return null;
    const marked = await this.inventory.sweep(silentAfterMs);
    for (const h of marked) this.logger.warn(`center ${this.id}: host ${h} missed its heartbeats: disconnected, its VMs unknown`, { host: h });
    if (this.#hostControl !== null) await releaseExpiredPaths(this.store, this.#hostControl, (this.options.clock ?? Date.now)(), lineLog(this.logger));
    return marked;
  }

  /** The scheduler duty: admit queued work, re-queue dead workers' tasks; woken by enqueues and finishes. */
  private startScheduler(scheduler: Scheduler, wakeups: EventWakeups, intervalMs: number): void {
    const leaseMs = Math.max(intervalMs * SWEEP_LEASE_INTERVALS, MIN_SCHEDULER_LEASE_MS);
    const tick = async (): Promise<void> => {
      while (!this.#closed) {
        const generation = wakeups.generation;
        try {
          const lease = await this.store.tryAcquireDuty(SCHEDULER_DUTY, this.id, leaseMs);
          if (lease.acquired) {
            const r = await scheduler.pass();
            if (r.admitted > 0 || r.requeued > 0) wakeups.poke();
          }
        } catch (err) {
          if (!this.#closed) this.logger.warn(`center ${this.id}: scheduler pass failed (retrying): ${errorMessage(err)}`);
        }
        await wakeups.wait(generation, intervalMs, this.#shutdown.signal);
      }
    };
    this.#scheduling = tick();
  }

  /**
   * One prune run now (also what the timer runs): deletes events beyond the retention, batch by batch,
   * at most MAX_PRUNE_BATCHES_PER_RUN batches; answers how many, or null without the duty.
   */
  async pruneEventsOnce(retention: EventRetention, leaseMs: number): Promise<number | null> {
    const lease = await this.store.tryAcquireDuty(EVENT_PRUNE_DUTY, this.id, leaseMs);
    if (!lease.acquired) return null;
    let pruned = 0;
    for (let i = 0; i < MAX_PRUNE_BATCHES_PER_RUN && !this.#closed; i++) {
      const n = await this.store.pruneEvents(retention);
      pruned += n;
      if (n < retention.batch) break;
    }
    return pruned;
  }

  private startDuty(what: string, intervalMs: number, run: () => Promise<unknown>): void {
    const loop: DutyLoop = { timer: null, running: Promise.resolve() };
    const tick = (): void => {
      loop.running = run().then(() => undefined, (err: unknown) => {
        if (!this.#closed) this.logger.warn(`center ${this.id}: ${what} failed (retrying): ${errorMessage(err)}`);
      }).finally(() => {
        if (!this.#closed) loop.timer = setTimeout(tick, intervalMs);
      });
    };
    loop.timer = setTimeout(tick, intervalMs);
    this.#duties.push(loop);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const d of this.#duties) if (d.timer !== null) clearTimeout(d.timer);
    await Promise.all(this.#duties.map((d) => d.running));
    this.#shutdown.abort();
    await this.#scheduling;
    await this.#workers?.close();
    // Hand the duties over now rather than after their leases: another center takes them at its next tick.
    for (const duty of [SCHEDULER_DUTY, HEARTBEAT_SWEEP_DUTY, EVENT_PRUNE_DUTY]) await this.store.releaseDuty(duty, this.id).catch(() => false);
    this.#unsubscribeEvents();
    await new Promise<void>((resolve) => { this.server.close(() => { resolve(); }); this.server.closeAllConnections(); });
    // No heartbeat arrives any more: write the pending times, then close the store.
    await this.inventory.close();
    await this.store.close();
  }
}
