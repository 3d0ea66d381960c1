/**
 * Consolidate at the storage level: a delta's grains merged into its parent (content unchanged,
 * chain one shorter, the parent's CID changed, qemu-img agrees), a delta opened without its parent,
 * and the crash test: a real child process consolidating is killed with SIGKILL at many points —
 * at named steps (failpoints) and after a random number of copied chunks — and each time the chain
 * opens (finishing the merge if a journal says so), reads exactly what it held before, and passes
 * `qemu-img check`.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FAILPOINTS_ENV } from '../../../src/lib/failpoints.js';
import type { Datastore } from '../../../src/storage/datastore.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import { createDeltaOver, openDatastoreChain, openDeltaAlone } from '../../../src/storage/vmdk/chain-ops.js';
import { JOURNAL_SUFFIX, consolidateChain, recoverChain } from '../../../src/storage/vmdk/consolidate.js';
import { BASE_PATH, DELTA_PATH, mountCrashDatastore, readPointer, retryWhileLocked, writePointer } from '../../helpers/consolidate-crash.js';
import { prng, qemuImgOk, withTempDir, writePattern } from '../../helpers/vmdk.js';

const CHILD = fileURLToPath(new URL('../../helpers/consolidate-crash-child.js', import.meta.url));
const MiB = 1024 * 1024;
const CAPACITY_BYTES = 8 * MiB;
const ITERATIONS = 16;
/** Named steps a kill lands on exactly (src/storage/vmdk/consolidate.ts). */
const CRASH_STEPS = ['consolidate.journaled', 'consolidate.flushed', 'consolidate.committed', 'consolidate.delta-removed'];
/** A child that has not ended by then is killed anyway (and the chain is still checked). */
const CHILD_DEADLINE_MS = 20_000;

const hostId = (): string => randomBytes(8).toString('hex');

/** A base with content and a delta over it with more, at BASE_PATH and DELTA_PATH; returns the chain's content. */
async function makeChain(root: string, seed: number): Promise<Buffer> {
  await mkdir(join(root, 'ds', 'vm'), { recursive: true });
  const ds = await mountCrashDatastore(root, 'setup', hostId());
  const base = await VmdkDisk.create(await ds.open(BASE_PATH, { create: true }), { capacityBytes: CAPACITY_BYTES });
  for (const w of writePattern(seed, 40, CAPACITY_BYTES)) await base.write(w.offsetBytes, w.data);
  await base.flush();
  await base.close();
  const delta = await createDeltaOver(ds, BASE_PATH, BASE_PATH);
  assert.equal(delta.path, DELTA_PATH);
  for (const w of writePattern(seed + 1, 40, CAPACITY_BYTES)) await delta.disk.write(w.offsetBytes, w.data);
  await delta.disk.flush();
  const content = Buffer.alloc(CAPACITY_BYTES);
  await delta.disk.read(0, content);
  await delta.disk.close();
  return content;
}

async function readAll(ds: Datastore, top: string): Promise<Buffer> {
  const disk = await openDatastoreChain(ds, top, { readOnly: true });
  try {
    const out = Buffer.alloc(disk.capacityBytes);
    await disk.read(0, out);
    return out;
  } finally {
    await disk.close();
  }
}

interface ChildRun { readonly progressLines: number; readonly finished: boolean; readonly stderr: string }

/** Runs the consolidating child; SIGKILLs it at its `killAtProgress`-th progress line (if given), or lets a failpoint kill it. */
function runChild(root: string, opts: { failpoints?: string; killAtProgress?: number }): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, ...(opts.failpoints !== undefined ? { [FAILPOINTS_ENV]: opts.failpoints } : {}) };
    const child = spawn(process.execPath, [CHILD, root, hostId()], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let stderr = '';
    let lines = 0;
    const kill = (): void => { if (child.exitCode === null) child.kill('SIGKILL'); };
    const deadline = setTimeout(kill, CHILD_DEADLINE_MS);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      lines = (out.match(/^progress /gm) ?? []).length;
      if (opts.killAtProgress !== undefined && lines >= opts.killAtProgress) kill();
    });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', () => { clearTimeout(deadline); resolve({ progressLines: lines, finished: out.includes('done\n'), stderr }); });
  });
}

