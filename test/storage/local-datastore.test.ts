/**
 * The local-directory datastore on real temp directories: the path rules' negative space (every
 * rule, through every verb), symlinks that lead out (refused) or stay inside (allowed, one lease per
 * real file), open/create/read/write, leases on write opens, close (idempotent), rename without and
 * with overwrite, remove, list (lease files hidden), stat, mkdir, space left against statfs.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, statfs, symlink, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError, type FerryErrorCode } from '../../src/lib/errors.js';
import {
  MAX_DATASTORE_PATH_BYTES, MAX_DATASTORE_PATH_DEPTH, MAX_PATH_COMPONENT_BYTES, datastorePathParts,
} from '../../src/storage/datastore.js';
import { LeasedFile } from '../../src/storage/leased-file.js';
import { LocalDatastore } from '../../src/storage/local-datastore.js';
import { LocalFile } from '../../src/storage/local-file.js';
import { lockPathOf, type LeaseLost, type LeaseTiming } from '../../src/storage/lease.js';
import { MemoryFile } from '../helpers/vmdk.js';

const TIMING: LeaseTiming = { durationMs: 1_600, renewIntervalMs: 200, clockSkewMs: 100 };
const A = { hostName: 'a', hostId: 'aaaaaaaaaaaaaaaa' };
const B = { hostName: 'b', hostId: 'bbbbbbbbbbbbbbbb' };

async function codeOf(p: Promise<unknown>): Promise<{ code: FerryErrorCode; details: Readonly<Record<string, unknown>> }> {
  const err = await p.then(() => null, (e: unknown) => e);
  assert.ok(err instanceof FerryError, `a FerryError, got ${String(err)}`);
  return { code: err.code, details: err.details };
}

describe('local datastore', () => {
  let base = '';
  let root = '';
  let outside = '';
  let ds: LocalDatastore;
  let dsB: LocalDatastore;
  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'ferry-ds-'));
    root = join(base, 'root');
    outside = join(base, 'outside');
    await mkdir(root);
    await mkdir(outside);
    await writeFile(join(outside, 'secret.raw'), 'secret');
    ds = await LocalDatastore.mount('ds1', root, { owner: A, leaseTiming: TIMING });
    // The same directory mounted by a second host.
    dsB = await LocalDatastore.mount('ds1', root, { owner: B, leaseTiming: TIMING });
  });
  after(async () => { await rm(base, { recursive: true, force: true }); });

  it('mount refuses a bad name, a missing path and a file, with DATASTORE_INVALID and the reason', async () => {
    await writeFile(join(base, 'plain-file'), '');
    const cases: [string, string, string][] = [['a b', root, 'name'], ['..', root, 'name'], ['x'.repeat(65), root, 'name'], ['ok', join(base, 'nope'), 'missing'], ['ok', join(base, 'plain-file'), 'not-directory']];
    for (const [name, path, reason] of cases) {
      const e = await codeOf(LocalDatastore.mount(name, path, { owner: A }));
      assert.deepEqual([e.code, e.details.reason], ['DATASTORE_INVALID', reason], `${name} ${path}`);
    }
    assert.equal(ds.location, root.replace(/\/$/, ''));
    // An owner whose lock files nobody could parse back would lock disks for good: refused at mount.
    await assert.rejects(LocalDatastore.mount('ok', root, { owner: { hostName: 'h', hostId: 'not-hex' } }), { code: 'INVALID_ARGUMENT' });
  });

  it('has one identity per directory, whatever name a host mounts it under; the id file is neither listed nor opened', async () => {
    assert.match(ds.id, /^[0-9a-f]{32}$/);
    assert.equal(dsB.id, ds.id, 'a second host mounting the directory reads the same id');
    assert.equal((await LocalDatastore.mount('other-name', root, { owner: A })).id, ds.id);
    const elsewhere = await mkdtemp(join(base, 'other-'));
    assert.notEqual((await LocalDatastore.mount('ds1', elsewhere, { owner: A })).id, ds.id, 'another directory of the same name is another store');
    assert.ok(!(await ds.list('')).entries.some((e) => e.name.startsWith('.ferry')));
    await assert.rejects(ds.open('.ferry-datastore'), { code: 'DATASTORE_PATH_INVALID' });
    await writeFile(join(elsewhere, '.ferry-datastore'), 'garbage\n');
    const e = await codeOf(LocalDatastore.mount('ds1', elsewhere, { owner: A }));
    assert.deepEqual([e.code, e.details.reason], ['DATASTORE_INVALID', 'id']);
  });

  it('path rules: "..", absolute, NUL, backslash, empty parts, ".", too long, too deep, lease names are refused with the rule that failed', async () => {
    const long = 'x'.repeat(MAX_PATH_COMPONENT_BYTES + 1);
    const cases: [string, string][] = [
      ['..', 'dot-dot'], ['../x', 'dot-dot'], ['a/../../x', 'dot-dot'], ['a/..', 'dot-dot'],
      ['/etc/passwd', 'absolute'], ['/', 'absolute'], ['a\0b', 'nul'], ['a\\..\\b', 'backslash'],
      ['', 'empty'], ['a//b', 'empty-component'], ['a/', 'empty-component'], ['./a', 'dot'], ['a/./b', 'dot'],
      [long, 'component-too-long'], [`${'é'.repeat(MAX_PATH_COMPONENT_BYTES / 2)}x`, 'component-too-long'],
      [Array.from({ length: 6 }, () => 'y'.repeat(MAX_PATH_COMPONENT_BYTES)).join('/'), 'too-long'],
      [Array.from({ length: MAX_DATASTORE_PATH_DEPTH + 1 }, () => 'd').join('/'), 'too-deep'],
      ['disk.raw.lck', 'reserved'], ['disk.raw.lck.0123.tmp', 'reserved'], ['d.lck/x', 'reserved'],
    ];
    for (const [path, reason] of cases) {
      assert.throws(() => datastorePathParts(path), (e: unknown) => e instanceof FerryError && e.code === 'DATASTORE_PATH_INVALID' && e.details.reason === reason, JSON.stringify(path).slice(0, 60));
      // Every verb checks before touching the file system.
      for (const verb of [() => ds.open(path), () => ds.open(path, { create: true }), () => ds.stat(path), () => ds.list(path), () => ds.remove(path), () => ds.mkdir(path), () => ds.rename(path, 'ok'), () => ds.rename('ok', path)]) {
        if (path === '' && (verb.toString().includes('stat') || verb.toString().includes('list'))) continue; // the root
        assert.equal((await codeOf(verb())).code, 'DATASTORE_PATH_INVALID', JSON.stringify(path).slice(0, 60));
      }
    }
    // At the limits exactly: accepted.
    assert.equal(datastorePathParts('x'.repeat(MAX_PATH_COMPONENT_BYTES)).length, 1);
    assert.equal(datastorePathParts(Array.from({ length: MAX_DATASTORE_PATH_DEPTH }, () => 'd').join('/')).length, MAX_DATASTORE_PATH_DEPTH);
    const longest = Array.from({ length: 5 }, () => 'z'.repeat(MAX_PATH_COMPONENT_BYTES)).join('/');
    assert.ok(Buffer.byteLength(longest) <= MAX_DATASTORE_PATH_BYTES);
    assert.deepEqual(datastorePathParts('vm1/disk-0.vmdk'), ['vm1', 'disk-0.vmdk']);
    assert.deepEqual(datastorePathParts('', { allowRoot: true }), []);
    assert.equal(ds.location.length > 0, true);
  });

  it('symlinks that lead outside the root are refused for every verb; ones that stay inside work, with one lease per real file', async () => {
    await symlink(outside, join(root, 'out-dir'));
    await symlink(join(outside, 'secret.raw'), join(root, 'out-file.raw'));
    await symlink('../outside/secret.raw', join(root, 'rel-out.raw'));
    for (const call of [
      () => ds.open('out-dir/secret.raw'), () => ds.open('out-dir/secret.raw', { readOnly: true }), () => ds.open('out-file.raw'),
      () => ds.open('rel-out.raw', { readOnly: true }), () => ds.open('out-dir/new.raw', { create: true }), () => ds.stat('out-file.raw'),
      () => ds.list('out-dir'), () => ds.mkdir('out-dir/sub'), () => ds.remove('out-dir/secret.raw'), () => ds.rename('out-dir/secret.raw', 'mine.raw'),
      () => ds.rename('inside-none.raw', 'out-dir/x.raw'),
    ]) {
      const e = await codeOf(call());
      assert.equal(e.code === 'DATASTORE_PATH_INVALID' || e.code === 'NOT_FOUND', true, `${call.toString()}: ${e.code}`);
      if (e.code === 'DATASTORE_PATH_INVALID') assert.equal(e.details.reason, 'escapes');
    }
    assert.equal(await readFile(join(outside, 'secret.raw'), 'utf8'), 'secret', 'nothing outside was touched');
    assert.deepEqual((await readFile(join(outside, 'secret.raw'))).length, 6);
    // Inside: a link to a file of the datastore reaches the same file and the same lease.
    const f = await ds.open('real.raw', { create: true });
    await symlink('real.raw', join(root, 'alias.raw'));
    assert.equal((await codeOf(dsB.open('alias.raw'))).code, 'DISK_LOCKED');
    const r = await dsB.open('alias.raw', { readOnly: true });
    await r.close();
    await f.close();
    // Removing the symlink removes the link, not the file.
    await ds.remove('alias.raw');
    assert.equal((await ds.stat('real.raw')).kind, 'file');
  });

  it('open: create writes and reads back; create of an existing file is ALREADY_EXISTS, open of a missing one NOT_FOUND; read-only refuses writes', async () => {
    await ds.mkdir('vm1/disks');
    const f = await ds.open('vm1/disks/d.raw', { create: true });
    assert.equal(f.name, 'ds1:vm1/disks/d.raw');
    assert.ok(f.lease !== null, 'a writer holds a lease');
    await f.write(4096, Buffer.from('hello'));
    await f.flush();
    assert.equal(await f.size(), 4101);
    await f.close();
    assert.equal((await codeOf(ds.open('vm1/disks/d.raw', { create: true }))).code, 'ALREADY_EXISTS');
    assert.equal((await codeOf(ds.open('vm1/disks/none.raw'))).code, 'NOT_FOUND');
    assert.equal((await codeOf(ds.open('vm1/nodir/x.raw', { create: true }))).code, 'NOT_FOUND');
    assert.equal((await codeOf(ds.open('vm1/disks/x.raw', { create: true, readOnly: true }))).code, 'INVALID_ARGUMENT');
    const r = await ds.open('vm1/disks/d.raw', { readOnly: true });
    assert.equal(r.lease, null, 'readers take no lease');
    const buf = new Uint8Array(5);
    await r.read(4096, buf);
    assert.equal(Buffer.from(buf).toString(), 'hello');
    assert.equal((await codeOf(r.write(0, Buffer.from('x')))).code, 'STORE_IO');
    await r.close();
    const st = await ds.stat('vm1/disks/d.raw');
    assert.deepEqual([st.kind, st.sizeBytes], ['file', 4101]);
    assert.equal((await ds.stat('')).kind, 'directory');
  });

  it('a second writer (another host, or this one) gets DISK_LOCKED while a reader still opens; close releases the lease', async () => {
    const w = await ds.open('vm1/disks/d.raw');
    const e = await codeOf(dsB.open('vm1/disks/d.raw'));
    assert.equal(e.code, 'DISK_LOCKED');
    assert.deepEqual(e.details.owner, A);
    assert.equal((await codeOf(ds.open('vm1/disks/d.raw'))).code, 'DISK_LOCKED');
    const r = await dsB.open('vm1/disks/d.raw', { readOnly: true });
    await r.close();
    // Neither rename nor remove moves a disk being written.
    assert.equal((await codeOf(dsB.rename('vm1/disks/d.raw', 'moved.raw'))).code, 'DISK_LOCKED');
    assert.equal((await codeOf(dsB.remove('vm1/disks/d.raw'))).code, 'DISK_LOCKED');
    await w.close();
    const w2 = await dsB.open('vm1/disks/d.raw');
    await w2.close();
  });

  it('a writer whose lease is lost gets the event and every later write, flush or truncate is LEASE_LOST', async () => {
    const w = await ds.open('vm1/disks/d.raw');
    assert.ok(w.lease !== null);
    const lost = new Promise<LeaseLost>((resolve) => { w.lease?.once('lost', resolve); });
    await rm(lockPathOf(join(ds.location, 'vm1/disks/d.raw')));
    assert.equal((await lost).reason, 'removed');
    for (const op of [() => w.write(0, Buffer.from('x')), () => w.flush(), () => w.truncate(0)]) assert.equal((await codeOf(op())).code, 'LEASE_LOST');
    await w.close();
  });

  it('close is idempotent (a disk may close a file its opener closes again): the lease is released once, never another\'s', async () => {
    const plain = await LocalFile.open(join(root, 'plain.raw'), { create: true });
    await plain.close();
    await plain.close();
    const w = await ds.open('twice.raw', { create: true });
    await Promise.all([w.close(), w.close()]);
    const b = await dsB.open('twice.raw');
    await w.close(); // long after: B's lease stays
    assert.equal((await codeOf(ds.open('twice.raw'))).code, 'DISK_LOCKED');
    await b.close();
    // LeasedFile does not lean on its file's close being idempotent: it closes the file once.
    let closes = 0;
    const counted = new MemoryFile('counted.raw', new Uint8Array(0));
    counted.close = () => { closes++; return Promise.resolve(); };
    const leased = new LeasedFile(counted, null);
    await Promise.all([leased.close(), leased.close()]);
    await leased.close();
    assert.equal(closes, 1);
  });

  it('rename: atomic, no overwrite unless asked (ALREADY_EXISTS, both files intact); overwrite replaces; directories too', async () => {
    for (const [name, text] of [['r1.raw', 'one'], ['r2.raw', 'two']] as const) {
      const f = await ds.open(name, { create: true });
      await f.write(0, Buffer.from(text));
      await f.close();
    }
    assert.equal((await codeOf(ds.rename('r1.raw', 'r2.raw'))).code, 'ALREADY_EXISTS');
    assert.equal(await readFile(join(root, 'r1.raw'), 'utf8'), 'one');
    assert.equal(await readFile(join(root, 'r2.raw'), 'utf8'), 'two');
    await ds.rename('r1.raw', 'r3.raw');
    assert.equal((await codeOf(ds.stat('r1.raw'))).code, 'NOT_FOUND');
    assert.equal(await readFile(join(root, 'r3.raw'), 'utf8'), 'one');
    await ds.rename('r3.raw', 'r2.raw', { overwrite: true });
    assert.equal(await readFile(join(root, 'r2.raw'), 'utf8'), 'one');
    assert.equal((await codeOf(ds.rename('nope.raw', 'x.raw'))).code, 'NOT_FOUND');
    await ds.mkdir('d1');
    await ds.mkdir('d2');
    assert.equal((await codeOf(ds.rename('d1', 'd2'))).code, 'ALREADY_EXISTS');
    await ds.rename('d1', 'd3');
    assert.equal((await ds.stat('d3')).kind, 'directory');
  });

  it('list: sorted entries with kinds, lease files hidden; remove: files, empty directories only', async () => {
    await ds.mkdir('l/sub');
    const f = await ds.open('l/b.raw', { create: true });
    await writeFile(join(root, 'l', 'a.raw'), '');
    const listing = await ds.list('l');
    assert.deepEqual(listing.entries, [{ name: 'a.raw', kind: 'file' }, { name: 'b.raw', kind: 'file' }, { name: 'sub', kind: 'directory' }], 'b.raw.lck is not listed');
    assert.equal(listing.truncated, false);
    await f.close();
    assert.ok((await ds.list('')).entries.some((e) => e.name === 'l'));
    assert.equal((await codeOf(ds.list('l/a.raw'))).code, 'STORE_IO');
    assert.equal((await codeOf(ds.remove('l'))).code, 'INVALID_ARGUMENT');
    await ds.remove('l/a.raw');
    await ds.remove('l/b.raw');
    await ds.remove('l/sub');
    await ds.remove('l');
    assert.equal((await codeOf(ds.stat('l'))).code, 'NOT_FOUND');
    // mkdir: existing is fine, a file in the way is not.
    await ds.mkdir('m/n');
    await ds.mkdir('m/n');
    await writeFile(join(root, 'm', 'file'), '');
    assert.equal((await codeOf(ds.mkdir('m/file/x'))).code, 'ALREADY_EXISTS');
  });

  it('the copy area (.ferry-copies, staging files) is reserved: neither opened nor listed, except through copyArea(), which still refuses lease names', async () => {
    await mkdir(join(root, '.ferry-copies'), { recursive: true });
    await writeFile(join(root, '.ferry-copies', 'j.json'), '{}');
    await writeFile(join(root, 'disk.raw.ferry-copy-0123abcd'), 'staging');
    for (const p of ['.ferry-copies', '.ferry-copies/j.json', 'disk.raw.ferry-copy-0123abcd', 'd/x.ferry-copy-1']) {
      assert.deepEqual([(await codeOf(ds.open(p, { readOnly: true }))).details.reason], ['reserved'], p);
      assert.equal((await codeOf(ds.stat(p))).details.reason, 'reserved', p);
      assert.equal((await codeOf(ds.remove(p))).details.reason, 'reserved', p);
    }
    const names = (await ds.list('')).entries.map((e) => e.name);
    assert.ok(!names.includes('.ferry-copies') && !names.includes('disk.raw.ferry-copy-0123abcd'), names.join());
    const area = ds.copyArea();
    assert.equal(area.copyArea(), area);
    assert.ok((await area.list('')).entries.some((e) => e.name === '.ferry-copies'));
    const f = await area.open('disk.raw.ferry-copy-0123abcd', { readOnly: true });
    await f.close();
    assert.equal((await codeOf(area.open('.ferry-copies/j.json.lck', { readOnly: true }))).details.reason, 'reserved');
    assert.equal((await codeOf(area.stat('.ferry-datastore'))).details.reason, 'reserved');
    // replaceFile: atomic and durable, no temporary file left; syncDirectory of the root and of a directory.
    await area.replaceFile('.ferry-copies/j.json', Buffer.from('{"v":2}'));
    assert.equal(await readFile(join(root, '.ferry-copies', 'j.json'), 'utf8'), '{"v":2}');
    assert.deepEqual((await area.list('.ferry-copies')).entries.map((e) => e.name), ['j.json']);
    await area.syncDirectory('');
    await area.syncDirectory('.ferry-copies');
    await rm(join(root, '.ferry-copies'), { recursive: true });
    await rm(join(root, 'disk.raw.ferry-copy-0123abcd'));
  });

  it('open with { readOnly, lease }: takes the write lease without opening for writing (a writer elsewhere is DISK_LOCKED, and it is), released at close', async () => {
    await writeFile(join(root, 'src.raw'), 'source bytes');
    assert.equal((await codeOf(ds.open('src.raw', { lease: true }))).code, 'INVALID_ARGUMENT');
    const held = await ds.open('src.raw', { readOnly: true, lease: true });
    assert.equal(held.readOnly, true);
    assert.ok(held.lease?.held);
    await assert.rejects(held.write(0, Buffer.from('x')), { code: 'STORE_IO' });
    assert.equal((await codeOf(dsB.open('src.raw'))).code, 'DISK_LOCKED');
    assert.equal((await codeOf(dsB.open('src.raw', { readOnly: true, lease: true }))).code, 'DISK_LOCKED');
    const buf = Buffer.alloc(6);
    await held.read(0, buf);
    assert.equal(buf.toString(), 'source');
    await held.close();
    const w = await dsB.open('src.raw');
    assert.equal((await codeOf(ds.open('src.raw', { readOnly: true, lease: true }))).code, 'DISK_LOCKED');
    await w.close();
    await ds.remove('src.raw');
  });

  it('spaceLeft and space come from statfs of the root', async () => {
    const s = await ds.space();
    const fs = await statfs(root);
    assert.ok(s.totalBytes > 0 && s.freeBytes <= s.totalBytes);
    assert.equal(s.totalBytes, fs.blocks * fs.bsize);
    // Free space moves with every other writer of the machine: equal within a few MiB.
    assert.ok(Math.abs((await ds.spaceLeft()) - fs.bavail * fs.bsize) < 64 * 1024 * 1024);
  });
});
