/**
 * Network file copies through the center (docs/design/nfc.md, "The center") with real `ferry host`
 * processes mounting shared temporary directories, and an in-process center on SQLite: the local form
 * and the remote form (over the copy's own virtual path) verified byte for byte; `ferry task move`
 * mid-copy (the copy goes on on the other host from the boundary the first acknowledged; the segments
 * name both); entering maintenance on the copying host hands the copy off and the host reaches
 * in-maintenance — or, with no other host, stays entering-maintenance and says which copy holds it;
 * cancel leaves no staging file; refusals with their reasons. Every wait is on tasks or events.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MiB } from '../../src/lib/units.js';
import type { CenterTaskView } from '../../src/api/center-v1.js';
import { until, type TestHost } from '../helpers/hosts.js';
import { collectEvents, startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';
import { runFerry } from '../helpers/cli.js';
import {
  COPY_TASK_TIMEOUT_MS, copyDirs, copyProgressed, sha256File, stagingFiles, startCopyHost, stopCenterFleet, writeSourceFiles, type CopyDirs, type CopyResult,
} from '../helpers/copy-fleet.js';

/** 12 MiB at 2 MiB/s: about 6 s, long enough to act on the copy while it runs. */
const SLOW_FILE = { path: 'slow/disk.img', sizeBytes: 12 * MiB, holeBytes: 2 * MiB };
const SLOW_RATE = 2 * MiB;
/** 16 MiB at 1 MiB/s (the slowest cap): about 14 s, enough for a CLI process to start on a loaded machine mid-copy. */
const SLOWER_FILE = { path: 'slow/big.img', sizeBytes: 16 * MiB, holeBytes: 2 * MiB };
const SLOWER_RATE = MiB;

