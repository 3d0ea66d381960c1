/**
 * Live migration between real `ferry host` processes on 127.0.0.1: the guest keeps its own
 * invariants across migrations back and forth; the API refuses requests without the token.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  createVm, guestWorks, removeHostData, startHost, startMigration, stopHost, waitMigration, type TestHost,
} from '../helpers/hosts.js';
import { FerryError } from '../../src/lib/errors.js';
import { routes } from '../../src/api/host-v1.js';
import { MiB } from '../../src/lib/units.js';
import { MAX_THROTTLE_PERMILLE } from '../../src/lib/limits.js';
import { connect } from 'node:net';
import { FrameReader } from '../../src/migration/protocol/reader.js';
import { encodeHello } from '../../src/migration/protocol/messages.js';

let a: TestHost;
let b: TestHost;
before(async () => { [a, b] = await Promise.all([startHost('a'), startHost('b')]); });
after(async () => {
  await Promise.all([stopHost(a), stopHost(b)]);
  await Promise.all([removeHostData(a), removeHostData(b)]);
});

async function migrateAndCheck(from: TestHost, to: TestHost, vm: string): Promise<void> {
  const id = await startMigration(from, vm, to);
  const record = await waitMigration(from, id);
  assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
  assert.equal(record.verified, true, 'the target verified the memory digest');
  assert.ok(record.engineDowntimeMs !== null && record.engineDowntimeMs > 0);
  assert.ok(!(await from.client.listVms()).some((v) => v.name === vm), 'the source released the VM');
  const view = (await to.client.listVms()).find((v) => v.name === vm);
  assert.equal(view?.state, 'running', 'the VM runs on the target');
  await guestWorks(to, vm); // let it run on the target: check=1 makes it verify every page it touches
  const check = await to.client.verifyVm(vm);
  assert.equal(check.selfcheck, 0, 'the guest\'s own invariants hold after the migration');
  assert.equal(check.state, 'running');
  // The guest's own record of its longest clock gap covers the stun the runtime measured from its
  // clock reads (the guest's bookkeeping reads span at least that interval).
  assert.ok(check.guestMaxClockGapMs !== null && check.guestMaxClockGapMs > 0, 'the dirtier keeps a clock-gap record');
  // The dirtier reads its clock all the time: the target must have measured the gap it saw.
  assert.ok(record.guestDowntimeMs !== null && record.guestDowntimeMs > 0, `guest downtime measured (${String(record.guestDowntimeMs)})`);
  assert.ok(check.guestMaxClockGapMs >= record.guestDowntimeMs, `guest's own max gap ${check.guestMaxClockGapMs} ms >= guest downtime ${record.guestDowntimeMs} ms`);
}

describe('live migration between host processes', () => {
  it('migrates the dirtier under load back and forth; its invariants hold every time', async () => {
    await createVm(a, 'd1', 'dirtier', { memoryBytes: 64 * MiB, cmdline: 'hot=16MiB pattern=random check=1 fill=1 claim=all' });
    await guestWorks(a, 'd1');
    await migrateAndCheck(a, b, 'd1');
    await migrateAndCheck(b, a, 'd1');
    await migrateAndCheck(a, b, 'd1');
    await b.client.stopVm('d1');
    await b.client.deleteVm('d1');
  });

  it('migrates the multi-vCPU dirtier (3 vCPUs writing concurrently)', async () => {
    await createVm(a, 'mv', 'dirtier', { memoryBytes: 64 * MiB, vcpus: 3, cmdline: 'hot=24MiB pattern=seq check=1' });
    await guestWorks(a, 'mv');
    await migrateAndCheck(a, b, 'mv');
    await migrateAndCheck(b, a, 'mv');
    await a.client.stopVm('mv');
    await a.client.deleteVm('mv');
  });

  it('migrates with each trace installation strategy and granularity; coarse regions send only changed pages', async () => {
    await createVm(a, 'tr', 'dirtier', { memoryBytes: 32 * MiB, vcpus: 2, cmdline: 'hot=4MiB pattern=random check=1 fill=1 claim=all' });
    let from = a;
    let to = b;
    for (const [traceInstall, traceGranularityBytes] of [['stop-all', 2 * MiB], ['single', 64 * 1024], ['stop-all', 4096]] as const) {
      const id = await startMigration(from, 'tr', to, { traceInstall, traceGranularityBytes });
      const record = await waitMigration(from, id);
      assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
      assert.equal(record.traces.install, traceInstall);
      assert.equal(record.traces.granularityBytes, traceGranularityBytes);
      assert.ok(record.traces.installations >= 2);
      if (traceInstall === 'stop-all') assert.ok(record.traces.stallMaxMs > 0, 'stop-all stops the guest to install');
      else assert.equal(record.traces.stallMaxMs, 0, 'single never stops the guest to install');
      assert.equal((await to.client.verifyVm('tr')).selfcheck, 0);
      [from, to] = [to, from];
    }
    await from.client.stopVm('tr');
    await from.client.deleteVm('tr');
  });

  it('adaptive tracing starts coarse and splits regions that keep firing on a sparse writer; the VM arrives intact', async () => {
    await createVm(a, 'ad', 'dirtier', { memoryBytes: 64 * MiB, vcpus: 2, cmdline: 'hot=48MiB pattern=random rate=100000 check=1 fill=1 claim=all' });
    await guestWorks(a, 'ad');
    const record = await waitMigration(a, await startMigration(a, 'ad', b, { traceAdaptive: true }));
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.traces.adaptive, true);
    assert.equal(record.traces.granularityBytes, 2 * MiB);
    assert.ok(record.traces.splitRegions >= 1, 'regions that kept firing with few changed pages were split');
    assert.ok((record.traces.splits[0]?.round ?? 0) >= 2);
    assert.equal((await b.client.verifyVm('ad')).selfcheck, 0);
    await b.client.stopVm('ad');
    await b.client.deleteVm('ad');
  });

  it('a migrated VM can be stopped and deleted on the target right away (store writes are ordered)', async () => {
    await createVm(a, 'quick', 'dirtier', { memoryBytes: 16 * MiB, cmdline: 'hot=2MiB' });
    const record = await waitMigration(a, await startMigration(a, 'quick', b));
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    await b.client.stopVm('quick');
    await b.client.deleteVm('quick');
    assert.ok(!(await b.client.listVms()).some((v) => v.name === 'quick'));
  });

  it('migrates with compressed page data over one and over four data connections', async () => {
    await createVm(a, 'cz', 'dirtier', { memoryBytes: 32 * MiB, cmdline: 'hot=8MiB pattern=random check=1 fill=1 claim=all' });
    for (const [from, to, options] of [[a, b, { compression: 'deflate', dataChannels: 1 }], [b, a, { compression: 'deflate', dataChannels: 4 }]] as const) {
      const record = await waitMigration(from, await startMigration(from, 'cz', to, options));
      assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
      assert.equal((await to.client.verifyVm('cz')).selfcheck, 0);
    }
    await a.client.stopVm('cz');
    await a.client.deleteVm('cz');
  });

  it('a VM that dirties faster than a capped link converges by throttling', async () => {
    await createVm(a, 'fast', 'dirtier', { memoryBytes: 32 * MiB, cmdline: 'hot=16MiB pattern=seq check=1' });
    const id = await startMigration(a, 'fast', b, { bandwidthBytesPerSec: 64 * MiB, downtimeTargetMs: 20 });
    const record = await waitMigration(a, id);
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.ok(record.maxThrottlePermille > 0, 'auto-converge throttled the guest');
    assert.equal((await b.client.verifyVm('fast')).selfcheck, 0);
    await b.client.stopVm('fast');
    await b.client.deleteVm('fast');
  });

  it('once the throttle is at its maximum, what the guest wrote at the old rate is in that round: the hot set is not re-sent once more', async () => {
    // 64 MiB rewritten sequentially without pause: the rate probe after round 1 takes the throttle to the
    // maximum. Without the settle-and-collect, everything the guest wrote before the throttle bit (the
    // probe, the step in flight) fired after round 1's collect, so round 2 ended with the whole hot set
    // dirty again; now it ends with what the throttled guest wrote (~1-2 MiB per 70 ms round here).
    await createVm(a, 'settle', 'dirtier', { memoryBytes: 128 * MiB, cmdline: 'hot=64MiB pattern=seq fill=1 claim=all check=0' });
    await a.client.waitForConsole('settle', 'dirtier:', 60_000);
    const record = await waitMigration(a, await startMigration(a, 'settle', b));
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    const atMax = record.rounds.find((r) => r.throttlePermille === MAX_THROTTLE_PERMILLE);
    assert.ok(atMax !== undefined, `the throttle reached its maximum: ${JSON.stringify(record.rounds.map((r) => r.throttlePermille))}`);
    assert.ok(atMax.dirtyBytesAfter < 32 * MiB, `round ${atMax.round}, the first at the maximum throttle, left ${atMax.dirtyBytesAfter} bytes dirty (the hot set is 64 MiB)`);
    await b.client.stopVm('settle');
    await b.client.deleteVm('settle');
  });

  it('...or aborts cleanly when configured to, and the VM keeps running on the source', async () => {
    await createVm(a, 'noconv', 'dirtier', { memoryBytes: 32 * MiB, cmdline: 'hot=16MiB pattern=seq check=1' });
    const id = await startMigration(a, 'noconv', b, { bandwidthBytesPerSec: 64 * MiB, autoConverge: false, maxRounds: 3, onLimit: 'abort' });
    const record = await waitMigration(a, id);
    assert.equal(record.outcome, 'failed');
    assert.equal(record.error?.code, 'MIGRATION_NOT_CONVERGED');
    const check = await a.client.verifyVm('noconv');
    assert.equal(check.state, 'running');
    assert.equal(check.selfcheck, 0);
    assert.ok(!(await b.client.listVms()).some((v) => v.name === 'noconv'), 'the target discarded its partial copy');
    await a.client.stopVm('noconv');
    await a.client.deleteVm('noconv');
  });
});

describe('host API authentication', () => {
  it('refuses requests without the right token with 401, and nothing happens', async () => {
    for (const auth of [undefined, 'Bearer wrong-token-wrong-token', 'Basic abc']) {
      const res = await a.client.raw('POST', routes.createVm.path, {
        token: null, headers: auth !== undefined ? { authorization: auth } : {},
        body: JSON.stringify({ name: 'intruder', imageBase64: 'AGFzbQEAAAA=', memoryBytes: 65536 }),
      });
      assert.equal(res.status, 401);
      const body = (await res.json()) as { error: { code: string } };
      assert.equal(body.error.code, 'UNAUTHORIZED');
    }
    assert.ok(!(await a.client.listVms()).some((v) => v.name === 'intruder'));
  });

  it('answers bad requests with a code and survives them', async () => {
    const post = (body: string): Promise<Response> => a.client.raw('POST', routes.createVm.path, { body });
    const cases: [string, number, string][] = [
      ['{not json', 400, 'BAD_REQUEST'],
      [JSON.stringify({ name: 'x' }), 400, 'BAD_REQUEST'],
      // The VM name rule is part of the request schema: refused at the boundary, before any VM code runs.
      [JSON.stringify({ name: 'bad name', imageBase64: 'AGFzbQEAAAA=', memoryBytes: 65536 }), 400, 'BAD_REQUEST'],
      [JSON.stringify({ name: 'ok', imageBase64: 'AGFzbQEAAAA=', memoryBytes: 1000 }), 400, 'VM_CONFIG_INVALID'],
      [JSON.stringify({ name: 'notwasm', imageBase64: Buffer.from('hello world').toString('base64'), memoryBytes: 65536 }), 400, 'IMAGE_NOT_WASM'],
    ];
    for (const [body, status, code] of cases) {
      const res = await post(body);
      assert.equal(res.status, status, body);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, code);
    }
    const missing = await a.client.vm('nope').catch((e: unknown) => e);
    assert.ok(missing instanceof FerryError, 'a FerryError');
    assert.equal(missing.code, 'NOT_FOUND', 'the host\'s own code survives the wire');
    assert.equal(missing.origin, 'remote');
    assert.equal((await a.client.host()).name, 'a', 'still serving');
  });
});

describe('host lifecycle', () => {
  it('SIGTERM pauses and saves running VMs; the next start restores and resumes them intact', async () => {
    const h = await startHost('c');
    try {
      await createVm(h, 'keep', 'dirtier', { memoryBytes: 32 * MiB, vcpus: 2, cmdline: 'hot=8MiB pattern=random check=1' });
      await createVm(h, 'idle', 'compute', { memoryBytes: 1 * MiB, cmdline: 'iters=1', start: false });
      await guestWorks(h, 'keep');
      await stopHost(h, 'SIGTERM');
      assert.match(h.log(), /VM keep: paused and saved \(will resume at the next start\)/);
      const h2 = await startHost('c', { dataDir: h.dataDir });
      try {
        const vms = await h2.client.listVms();
        assert.equal(vms.find((v) => v.name === 'keep')?.state, 'running');
        assert.equal(vms.find((v) => v.name === 'idle')?.state, 'defined');
        assert.equal((await h2.client.verifyVm('keep')).selfcheck, 0);
      } finally {
        await stopHost(h2, 'SIGKILL');
      }
      // After a crash (SIGKILL) nothing is resurrected from the consumed snapshot: the VM is defined, not running.
      const h3 = await startHost('c', { dataDir: h.dataDir });
      try {
        assert.equal((await h3.client.listVms()).find((v) => v.name === 'keep')?.state, 'defined');
      } finally {
        await stopHost(h3, 'SIGKILL');
      }
    } finally {
      await removeHostData(h);
    }
  });
});

describe('migration endpoint: hostile peers', () => {
  it('garbage, a bad ticket and a truncated frame get errors; the host keeps serving', async () => {
    const port = (await a.client.host()).migrationPort;
    const exchange = async (bytes: Buffer, end: boolean): Promise<string> => {
      const socket = connect({ host: '127.0.0.1', port });
      await new Promise((resolve) => socket.once('connect', resolve));
      const reader = new FrameReader();
      const reply = new Promise<string>((resolve) => {
        socket.on('data', (d: Buffer) => {
          for (const f of reader.push(d)) resolve((JSON.parse(f.payload.toString()) as { code: string }).code);
        });
        socket.on('close', () => { resolve('closed'); });
      });
      socket.write(bytes);
      if (end) socket.end();
      const r = await reply;
      socket.destroy();
      return r;
    };
    assert.equal(await exchange(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), false), 'PROTOCOL_BAD_MAGIC');
    assert.equal(await exchange(encodeHello(1, { protocol: 1, ticket: 'ab'.repeat(32), role: 'control', channel: 0 }), false), 'TICKET_INVALID');
    assert.equal(await exchange(encodeHello(1, { protocol: 1, ticket: 'ab'.repeat(32), role: 'control', channel: 0 }).subarray(0, 20), true), 'closed');
    assert.equal((await a.client.host()).name, 'a');
  });
});
