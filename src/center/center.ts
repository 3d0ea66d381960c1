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
 * Seams for the rest of issue 9: task workers and the scheduler are further duties next to the sweeper; LISTEN/NOTIFY pokes `wakeups`.
 */
import { createAdaptorServer } from '@hono/node-server';
import { createServer as createHttpsServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { FerryError, errorMessage } from '../lib/errors.js';
import { buildCenterApp } from './app.js';
import { CenterAuth } from './auth.js';
import { CenterCa } from './ca.js';
import { EventWakeups } from './events.js';
import { HostControl } from './host-control.js';
import { DEFAULT_BUDGETS, budgetLimitsSchema, type BudgetLimits } from './budgets.js';
import { SCHEDULER_DUTY, Scheduler } from './scheduler.js';
import type { TaskWorkers } from './tasks/workers.js';
import { buildWorkers } from './tasks/handlers.js';
import { DEFAULT_SITE, Inventory } from './inventory.js';
import { openCenterStore, storeLocation } from './store/open.js';
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
/** Shortest lease the store accepts is 10 ms; a sweep interval below this makes a lease too short to renew. */
const MIN_SWEEP_INTERVAL_MS = 10;

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
  readonly clock?: Clock;
  /**
   * Where the center logs (default: JSON lines on stderr, pretty on a terminal); every line is bound to
   * the center's id. Task workers log through `center.logger.child({ taskId })`.
   */
  readonly logger?: Logger;
  /** An older form of `logger`: each line's message only. Ignored when `logger` is given. */
  readonly log?: (line: string) => void;
}

export class Center {
  readonly #shutdown = new AbortController();
  #sweeper: NodeJS.Timeout | null = null;
  #scheduling: Promise<void> = Promise.resolve();
  #workers: TaskWorkers | null = null;
  #sweeping: Promise<void> = Promise.resolve();
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
    if (!Number.isInteger(sweepIntervalMs) || sweepIntervalMs < MIN_SWEEP_INTERVAL_MS) throw new FerryError('INVALID_ARGUMENT', `the sweep interval must be at least ${MIN_SWEEP_INTERVAL_MS} ms`);
    if (!Number.isInteger(missed) || missed < 1) throw new FerryError('INVALID_ARGUMENT', 'missed heartbeats must be a positive integer');
    const clock = options.clock ?? Date.now;
    const metrics = new CenterMetrics();
    // Every store call the center makes is timed (ferry_center_store_op_seconds).
    const store = measuredStore(await openCenterStore(storeLocation(options.dataDir, options.db), { clock }), metrics.storeOps);
    metrics.readFrom(store, clock);
    try {
      const id = `center-${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
      const { ca, created: caCreated } = await CenterCa.ensure(store);
      const serverCert = await ca.serverCertificate(options.listenHost);
      const auth = new CenterAuth(store, clock, ca);
      const admin = await auth.ensureAdminToken(options.dataDir);
      await store.upsertSite({ name: DEFAULT_SITE });
      const wakeups = new EventWakeups();
      const inventory = new Inventory({ store, wakeups, clock });
      const shutdownHolder = new AbortController();
      const hostControl = await HostControl.open(store, ca.certPem);
      const app = buildCenterApp({
        store, auth, ca, inventory, wakeups, heartbeatIntervalMs, hostControl, shutdown: shutdownHolder.signal, metrics,
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
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => { reject(new FerryError('INVALID_ARGUMENT', `cannot listen on ${options.listenHost}:${options.listenPort}: ${errorMessage(err)}`)); };
        server.once('error', onError);
        server.listen(options.listenPort, options.listenHost, () => { server.off('error', onError); resolve(); });
      });
      const base = options.logger ?? (options.log !== undefined ? loggerFromLines(options.log) : createLogger());
      const center = new Center(store, id, admin.file, admin.token, admin.created, server, ca, caCreated, inventory, options, base.child({ center: id }), metrics);
      center.#workers = buildWorkers({ store, wakeups, hostControl, centerId: id, logger: center.logger, observeWait: metrics.observeTaskWait, options });
      center.#workers.start();
      const limits = budgetLimitsSchema.parse({ ...DEFAULT_BUDGETS, ...(options.budgets ?? {}) });
      center.startScheduler(new Scheduler(store, limits, lineLog(center.logger)), wakeups, options.schedulerIntervalMs ?? DEFAULT_SCHEDULER_INTERVAL_MS);
      // The app's shutdown signal is the center's: ending it ends every event stream.
      center.#shutdown.signal.addEventListener('abort', () => { shutdownHolder.abort(); }, { once: true });
      center.startSweeper(sweepIntervalMs, heartbeatIntervalMs * missed);
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

  private startSweeper(intervalMs: number, silentAfterMs: number): void {
    const leaseMs = intervalMs * SWEEP_LEASE_INTERVALS;
    const tick = (): void => {
      // One sweep at a time: a slow store makes the next tick wait, not pile up.
      this.#sweeping = this.sweepOnce(silentAfterMs, leaseMs).then(() => undefined, (err: unknown) => {
        if (!this.#closed) this.logger.warn(`center ${this.id}: heartbeat sweep failed (retrying): ${errorMessage(err)}`);
      }).finally(() => {
        if (!this.#closed) this.#sweeper = setTimeout(tick, intervalMs);
      });
    };
    this.#sweeper = setTimeout(tick, intervalMs);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#sweeper !== null) clearTimeout(this.#sweeper);
    await this.#sweeping;
    this.#shutdown.abort();
    await this.#scheduling;
    await this.#workers?.close();
    await this.store.releaseDuty(SCHEDULER_DUTY, this.id).catch(() => false);
    // Hand the duty over now rather than after its lease: another center sweeps at its next tick.
    await this.store.releaseDuty(HEARTBEAT_SWEEP_DUTY, this.id).catch(() => false);
    this.#shutdown.abort();
    await new Promise<void>((resolve) => { this.server.close(() => { resolve(); }); this.server.closeAllConnections(); });
    await this.store.close();
  }
}
