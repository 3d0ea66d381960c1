/**
 * Ferry's VMDK against the reference implementation: what Ferry writes passes `qemu-img check`, shows
 * the right size and content IDs in `qemu-img info` and compares equal to a raw image of the expected
 * content; what qemu-img and qemu-io write (sparse, streamOptimized, a delta chain) Ferry reads right.
 * qemu-img is required (scripts/system-packages.sh installs it): these tests fail, never skip, without it.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalFile } from '../../../src/storage/local-file.js';
import { importStreamOptimized } from '../../../src/storage/vmdk/import.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import {
  createLocalDisk, gdInFooter, openLocalDisk, qemuImg, qemuImgOk, qemuInfo, runTool, withTempDir, writePattern,
} from '../../helpers/vmdk.js';

const MiB = 1024 * 1024;

async function readAll(disk: VmdkDisk): Promise<Buffer> {
  const out = Buffer.alloc(disk.capacityBytes);
  await disk.read(0, out);
  return out;
}

async function expectCompareEqual(vmdk: string, raw: string): Promise<void> {
  const r = await qemuImg('compare', '-f', 'vmdk', '-F', 'raw', vmdk, raw);
  assert.equal(r.code, 0, `qemu-img compare: ${r.stdout}${r.stderr}`);
}

describe('VMDK interoperability with qemu-img', () => {
  it('a Ferry disk written at random offsets and lengths passes check, has the right size and CID, compares equal to raw', () => withTempDir(async (dir) => {
    const capacityBytes = 24 * MiB + 512; // not a whole number of grains: the last grain is partial
    const path = join(dir, 'a.vmdk');
    const disk = await createLocalDisk(path, capacityBytes);
    const expected = Buffer.alloc(capacityBytes);
    for (const [i, w] of writePattern(1, 120, capacityBytes).entries()) {
      await disk.write(w.offsetBytes, w.data);
      expected.set(w.data, w.offsetBytes);
      if (i % 40 === 0) await disk.flush();
    }
    await disk.flush();
    assert.deepEqual(await readAll(disk), expected, 'Ferry reads back what it wrote');
    const cid = disk.cid;
    assert.ok(await disk.allocatedBytes() > 0);
    await disk.close();
    await writeFile(join(dir, 'a.raw'), expected);
    await qemuImgOk('check', path);
    const info = await qemuInfo(path);
    assert.equal(info['virtual-size'], capacityBytes);
    assert.equal(info['format-specific'].data.cid, cid);
    assert.equal(info['format-specific'].data['parent-cid'], 0xffffffff);
    assert.equal(info['format-specific'].data['create-type'], 'monolithicSparse');
    await expectCompareEqual(path, join(dir, 'a.raw'));
  }));

  it('a Ferry delta chain: qemu-img sees the parent CID and the chain content; the base is untouched', () => withTempDir(async (dir) => {
    const capacityBytes = 16 * MiB;
    const basePath = join(dir, 'base.vmdk');
    const base = await createLocalDisk(basePath, capacityBytes);
    const expected = Buffer.alloc(capacityBytes);
    for (const w of writePattern(2, 60, capacityBytes)) { await base.write(w.offsetBytes, w.data); expected.set(w.data, w.offsetBytes); }
    await base.flush();
    const baseContent = Buffer.from(expected);
    await base.close();
    const roBase = await openLocalDisk(basePath, true);
    const baseCid = roBase.cid;
    const delta = await VmdkDisk.createDelta(roBase, await LocalFile.open(join(dir, 'delta.vmdk'), { create: true }), 'base.vmdk');
    assert.equal(delta.parentCid, baseCid);
    for (const w of writePattern(3, 60, capacityBytes, 70_000)) { await delta.write(w.offsetBytes, w.data); expected.set(w.data, w.offsetBytes); }
    await delta.flush();
    assert.deepEqual(await readAll(delta), expected);
    const deltaCid = delta.cid;
    await delta.close();
    await writeFile(join(dir, 'chain.raw'), expected);
    await writeFile(join(dir, 'base.raw'), baseContent);
    await qemuImgOk('check', join(dir, 'delta.vmdk'));
    await qemuImgOk('check', basePath);
    const info = await qemuInfo(join(dir, 'delta.vmdk'));
    assert.equal(info['virtual-size'], capacityBytes);
    assert.equal(info['format-specific'].data.cid, deltaCid);
    assert.equal(info['format-specific'].data['parent-cid'], baseCid);
    assert.equal((await qemuInfo(basePath))['format-specific'].data.cid, baseCid, 'a read-only base keeps its CID');
    await expectCompareEqual(join(dir, 'delta.vmdk'), join(dir, 'chain.raw'));
    await expectCompareEqual(basePath, join(dir, 'base.raw'));
    // And Ferry reopens the chain from the files.
    const reopened = await openLocalDisk(join(dir, 'delta.vmdk'), true);
    assert.deepEqual(reopened.info().chain.length, 2);
    assert.deepEqual(await readAll(reopened), expected);
    await reopened.close();
  }));

  it('reads disks qemu wrote: qemu-io writes into a sparse disk, a converted raw file', () => withTempDir(async (dir) => {
    const capacityBytes = 8 * MiB;
    const path = join(dir, 'q.vmdk');
    await qemuImgOk('create', '-f', 'vmdk', path, String(capacityBytes));
    const io = await runTool('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0xab 0 64k', '-c', 'write -P 0x5c 1000000 300000', '-c', 'write -z 1048576 65536', path]);
    assert.equal(io.code, 0, io.stderr);
    const expected = Buffer.alloc(capacityBytes);
    expected.fill(0xab, 0, 65536);
    expected.fill(0x5c, 1000000, 1300000);
    expected.fill(0, 1048576, 1048576 + 65536);
    const disk = await openLocalDisk(path, true);
    assert.equal(disk.capacityBytes, capacityBytes);
    assert.deepEqual(await readAll(disk), expected);
    await disk.close();

    const raw = join(dir, 'r.raw');
    const rawContent = Buffer.alloc(capacityBytes);
    randomBytes(3 * MiB).copy(rawContent, 2 * MiB + 4096);
    await writeFile(raw, rawContent);
    await qemuImgOk('convert', '-f', 'raw', '-O', 'vmdk', raw, join(dir, 'c.vmdk'));
    const converted = await openLocalDisk(join(dir, 'c.vmdk'), true);
    assert.deepEqual(await readAll(converted), rawContent);
    await converted.close();
  }));

  it('reads a streamOptimized disk qemu wrote, and imports it into a sparse disk qemu-img checks', () => withTempDir(async (dir) => {
    const capacityBytes = 6 * MiB;
    const rawContent = Buffer.alloc(capacityBytes);
    randomBytes(MiB).copy(rawContent, 100_000); // incompressible: compressed grains longer than a grain
    rawContent.fill(0x11, 3 * MiB, 4 * MiB); // very compressible
    await writeFile(join(dir, 's.raw'), rawContent);
    await qemuImgOk('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(dir, 's.raw'), join(dir, 's.vmdk'));
    const stream = await openLocalDisk(join(dir, 's.vmdk'), true);
    assert.equal(stream.info().createType, 'streamOptimized');
    assert.deepEqual(await readAll(stream), rawContent);
    await assert.rejects(stream.write(0, new Uint8Array(1)), { code: 'DISK_READ_ONLY' });
    await stream.close();
    await assert.rejects(openLocalDisk(join(dir, 's.vmdk'), false), { code: 'DISK_READ_ONLY' });

    const result = await importStreamOptimized(await LocalFile.open(join(dir, 's.vmdk'), { readOnly: true }), await LocalFile.open(join(dir, 'i.vmdk'), { create: true }));
    assert.equal(result.capacityBytes, capacityBytes);
    assert.ok(result.allocatedBytes <= 2 * MiB + 128 * 1024, `only grains with data are allocated (${result.allocatedBytes})`);
    await qemuImgOk('check', join(dir, 'i.vmdk'));
    await expectCompareEqual(join(dir, 'i.vmdk'), join(dir, 's.raw'));
  }));

  it('reads a chain qemu-img made (create -b), with writes in the delta through qemu-io', () => withTempDir(async (dir) => {
    const capacityBytes = 4 * MiB;
    const base = join(dir, 'base.vmdk');
    await qemuImgOk('create', '-f', 'vmdk', base, String(capacityBytes));
    assert.equal((await runTool('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x31 0 1M', base])).code, 0);
    await qemuImgOk('create', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', join(dir, 'delta.vmdk'));
    const io = await runTool('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x42 512 1000', '-c', 'write -P 0x43 2M 70000', join(dir, 'delta.vmdk')]);
    assert.equal(io.code, 0, io.stderr);
    const expected = Buffer.alloc(capacityBytes);
    expected.fill(0x31, 0, MiB);
    expected.fill(0x42, 512, 1512);
    expected.fill(0x43, 2 * MiB, 2 * MiB + 70000);
    const disk = await openLocalDisk(join(dir, 'delta.vmdk'), true);
    assert.equal(disk.info().chain.length, 2);
    assert.deepEqual(await readAll(disk), expected);
    await disk.close();
    // Writing through Ferry keeps qemu's view identical.
    const rw = await openLocalDisk(join(dir, 'delta.vmdk'));
    await rw.write(3 * MiB + 7, Buffer.alloc(5000, 0x77));
    expected.fill(0x77, 3 * MiB + 7, 3 * MiB + 5007);
    await rw.flush();
    await rw.close();
    await writeFile(join(dir, 'chain.raw'), expected);
    await qemuImgOk('check', join(dir, 'delta.vmdk'));
    await expectCompareEqual(join(dir, 'delta.vmdk'), join(dir, 'chain.raw'));
    assert.equal((await readFile(join(dir, 'chain.raw'))).length, capacityBytes);
  }));

  it('reads zeroed-grain entries (qemu-img -o zeroed_grain=on, qemu-io write -z) and writes over them', () => withTempDir(async (dir) => {
    const capacityBytes = 4 * MiB;
    const path = join(dir, 'z.vmdk');
    await qemuImgOk('create', '-f', 'vmdk', '-o', 'zeroed_grain=on', path, String(capacityBytes));
    const io = await runTool('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 0 256k', '-c', 'write -z 64k 64k', path]);
    assert.equal(io.code, 0, io.stderr);
    const expected = Buffer.alloc(capacityBytes);
    expected.fill(0x11, 0, 256 * 1024);
    expected.fill(0, 64 * 1024, 128 * 1024);
    const disk = await openLocalDisk(path);
    assert.deepEqual(await readAll(disk), expected);
    assert.equal(await disk.allocatedBytes(), 3 * 65536, 'a zero grain holds no data');
    await disk.write(70_000, Buffer.alloc(1000, 0x22));
    expected.fill(0x22, 70_000, 71_000);
    await disk.flush();
    assert.deepEqual(await readAll(disk), expected);
    await disk.close();
    await writeFile(join(dir, 'z.raw'), expected);
    await qemuImgOk('check', path);
    await expectCompareEqual(path, join(dir, 'z.raw'));
  }));

  it('reads a streamOptimized disk whose grain directory is in the footer (gdOffset all-ones, as VMware writes)', () => withTempDir(async (dir) => {
    const capacityBytes = 3 * MiB;
    const rawContent = Buffer.alloc(capacityBytes);
    randomBytes(200_000).copy(rawContent, 1_000_000);
    await writeFile(join(dir, 's.raw'), rawContent);
    await qemuImgOk('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(dir, 's.raw'), join(dir, 's.vmdk'));
    const front = await readFile(join(dir, 's.vmdk'));
    assert.equal(front.length % 512, 0);
    const withFooter = gdInFooter(front);
    await writeFile(join(dir, 'f.vmdk'), withFooter);
    const disk = await openLocalDisk(join(dir, 'f.vmdk'), true);
    assert.deepEqual(await readAll(disk), rawContent);
    await disk.close();
    await expectCompareEqual(join(dir, 'f.vmdk'), join(dir, 's.raw')); // qemu reads the same file the same way
    await writeFile(join(dir, 'n.vmdk'), withFooter.subarray(0, front.length)); // no footer at all
    await assert.rejects(openLocalDisk(join(dir, 'n.vmdk'), true), { code: 'DISK_CORRUPT' });
  }));

  it('the largest disk, 2 TiB: created in a sparse file, written at both ends, checked by qemu-img', () => withTempDir(async (dir) => {
    const capacityBytes = 2 * 1024 * 1024 * MiB;
    const path = join(dir, 'big.vmdk');
    const disk = await createLocalDisk(path, capacityBytes);
    await disk.write(capacityBytes - 1000, Buffer.alloc(1000, 7));
    await disk.write(0, Buffer.alloc(1000, 8));
    await disk.flush();
    await disk.close();
    await qemuImgOk('check', path);
    assert.equal((await qemuInfo(path))['virtual-size'], capacityBytes);
    const ro = await openLocalDisk(path, true);
    const tail = Buffer.alloc(2000);
    await ro.read(capacityBytes - 2000, tail);
    assert.deepEqual(tail, Buffer.concat([Buffer.alloc(1000), Buffer.alloc(1000, 7)]));
    assert.equal(await ro.allocatedBytes(), 2 * 65536);
    await ro.check();
    await assert.rejects(ro.read(capacityBytes - 10, Buffer.alloc(11)), { code: 'DISK_OUT_OF_RANGE' });
    await ro.close();
  }));

  it('concurrent writes and reads are applied in call order', () => withTempDir(async (dir) => {
    const capacityBytes = 4 * MiB;
    const disk = await createLocalDisk(join(dir, 'c.vmdk'), capacityBytes);
    const expected = Buffer.alloc(capacityBytes);
    const writes = writePattern(11, 80, capacityBytes, 100_000);
    for (const w of writes) expected.set(w.data, w.offsetBytes);
    const reads = [Buffer.alloc(capacityBytes)];
    await Promise.all([...writes.map((w) => disk.write(w.offsetBytes, w.data)), disk.read(0, reads[0] as Buffer)]);
    assert.deepEqual(reads[0], expected, 'a read queued after the writes sees them all');
    await disk.flush();
    await disk.close();
    await writeFile(join(dir, 'c.raw'), expected);
    await qemuImgOk('check', join(dir, 'c.vmdk'));
    await expectCompareEqual(join(dir, 'c.vmdk'), join(dir, 'c.raw'));
  }));
});
