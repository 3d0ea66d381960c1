/**
 * What allocating a grain costs in the file: a write into a new grain with nothing below it writes
 * only its data (the file is extended over the grain; the rest is a hole that reads as zeros),
 * while a grain a parent holds is still copied up whole; a flush writes its changed table sectors
 * in one write per contiguous run and copy. The disks stay clean for qemu-img check.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlockFile } from '../../../src/storage/block-file.js';
import { LocalFile } from '../../../src/storage/local-file.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import { createLocalDisk, openLocalDisk, qemuImgOk, withTempDir } from '../../helpers/vmdk.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GRAIN_BYTES = 64 * KiB;
const WRITE_BYTES = 4 * KiB;

/** A BlockFile that counts its writes. */
class CountingFile implements BlockFile {
  writes = 0;
  constructor(private readonly inner: BlockFile) {}
  get name(): string { return this.inner.name; }
  get readOnly(): boolean { return this.inner.readOnly; }
  read(position: number, buf: Uint8Array): Promise<void> { return this.inner.read(position, buf); }
  write(position: number, data: Uint8Array): Promise<void> { this.writes++; return this.inner.write(position, data); }
  flush(): Promise<void> { return this.inner.flush(); }
  size(): Promise<number> { return this.inner.size(); }
  truncate(length: number): Promise<void> { return this.inner.truncate(length); }
  close(): Promise<void> { return this.inner.close(); }
}

const pattern = (g: number): Uint8Array => new Uint8Array(WRITE_BYTES).fill((g % 250) + 1);
/** Where in its grain the write to grain g goes: never the start, so the zeros before it are checked too. */
const inGrain = (g: number): number => WRITE_BYTES * (1 + (g % 8));

/** Reads every grain of `grains` whole and checks it holds `pattern(g)` at `inGrain(g)` and `below(g)` elsewhere. */
async function expectGrains(disk: VmdkDisk, grains: readonly number[], below: (g: number) => number): Promise<void> {
  for (const g of grains) {
    const got = new Uint8Array(GRAIN_BYTES);
    await disk.read(g * GRAIN_BYTES, got);
    const want = new Uint8Array(GRAIN_BYTES).fill(below(g));
    want.set(pattern(g), inGrain(g));
    assert.deepEqual(got, want, `grain ${g}`);
  }
}

describe('VMDK grain allocation', () => {
  it('a 4 KiB write into a new grain with nothing below writes 4 KiB, not the grain; the file still covers every grain', () => withTempDir(async (dir) => {
    const path = join(dir, 'base.vmdk');
    const disk = await createLocalDisk(path, 64 * MiB);
    const before = await stat(path);
    const grains = Array.from({ length: 256 }, (_, i) => i * 3);
    await Promise.all(grains.map((g) => disk.write(g * GRAIN_BYTES + inGrain(g), pattern(g))));
    await disk.flush();
    await disk.close();
    const after = await stat(path);
    assert.ok(after.size >= before.size + grains.length * GRAIN_BYTES, `the file reaches past the last grain (${after.size} B)`);
    const allocated = (after.blocks - before.blocks) * 512;
    assert.ok(allocated < grains.length * GRAIN_BYTES / 4, `${allocated} B allocated for ${grains.length} writes of 4 KiB (whole grains: ${grains.length * GRAIN_BYTES})`);
    await qemuImgOk('check', path);
    const reopened = await openLocalDisk(path, true);
    await expectGrains(reopened, grains, () => 0);
    await reopened.close();
  }));

  it('in a delta, a grain the parent holds is copied up whole; one it does not hold gets only the data', () => withTempDir(async (dir) => {
    const basePath = join(dir, 'base.vmdk');
    const base = await createLocalDisk(basePath, 16 * MiB);
    const held = Array.from({ length: 32 }, (_, i) => 2 * i); // even grains: full of 0xee in the base
    for (const g of held) await base.write(g * GRAIN_BYTES, new Uint8Array(GRAIN_BYTES).fill(0xee));
    await base.flush();
    await base.close();
    const deltaPath = join(dir, 'delta.vmdk');
    const delta = await VmdkDisk.createDelta(await openLocalDisk(basePath, true), await LocalFile.open(deltaPath, { create: true }), 'base.vmdk');
    const before = await stat(deltaPath);
    const grains = Array.from({ length: 64 }, (_, g) => g);
    await Promise.all(grains.map((g) => delta.write(g * GRAIN_BYTES + inGrain(g), pattern(g))));
    await delta.flush();
    await delta.close();
    const allocated = ((await stat(deltaPath)).blocks - before.blocks) * 512;
    const expected = held.length * GRAIN_BYTES + (grains.length - held.length) * WRITE_BYTES;
    assert.ok(allocated < expected + (grains.length - held.length) * GRAIN_BYTES / 2, `${allocated} B allocated (whole grains for the held ones and 4 KiB for the others: ${expected})`);
    await qemuImgOk('check', deltaPath);
    const reopened = await openLocalDisk(deltaPath, true);
    await expectGrains(reopened, grains, (g) => (g % 2 === 0 ? 0xee : 0));
    assert.equal(await reopened.allocatedBytes(), grains.length * GRAIN_BYTES);
    await reopened.close();
  }));

  it('a flush writes its changed table sectors in one write per contiguous run, for each copy', () => withTempDir(async (dir) => {
    const path = join(dir, 'runs.vmdk');
    await (await createLocalDisk(path, 256 * MiB)).close();
    const file = new CountingFile(await LocalFile.open(path));
    const disk = await VmdkDisk.open(file);
    // 640 grains: all 4 sectors of table 0 and the first sector of table 1, back to back in the file.
    const grains = Array.from({ length: 640 }, (_, g) => g);
    for (const g of grains) await disk.write(g * GRAIN_BYTES, pattern(g).subarray(0, 512));
    const writesBefore = file.writes;
    await disk.flush();
    assert.equal(file.writes - writesBefore, 2, 'one write to the redundant tables, one to the primary ones');
    await disk.close();
    await qemuImgOk('check', path);
  }));
});
