/**
 * Two `ferry center` processes on one real PostgreSQL share the work: 20 queued live migrations (asked
 * of either center) are each executed exactly once — counted on the hosts that ran them — even when one
 * center is killed with SIGKILL in the middle: the other takes over its claims and its duties and
 * finishes every task with the truth.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiB } from '../../src/lib/units.js';
import { CenterClient } from '../../src/api/center-client.js';
import type { CenterTaskView } from '../../src/api/center-v1.js';
import { openCenterStore } from '../../src/center/store/open.js';
import { centerReady, startFerry } from '../helpers/cli.js';
import { removeHostData, startHost, stopHost, type TestHost } from '../helpers/hosts.js';
import { waitForEvent } from '../helpers/center.js';
import { startPostgres, type PostgresCluster } from '../helpers/postgres.js';

const VMS_PER_HOST = 10;
const TASK_TIMEOUT_MS = 120_000;

/** The sum of a counter's samples whose labels include every `labels` pair. */
function counter(text: string, name: string, labels: Readonly<Record<string, string>>): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const body = line.slice(name.length + 1, line.indexOf('}'));
    if (Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('two centers on one PostgreSQL (child processes)', () => {
  let cluster: PostgresCluster | undefined;
  const dirs: string[] = [];
  const hosts: TestHost[] = [];
  const centers: ReturnType<typeof startFerry>[] = [];
  before(async () => { cluster = await startPostgres(); });
  after(async () => {
    for (const c of centers) c.child.kill('SIGKILL');
    for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
    for (const d of dirs) await rm(d, { recursive: true, force: true });
    await cluster?.stop();
  });

  it('20 queued migrations are each executed exactly once, also when one center is killed mid-way', async () => {
    assert.ok(cluster !== undefined);
    const db = await cluster.createDatabase();
    const start = async (name: string): Promise<{ client: CenterClient; proc: ReturnType<typeof startFerry>; fingerprint: string }> => {
      const dataDir = await mkdtemp(join(tmpdir(), `ferry-center-${name}-`));
      dirs.push(dataDir);
      const proc = startFerry(['center', '--data-dir', dataDir, '--db', db, '--listen', '127.0.0.1:0', '--heartbeat-interval', '500ms', '--missed-heartbeats', '20', '--sweep-interval', '100ms', '--task-lease', '1s', '--max-migrations', '4']);
      centers.push(proc);
      const { url, tokenFile, fingerprint } = await centerReady(proc.child, proc.stdout);
      const caPem = (await CenterClient.readCa(url)).certificate;
      return { client: new CenterClient(url, (await readFile(tokenFile, 'utf8')).trim(), { caPem }), proc, fingerprint };
    };
    const a = await start('a');
    const b = await start('b');
    // The hosts heartbeat to B, the center that stays: A's death must not look like theirs.
    for (const name of ['ta', 'tb']) {
      const { token } = await a.client.createJoinToken();
      assert.equal(a.fingerprint, b.fingerprint, 'one CA for the fleet');
      const h = await startHost(name, { args: ['--center', b.client.baseUrl, '--join-token', token, '--center-ca-fingerprint', b.fingerprint] });
      hosts.push(h);
      await waitForEvent(b.client, 0, (e) => e.kind === 'host.connected' && e.subject === `host:${name}`);
    }
    const names: string[] = [];
    const creates: CenterTaskView[] = [];
    for (const [i, host] of [...Array<string>(VMS_PER_HOST).fill('ta'), ...Array<string>(VMS_PER_HOST).fill('tb')].entries()) {
      const name = `two-${i}`;
      names.push(name);
      creates.push(await (i % 2 === 0 ? a : b).client.createVm({ name, host, image: 'dirtier', memoryBytes: 16 * MiB, cmdline: 'hot=256KiB rate=100', start: true }));
    }
    for (const t of creates) {
      const done = await b.client.waitForTask(t.id, { timeoutMs: TASK_TIMEOUT_MS });
      assert.equal(done.state, 'succeeded', `create ${done.target}: ${JSON.stringify(done.error)}`);
    }

    // 20 migrations, asked alternately of A and B, each to the other host.
    const slow = { bandwidthBytesPerSec: 4 * MiB };
    const migrations: CenterTaskView[] = [];
    for (const [i, name] of names.entries()) {
      migrations.push(await (i % 2 === 0 ? a : b).client.migrateVm(name, { to: i < VMS_PER_HOST ? 'tb' : 'ta', options: slow }));
    }
    // Kill A once some finished and others are still to run.
    let finished = 0;
    await waitForEvent(b.client, 0, (e) => {
      if (e.kind === 'task.succeeded' && migrations.some((m) => `task:${m.id}` === e.subject)) finished++;
      return finished >= 4;
    }, TASK_TIMEOUT_MS);
    a.proc.child.kill('SIGKILL');
    await a.proc.done;

    const ended = await Promise.all(migrations.map((m) => b.client.waitForTask(m.id, { timeoutMs: TASK_TIMEOUT_MS })));
    for (const t of ended) assert.equal(t.state, 'succeeded', `task ${t.id} ${t.target}: ${t.state} ${JSON.stringify(t.error)}`);
    for (const [i, name] of names.entries()) assert.equal((await b.client.vm(name)).host, i < VMS_PER_HOST ? 'tb' : 'ta');
    // Exactly once: each source host started exactly its 10 migrations, and every one succeeded.
    for (const h of hosts) {
      const m = await h.client.metrics();
      assert.equal(counter(m, 'ferry_migrations_total', { role: 'source' }), VMS_PER_HOST, `${h.name}: migrations it ran as source`);
      assert.equal(counter(m, 'ferry_migrations_total', { role: 'source', outcome: 'succeeded' }), VMS_PER_HOST);
      assert.equal((await h.client.listVms()).length, VMS_PER_HOST, `${h.name} runs the 10 VMs that came to it, no copy of those that left`);
    }
    // Both centers did part of the work.
    const store = await openCenterStore({ backend: 'postgres', url: db });
    try {
      const claimers = new Set<string>();
      for (const m of migrations) claimers.add(((await store.getTask(m.id)).claimedBy ?? '').split('/')[0] ?? '');
      assert.equal(claimers.size, 2, `tasks were executed by both centers (${[...claimers].join(', ')})`);
    } finally {
      await store.close();
    }
  });
});
