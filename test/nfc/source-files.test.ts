/**
 * A copy's source on a real temp datastore mounted by two "hosts": the write leases held without
 * opening for writing (a writer elsewhere is DISK_LOCKED; a copy of a file someone writes is
 * DISK_LOCKED, and what was taken before is given back), size and modification time checked at open
 * and on demand (SOURCE_CHANGED), reads within the plan only, close idempotent and releasing.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { MiB } from '../../src/lib/units.js';
import { openCopySource } from '../../src/nfc/source-files.js';
import type { LocalDatastore } from '../../src/storage/local-datastore.js';
import { HOST_A, HOST_B, mountAs, newCopyId, nfcDirs, planOf, writeSourceFile, type NfcDirs } from '../helpers/nfc.js';

describe('copy source', () => {
  let dirs: NfcDirs;
  let dsA: LocalDatastore;
  let dsB: LocalDatastore;
  before(async () => {
    dirs = await nfcDirs();
    dsA = await mountAs(dirs.src, 'src', HOST_A);
    dsB = await mountAs(dirs.src, 'src', HOST_B);
    await writeSourceFile(dirs.src, 'base.vmdk', { kind: 'random', sizeBytes: 2 * MiB + 3 });
    await writeSourceFile(dirs.src, 'top.vmdk', { kind: 'random', sizeBytes: 1000 });
  });
  after(async () => { await dirs.cleanup(); });

  it('holds every file\'s write lease while open (no one opens them for writing), reads them, and gives the leases up at close', async () => {
    const plan = await planOf(dsA, newCopyId(), ['base.vmdk', 'top.vmdk']);
    const source = await openCopySource(dsA, plan);
    for (const f of plan.files) await assert.rejects(dsB.open(f.path), { code: 'DISK_LOCKED' }, f.path);
    const buf = Buffer.alloc(1000);
    await source.read(1, 0, buf);
    assert.ok(buf.equals(await readFile(join(dirs.src, 'top.vmdk'))));
    await assert.rejects(source.read(1, 1, buf), { code: 'INVALID_ARGUMENT' }, 'past the planned size');
    await assert.rejects(source.read(2, 0, buf), { code: 'INVALID_ARGUMENT' });
    await source.check(0);
    await source.close();
    await source.close();
    await assert.rejects(source.read(1, 0, buf), { code: 'INVALID_ARGUMENT' });
    for (const f of plan.files) await (await dsB.open(f.path)).close();
  });

  it('a file someone holds open for writing (a running VM\'s disk) is DISK_LOCKED, and the leases taken before it are given back', async () => {
    const plan = await planOf(dsA, newCopyId(), ['base.vmdk', 'top.vmdk']);
    const vm = await dsB.open('top.vmdk');
    await assert.rejects(openCopySource(dsA, plan), (err: Error & { code?: string }) => err.code === 'DISK_LOCKED' && /snapshot/.test(err.message));
    await vm.close();
    await (await dsB.open('base.vmdk')).close();
  });

  it('a file whose size or modification time is not the plan\'s is SOURCE_CHANGED, at open and at check()', async () => {
    const plan = await planOf(dsA, newCopyId(), ['base.vmdk', 'top.vmdk']);
    const stale = { ...plan, files: plan.files.map((f, i) => (i === 1 ? { ...f, sizeBytes: f.sizeBytes + 1 } : f)) };
    await assert.rejects(openCopySource(dsA, stale), { code: 'SOURCE_CHANGED' });
    await (await dsB.open('base.vmdk')).close(); // released after the failed open
    const source = await openCopySource(dsA, plan);
    await utimes(join(dirs.src, 'base.vmdk'), new Date(), new Date(Date.now() + 5_000));
    await assert.rejects(source.check(0), { code: 'SOURCE_CHANGED' });
    await source.check(1);
    await source.close();
  });
});
