/**
 * Cross-site live migration with a pre-seeded base disk, end to end through the center
 * (docs/design/cross-site.md): two real `ferry host --site` processes in two sites, each with its own
 * datastore (nothing shared: every disk byte that moves crosses between the sites), an in-process
 * center, and the kvlog guest writing its checksummed log to its disk all the time.
 *
 * `prepare-migration` snapshots the disk and seeds its base on site-b; `migrate --to-site site-b` then
 * moves only the delta (asserted from the source's migration record, not assumed), over the
 * operation's virtual path, and the guest's own disk check passes on the target. A seed damaged on
 * site-b after it was seeded is caught before the switch-over (SEED_DAMAGED, the VM still running on
 * site-a), and the next migration copies the disk whole. The modified-base, missing-seed and old-source
 * cases are test/host/migration-seed.test.ts; kills of either host, test/e2e/cross-site-faults.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MiB } from '../../src/lib/units.js';
import { LocalFile } from '../../src/storage/local-file.js';
import { VmdkDisk } from '../../src/storage/vmdk/disk.js';
import { prepareMigrationResultSchema, type CenterTaskView, type PrepareMigrationResult } from '../../src/api/center-v1.js';
import type { MigrationRecord } from '../../src/migration/record.js';
import { until, type TestHost } from '../helpers/hosts.js';
import { startTestCenter, type TestCenter } from '../helpers/center.js';
import { COPY_TASK_TIMEOUT_MS, copyDirs, startSiteHosts, stopCenterFleet, type CopyDirs } from '../helpers/copy-fleet.js';

/** 2000 records/s of 64 bytes, flushed every 64: the disk is written all the time, the log far from full. */
const KV = { image: 'kvlog', memoryBytes: 16 * MiB, vcpus: 1, cmdline: 'max=100000 flush=64 rate=2000' };
const DISK_BYTES = 32 * MiB;
/** The base's own data, past kvlog's log area (100,000 records of 64 bytes: 6.4 MB). */
const BASE_DATA_AT_BYTES = 16 * MiB;
const BASE_DATA_BYTES = 16 * MiB;
/** Time for a guest restarted on its disk to scan and verify its whole log. */
const BOOT_SCAN_MS = 30_000;

