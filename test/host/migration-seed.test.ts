/**
 * Cross-site live migration over a pre-seeded base disk (docs/design/cross-site.md), with two real
 * `ferry host` processes that mount separate datastores (copy mode). The VM runs the kvlog guest on a
 * chain [top → base]; the test copies the base to B's datastore (a plain file copy stands in for the
 * center's network file copy) and records it with PUT …/seeds (its digest from the NFC file digest).
 * Then: the migration moves only what is above the base and the VM runs on B on [new delta → seed],
 * its guest finding every record through the seed; a damaged seed fails the migration with
 * SEED_DAMAGED before any switch-over (the VM stays on A, B keeps no delta and forgets the seed) and the
 * next migration copies the disk whole; a missing seed file, a base changed since it was seeded and a
 * source that announces no chain (an older source; failpoint) each copy the disk whole.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dropHosts, startHost, until, type TestHost } from '../helpers/hosts.js';
import { vmRequest } from '../helpers/guests.js';
import { seedLevelFor } from '../helpers/seeds.js';
import { failpointHitLine } from '../../src/lib/failpoints.js';
import { isFerryError } from '../../src/lib/errors.js';
import { MiB } from '../../src/lib/units.js';
import { seedManifestPath } from '../../src/storage/seed-manifest.js';
import { FAILPOINT_SPEC_WITHOUT_CIDS } from '../../src/host/migration-disks.js';
import type { MigrationRecord } from '../../src/migration/record.js';

/** 65536 records of 64 bytes: the guest fills 4 MiB of its disk at once and then stops writing, so the base holds all of it. */
const RECORDS = 65_536;
const KV = { memoryBytes: 8 * MiB, vcpus: 1, cmdline: `max=${RECORDS} flush=1024 rate=0` };
const DISK_BYTES = 16 * MiB;
/** Records a VM appends above its seeded base (512 KiB). */
const MORE = 8192;
const WAIT_MS = 30_000;

let base = '';
let dsA = '';
let dsB = '';
let a: TestHost;
let b: TestHost;
/** A source that announces no chain in its first migration (what a source from before seeds sends). */
let old: TestHost;
const hosts: TestHost[] = [];

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'ferry-migration-seed-'));
  dsA = join(base, 'a');
  dsB = join(base, 'b');
  await mkdir(dsA);
  await mkdir(dsB);
  const dsOld = join(base, 'old');
  await mkdir(dsOld);
  [a, b, old] = await Promise.all([
    startHost('a', { args: ['--datastore', `ds1=${dsA}`] }),
    startHost('b', { args: ['--datastore', `ds1=${dsB}`] }),
    startHost('old', { args: ['--datastore', `ds1=${dsOld}`], failpoints: `${FAILPOINT_SPEC_WITHOUT_CIDS}=drop:1` }),
  ]);
  hosts.push(a, b, old);
});
after(async () => { await dropHosts('migration-seed', hosts, base); });

/** VM `name` on `src` with its log written into the base of a [top → base] chain; the base copied to B and recorded as its seed. */
async function seededVm(src: TestHost, srcDir: string, name: string): Promise<{ baseBytes: number }> {
  await src.client.createVm(await vmRequest(name, 'kvlog', { ...KV, disk: { datastore: 'ds1', path: `${name}.vmdk`, sizeBytes: DISK_BYTES }, start: true }));
  await src.client.waitForConsole(name, 'kvlog: full', WAIT_MS);
  await src.client.snapshotVm(name);
  await copyFile(join(srcDir, `${name}.vmdk`), join(dsB, `${name}.vmdk`));
  const level = await seedLevelFor(src.client, name, `${name}.vmdk`, dsB, `${name}.vmdk`);
  await b.client.putSeeds('ds1', name, { levels: [level], taskId: null });
  const chain = await src.client.diskChain(name);
  return { baseBytes: chain.chain.at(-1)?.allocatedBytes ?? 0 };
}

async function migrate(src: TestHost, name: string): Promise<MigrationRecord> {
  const started = await src.client.migrate(name, { to: b.url, disk: { datastore: 'ds1' } });
  return src.client.waitForMigration(started.migrationId, { timeoutMs: 60_000 });
}

/**
 * The VM runs on B on a chain of `chainLength` levels; with `rescan`, its guest's boot-time scan
 * finds every record, read back through B's chain (the seed, when it runs over one).
 */
async function runsOnB(name: string, chainLength: number, rescan = false, records = RECORDS): Promise<void> {
  // Committed here: the VM's manifest is gone, whether its seed was used (its own base now) or not (stale).
  await noSeeds(name);
  const vm = await b.client.vm(name);
  assert.deepEqual([vm.state, vm.disk?.datastore, vm.disk?.path], ['running', 'ds1', `${name}-000001.vmdk`]);
  assert.equal((await b.client.diskChain(name)).chain.length, chainLength);
  assert.equal((await b.client.verifyVm(name)).selfcheck, 0);
  if (rescan) {
    await b.client.stopVm(name);
    await b.client.startVm(name);
    await b.client.waitForConsole(name, 'records, all verified', WAIT_MS);
    assert.match(await b.client.consoleText(name), new RegExp(`kvlog: found ${records} records, all verified`));
  }
  await b.client.stopVm(name);
  await b.client.deleteVm(name);
}

async function noSeeds(name: string): Promise<void> {
  await assert.rejects(b.client.seeds('ds1', name), (err: unknown) => isFerryError(err, 'NOT_FOUND'));
}

