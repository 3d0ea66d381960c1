/**
 * The faults of a copy's hand-off (issue 11, "Faults"), each with real processes: the stopping host dies
 * before it answers (killed -9 as the move is asked: the center falls back to the target journal's
 * boundary); the new host dies mid-copy (the center selects again); the center is killed mid-hand-off
 * (a failpoint between the old part's end and the new part's checkpoint) and restarted (the task is
 * taken over and resumes from its journal); in the remote form the receiving host dies and comes back
 * (the copy waits, says why, and resumes). Each ends verified, the target's bytes equal to the source's.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiB } from '../../src/lib/units.js';
import { CenterClient } from '../../src/api/center-client.js';
import type { CenterTaskView } from '../../src/api/center-v1.js';
import { failpointHitLine } from '../../src/lib/failpoints.js';
import { removeHostData, stopHost, type TestHost } from '../helpers/hosts.js';
import { startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';
import { centerReady, startFerry } from '../helpers/cli.js';
import {
  COPY_TASK_TIMEOUT_MS, copyDirs, copyProgressed, sha256File, stagingFiles, startCopyHost, stopCenterFleet, writeSourceFiles, type CopyDirs, type CopyResult,
} from '../helpers/copy-fleet.js';

/** 24 MiB at 1 MiB/s (the slowest cap): about 22 s, long enough to break something while it runs on a loaded machine. */
const SLOW_FILE = { path: 'disk.img', sizeBytes: 24 * MiB, holeBytes: 2 * MiB };
const SLOW_RATE = MiB;

interface HandoffPayload { from: string; to: string; stopped: boolean; boundaryFrom: string }

/** What every fault test checks at the end: succeeded, verified, the bytes equal the source's, nothing staged left. */
async function verifiedCopy(admin: CenterClient, task: CenterTaskView, fs: CopyDirs, target: string, digest: string | undefined): Promise<{ done: CenterTaskView; r: CopyResult }> {
  const done = await admin.waitForTask(task.id, { timeoutMs: COPY_TASK_TIMEOUT_MS });
  assert.equal(done.state, 'succeeded', `task ${done.id}: ${done.state} ${JSON.stringify(done.error)} (${done.phase})`);
  const r = done.result as CopyResult;
  assert.equal(r.verified, true);
  for (const f of r.files) assert.equal(f.sourceDigest, f.targetDigest);
  assert.equal(await sha256File(join(fs.dir(target), SLOW_FILE.path)), digest, 'the target\'s bytes equal the source\'s');
  assert.deepEqual(await stagingFiles(fs.dir(target)), []);
  return { done, r };
}

