/**
 * The `ferry center` process, wired: the store (SQLite in the data directory, or PostgreSQL), the admin
 * token, the HTTP app on `--listen`, and the one-per-fleet heartbeat sweeper. close() stops the sweeper
 * (releasing its duty so another center takes over at once), ends event streams, closes the server and
 * then the store — in that order, so no request runs against a closed store.
 *
 * Event streams are woken by the store (`onEventsCommitted`): this center's commits, and on PostgreSQL
 * every other center's (LISTEN/NOTIFY). The event log is bounded: one center at a time (the event-prune
 * duty) deletes events older than the retention or beyond the newest maximum count, in bounded batches.
 *
 * Seams for the rest of issue 9: TLS with the center's own CA goes where the server is created; task
 * workers and the scheduler are further duties next to the sweeper.
 */
import { createAdaptorServer } from '@hono/node-server';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { FerryError, errorMessage } from '../lib/errors.js';
import { buildCenterApp } from './app.js';
import { CenterAuth } from './auth.js';
import { EventWakeups } from './events.js';
import { DEFAULT_SITE, HEARTBEAT_FLUSH_MAX_MS, Inventory } from './inventory.js';
import { openCenterStore, storeLocation } from './store/open.js';
import { MAX_LEASE_MS, type EventRetention } from './store/model.js';
import type { CenterStore, Clock } from './store/store.js';

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
  /** Events older than this are pruned (default DEFAULT_EVENT_RETENTION_MS). */
  readonly eventRetentionMs?: number;
  /** At most this many events are kept, the newest (default DEFAULT_EVENT_RETENTION_MAX_EVENTS). */
  readonly eventRetentionMaxEvents?: number;
  readonly eventPruneIntervalMs?: number;
  readonly clock?: Clock;
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
  #closed = false;

  private constructor(
    readonly store: CenterStore,
    readonly id: string,
    readonly adminTokenFile: string,
    /** The admin token: printed once at first start (by the CLI), kept here for tests and `ferry up`. */
    readonly adminToken: string,
    readonly adminTokenCreated: boolean,
    private readonly server: Server,
    private readonly inventory: Inventory,
    private readonly options: CenterOptions,
    private readonly log: (line: string) => void,
  ) {}

  static async start(options: CenterOptions): Promise<Center> {
    const heartbeatIntervalMs = options.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
    const sweepIntervalMs = options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS;
    const missed = options.missedHeartbeats ?? DEFAULT_MISSED_HEARTBEATS;
    if (!Number.isInteger(heartbeatIntervalMs) || heartbeatIntervalMs < 1) throw new FerryError('INVALID_ARGUMENT', 'the heartbeat interval must be a positive number of milliseconds');
    const pruneIntervalMs = options.eventPruneIntervalMs ?? DEFAULT_EVENT_PRUNE_INTERVAL_MS;
    const retentionMs = options.eventRetentionMs ?? DEFAULT_EVENT_RETENTION_MS;
    const retentionMax = options.eventRetentionMaxEvents ?? DEFAULT_EVENT_RETENTION_MAX_EVENTS;
    if (!Number.isInteger(sweepIntervalMs) || sweepIntervalMs < MIN_DUTY_INTERVAL_MS) throw new FerryError('INVALID_ARGUMENT', `the sweep interval must be at least ${MIN_DUTY_INTERVAL_MS} ms`);
    if (!Number.isInteger(missed) || missed < 1) throw new FerryError('INVALID_ARGUMENT', 'missed heartbeats must be a positive integer');
    if (!Number.isInteger(pruneIntervalMs) || pruneIntervalMs < MIN_DUTY_INTERVAL_MS) throw new FerryError('INVALID_ARGUMENT', `the event prune interval must be at least ${MIN_DUTY_INTERVAL_MS} ms`);
    if (!Number.isSafeInteger(retentionMs) || retentionMs < 1) throw new FerryError('INVALID_ARGUMENT', 'the event retention must be a positive number of milliseconds');
    if (!Number.isSafeInteger(retentionMax) || retentionMax < 1) throw new FerryError('INVALID_ARGUMENT', 'the most events kept must be a positive integer');
    const clock = options.clock ?? Date.now;
    const log = options.log ?? ((line) => { process.stderr.write(`${line}\n`); });
    const store = await openCenterStore(storeLocation(options.dataDir, options.db), { clock, log });
    try {
      const id = `center-${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
      const auth = new CenterAuth(store, clock);
      const admin = await auth.ensureAdminToken(options.dataDir);
      await store.upsertSite({ name: DEFAULT_SITE });
      const wakeups = new EventWakeups();
      // Steady heartbeats are written in batches, a quarter of the silence that disconnects a host at most
      // (tests' intervals are short), so that another center's sweeper never mistakes one for silence.
      const inventory = new Inventory({ store, clock, heartbeatFlushMs: Math.max(1, Math.min(HEARTBEAT_FLUSH_MAX_MS, Math.floor((heartbeatIntervalMs * missed) / 4))) });
      const shutdownHolder = new AbortController();
      const app = buildCenterApp({
        store, auth, inventory, wakeups, heartbeatIntervalMs, shutdown: shutdownHolder.signal,
        ...(options.eventPollMs !== undefined ? { eventPollMs: options.eventPollMs } : {}),
      });
      const server = createAdaptorServer({ fetch: app.fetch }) as Server;
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => { reject(new FerryError('INVALID_ARGUMENT', `cannot listen on ${options.listenHost}:${options.listenPort}: ${errorMessage(err)}`)); };
        server.once('error', onError);
        server.listen(options.listenPort, options.listenHost, () => { server.off('error', onError); resolve(); });
      });
      const center = new Center(store, id, admin.file, admin.token, admin.created, server, inventory, options, log);
      // The app's shutdown signal is the center's: ending it ends every event stream.
      center.#shutdown.signal.addEventListener('abort', () => { shutdownHolder.abort(); }, { once: true });
      // Every commit of an event, this center's or (PostgreSQL) another's, wakes the streams.
      center.#unsubscribeEvents = store.onEventsCommitted(() => { wakeups.poke(); });
      const silentAfterMs = heartbeatIntervalMs * missed;
      center.startDuty('heartbeat sweep', sweepIntervalMs, () => center.sweepOnce(silentAfterMs, sweepIntervalMs * SWEEP_LEASE_INTERVALS));
      const retention = { maxAgeMs: retentionMs, maxEvents: retentionMax, batch: EVENT_PRUNE_BATCH };
      center.startDuty('event prune', pruneIntervalMs, () => center.pruneEventsOnce(retention, Math.min(pruneIntervalMs * PRUNE_LEASE_INTERVALS, MAX_LEASE_MS)));
      log(`center ${id}: API on ${center.url}, store ${store.backend}, heartbeats every ${heartbeatIntervalMs} ms, disconnected after ${missed} missed`);
      return center;
    } catch (err) {
      await store.close().catch(() => undefined);
      throw err;
    }
  }

  get url(): string {
    const h = this.options.listenHost;
    const port = (this.server.address() as AddressInfo).port;
    return `http://${h.includes(':') ? `[${h}]` : h}:${port}`;
  }

  /** One sweep now (also what the timer runs); answers the hosts it marked disconnected, or null without the duty. */
  async sweepOnce(silentAfterMs: number, leaseMs: number): Promise<string[] | null> {
    const lease = await this.store.tryAcquireDuty(HEARTBEAT_SWEEP_DUTY, this.id, leaseMs);
    if (!lease.acquired) return null;
    const marked = await this.inventory.sweep(silentAfterMs);
    for (const h of marked) this.log(`center ${this.id}: host ${h} missed its heartbeats: disconnected, its VMs unknown`);
    return marked;
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
        if (!this.#closed) this.log(`center ${this.id}: ${what} failed (retrying): ${errorMessage(err)}`);
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
    // Hand the duties over now rather than after their leases: another center takes them at its next tick.
    for (const duty of [HEARTBEAT_SWEEP_DUTY, EVENT_PRUNE_DUTY]) await this.store.releaseDuty(duty, this.id).catch(() => false);
    this.#unsubscribeEvents();
    this.#shutdown.abort();
    await new Promise<void>((resolve) => { this.server.close(() => { resolve(); }); this.server.closeAllConnections(); });
    // No heartbeat arrives any more: write the pending times, then close the store.
    await this.inventory.close();
    await this.store.close();
  }
}
