/**
 * The host's record of incoming migrations: HostStore.readMigrationOutcome answers null only when
 * there is no record; a record it cannot read or understand is STORE_IO. Through the API, the
 * same record answers 500 STORE_IO, never "unknown".
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostStore } from '../../src/host/store.js';
import { routes } from '../../src/api/host-v1.js';
import { pathOf } from '../../src/api/host-client.js';
import { startAgent, type TestAgent } from '../helpers/agents.js';

const id = (n: number): string => n.toString(16).padStart(32, '0');

/** Records the store must refuse to read, by how they are broken. */
const BROKEN: readonly [string, (path: string) => Promise<void>][] = [
  ['a directory (EISDIR)', (p) => mkdir(p)],
  ['empty', (p) => writeFile(p, '')],
  ['not JSON', (p) => writeFile(p, '{"outcome": "committed"')],
  ['JSON null', (p) => writeFile(p, 'null')],
  ['a JSON array', (p) => writeFile(p, '["committed"]')],
  ['a bare string', (p) => writeFile(p, '"committed"')],
  ['without an outcome', (p) => writeFile(p, '{"id": "x"}')],
  ['an unknown outcome', (p) => writeFile(p, '{"outcome": "maybe"}')],
];

describe('HostStore.readMigrationOutcome', () => {
  let dir = '';
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-store-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  it('answers null only for a missing record, and the recorded outcome for a written one', async () => {
    const store = new HostStore(join(dir, 'ok'));
    await store.init();
    assert.equal(await store.readMigrationOutcome(id(1)), null);
    assert.equal(await store.readMigrationOutcome('not-a-migration-id'), null, 'no record can have that name');
    store.writeMigrationOutcome(id(2), 'committed', 'vm');
    store.writeMigrationOutcome(id(3), 'aborted', '');
    assert.equal(await store.readMigrationOutcome(id(2)), 'committed');
    assert.equal(await store.readMigrationOutcome(id(3)), 'aborted');
    store.writeMigrationOutcome(id(3), 'committed', 'vm');
    assert.equal(await store.readMigrationOutcome(id(3)), 'committed', 'rewritten in place');
  });

  it('throws STORE_IO for a record it cannot read, that is not JSON, or that is malformed', async () => {
    const store = new HostStore(join(dir, 'broken'));
    await store.init();
    let n = 100;
    for (const [what, make] of BROKEN) {
      const m = id(n++);
      await make(join(store.dataDir, 'migrations', `${m}.json`));
      await assert.rejects(store.readMigrationOutcome(m), { code: 'STORE_IO' }, what);
    }
    assert.equal(await store.readMigrationOutcome(id(n)), null, 'a missing record next to them is still null');
  });

  it('throws STORE_IO when the migrations directory is not a directory (ENOTDIR)', async () => {
    const store = new HostStore(join(dir, 'notdir'));
    await store.init();
    await rm(join(store.dataDir, 'migrations'), { recursive: true });
    await writeFile(join(store.dataDir, 'migrations'), 'a file');
    await assert.rejects(store.readMigrationOutcome(id(1)), { code: 'STORE_IO' }, 'migrations is a file');
  });
});

describe('GET /v1/migrations/incoming/{id} over the store', () => {
  let h: TestAgent | undefined;
  before(async () => { h = await startAgent('store'); });
  after(async () => { await h?.close(); });

  it('answers 500 STORE_IO (never "unknown") for a record that cannot be read; "unknown" only for a missing one', async () => {
    assert.ok(h !== undefined);
    const { client, dataDir } = h;
    let n = 200;
    for (const [what, make] of BROKEN) {
      const m = id(n++);
      await make(join(dataDir, 'migrations', `${m}.json`));
      const res = await client.raw('GET', pathOf(routes.getIncoming, { id: m }));
      const body = await res.json() as { error?: { code?: string } };
      assert.deepEqual([res.status, body.error?.code], [500, 'STORE_IO'], `${what}: ${JSON.stringify(body)}`);
      await assert.rejects(client.incoming(m), { code: 'STORE_IO', origin: 'remote' }, what);
    }
    assert.deepEqual(await client.incoming(id(n)), { migrationId: id(n), outcome: { state: 'unknown' } });
    // A record this host wrote (or a previous run of it) answers from the data directory.
    await writeFile(join(dataDir, 'migrations', `${id(n + 1)}.json`), JSON.stringify({ id: id(n + 1), outcome: 'committed', vmName: 'v', at: new Date().toISOString() }));
    assert.deepEqual(await client.incoming(id(n + 1)), { migrationId: id(n + 1), outcome: { state: 'committed' } });
  });
});