describe('copy hand-off faults (real host processes, in-process center)', () => {
  let tc: TestCenter;
  let fs: CopyDirs;
  const hosts = new Map<string, TestHost>();
  let digest: string | undefined;
  const host = (n: string): TestHost => { const h = hosts.get(n); assert.ok(h !== undefined); return h; };
  const shared = (): Map<string, string> => new Map([['src', fs.dir('src')], ['dst', fs.dir('dst')]]);
  const datastoresOf = (n: string): Map<string, string> => (n === 'fc' ? new Map([['far', fs.dir('far')]]) : shared());
  /** Kills a host with SIGKILL and starts it again on its port and data directory (linked with its stored credential). */
  const kill = async (n: string): Promise<void> => { await stopHost(host(n), 'SIGKILL'); };
  const revive = async (n: string): Promise<void> => {
    const old = host(n);
    const heard = async (sinceMs: number): Promise<boolean> => {
      const h = await tc.center.store.getHost(n);
      return h.state === 'connected' && (h.lastHeartbeatAtMs ?? 0) > sinceMs;
    };
    hosts.set(n, await startCopyHost(tc.admin, (t) => tc.hostArgs(t), n, datastoresOf(n), 0, { dataDir: old.dataDir, port: old.port, rejoin: true, heard }));
  };

  before(async () => {
    // 20 s of silence before a host counts as disconnected: a loaded machine delays heartbeats, and no test waits for a disconnect.
    tc = await startTestCenter({ taskLeaseMs: 3000, heartbeatIntervalMs: 500, missedHeartbeats: 40 });
    fs = await copyDirs(['src', 'dst', 'far']);
    digest = (await writeSourceFiles(fs.dir('src'), [SLOW_FILE])).get(SLOW_FILE.path);
    for (const n of ['fa', 'fb', 'fc']) hosts.set(n, await startCopyHost(tc.admin, (t) => tc.hostArgs(t), n, datastoresOf(n), await tc.center.store.latestEventId()));
  });
  after(async () => { await stopCenterFleet(hosts.values(), tc, fs); });

  it('the stopping host dies before it answers: the hand-off goes on from the target journal\'s boundary', async () => {
    await rm(join(fs.dir('dst'), SLOW_FILE.path), { force: true });
    const from = await tc.center.store.latestEventId();
    const task = await tc.admin.copy({ files: [SLOW_FILE.path], from: 'src', to: 'dst', via: 'fa', rateBytesPerSec: SLOW_RATE });
    // The target has acknowledged a durable boundary (at least one 1 MiB chunk): that is what the hand-off must go on from.
    await copyProgressed(tc.admin, task, from, 'fa', MiB, 0);
    await tc.admin.moveTask(task.id, 'fb');
    await kill('fa');
    const handoff = await waitForEvent(tc.admin, from, (e) => e.kind === 'copy.handoff' && e.subject === task.target, 60_000);
    const p = handoff.payload as HandoffPayload;
    assert.deepEqual([p.from, p.to, p.stopped, p.boundaryFrom], ['fa', 'fb', false, 'target journal'], 'fa never answered the stop');
    const { r } = await verifiedCopy(tc.admin, task, fs, 'dst', digest);
    // fa's part, then fb's (a part of fb's that failed for a passing reason is followed by another on fb).
    assert.deepEqual(r.segments.map((s) => s.host).filter((h, i, all) => i === 0 || all[i - 1] !== h), ['fa', 'fb']);
    assert.ok(r.segments[0] !== undefined && r.segments[1] !== undefined);
    assert.deepEqual(r.segments[1].from, r.segments[0].to, 'fb went on from the boundary fa\'s target journal acknowledged');
    assert.ok(r.segments[0].to.fileIndex > 0 || r.segments[0].to.offsetBytes >= MiB, `the target journal's boundary, not the part's start (${JSON.stringify(r.segments[0].to)})`);
    await revive('fa');
  });

  it('the new host dies mid-copy: the center selects again and the copy completes', async () => {
    await rm(join(fs.dir('dst'), SLOW_FILE.path), { force: true });
    const from = await tc.center.store.latestEventId();
    const task = await tc.admin.copy({ files: [SLOW_FILE.path], from: 'src', to: 'dst', via: 'fa', rateBytesPerSec: SLOW_RATE });
    await copyProgressed(tc.admin, task, from, 'fa', MiB);
    await tc.admin.moveTask(task.id, 'fb');
    const handoff = await waitForEvent(tc.admin, from, (e) => e.kind === 'copy.handoff' && e.subject === task.target, 60_000);
    await copyProgressed(tc.admin, task, handoff.id, 'fb', MiB);
    await kill('fb');
    const { r } = await verifiedCopy(tc.admin, task, fs, 'dst', digest);
    assert.deepEqual(r.segments.map((s) => s.host).filter((h, i, all) => i === 0 || all[i - 1] !== h), ['fa', 'fb', 'fa'], 'fa took the copy back when fb died');
    for (let i = 1; i < r.segments.length; i++) assert.deepEqual(r.segments[i]?.from, r.segments[i - 1]?.to, `part ${i + 1} starts where part ${i} ended`);
    assert.ok(r.handoffs >= 2);
    await revive('fb');
  });

  it('remote form: the receiving host dies; the copy waits, says why, and resumes when it is back', async () => {
    const from = await tc.center.store.latestEventId();
    const task = await tc.admin.copy({ files: [SLOW_FILE.path], from: 'src', to: 'far', via: 'fa', rateBytesPerSec: SLOW_RATE });
    await copyProgressed(tc.admin, task, from, 'fa', 2 * MiB);
    await kill('fc');
    await waitForEvent(tc.admin, from, (e) => e.subject === `task:${task.id}` && /waiting for a receiving host/.test(String((e.payload as { phase: unknown }).phase)), 60_000);
    await revive('fc');
    const { r } = await verifiedCopy(tc.admin, task, fs, 'far', digest);
    assert.equal(r.form, 'remote');
    assert.ok(r.segments.length >= 2 && r.segments.every((s) => s.host === 'fa'), `fa copied on after fc came back (${JSON.stringify(r.segments)})`);
    assert.ok((r.segments[1]?.epoch ?? 0) > (r.segments[0]?.epoch ?? 0));
  });
});

