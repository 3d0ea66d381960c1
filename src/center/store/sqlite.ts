/**
 * The embedded backend: one SQLite file in the center's data directory (better-sqlite3 12; 13 crashes
 * on Node 20). WAL mode (readers never block the writer, and a crash leaves the last committed state),
 * foreign keys on (SQLite has them off by default, per connection), synchronous=FULL (a task or event
 * the center acknowledged survives a power cut, not only a crash of the process).
 *
 * Claims are safe without row locks because every write transaction is BEGIN IMMEDIATE: it takes the
 * database's single write lock at its start, so the read that picks a task and the write that claims
 * it happen with no other writer in between — in this process (Kysely's SQLite driver also serialises
 * its one connection) and in any other process that opens the file (it waits up to SQLITE_BUSY_TIMEOUT_MS).
 *
 * One store per file per process: better-sqlite3 waits for a lock synchronously, so a second connection
 * in the same process waiting for the first would block the very event loop the first needs to commit
 * (a stall until the busy timeout). Opening the same file twice in one process is refused; the center
 * shares its one store.
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { CompiledQuery, Kysely, SqliteDialect, SqliteDriver, type DatabaseConnection, type Driver, type SqliteDialectConfig } from 'kysely';
import { FerryError, errnoCode, errorMessage } from '../../lib/errors.js';
import type { BackendHooks } from './kysely-store.js';
import type { StoreDatabase } from './tables.js';

/** How long a write waits for another connection's write lock before it fails (STORE_UNAVAILABLE). */
export const SQLITE_BUSY_TIMEOUT_MS = 5000;
/** The store's file in the center's data directory. */
export const SQLITE_FILE_NAME = 'center.sqlite';

/** The files this process has open (resolved paths): one store each. */
const OPEN_FILES = new Set<string>();

/** Kysely's SQLite driver, but every transaction begins IMMEDIATE (see above), and closing frees the file's slot. */
class ImmediateSqliteDriver extends SqliteDriver {
  constructor(config: SqliteDialectConfig, private readonly onDestroy: () => void) {
    super(config);
  }
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }
  override async destroy(): Promise<void> {
    try {
      await super.destroy();
    } finally {
      this.onDestroy();
    }
  }
}

class ImmediateSqliteDialect extends SqliteDialect {
  readonly #config: SqliteDialectConfig;
  readonly #onDestroy: () => void;
  constructor(config: SqliteDialectConfig, onDestroy: () => void) {
    super(config);
    this.#config = config;
    this.#onDestroy = onDestroy;
  }
  override createDriver(): Driver {
    return new ImmediateSqliteDriver(this.#config, this.#onDestroy);
  }
}

function translateSqliteError(err: unknown, what: string): FerryError {
  if (err instanceof FerryError) return err;
  const code = errnoCode(err) ?? '';
  const message = `${what}: ${errorMessage(err)}`;
  if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE') return new FerryError('ALREADY_EXISTS', message, {}, { cause: err });
  if (code === 'SQLITE_CONSTRAINT_FOREIGNKEY') return new FerryError('NOT_FOUND', `${message} (it refers to something that does not exist, or is still referred to)`, {}, { cause: err });
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED') || code.startsWith('SQLITE_CANTOPEN')) return new FerryError('STORE_UNAVAILABLE', message, {}, { cause: err });
  // better-sqlite3 throws a TypeError once its database is closed.
  if (err instanceof TypeError && /database connection is not open/.test(err.message)) return new FerryError('STORE_UNAVAILABLE', message, {}, { cause: err });
  return new FerryError('STORE_IO', message, {}, { cause: err });
}

export const sqliteHooks: BackendHooks = { backend: 'sqlite', rowLocks: false, notifiesEvents: false, translateError: translateSqliteError };

/** Open (creating it and its directory if needed) the SQLite file; not yet migrated. */
export function openSqliteDatabase(file: string): Kysely<StoreDatabase> {
  const key = resolve(file);
  if (OPEN_FILES.has(key)) throw new FerryError('BUSY', `the center's database ${file} is already open in this process: share that store`, { file });
  let sqlite: Database.Database;
  try {
    mkdirSync(dirname(file), { recursive: true });
    sqlite = new Database(file, { timeout: SQLITE_BUSY_TIMEOUT_MS });
  } catch (err) {
    throw new FerryError('STORE_UNAVAILABLE', `cannot open the center's database ${file}: ${errorMessage(err)}`, { file }, { cause: err });
  }
  try {
    const mode: unknown = sqlite.pragma('journal_mode = WAL', { simple: true });
    if (mode !== 'wal') throw new FerryError('STORE_IO', `${file}: SQLite refused WAL mode (journal_mode is ${String(mode)})`, { file });
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('synchronous = FULL');
  } catch (err) {
    sqlite.close();
    throw translateSqliteError(err, `configuring ${file}`);
  }
  OPEN_FILES.add(key);
  return new Kysely<StoreDatabase>({ dialect: new ImmediateSqliteDialect({ database: sqlite }, () => OPEN_FILES.delete(key)) });
}

