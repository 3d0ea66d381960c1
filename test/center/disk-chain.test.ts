/**
 * GET /api/v1/vms/{name}/disk/chain through the center (center-api.md): one real `ferry host` process, an
 * in-process center (SQLite), a VM with a disk. The center answers its host's chain as the host does (top
 * first, with CIDs), follows a snapshot, passes the host's refusal for a VM without a disk, answers
 * NOT_FOUND for a VM it does not know, and HOST_UNREACHABLE once the VM's host is gone.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MiB } from '../../src/lib/units.js';
import type { CenterTaskView } from '../../src/api/center-v1.js';
import { removeHostData, stopHost, until, type TestHost } from '../helpers/hosts.js';
import { startTestCenter, type TestCenter } from '../helpers/center.js';
import { COPY_TASK_TIMEOUT_MS, copyDirs, startCopyHost, type CopyDirs } from '../helpers/copy-fleet.js';

const VM = 'dc-kv';
const KV = { image: 'kvlog', memoryBytes: 16 * MiB, vcpus: 1, cmdline: 'max=100000 flush=64 rate=200' };

describe('the center relays a VM\'s disk chain from its host (a real host process, SQLite)', () => {
  let tc: TestCenter;
  let fs: CopyDirs;
  let host: TestHost | null = null;
  const succeeded = async (t: CenterTaskView): Promise<CenterTaskView> => {
    const d = await tc.admin.waitForTask(t.id, { timeoutMs: COPY_TASK_TIMEOUT_MS });
    assert.equal(d.state, 'succeeded', `task ${d.id} ${d.kind}: ${JSON.stringify(d.error)}`);
    return d;
  };

  before(async () => {
    tc = await startTestCenter({ heartbeatIntervalMs: 300, missedHeartbeats: 40 });
    fs = await copyDirs(['dc-ds']);
    host = await startCopyHost(tc.admin, (t) => tc.hostArgs(t), 'dca', new Map([['dc-ds', fs.dir('dc-ds')]]), await tc.center.store.latestEventId());
    await succeeded(await tc.admin.createVm({ name: VM, host: 'dca', ...KV, disk: { datastore: 'dc-ds', path: 'dc-kv.vmdk', sizeBytes: 16 * MiB } }));
    await succeeded(await tc.admin.createVm({ name: 'dc-nodisk', host: 'dca', image: 'dirtier', memoryBytes: 16 * MiB, cmdline: 'hot=64KiB rate=50' }));
  });
  after(async () => {
    if (host !== null) { await stopHost(host, 'SIGKILL').catch(() => undefined); await removeHostData(host); }
    await tc.close();
    await fs.remove();
  });

  it('answers the host\'s chain, top first with CIDs, and follows a snapshot', async () => {
    assert.ok(host !== null);
    const viaCenter = await tc.admin.vmDiskChain(VM);
    const direct = await host.client.diskChain(VM);
    // Allocation grows as the guest writes between the two reads: everything else is the same.
    const steady = (c: typeof direct): unknown => ({ ...c, chain: c.chain.map((l) => ({ ...l, allocatedBytes: 0 })) });
    assert.deepEqual(steady(viaCenter), steady(direct), 'the host\'s own answer');
    assert.deepEqual(viaCenter.chain.map((l) => [l.path, l.role]), [['dc-kv.vmdk', 'top']]);
    assert.ok((viaCenter.chain[0]?.cid ?? '').length > 0, 'the top has its CID');
    await host.client.snapshotVm(VM);
    const after2 = await tc.admin.vmDiskChain(VM);
    assert.deepEqual(after2.chain.map((l) => l.role), ['top', 'snapshot']);
    assert.equal(after2.chain[0]?.parentCid, after2.chain[1]?.cid, 'the top names the snapshot below it as its parent');
  });

  it('passes on the host\'s refusal for a VM without a disk; NOT_FOUND for a VM it does not know', async () => {
    await assert.rejects(tc.admin.vmDiskChain('dc-nodisk'), (err: Error & { code?: string }) => err.code === 'VM_STATE' && /has no disk/.test(err.message));
    await assert.rejects(tc.admin.vmDiskChain('dc-nobody'), { code: 'NOT_FOUND' });
  });

  it('says HOST_UNREACHABLE once the VM\'s host is gone', async () => {
    assert.ok(host !== null);
    await stopHost(host, 'SIGKILL');
    await until(async () => {
      try { await tc.admin.vmDiskChain(VM); return false; } catch (err) { return (err as { code?: string }).code === 'HOST_UNREACHABLE'; }
    }, 'the chain read fails as HOST_UNREACHABLE', 10_000);
  });
});
