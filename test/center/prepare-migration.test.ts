/**
 * Prepare-migration through the center (docs/design/orchestration.md, "Cross-site migration"): two real
 * `ferry host --site` processes in two sites with separate datastores, an in-process center (SQLite),
 * and a kvlog VM (it writes its disk all the time) on site-a. Preparing it for site-b snapshots the disk
 * (the VM runs on, on its new delta), copies the bases with a child copy task and records them as seeds
 * on site-b's host: the result's CIDs are the chain's bases' CIDs as the source host shows them, the
 * copied files equal the sources, and the host's seed manifest says the same. Refusals: an unknown site,
 * a datastore of another site, a VM without a disk, the VM's own site. Then a migration --to-site
 * chooses site-b's host and the seeded datastore (its plan and result say so).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MiB } from '../../src/lib/units.js';
import { DATASTORE_ID_FILE } from '../../src/storage/datastore.js';
import { prepareMigrationResultSchema, type CenterTaskView, type PrepareMigrationResult } from '../../src/api/center-v1.js';
import { until, type TestHost } from '../helpers/hosts.js';
import { startTestCenter, type TestCenter } from '../helpers/center.js';
import { runFerry } from '../helpers/cli.js';
import { COPY_TASK_TIMEOUT_MS, copyDirs, sha256File, startSiteHosts, stopCenterFleet, type CopyDirs } from '../helpers/copy-fleet.js';

const VM = 'pm-kv';
const DISK = { datastore: 'site-a-ds', path: 'pm-kv.vmdk', sizeBytes: 16 * MiB };
/** 2000 records/s of 64 bytes, flushed every 64: the disk is written all the time, the log far from full. */
const KV = { image: 'kvlog', memoryBytes: 16 * MiB, vcpus: 2, cmdline: 'max=100000 flush=64 rate=2000' };

/** Whether a host serves the seed routes (a host without answers "no route" for them). */
async function servesSeeds(h: TestHost): Promise<boolean> {
  try {
    await h.client.seeds('site-b-ds', 'nobody');
    return true;
  } catch (err) {
    return !(err instanceof Error && 'details' in err && typeof err.details === 'object' && err.details !== null && 'route' in err.details && err.details.route === false);
  }
}

