/**
 * Seed manifests (src/storage/seed-manifest.ts) on a real local datastore: a round trip; hostile
 * manifests refused with SEED_INVALID (truncated, oversized, not JSON, wrong version, unknown keys,
 * another VM's); checkSeedLevels against real VMDK files: a base and a delta over it pass, and a wrong
 * size, CID, parent CID, capacity, a missing file, a wrong depth are each named.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalDatastore } from '../../src/storage/local-datastore.js';
import { VmdkDisk } from '../../src/storage/vmdk/disk.js';
import { createDeltaOver } from '../../src/storage/vmdk/chain-ops.js';
import {
  MAX_SEED_MANIFEST_BYTES, SEED_MANIFEST_DIR, SEED_MANIFEST_VERSION, checkSeedLevels, readSeedManifest, removeSeedManifest, seedManifestPath, writeSeedManifest,
  type SeedLevel, type SeedManifest,
} from '../../src/storage/seed-manifest.js';
import { MiB } from '../../src/lib/units.js';
import { isFerryError } from '../../src/lib/errors.js';

const CAPACITY = 8 * MiB;
let root = '';
let ds: LocalDatastore;
let base: SeedLevel;
let delta: SeedLevel;

async function levelOf(path: string): Promise<SeedLevel> {
  const disk = await VmdkDisk.open(await ds.open(path, { readOnly: true }), { withoutParent: true });
  const info = disk.info();
  await disk.close();
  return {
    path, cid: info.cid, parentCid: info.parentCid, capacityBytes: info.capacityBytes, fileBytes: (await stat(join(root, path))).size,
    digest: 'a'.repeat(64), source: { datastoreId: 'b'.repeat(32), path },
  };
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'ferry-seed-manifest-'));
  ds = await LocalDatastore.mount('ds1', root, { owner: { hostName: 'h', hostId: 'aaaaaaaaaaaaaaaa' } });
  await mkdir(join(root, 'vm'));
  const disk = await VmdkDisk.create(await ds.open('vm/kv.vmdk', { create: true }), { capacityBytes: CAPACITY });
  await disk.write(MiB, new Uint8Array(64 * 1024).fill(7));
  await disk.close();
  const d = await createDeltaOver(ds, 'vm/kv.vmdk', 'vm/kv.vmdk');
  await d.disk.write(0, new Uint8Array(4096).fill(9));
  await d.disk.close();
  base = await levelOf('vm/kv.vmdk');
  delta = await levelOf(d.path);
});
after(async () => { await rm(root, { recursive: true, force: true }); });

function manifest(levels: SeedLevel[] = [base], vm = 'kv'): SeedManifest {
  return { version: SEED_MANIFEST_VERSION, vm, levels, seededAtMs: 1, taskId: null };
}

async function seedInvalid(p: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => isFerryError(err, 'SEED_INVALID') && message.test(err.message));
}

describe('seed manifests', () => {
  it('round trip: none, written, read back, replaced, removed', async () => {
    assert.equal(await readSeedManifest(ds, 'kv'), null);
    await writeSeedManifest(ds, manifest());
    assert.deepEqual(await readSeedManifest(ds, 'kv'), manifest());
    await writeSeedManifest(ds, manifest([base, delta]));
    assert.deepEqual((await readSeedManifest(ds, 'kv'))?.levels, [base, delta]);
    assert.equal(await readSeedManifest(ds, 'other'), null, 'per VM');
    assert.equal(await removeSeedManifest(ds, 'kv'), true);
    assert.equal(await removeSeedManifest(ds, 'kv'), false);
    assert.equal(await readSeedManifest(ds, 'kv'), null);
  });

  it('refuses hostile manifests with SEED_INVALID', async () => {
    await mkdir(join(root, SEED_MANIFEST_DIR), { recursive: true });
    const file = join(root, seedManifestPath('kv'));
    const good = JSON.stringify(manifest());
    const cases: [string | Uint8Array, RegExp][] = [
      [good.slice(0, good.length / 2), /is not JSON/],
      ['not json at all', /is not JSON/],
      [new Uint8Array(MAX_SEED_MANIFEST_BYTES + 1).fill(0x20), /more than a seed manifest may be/],
      [JSON.stringify({ ...manifest(), version: 2 }), /not a version-1 seed manifest \(version/],
      [JSON.stringify({ ...manifest(), extra: true }), /Unrecognized key/],
      [JSON.stringify({ ...manifest(), levels: [{ ...base, sneaky: 1 }] }), /levels\.0/],
      [JSON.stringify({ ...manifest(), levels: [{ ...base, cid: 'XYZ' }] }), /levels\.0\.cid/],
      [JSON.stringify(manifest([base], 'other')), /manifest of VM other, not of kv/],
    ];
    for (const [content, message] of cases) {
      await writeFile(file, content);
      await seedInvalid(readSeedManifest(ds, 'kv'), message);
    }
    await rm(file);
    // Something else in its place: unreadable, not "none".
    await mkdir(file);
    await seedInvalid(readSeedManifest(ds, 'kv'), /cannot be read/);
    await rm(file, { recursive: true });
  });

  it('checkSeedLevels: the files as recorded pass; each difference is named', async () => {
    await checkSeedLevels(ds, [base]);
    await checkSeedLevels(ds, [base, delta]);
    await seedInvalid(checkSeedLevels(ds, [{ ...base, fileBytes: base.fileBytes + 1 }]), new RegExp(`vm/kv.vmdk is ${base.fileBytes} bytes, the seed ${base.fileBytes + 1}`));
    await seedInvalid(checkSeedLevels(ds, [{ ...base, cid: '12345678' }]), new RegExp(`vm/kv.vmdk: its CID is ${base.cid}, the seed's 12345678`));
    await seedInvalid(checkSeedLevels(ds, [base, { ...delta, parentCid: '12345678' }]), /its parent CID is/);
    await seedInvalid(checkSeedLevels(ds, [{ ...base, capacityBytes: 2 * CAPACITY }]), /its capacity is/);
    await seedInvalid(checkSeedLevels(ds, [{ ...base, path: 'vm/gone.vmdk' }]), /vm\/gone.vmdk: the seed file is missing/);
    await seedInvalid(checkSeedLevels(ds, [delta]), /its chain has 2 levels/);
    // A base CID changed in the file (a base modified since it was seeded): the delta's open finds its parent's CID changed.
    await seedInvalid(checkSeedLevels(ds, [{ ...base, path: 'vm/absent-parent.vmdk' }, delta]), /missing/);
  });
});
