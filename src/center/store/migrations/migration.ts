/**
 * What a schema migration is: a TypeScript module in this directory, named `NNNN-what.ts`, exporting one
 * StoreMigration. Only `up`: a database is never migrated down (a newer schema is refused instead, see
 * ../migrate.ts), since a down migration that drops what a newer Ferry wrote is rarely right and never tested.
 */
import { sql, type Kysely, type RawBuilder } from 'kysely';
import type { StoreBackend } from '../store.js';

export interface StoreMigration {
  /** `NNNN-what`: the number is the schema version it brings the database to. */
  readonly name: string;
  /** Runs inside the migration transaction (both backends have transactional DDL). */
  up(db: Kysely<unknown>, backend: StoreBackend): Promise<void>;
}

/** CHECK (column in (0, 1)): flags are integers on both backends. */
export function sqlFlag(column: string): RawBuilder<unknown> {
  return sql`${sql.ref(column)} in (0, 1)`;
}

export function sqlNonNegative(column: string): RawBuilder<unknown> {
  return sql`${sql.ref(column)} >= 0`;
}
