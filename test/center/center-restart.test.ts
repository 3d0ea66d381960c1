/**
 * The center as a child process driven by the CLI (`ferry vm create|list|migrate --center`, `ferry task
 * watch|list`, `ferry host maintenance`), and killed with SIGKILL in the middle of a live migration it
 * ordered: restarted on the same data directory and port, it takes the task over, finds the migration
 * on the source host by the id it checkpointed, and ends the task with the truth — the VM on the target,
 * running, on exactly one host.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CenterClient } from '../../src/api/center-client.js';
import type { CenterTaskView } from '../../src/api/center-v1.js';
import { centerReady, runFerry, startFerry } from '../helpers/cli.js';
import { removeHostData, startHost, stopHost, type TestHost } from '../helpers/hosts.js';
import { waitForEvent } from '../helpers/center.js';

describe('a center killed mid-migration (child processes, CLI)', () => {
  const dirs: string[] = [];
  const hosts: TestHost[] = [];
  const centers: ReturnType<typeof startFerry>[] = [];
  after(async () => {
    for (const c of centers) c.child.kill('SIGKILL');
    for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('is restarted, takes its task over and ends it with where the VM really is', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-center-kill-'));
    dirs.push(dataDir);
    const centerArgs = (listen: string): string[] => ['center', '--data-dir', dataDir, '--listen', listen, '--heartbeat-interval', '500ms', '--missed-heartbeats', '20', '--sweep-interval', '100ms', '--task-lease', '1s'];
    const first = startFerry(centerArgs('127.0.0.1:0'));
    centers.push(first);
    const { url, tokenFile, fingerprint } = await centerReady(first.child, first.stdout);
    const caPem = (await CenterClient.readCa(url)).certificate;
    const caFile = join(dataDir, 'ca.pem');
    await writeFile(caFile, caPem);
    const admin = new CenterClient(url, (await readFile(tokenFile, 'utf8')).trim(), { caPem });
    const cli = (args: readonly string[]): ReturnType<typeof runFerry> => runFerry([...args, '--center', url, '--token-file', tokenFile, '--ca-file', caFile]);
    for (const name of ['ka', 'kb']) {
      const { token } = await admin.createJoinToken();
      const h = await startHost(name, { args: ['--center', url, '--join-token', token, '--center-ca-fingerprint', fingerprint] });
      hosts.push(h);
      await h.waitForLog('linked to center');
    }

    const created = await cli(['vm', 'create', 'kvm', '--image', 'dirtier', '--memory', '64MiB', '--cmdline', 'hot=40MiB rate=200 fill=1', '--on', 'ka', '--start', '--json']);
    assert.equal(created.code, 0, created.stderr);
    assert.equal((JSON.parse(created.stdout) as CenterTaskView).state, 'succeeded');
    const listed = await cli(['vm', 'list', '--json']);
    assert.deepEqual((JSON.parse(listed.stdout) as { name: string; host: string }[]).map((v) => [v.name, v.host]), [['kvm', 'ka']]);

    // Slow enough to kill the center in the middle: 40 MiB of hot pages at 8 MiB/s.
    const task = await admin.migrateVm('kvm', { to: 'kb', options: { bandwidthBytesPerSec: 8 * 2 ** 20 } });
    // The first migration of this VM: replaying from the first event finds its start.
    await waitForEvent(admin, 0, (e) => e.kind === 'migration.started' && e.subject === 'vm:kvm');
    first.child.kill('SIGKILL');
    await first.done;

    const port = new URL(url).port;
    const second = startFerry(centerArgs(`127.0.0.1:${port}`));
    centers.push(second);
    await centerReady(second.child, second.stdout);
    const watched = await cli(['task', 'watch', String(task.id), '--json']);
    assert.equal(watched.code, 0, watched.stderr);
    const done = JSON.parse(watched.stdout) as CenterTaskView;
    assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
    assert.ok(done.attempts >= 2, `taken over (attempts ${done.attempts})`);
    assert.equal((done.result as { to: string }).to, 'kb');
    assert.deepEqual([(await admin.vm('kvm')).host, (await admin.vm('kvm')).state], ['kb', 'running']);
    const holders = await Promise.all(hosts.map(async (h) => (await h.client.listVms()).filter((v) => v.name === 'kvm').map((v) => v.state)));
    assert.deepEqual(holders, [[], ['running']], 'exactly one host runs it');

    const tasks = await cli(['task', 'list', '--state', 'succeeded', '--kind', 'vm.migrate', '--json']);
    assert.deepEqual((JSON.parse(tasks.stdout) as CenterTaskView[]).map((t) => t.id), [task.id]);
    const enter = await cli(['host', 'maintenance', 'enter', 'kb', '--json']);
    assert.equal(enter.code, 0, enter.stderr);
    assert.equal((JSON.parse(enter.stdout) as CenterTaskView).state, 'succeeded');
    assert.equal((await admin.vm('kvm')).host, 'ka', 'evacuated back');
    assert.equal((await admin.host('kb')).state, 'in-maintenance');
    const exit = await cli(['host', 'maintenance', 'exit', 'kb', '--json']);
    assert.equal(exit.code, 0, exit.stderr);
    assert.equal((await admin.host('kb')).state, 'connected');
    const bad = await cli(['task', 'watch', 'x1']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /not a task id/);
  });
});
