/**
 * `ferry disk` as an operator runs it: real child processes on real files in a temp dir, with
 * qemu-img as the reference for what was written (virtual size, CIDs, content).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runFerry, type CliResult } from '../helpers/cli.js';
import { prng, qemuImg, qemuImgOk, qemuInfo } from '../helpers/vmdk.js';

const MiB = 1024 * 1024;
const GRAIN_BYTES = 64 * 1024;
/** Header fields of a sparse extent (little-endian, in sectors): where the grain directories are. */
const HEADER_RGD_OFFSET = 48;
const HEADER_GD_OFFSET = 56;
const SECTOR_BYTES = 512;

let dir = '';
before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-disk-cli-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

async function ferryOk(...args: string[]): Promise<CliResult> {
  const r = await runFerry(args);
  assert.equal(r.code, 0, `ferry ${args.join(' ')}: ${r.stderr}`);
  return r;
}

interface InfoJson { virtualSizeBytes: number; allocatedBytes: number; cid: string; parentCid: string; createType: string; chain: { file: string; cid: string; parentCid: string }[] }

async function infoJson(path: string): Promise<InfoJson> {
  return JSON.parse((await ferryOk('disk', 'info', path, '--json')).stdout) as InfoJson;
}

/** 5 MiB + 3 sectors: seeded random runs with whole zero grains between them (those must stay unallocated). */
function pattern(): Uint8Array {
  const bytes = new Uint8Array(5 * MiB + 3 * SECTOR_BYTES);
  const rnd = prng(8);
  for (let at = 0; at < bytes.length; at += GRAIN_BYTES) {
    if (Math.floor(at / GRAIN_BYTES) % 3 === 1) continue;
    const end = Math.min(bytes.length, at + GRAIN_BYTES);
    for (let i = at; i < end; i++) bytes[i] = Math.floor(rnd() * 256);
  }
  return bytes;
}

