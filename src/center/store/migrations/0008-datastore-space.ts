/**
 * Schema 8: the space of each mount (issue 13: the UI's datastores show it). A host's heartbeat reports,
 * per datastore it mounts, its capacity and free bytes as that host's file system sees them; the center
 * keeps them on the mount (a shared datastore is seen by each of its hosts, each reporting what it sees).
 *
 * - `capacity_bytes`, `free_bytes`: null until the host first reports them (a mount written by a center
 *   or host of before this schema). Written only when a value moved by more than
 *   DATASTORE_SPACE_WRITE_THRESHOLD_BYTES (src/center/inventory.ts): steady heartbeats write nothing.
 * - `space_at_ms`: when the kept values were reported.
 * History, like every migration: never edited once released (see 0001-inventory.ts).
 */
import { sql, type Kysely } from 'kysely';
import type { StoreBackend } from '../store.js';
import type { StoreMigration } from './migration.js';

async function up(db: Kysely<unknown>, _backend: StoreBackend): Promise<void> {
  await db.schema.alterTable('host_datastores').addColumn('capacity_bytes', 'bigint', (c) => c.check(sql`capacity_bytes >= 0`)).execute();
  await db.schema.alterTable('host_datastores').addColumn('free_bytes', 'bigint', (c) => c.check(sql`free_bytes >= 0`)).execute();
  await db.schema.alterTable('host_datastores').addColumn('space_at_ms', 'bigint', (c) => c.check(sql`space_at_ms >= 0`)).execute();
}

export const migration0008: StoreMigration = { name: '0008-datastore-space', up };
