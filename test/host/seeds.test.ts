/**
 * The host's seed routes (src/host/seeds.ts) on a real in-process host over HTTP: PUT checks each
 * level against its file (SEED_INVALID naming what differs, nothing recorded), GET answers the
 * manifest or NOT_FOUND, DELETE forgets it and with files=true removes the seed files no VM's chain
 * here uses — a base the VM runs on is kept, with the reason.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type TestAgent } from '../helpers/agents.js';
import { vmRequest } from '../helpers/guests.js';
import { seedLevelFor } from '../helpers/seeds.js';
import { isFerryError } from '../../src/lib/errors.js';
import { MiB } from '../../src/lib/units.js';

let dir = '';
let h: TestAgent;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-seeds-'));
  h = await startAgent('seeds', { datastores: [{ name: 'ds1', path: dir }] });
  await h.client.createVm(await vmRequest('kv', 'kvlog', { memoryBytes: 8 * MiB, vcpus: 1, disk: { datastore: 'ds1', path: 'kv.vmdk', sizeBytes: 16 * MiB } }));
  await h.client.snapshotVm('kv');
  // A copy of the VM's base elsewhere on the datastore, as a center would have seeded it for another VM's migration.
  await mkdir(join(dir, 'seeded'));
  await copyFile(join(dir, 'kv.vmdk'), join(dir, 'seeded', 'kv.vmdk'));
});
after(async () => {
  await h?.close();
  await rm(dir, { recursive: true, force: true });
});

async function rejectsWith(p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => isFerryError(err) && err.code === code && message.test(err.message));
}

describe('seed routes', () => {
  it('PUT checks each level against its file, GET reads it back, unknown ones are NOT_FOUND', async () => {
    await rejectsWith(h.client.seeds('ds1', 'kv'), 'NOT_FOUND', /holds no seeds of VM kv/);
    const level = await seedLevelFor(h.client, 'kv', 'kv.vmdk', dir, 'seeded/kv.vmdk');
    await rejectsWith(h.client.putSeeds('ds1', 'kv', { levels: [{ ...level, cid: '0badc0de' }], taskId: null }), 'SEED_INVALID', /seeded\/kv.vmdk: its CID is [0-9a-f]{8}, the seed's 0badc0de/);
    await rejectsWith(h.client.putSeeds('ds1', 'kv', { levels: [{ ...level, fileBytes: level.fileBytes - 1 }], taskId: null }), 'SEED_INVALID', /seeded\/kv.vmdk is \d+ bytes/);
    await rejectsWith(h.client.putSeeds('ds1', 'kv', { levels: [{ ...level, path: 'seeded/none.vmdk' }], taskId: null }), 'SEED_INVALID', /none.vmdk: the seed file is missing/);
    await rejectsWith(h.client.seeds('ds1', 'kv'), 'NOT_FOUND', /no seeds/);
    await rejectsWith(h.client.putSeeds('nods', 'kv', { levels: [level], taskId: null }), 'NOT_FOUND', /no datastore nods/);

    const put = await h.client.putSeeds('ds1', 'kv', { levels: [level], taskId: 7 });
    assert.equal(put.datastore, 'ds1');
    assert.deepEqual(put.manifest.levels, [level]);
    assert.equal(put.manifest.taskId, 7);
    assert.deepEqual(await h.client.seeds('ds1', 'kv'), put);
  });

  it('DELETE with files=true removes the seed files no chain uses and keeps the VM\'s base', async () => {
    const seeded = await seedLevelFor(h.client, 'kv', 'kv.vmdk', dir, 'seeded/kv.vmdk');
    // The VM's own base recorded as a seed too (its chain kv-000001.vmdk → kv.vmdk is open on this host).
    const own = await seedLevelFor(h.client, 'kv', 'kv.vmdk', dir, 'kv.vmdk');
    await h.client.putSeeds('ds1', 'other', { levels: [own], taskId: null });
    await h.client.putSeeds('ds1', 'kv', { levels: [seeded], taskId: null });

    assert.deepEqual(await h.client.deleteSeeds('ds1', 'kv'), { removedFiles: [], keptFiles: [] });
    assert.ok((await stat(join(dir, 'seeded', 'kv.vmdk'))).isFile(), 'without files=true the files stay');
    await rejectsWith(h.client.seeds('ds1', 'kv'), 'NOT_FOUND', /no seeds/);
    await rejectsWith(h.client.deleteSeeds('ds1', 'kv'), 'NOT_FOUND', /no seeds/);

    await h.client.putSeeds('ds1', 'kv', { levels: [seeded], taskId: null });
    assert.deepEqual(await h.client.deleteSeeds('ds1', 'kv', { files: true }), { removedFiles: ['seeded/kv.vmdk'], keptFiles: [] });
    await assert.rejects(stat(join(dir, 'seeded', 'kv.vmdk')), { code: 'ENOENT' });

    assert.deepEqual(await h.client.deleteSeeds('ds1', 'other', { files: true }), { removedFiles: [], keptFiles: [{ path: 'kv.vmdk', reason: 'in the disk chain of VM kv' }] });

    // A seed an incoming migration runs over (held from PREPARE to its end) is kept too, until it is let go.
    await copyFile(join(dir, 'kv.vmdk'), join(dir, 'seeded', 'held.vmdk'));
    const held = await seedLevelFor(h.client, 'kv', 'kv.vmdk', dir, 'seeded/held.vmdk');
    await h.client.putSeeds('ds1', 'mover', { levels: [held], taskId: null });
    const release = h.agent.seeds.hold('ds1', ['seeded/held.vmdk']);
    assert.deepEqual(await h.client.deleteSeeds('ds1', 'mover', { files: true }), { removedFiles: [], keptFiles: [{ path: 'seeded/held.vmdk', reason: 'in use by an incoming migration' }] });
    release();
    release();
    await h.client.putSeeds('ds1', 'mover', { levels: [held], taskId: null });
    assert.deepEqual(await h.client.deleteSeeds('ds1', 'mover', { files: true }), { removedFiles: ['seeded/held.vmdk'], keptFiles: [] });
    assert.ok((await stat(join(dir, 'kv.vmdk'))).isFile(), 'the VM\'s base stays');
    assert.equal((await h.client.diskChain('kv')).chain.length, 2);
  });
});
