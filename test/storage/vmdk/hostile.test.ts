/** Hostile VMDK files are refused with stable codes, never trusted; a short mutation fuzz finds no other outcome. */
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { FerryError, type FerryErrorCode } from '../../../src/lib/errors.js';
import { LocalFile } from '../../../src/storage/local-file.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import { MAX_CHAIN_DEPTH } from '../../../src/storage/vmdk/disk.js';
import { SECTOR_BYTES } from '../../../src/storage/vmdk/header.js';
import { importStreamOptimized } from '../../../src/storage/vmdk/import.js';
import { MemoryFile, createLocalDisk, openLocalDisk, withTempDir } from '../../helpers/vmdk.js';
import { buildCorpus, fuzzOne, type FuzzOutcome } from '../../helpers/vmdk-fuzz.js';

const MiB = 1024 * 1024;

/** Counts its closes: what a failed open or create must not leave open. */
class CountedFile extends MemoryFile {
  closes = 0;
  override close(): Promise<void> {
    this.closes++;
    return super.close();
  }
}

/** Layout of a Ferry 4 MiB disk with 64 KiB grains: one grain table per directory. */
const RGD_SECTOR = 21;
const GD_SECTOR = 26;
const GT_SECTOR = 27;
const OVERHEAD_SECTORS = 128;

let valid: Uint8Array;

async function openBytes(bytes: Uint8Array, parents: Record<string, Uint8Array> = {}): Promise<VmdkDisk> {
  const disk = await VmdkDisk.open(new MemoryFile('t.vmdk', bytes), {
    openParent: (hint) => {
      const p = parents[hint];
      return p === undefined ? Promise.reject(new FerryError('NOT_FOUND', hint)) : Promise.resolve(new MemoryFile(hint, p));
    },
  });
  const buf = new Uint8Array(disk.capacityBytes);
  await disk.read(0, buf);
  return disk;
}

function mutated(fn: (b: Uint8Array, v: DataView) => void, from: Uint8Array = valid): Uint8Array {
  const b = Uint8Array.from(from);
  fn(b, new DataView(b.buffer));
  return b;
}

