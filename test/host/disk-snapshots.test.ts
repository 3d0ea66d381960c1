/**
 * Disk snapshots through the host API, on the kvlog guest (an append-only checksummed log that
 * verifies every record at boot and in its self-check): snapshot a running VM and keep writing,
 * the chain with its CIDs, consolidate live and stopped, revert running and stopped, a host restart
 * on a snapshotted disk, and the refusals. After each change the guest verifies its records, a
 * stop + start re-verifies everything from disk at boot, and qemu-img check passes. Real
 * in-process agents, real files; waits are on console lines, never on time.
 */
import { after, before, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type TestAgent } from '../helpers/agents.js';
import { vmRequest } from '../helpers/guests.js';
import { qemuImgOk } from '../helpers/vmdk.js';
import { FerryError } from '../../src/lib/errors.js';
import { MiB } from '../../src/lib/units.js';
import type { HostClient } from '../../src/api/host-client.js';
import { LocalDatastore } from '../../src/storage/local-datastore.js';
import { openDatastoreChain } from '../../src/storage/vmdk/chain-ops.js';
import { Consolidation, JOURNAL_SUFFIX, copyRanges, ownRanges } from '../../src/storage/vmdk/consolidate.js';

const DISK_BYTES = 16 * MiB;
/** 2000 records/s of 64 bytes, flushed every 64: a flush line every ~32 ms, the log far from full for the whole test. */
const KV = { memoryBytes: 16 * MiB, vcpus: 2, cmdline: 'max=100000 flush=64 rate=2000' };
/** A console line that has not come by then is a failure (bounds the wait; never a way to land in a phase). */
const LINE_TIMEOUT_MS = 20_000;
const TEST_TIMEOUT_MS = 60_000;
const VM = 'kv';
const BOOT_VERIFIED = /kvlog: found (\d+) records, all verified/;
const FLUSHED = /kvlog: flushed (\d+) records/;

let base = '';
let dsDir = '';
let dataDir = '';
let host: TestAgent | undefined;
before(async () => {
  base = await mkdtemp(join(tmpdir(), 'ferry-disk-snapshots-'));
  dsDir = await mkdtemp(join(base, 'ds-'));
  dataDir = await mkdtemp(join(base, 'host-'));
  host = await startHost();
});
after(async () => {
  await host?.close().catch(() => undefined);
  await rm(base, { recursive: true, force: true });
});

function startHost(): Promise<TestAgent> {
  return startAgent('snap', { datastores: [{ name: 'ds1', path: dsDir }], dataDir });
}

function h(): TestAgent {
  assert.ok(host !== undefined);
  return host;
}
const client = (): HostClient => h().client;

/**
 * The next console line of the VM matching `re`, from the moment of the call on (the in-process
 * agent's console log is followed directly: no earlier line can match). Call it before the action.
 */
function nextLine(re: RegExp, vm = VM): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => { stop(); reject(new Error(`${String(re)} did not appear on the console of ${vm} within ${LINE_TIMEOUT_MS} ms`)); }, LINE_TIMEOUT_MS);
    const stop = h().agent.vms.slot(vm).console.follow((chunk) => {
      text += chunk;
      const m = re.exec(text);
      if (m !== null) { clearTimeout(timer); stop(); resolve(m); }
      else text = text.slice(-4096); // a tail long enough to hold a line split across chunks
    }, () => { clearTimeout(timer); reject(new Error(`the console of ${vm} closed before ${String(re)} appeared`)); });
  });
}

/** Records durable so far: waits for the next flush line. */
async function nextFlush(): Promise<number> {
  return Number((await nextLine(FLUSHED))[1]);
}

async function code(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => null, (e: unknown) => e);
  assert.ok(err instanceof FerryError, `a FerryError, got ${String(err)}`);
  return err.code;
}

/** Stop, qemu-img check of the top, start: the guest's boot scan verifies every record on the disk. Returns how many it found. */
async function rebootVerifies(): Promise<number> {
  await client().stopVm(VM);
  const top = (await client().diskChain(VM)).chain[0]?.path ?? '';
  assert.match(await qemuImgOk('check', join(dsDir, top)), /No errors were found/);
  const booted = nextLine(BOOT_VERIFIED);
  await client().startVm(VM);
  const found = Number((await booted)[1]);
  assert.equal((await client().verifyVm(VM)).selfcheck, 0);
  return found;
}

async function filesOnDatastore(): Promise<string[]> {
  return (await readdir(dsDir)).filter((n) => n.endsWith('.vmdk')).sort();
}

function noIoErrors(): void {
  assert.doesNotMatch(h().agent.vms.slot(VM).console.snapshot(), /I\/O error/, 'the guest saw no I/O error');
}

