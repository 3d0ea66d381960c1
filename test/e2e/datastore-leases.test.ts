/**
 * A shared datastore between two real host processes: both mount one directory; host A opens a
 * disk on it for writing, host B is refused (DISK_LOCKED, owner A) for as long as A's heartbeat
 * renews the lease; kill -9 of A, and B breaks the lease only after it has expired, takes it and
 * writes. Also `ferry host --datastore` itself: two hosts mounting one directory, and the flag's
 * refusals. Every wait is on a printed line or a condition with a deadline.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { HostClient } from '../../src/api/host-client.js';
import { readLease, type LeaseTiming } from '../../src/storage/lease.js';
import { TEST_TOKEN, removeHostData, startHost, stopHost, type TestHost } from '../helpers/hosts.js';
import { runFerry } from '../helpers/cli.js';

const HELPER = fileURLToPath(new URL('../helpers/datastore-host.js', import.meta.url));
/** Short, so that a takeover is seconds; 8 heartbeats per lease and 4 s of slack, so a loaded CI machine (load 25 seen, 1.5 s was lost there) still renews in time. */
const TIMING: LeaseTiming = { durationMs: 4_000, renewIntervalMs: 500, clockSkewMs: 200 };
/** Upper bound for any one wait (a host start includes the instrumenter warm-up). */
const WAIT_MS = 30_000;
const DISK = 'vm1/disk.raw';

interface HelperHost {
  readonly name: string;
  readonly child: ChildProcess;
  readonly lines: string[];
  /** The first line (already printed or to come) that starts with `prefix` and satisfies `pred`. */
  readonly waitFor: (prefix: string, pred?: (json: Record<string, unknown>) => boolean) => Promise<Record<string, unknown>>;
}

function startHelperHost(name: string, dataDir: string, sharedDir: string): HelperHost {
  const child = spawn(process.execPath, [HELPER, JSON.stringify({ name, dataDir, sharedDir, file: DISK, token: TEST_TOKEN, timing: TIMING })], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (l) => { lines.push(l); for (const w of waiters) w(); });
  const parse = (line: string, prefix: string): Record<string, unknown> => {
    const rest = line.slice(prefix.length).trim();
    return rest.startsWith('{') ? JSON.parse(rest) as Record<string, unknown> : { text: rest };
  };
  const waitFor = (prefix: string, pred: (json: Record<string, unknown>) => boolean = () => true): Promise<Record<string, unknown>> => new Promise((resolve, reject) => {
    const check = (): void => {
      const hit = lines.find((l) => l.startsWith(prefix) && pred(parse(l, prefix)));
      if (hit !== undefined) { done(); resolve(parse(hit, prefix)); }
    };
    const onExit = (): void => { done(); reject(new Error(`host ${name} exited before printing "${prefix}…": ${lines.join(' | ')}`)); };
    const timer = setTimeout(() => { done(); reject(new Error(`host ${name} did not print "${prefix}…" within ${WAIT_MS} ms: ${lines.slice(-5).join(' | ')}`)); }, WAIT_MS);
    const done = (): void => { clearTimeout(timer); waiters.delete(check); child.off('exit', onExit); };
    waiters.add(check);
    child.once('exit', onExit);
    check();
  });
  return { name, child, lines, waitFor };
}

async function stopHelper(h: HelperHost, signal: NodeJS.Signals): Promise<void> {
  if (h.child.exitCode !== null || h.child.signalCode !== null) return;
  const exited = once(h.child, 'exit');
  h.child.kill(signal);
  await exited;
}

