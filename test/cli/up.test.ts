/**
 * `ferry up` as a child process: a center, two hosts and the demo VM come up, the config file it
 * writes lets the printed commands run as printed (no flags), `ferry vm migrate demo` moves the VM to
 * the other host, and SIGTERM stops everything (exit 0, no process left, temp data and config gone).
 * With someone else's config file it leaves the file alone and prints the commands with flags; with
 * --data-dir a second run resumes the fleet. A dead host or a failed start-up stops everything (exit 1).
 * With --sites 2 each site has its host and datastore. Bad --hosts or --sites is a usage error; a
 * corrupt config file is an error naming it.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { CenterTaskView, CenterVmView } from '../../src/api/center-v1.js';
import { runFerry, startFerry, type CliResult } from '../helpers/cli.js';

/** Start-up of a center, two hosts and a VM on a loaded 2-core machine, then the commands and the stop. */
const UP_LIFETIME_MS = 180_000;
const READY_TIMEOUT_MS = 90_000;

type Up = ReturnType<typeof startFerry>;
interface Ready { url: string; tokenFile: string; config: string; dataDir: string; tries: string[] }

function envWith(config: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, FERRY_CONFIG: config };
  delete env.FERRY_CENTER_TOKEN;
  return env;
}

function ready(up: Up): Promise<Ready> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`ferry up not ready within ${READY_TIMEOUT_MS} ms:\n${up.stdout()}\n${up.stderr()}`)); }, READY_TIMEOUT_MS);
    const check = (): void => {
      const out = up.stdout();
      const m = /ferry up ready url=(\S+) token-file=(\S+) config=(\S+) data-dir=(\S+)\n/.exec(out);
      if (m === null) return;
      clearTimeout(timer);
      up.child.stdout?.off('data', check);
      const tries = out.split('\n').filter((l) => l.startsWith('  $ ')).map((l) => l.slice(4));
      resolve({ url: m[1] ?? '', tokenFile: m[2] ?? '', config: m[3] ?? '', dataDir: m[4] ?? '', tries });
    };
    up.child.stdout?.on('data', check);
    up.child.once('exit', () => { clearTimeout(timer); reject(new Error(`ferry up exited before it was ready:\n${up.stdout()}\n${up.stderr()}`)); });
    check();
  });
}

/** A printed command's arguments: its first word is how to run ferry (./ferry, a path, or ferry). */
function argsOf(command: string): string[] {
  const words = command.split(' ');
  assert.match(words[0] ?? '', /(^|\/)ferry$/, command);
  return words.slice(1);
}