describe('disk snapshots of a running kvlog VM', { timeout: TEST_TIMEOUT_MS * 5 }, () => {
  it('snapshot: a short pause, two levels whose CIDs link, the guest goes on writing into the delta; a host restart keeps the chain', async (t: TestContext) => {
    await client().createVm(await vmRequest(VM, 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kv.vmdk', sizeBytes: DISK_BYTES } }));
    const booted = nextLine(BOOT_VERIFIED);
    await client().startVm(VM);
    await booted;
    await nextFlush();
    assert.equal((await client().diskChain(VM)).chain.length, 1);

    const snap = await client().snapshotVm(VM);
    t.diagnostic(`snapshot of a running kvlog VM: guest paused ${snap.pauseMs?.toFixed(2) ?? '?'} ms, ${snap.totalMs.toFixed(1)} ms in all`);
    assert.deepEqual([snap.snapshot.path, snap.top.path], ['kv.vmdk', 'kv-000001.vmdk']);
    assert.equal(snap.top.parentCid, snap.snapshot.cid, 'the delta records the snapshot\'s CID');
    assert.ok(snap.pauseMs !== null && snap.pauseMs < 1000, `a short pause (${snap.pauseMs ?? 'null'} ms)`);
    await nextFlush();
    await nextFlush();

    const chain = await client().diskChain(VM);
    assert.deepEqual(chain.chain.map((l) => [l.path, l.role]), [['kv-000001.vmdk', 'top'], ['kv.vmdk', 'snapshot']]);
    const [top, snapshot] = chain.chain;
    assert.ok(top !== undefined && snapshot !== undefined);
    assert.equal(top.parentCid, snapshot.cid);
    assert.equal(snapshot.cid, snap.snapshot.cid, 'the read-only base never changes its CID');
    assert.ok(top.allocatedBytes > 0, 'the writes after the snapshot went into the delta');
    assert.equal(chain.operation, null);
    assert.equal((await client().vm(VM)).disk?.path, 'kv-000001.vmdk');
    assert.equal((await client().verifyVm(VM)).selfcheck, 0);

    // The new spec was recorded before the guest resumed: a restarted host attaches the delta's chain.
    await h().agent.close();
    host = await startHost();
    assert.equal((await client().vm(VM)).state, 'running', 'saved and resumed across the restart');
    assert.equal((await client().diskChain(VM)).chain.length, 2);
    assert.equal((await client().diskChain(VM)).chain[1]?.cid, snap.snapshot.cid);
    await nextFlush();
    assert.equal((await client().verifyVm(VM)).selfcheck, 0);
    const info = JSON.parse(await qemuImgOk('info', '--backing-chain', '--output=json', join(dsDir, 'kv-000001.vmdk'))) as unknown[];
    assert.equal(info.length, 2, 'qemu-img sees the chain');
  });

  it('consolidate while running: the delta is merged live, the chain is one level again, every record verifies', async (t: TestContext) => {
    const r = await client().consolidateVm(VM);
    t.diagnostic(`live consolidate: ${(r.copiedBytes / MiB).toFixed(2)} MiB in ${r.rounds} round(s), ${r.totalMs.toFixed(0)} ms, guest paused ${r.pauseMs?.toFixed(2) ?? '?'} ms`);
    assert.equal(r.live, true);
    assert.equal(r.merged, 'kv-000001.vmdk');
    assert.equal(r.top.path, 'kv.vmdk');
    assert.ok(r.copiedBytes > 0);
    const chain = await client().diskChain(VM);
    assert.deepEqual(chain.chain.map((l) => l.path), ['kv.vmdk']);
    assert.equal(chain.chain[0]?.cid, r.top.cid);
    assert.deepEqual(await filesOnDatastore(), ['kv.vmdk'], 'the merged delta is removed');
    await nextFlush();
    assert.equal((await client().verifyVm(VM)).selfcheck, 0);
    assert.ok(await rebootVerifies() > 0);
    noIoErrors();
  });

  it('revert of a running VM: it boots again on the snapshot; what it wrote after the snapshot is gone and the rest verifies', async () => {
    const before = await nextFlush();
    const snap = await client().snapshotVm(VM);
    await nextFlush();
    const later = await nextFlush();
    const booted = nextLine(BOOT_VERIFIED);
    const r = await client().revertVm(VM);
    const found = Number((await booted)[1]);
    assert.equal(r.restarted, true);
    assert.equal(r.revertedTo.path, snap.snapshot.path);
    assert.equal(r.revertedTo.cid, snap.snapshot.cid);
    assert.deepEqual(r.discarded, [snap.top.path]);
    assert.equal(r.top.parentCid, snap.snapshot.cid);
    assert.ok(found >= before && found < later, `the disk holds the records of the snapshot (${before} ≤ ${found} < ${later})`);
    assert.equal((await client().vm(VM)).state, 'running');
    assert.equal((await client().verifyVm(VM)).selfcheck, 0);
    assert.ok(!(await filesOnDatastore()).includes(snap.top.path), 'the discarded delta is removed');
    assert.ok(await rebootVerifies() >= found);
  });

  it('revert and consolidate with the VM stopped; --to an older snapshot discards the newer ones', async () => {
    // Chain now: fresh delta → kv.vmdk. Two more snapshots, each with writes after it.
    const first = await client().snapshotVm(VM);
    await nextFlush();
    const second = await client().snapshotVm(VM);
    await nextFlush();
    await client().stopVm(VM);
    const levels = (await client().diskChain(VM)).chain.map((l) => l.path);
    assert.equal(levels.length, 4);
    assert.deepEqual(levels.slice(1, 3), [second.snapshot.path, first.snapshot.path]);

    const r = await client().revertVm(VM, first.snapshot.path);
    assert.equal(r.restarted, false);
    assert.deepEqual(r.discarded, [levels[0], second.snapshot.path]);
    assert.equal(r.revertedTo.cid, first.snapshot.cid);
    assert.equal((await client().vm(VM)).state, 'defined', 'still not running');
    const after = (await client().diskChain(VM)).chain;
    assert.deepEqual(after.slice(1).map((l) => l.path), levels.slice(2));
    for (const gone of r.discarded) assert.ok(!(await filesOnDatastore()).includes(gone));

    // Writes into the fresh delta, then a consolidate of the stopped VM.
    const booted = nextLine(BOOT_VERIFIED);
    await client().startVm(VM);
    await booted;
    await nextFlush();
    await client().stopVm(VM);
    const c = await client().consolidateVm(VM);
    assert.deepEqual([c.live, c.pauseMs, c.rounds], [false, null, 1]);
    assert.equal(c.top.path, first.snapshot.path);
    assert.notEqual(c.top.cid, first.snapshot.cid, 'the parent took the delta\'s grains: its CID changed');
    assert.equal((await client().diskChain(VM)).chain.length, levels.length - 2);
    assert.ok(await rebootVerifies() > 0);
    noIoErrors();
  });

  it('a consolidate interrupted after it wrote into the parent is finished when the host attaches the disk again', async () => {
    const snap = await client().snapshotVm(VM);
    await nextFlush();
    await nextFlush();
    await client().stopVm(VM);
    await h().agent.close();
    // What a kill -9 mid-copy leaves: the journal, half of the delta's grains in the parent (its CID changed).
    const ds = await LocalDatastore.mount('ds1', dsDir, { owner: { hostName: 'crashed', hostId: '00000000000000dd' } });
    const c = await Consolidation.begin(ds, snap.top.path, snap.snapshot.path);
    const source = await openDatastoreChain(ds, snap.top.path, { readOnly: true });
    const ranges = await ownRanges(source);
    assert.ok(ranges.length > 0);
    await copyRanges(source, c.parent, ranges.slice(0, Math.ceil(ranges.length / 2)));
    await c.flush();
    await c.abandon();
    await source.close();
    await assert.rejects(openDatastoreChain(ds, snap.top.path, { readOnly: true }), { code: 'DISK_CHAIN_MISMATCH' }, 'the delta\'s chain no longer opens by itself');

    host = await startHost();
    assert.equal((await client().vm(VM)).disk?.path, snap.snapshot.path, 'the parent is the top now, and recorded');
    assert.ok(!(await filesOnDatastore()).includes(snap.top.path), 'the merged delta is removed');
    assert.ok(!(await readdir(dsDir)).some((n) => n.endsWith(JOURNAL_SUFFIX)), 'and its journal');
    const booted = nextLine(BOOT_VERIFIED);
    await client().startVm(VM);
    assert.ok(Number((await booted)[1]) > 0);
    assert.equal((await client().verifyVm(VM)).selfcheck, 0);
    assert.ok(await rebootVerifies() > 0);
  });

  it('refuses: a VM without a disk, an unknown snapshot, a chain of one, a VM being migrated (BUSY)', async () => {
    const c = client();
    await c.createVm(await vmRequest('nodisk', 'dirtier', { memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200 fill=1 claim=all', start: true }));
    assert.equal(await code(c.snapshotVm('nodisk')), 'VM_STATE');
    assert.equal(await code(c.diskChain('nodisk')), 'VM_STATE');
    assert.equal(await code(c.snapshotVm('nope')), 'NOT_FOUND');
    assert.equal(await code(c.revertVm(VM, 'no-such.vmdk')), 'NOT_FOUND');
    assert.equal(await code(c.revertVm(VM, (await c.diskChain(VM)).chain[0]?.path ?? '')), 'NOT_FOUND', 'the top is not a snapshot');
    while ((await c.diskChain(VM)).chain.length > 1) await c.consolidateVm(VM);
    assert.equal(await code(c.consolidateVm(VM)), 'VM_STATE', 'a chain of one');
    assert.equal(await code(c.revertVm(VM)), 'NOT_FOUND', 'no snapshot to go back to');

    // 32 MiB of RAM at 1 MiB/s: the migration runs far longer than the calls below.
    const target = await startAgent('snap-target');
    try {
      const started = await c.migrate('nodisk', { to: target.agent.url, options: { bandwidthBytesPerSec: MiB, dataChannels: 1 } });
      try {
        for (const call of [() => c.snapshotVm('nodisk'), () => c.revertVm('nodisk'), () => c.consolidateVm('nodisk')]) assert.equal(await code(call()), 'BUSY');
      } finally {
        await c.cancelMigration(started.migrationId).catch(() => undefined);
        await c.waitForMigration(started.migrationId, { timeoutMs: 30_000 });
      }
    } finally {
      await target.close();
    }
    await c.stopVm('nodisk');
    await c.deleteVm('nodisk');
  });
});