describe('cross-site migration over a pre-seeded base (real hosts in two sites, a center)', () => {
  let tc: TestCenter;
  let fs: CopyDirs;
  const hosts = new Map<string, TestHost>();
  const host = (n: string): TestHost => { const h = hosts.get(n); assert.ok(h !== undefined, n); return h; };
  const done = (t: CenterTaskView): Promise<CenterTaskView> => tc.admin.waitForTask(t.id, { timeoutMs: COPY_TASK_TIMEOUT_MS });
  const succeeded = async (t: CenterTaskView): Promise<CenterTaskView> => {
    const d = await done(t);
    assert.equal(d.state, 'succeeded', `task ${d.id} ${d.kind} ${d.target}: ${d.state} ${JSON.stringify(d.error)} (${d.phase})`);
    return d;
  };
  /** The source host's own record of the migration a center task ran. */
  const recordOf = async (t: CenterTaskView, source: TestHost): Promise<MigrationRecord> => {
    // A failed task says it in its error ("migration <id> failed: …").
    const id = (t.result as { migrationId?: string } | null)?.migrationId ?? /migration ([0-9a-f]{32})/.exec(t.error?.message ?? '')?.[1];
    assert.ok(id !== undefined, `task ${t.id} names its migration`);
    const m = await source.client.migration(id);
    assert.ok(m.record !== null, 'the migration ended');
    return m.record;
  };
  /**
   * A kvlog VM on a disk that holds BASE_DATA_BYTES of random data past the guest's log area (what a base
   * of a real VM holds: far more than the guest writes while it migrates), written here before the VM
   * attaches it.
   */
  const createKvVm = async (name: string): Promise<void> => {
    const path = join(fs.dir('xa-ds'), `${name}.vmdk`);
    const disk = await VmdkDisk.create(await LocalFile.open(path, { create: true }, path), { capacityBytes: DISK_BYTES });
    try {
      for (let at = BASE_DATA_AT_BYTES; at < BASE_DATA_AT_BYTES + BASE_DATA_BYTES; at += MiB) await disk.write(at, randomBytes(MiB));
      await disk.flush();
    } finally {
      await disk.close();
    }
    await succeeded(await tc.admin.createVm({ name, host: 'xa', ...KV, disk: { datastore: 'xa-ds', path: `${name}.vmdk` } }));
    await until(async () => /kvlog: flushed \d+ records/.test(await host('xa').client.consoleText(name)), `${name} flushed records`, BOOT_SCAN_MS);
  };
  const prepare = async (vm: string): Promise<PrepareMigrationResult> => prepareMigrationResultSchema.parse((await succeeded(await tc.admin.prepareMigration(vm, { toSite: 'site-b' }))).result);
  /** The guest, stopped and started again on `h`, finds its whole log on its disk and verifies every record. */
  const guestVerifiesDisk = async (h: TestHost, vm: string): Promise<void> => {
    const flushed = Number([...(await h.client.consoleText(vm)).matchAll(/kvlog: flushed (\d+) records/g)].at(-1)?.[1] ?? 0);
    await h.client.stopVm(vm);
    await h.client.startVm(vm);
    let found = -1;
    await until(async () => {
      found = Number(/kvlog: found (\d+) records, all verified/.exec(await h.client.consoleText(vm))?.[1] ?? -1);
      return found >= 0;
    }, `${vm}'s boot-time scan on ${h.name}`, BOOT_SCAN_MS);
    assert.ok(flushed > 0 && found >= flushed, `the guest verified ${found} records, at least the ${flushed} it had flushed before the move`);
  };

  before(async () => {
    tc = await startTestCenter({ taskLeaseMs: 3000, heartbeatIntervalMs: 300, missedHeartbeats: 40 });
    fs = await copyDirs(['xa-ds', 'xb-ds']);
    await startSiteHosts(tc, fs, hosts, [{ name: 'xa', site: 'site-a', datastore: 'xa-ds' }, { name: 'xb', site: 'site-b', datastore: 'xb-ds' }]);
  });
  after(async () => { await stopCenterFleet(hosts.values(), tc, fs); });

  it('moves only the delta over the virtual path; the guest\'s disk check passes on site-b', async () => {
    await createKvVm('xs1');
    const prepared = await prepare('xs1');
    assert.equal(prepared.seeds.length, 1, 'one base seeded');
    const seedBytes = prepared.seeds.reduce((n, s) => n + s.fileBytes, 0);

    const t = await succeeded(await tc.admin.migrateVm('xs1', { toSite: 'site-b' }));
    assert.equal((t.result as { to: string }).to, 'xb');
    assert.equal((t.result as { isolation: { mode: string } }).isolation.mode, 'path', 'over the operation\'s virtual path');
    const rec = await recordOf(t, host('xa'));
    assert.equal(rec.disk?.mode, 'copy');
    assert.equal(rec.disk?.seededLevels, 1, 'the target held the base');
    assert.deepEqual(rec.disk?.chain?.map((l) => l.migrate), [true, false], 'the record says which level moved');
    const base = rec.disk?.chain?.[1];
    assert.equal(rec.disk?.seededBytes, base?.allocatedBytes, 'the seeded bytes are the base\'s');
    assert.ok((base?.allocatedBytes ?? 0) >= BASE_DATA_BYTES, 'the base holds its data');
    // The bytes of the base did not cross: what was sent is the delta's (and the guest's writes during the move), not the base's.
    assert.ok((rec.disk?.sentBytes ?? Infinity) < (base?.allocatedBytes ?? 0), `disk bytes sent ${rec.disk?.sentBytes}, the base holds ${base?.allocatedBytes}`);
    assert.equal(rec.disk?.seedVerifyBytes, seedBytes, 'the target hashed the seed before the switch-over');
    assert.match(host('xb').log(), /seed/i);

    assert.equal((await tc.admin.vm('xs1')).host, 'xb');
    const chain = await host('xb').client.diskChain('xs1');
    assert.deepEqual(chain.chain.map((l) => l.path).slice(1), prepared.seeds.map((s) => s.path).reverse(), 'the target\'s chain runs on the seed');
    assert.deepEqual((await host('xa').client.listVms()).filter((v) => v.name === 'xs1'), [], 'the source released it');
    // The seeds are the VM's own base now: the manifest is gone.
    await assert.rejects(host('xb').client.seeds('xb-ds', 'xs1'), { code: 'NOT_FOUND' });
    await guestVerifiesDisk(host('xb'), 'xs1');
  });

  it('a seed damaged on site-b is caught before the switch-over: SEED_DAMAGED, the VM stays on site-a; the next migration copies the disk whole', async () => {
    await createKvVm('xs2');
    const prepared = await prepare('xs2');
    const seed = prepared.seeds[0];
    assert.ok(seed !== undefined);
    // Bit rot under the seed's grains: the last MiB of the file is base data (the descriptor and tables are at its start).
    const file = join(fs.dir('xb-ds'), seed.path);
    const fh = await open(file, 'r+');
    try {
      const at = (await stat(file)).size - 512 * 1024;
      const b = Buffer.alloc(16);
      await fh.read(b, 0, b.length, at);
      for (let i = 0; i < b.length; i++) b[i] = (b[i] ?? 0) ^ 0xff;
      await fh.write(b, 0, b.length, at);
    } finally {
      await fh.close();
    }

    const failed = await done(await tc.admin.migrateVm('xs2', { toSite: 'site-b' }));
    assert.equal(failed.state, 'failed');
    assert.equal(failed.error?.code, 'SEED_DAMAGED', JSON.stringify(failed.error));
    assert.equal((await tc.admin.vm('xs2')).host, 'xa');
    assert.equal((await host('xa').client.vm('xs2')).state, 'running', 'the VM runs on site-a, it never stopped');
    const rec = await recordOf(failed, host('xa'));
    assert.equal(rec.phases.map((p) => p.phase).includes('switchover'), false, 'caught before any switch-over');
    await assert.rejects(host('xb').client.seeds('xb-ds', 'xs2'), { code: 'NOT_FOUND' }, 'the damaged seed is not used again');

    const again = await succeeded(await tc.admin.migrateVm('xs2', { toSite: 'site-b' }));
    const whole = await recordOf(again, host('xa'));
    assert.equal(whole.disk?.seededLevels ?? 0, 0, 'nothing seeded this time');
    assert.ok((whole.disk?.sentBytes ?? 0) >= (whole.disk?.chain?.[1]?.allocatedBytes ?? Infinity), 'the base moved with the migration');
    await guestVerifiesDisk(host('xb'), 'xs2');
  });
});
