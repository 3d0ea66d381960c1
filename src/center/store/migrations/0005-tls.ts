/**
 * Schema 5: the center's CA and the certificates it issued to hosts.
 *
 * `center_ca` holds at most one row: the CA every center of a fleet signs with (several centers on one
 * PostgreSQL share it; the first to start makes it, the others read it). Its private key is stored as
 * PEM: whoever can read this table can mint host certificates, so a copy of the database is as
 * sensitive as the CA key (docs/design/center-tls.md).
 *
 * `host_certificates` ties each issued certificate (by the SHA-256 fingerprint of its DER) to the host
 * credential issued with it: a certificate is accepted only while that credential is the host's live
 * one, so revoking the credential (a re-join does) revokes the certificate too.
 *
 * Numbered 5: 0004 is taken by work merged in parallel (the merge renumbers if needed).
 * History, like every migration: never edited once released (see 0001-inventory.ts).
 */
import { sql, type Kysely } from 'kysely';
import type { StoreBackend } from '../store.js';
import type { StoreMigration } from './migration.js';

async function up(db: Kysely<unknown>, _backend: StoreBackend): Promise<void> {
  await db.schema.createTable('center_ca')
    // One row, id 'ca': a second CA cannot be inserted by a racing center (primary key).
    .addColumn('id', 'text', (c) => c.primaryKey().check(sql`id = 'ca'`))
    .addColumn('cert_pem', 'text', (c) => c.notNull())
    .addColumn('key_pem', 'text', (c) => c.notNull())
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .execute();
  await db.schema.createTable('host_certificates')
    .addColumn('fingerprint', 'text', (c) => c.primaryKey())
    .addColumn('host', 'text', (c) => c.notNull())
    .addColumn('credential_id', 'text', (c) => c.notNull())
    .addColumn('serial', 'text', (c) => c.notNull())
    .addColumn('created_at_ms', 'bigint', (c) => c.notNull())
    .addColumn('not_after_ms', 'bigint', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('host_certificates_by_host').on('host_certificates').column('host').execute();
}

export const migration0005: StoreMigration = { name: '0005-tls', up };
