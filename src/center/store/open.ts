/**
 * Opening the center's store: `--db postgres://…` selects PostgreSQL, otherwise an SQLite file in the
 * center's data directory. The database is migrated to this code's schema before the store is handed
 * out (and refused if a newer Ferry migrated it further).
 */
import { join } from 'node:path';
import type { Kysely } from 'kysely';
import { FerryError } from '../../lib/errors.js';
import { KyselyCenterStore, type BackendHooks, type EventSource } from './kysely-store.js';
import { listenForEvents } from './pg-listen.js';
import { migrateToLatest } from './migrate.js';
import { MIGRATIONS } from './migrations/index.js';
import type { StoreMigration } from './migrations/migration.js';
import { isPostgresUrl, openPostgresDatabase, postgresHooks, redactUrl } from './postgres.js';
import { SQLITE_FILE_NAME, openSqliteDatabase, sqliteHooks } from './sqlite.js';
import type { CenterStore, Clock } from './store.js';
import type { StoreDatabase } from './tables.js';

export type StoreLocation =
  | { readonly backend: 'sqlite'; readonly file: string }
  | { readonly backend: 'postgres'; readonly url: string };

/** Where `ferry center --data-dir <dir> [--db <url>]` keeps its store. */
export function storeLocation(dataDir: string, db?: string): StoreLocation {
  if (db === undefined || db === '') return { backend: 'sqlite', file: join(dataDir, SQLITE_FILE_NAME) };
  if (isPostgresUrl(db)) return { backend: 'postgres', url: db };
  throw new FerryError('INVALID_ARGUMENT', `--db must be a postgres://… URL (the default is SQLite in the data directory), not ${JSON.stringify(db.slice(0, 64))}`);
}

export interface OpenStoreOptions {
  /** The store's clock (ms since the epoch); Date.now unless a test drives time. */
  readonly clock?: Clock;
  /** The migrations to apply: the code's own unless a test simulates another version of Ferry. */
  readonly migrations?: readonly StoreMigration[];
  /** Where the store says what it does in the background (the event listener's connection trouble). */
  readonly log?: (line: string) => void;
}

export async function openCenterStore(location: StoreLocation, options: OpenStoreOptions = {}): Promise<CenterStore> {
  const [db, hooks, where]: [Kysely<StoreDatabase>, BackendHooks, string] = location.backend === 'sqlite'
    ? [openSqliteDatabase(location.file), sqliteHooks, location.file]
    : [openPostgresDatabase(location.url), postgresHooks, redactUrl(location.url)];
  try {
    await migrateToLatest(db as unknown as Kysely<unknown>, hooks.backend, options.migrations ?? MIGRATIONS, (err) => hooks.translateError(err, `opening the center's database ${where}`));
  } catch (err) {
    await db.destroy().catch(() => undefined);
    throw hooks.translateError(err, `opening the center's database ${where}`);
  }
  // PostgreSQL: other centers' events arrive on a LISTEN connection, opened when the first listener subscribes.
  const eventSource: EventSource | undefined = location.backend === 'postgres'
    ? (onNotify, onResync) => listenForEvents({ url: location.url, onNotify, onResync, ...(options.log !== undefined ? { log: options.log } : {}) })
    : undefined;
  return new KyselyCenterStore(db, hooks, options.clock ?? Date.now, eventSource);
}
