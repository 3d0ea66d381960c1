/**
 * Events committed by other processes, for the PostgreSQL backend: one dedicated connection (not from
 * the pool: a LISTEN belongs to its session) LISTENs on EVENTS_CHANNEL, on which every appending
 * transaction does `pg_notify` (./kysely-store.ts). PostgreSQL delivers a notification only when its
 * transaction commits, in commit order, so a notified event is always readable by the time it arrives.
 *
 * A notification is only a hint ("look now"); the events table stays the truth. Whatever is missed while
 * the connection is down (a server restart, a network cut, pg_terminate_backend) is made up for by one
 * `onResync` call after each (re)connection: the listeners read the store again. Reconnection uses capped
 * exponential backoff with jitter, so a center does not hammer a server that is restarting.
 */
import pg from 'pg';
import { errorMessage } from '../../lib/errors.js';
import { PG_CONNECT_TIMEOUT_MS } from './postgres.js';

/** The channel every center of one database NOTIFYs and LISTENs on. */
export const EVENTS_CHANNEL = 'ferry_events';
/** How the listening connection shows in pg_stat_activity (tests terminate it by this name). */
export const EVENTS_LISTEN_APPLICATION_NAME = 'ferry-center-events';
/** First retry after a lost connection: quick enough that a blip costs a fraction of a second. */
export const LISTEN_RETRY_MIN_MS = 250;
/** Longest pause between retries: a server down for long is tried twice a minute, not hammered. */
export const LISTEN_RETRY_MAX_MS = 30_000;
/**
 * TCP keepalive on the listening connection: it only receives, so without probes a silently dead peer
 * (a cut network) would never be noticed and the center would wait for notifications forever.
 */
const LISTEN_KEEPALIVE_DELAY_MS = 10_000;

export interface EventListenerHandle {
  close(): Promise<void>;
}

export interface PgEventListenerOptions {
  readonly url: string;
  /** Each notification's payload (`<origin>:<event id>`). */
  readonly onNotify: (payload: string) => void;
  /** After every successful LISTEN (the first, and each after a reconnection): look at the store once. */
  readonly onResync: () => void;
  /** The first failure of a run of failures, and the recovery after it (not every retry). */
  readonly log?: (line: string) => void;
}

/** Start listening (in the background: connection failures are retried, never thrown). */
export function listenForEvents(o: PgEventListenerOptions): EventListenerHandle {
  let closed = false;
  let client: pg.Client | null = null;
  let retryMs = LISTEN_RETRY_MIN_MS;
  let timer: NodeJS.Timeout | null = null;
  let failing = false;
  let connecting: Promise<void> = Promise.resolve();

  const schedule = (err: unknown): void => {
    if (closed || timer !== null) return;
    if (!failing) o.log?.(`center events: the LISTEN connection failed (retrying with backoff): ${errorMessage(err)}`);
    failing = true;
    // Full jitter on the upper half: centers that lost the server together do not come back in step.
    const delay = retryMs / 2 + Math.random() * (retryMs / 2);
    retryMs = Math.min(retryMs * 2, LISTEN_RETRY_MAX_MS);
    timer = setTimeout(() => { timer = null; connecting = connect(); }, delay);
  };

  const connect = async (): Promise<void> => {
    if (closed) return;
    const c = new pg.Client({
      connectionString: o.url, connectionTimeoutMillis: PG_CONNECT_TIMEOUT_MS, application_name: EVENTS_LISTEN_APPLICATION_NAME,
      keepAlive: true, keepAliveInitialDelayMillis: LISTEN_KEEPALIVE_DELAY_MS,
    });
    let lost = false;
    const onLost = (err: unknown): void => {
      if (lost) return;
      lost = true;
      if (client === c) client = null;
      c.removeAllListeners('notification');
      void c.end().catch(() => undefined);
      schedule(err);
    };
    // 'error' (terminated by the server, a reset) and 'end' (closed) may both come, in either order.
    c.on('error', onLost);
    c.on('end', () => { onLost(new Error('the connection ended')); });
    c.on('notification', (n) => { if (n.channel === EVENTS_CHANNEL && n.payload !== undefined) o.onNotify(n.payload); });
    try {
      await c.connect();
      await c.query(`listen ${EVENTS_CHANNEL}`);
    } catch (err) {
      onLost(err);
      return;
    }
    if (closed) { await c.end().catch(() => undefined); return; }
    if (lost) return;
    client = c;
    retryMs = LISTEN_RETRY_MIN_MS;
    if (failing) o.log?.('center events: the LISTEN connection is back');
    failing = false;
    // Notifications sent while nobody listened are gone: have the store read once.
    o.onResync();
  };

  connecting = connect();
  return {
    async close(): Promise<void> {
      closed = true;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      // A connection being made ends itself once it sees `closed`.
      await connecting;
      const c = client;
      client = null;
      if (c !== null) {
        c.removeAllListeners('end');
        c.removeAllListeners('error');
        c.on('error', () => undefined);
        await c.end().catch(() => undefined);
      }
    },
  };
}
