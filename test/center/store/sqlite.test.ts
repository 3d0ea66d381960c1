/**
 * The store contract against the embedded backend (an SQLite file per test in a temporary
 * directory), and what only SQLite has: the file's place and its pragmas.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openCenterStore, storeLocation } from '../../../src/center/store/open.js';
import { SQLITE_FILE_NAME, openSqliteDatabase } from '../../../src/center/store/sqlite.js';
import { sql } from 'kysely';
import { storeContract } from './contract.js';

let dir = '';
let n = 0;
before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-center-store-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

storeContract({
  name: 'SQLite',
  severalStoresPerProcess: false,
  freshDatabase: () => Promise.resolve({ backend: 'sqlite', file: join(dir, `db-${++n}`, SQLITE_FILE_NAME) }),
});

describe('SQLite backend', () => {
  it('is the default: a file in the data directory, created with its directory, in WAL mode', async () => {
    const dataDir = join(dir, 'center-data');
    const location = storeLocation(dataDir);
    assert.deepEqual(location, { backend: 'sqlite', file: join(dataDir, 'center.sqlite') });
    const store = await openCenterStore(location);
    assert.equal(store.backend, 'sqlite');
    await store.close();
    const raw = new Database(join(dataDir, 'center.sqlite'), { readonly: true });
    try {
      assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
    } finally {
      raw.close();
    }
  });

  it('has foreign keys on: the connection the store uses refuses a row that refers to nothing', async () => {
    const db = openSqliteDatabase(join(dir, 'fk', SQLITE_FILE_NAME));
    try {
      const fk = await sql<{ foreign_keys: number }>`pragma foreign_keys`.execute(db);
      assert.deepEqual(fk.rows, [{ foreign_keys: 1 }]);
      await sql`create table parent (id text primary key)`.execute(db);
      await sql`create table child (p text references parent(id))`.execute(db);
      await assert.rejects(sql`insert into child (p) values ('ghost')`.execute(db), { code: 'SQLITE_CONSTRAINT_FOREIGNKEY' });
    } finally {
      await db.destroy();
    }
  });

  it('a file that is not a database is STORE_IO; a directory it cannot create is STORE_UNAVAILABLE', async () => {
    const junk = join(dir, 'junk.sqlite');
    await writeFile(junk, 'this is not an SQLite database, and it is longer than a header would be. '.repeat(20));
    await assert.rejects(openCenterStore({ backend: 'sqlite', file: junk }), { code: 'STORE_IO' });
    await writeFile(join(dir, 'a-file'), '');
    await assert.rejects(openCenterStore({ backend: 'sqlite', file: join(dir, 'a-file', 'sub', 'center.sqlite') }), { code: 'STORE_UNAVAILABLE' });
  });

  it('--db takes only postgres:// URLs', () => {
    assert.deepEqual(storeLocation('/d', 'postgres://u@h/db'), { backend: 'postgres', url: 'postgres://u@h/db' });
    assert.deepEqual(storeLocation('/d', 'postgresql://u@h/db'), { backend: 'postgres', url: 'postgresql://u@h/db' });
    assert.throws(() => storeLocation('/d', 'mysql://u@h/db'), { code: 'INVALID_ARGUMENT' });
    assert.throws(() => storeLocation('/d', '/some/file.sqlite'), { code: 'INVALID_ARGUMENT' });
  });
});

describe('SQLite: one store per file per process', () => {
  it('a second open of the same file in this process is refused (BUSY) until the first is closed', async () => {
    const file = join(dir, 'once', SQLITE_FILE_NAME);
    const first = await openCenterStore({ backend: 'sqlite', file });
    await assert.rejects(openCenterStore({ backend: 'sqlite', file: join(dir, 'once', '.', SQLITE_FILE_NAME) }), { code: 'BUSY' });
    await first.close();
    const second = await openCenterStore({ backend: 'sqlite', file });
    await second.close();
  });
});
