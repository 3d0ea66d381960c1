/**
 * Schema 1: the inventory (sites, hosts, datastores and which host mounts which, VMs).
 *
 * A migration is history: it never imports the current table types (./tables.ts describes the newest
 * schema, this describes version 1 forever) and it is never edited once released — a change is a new
 * migration. States are not CHECK-constrained: SQLite cannot alter a constraint without rebuilding the
 * table, and a later state (the rest of issue 9 will add some) would need that; the store validates them.
 */
import type { Kysely } from 'kysely';
import { sqlFlag, sqlNonNegative, type StoreMigration } from './migration.js';

async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema.createTable('sites')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('description', 'text', (c) => c.notNull())
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .execute();

  await db.schema.createTable('hosts')
    .addColumn('name', 'text', (c) => c.primaryKey())
    // A site with hosts cannot be deleted from under them.
    .addColumn('site', 'text', (c) => c.notNull().references('sites.name').onDelete('restrict'))
    .addColumn('url', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('memory_bytes', 'bigint', (c) => c.notNull().check(sqlNonNegative('memory_bytes')))
    .addColumn('vcpus', 'integer', (c) => c.notNull().check(sqlNonNegative('vcpus')))
    .addColumn('last_heartbeat_at_ms', 'bigint')
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .addColumn('updated_at_ms', 'bigint', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('hosts_by_site').on('hosts').columns(['site', 'name']).execute();

  await db.schema.createTable('datastores')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('shared', 'integer', (c) => c.notNull().check(sqlFlag('shared')))
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .execute();

  await db.schema.createTable('host_datastores')
    .addColumn('host', 'text', (c) => c.notNull().references('hosts.name').onDelete('cascade'))
    .addColumn('datastore_id', 'text', (c) => c.notNull().references('datastores.id').onDelete('cascade'))
    .addColumn('mount_name', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('host_datastores_pk', ['host', 'datastore_id'])
    // A host mounts each datastore once and each of its mount names names one datastore.
    .addUniqueConstraint('host_datastores_mount_name', ['host', 'mount_name'])
    .execute();
  await db.schema.createIndex('host_datastores_by_datastore').on('host_datastores').columns(['datastore_id', 'host']).execute();

  await db.schema.createTable('vms')
    .addColumn('name', 'text', (c) => c.primaryKey())
    // One host column: a VM is in at most one place by construction. A host with VMs cannot be
    // deleted (restrict): its VMs would silently be in none.
    .addColumn('host', 'text', (c) => c.references('hosts.name').onDelete('restrict'))
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('config_json', 'text', (c) => c.notNull())
    .addColumn('disks_json', 'text', (c) => c.notNull())
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .addColumn('updated_at_ms', 'bigint', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('vms_by_host').on('vms').columns(['host', 'name']).execute();
}

export const migration0001: StoreMigration = { name: '0001-inventory', up };
