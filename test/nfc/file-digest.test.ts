/**
 * The NFC file digest as a function (src/nfc/file-digest.ts): equal to the `sourceDigest` a real
 * local copy of the same file reports, and to an independent computation (test/helpers/nfc.ts), for a
 * random file, a sparse file with holes and a short last chunk, and an empty file; a read error and an
 * abort reject; progress runs up to the size.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileDigest } from '../../src/nfc/file-digest.js';
import { NFC_CHUNK_BYTES } from '../../src/nfc/plan.js';
import type { LocalDatastore } from '../../src/storage/local-datastore.js';
import type { BlockFile } from '../../src/storage/block-file.js';
import { HOST_A, HOST_B, expectedDigest, mountAs, newCopyId, nfcDirs, planOf, runLocalCopy, writeSourceFile, type NfcDirs } from '../helpers/nfc.js';

let dirs: NfcDirs;
let src: LocalDatastore;
let dst: LocalDatastore;

before(async () => {
  dirs = await nfcDirs('ferry-file-digest-');
  src = await mountAs(dirs.src, 'src', HOST_A);
  dst = await mountAs(dirs.dst, 'dst', HOST_B);
  await writeSourceFile(dirs.src, 'random.bin', { kind: 'random', sizeBytes: 5 * NFC_CHUNK_BYTES + 12345 });
  // Holes of whole chunks between data, data inside a chunk, and a short last chunk that is a hole.
  await writeSourceFile(dirs.src, 'sparse.vmdk', { kind: 'sparse', sizeBytes: 9 * NFC_CHUNK_BYTES + 777, dataAt: [0, 3 * NFC_CHUNK_BYTES + 4096, 7 * NFC_CHUNK_BYTES - 10], dataBytes: 4096 });
  await writeFile(join(dirs.src, 'empty.bin'), new Uint8Array(0));
});
after(async () => { await dirs.cleanup(); });

async function digestOf(path: string, signal?: AbortSignal, onProgress?: (n: number) => void): Promise<string> {
  const file = await src.open(path, { readOnly: true });
  try { return await fileDigest(file, await file.size(), signal, onProgress); } finally { await file.close(); }
}

describe('fileDigest', () => {
  it('equals the source digest a copy reports and the independent computation, holes included', async () => {
    const paths = ['random.bin', 'sparse.vmdk', 'empty.bin'];
    const record = await runLocalCopy(src, dst, await planOf(src, newCopyId(), paths));
    assert.equal(record.outcome, 'completed', JSON.stringify(record.error));
    for (const path of paths) {
      const copied = record.files.find((f) => f.path === path);
      const mine = await digestOf(path);
      assert.equal(mine, copied?.sourceDigest, `${path}: the copy's source digest`);
      assert.equal(mine, await expectedDigest(join(dirs.src, path)), `${path}: the independent digest`);
    }
  });

  it('reports progress in order up to the size, and a changed byte changes the digest', async () => {
    const seen: number[] = [];
    const before = await digestOf('sparse.vmdk', undefined, (n) => { seen.push(n); });
    assert.deepEqual(seen, [...seen].sort((x, y) => x - y));
    assert.equal(seen.at(-1), 9 * NFC_CHUNK_BYTES + 777);
    const f = await src.open('sparse.vmdk');
    try { await f.write(5 * NFC_CHUNK_BYTES, new Uint8Array([1])); } finally { await f.close(); }
    assert.notEqual(await digestOf('sparse.vmdk'), before, 'a byte written into a hole is seen');
  });

  it('rejects with the abort reason, and with a read error', async () => {
    const ac = new AbortController();
    ac.abort(new Error('stop now'));
    await assert.rejects(digestOf('random.bin', ac.signal), /stop now/);
    let reads = 0;
    const failing: BlockFile = {
      name: 'broken', readOnly: true, flush: () => Promise.resolve(), size: () => Promise.resolve(64 * NFC_CHUNK_BYTES),
      truncate: () => Promise.resolve(), close: () => Promise.resolve(), write: () => Promise.resolve(),
      read: () => (++reads === 3 ? Promise.reject(new Error('EIO at chunk 3')) : Promise.resolve()),
    };
    await assert.rejects(fileDigest(failing, 64 * NFC_CHUNK_BYTES), /EIO at chunk 3/);
    assert.ok(reads < 16, `the other readers stop after the failure (${reads} reads)`);
  });
});