async function refused(bytes: Uint8Array, code: FerryErrorCode, parents?: Record<string, Uint8Array>): Promise<void> {
  await assert.rejects(openBytes(bytes, parents), (err: unknown) => {
    assert.ok(err instanceof FerryError, `a FerryError, not ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return true;
  });
}

function setDescriptor(b: Uint8Array, text: string): void {
  b.fill(0, SECTOR_BYTES, 21 * SECTOR_BYTES);
  b.set(new TextEncoder().encode(text), SECTOR_BYTES);
}

const descriptorText = (extra: string, extent = 'RW 8192 SPARSE "t.vmdk"'): string =>
  `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicSparse"\n${extra}${extent}\nddb.adapterType = "ide"\n`;

describe('hostile VMDK files', () => {
  before(() => withTempDir(async (dir) => {
    const disk = await createLocalDisk(join(dir, 't.vmdk'), 4 * MiB);
    await disk.write(100_000, new Uint8Array(200_000).fill(0x5a));
    await disk.flush();
    await disk.close();
    valid = await readFile(join(dir, 't.vmdk'));
    await openBytes(valid).then((d) => d.close());
  }));

  it('truncated or foreign headers', async () => {
    await refused(valid.subarray(0, 100), 'DISK_TRUNCATED');
    await refused(valid.subarray(0, 40 * SECTOR_BYTES), 'DISK_TRUNCATED'); // shorter than overHead
    await refused(mutated((b) => { b[0] = 0x4c; }), 'DISK_NOT_VMDK');
    await refused(mutated((_b, v) => v.setUint32(4, 4, true)), 'DISK_UNSUPPORTED'); // version 4
    await refused(mutated((_b, v) => v.setUint32(8, 0x3 | 0x100, true)), 'DISK_UNSUPPORTED'); // an unknown flag
    await refused(mutated((b) => { b[75] = 0x0a; }), 'DISK_CORRUPT'); // \r\n became \n\n: a text-mode copy
  });

  it('grain and table sizes beyond the limits, absurd capacities', async () => {
    await refused(mutated((_b, v) => v.setBigUint64(20, 3n, true)), 'DISK_UNSUPPORTED');
    await refused(mutated((_b, v) => v.setBigUint64(20, 4n, true)), 'DISK_UNSUPPORTED');
    await refused(mutated((_b, v) => v.setBigUint64(20, 0x400000n, true)), 'DISK_UNSUPPORTED');
    await refused(mutated((_b, v) => v.setUint32(44, 1024, true)), 'DISK_UNSUPPORTED');
    await refused(mutated((_b, v) => v.setUint32(44, 256, true)), 'DISK_UNSUPPORTED');
    await refused(mutated((_b, v) => v.setBigUint64(12, 2n ** 32n + 128n, true)), 'DISK_TOO_LARGE'); // > 2 TiB
    await refused(mutated((_b, v) => v.setBigUint64(12, 2n ** 62n, true)), 'DISK_CORRUPT');
    await refused(mutated((_b, v) => v.setBigUint64(12, 0n, true)), 'DISK_CORRUPT');
    await refused(mutated((_b, v) => v.setBigUint64(36, 2049n, true)), 'DISK_TOO_LARGE'); // descriptor > 1 MiB
    await refused(mutated((_b, v) => v.setBigUint64(36, 200n, true)), 'DISK_CORRUPT'); // descriptor beyond the metadata
    await refused(mutated((_b, v) => v.setBigUint64(64, 1n << 40n, true)), 'DISK_TRUNCATED'); // overHead beyond the file
    // Create holds itself to the rule open holds a file to.
    for (const grainSizeSectors of [4, 12, 0x400000, Number.NaN]) {
      await assert.rejects(VmdkDisk.create(new MemoryFile('g.vmdk', new Uint8Array(0), false), { capacityBytes: MiB, grainSizeSectors }), { code: 'INVALID_SIZE' });
    }
    await (await VmdkDisk.create(new MemoryFile('g.vmdk', new Uint8Array(0), false), { capacityBytes: MiB, grainSizeSectors: 8 })).close();
  });

  it('directories and tables pointing outside the file or into metadata', async () => {
    await refused(mutated((_b, v) => v.setUint32(GD_SECTOR * SECTOR_BYTES, 0x7fffff00, true)), 'DISK_CORRUPT');
    await refused(mutated((_b, v) => v.setUint32(GD_SECTOR * SECTOR_BYTES, 0, true)), 'DISK_CORRUPT'); // directories disagree
    await refused(mutated((_b, v) => v.setUint32(RGD_SECTOR * SECTOR_BYTES, 1, true)), 'DISK_CORRUPT'); // table over the descriptor
    await refused(mutated((_b, v) => v.setBigUint64(56, 0n, true)), 'DISK_CORRUPT'); // directory over the header
    await refused(mutated((_b, v) => v.setUint32(GT_SECTOR * SECTOR_BYTES + 8, 0xfffffff0, true)), 'DISK_CORRUPT');
    await refused(mutated((_b, v) => v.setUint32(GT_SECTOR * SECTOR_BYTES + 8, GD_SECTOR, true)), 'DISK_CORRUPT');
    await refused(mutated((_b, v) => v.setUint32(GT_SECTOR * SECTOR_BYTES + 8, 1, true)), 'DISK_CORRUPT'); // "zero grain" without the v2 flag
    // Two entries naming the same grain: a write through one would show through the other.
    await refused(mutated((_b, v) => v.setUint32(GT_SECTOR * SECTOR_BYTES + 12, v.getUint32(GT_SECTOR * SECTOR_BYTES + 4, true), true)), 'DISK_CORRUPT');
    // A grain whose end is past the end of the file.
    await refused(mutated((_b, v) => v.setUint32(GT_SECTOR * SECTOR_BYTES + 8, valid.length / SECTOR_BYTES - 64, true)), 'DISK_CORRUPT');
    assert.ok(OVERHEAD_SECTORS * SECTOR_BYTES < valid.length);
  });

  it('descriptors: over-long, injected lines, control characters, unknown types, bad CIDs', async () => {
    const withText = (t: string): Uint8Array => mutated((b) => setDescriptor(b, t));
    await openBytes(withText(descriptorText(''))).then((d) => d.close());
    await refused(withText(descriptorText('RW 8192 FLAT "/etc/shadow" 0\n')), 'DISK_UNSUPPORTED');
    await refused(withText(descriptorText('RW 8192 SPARSE "other.vmdk"\n')), 'DISK_UNSUPPORTED'); // two extents
    await refused(withText(descriptorText('parentFileNameHint="a\u0007b"\n')), 'DISK_DESCRIPTOR_INVALID');
    await refused(withText(descriptorText('parentFileNameHint="a"b"\n')), 'DISK_DESCRIPTOR_INVALID');
    await refused(withText(descriptorText('CID=87654321\n')), 'DISK_DESCRIPTOR_INVALID'); // given twice
    await refused(withText(descriptorText('just some words\n')), 'DISK_DESCRIPTOR_INVALID');
    await refused(withText(descriptorText('', `RW 8192 SPARSE "${'x'.repeat(512)}"`)), 'DISK_DESCRIPTOR_INVALID');
    await refused(withText(descriptorText('').replace('monolithicSparse', 'vmfsSparse')), 'DISK_UNSUPPORTED');
    await refused(withText(descriptorText('').replace('12345678', 'xyz')), 'DISK_DESCRIPTOR_INVALID');
    await refused(withText(descriptorText('').replace('version=1', 'version=7')), 'DISK_DESCRIPTOR_INVALID');
    await refused(withText(descriptorText('', 'RW 4096 SPARSE "t.vmdk"')), 'DISK_CORRUPT'); // extent and header disagree
    await refused(withText(descriptorText('').replace('ffffffff', '00000001')), 'DISK_CHAIN_INVALID'); // a parent without a hint
    await refused(mutated((b) => { b[SECTOR_BYTES + 3] = 0xc3; b[SECTOR_BYTES + 4] = 0x28; }), 'DISK_DESCRIPTOR_INVALID'); // not UTF-8
  });

  it('refuses to write a descriptor an injected parent hint or file name would break', () => withTempDir(async (dir) => {
    const base = await createLocalDisk(join(dir, 'b.vmdk'), MiB);
    for (const hint of ['b.vmdk"\nRW 2048 FLAT "/etc/shadow', 'b.vmdk\u0000', 'b.vmdk\r']) {
      const file = await LocalFile.open(join(dir, 'd.vmdk'), { create: true });
      await assert.rejects(VmdkDisk.createDelta(base, file, hint), { code: 'DISK_DESCRIPTOR_INVALID' });
      assert.equal(await file.size(), 0, 'nothing was written');
      await file.close();
      await rm(join(dir, 'd.vmdk'));
    }
    await assert.rejects(createLocalDisk(join(dir, 'q"x.vmdk'), MiB), { code: 'DISK_DESCRIPTOR_INVALID' });
    await assert.rejects(createLocalDisk(join(dir, 'big.vmdk'), 2 * 1024 * 1024 * MiB + 512), { code: 'DISK_TOO_LARGE' });
    await base.close();
  }));

  it('a refused open or create closes the file it was given and every parent it opened; a refused import closes both files', async () => {
    const junk = new CountedFile('junk.vmdk', new Uint8Array(4096));
    await assert.rejects(VmdkDisk.open(junk), { code: 'DISK_NOT_VMDK' });
    assert.equal(junk.closes, 1);
    const empty = new CountedFile('new.vmdk', new Uint8Array(0), false);
    await assert.rejects(VmdkDisk.create(empty, { capacityBytes: 1000 }), { code: 'INVALID_SIZE' });
    assert.equal(empty.closes, 1);
    // A delta whose parent was written since: refused after both files are open.
    const deltaFile = new MemoryFile('d.vmdk', new Uint8Array(0), false);
    const base = await VmdkDisk.open(new MemoryFile('t.vmdk', valid));
    await (await VmdkDisk.createDelta(base, deltaFile, 't.vmdk')).close();
    const written = new MemoryFile('t.vmdk', Uint8Array.from(valid), false);
    const rewritten = await VmdkDisk.open(written);
    await rewritten.write(0, new Uint8Array(1));
    await rewritten.close();
    const child = new CountedFile('d.vmdk', deltaFile.bytes);
    const parent = new CountedFile('t.vmdk', written.bytes);
    await assert.rejects(VmdkDisk.open(child, { openParent: () => Promise.resolve(parent) }), { code: 'DISK_CHAIN_MISMATCH' });
    assert.deepEqual([child.closes, parent.closes], [1, 1]);
    // valid is monolithicSparse: not something importStreamOptimized takes; and junk is no VMDK at all.
    for (const bytes of [valid, junk.bytes]) {
      const src = new CountedFile('src.vmdk', bytes);
      const dst = new CountedFile('dst.vmdk', new Uint8Array(0), false);
      await assert.rejects(importStreamOptimized(src, dst), FerryError);
      assert.deepEqual([src.closes, dst.closes], [1, 1]);
    }
  });

  it('parent chains that loop or are too long', () => withTempDir(async (dir) => {
    const base = await createLocalDisk(join(dir, 'd0.vmdk'), MiB);
    await base.close();
    const loop = await VmdkDisk.createDelta(await openLocalDisk(join(dir, 'd0.vmdk'), true), await LocalFile.open(join(dir, 'loop.vmdk'), { create: true }), 'loop.vmdk');
    await loop.close();
    await assert.rejects(openLocalDisk(join(dir, 'loop.vmdk'), true), { code: 'DISK_CHAIN_INVALID' });
    // A chain one longer than the limit: each delta's hint names the one before. The files are
    // copied from one delta with its hint and parentCID rewritten, so no chain is opened to make them.
    const one = await VmdkDisk.createDelta(await openLocalDisk(join(dir, 'd0.vmdk'), true), await LocalFile.open(join(dir, 'd1.vmdk'), { create: true }), 'd0.vmdk');
    const baseCid = one.parentCid.toString(16).padStart(8, '0');
    const cid = one.cid.toString(16).padStart(8, '0');
    await one.close();
    const template = await readFile(join(dir, 'd1.vmdk'));
    const text = Buffer.from(template.subarray(SECTOR_BYTES, 21 * SECTOR_BYTES)).toString('latin1').replace(/\0+$/, '');
    for (let i = 2; i <= MAX_CHAIN_DEPTH + 1; i++) {
      const next = text.replace(`parentCID=${baseCid}`, `parentCID=${cid}`).replace('"d0.vmdk"', `"d${i - 1}.vmdk"`);
      const bytes = Buffer.from(template);
      bytes.fill(0, SECTOR_BYTES, 21 * SECTOR_BYTES);
      bytes.write(next, SECTOR_BYTES, 'latin1');
      await writeFile(join(dir, `d${i}.vmdk`), bytes);
    }
    const ok = await openLocalDisk(join(dir, `d${MAX_CHAIN_DEPTH - 1}.vmdk`), true);
    assert.equal(ok.info().chain.length, MAX_CHAIN_DEPTH);
    await ok.close();
    await assert.rejects(openLocalDisk(join(dir, `d${MAX_CHAIN_DEPTH + 1}.vmdk`), true), { code: 'DISK_CHAIN_INVALID' });
  }));

  it('streamOptimized grains: an inflate bomb, a marker for another LBA, an oversized compressed length', () => withTempDir(async (dir) => {
    const corpus = await buildCorpus(dir);
    const stream = corpus.get('s.vmdk') as Uint8Array;
    await openBytes(stream).then((d) => d.close());
    const FIRST_GRAIN = 128 * SECTOR_BYTES; // qemu-img's first grain marker: right after the overHead
    const bomb = deflateSync(Buffer.alloc(16 * 65536)); // 1 MiB of zeros in ~1 KiB: 16 grains
    await refused(mutated((b, v) => { v.setUint32(FIRST_GRAIN + 8, bomb.length, true); b.set(bomb, FIRST_GRAIN + 12); }, stream), 'DISK_CORRUPT');
    await refused(mutated((_b, v) => v.setBigUint64(FIRST_GRAIN, 128n, true), stream), 'DISK_CORRUPT');
    await refused(mutated((_b, v) => v.setUint32(FIRST_GRAIN + 8, 2 * 65536 + 1, true), stream), 'DISK_CORRUPT');
    await refused(mutated((_b, v) => v.setUint32(FIRST_GRAIN + 8, 0, true), stream), 'DISK_CORRUPT');
  }));

  it(`mutation fuzz: a few hundred mutated disks open and read with only FerryErrors`, { timeout: 30_000 }, () => withTempDir(async (dir) => {
    const corpus = await buildCorpus(dir);
    const outcome: FuzzOutcome = { ok: 0, refused: new Map() };
    const targets = [...corpus.keys()];
    const CASES = 400;
    // A hang is caught per case (fuzzOne's own bound); how fast the cases run is no test's business (a loaded CI machine is slow).
    for (let seed = 1; seed <= CASES; seed++) await fuzzOne(corpus, targets[seed % targets.length] as string, seed, outcome);
    assert.ok(outcome.refused.size >= 3, `mutations are refused with several codes: ${JSON.stringify([...outcome.refused])}`);
  }));
});