describe('ferry disk', () => {
  it('create: qemu-img sees the virtual size; create --parent records the base CID; info shows the chain', async () => {
    const base = join(dir, 'base.vmdk');
    await ferryOk('disk', 'create', base, '--size', '10GiB');
    assert.equal((await qemuInfo(base))['virtual-size'], 10 * 1024 * MiB);
    await qemuImgOk('check', base);

    await mkdir(join(dir, 'deltas'));
    const delta = join(dir, 'deltas', 'delta.vmdk');
    await ferryOk('disk', 'create', delta, '--parent', base);
    const baseInfo = await infoJson(base);
    const info = await infoJson(delta);
    assert.equal(info.parentCid, baseInfo.cid);
    assert.equal(info.virtualSizeBytes, 10 * 1024 * MiB);
    assert.equal(info.allocatedBytes, 0);
    assert.deepEqual(info.chain.map((c) => [c.cid, c.parentCid]), [[info.cid, baseInfo.cid], [baseInfo.cid, 'ffffffff']]);
    // The hint is relative to the delta's directory, and qemu-img follows it to the same base.
    const q = await qemuInfo(delta);
    assert.equal(q['format-specific'].data['parent-cid'], parseInt(baseInfo.cid, 16));
    assert.match(await qemuImgOk('info', delta), /backing file: \.\.\/base\.vmdk/);
    const text = await ferryOk('disk', 'info', delta);
    assert.match(text.stdout, new RegExp(`parent CID  ${baseInfo.cid}`));
  });

  it('import of a raw image, export back: byte-identical, qemu-img compare equal, zero grains not allocated', async () => {
    const raw = join(dir, 'pattern.raw');
    const input = pattern();
    await writeFile(raw, input);
    const disk = join(dir, 'imported.vmdk');
    await ferryOk('disk', 'import', raw, disk);
    await qemuImgOk('check', disk);
    assert.equal((await qemuImg('compare', '-f', 'vmdk', '-F', 'raw', disk, raw)).code, 0, 'qemu-img compare: equal');
    const info = await infoJson(disk);
    assert.equal(info.virtualSizeBytes, input.length);
    assert.ok(info.allocatedBytes < input.length * 0.75, `zero grains are not allocated (${info.allocatedBytes} of ${input.length})`);

    const out = join(dir, 'exported.raw');
    await ferryOk('disk', 'export', disk, out);
    assert.ok(Buffer.from(input).equals(await readFile(out)), 'export is byte-identical to the imported raw');
    assert.deepEqual((await readdir(dir)).filter((n) => n.endsWith('.tmp')), [], 'no temporary file left');
    // A raw size that is not whole sectors is rounded up, as qemu-img does; the tail reads as zeros.
    const odd = join(dir, 'odd.raw');
    await writeFile(odd, input.subarray(0, SECTOR_BYTES + 1));
    assert.match((await ferryOk('disk', 'import', odd, join(dir, 'odd.vmdk'))).stdout, /513 bytes rounded up/);
    assert.equal((await infoJson(join(dir, 'odd.vmdk'))).virtualSizeBytes, 2 * SECTOR_BYTES);
    const again = await runFerry(['disk', 'export', disk, out]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /\[ALREADY_EXISTS\]/);
  });

  it('import of a qemu-img streamOptimized disk: export equals the raw it was made from', async () => {
    const raw = join(dir, 'so.raw');
    await writeFile(raw, pattern());
    const so = join(dir, 'so.vmdk');
    await qemuImgOk('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, so);
    const disk = join(dir, 'from-so.vmdk');
    const r = await ferryOk('disk', 'import', so, disk);
    assert.match(r.stdout, /streamOptimized/);
    assert.equal((await infoJson(disk)).createType, 'monolithicSparse');
    const out = join(dir, 'from-so.raw');
    await ferryOk('disk', 'export', disk, out);
    assert.ok((await readFile(raw)).equals(await readFile(out)));
  });

  it('check: 0 on a good disk; 1 with a DISK_* code when a grain-table entry points past the end of the file', async () => {
    const raw = join(dir, 'check.raw');
    await writeFile(raw, pattern());
    const disk = join(dir, 'check.vmdk');
    await ferryOk('disk', 'import', raw, disk);
    assert.match((await ferryOk('disk', 'check', disk)).stdout, /no problems found/);

    const bytes = await readFile(disk);
    const fileSectors = bytes.length / SECTOR_BYTES;
    // Grain 0 holds data (the pattern starts with data): point it far past the end, in both copies of its table.
    for (const dirField of [HEADER_GD_OFFSET, HEADER_RGD_OFFSET]) {
      const gdSector = Number(bytes.readBigUInt64LE(dirField));
      const gtSector = bytes.readUInt32LE(gdSector * SECTOR_BYTES);
      assert.notEqual(bytes.readUInt32LE(gtSector * SECTOR_BYTES), 0, 'grain 0 is allocated');
      bytes.writeUInt32LE(fileSectors + 1000, gtSector * SECTOR_BYTES);
    }
    await writeFile(disk, bytes);
    const r = await runFerry(['disk', 'check', disk]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^ferry: error \[DISK_[A-Z_]+\]: .*outside the file/m);
  });

  // Concurrent: each case is its own process start (~0.6 s), and no case writes a file another reads.
  describe('bad input gets a clear error and a stable code', { concurrency: true }, () => {
    const cases: readonly { args: readonly string[]; code: number; match: RegExp }[] = [
      { args: ['disk', 'info', 'DIR/missing.vmdk'], code: 1, match: /\[NOT_FOUND\]: .*missing\.vmdk: no such file/ },
      { args: ['disk', 'check', 'DIR/missing.vmdk'], code: 1, match: /\[NOT_FOUND\]/ },
      { args: ['disk', 'export', 'DIR/missing.vmdk', 'DIR/x.raw'], code: 1, match: /\[NOT_FOUND\]/ },
      { args: ['disk', 'import', 'DIR/missing.raw', 'DIR/x.vmdk'], code: 1, match: /\[NOT_FOUND\]/ },
      { args: ['disk', 'create', 'DIR/x.vmdk', '--parent', 'DIR/missing.vmdk'], code: 1, match: /\[NOT_FOUND\]/ },
      // Option values are checked like `ferry vm run --memory 12X`: a FerryError, exit 1.
      { args: ['disk', 'create', 'DIR/x.vmdk', '--size', '12X'], code: 1, match: /\[INVALID_SIZE\]: --size: "12X"/ },
      { args: ['disk', 'create', 'DIR/x.vmdk', '--size', '1000'], code: 1, match: /\[INVALID_SIZE\].*multiple of 512/ },
      { args: ['disk', 'create', 'DIR/x.vmdk'], code: 1, match: /\[INVALID_ARGUMENT\]: --size is required/ },
      { args: ['disk', 'create', 'DIR/existing.vmdk', '--size', '1MiB'], code: 1, match: /\[ALREADY_EXISTS\]/ },
      { args: ['disk', 'import', 'DIR/existing.vmdk', 'DIR/existing.vmdk'], code: 1, match: /\[ALREADY_EXISTS\]/ },
      { args: ['disk', 'info', 'DIR/text.vmdk'], code: 1, match: /\[DISK_(NOT_VMDK|TRUNCATED)\]/ },
      { args: ['disk', 'frobnicate'], code: 2, match: /unknown command/ },
      { args: ['disk', 'export', 'DIR/existing.vmdk'], code: 2, match: /missing required argument/ },
    ];
    before(async () => {
      await ferryOk('disk', 'create', join(dir, 'existing.vmdk'), '--size', '1MiB');
      await writeFile(join(dir, 'text.vmdk'), 'not a disk\n');
    });
    cases.forEach((c, n) => {
      it(c.args.join(' '), async () => {
        // Each case its own output name: a concurrent case may hold its file for a moment before removing it.
        const r = await runFerry(c.args.map((a) => a.replace(/^DIR\/x\./, `${dir}/x${n}.`).replace(/^DIR\//, `${dir}/`)));
        assert.equal(r.code, c.code, r.stderr);
        assert.match(r.stderr, c.match);
        assert.deepEqual((await readdir(dir)).filter((f) => f.startsWith(`x${n}.`) || f.startsWith(`.x${n}.`)), [], 'a failed command leaves no file behind');
      });
    });
  });
});
