/**
 * VMs with disks: a VMDK on a datastore, created or attached at VM creation, its lease held while
 * the VM is defined, carried across a host restart (shutdown save + restore), refused where it
 * cannot be honoured. Real in-process host agents, real files, the kvlog guest, qemu-img as judge.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type TestAgent } from '../helpers/agents.js';
import { vmRequest } from '../helpers/guests.js';
import { qemuImgOk } from '../helpers/vmdk.js';
import { MiB } from '../../src/lib/units.js';
import { HostDatastores } from '../../src/host/datastores.js';
import { VmDisk, createDisk } from '../../src/host/vm-disk.js';

const DISK_BYTES = 16 * MiB;
const KV = { memoryBytes: 8 * MiB, vcpus: 2, cmdline: 'max=50000 flush=64 rate=20000' };

let base = '';
let dsDir = '';
const agents: TestAgent[] = [];
before(async () => {
  base = await mkdtemp(join(tmpdir(), 'ferry-vm-disk-'));
  dsDir = await mkdtemp(join(base, 'ds-'));
});
after(async () => {
  for (const a of agents.splice(0)) await a.close().catch(() => undefined);
  await rm(base, { recursive: true, force: true });
});

async function agent(name: string, dataDir?: string): Promise<TestAgent> {
  const a = await startAgent(name, { datastores: [{ name: 'ds1', path: dsDir }], ...(dataDir !== undefined ? { dataDir } : {}) });
  agents.push(a);
  return a;
}

describe('VMs with disks on a datastore', () => {
  it('creates a VMDK for a VM, holds its lease, keeps its data across a host restart; qemu-img agrees', async () => {
    const dataDir = await mkdtemp(join(base, 'host-a-'));
    const a = await agent('a', dataDir);
    const view = await a.client.createVm(await vmRequest('kv', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kv.vmdk', sizeBytes: DISK_BYTES }, start: true }));
    assert.equal(view.disk?.capacityBytes, DISK_BYTES);
    assert.match(view.disk?.cid ?? '', /^[0-9a-f]{8}$/);
    await a.client.waitForConsole('kv', 'kvlog: flushed');

    // Another host mounting the same directory cannot open the disk for writing.
    const b = await agent('b');
    await assert.rejects(b.client.createVm(await vmRequest('kv2', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kv.vmdk' } })), { code: 'DISK_LOCKED' });
    await assert.rejects(b.client.createVm(await vmRequest('kv3', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kv.vmdk', sizeBytes: DISK_BYTES } })), { code: 'DISK_LOCKED' }, 'nor create over it');
    await assert.rejects(b.client.createVm(await vmRequest('kv4', 'kvlog', { ...KV, disk: { datastore: 'nope', path: 'x.vmdk', sizeBytes: DISK_BYTES } })), { code: 'NOT_FOUND' });
    assert.deepEqual((await b.client.listVms()).map((v) => v.name), [], 'nothing was defined by the refused requests');
    // (Migrating it is test/host/disk-migration.test.ts's subject.)

    // Host restart: the running VM is saved with its disk and resumed on it.
    await a.agent.close();
    agents.splice(agents.indexOf(a), 1);
    const a2 = await agent('a', dataDir);
    assert.equal((await a2.client.vm('kv')).state, 'running');
    await a2.client.waitForConsole('kv', 'kvlog: flushed');
    assert.equal((await a2.client.verifyVm('kv')).selfcheck, 0, 'every record it wrote verifies');

    // Deleting the VM releases the lease and keeps the disk: a fresh VM elsewhere boots on it.
    await a2.client.stopVm('kv');
    await a2.client.deleteVm('kv');
    // The file stays: a new disk is never created over it.
    await assert.rejects(b.client.createVm(await vmRequest('kv3', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kv.vmdk', sizeBytes: DISK_BYTES } })), { code: 'ALREADY_EXISTS' });
    await b.client.createVm(await vmRequest('kv', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'kv.vmdk' }, start: true }));
    await b.client.waitForConsole('kv', 'records, all verified');
    await b.client.stopVm('kv');
    await b.client.deleteVm('kv');
    assert.match(await qemuImgOk('check', join(dsDir, 'kv.vmdk')), /No errors were found/);
  });

  it('refuses a disk spec that is not a sector multiple, at the boundary', async () => {
    const c = await agent('c');
    await assert.rejects(c.client.createVm(await vmRequest('odd', 'kvlog', { ...KV, disk: { datastore: 'ds1', path: 'odd.vmdk', sizeBytes: 1000 } })), { code: 'BAD_REQUEST' });
  });
});

describe('VmDisk: the handle behind a VM\'s block device', () => {
  const owner = (n: string): { hostName: string; hostId: string } => ({ hostName: n, hostId: Buffer.from(n.padEnd(8, '-')).toString('hex') });

  it('releases its lease to another host and takes it back; tracks writes before they are issued; swaps chains', async () => {
    const dir = await mkdtemp(join(base, 'handle-'));
    const dsA = await HostDatastores.mount([{ name: 'ds1', path: dir }], owner('ha'));
    const dsB = await HostDatastores.mount([{ name: 'ds1', path: dir }], owner('hb'));
    const d = await VmDisk.attach(dsA, { datastore: 'ds1', path: 'h.vmdk' }, 4 * MiB);
    const t = d.track();
    const data = new Uint8Array(4096).fill(7);
    await d.backend.write(64 * 1024, data);
    assert.deepEqual(t.take(), [1]);
    await assert.rejects(VmDisk.attach(dsB, { datastore: 'ds1', path: 'h.vmdk' }), { code: 'DISK_LOCKED' });

    await d.release();
    assert.equal(d.attached, false);
    await assert.rejects(d.backend.read(0, new Uint8Array(512)), { code: 'VM_STATE' });
    const onB = await VmDisk.attach(dsB, { datastore: 'ds1', path: 'h.vmdk' });
    const back = new Uint8Array(4096);
    await onB.backend.read(64 * 1024, back);
    assert.deepEqual(back, data, 'the released disk holds the write (flushed at release)');
    await assert.rejects(d.reacquire(), { code: 'DISK_LOCKED' }, 'never two writers');
    await onB.close();
    await d.reacquire();
    assert.equal(d.attached, true);
    await d.backend.read(64 * 1024, back);
    assert.deepEqual(back, data);

    const other = await createDisk(dsA, { datastore: 'ds1', path: 'o.vmdk' }, 4 * MiB);
    const old = d.replace(other, { datastore: 'ds1', path: 'o.vmdk' });
    await old?.close();
    assert.equal(d.spec.path, 'o.vmdk');
    await d.backend.read(64 * 1024, back);
    assert.ok(back.every((b) => b === 0), 'reads go to the new chain');
    const small = await createDisk(dsA, { datastore: 'ds1', path: 's.vmdk' }, 1 * MiB);
    assert.throws(() => d.replace(small, { datastore: 'ds1', path: 's.vmdk' }), { code: 'DISK_CHAIN_MISMATCH' });
    await small.close();
    await d.close();
    await d.close();
  });
});
