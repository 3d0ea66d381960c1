/**
 * Schema 4: admission and recovery of tasks, and the center's shared secrets.
 * - `admitted`: a task that costs against budgets (a migration, an evacuation's moves) is enqueued
 *   unadmitted; the scheduler (one center at a time) admits it when its cost fits, and only admitted
 *   tasks are claimed. Tasks that cost nothing are enqueued admitted (the default, so older rows are).
 * - `plan_json`: what the scheduler decided at admission (the hosts a migration runs between): the
 *   budget of a running task is counted from it, and its worker executes it.
 * - `checkpoint_json`: what a worker recorded before an irreversible step (the migration id it asked a
 *   host to start): a worker that takes a task over after a center died reconciles from it.
 * - `center_secrets`: secrets every center of one database must agree on (the key that derives the
 *   credential a center presents to a host), created once by whichever center starts first.
 * History, like every migration: never edited once released (see 0001-inventory.ts).
 */
import { sql, type Kysely } from 'kysely';
import type { StoreBackend } from '../store.js';
import { sqlFlag, type StoreMigration } from './migration.js';

async function up(db: Kysely<unknown>, _backend: StoreBackend): Promise<void> {
  await db.schema.alterTable('tasks').addColumn('admitted', 'integer', (c) => c.notNull().defaultTo(1).check(sqlFlag('admitted'))).execute();
  await db.schema.alterTable('tasks').addColumn('plan_json', 'text').execute();
  await db.schema.alterTable('tasks').addColumn('checkpoint_json', 'text').execute();
  // The scheduler's scan: queued, unadmitted, oldest first.
  await db.schema.createIndex('tasks_by_state_admitted').on('tasks').columns(['state', 'admitted', 'id']).execute();
  await db.schema.createTable('center_secrets')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('value', 'text', (c) => c.notNull())
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull().check(sql`created_at_ms >= 0`))
    .execute();
}

export const migration0004: StoreMigration = { name: '0004-task-admission', up };
