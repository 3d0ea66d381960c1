/**
 * Bringing a database to the schema this code knows, with Kysely's Migrator: it records applied
 * migrations in `kysely_migration`, runs the pending ones in one transaction (both backends have
 * transactional DDL: a failed migration leaves the schema as it was), and serialises concurrent
 * migrators (PostgreSQL: an advisory transaction lock; SQLite: the write lock of our BEGIN IMMEDIATE),
 * so that two centers starting together against one database migrate it once.
 *
 * A database some newer Ferry migrated further is refused before anything runs (STORE_SCHEMA_VERSION):
 * this code would read and write tables whose meaning it does not know.
 */
import { Migrator, sql, type Kysely, type Migration } from 'kysely';
import { FerryError, errorMessage } from '../../lib/errors.js';
import type { StoreMigration } from './migrations/migration.js';
import type { StoreBackend } from './store.js';

const MIGRATION_TABLE = 'kysely_migration';
const MIGRATION_NAME_PATTERN = /^(\d{4})-[a-z0-9-]+$/;

/** The schema version a migration brings the database to: its number. */
export function migrationVersion(name: string): number {
  const m = MIGRATION_NAME_PATTERN.exec(name);
  if (m?.[1] === undefined) throw new FerryError('STORE_IO', `migration name ${JSON.stringify(name)} is not NNNN-what`);
  return Number(m[1]);
}

/** The names of the migrations the database has applied (empty for a fresh database). */
export async function appliedMigrations(db: Kysely<unknown>): Promise<readonly string[]> {
  // Kysely's own tables are hidden from introspection unless asked for.
  const tables = await db.introspection.getTables({ withInternalKyselyTables: true });
  if (!tables.some((t) => t.name === MIGRATION_TABLE)) return [];
  const rows = await sql<{ name: string }>`select name from ${sql.table(MIGRATION_TABLE)} order by name`.execute(db);
  return rows.rows.map((r) => r.name);
}

export function schemaVersionOf(applied: readonly string[]): number {
  return applied.reduce((v, name) => Math.max(v, migrationVersion(name)), 0);
}

/**
 * Apply the pending migrations; answers the schema version. `translate` is the backend's error
 * translation: a lost connection stays STORE_UNAVAILABLE, anything else is a failed migration.
 */
export async function migrateToLatest(db: Kysely<unknown>, backend: StoreBackend, migrations: readonly StoreMigration[], translate: (err: unknown) => FerryError): Promise<number> {
  const known = new Set(migrations.map((m) => m.name));
  const codeVersion = schemaVersionOf(migrations.map((m) => m.name));
  const applied = await appliedMigrations(db);
  const unknown = applied.filter((name) => !known.has(name));
  if (unknown.length > 0) {
    throw new FerryError('STORE_SCHEMA_VERSION',
      `the database has schema version ${schemaVersionOf(applied)} (migrations ${unknown.join(', ')}), newer than this Ferry knows (${codeVersion}): run a Ferry at least as new as the one that migrated it`,
      { databaseVersion: schemaVersionOf(applied), codeVersion, unknownMigrations: unknown });
  }
  const migrator = new Migrator({
    db,
    provider: {
      getMigrations: () => Promise.resolve(Object.fromEntries(migrations.map((m): [string, Migration] => [m.name, { up: (d: Kysely<unknown>) => m.up(d, backend) }]))),
    },
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const translated = translate(error);
    if (translated.code !== 'STORE_IO') throw translated;
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new FerryError('STORE_IO', `migrating the center's database failed${failed === undefined ? '' : ` at ${failed}`}: ${errorMessage(error)}`, {}, { cause: error });
  }
  return codeVersion;
}
