/**
 * Chain operations on a datastore: deltas named after their disk (never over an existing file, an
 * orphan's number never reused), created over any level without changing its CID, described level
 * by level with paths resolved like the parent opener resolves them; qemu-img sees the same chain.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalDatastore } from '../../../src/storage/local-datastore.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import { chainPaths, createDeltaAt, createDeltaOver, deltaStem, describeChain, openDatastoreChain } from '../../../src/storage/vmdk/chain-ops.js';
import { qemuImgOk, withTempDir } from '../../helpers/vmdk.js';

const MiB = 1024 * 1024;
const OWNER = { hostName: 'chain-test', hostId: '00000000000000c1' };

async function mount(root: string): Promise<LocalDatastore> {
  await mkdir(join(root, 'vm'), { recursive: true });
  await mkdir(join(root, 'bases'), { recursive: true });
  return LocalDatastore.mount('ds1', root, { owner: OWNER });
}

async function createBase(ds: LocalDatastore, path: string): Promise<number> {
  const d = await VmdkDisk.create(await ds.open(path, { create: true }), { capacityBytes: 4 * MiB });
  await d.write(0, new Uint8Array(65536).fill(3));
  await d.flush();
  const cid = d.cid;
  await d.close();
  return cid;
}

describe('VMDK chain operations on a datastore', () => {
  it('names deltas after their disk, past any orphan, and never changes a parent\'s CID', () => withTempDir(async (root) => {
    const ds = await mount(root);
    const baseCid = await createBase(ds, 'vm/kv.vmdk');
    const d1 = await createDeltaOver(ds, 'vm/kv.vmdk', 'vm/kv.vmdk');
    assert.equal(d1.path, 'vm/kv-000001.vmdk');
    assert.equal(d1.disk.parentCid, baseCid);
    assert.equal(d1.disk.parent?.cid, baseCid);
    await d1.disk.write(0, new Uint8Array(512).fill(1));
    await d1.disk.flush();
    await d1.disk.close();
    // A crash's leftover: a file with the next number (not even a disk). It keeps its name.
    await writeFile(join(root, 'vm', 'kv-000002.vmdk'), 'orphan');
    const d2 = await createDeltaOver(ds, 'vm/kv-000001.vmdk', 'vm/kv-000001.vmdk');
    assert.equal(d2.path, 'vm/kv-000003.vmdk', 'one past the highest number in the directory');
    const levels = await describeChain(d2.disk, d2.path);
    assert.deepEqual(levels.map((l) => l.path), ['vm/kv-000003.vmdk', 'vm/kv-000001.vmdk', 'vm/kv.vmdk']);
    assert.equal(levels[0]?.parentCid, levels[1]?.cid, 'each level records its parent\'s CID');
    assert.equal(levels[1]?.parentCid, levels[2]?.cid);
    assert.equal(levels[2]?.cid, baseCid.toString(16).padStart(8, '0'), 'the base is as it was');
    assert.equal(levels[0]?.allocatedBytes, 0);
    assert.equal(levels[1]?.allocatedBytes, 65536, 'the first delta holds the one grain written to it');
    await d2.disk.close();
    const info = JSON.parse(await qemuImgOk('info', '--backing-chain', '--output=json', join(root, d2.path))) as { filename: string }[];
    assert.deepEqual(info.map((i) => i.filename.replace(`${root}/`, '')), ['vm/kv-000003.vmdk', 'vm/kv-000001.vmdk', 'vm/kv.vmdk']);
    await qemuImgOk('check', join(root, d2.path));
  }));

  it('creates a delta over a base in another directory; parent paths resolve against each child\'s directory', () => withTempDir(async (root) => {
    const ds = await mount(root);
    await createBase(ds, 'bases/golden.vmdk');
    const d = await createDeltaOver(ds, 'bases/golden.vmdk', 'vm/web.vmdk');
    assert.equal(d.path, 'vm/web-000001.vmdk');
    assert.equal(d.disk.info().parentFileNameHint, '../bases/golden.vmdk');
    await d.disk.close();
    const reopened = await openDatastoreChain(ds, d.path);
    assert.deepEqual(chainPaths(reopened, d.path), ['vm/web-000001.vmdk', 'bases/golden.vmdk']);
    const buf = new Uint8Array(512);
    await reopened.read(0, buf);
    assert.ok(buf.every((b) => b === 3), 'reads come from the base');
    await reopened.close();
    await qemuImgOk('check', join(root, d.path));
  }));

  it('creates a delta at exactly a given path over a base elsewhere (a migration over a seed): never over a file, nothing left on failure', () => withTempDir(async (root) => {
    const ds = await mount(root);
    const baseCid = await createBase(ds, 'bases/seed.vmdk');
    const delta = await createDeltaAt(ds, 'bases/seed.vmdk', 'vm/kv-000004.vmdk');
    assert.equal(delta.parentCid, baseCid);
    assert.equal(delta.info().parentFileNameHint, '../bases/seed.vmdk', 'the hint is relative to the delta');
    await delta.write(4096, new Uint8Array(512).fill(8));
    await delta.close();
    const again = await openDatastoreChain(ds, 'vm/kv-000004.vmdk', { readOnly: true });
    assert.deepEqual(chainPaths(again, 'vm/kv-000004.vmdk'), ['vm/kv-000004.vmdk', 'bases/seed.vmdk']);
    await again.close();
    await assert.rejects(createDeltaAt(ds, 'bases/seed.vmdk', 'vm/kv-000004.vmdk'), { code: 'ALREADY_EXISTS' });
    await assert.rejects(createDeltaAt(ds, 'bases/none.vmdk', 'vm/other.vmdk'), { code: 'NOT_FOUND' });
    assert.deepEqual((await readdir(join(root, 'vm'))).filter((f) => !f.endsWith('.lck')), ['kv-000004.vmdk'], 'nothing left by the failures');
  }));

  it('derives the stem of a disk name', () => {
    assert.equal(deltaStem('vm/kv.vmdk'), 'kv');
    assert.equal(deltaStem('kv-000012.vmdk'), 'kv');
    assert.equal(deltaStem('a-b-1.VMDK'), 'a-b-1');
    assert.equal(deltaStem('disk'), 'disk');
  });
});