function wholeCopy(record: MigrationRecord, baseBytes: number): void {
  assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
  assert.equal(record.disk?.seededLevels ?? 0, 0, 'nothing seeded');
  assert.ok((record.disk?.sentBytes ?? 0) >= baseBytes, `the base moved (${record.disk?.sentBytes} of ${baseBytes} bytes)`);
}

describe('migration over a seeded base disk', () => {
  it('moves only the levels above the seed; the VM runs on B on [new delta → seed]; the manifest goes at commit', async () => {
    const { baseBytes } = await seededVm(a, dsA, 'kv1');
    assert.ok(baseBytes >= RECORDS * 64, `the base holds the log (${baseBytes} bytes)`);
    // The VM defined again on its top with room for MORE records: its guest appends them above the seed (its disk stays when it is deleted).
    await a.client.stopVm('kv1');
    await a.client.deleteVm('kv1');
    await a.client.createVm(await vmRequest('kv1', 'kvlog', { ...KV, cmdline: `max=${RECORDS + MORE} flush=1024 rate=0`, disk: { datastore: 'ds1', path: 'kv1-000001.vmdk' }, start: true }));
    await a.client.waitForConsole('kv1', 'kvlog: full', WAIT_MS);
    const topBytes = (await a.client.diskChain('kv1')).chain[0]?.allocatedBytes ?? 0;
    assert.ok(topBytes >= MORE * 64, `the top holds the new records (${topBytes} bytes)`);
    const record = await migrate(a, 'kv1');
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.disk?.seededLevels, 1);
    assert.equal(record.disk?.seededBytes, baseBytes);
    assert.equal(record.disk?.seedPath, 'kv1.vmdk');
    assert.equal(record.disk?.seedVerifyBytes, (await stat(join(dsB, 'kv1.vmdk'))).size);
    const sent = record.disk?.sentBytes ?? Infinity;
    assert.ok(sent >= MORE * 64 && sent < baseBytes / 4, `the top moved, the base did not (${sent} bytes sent, top ${topBytes}, base ${baseBytes})`);
    assert.deepEqual(record.disk?.chain?.map((l) => l.migrate), [true, false]);
    const chain = (await b.client.diskChain('kv1')).chain;
    assert.deepEqual(chain.map((l) => l.path), ['kv1-000001.vmdk', 'kv1.vmdk']);
    await runsOnB('kv1', 2, true, RECORDS + MORE);
  });

  it('a damaged seed: SEED_DAMAGED, the VM stays on A, no delta on B, the seed forgotten; the next migration copies it whole', async () => {
    const { baseBytes } = await seededVm(a, dsA, 'kv2');
    // A byte in the middle of the seed: grain data of the log (the metadata is at the front), which the open does not read.
    const seed = join(dsB, 'kv2.vmdk');
    const size = (await stat(seed)).size;
    const fh = await open(seed, 'r+');
    try {
      const one = Buffer.alloc(1);
      await fh.read(one, 0, 1, Math.floor(size / 2));
      one[0] = (one[0] ?? 0) ^ 0xff;
      await fh.write(one, 0, 1, Math.floor(size / 2));
    } finally { await fh.close(); }

    const bad = await migrate(a, 'kv2');
    assert.equal(bad.outcome, 'failed');
    assert.equal(bad.error?.code, 'SEED_DAMAGED', JSON.stringify(bad.error));
    assert.match(bad.error?.message ?? '', /seed ds1:kv2\.vmdk on host b is damaged: its digest is [0-9a-f]{64}, the source file's was [0-9a-f]{64}.*stays on its source.*copies the disk whole/);
    assert.equal((await a.client.vm('kv2')).state, 'running');
    await until(async () => !(await readdir(dsB)).includes('kv2-000001.vmdk'), 'the delta on B was removed');
    assert.ok((await stat(seed)).isFile(), 'the seed file itself stays');
    await noSeeds('kv2');

    wholeCopy(await migrate(a, 'kv2'), baseBytes);
    await runsOnB('kv2', 1, true);
  });

  it('a missing seed file: the disk is copied whole', async () => {
    const { baseBytes } = await seededVm(a, dsA, 'kv3');
    await rm(join(dsB, 'kv3.vmdk'));
    wholeCopy(await migrate(a, 'kv3'), baseBytes);
    await runsOnB('kv3', 1);
  });

  it('a base whose CID is not the seed\'s (modified since it was seeded): the disk is copied whole', async () => {
    const { baseBytes } = await seededVm(a, dsA, 'kv4');
    const path = join(dsB, seedManifestPath('kv4'));
    const manifest = JSON.parse(await readFile(path, 'utf8')) as { levels: { cid: string }[] };
    const level = manifest.levels[0];
    assert.ok(level !== undefined);
    level.cid = level.cid === '00000001' ? '00000002' : '00000001';
    await writeFile(path, JSON.stringify(manifest));
    wholeCopy(await migrate(a, 'kv4'), baseBytes);
    assert.match(b.log(), /VM kv4: the seed on ds1 .* is not the base of the source's chain .*copied whole/);
    await runsOnB('kv4', 1);
  });

  it('a source that announces no chain: the disk is copied whole', async () => {
    const { baseBytes } = await seededVm(old, join(base, 'old'), 'kv5');
    const record = await migrate(old, 'kv5');
    assert.ok(old.log().includes(failpointHitLine(FAILPOINT_SPEC_WITHOUT_CIDS, 'drop')), 'the failpoint fired');
    wholeCopy(record, baseBytes);
    assert.equal(record.disk?.chain, undefined, 'no chain was announced');
    await runsOnB('kv5', 1);
  });
});