describe('network file copies through the center (real host processes, SQLite)', () => {
  let tc: TestCenter;
  let fs: CopyDirs;
  const hosts = new Map<string, TestHost>();
  let digests = new Map<string, string>();
  const host = (n: string): TestHost => { const h = hosts.get(n); assert.ok(h !== undefined); return h; };
  const wait = (t: CenterTaskView): Promise<CenterTaskView> => tc.admin.waitForTask(t.id, { timeoutMs: COPY_TASK_TIMEOUT_MS });
  const succeeded = async (t: CenterTaskView): Promise<CopyResult> => {
    const done = await wait(t);
    assert.equal(done.state, 'succeeded', `task ${done.id} ${done.kind} ${done.target}: ${done.state} ${JSON.stringify(done.error)} (${done.phase})`);
    return done.result as CopyResult;
  };
  /** The target's bytes equal the source's, file by file; no staging file is left in the target. */
  const sameBytes = async (target: string, paths: readonly string[]): Promise<void> => {
    for (const p of paths) assert.equal(await sha256File(join(fs.dir(target), p)), digests.get(p), `${target}/${p} equals the source`);
    assert.deepEqual(await stagingFiles(fs.dir(target)), [], `no staging file is left in ${target}`);
  };

  before(async () => {
    // 20 s of silence before a host counts as disconnected: a loaded machine delays heartbeats, and no test waits for a disconnect.
    tc = await startTestCenter({ taskLeaseMs: 3000, heartbeatIntervalMs: 500, missedHeartbeats: 40 });
    fs = await copyDirs(['src', 'dst', 'far']);
    digests = await writeSourceFiles(fs.dir('src'), [
      { path: 'a.img', sizeBytes: 6 * MiB + 12345, holeBytes: 3 * MiB }, { path: 'one.byte', sizeBytes: 1 }, { path: 'empty.img', sizeBytes: 0 }, SLOW_FILE, SLOWER_FILE,
      { path: 'cli.img', sizeBytes: 3 * MiB },
    ]);
    await writeFile(join(fs.dir('src'), 'changed.img'), 'x');
    const shared = new Map([['src', fs.dir('src')], ['dst', fs.dir('dst')]]);
    for (const [name, ds] of [['ca', shared], ['cb', shared], ['cc', new Map([['far', fs.dir('far')]])]] as const) {
      hosts.set(name, await startCopyHost(tc.admin, (t) => tc.hostArgs(t), name, ds, await tc.center.store.latestEventId()));
    }
    await until(async () => (await tc.center.store.getHost('cc')).dataPlane !== null, 'cc reported its path drivers');
  });
  after(async () => { await stopCenterFleet(hosts.values(), tc, fs); });

  it('local form: copies a file with a hole, a one-byte and an empty file, verified; refusals say why', async () => {
    const from = await tc.center.store.latestEventId();
    const files = ['a.img', 'one.byte', 'empty.img'];
    const task = await tc.admin.copy({ files, from: 'src', to: 'dst', via: 'ca' });
    assert.equal(task.kind, 'copy');
    assert.match(task.target, /^copy:[0-9a-f]{32}$/);
    const r = await succeeded(task);
    assert.deepEqual([r.form, r.verified, r.handoffs], ['local', true, 0]);
    assert.deepEqual(r.files.map((f) => f.path), files);
    for (const f of r.files) assert.equal(f.sourceDigest, f.targetDigest);
    assert.deepEqual(r.segments.map((s) => [s.host, s.epoch]), [['ca', 1]]);
    assert.deepEqual(r.segments[0]?.to, { fileIndex: 3, offsetBytes: 0 }, 'the one part copied everything');
    assert.ok((r.segments[0]?.sentBytes ?? Infinity) < r.totalBytes, `the hole moved no data (${r.segments[0]?.sentBytes} of ${r.totalBytes} bytes sent)`);
    await sameBytes('dst', files);
    const started = await waitForEvent(tc.admin, from, (e) => e.kind === 'copy.started' && e.subject === task.target);
    assert.deepEqual([(started.payload as { host: string }).host, (started.payload as { form: string }).form], ['ca', 'local']);

    // Refused at the API: an unknown datastore, the same one twice, an unknown host, a file listed twice.
    await assert.rejects(tc.admin.copy({ files: ['a.img'], from: 'nope', to: 'dst' }), { code: 'NOT_FOUND' });
    await assert.rejects(tc.admin.copy({ files: ['a.img'], from: 'src', to: 'src' }), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(tc.admin.copy({ files: ['a.img'], from: 'src', to: 'dst', via: 'nohost' }), { code: 'NOT_FOUND' });
    await assert.rejects(tc.admin.copy({ files: ['a.img', 'a.img'], from: 'src', to: 'dst' }), { code: 'BAD_REQUEST' });
    // Refused by the task, with the reason: a copier that does not mount the source, a missing file, a directory.
    const notMounted = await wait(await tc.admin.copy({ files: ['a.img'], from: 'src', to: 'dst', via: 'cc' }));
    assert.deepEqual([notMounted.state, notMounted.error?.code], ['failed', 'NO_COMPATIBLE_HOST']);
    assert.match(notMounted.error?.message ?? '', /host cc does not mount datastore src/);
    const missing = await wait(await tc.admin.copy({ files: ['no-such.img'], from: 'src', to: 'dst' }));
    assert.deepEqual([missing.state, missing.error?.code], ['failed', 'NOT_FOUND']);
    const again = await wait(await tc.admin.copy({ files: ['one.byte'], from: 'src', to: 'dst', via: 'ca' }));
    assert.deepEqual([again.state, again.error?.code], ['failed', 'ALREADY_EXISTS'], 'a copy never overwrites a file');
    const dir = await wait(await tc.admin.copy({ files: ['slow'], from: 'src', to: 'dst' }));
    assert.deepEqual([dir.state, dir.error?.code], ['failed', 'INVALID_ARGUMENT']);
    assert.match(dir.error?.message ?? '', /slow is a directory/);
  });

  it('remote form: through the host that owns the target, over the copy\'s own virtual path, verified; the path is released', async () => {
    const files = ['a.img', 'one.byte'];
    const r = await succeeded(await tc.admin.copy({ files, from: 'src', to: 'far', via: 'ca' }));
    assert.deepEqual([r.form, r.verified, r.isolation?.mode], ['remote', true, 'path']);
    await sameBytes('far', files);
    await until(async () => (await tc.center.store.listPaths({ state: 'live' })).length === 0, 'no live path is left');
    for (const n of ['ca', 'cc']) await until(async () => (await host(n).client.listPaths()).paths.length === 0, `host ${n} holds no path`);
    const direct = await succeeded(await tc.admin.copy({ files: ['empty.img'], from: 'src', to: 'far', via: 'cb', isolation: false }));
    assert.deepEqual([direct.form, direct.isolation?.mode], ['remote', 'direct']);
  });

  it('ferry task move mid-copy: the copy goes on on the other host from the acknowledged boundary; segments name both; progress never goes back', async () => {
    const caFile = join(tc.dataDir, 'ca.pem');
    await writeFile(caFile, tc.caPem);
    const cli = (args: readonly string[]): ReturnType<typeof runFerry> => runFerry([...args, '--center', tc.url, '--token-file', tc.center.adminTokenFile, '--ca-file', caFile]);
    const from = await tc.center.store.latestEventId();
    const task = await tc.admin.copy({ files: [SLOWER_FILE.path], from: 'src', to: 'dst', via: 'ca', rateBytesPerSec: SLOWER_RATE });
    await copyProgressed(tc.admin, task, from, 'ca', MiB);
    await assert.rejects(tc.admin.moveTask(task.id, 'cc'), (err: Error & { code?: string }) => err.code === 'NO_COMPATIBLE_HOST' && /does not mount datastore src/.test(err.message));
    await assert.rejects(tc.admin.moveTask(task.id, 'ca'), { code: 'NO_COMPATIBLE_HOST' }, 'not onto the host it runs on');
    const moved = await cli(['task', 'move', String(task.id), '--to', 'cb']);
    assert.equal(moved.code, 0, moved.stderr);
    assert.match(moved.stdout, /move requested to cb/);
    const r = await succeeded(task);
    assert.deepEqual([r.verified, r.handoffs], [true, 1]);
    assert.deepEqual(r.segments.map((s) => s.host), ['ca', 'cb']);
    const [first, second] = r.segments;
    assert.ok(first !== undefined && second !== undefined);
    assert.deepEqual(second.from, first.to, 'the second part starts where the first stopped');
    assert.ok(first.to.offsetBytes > 0 || first.to.fileIndex > 0, `the first part got somewhere (${JSON.stringify(first.to)})`);
    assert.ok(second.epoch > first.epoch);
    await sameBytes('dst', [SLOWER_FILE.path]);
    const events = await collectEvents(tc.admin, from, await tc.center.store.latestEventId());
    const handoff = events.find((e) => e.kind === 'copy.handoff' && e.subject === task.target);
    assert.deepEqual([(handoff?.payload as { from: string }).from, (handoff?.payload as { to: string }).to, (handoff?.payload as { stopped: boolean }).stopped], ['ca', 'cb', true], 'ca answered with its stopped record');
    const line = events.filter((e) => e.kind === 'copy.progress' && e.subject === task.target).map((e) => (e.payload as { doneBytes: number }).doneBytes);
    assert.deepEqual(line, [...line].sort((a, b) => a - b), 'one progress line across the hand-off, never lowered');
    assert.ok(events.some((e) => e.kind === 'copy.progress' && e.subject === task.target && (e.payload as { host: string }).host === 'cb'), 'progress continued on cb');
    await assert.rejects(tc.admin.moveTask(task.id), { code: 'TASK_STATE' }, 'a finished copy has nothing to move');
    // ferry copy --wait follows the task to its end and prints it.
    const copied = await cli(['copy', 'cli.img', '--from', 'src', '--to', 'dst', '--via', 'cb', '--streams', '3', '--wait', '--json']);
    assert.equal(copied.code, 0, copied.stderr);
    const t = JSON.parse(copied.stdout) as CenterTaskView;
    assert.deepEqual([t.kind, t.state, (t.result as CopyResult).verified, (t.params as { request: { streams: number } }).request.streams], ['copy', 'succeeded', true, 3]);
    await sameBytes('dst', ['cli.img']);
    const created = await tc.admin.listTasks({ kind: 'copy' });
    assert.ok(created.tasks.length > 0);
    await assert.rejects(tc.admin.moveTask(created.tasks[0]?.id ?? 0), { code: 'TASK_STATE' });
  });

  it('maintenance on the copying host hands its copy off and reaches in-maintenance; with no other host it stays entering-maintenance and names the copy', async () => {
    await rm(join(fs.dir('dst'), SLOWER_FILE.path), { force: true });
    const from = await tc.center.store.latestEventId();
    const task = await tc.admin.copy({ files: [SLOWER_FILE.path], from: 'src', to: 'dst', via: 'cb', rateBytesPerSec: SLOWER_RATE });
    await copyProgressed(tc.admin, task, from, 'cb', MiB);
    const evac = await tc.admin.maintenance('cb', 'enter');
    const e = await wait(evac);
    assert.equal(e.state, 'succeeded', JSON.stringify(e.error));
    assert.equal((await tc.admin.host('cb')).state, 'in-maintenance');
    const r = await succeeded(task);
    assert.deepEqual(r.segments.map((s) => s.host), ['cb', 'ca']);
    assert.equal(r.verified, true);
    await sameBytes('dst', [SLOWER_FILE.path]);

    // cb is in maintenance: a copy on ca has nowhere to go.
    await rm(join(fs.dir('dst'), SLOWER_FILE.path));
    const from2 = await tc.center.store.latestEventId();
    const stuck = await tc.admin.copy({ files: [SLOWER_FILE.path], from: 'src', to: 'dst', via: 'ca', rateBytesPerSec: SLOWER_RATE });
    await copyProgressed(tc.admin, stuck, from2, 'ca', MiB);
    const blocked = await wait(await tc.admin.maintenance('ca', 'enter'));
    assert.deepEqual([blocked.state, blocked.error?.code], ['failed', 'NO_COMPATIBLE_HOST']);
    assert.match(blocked.error?.message ?? '', new RegExp(`copy task\\(s\\) cannot hand off \\(task ${stuck.id}: host ca is entering-maintenance, but no other host can take copy task ${stuck.id}: .*host cb is in-maintenance`));
    assert.equal((await tc.admin.host('ca')).state, 'entering-maintenance');
    assert.equal((await tc.admin.task(stuck.id)).state, 'running', 'the copy goes on where it is');
    await wait(await tc.admin.maintenance('cb', 'exit'));
    await wait(await tc.admin.maintenance('ca', 'exit'));
    const r2 = await succeeded(stuck);
    assert.equal(r2.verified, true);
  });

  it('cancel: the copy stops and leaves no staging file or journal on the target', async () => {
    await rm(join(fs.dir('dst'), SLOW_FILE.path), { force: true });
    const from = await tc.center.store.latestEventId();
    const task = await tc.admin.copy({ files: [SLOW_FILE.path], from: 'src', to: 'dst', via: 'ca', rateBytesPerSec: SLOW_RATE });
    await copyProgressed(tc.admin, task, from, 'ca', MiB);
    await tc.admin.cancelTask(task.id);
    const done = await wait(task);
    assert.deepEqual([done.state, done.error?.code], ['cancelled', 'CANCELLED']);
    const finished = await waitForEvent(tc.admin, from, (e) => e.kind === 'copy.finished' && e.subject === task.target);
    assert.deepEqual([(finished.payload as { outcome: string }).outcome, (finished.payload as { discarded: boolean }).discarded], ['cancelled', true]);
    assert.deepEqual(await stagingFiles(fs.dir('dst')), []);
    const copyId = task.target.slice('copy:'.length);
    assert.equal((await host('cb').client.copyJournal(copyId, 'dst')).boundary, null, 'the journal is gone');
  });
});
