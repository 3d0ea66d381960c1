/** Content-ID rules: new on the first write after open, durable before that write returns, never reserved; chains checked at open. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { LocalFile } from '../../../src/storage/local-file.js';
import { CID_NO_PARENT, CID_RESERVED, newCid } from '../../../src/storage/vmdk/descriptor.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import { createLocalDisk, openLocalDisk, qemuInfo, withTempDir } from '../../helpers/vmdk.js';

const MiB = 1024 * 1024;

async function cidOnDisk(path: string): Promise<number> {
  const d = await openLocalDisk(path, true);
  try { return d.cid; } finally { await d.close(); }
}

describe('VMDK content IDs', () => {
  it('changes on the first write after open (on disk before the write resolves), once per open; never on read-only or read-only-use opens', () => withTempDir(async (dir) => {
    const path = join(dir, 'a.vmdk');
    const created = await createLocalDisk(path, 4 * MiB);
    const first = created.cid;
    await created.write(0, new Uint8Array(10).fill(1)); // a new disk's CID is already fresh: no second change
    assert.equal(created.cid, first);
    await created.flush();
    await created.close();

    const ro = await openLocalDisk(path, true);
    await ro.read(0, new Uint8Array(4096));
    await ro.close();
    const rwUnused = await openLocalDisk(path);
    await rwUnused.read(0, new Uint8Array(4096));
    await rwUnused.flush();
    await rwUnused.close();
    assert.equal(await cidOnDisk(path), first, 'reads and flushes without writes keep the CID');

    const rw = await openLocalDisk(path);
    await rw.write(MiB, new Uint8Array(100).fill(2));
    const second = rw.cid;
    assert.notEqual(second, first);
    assert.equal(await cidOnDisk(path), second, 'the new CID is in the file before the write is acknowledged');
    await rw.write(2 * MiB, new Uint8Array(100).fill(3));
    assert.equal(rw.cid, second, 'one change per open');
    await rw.close();
    assert.equal((await qemuInfo(path))['format-specific'].data.cid, second);
  }));

  it('a new CID is never ffffffff or fffffffe, nor the previous one', () => {
    for (let i = 0; i < 20_000; i++) {
      const c = newCid(7);
      assert.ok(c !== CID_NO_PARENT && c !== CID_RESERVED && c !== 7 && Number.isInteger(c) && c >= 0 && c < 2 ** 32);
    }
  });

  it('a delta whose parent was written after it was made is refused at open (DISK_CHAIN_MISMATCH)', () => withTempDir(async (dir) => {
    const basePath = join(dir, 'base.vmdk');
    const base = await createLocalDisk(basePath, 2 * MiB);
    await base.write(0, new Uint8Array(512).fill(9));
    await base.flush();
    await base.close();
    const delta = await VmdkDisk.createDelta(await openLocalDisk(basePath, true), await LocalFile.open(join(dir, 'd.vmdk'), { create: true }), 'base.vmdk');
    await delta.write(4096, new Uint8Array(10).fill(4));
    await delta.close();
    const ok = await openLocalDisk(join(dir, 'd.vmdk'), true);
    await ok.close();
    assert.equal(await cidOnDisk(basePath), ok.parentCid, 'opening the chain did not change the base');

    const rw = await openLocalDisk(basePath);
    await rw.write(0, new Uint8Array(1));
    await rw.close();
    await assert.rejects(openLocalDisk(join(dir, 'd.vmdk'), true), { code: 'DISK_CHAIN_MISMATCH' });
    await assert.rejects(openLocalDisk(join(dir, 'd.vmdk')), { code: 'DISK_CHAIN_MISMATCH' });
  }));
});
