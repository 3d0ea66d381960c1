/**
 * Schema 6: the mobility manager's state (ARCHITECTURE.md §1.4, issue 10) — each site's virtual subnet,
 * what each host reported of its path drivers, and one row per operation's virtual path.
 *
 * - `sites.virtual_subnet`: null until first needed. The store assigns a site the lowest default /24
 *   of 100.64.0.0/10 that overlaps no other site's subnet the first time a path needs it (or an
 *   operator sets one): lazily rather than here, so the 'default' site and every later site get theirs
 *   by the same code, under the same lock. Unique: two sites never hold the same subnet text (the
 *   store's overlap check, serialised by the `mobility` counter row below, covers the rest).
 * - `hosts.data_plane`: JSON text, the drivers a host reported (kind and tunnel endpoint); null until it does.
 * - `mobility_paths`: every path ever allocated, live or released (released rows stay as the record
 *   of what an operation was given). `secret` is the path's 32-byte secret (base64url): it is stored,
 *   not only pushed, so that any center of the fleet can push the path again to a restarted host or
 *   release it after the center that made it died. Whoever reads this table can impersonate either
 *   end of a live path: a copy of the database is as sensitive as the paths it holds are live.
 * - `mobility_addresses`: each virtual address held by a live path, once (primary key), deleted when
 *   the path is released. This is the guarantee "an address is never handed to two live operations",
 *   in the database on both backends: one table for sources and targets alike, so an address cannot be
 *   one path's source and another's target either (two partial unique indexes on the paths' source and
 *   target columns would each allow that). A path's two addresses are inserted in the transaction that
 *   inserts it, so of two centers racing for one address the second's insert fails and rolls back.
 * - A partial unique index on live paths' `vni`: no two live paths share an operation number.
 * - The counter row `mobility`: allocations and subnet changes increment it first, which on PostgreSQL
 *   locks it to commit and so serialises them across centers (they are rare: one per operation);
 *   SQLite's write transactions are serialised anyway. The unique keys above stay the guarantee; the
 *   lock only spares racing centers from failing their inserts.
 * History, like every migration: never edited once released (see 0001-inventory.ts).
 */
import { sql, type Kysely } from 'kysely';
import type { StoreBackend } from '../store.js';
import { sqlNonNegative, type StoreMigration } from './migration.js';

async function up(db: Kysely<unknown>, _backend: StoreBackend): Promise<void> {
  await db.schema.alterTable('sites').addColumn('virtual_subnet', 'text').execute();
  await db.schema.createIndex('sites_by_virtual_subnet').on('sites').column('virtual_subnet').unique().execute();
  await db.schema.alterTable('hosts').addColumn('data_plane', 'text').execute();

  await db.schema.createTable('mobility_paths')
    .addColumn('path_id', 'text', (c) => c.primaryKey())
    // A task's row is never deleted while the center runs; if one ever is, its paths stay as history.
    .addColumn('task_id', 'bigint', (c) => c.references('tasks.id').onDelete('set null'))
    .addColumn('kind', 'text', (c) => c.notNull())
    // Hosts and sites by name, not foreign keys: a released path's record outlives a removed host.
    .addColumn('source_host', 'text', (c) => c.notNull())
    .addColumn('target_host', 'text', (c) => c.notNull())
    .addColumn('source_site', 'text', (c) => c.notNull())
    .addColumn('target_site', 'text', (c) => c.notNull())
    .addColumn('source_address', 'text', (c) => c.notNull())
    .addColumn('target_address', 'text', (c) => c.notNull())
    .addColumn('vni', 'integer', (c) => c.notNull().check(sql`vni >= 1`))
    .addColumn('first_port', 'integer', (c) => c.notNull().check(sqlNonNegative('first_port')))
    .addColumn('port_count', 'integer', (c) => c.notNull().check(sql`port_count >= 1`))
    .addColumn('driver', 'text', (c) => c.notNull())
    .addColumn('secret', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull().check(sql`state in ('live', 'released')`))
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .addColumn('expires_at_ms', 'bigint', (c) => c.notNull())
    .addColumn('released_at_ms', 'bigint')
    .addColumn('release_reason', 'text')
    .addCheckConstraint('mobility_paths_distinct_addresses', sql`source_address <> target_address`)
    .execute();
  await sql`create unique index mobility_paths_live_vni on mobility_paths (vni) where state = 'live'`.execute(db);
  // The sweeper: live paths by expiry. Lists: by task, by either host.
  await db.schema.createIndex('mobility_paths_by_state_expiry').on('mobility_paths').columns(['state', 'expires_at_ms']).execute();
  await db.schema.createIndex('mobility_paths_by_task').on('mobility_paths').columns(['task_id', 'created_at_ms']).execute();
  await db.schema.createIndex('mobility_paths_by_source_host').on('mobility_paths').columns(['source_host', 'path_id']).execute();
  await db.schema.createIndex('mobility_paths_by_target_host').on('mobility_paths').columns(['target_host', 'path_id']).execute();

  await db.schema.createTable('mobility_addresses')
    .addColumn('address', 'text', (c) => c.primaryKey())
    .addColumn('path_id', 'text', (c) => c.notNull().references('mobility_paths.path_id').onDelete('cascade'))
    // The site whose subnet it is from: allocation reads a site's taken addresses by this index.
    .addColumn('site', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('mobility_addresses_by_site').on('mobility_addresses').columns(['site', 'address']).execute();
  await db.schema.createIndex('mobility_addresses_by_path').on('mobility_addresses').column('path_id').execute();

  await sql`insert into counters (name, value) values ('mobility', 0)`.execute(db);
}

export const migration0006: StoreMigration = { name: '0006-mobility-paths', up };