/** The pids of `ferry up`'s children (the center and the hosts). */
async function childPids(pid: number): Promise<number[]> {
  const { stdout } = await promisify(execFile)('ps', ['-o', 'pid=', '--ppid', String(pid)]);
  return stdout.split('\n').map((l) => Number(l.trim())).filter((n) => n > 0);
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

async function stop(up: Up, pids: readonly number[]): Promise<CliResult> {
  up.child.kill('SIGTERM');
  const done = await up.done;
  assert.deepEqual(pids.filter(alive), [], 'no center or host process is left');
  return done;
}

describe('ferry up (child processes)', () => {
  const dirs: string[] = [];
  const ups: Up[] = [];
  const orphans: number[] = [];
  after(async () => {
    for (const u of ups) u.child.kill('SIGKILL');
    for (const pid of orphans) if (alive(pid)) process.kill(pid, 'SIGKILL');
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('starts a center, two hosts and the demo VM; the printed commands work as printed; SIGTERM stops everything', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-up-test-'));
    dirs.push(dir);
    const config = join(dir, 'config.json');
    const env = envWith(config);
    const up = startFerry(['up', '--hosts', '2', '--listen', '127.0.0.1:0'], { env, timeoutMs: UP_LIFETIME_MS });
    ups.push(up);
    const r = await ready(up);
    dirs.push(r.dataDir);
    const pids = await childPids(up.child.pid ?? 0);
    orphans.push(...pids);
    assert.equal(pids.length, 3, 'a center and two hosts');
    assert.equal(r.config, config);
    const written = JSON.parse(await readFile(config, 'utf8')) as { center: string; token: string; writtenBy: string };
    assert.deepEqual([written.center, written.token, written.writtenBy], [r.url, (await readFile(r.tokenFile, 'utf8')).trim(), 'ferry up']);
    assert.match(up.stdout(), /token {4}ferry-api-/);
    assert.match(up.stderr(), /center started at .*\n(.|\n)*host alpha joined(.|\n)*demo VM running on /);

    const list = await runFerry(['vm', 'list', '--json'], { env });
    assert.equal(list.code, 0, list.stderr);
    const vms = JSON.parse(list.stdout) as CenterVmView[];
    assert.deepEqual(vms.map((v) => [v.name, v.state]), [['demo', 'running']]);
    const before = vms[0]?.host ?? '';

    // Every printed command, as printed (with the config file, no flags).
    assert.deepEqual(r.tries.map((t) => argsOf(t).join(' ')), [
      'vm list', 'host list', 'vm console demo --follow', 'vm migrate demo', `host maintenance enter ${before}`, `host maintenance exit ${before}`, 'task list',
    ]);
    for (const t of r.tries) {
      const args = argsOf(t);
      if (args.includes('--follow')) {
        const follow = startFerry(args, { env });
        await new Promise<void>((resolve) => { const check = (): void => { if (follow.stdout().includes('dirtier:')) resolve(); }; follow.child.stdout?.on('data', check); check(); });
        follow.child.kill('SIGINT');
        const done = await follow.done;
        assert.equal(done.code, 0, `${t}: ${done.stderr}`);
        continue;
      }
      const res = await runFerry(args, { env });
      assert.equal(res.code, 0, `${t}: ${res.stderr}`);
    }
    const listed = await runFerry(['host', 'list', '--json'], { env });
    assert.deepEqual((JSON.parse(listed.stdout) as { name: string; state: string }[]).map((h) => [h.name, h.state]), [['alpha', 'connected'], ['beta', 'connected']]);

    // The center picks the target: the one other host.
    const where = (JSON.parse((await runFerry(['vm', 'list', '--json'], { env })).stdout) as CenterVmView[])[0]?.host ?? '';
    const migrated = await runFerry(['vm', 'migrate', 'demo', '--json'], { env });
    assert.equal(migrated.code, 0, migrated.stderr);
    const task = JSON.parse(migrated.stdout) as CenterTaskView;
    assert.equal(task.state, 'succeeded', JSON.stringify(task.error));
    const after = (JSON.parse((await runFerry(['vm', 'list', '--json'], { env })).stdout) as CenterVmView[])[0];
    assert.deepEqual([after?.state, after?.host], ['running', where === 'alpha' ? 'beta' : 'alpha']);

    const done = await stop(up, pids);
    assert.equal(done.code, 0, done.stderr);
    assert.equal(existsSync(r.dataDir), false, 'the temporary data is removed');
    assert.equal(existsSync(config), false, 'the config file it wrote is removed');
    assert.match(done.stderr, /SIGTERM: stopping(.|\n)*stopped, temporary data removed/);
  });

  it('leaves someone else\'s config alone (commands printed with flags); --data-dir keeps the fleet and a second run resumes it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-up-test-'));
    dirs.push(dir);
    const config = join(dir, 'config.json');
    const foreign = `${JSON.stringify({ center: 'https://127.0.0.1:1', token: `ferry-api-${'x'.repeat(43)}`, caPem: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', caFingerprint: 'AB', writtenBy: 'ferry login' })}\n`;
    await writeFile(config, foreign, { mode: 0o600 });
    const env = envWith(config);
    const dataDir = join(dir, 'fleet');
    const first = startFerry(['up', '--hosts', '1', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], { env, timeoutMs: UP_LIFETIME_MS });
    ups.push(first);
    const r1 = await ready(first);
    const pids1 = await childPids(first.child.pid ?? 0);
    orphans.push(...pids1);
    assert.equal(r1.config, '-');
    assert.match(first.stdout(), /someone else's \(writtenBy ferry login\): left alone/);
    const list = r1.tries.find((t) => t.includes('vm list')) ?? '';
    assert.ok(list.includes(`--center ${r1.url} --token-file ${r1.tokenFile} --ca-file ${join(dataDir, 'center-ca.pem')}`), list);
    const listed = await runFerry(argsOf(list), { env });
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /^demo\trunning\talpha\t64 MiB\n$/);
    assert.equal((await stop(first, pids1)).code, 0);
    assert.equal(existsSync(join(dataDir, 'center')), true, 'the data directory is kept');
    assert.equal(await readFile(config, 'utf8'), foreign, 'the config file is untouched');

    const second = startFerry(['up', '--hosts', '1', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], { env, timeoutMs: UP_LIFETIME_MS });
    ups.push(second);
    const r2 = await ready(second);
    const pids2 = await childPids(second.child.pid ?? 0);
    orphans.push(...pids2);
    assert.equal(r2.tokenFile, r1.tokenFile, 'the same center data');
    assert.match(second.stderr(), /demo VM exists already \(running on alpha\)/, 'the host resumed the VM it saved');
    const again = await runFerry(['vm', 'list', '--json', '--center', r2.url, '--token-file', r2.tokenFile, '--ca-file', join(dataDir, 'center-ca.pem')], { env });
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual((JSON.parse(again.stdout) as CenterVmView[]).map((v) => [v.name, v.state, v.host]), [['demo', 'running', 'alpha']]);
    const done = await stop(second, pids2);
    assert.equal(done.code, 0, done.stderr);
    assert.match(done.stderr, /the fleet is kept in /);
  });

  it('--sites 2: a host per site, each on its own datastore; a host that dies on its own stops everything, with exit code 1 and which one it was', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-up-test-'));
    dirs.push(dir);
    const up = startFerry(['up', '--sites', '2', '--no-demo', '--listen', '127.0.0.1:0'], { env: envWith(join(dir, 'config.json')), timeoutMs: UP_LIFETIME_MS });
    ups.push(up);
    const r = await ready(up);
    dirs.push(r.dataDir);
    assert.deepEqual(r.tries.map((t) => argsOf(t).join(' ')), ['vm list', 'host list', 'site list', 'task list']);
    const sites = await runFerry(['site', 'list'], { env: envWith(r.config) });
    assert.equal(sites.code, 0, sites.stderr);
    assert.match(sites.stdout, /^site-a\thosts alpha\tdatastores site-a-ds\t/m);
    assert.match(sites.stdout, /^site-b\thosts beta\tdatastores site-b-ds\t/m);
    const pids = await childPids(up.child.pid ?? 0);
    orphans.push(...pids);
    const { stdout } = await promisify(execFile)('ps', ['-o', 'pid=,args=', '--ppid', String(up.child.pid ?? 0)]);
    const beta = Number(/^\s*(\d+) .* host --name beta /m.exec(stdout)?.[1]);
    assert.ok(pids.includes(beta), stdout);
    process.kill(beta, 'SIGKILL');
    const done = await up.done;
    assert.equal(done.code, 1, done.stderr);
    assert.match(done.stderr, /host beta exited unexpectedly \(signal SIGKILL\)/);
    assert.deepEqual(pids.filter(alive), [], 'the others are stopped');
    assert.equal(existsSync(r.dataDir), false);
  });

  it('a start-up step that fails (the center\'s port is taken) stops what was started, with a clear error and exit code 1', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => { holder.listen(0, '127.0.0.1', resolve); });
    try {
      const port = (holder.address() as AddressInfo).port;
      const dir = await mkdtemp(join(tmpdir(), 'ferry-up-test-'));
      dirs.push(dir);
      const r = await runFerry(['up', '--hosts', '1', '--listen', `127.0.0.1:${port}`], { env: envWith(join(dir, 'config.json')) });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /start-up failed: \[CENTER_ERROR\] the center exited before it was ready \(exit code 1\)(.|\n)*EADDRINUSE(.|\n)*stopped, temporary data removed/);
      assert.equal(existsSync(join(dir, 'config.json')), false, 'no config written');
    } finally {
      holder.close();
    }
  });

  it('refuses --hosts 0 and --hosts 99 as usage errors; a corrupt config file is an error naming it', async () => {
    for (const n of ['0', '99']) {
      const r = await runFerry(['up', '--hosts', n]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /--hosts: \d+ is out of range 1\.\.16/);
    }
    const sites = await runFerry(['up', '--sites', '5']);
    assert.equal(sites.code, 2, sites.stderr);
    assert.match(sites.stderr, /--sites: 5 is out of range 1\.\.4/);
    const fewer = await runFerry(['up', '--sites', '3', '--hosts', '2']);
    assert.equal(fewer.code, 1, fewer.stderr);
    assert.match(fewer.stderr, /--hosts 2 is fewer than --sites 3: every site needs a host/);
    const dir = await mkdtemp(join(tmpdir(), 'ferry-up-test-'));
    dirs.push(dir);
    const config = join(dir, 'config.json');
    await writeFile(config, '{"center": 12');
    const r = await runFerry(['vm', 'list'], { env: envWith(config) });
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`error \\[CONFIG_INVALID\\]: the ferry config file ${config} is not JSON`));
    await writeFile(config, '{"center": "https://127.0.0.1:7100"}');
    const missing = await runFerry(['task', 'list'], { env: envWith(config) });
    assert.match(missing.stderr, /CONFIG_INVALID.*is invalid \(token: /);
  });
});
