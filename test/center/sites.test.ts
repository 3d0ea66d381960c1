/**
 * Sites as first-class parts of the inventory: real `ferry host --site` processes in two sites, each
 * mounting its own datastore, joined to an in-process center (SQLite). The site views (GET /sites, GET
 * /sites/{name}, ferry site list / show) list each site's hosts and the datastores they mount; an
 * unknown site is NOT_FOUND; a re-join of a host into another site is refused before the join token is
 * spent (the token stays usable, the host stays where it was).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DEFAULT_SITE } from '../../src/center/inventory.js';
import { DATASTORE_ID_FILE } from '../../src/storage/datastore.js';
import { createCsr, generateKeyPair } from '../../src/lib/x509.js';
import type { CenterSiteView } from '../../src/api/center-v1.js';
import { removeHostData, stopHost, type TestHost } from '../helpers/hosts.js';
import { joinTestHost, startTestCenter, type TestCenter } from '../helpers/center.js';
import { runFerry } from '../helpers/cli.js';
import { copyDirs, startCopyHost, type CopyDirs } from '../helpers/copy-fleet.js';

describe('sites: hosts and datastores per site (real host processes, SQLite)', () => {
  let tc: TestCenter;
  let fs: CopyDirs;
  const hosts: TestHost[] = [];
  const idOf = async (ds: string): Promise<string> => (await readFile(join(fs.dir(ds), DATASTORE_ID_FILE), 'utf8')).trim();

  before(async () => {
    tc = await startTestCenter({ heartbeatIntervalMs: 300, missedHeartbeats: 40 });
    fs = await copyDirs(['site-a-ds', 'site-b-ds']);
    for (const [name, site, ds] of [['sa1', 'site-a', 'site-a-ds'], ['sa2', 'site-a', 'site-a-ds'], ['sb1', 'site-b', 'site-b-ds']] as const) {
      hosts.push(await startCopyHost(tc.admin, (t) => [...tc.hostArgs(t), '--site', site], name, new Map([[ds, fs.dir(ds)]]), await tc.center.store.latestEventId()));
    }
  });
  after(async () => {
    for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
    await tc.close();
    await fs.remove();
  });

  it('each site lists its own hosts and the datastores they mount; GET one site; an unknown site is NOT_FOUND', async () => {
    const [aId, bId] = [await idOf('site-a-ds'), await idOf('site-b-ds')];
    const { sites } = await tc.admin.listSites();
    const byName = new Map(sites.map((s) => [s.name, s]));
    const pick = (s: CenterSiteView | undefined): unknown => s === undefined ? null : { hosts: s.hosts, datastores: s.datastores, truncated: [s.hostsTruncated, s.datastoresTruncated] };
    assert.deepEqual(pick(byName.get('site-a')), { hosts: ['sa1', 'sa2'], datastores: [{ id: aId, name: 'site-a-ds' }], truncated: [false, false] });
    assert.deepEqual(pick(byName.get('site-b')), { hosts: ['sb1'], datastores: [{ id: bId, name: 'site-b-ds' }], truncated: [false, false] });
    assert.deepEqual(pick(await tc.admin.site('site-b')), pick(byName.get('site-b')));
    assert.equal((await tc.center.store.getHost('sa2')).site, 'site-a');
    await assert.rejects(tc.admin.site('nowhere'), { code: 'NOT_FOUND' });

    const caFile = join(tc.dataDir, 'ca.pem');
    await writeFile(caFile, tc.caPem);
    const cli = (args: readonly string[]): ReturnType<typeof runFerry> => runFerry([...args, '--center', tc.url, '--token-file', tc.center.adminTokenFile, '--ca-file', caFile]);
    const list = await cli(['site', 'list']);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^site-a\thosts sa1,sa2\tdatastores site-a-ds\t/m);
    assert.match(list.stdout, /^site-b\thosts sb1\tdatastores site-b-ds\t/m);
    const show = await cli(['site', 'show', 'site-a']);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /^hosts: sa1, sa2$/m);
    assert.match(show.stdout, new RegExp(`^  site-a-ds\\t${aId}$`, 'm'));
    const missing = await cli(['site', 'show', 'nowhere']);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /NOT_FOUND/);
  });

  it('a re-join into another site is refused before the token is spent; the token then joins another host', async () => {
    const first = await joinTestHost(tc, 'dj');
    assert.equal((await tc.center.store.getHost('dj')).site, DEFAULT_SITE, 'without a site: the default one');
    const { token } = await tc.admin.createJoinToken();
    const key = await generateKeyPair();
    const anon = tc.client(null);
    await assert.rejects(anon.join({ joinToken: token, name: 'dj', url: 'http://127.0.0.1:1', csr: await createCsr('dj', key), site: 'site-b' }),
      (err: Error & { code?: string }) => err.code === 'HOST_STATE' && /host dj is in site default/.test(err.message) && /--site default/.test(err.message));
    assert.equal((await tc.center.store.getHost('dj')).site, DEFAULT_SITE, 'the host stays in its site');
    // Its credential was not revoked by the refused join (a spend would have).
    await first.client.heartbeat('dj', { url: 'http://127.0.0.1:1', capacity: { memoryBytes: 0, vcpus: 0 }, datastores: [], vms: [] });
    const other = await anon.join({ joinToken: token, name: 'dj2', url: 'http://127.0.0.1:1', csr: await createCsr('dj2', key), site: 'site-b' });
    assert.equal(other.name, 'dj2');
    assert.deepEqual((await tc.admin.site('site-b')).hosts, ['dj2', 'sb1']);
    // An unknown token hears nothing of the inventory.
    await assert.rejects(anon.join({ joinToken: token, name: 'dj', url: 'http://127.0.0.1:1', csr: await createCsr('dj', key), site: 'site-b' }), { code: 'UNAUTHORIZED' });
  });
});