describe('VMDK consolidate', () => {
  it('merges a delta into its parent: content unchanged, the parent is the top with a new CID, the delta and journal are gone; qemu-img agrees', () => withTempDir(async (root) => {
    const expected = await makeChain(root, 7);
    const ds = await mountCrashDatastore(root, 'test', hostId());
    const before = await openDatastoreChain(ds, DELTA_PATH, { readOnly: true });
    const parentCidBefore = before.parent?.cid;
    await before.close();
    const progress: number[] = [];
    let committed = '';
    const r = await consolidateChain(ds, DELTA_PATH, { commit: (p) => { committed = p; return Promise.resolve(); }, onProgress: (done) => { progress.push(done); } });
    assert.equal(r.parentPath, BASE_PATH);
    assert.equal(committed, BASE_PATH);
    assert.ok(r.copiedBytes > 0 && progress.at(-1) === r.copiedBytes, 'progress ends at what was copied');
    assert.deepEqual(await readAll(ds, BASE_PATH), expected, 'the parent alone now shows the chain\'s content');
    const after = await openDatastoreChain(ds, BASE_PATH, { readOnly: true });
    assert.notEqual(after.cid, parentCidBefore, 'writing into the parent gave it a new CID');
    await after.close();
    assert.deepEqual((await ds.list('vm')).entries.map((e) => e.name), ['kv.vmdk']);
    await qemuImgOk('check', join(root, 'ds', BASE_PATH));
    await assert.rejects(consolidateChain(ds, BASE_PATH, { commit: () => Promise.resolve() }), { code: 'INVALID_ARGUMENT' }, 'a chain of one');
  }));

  it('a delta opened without its parent reads its own grains and refuses the rest', () => withTempDir(async (root) => {
    const expected = await makeChain(root, 9);
    const ds = await mountCrashDatastore(root, 'test', hostId());
    const alone = await openDeltaAlone(ds, DELTA_PATH);
    try {
      let checked = 0;
      const ranges: { offsetBytes: number; lengthBytes: number }[] = [];
      await alone.forEachOwnAllocatedRange((offsetBytes, lengthBytes) => { ranges.push({ offsetBytes, lengthBytes }); });
      for (const { offsetBytes, lengthBytes } of ranges) {
        const buf = Buffer.alloc(lengthBytes);
        await alone.read(offsetBytes, buf);
        assert.deepEqual(buf, expected.subarray(offsetBytes, offsetBytes + lengthBytes));
        checked++;
      }
      assert.ok(checked > 0);
      await assert.rejects(alone.read(0, Buffer.alloc(CAPACITY_BYTES)), { code: 'DISK_CHAIN_INVALID' });
    } finally {
      await alone.close();
    }
    await assert.rejects(ds.open(DELTA_PATH).then((f) => VmdkDisk.open(f, { withoutParent: true }).finally(() => f.close())), { code: 'INVALID_ARGUMENT' }, 'only read-only');
  }));

  it(`${ITERATIONS} consolidates killed with SIGKILL at named steps and random chunks: the chain opens, reads exactly as before, passes qemu-img check`, { timeout: 120_000 }, async () => {
    const rnd = prng(4242);
    const outcomes = new Map<string, number>();
    for (let it = 0; it < ITERATIONS; it++) {
      await withTempDir(async (root) => {
        const expected = await makeChain(root, 100 + it * 3);
        const step = it < CRASH_STEPS.length ? CRASH_STEPS[it] : undefined;
        const run = await runChild(root, step !== undefined ? { failpoints: `${step}=crash` } : { killAtProgress: Math.floor(rnd() * 12) });
        assert.equal(run.stderr.replace(/^failpoint .*\n/gm, ''), '', `the child failed on its own: ${run.stderr}`);
        if (step !== undefined) assert.match(run.stderr, new RegExp(`failpoint ${step} hit: crash`), 'the kill landed on its step');

        // What a host does at its next start: the recorded top, recovered, recorded again if it moved, then tidied.
        const ds = await mountCrashDatastore(root, 'judge', hostId());
        const recorded = (await readPointer(root)) ?? DELTA_PATH;
        const r = await retryWhileLocked(() => recoverChain(ds, recorded));
        if (r.moved) await writePointer(root, r.topPath);
        await retryWhileLocked(() => r.settle());
        const outcome = recorded === BASE_PATH ? 'committed' : r.moved ? 'rolled forward' : 'untouched';
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);

        const label = `iteration ${it} (${step ?? `killed after ${run.progressLines} progress lines`}, ${outcome})`;
        assert.deepEqual(await readAll(ds, r.topPath), expected, `${label}: the chain reads exactly what it held`);
        await qemuImgOk('check', join(root, 'ds', r.topPath));
        const levels = JSON.parse(await qemuImgOk('info', '--backing-chain', '--output=json', join(root, 'ds', r.topPath))) as unknown[];
        assert.equal(levels.length, r.topPath === BASE_PATH ? 1 : 2, `${label}: qemu-img sees the chain`);
        if (r.topPath === BASE_PATH) {
          const left = (await ds.list('vm')).entries.map((e) => e.name).filter((n) => n === 'kv-000001.vmdk' || n.endsWith(JOURNAL_SUFFIX));
          assert.deepEqual(left, [], `${label}: the merged delta and its journal are gone`);
        }
      });
    }
    // 'untouched' (killed before its journal) is possible too, but a kill rarely lands that early.
    for (const o of ['rolled forward', 'committed']) assert.ok((outcomes.get(o) ?? 0) > 0, `some kill left the chain ${o} (${JSON.stringify([...outcomes])})`);
  });
});
