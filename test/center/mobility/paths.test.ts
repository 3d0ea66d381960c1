/**
 * The mobility manager (src/center/mobility/paths.ts) over a real SQLite store: which driver two hosts
 * share, and the two PathSpecs one allocation gives (each side's addresses swapped, each told only the
 * peer's endpoint for the chosen driver). The store's own guarantees are in the contract suite.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCenterStore } from '../../../src/center/store/open.js';
import type { CenterStore } from '../../../src/center/store/store.js';
import type { Host, HostDataPlane } from '../../../src/center/store/model.js';
import { MobilityManager, chooseDriver, pathSpecs } from '../../../src/center/mobility/paths.js';
import { pathSpecSchema } from '../../../src/dataplane/path/spec.js';

const PORTABLE_A = { kind: 'portable' as const, endpoint: { host: '192.0.2.1', port: 7443 } };
const KERNEL_A = { kind: 'kernel' as const, endpoint: { host: '192.0.2.1', port: 4789 } };
const PORTABLE_B = { kind: 'portable' as const, endpoint: { host: '192.0.2.2', port: 7443 } };
const KERNEL_B = { kind: 'kernel' as const, endpoint: { host: '192.0.2.2', port: 4789 } };
const dp = (...drivers: HostDataPlane['drivers']): HostDataPlane => ({ drivers });

describe('chooseDriver', () => {
  it('is the first of the source\'s drivers the target has too; null when none is shared or either reported nothing', () => {
    assert.equal(chooseDriver(dp(KERNEL_A, PORTABLE_A), dp(PORTABLE_B, KERNEL_B)), 'kernel', 'the source\'s order of preference');
    assert.equal(chooseDriver(dp(PORTABLE_A, KERNEL_A), dp(KERNEL_B, PORTABLE_B)), 'portable');
    assert.equal(chooseDriver(dp(KERNEL_A, PORTABLE_A), dp(PORTABLE_B)), 'portable');
    assert.equal(chooseDriver(dp(KERNEL_A), dp(PORTABLE_B)), null);
    assert.equal(chooseDriver(dp(), dp(PORTABLE_B)), null);
    assert.equal(chooseDriver(null, dp(PORTABLE_B)), null);
    assert.equal(chooseDriver(dp(PORTABLE_A), null), null);
  });
});

describe('MobilityManager', () => {
  let dir = '';
  let store: CenterStore | undefined;
  let source: Host | undefined;
  let target: Host | undefined;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-mobility-'));
    const s = await openCenterStore({ backend: 'sqlite', file: join(dir, 'center.sqlite') });
    store = s;
    await s.upsertSite({ name: 's1' });
    await s.upsertSite({ name: 's2' });
    const h = (name: string, site: string): { name: string; site: string; url: string; capacity: { memoryBytes: number; vcpus: number } } =>
      ({ name, site, url: `https://${name}.example:7001`, capacity: { memoryBytes: 2 ** 30, vcpus: 2 } });
    await s.upsertHost(h('a', 's1'));
    await s.upsertHost(h('b', 's2'));
    await s.upsertHost(h('c', 's2'));
    source = await s.setHostDataPlane('a', dp(KERNEL_A, PORTABLE_A));
    target = await s.setHostDataPlane('b', dp(PORTABLE_B));
  });
  after(async () => {
    await store?.close();
    await rm(dir, { recursive: true, force: true });
  });
  const ready = (): { store: CenterStore; source: Host; target: Host } => {
    assert.ok(store !== undefined && source !== undefined && target !== undefined);
    return { store, source, target };
  };
  const request = (s: Host, t: Host): Parameters<MobilityManager['allocate']>[0] =>
    ({ taskId: null, kind: 'migration', source: s, target: t, driver: 'portable', ttlMs: 60_000, firstPort: 7100, portCount: 2 });

  it('allocates one path and gives each host its side: addresses swapped, the peer\'s endpoint for the driver', async () => {
    const { store: s, source: a, target: b } = ready();
    const m = new MobilityManager(s);
    const { row, sourceSpec, targetSpec } = await m.allocate(request(a, b));
    assert.match(row.pathId, /^[0-9a-f]{32}$/);
    assert.deepEqual(await s.getPath(row.pathId), row);
    for (const spec of [sourceSpec, targetSpec]) {
      assert.ok(pathSpecSchema.safeParse(spec).success);
      assert.deepEqual([spec.pathId, spec.driver, spec.vni, spec.secret, spec.firstPort, spec.portCount, spec.expiresAtMs], [row.pathId, 'portable', row.vni, row.secret, 7100, 2, row.expiresAtMs]);
    }
    assert.deepEqual([sourceSpec.side, sourceSpec.localAddress, sourceSpec.peerAddress, sourceSpec.peerEndpoint], ['source', row.sourceAddress, row.targetAddress, PORTABLE_B.endpoint]);
    assert.deepEqual([targetSpec.side, targetSpec.localAddress, targetSpec.peerAddress, targetSpec.peerEndpoint], ['target', row.targetAddress, row.sourceAddress, PORTABLE_A.endpoint]);
    assert.equal(Buffer.from(row.secret, 'base64url').length, 32);
    const again = await m.allocate(request(a, b));
    assert.notEqual(again.row.secret, row.secret, 'a fresh secret per operation');
    assert.notEqual(again.row.pathId, row.pathId);
    assert.deepEqual(pathSpecs(row, a, b), { sourceSpec, targetSpec }, 'the specs can be rebuilt from the stored row (a re-push)');
    assert.equal(await m.release(row.pathId, 'migration succeeded'), true);
    assert.equal(await m.release(row.pathId, 'again'), false);
  });

  it('a host without the driver is PATH_SETUP_FAILED before anything is stored', async () => {
    const { store: s, source: a } = ready();
    const m = new MobilityManager(s);
    const bare = await s.getHost('c');
    const liveBefore = (await s.listPaths({ state: 'live' })).length;
    await assert.rejects(m.allocate(request(a, bare)), { code: 'PATH_SETUP_FAILED' });
    await assert.rejects(m.allocate({ ...request(a, await s.getHost('b')), driver: 'kernel' }), { code: 'PATH_SETUP_FAILED' });
    assert.equal((await s.listPaths({ state: 'live' })).length, liveBefore);
  });
});
