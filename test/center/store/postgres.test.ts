/**
 * The store contract against a real PostgreSQL server (a throwaway cluster, test/helpers/postgres.ts;
 * a fresh database per test), and what only PostgreSQL has: a pool, a server that can be unreachable.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { openCenterStore } from '../../../src/center/store/open.js';
import { startPostgres, type PostgresCluster } from '../../helpers/postgres.js';
import { storeContract } from './contract.js';

let cluster: PostgresCluster | undefined;
before(async () => { cluster = await startPostgres(); });
after(async () => { await cluster?.stop(); });

function running(): PostgresCluster {
  assert.ok(cluster !== undefined, 'the cluster started');
  return cluster;
}

storeContract({ name: 'PostgreSQL', severalStoresPerProcess: true, freshDatabase: async () => ({ backend: 'postgres', url: await running().createDatabase() }) });

describe('PostgreSQL backend', () => {
  it('close() ends every connection of its pool', async () => {
    const url = await running().createDatabase();
    const dbName = new URL(url).pathname.slice(1);
    const store = await openCenterStore({ backend: 'postgres', url });
    await Promise.all(Array.from({ length: 6 }, () => store.listHosts()));
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      const count = async (): Promise<number> => Number((await admin.query<{ n: string }>("select count(*) as n from pg_stat_activity where datname = $1 and application_name = 'ferry-center'", [dbName])).rows[0]?.n);
      assert.ok(await count() >= 1, 'the store holds connections');
      await store.close();
      for (let i = 0; i < 50 && await count() > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(await count(), 0);
    } finally {
      await admin.end();
    }
  });

  it('a server that is not there is STORE_UNAVAILABLE, quickly, and the password is not in the message', async () => {
    const url = `postgres://ferry:s3cret@127.0.0.1:${running().port + 1}/nowhere`;
    const t0 = Date.now();
    await assert.rejects(openCenterStore({ backend: 'postgres', url }), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'STORE_UNAVAILABLE');
      assert.doesNotMatch(err.message, /s3cret/);
      return true;
    });
    assert.ok(Date.now() - t0 < 5000);
  });

  it('a database that does not exist is STORE_UNAVAILABLE', async () => {
    await assert.rejects(openCenterStore({ backend: 'postgres', url: `postgres://postgres@127.0.0.1:${running().port}/no_such_db` }), { code: 'STORE_UNAVAILABLE' });
  });
});
