/**
 * Schema 3: credentials — API tokens (clients), one-time join tokens (a host's first contact) and
 * host credentials (what a joined host presents afterwards). Only a hash of each secret is stored:
 * a copy of the database (a backup, a replica) lets nobody act as a client or a host.
 * History, like every migration: never edited once released (see 0001-inventory.ts).
 */
import { sql, type Kysely } from 'kysely';
import type { StoreBackend } from '../store.js';
import type { StoreMigration } from './migration.js';

async function up(db: Kysely<unknown>, _backend: StoreBackend): Promise<void> {
  await db.schema.createTable('credentials')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull().check(sql`kind in ('api', 'join', 'host')`))
    .addColumn('subject', 'text', (c) => c.notNull())
    // Unique: a presented secret finds at most one credential, by an index lookup.
    .addColumn('secret_hash', 'text', (c) => c.notNull().unique())
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .addColumn('expires_at_ms', 'bigint')
    .addColumn('spent_at_ms', 'bigint')
    .addColumn('revoked_at_ms', 'bigint')
    .execute();
  await db.schema.createIndex('credentials_by_subject').on('credentials').columns(['kind', 'subject']).execute();
}

export const migration0003: StoreMigration = { name: '0003-credentials', up };