describe('prepare-migration: seeds of a running VM\'s bases on another site (real host processes, SQLite)', () => {
  let tc: TestCenter;
  let fs: CopyDirs;
  const hosts = new Map<string, TestHost>();
  const host = (n: string): TestHost => { const h = hosts.get(n); assert.ok(h !== undefined); return h; };
  const idOf = async (ds: string): Promise<string> => (await readFile(join(fs.dir(ds), DATASTORE_ID_FILE), 'utf8')).trim();
  const done = (t: CenterTaskView): Promise<CenterTaskView> => tc.admin.waitForTask(t.id, { timeoutMs: COPY_TASK_TIMEOUT_MS });
  const succeeded = async (t: CenterTaskView): Promise<CenterTaskView> => {
    const d = await done(t);
    assert.equal(d.state, 'succeeded', `task ${d.id} ${d.kind} ${d.target}: ${d.state} ${JSON.stringify(d.error)} (${d.phase})`);
    return d;
  };
  let prepared: PrepareMigrationResult | null = null;
  let prepareTaskId = 0;

  before(async () => {
    tc = await startTestCenter({ taskLeaseMs: 3000, heartbeatIntervalMs: 300, missedHeartbeats: 40 });
    fs = await copyDirs(['site-a-ds', 'site-b-ds']);
    await startSiteHosts(tc, fs, hosts, [{ name: 'pa', site: 'site-a', datastore: 'site-a-ds' }, { name: 'pb', site: 'site-b', datastore: 'site-b-ds' }]);
    await succeeded(await tc.admin.createVm({ name: VM, host: 'pa', ...KV, disk: DISK }));
    await until(async () => (await tc.center.store.getVm(VM)).state === 'running', `${VM} runs`);
  });
  after(async () => { await stopCenterFleet(hosts.values(), tc, fs); });

  it('refuses an unknown site, a datastore not in the site, an unknown datastore, the VM\'s own site and a VM without a disk', async () => {
    await assert.rejects(tc.admin.prepareMigration(VM, { toSite: 'nowhere' }), (err: Error & { code?: string }) => err.code === 'NOT_FOUND' && /no site nowhere/.test(err.message));
    await assert.rejects(tc.admin.prepareMigration(VM, { toSite: 'site-b', datastore: 'site-a-ds' }),
      (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /site-a-ds .* is not in site site-b: its hosts mount site-b-ds/.test(err.message));
    await assert.rejects(tc.admin.prepareMigration(VM, { toSite: 'site-b', datastore: 'nope' }), { code: 'NOT_FOUND' });
    await assert.rejects(tc.admin.prepareMigration(VM, { toSite: 'site-a' }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /already in site site-a/.test(err.message));
    await assert.rejects(tc.admin.prepareMigration('no-such-vm', { toSite: 'site-b' }), { code: 'NOT_FOUND' });
    await succeeded(await tc.admin.createVm({ name: 'pm-nodisk', host: 'pa', image: 'dirtier', memoryBytes: 16 * MiB, cmdline: 'hot=64KiB rate=50' }));
    await until(async () => (await tc.center.store.getVm('pm-nodisk')).state === 'running', 'pm-nodisk runs');
    await assert.rejects(tc.admin.prepareMigration('pm-nodisk', { toSite: 'site-b' }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /has no disk/.test(err.message));
  });

  it('snapshots the running VM, copies its bases to site-b with a child copy task, records the seeds there', async (ctx) => {
    if (!(await servesSeeds(host('pb')))) { ctx.skip('host pb serves no seed routes (they come with branch seed-host)'); return; }
    const [aId, bId] = [await idOf('site-a-ds'), await idOf('site-b-ds')];
    // Through the CLI, as a person would: --wait follows the task to its end, --json prints it.
    const caFile = join(tc.dataDir, 'ca.pem');
    await writeFile(caFile, tc.caPem);
    const cli = await runFerry(['vm', 'prepare-migration', VM, '--to-site', 'site-b', '--wait', '--json', '--center', tc.url, '--token-file', tc.center.adminTokenFile, '--ca-file', caFile]);
    const task = JSON.parse(cli.stdout) as CenterTaskView;
    assert.deepEqual([task.kind, task.target, cli.code], ['vm.prepare-migration', `vm:${VM}`, task.state === 'succeeded' ? 0 : 1], cli.stderr);
    const t = await succeeded(task);
    prepareTaskId = t.id;
    const r = prepareMigrationResultSchema.parse(t.result);
    prepared = r;
    assert.deepEqual([r.vm, r.toSite, r.datastore, r.datastoreId], [VM, 'site-b', 'site-b-ds', bId]);

    // The source host's chain: the VM runs on the new top; every level below it is a base, and seeded with its CID.
    const chain = await host('pa').client.diskChain(VM);
    assert.equal(chain.chain[0]?.path, r.snapshot.top);
    assert.equal(chain.chain[0]?.role, 'top');
    const bases = chain.chain.slice(1).reverse();
    assert.ok(bases.length >= 1);
    assert.deepEqual(r.snapshot.bases, bases.map((b) => b.path));
    assert.deepEqual(r.seeds.map((s) => [s.path, s.cid]), bases.map((b) => [b.path, b.cid]), 'the seeds are the chain\'s bases, base first, with their CIDs');
    assert.equal((await host('pa').client.vm(VM)).state, 'running', 'the VM kept running');
    for (const s of r.seeds) assert.equal(await sha256File(join(fs.dir('site-b-ds'), s.path)), await sha256File(join(fs.dir('site-a-ds'), s.path)), `${s.path} on site-b equals the base`);

    // The child copy task: listed, succeeded, from the VM's datastore to the seeds'.
    assert.ok(r.copyTaskId !== null);
    const copy = await tc.admin.task(r.copyTaskId);
    assert.deepEqual([copy.kind, copy.state, copy.requestedBy], ['copy', 'succeeded', `task:${t.id}`]);
    assert.deepEqual((copy.params as { request: { files: string[]; from: string; to: string } }).request, { files: r.snapshot.bases, from: aId, to: bId });
    assert.ok((await tc.admin.listTasks({ kind: 'copy' })).tasks.some((x) => x.id === r.copyTaskId));
    assert.ok(r.copiedBytes > 0);

    // The host of site-b keeps the manifest: the same levels.
    const seeds = await host('pb').client.seeds('site-b-ds', VM);
    assert.deepEqual(seeds.manifest.levels.map((l) => [l.path, l.cid, l.digest, l.source.datastoreId]), r.seeds.map((s) => [s.path, s.cid, s.digest, aId]));
    assert.equal(seeds.manifest.taskId, t.id);

    // The guest goes on writing: on its delta, not on the bases.
    const before = chain.chain[0]?.allocatedBytes ?? 0;
    await until(async () => ((await host('pa').client.diskChain(VM)).chain[0]?.allocatedBytes ?? 0) > before, 'the guest writes its new delta');
  });

  it('migrate --to-site: a host of the site, the disk to the seeded datastore; --to outside the site is refused', async (ctx) => {
    await assert.rejects(tc.admin.migrateVm(VM, { to: 'pa', toSite: 'site-b' }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && /host pa is in site site-a, not in site site-b/.test(err.message));
    await assert.rejects(tc.admin.migrateVm(VM, { toSite: 'nowhere' }), { code: 'NOT_FOUND' });
    if (!(await servesSeeds(host('pb')))) { ctx.skip('host pb serves no seed routes (they come with branch seed-host)'); return; }
    assert.ok(prepared !== null, 'the prepare test ran');
    const bId = await idOf('site-b-ds');
    const task = await tc.admin.migrateVm(VM, { toSite: 'site-b' });
    const t = await done(task);
    assert.deepEqual(t.plan, {
      decision: 'run', source: 'pa', target: 'pb', memoryBytes: KV.memoryBytes, datastores: [await idOf('site-a-ds'), bId],
      disk: { datastore: 'site-b-ds', datastoreId: bId, seeded: true, prepareTaskId },
    });
    // Whether the target skips the seeded bases is the hosts' part; where the disk went is the center's.
    if (t.state === 'succeeded') {
      assert.deepEqual((t.result as { disk?: unknown }).disk, { datastore: 'site-b-ds', datastoreId: bId, seeded: true, prepareTaskId });
      assert.equal((await tc.center.store.getVm(VM)).host, 'pb');
    } else {
      assert.equal((await host('pa').client.vm(VM)).state, 'running', `a failed migration leaves the VM on pa (${JSON.stringify(t.error)})`);
    }
  });
});
