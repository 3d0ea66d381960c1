/**
 * Real hosts and a real center: `ferry host --center URL --join-token T` child processes against an
 * in-process center (SQLite), and an in-process agent against a center on PostgreSQL. Every wait is on
 * the center's own event stream, never a sleep.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiB } from '../../src/lib/units.js';
import { CENTER_CREDENTIAL_FILE } from '../../src/host/center-link.js';
import { createVm, removeHostData, startHost, stopHost, type TestHost } from '../helpers/hosts.js';
import { startAgent } from '../helpers/agents.js';
import { startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';
import { startPostgres, type PostgresCluster } from '../helpers/postgres.js';
import { DATASTORE_SPACE_WRITE_THRESHOLD_BYTES } from '../../src/center/inventory.js';

describe('hosts joined to a center (child processes, SQLite)', () => {
  let tc: TestCenter;
  const hosts: TestHost[] = [];
  before(async () => { tc = await startTestCenter(); });
  after(async () => {
    for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
    await tc.close();
  });

  it('joins once, reports its VMs; killed it is disconnected and its VMs unknown; restarted with its stored credential it reconciles', async () => {
    const { token } = await tc.admin.createJoinToken();
    let from = await tc.center.store.latestEventId();
    const h1 = await startHost('c1', { args: tc.hostArgs(token) });
    hosts.push(h1);
    await waitForEvent(tc.admin, from, (e) => e.kind === 'host.connected' && e.subject === 'host:c1');
    const credential = join(h1.dataDir, CENTER_CREDENTIAL_FILE);
    assert.match(await readFile(credential, 'utf8'), /^ferry-host-/);
    assert.equal((await stat(credential)).mode & 0o777, 0o600, 'the credential is private to the host');
    assert.equal((await tc.admin.host('c1')).url, h1.url);

    from = await tc.center.store.latestEventId();
    await createVm(h1, 'c1-web', 'dirtier', { memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200' });
    await waitForEvent(tc.admin, from, (e) => e.subject === 'vm:c1-web' && (e.payload as { state: string }).state === 'running');
    const v = await tc.admin.vm('c1-web');
    assert.deepEqual([v.host, v.state, v.config], ['c1', 'running', { memoryBytes: 32 * MiB, vcpus: 1 }]);

    // The token was spent: a second host presenting it is refused, logs why and keeps running.
    const h2 = await startHost('c2', { args: tc.hostArgs(token) });
    hosts.push(h2);
    await h2.waitForLog('[UNAUTHORIZED]');
    assert.equal(h2.child.exitCode, null, 'a refused join does not stop the host');
    await assert.rejects(tc.admin.host('c2'), { code: 'NOT_FOUND' });

    from = await tc.center.store.latestEventId();
    await stopHost(h1, 'SIGKILL');
    const down = await waitForEvent(tc.admin, from, (e) => e.kind === 'host.disconnected' && e.subject === 'host:c1');
    assert.equal((down.payload as { vmsUnknown: number }).vmsUnknown, 1);
    assert.equal((await tc.admin.vm('c1-web')).state, 'unknown', 'kept, not deleted');

    // Back without a join token: the stored credential is enough. The center takes what the host really runs.
    from = await tc.center.store.latestEventId();
    const again = await startHost('c1', { dataDir: h1.dataDir, args: tc.hostArgs() });
    hosts.push(again);
    await waitForEvent(tc.admin, from, (e) => e.kind === 'host.connected' && e.subject === 'host:c1');
    const onHost = await again.client.listVms();
    const truth = onHost.find((x) => x.name === 'c1-web');
    if (truth !== undefined) {
      await waitForEvent(tc.admin, from, (e) => e.subject === 'vm:c1-web' && (e.payload as { state: string }).state === truth.state);
      assert.equal((await tc.admin.vm('c1-web')).state, truth.state);
    } else {
      assert.equal((await tc.admin.vm('c1-web')).state, 'unknown', 'a VM its host lost stays recorded as unknown');
    }
    assert.equal((await tc.admin.host('c1')).state, 'connected');
  });

  it('a host whose center is away keeps running and links once the center is there', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-center-late-'));
    try {
      const late = await startTestCenter({ dataDir });
      const url = late.url;
      const { token } = await late.admin.createJoinToken();
      const args = late.hostArgs(token);
      await late.close();
      const h = await startHost('late', { args });
      hosts.push(h);
      await h.waitForLog('[CENTER_UNREACHABLE]');
      // The same center (same store), back on the same port.
      const back = await startTestCenter({ dataDir, listenPort: Number(new URL(url).port) });
      try {
        await waitForEvent(back.admin, 0, (e) => e.kind === 'host.connected' && e.subject === 'host:late');
      } finally {
        await back.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('a host joined to a center on PostgreSQL (in-process agent)', () => {
  let cluster: PostgresCluster | undefined;
  before(async () => { cluster = await startPostgres(); });
  after(async () => { await cluster?.stop(); });

  it('joins, appears with its datastore, and is disconnected when it stops', async () => {
    assert.ok(cluster !== undefined);
    const tc = await startTestCenter({ db: await cluster.createDatabase() });
    const dsDir = await mkdtemp(join(tmpdir(), 'ferry-center-ds-'));
    try {
      const { token } = await tc.admin.createJoinToken();
      const agent = await startAgent('pg1', { datastores: [{ name: 'ds1', path: dsDir }], center: { centerUrl: tc.url, joinToken: token, caFingerprint: tc.caFingerprint } });
      let closed = false;
      try {
        await waitForEvent(tc.admin, 0, (e) => e.kind === 'host.connected' && e.subject === 'host:pg1');
        const h = await tc.admin.host('pg1');
        const ds = (await agent.client.listDatastores())[0];
        assert.deepEqual(h.datastores.map((d) => [d.id, d.mountName, d.shared]), [[ds?.id, 'ds1', false]]);
        // Its space, as the host's heartbeat reported it (kept within the write threshold of what the host says now).
        const kept = h.datastores[0];
        assert.equal(kept?.capacityBytes, ds?.totalBytes);
        assert.ok(Math.abs((kept?.freeBytes ?? -Infinity) - (ds?.spaceLeftBytes ?? 0)) <= DATASTORE_SPACE_WRITE_THRESHOLD_BYTES, `${kept?.freeBytes} free`);
        const from = await tc.center.store.latestEventId();
        await agent.close();
        closed = true;
        await waitForEvent(tc.admin, from, (e) => e.kind === 'host.disconnected' && e.subject === 'host:pg1');
        assert.equal((await tc.admin.host('pg1')).state, 'disconnected');
      } finally {
        if (!closed) await agent.close();
      }
    } finally {
      await tc.close();
      await rm(dsDir, { recursive: true, force: true });
    }
  });
});
