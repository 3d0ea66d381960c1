/**
 * The target's side of a migration over a seed, in-process on a real local datastore with real VMDK
 * files (src/host/incoming-seed.ts): which levels match (a run from the base, never the top), a seed
 * file that changed lowering that run with a log line, and the digest check before the switch-over —
 * aborted by its signal, SEED_DAMAGED dropping the damaged level and those above it from the manifest.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalDatastore } from '../../src/storage/local-datastore.js';
import { VmdkDisk } from '../../src/storage/vmdk/disk.js';
import { createDeltaOver, describeChain, openDatastoreChain } from '../../src/storage/vmdk/chain-ops.js';
import { SEED_MANIFEST_VERSION, readSeedManifest, writeSeedManifest, type SeedLevel } from '../../src/storage/seed-manifest.js';
import { matchSeed, matchingLevels, verifySeedFiles } from '../../src/host/incoming-seed.js';
import type { ChainLevelSpec } from '../../src/migration/disk.js';
import { isFerryError } from '../../src/lib/errors.js';
import { MiB } from '../../src/lib/units.js';
import { nfcDigestOf } from '../helpers/seeds.js';

const CAPACITY = 8 * MiB;
let root = '';
let ds: LocalDatastore;
/** The source's chain as PREPARE announces it, top first: [kv-000002, kv-000001, kv]. */
let chain: ChainLevelSpec[];
/** The two lower levels as seeded (base first). */
let seeded: SeedLevel[];

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'ferry-incoming-seed-'));
  ds = await LocalDatastore.mount('ds1', root, { owner: { hostName: 'b', hostId: 'bbbbbbbbbbbbbbbb' } });
  const base = await VmdkDisk.create(await ds.open('kv.vmdk', { create: true }), { capacityBytes: CAPACITY });
  await base.write(0, new Uint8Array(2 * MiB).fill(1));
  await base.close();
  const d1 = await createDeltaOver(ds, 'kv.vmdk', 'kv.vmdk');
  await d1.disk.write(MiB, new Uint8Array(MiB).fill(2));
  await d1.disk.close();
  const top = await createDeltaOver(ds, d1.path, 'kv.vmdk');
  await top.disk.close();
  const opened = await openDatastoreChain(ds, top.path, { readOnly: true });
  chain = (await describeChain(opened, top.path)).map((l) => ({ path: l.path, cid: l.cid, parentCid: l.parentCid, capacityBytes: CAPACITY, allocatedBytes: l.allocatedBytes }));
  await opened.close();
  seeded = [];
  for (const l of [...chain].reverse().slice(0, 2)) {
    seeded.push({
      path: l.path, cid: l.cid, parentCid: l.parentCid, capacityBytes: CAPACITY, fileBytes: (await stat(join(root, l.path))).size,
      digest: await nfcDigestOf(root, l.path), source: { datastoreId: 'a'.repeat(32), path: l.path },
    });
  }
});
after(async () => { await rm(root, { recursive: true, force: true }); });

async function record(levels: SeedLevel[]): Promise<void> {
  await writeSeedManifest(ds, { version: SEED_MANIFEST_VERSION, vm: 'kv', levels, seededAtMs: 1, taskId: null });
}

async function flipByteAt(path: string, offset: number): Promise<void> {
  const fh = await open(join(root, path), 'r+');
  try {
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, offset);
    one[0] = (one[0] ?? 0) ^ 0xff;
    await fh.write(one, 0, 1, offset);
  } finally { await fh.close(); }
}

describe('the target over a seed', () => {
  it('matches a run of levels from the base, never the top', () => {
    const base = [...chain].reverse();
    assert.equal(matchingLevels(base, seeded), 2);
    assert.equal(matchingLevels(base, seeded.slice(0, 1)), 1);
    assert.equal(matchingLevels(base.slice(0, 2), seeded), 1, 'the top of a two-level chain is never seeded');
    assert.equal(matchingLevels(base, [{ ...seeded[0]!, cid: '00000bad' }, seeded[1]!]), 0, 'a base changed since it was seeded');
    assert.equal(matchingLevels(base, [seeded[0]!, { ...seeded[1]!, capacityBytes: 2 * CAPACITY }]), 1);
  });

  it('answers which levels move; a seed file that no longer matches lowers the run, with a log line', async () => {
    await record(seeded);
    const lines: string[] = [];
    const m = await matchSeed(ds, 'kv', chain, (l) => { lines.push(l); });
    assert.deepEqual(m.prepared, {
      chain: chain.map((l, i) => ({ path: l.path, cid: l.cid, migrate: i === 0 })),
      seedPath: 'kv-000001.vmdk', verifyBytes: seeded[0]!.fileBytes + seeded[1]!.fileBytes,
    });
    await record([seeded[0]!, { ...seeded[1]!, fileBytes: seeded[1]!.fileBytes + 512 }]);
    const lower = await matchSeed(ds, 'kv', chain, (l) => { lines.push(l); });
    assert.deepEqual(lower.levels, [seeded[0]]);
    assert.deepEqual(lower.prepared.chain.map((l) => l.migrate), [true, true, false]);
    assert.match(lines.join('\n'), /seed does not match its file .*kv-000001.vmdk is \d+ bytes.*trying 1 seeded levels/);
    const none = await matchSeed(ds, 'other', chain, () => undefined);
    assert.deepEqual([none.levels, none.prepared.seedPath, none.prepared.verifyBytes], [[], null, 0]);
    assert.ok(none.prepared.chain.every((l) => l.migrate));
  });

  it('verifies the seed files\' digests: aborted by its signal; a damaged level and those above it leave the manifest', async () => {
    await record(seeded);
    await verifySeedFiles(ds, 'kv', seeded, 'b', new AbortController().signal);
    const ac = new AbortController();
    ac.abort(new Error('the migration was cancelled'));
    await assert.rejects(verifySeedFiles(ds, 'kv', seeded, 'b', ac.signal), /the migration was cancelled/);

    await flipByteAt('kv-000001.vmdk', seeded[1]!.fileBytes - 4096);
    await assert.rejects(verifySeedFiles(ds, 'kv', seeded, 'b', new AbortController().signal), (err: unknown) =>
      isFerryError(err, 'SEED_DAMAGED') && /seed ds1:kv-000001\.vmdk on host b is damaged/.test(err.message));
    assert.deepEqual((await readSeedManifest(ds, 'kv'))?.levels, [seeded[0]], 'the base stays seeded, the damaged level goes');

    await flipByteAt('kv.vmdk', seeded[0]!.fileBytes - 4096);
    await assert.rejects(verifySeedFiles(ds, 'kv', seeded, 'b', new AbortController().signal), (err: unknown) => isFerryError(err, 'SEED_DAMAGED'));
    assert.equal(await readSeedManifest(ds, 'kv'), null, 'nothing left seeded');
  });
});
