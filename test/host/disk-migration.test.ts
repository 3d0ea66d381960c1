/**
 * Live migration of VMs with disks (docs/migration-protocol.md, "Disks"): on a datastore both
 * hosts mount (the lease is handed over at switch-over, no disk data moves), and to a host that
 * cannot see the datastore (the disk is copied live, in rounds with memory). Real in-process host
 * agents on loopback, real VMDK files, the kvlog guest writing all the time; the guest's own
 * boot-time scan of its disk and qemu-img are the judges.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type TestAgent } from '../helpers/agents.js';
import { vmRequest } from '../helpers/guests.js';
import { qemuImgOk } from '../helpers/vmdk.js';
import type { HostClient } from '../../src/api/host-client.js';
import { MiB } from '../../src/lib/units.js';

const DISK_BYTES = 32 * MiB;
const KV = { memoryBytes: 8 * MiB, vcpus: 1, cmdline: 'max=100000 flush=64 rate=5000' };

let base = '';
let shared = '';
let local = '';
let a: TestAgent;
let b: TestAgent;
let c: TestAgent;

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'ferry-disk-migration-'));
  shared = await mkdtemp(join(base, 'shared-'));
  local = await mkdtemp(join(base, 'local-'));
  a = await startAgent('a', { datastores: [{ name: 'ds1', path: shared }] });
  // b mounts the same directory under another name: the datastore's id, not its name, says it is shared.
  b = await startAgent('b', { datastores: [{ name: 'san', path: shared }] });
  c = await startAgent('c', { datastores: [{ name: 'ds1', path: local }] });
});
after(async () => {
  for (const x of [a, b, c]) await x?.close().catch(() => undefined);
  await rm(base, { recursive: true, force: true });
});

/** Records the guest found and verified on its disk at its last boot. */
async function rebootAndCount(client: HostClient, name: string): Promise<number> {
  await client.stopVm(name);
  await client.startVm(name);
  await client.waitForConsole(name, 'records, all verified');
  const found = [...(await client.consoleText(name)).matchAll(/kvlog: found (\d+) records, all verified/g)].at(-1)?.[1];
  assert.ok(found !== undefined, 'the guest reports what it found');
  return Number(found);
}

/** Polls `cond` (every 20 ms, up to 10 s) for an effect another process part produces on its own time. */
async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Follows the console until the guest reports at least `records` flushed. */
async function waitFlushed(client: HostClient, name: string, records: number): Promise<void> {
  const ac = new AbortController();
  const decoder = new TextDecoder();
  let tail = '';
  try {
    for await (const chunk of await client.console(name, { follow: true, signal: ac.signal })) {
      tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4096);
      const last = [...tail.matchAll(/kvlog: flushed (\d+) records/g)].at(-1)?.[1];
      if (Number(last ?? 0) >= records) return;
    }
  } finally {
    ac.abort();
  }
  assert.fail(`the console of ${name} ended before ${records} records were flushed`);
}

/** The number of records the guest said were flushed, last. */
async function flushedSoFar(client: HostClient, name: string): Promise<number> {
  const last = [...(await client.consoleText(name)).matchAll(/kvlog: flushed (\d+) records/g)].at(-1)?.[1];
  return Number(last ?? 0);
}