describe('a center killed mid-hand-off (child process) and restarted', () => {
  const dirs: string[] = [];
  const hosts: TestHost[] = [];
  const centers: ReturnType<typeof startFerry>[] = [];
  let fs: CopyDirs | undefined;
  after(async () => {
    for (const c of centers) c.child.kill('SIGKILL');
    for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
    for (const d of dirs) await rm(d, { recursive: true, force: true });
    await fs?.remove();
  });

  it('takes the task over and resumes it from its journal on the host the move asked for', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-center-copy-kill-'));
    dirs.push(dataDir);
    const cfs = await copyDirs(['src', 'dst']);
    fs = cfs;
    const digest = (await writeSourceFiles(cfs.dir('src'), [SLOW_FILE])).get(SLOW_FILE.path);
    const centerArgs = (listen: string): string[] => ['center', '--data-dir', dataDir, '--listen', listen, '--heartbeat-interval', '500ms', '--missed-heartbeats', '40', '--sweep-interval', '100ms', '--task-lease', '1s'];
    const first = startFerry(centerArgs('127.0.0.1:0'), { env: { FERRY_FAILPOINTS: 'center.copy.handoff=crash' } });
    centers.push(first);
    const { url, tokenFile, fingerprint } = await centerReady(first.child, first.stdout);
    const caPem = (await CenterClient.readCa(url)).certificate;
    await writeFile(join(dataDir, 'ca.pem'), caPem);
    const admin = new CenterClient(url, (await readFile(tokenFile, 'utf8')).trim(), { caPem });
    const hostArgs = (t?: string): string[] => ['--center', url, ...(t !== undefined ? ['--join-token', t] : []), '--center-ca-fingerprint', fingerprint];
    const shared = new Map([['src', cfs.dir('src')], ['dst', cfs.dir('dst')]]);
    for (const n of ['ka', 'kb']) hosts.push(await startCopyHost(admin, hostArgs, n, shared, 0));

    const task = await admin.copy({ files: [SLOW_FILE.path], from: 'src', to: 'dst', via: 'ka', rateBytesPerSec: SLOW_RATE });
    await copyProgressed(admin, task, 0, 'ka', 2 * MiB);
    await admin.moveTask(task.id, 'kb');
    const crashed = await first.done;
    assert.equal(crashed.signal, 'SIGKILL', 'the center died at the failpoint');
    assert.ok(crashed.stderr.includes(failpointHitLine('center.copy.handoff', 'crash')), 'between the old part\'s end and the new part\'s checkpoint');

    const second = startFerry(centerArgs(`127.0.0.1:${new URL(url).port}`));
    centers.push(second);
    await centerReady(second.child, second.stdout);
    const { done, r } = await verifiedCopy(admin, task, cfs, 'dst', digest);
    assert.ok(done.attempts >= 2, `taken over (attempts ${done.attempts})`);
    // ka's part, then kb's: the move survived the center. (Hosts whose heartbeats the dead center missed may
    // flap to disconnected when the new one starts: a later part may go elsewhere, from where the last ended.)
    assert.deepEqual(r.segments.slice(0, 2).map((s) => s.host), ['ka', 'kb'], 'the move survived the center');
    for (let i = 1; i < r.segments.length; i++) assert.deepEqual(r.segments[i]?.from, r.segments[i - 1]?.to, `part ${i + 1} starts where part ${i} ended`);
    await admin.close();
  });
});
