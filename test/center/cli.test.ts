/**
 * `ferry center` as a child process and the CLI verbs that talk to it: the ready line, the CA
 * fingerprint and the admin token shown once, `ferry login`, `center join-token`, a real host joining
 * with it, `host list --json`, `task list --json`, a missing token refused, and a clean SIGTERM.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { centerReady as ready, runFerry as runFerryIn, startFerry } from '../helpers/cli.js';
import { removeHostData, startHost, stopHost, type TestHost } from '../helpers/hosts.js';

describe('ferry center (CLI)', () => {
  const dirs: string[] = [];
  const hosts: TestHost[] = [];
  after(async () => {
    for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('runs, issues a join token, lists the host that joined and its tasks, and stops cleanly on SIGTERM', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-center-cli-'));
    dirs.push(dataDir);
    const args = ['center', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--heartbeat-interval', '200ms', '--sweep-interval', '50ms'];
    // Every CLI run with its own client config, never a person's.
    const env = { FERRY_CONFIG: join(dataDir, 'client', 'config.json') };
    const runFerry = (a: readonly string[]): ReturnType<typeof runFerryIn> => runFerryIn(a, { env });
    const first = startFerry(args);
    const { url, tokenFile, fingerprint } = await ready(first.child, first.stdout);
    assert.match(url, /^https:\/\//);
    assert.equal(tokenFile, join(dataDir, 'admin.token'));
    const adminToken = (await readFile(tokenFile, 'utf8')).trim();
    assert.ok(first.stdout().includes(`admin token (shown once; also in ${tokenFile}): ${adminToken}`), 'shown at first start');

    // Without the CA trusted, a command is refused with TLS_UNTRUSTED; ferry login trusts it by its fingerprint.
    const untrusted = await runFerry(['center', 'join-token', '--center', url, '--token-file', tokenFile]);
    assert.equal(untrusted.code, 1);
    assert.match(untrusted.stderr, /\[TLS_UNTRUSTED\]/);
    const login = await runFerry(['login', '--center', url, '--token-file', tokenFile, '--ca-fingerprint', fingerprint]);
    assert.equal(login.code, 0, login.stderr);
    const jt = await runFerry(['center', 'join-token', '--center', url, '--token-file', tokenFile]);
    assert.equal(jt.code, 0, jt.stderr);
    const token = jt.stdout.trim();
    assert.match(token, /^ferry-join-/);

    assert.ok(jt.stderr.includes(`--center-ca-fingerprint ${fingerprint}`), 'join-token tells how a host joins');
    const h = await startHost('cli1', { args: ['--center', url, '--join-token', token, '--center-ca-fingerprint', fingerprint] });
    hosts.push(h);
    await h.waitForLog('linked to center');
    const list = await runFerry(['host', 'list', '--center', url, '--token-file', tokenFile, '--json']);
    assert.equal(list.code, 0, list.stderr);
    const listed = JSON.parse(list.stdout) as { name: string; state: string; url: string }[];
    assert.deepEqual(listed.map((x) => [x.name, x.state, x.url]), [['cli1', 'connected', h.url]]);
    const text = await runFerry(['host', 'list', '--center', url, '--token-file', tokenFile]);
    assert.match(text.stdout, /^cli1\tconnected\t/);

    const tasks = await runFerry(['task', 'list', '--center', url, '--token-file', tokenFile, '--json']);
    assert.equal(tasks.code, 0, tasks.stderr);
    assert.deepEqual(JSON.parse(tasks.stdout), []);

    const anon = await runFerryIn(['host', 'list', '--center', url], { env: { FERRY_CONFIG: join(dataDir, 'none.json') } });
    assert.equal(anon.code, 1);
    assert.match(anon.stderr, /\[UNAUTHORIZED\]/);

    first.child.kill('SIGTERM');
    const stopped = await first.done;
    assert.equal(stopped.code, 0, `${stopped.signal ?? ''} ${stopped.stderr}`);

    // A restart keeps the token and does not show it again.
    const second = startFerry(args);
    await ready(second.child, second.stdout);
    assert.ok(!second.stdout().includes('admin token (shown once'), 'shown once only');
    assert.equal((await readFile(tokenFile, 'utf8')).trim(), adminToken);
    second.child.kill('SIGTERM');
    assert.equal((await second.done).code, 0);
  });
});