describe('live migration of a VM with a disk', () => {
  it('on a shared datastore: hands the lease over at switch-over, moves no disk data, and back again', async () => {
    await a.client.createVm(await vmRequest('kv', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kv.vmdk', sizeBytes: DISK_BYTES }, start: true }));
    await a.client.waitForConsole('kv', 'kvlog: flushed');
    const started = await a.client.migrate('kv', { to: b.client.baseUrl });
    const record = await a.client.waitForMigration(started.migrationId);
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.disk?.mode, 'shared');
    assert.equal(record.disk?.sentBytes, 0, 'no disk data moved');
    assert.ok((record.disk?.releaseMs ?? -1) >= 0);
    assert.ok(record.rounds.every((r) => r.diskBytes === 0));

    const onB = await b.client.vm('kv');
    assert.equal(onB.state, 'running');
    assert.deepEqual([onB.disk?.datastore, onB.disk?.path, onB.disk?.attached], ['san', 'kv.vmdk', true]);
    assert.deepEqual(await a.client.listVms(), [], 'the source forgot the VM');
    await b.client.waitForConsole('kv', 'kvlog: flushed');
    assert.equal((await b.client.verifyVm('kv')).selfcheck, 0);
    // b holds the lease now: a cannot open the disk for writing.
    await assert.rejects(a.client.createVm(await vmRequest('kv2', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kv.vmdk' } })), { code: 'DISK_LOCKED' });

    const back = await b.client.waitForMigration((await b.client.migrate('kv', { to: a.client.baseUrl })).migrationId);
    assert.equal(back.outcome, 'succeeded', JSON.stringify(back.error));
    const flushed = await flushedSoFar(a.client, 'kv');
    assert.ok(await rebootAndCount(a.client, 'kv') >= flushed, 'every flushed record survived two hand-overs');
    await a.client.stopVm('kv');
    assert.match(await qemuImgOk('check', join(shared, 'kv.vmdk')), /No errors were found/);
    await a.client.deleteVm('kv');
  });

  it('to a host without the datastore: refused unless a destination is named, then copied live while the guest writes', async () => {
    await a.client.createVm(await vmRequest('kc', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kc.vmdk', sizeBytes: DISK_BYTES }, start: true }));
    await a.client.waitForConsole('kc', 'kvlog: flushed');
    await assert.rejects(a.client.migrate('kc', { to: c.client.baseUrl }), { code: 'MIGRATION_REFUSED', message: /does not mount datastore ds1.*\(ds1\)/ });
    await assert.rejects(a.client.migrate('kc', { to: c.client.baseUrl, disk: { datastore: 'nope' } }), { code: 'MIGRATION_REFUSED', message: /no datastore nope/ });
    assert.equal((await a.client.vm('kc')).state, 'running', 'a refusal changes nothing');

    // A block damaged on the wire: the disk digest refuses the commit; the VM stays, the partial copy goes.
    // (The first block round 1 sends is damaged: once 2048 records are flushed the guest never writes it again, so no later round repairs it.)
    await waitFlushed(a.client, 'kc', 2048);
    const bad = await a.client.waitForMigration((await a.client.migrate('kc', { to: c.client.baseUrl, disk: { datastore: 'ds1' }, options: { corruptDiskBlockInRound: 1 } })).migrationId);
    assert.equal(bad.outcome, 'failed');
    assert.equal(bad.error?.code, 'DIGEST_MISMATCH');
    assert.match(bad.error?.message ?? '', /disk digest mismatch/);
    assert.equal((await a.client.vm('kc')).state, 'running');
    // The target discards its copy when the connection drops after its ERROR reply, after the source has finished: wait for that.
    await until(async () => (await readdir(local)).filter((f) => f.endsWith('.vmdk')).length === 0, 'the partial copy was removed');

    const record = await a.client.waitForMigration((await a.client.migrate('kc', { to: c.client.baseUrl, disk: { datastore: 'ds1', path: 'moved/kc.vmdk' } })).migrationId);
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.disk?.mode, 'copy');
    assert.ok((record.disk?.sentBytes ?? 0) > 0 && (record.disk?.sentBytes ?? 0) < DISK_BYTES, `only allocated blocks move (${record.disk?.sentBytes})`);
    assert.match(record.disk?.digest ?? '', /^[0-9a-f]{16}$/);
    assert.ok((record.rounds[0]?.diskBytes ?? 0) > 0, 'round 1 carries the bulk of the disk');
    const onC = await c.client.vm('kc');
    assert.deepEqual([onC.state, onC.disk?.datastore, onC.disk?.path], ['running', 'ds1', 'moved/kc.vmdk']);
    await c.client.waitForConsole('kc', 'kvlog: flushed');
    assert.equal((await c.client.verifyVm('kc')).selfcheck, 0);
    const flushed = await flushedSoFar(c.client, 'kc');
    assert.ok(await rebootAndCount(c.client, 'kc') >= flushed, 'the copy holds every record the guest flushed');
    await c.client.stopVm('kc');
    assert.match(await qemuImgOk('check', join(local, 'moved', 'kc.vmdk')), /No errors were found/);
    await c.client.deleteVm('kc');
  });
});
