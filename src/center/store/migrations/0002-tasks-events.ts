/**
 * Schema 2: durable tasks, the event log, the counter that numbers events, and one-per-fleet duty leases.
 * History, like every migration: never edited once released (see 0001-inventory.ts).
 */
import { sql, type Kysely } from 'kysely';
import type { StoreBackend } from '../store.js';
import { sqlFlag, sqlNonNegative, type StoreMigration } from './migration.js';

async function up(db: Kysely<unknown>, backend: StoreBackend): Promise<void> {
  // The one column whose declaration differs: a generated integer key. SQLite's AUTOINCREMENT never
  // reuses an id (a plain rowid may reuse the largest after a delete); PostgreSQL's identity column
  // never does either.
  let tasks = db.schema.createTable('tasks');
  tasks = backend === 'sqlite'
    ? tasks.addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement())
    : tasks.addColumn('id', 'bigint', (c) => c.primaryKey().generatedByDefaultAsIdentity());
  await tasks
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('target', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('phase', 'text', (c) => c.notNull())
    .addColumn('progress', 'double precision', (c) => c.notNull().check(sql`progress >= 0 and progress <= 1`))
    .addColumn('waiting_reason', 'text')
    .addColumn('requested_by', 'text', (c) => c.notNull())
    .addColumn('params_json', 'text', (c) => c.notNull())
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .addColumn('started_at_ms', 'bigint')
    .addColumn('ended_at_ms', 'bigint')
    .addColumn('result_json', 'text')
    .addColumn('error_code', 'text')
    .addColumn('error_message', 'text')
    .addColumn('claimed_by', 'text')
    .addColumn('claim_expires_at_ms', 'bigint')
    .addColumn('attempts', 'integer', (c) => c.notNull().check(sqlNonNegative('attempts')))
    .addColumn('cancel_requested', 'integer', (c) => c.notNull().check(sqlFlag('cancel_requested')))
    .execute();
  // The claim query: queued tasks of some kinds, oldest first. The expiry sweep: running by expiry.
  await db.schema.createIndex('tasks_by_state_kind').on('tasks').columns(['state', 'kind', 'id']).execute();
  await db.schema.createIndex('tasks_by_state_expiry').on('tasks').columns(['state', 'claim_expires_at_ms']).execute();
  await db.schema.createIndex('tasks_by_target').on('tasks').columns(['target', 'id']).execute();

  await db.schema.createTable('events')
    .addColumn('id', 'bigint', (c) => c.primaryKey())
    .addColumn('at_ms', 'bigint', (c) => c.notNull())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('subject', 'text', (c) => c.notNull())
    .addColumn('payload_json', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('events_by_time').on('events').column('at_ms').execute();

  await db.schema.createTable('counters')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('value', 'bigint', (c) => c.notNull())
    .execute();
  await sql`insert into counters (name, value) values ('events', 0)`.execute(db);

  await db.schema.createTable('duties')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('holder', 'text', (c) => c.notNull())
    .addColumn('expires_at_ms', 'bigint', (c) => c.notNull())
    .addColumn('epoch', 'bigint', (c) => c.notNull())
    .execute();
}

export const migration0002: StoreMigration = { name: '0002-tasks-events', up };
