/**
 * Schema 7: a "move" directive on a task (issue 11: `ferry task move <task> [--to <host>]`). A running
 * task whose work is on one host and can continue on another (a network file copy) is asked to move
 * by storing the directive on its row; its worker learns it with its next claim renewal, as it learns
 * a cancel, and a worker that takes the task over after a center died learns it from the row it claims.
 *
 * - `move_seq`: 0 until the first request; each request increments it. A worker records the last seq
 *   it acted on in its checkpoint, so a directive is acted on once however many workers read it, and a
 *   second request while the first is handled is not lost (it has a higher seq). Never reset.
 * - `move_to`: the host asked for (null: the worker chooses), `move_requested_by`, `move_requested_at_ms`:
 *   of the latest request.
 * History, like every migration: never edited once released (see 0001-inventory.ts).
 */
import { sql, type Kysely } from 'kysely';
import type { StoreBackend } from '../store.js';
import { sqlNonNegative, type StoreMigration } from './migration.js';

async function up(db: Kysely<unknown>, _backend: StoreBackend): Promise<void> {
  await db.schema.alterTable('tasks').addColumn('move_seq', 'integer', (c) => c.notNull().defaultTo(0).check(sqlNonNegative('move_seq'))).execute();
  await db.schema.alterTable('tasks').addColumn('move_to', 'text').execute();
  await db.schema.alterTable('tasks').addColumn('move_requested_by', 'text').execute();
  await db.schema.alterTable('tasks').addColumn('move_requested_at_ms', 'bigint', (c) => c.check(sql`move_requested_at_ms >= 0`)).execute();
}

export const migration0007: StoreMigration = { name: '0007-task-move', up };
