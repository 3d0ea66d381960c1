/**
 * The PostgreSQL backend (npm pg 8), for fleets that outgrow one machine and for several centers
 * sharing one database. A pool per store; int8 columns (times, ids) read back as numbers (pg's
 * default is strings, since an int8 may exceed 2^53 — ours never do, and a value that would is refused
 * as a corrupt row rather than rounded).
 */
import pg from 'pg';
import { Kysely, PostgresDialect } from 'kysely';
import { FerryError, errnoCode, errorMessage } from '../../lib/errors.js';
import type { BackendHooks } from './kysely-store.js';
import type { StoreDatabase } from './tables.js';

/** Connections per center: claims, heartbeats and API reads in parallel, without crowding a shared server (its default max_connections is 100). */
export const PG_POOL_MAX_CONNECTIONS = 10;
/** A database that does not accept a connection within this is unavailable, not a hang. */
export const PG_CONNECT_TIMEOUT_MS = 5000;
/** An idle connection is closed after this (a center at rest holds few). */
export const PG_IDLE_TIMEOUT_MS = 30_000;
/** A `postgres://…` URL is configuration, not data: bounded like a path. */
export const MAX_PG_URL_CHARS = 2048;

const INT8_OID = 20;

function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new FerryError('STORE_IO', `the database holds an integer beyond 2^53 (${text})`);
  return n;
}

/** Per pool, not pg's global parsers: nothing else in the process is affected. */
function poolTypes(): pg.TypeOverrides {
  const types = new pg.TypeOverrides();
  types.setTypeParser(INT8_OID, 'text', parseInt8);
  return types;
}

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return '(an unparsable URL)';
  }
}

// SQLSTATE classes and Node errors that mean "the database cannot be reached now", as opposed to "it refused this".
const UNAVAILABLE_SQLSTATE = /^(08|57P0|53300|3D000|28)/;
const UNAVAILABLE_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'EAI_AGAIN', 'ENOENT']);
const UNAVAILABLE_MESSAGE = /timeout exceeded when trying to connect|Connection terminated|Client has encountered a connection error|Cannot use a pool after calling end/;

function translatePgError(err: unknown, what: string): FerryError {
  if (err instanceof FerryError) return err;
  const code = errnoCode(err) ?? '';
  const message = `${what}: ${errorMessage(err)}`;
  if (code === '23505') return new FerryError('ALREADY_EXISTS', message, {}, { cause: err });
  if (code === '23503') return new FerryError('NOT_FOUND', `${message} (it refers to something that does not exist, or is still referred to)`, {}, { cause: err });
  // Serialization failures and deadlocks: the write lost a race; the caller may retry.
  if (code === '40001' || code === '40P01' || code === '55P03') return new FerryError('BUSY', message, {}, { cause: err });
  if (UNAVAILABLE_SQLSTATE.test(code) || UNAVAILABLE_ERRNO.has(code) || (err instanceof Error && UNAVAILABLE_MESSAGE.test(err.message))) {
    return new FerryError('STORE_UNAVAILABLE', message, {}, { cause: err });
  }
  return new FerryError('STORE_IO', message, {}, { cause: err });
}

export const postgresHooks: BackendHooks = { backend: 'postgres', rowLocks: true, notifiesEvents: true, translateError: translatePgError };

export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//.test(url);
}

/** A pool for `url`; no connection is made until the first query. */
export function openPostgresDatabase(url: string): Kysely<StoreDatabase> {
  if (url.length > MAX_PG_URL_CHARS || !isPostgresUrl(url)) {
    throw new FerryError('INVALID_ARGUMENT', `the database URL must be postgres://… (at most ${MAX_PG_URL_CHARS} characters): ${redactUrl(url.slice(0, MAX_PG_URL_CHARS))}`);
  }
  const pool = new pg.Pool({
    connectionString: url, max: PG_POOL_MAX_CONNECTIONS, connectionTimeoutMillis: PG_CONNECT_TIMEOUT_MS,
    idleTimeoutMillis: PG_IDLE_TIMEOUT_MS, application_name: 'ferry-center', types: poolTypes(),
  });
  // An idle connection that breaks (server restart, network) is dropped by the pool and the next
  // query opens another; without a listener the 'error' event would crash the process.
  pool.on('error', () => undefined);
  return new Kysely<StoreDatabase>({ dialect: new PostgresDialect({ pool }) });
}