describe('a shared datastore mounted by two real host processes', () => {
  let base = '';
  let shared = '';
  const helpers: HelperHost[] = [];
  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'ferry-shared-ds-'));
    shared = join(base, 'shared');
    await mkdir(join(shared, 'vm1'), { recursive: true });
    await writeFile(join(shared, DISK), Buffer.alloc(4096));
  });
  after(async () => {
    await Promise.all(helpers.map((h) => stopHelper(h, 'SIGKILL')));
    await rm(base, { recursive: true, force: true });
  });

  it('B is refused while A writes and renews; after kill -9 of A, B breaks the expired lease, takes it and writes', async () => {
    const a = startHelperHost('a', join(base, 'data-a'), shared);
    helpers.push(a);
    const aTaken = await a.waitFor('taken');
    assert.equal(aTaken.broke, null, 'the disk was free');
    const b = startHelperHost('b', join(base, 'data-b'), shared);
    helpers.push(b);
    // B is refused with A as the owner, and still refused after A's heartbeat has renewed twice (so past A's first expiry).
    const refusal = await b.waitFor('refused', (d) => Number(d.generation) >= 3);
    assert.deepEqual(refusal.owner, { hostName: 'a', hostId: aTaken.hostId });
    assert.equal(b.lines.some((l) => l.startsWith('taken')), false);
    // Both hosts are real hosts serving their API, mounting the same directory.
    const urls = await Promise.all([a, b].map((h) => h.waitFor('ready url=')));
    const views = await Promise.all(urls.map((u) => new HostClient(String(u.text).replace(/^url=/, ''), TEST_TOKEN).listDatastores()));
    const real = await realpath(shared);
    assert.deepEqual(views.map((v) => v.map((d) => [d.name, d.path])), [[['shared', real]], [['shared', real]]]);

    await stopHelper(a, 'SIGKILL');
    const killedAtMs = Date.now();
    const bTaken = await b.waitFor('taken');
    assert.equal(bTaken.broke, 'a', 'B broke A\'s stale lease');
    // Not before the lease A last renewed had expired (+ the clock-skew allowance): B's last refusal names that expiry.
    const lastRefusal = b.lines.filter((l) => l.startsWith('refused')).map((l) => JSON.parse(l.slice('refused'.length)) as { expiresAt: string }).pop();
    assert.ok(lastRefusal !== undefined);
    assert.ok(Number(bTaken.atMs) > Date.parse(lastRefusal.expiresAt) + TIMING.clockSkewMs, `taken at ${String(bTaken.atMs)}, lease expired at ${lastRefusal.expiresAt}`);
    assert.ok(Number(bTaken.atMs) - killedAtMs < TIMING.durationMs + TIMING.clockSkewMs + 5_000, 'within about one lease duration of the kill');
    assert.equal((await readFile(join(shared, DISK))).subarray(0, 1).toString(), 'b', 'B wrote after A');
    assert.equal((await readLease(join(real, DISK)))?.hostName, 'b');
    assert.equal(b.lines.some((l) => l.startsWith('lost')), false, 'B\'s lease is not lost');
    // A clean stop releases the lease.
    await stopHelper(b, 'SIGTERM');
    assert.equal(b.child.exitCode, 0);
    assert.equal(await readLease(join(real, DISK)), null, 'B released its lease on close');
  });
});

describe('ferry host --datastore', () => {
  let base = '';
  const hosts: TestHost[] = [];
  before(async () => { base = await mkdtemp(join(tmpdir(), 'ferry-ds-flag-')); await mkdir(join(base, 'shared')); await mkdir(join(base, 'local')); });
  after(async () => {
    await Promise.all(hosts.map(async (h) => { await stopHost(h); await removeHostData(h); }));
    await rm(base, { recursive: true, force: true });
  });

  it('two hosts mount one directory (repeatable flag); GET /v1/datastores shows it on both', async () => {
    const real = await realpath(base);
    hosts.push(await startHost('a', { args: ['--datastore', `shared=${join(base, 'shared')}`, '--datastore', `local=${join(base, 'local')}`] }));
    hosts.push(await startHost('b', { args: ['--datastore', `shared=${join(base, 'shared')}`] }));
    const [a, b] = await Promise.all(hosts.map((h) => h.client.listDatastores()));
    assert.deepEqual(a?.map((d) => [d.name, d.path]), [['shared', join(real, 'shared')], ['local', join(real, 'local')]]);
    assert.deepEqual(b?.map((d) => [d.name, d.path]), [['shared', join(real, 'shared')]]);
  });

  it('refuses a malformed flag, a duplicate name, a bad name, a missing path and a file, with DATASTORE_INVALID (exit 1)', async () => {
    await writeFile(join(base, 'file'), '');
    const data = join(base, 'data');
    const tokenFile = join(base, 'token');
    await writeFile(tokenFile, TEST_TOKEN);
    for (const flags of [
      ['--datastore', 'no-equals'], ['--datastore', `=${base}`], ['--datastore', 'x='],
      ['--datastore', `x=${join(base, 'shared')}`, '--datastore', `x=${join(base, 'local')}`],
      ['--datastore', `a b=${base}`], ['--datastore', `x=${join(base, 'missing')}`], ['--datastore', `x=${join(base, 'file')}`],
    ]) {
      const r = await runFerry(['host', '--name', 'bad', '--data-dir', data, '--listen', '127.0.0.1:0', '--token-file', tokenFile, ...flags]);
      assert.equal(r.code, 1, `${flags.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /error \[DATASTORE_INVALID\]/, flags.join(' '));
    }
  });

  it('--lease-duration/--lease-renew/--lease-clock-skew: a heartbeat that could not keep the lease is refused (INVALID_ARGUMENT, exit 1)', async () => {
    const tokenFile = join(base, 'token');
    await writeFile(tokenFile, TEST_TOKEN);
    for (const flags of [['--lease-duration', '1s', '--lease-renew', '600ms'], ['--lease-renew', '0ms'], ['--lease-clock-skew', 'soon']]) {
      const r = await runFerry(['host', '--name', 'bad', '--data-dir', join(base, 'data'), '--listen', '127.0.0.1:0', '--token-file', tokenFile, ...flags]);
      assert.equal(r.code, 1, `${flags.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /error \[(INVALID_ARGUMENT|INVALID_DURATION)\]/, flags.join(' '));
    }
  });
});
