/**
 * A live migration in one process whose target adopts the source's instrumented module: the real
 * source engine (MigrationJob over TCP) and the real target (MigrationReceiver, its IncomingMigration
 * building the VM). The target has never instrumented the image (its cache is emptied after the source
 * VM was made), so it takes the offer: the record says 'source', the guest's self-check holds after the
 * move, and the target then verifies the module against its own build (which fills its cache: the next
 * migration of that image says 'cache'). Without the HELLO capability nothing is offered and the
 * record says nothing, as with an older target.
 *
 * The capability is what a target lists in its HELLO reply; MigrationReceiver's reply does not list it
 * yet (src/migration/target/receiver.ts is outside this change), so `advertising` adds it to the one
 * HELLO reply each accepted stream writes first — the reply the receiver will give.
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { guestImagePath } from '../../helpers/guests.js';
import { MiB } from '../../../src/lib/units.js';
import { tcpTransport } from '../../../src/dataplane/tcp.js';
import type { ByteStream, Transport } from '../../../src/dataplane/transport.js';
import { HEADER_BYTES } from '../../../src/migration/protocol/frame.js';
import { TARGET_OFFER_CAPABILITY, encodeOk } from '../../../src/migration/protocol/messages.js';
import { MigrationJob } from '../../../src/migration/source/job.js';
import type { MigrationTargetPeer } from '../../../src/migration/peer.js';
import type { StoredOutcome } from '../../../src/migration/target/hooks.js';
import { MigrationReceiver } from '../../../src/migration/target/receiver.js';
import { clearInstrumentCache, instrumentImage } from '../../../src/vmm/instrument.js';
import { DEFAULT_GRANULARITY_BYTES } from '../../../src/vmm/layout.js';
import { Vm } from '../../../src/vmm/vm.js';
import { FerryError } from '../../../src/lib/errors.js';

const CONFIG = { memoryBytes: 32 * MiB, vcpus: 2, cmdline: 'hot=4MiB pattern=random check=1' };

/** The receiver's transport, with each accepted stream's first write (its HELLO reply) stripped of `offers`: an older target. */
function olderTarget(inner: Transport): Transport {
  return {
    kind: inner.kind,
    dial: (to, options) => inner.dial(to, options),
    listen: (at, onStream) => inner.listen(at, (stream: ByteStream) => {
      const write = stream.write.bind(stream) as (chunk: Buffer) => boolean;
      let first = true;
      stream.write = ((chunk: Buffer) => {
        if (!first) return write(chunk);
        first = false;
        const { offers, ...body } = JSON.parse(chunk.subarray(HEADER_BYTES).toString('utf8')) as Record<string, unknown>;
        assert.deepEqual(offers, [TARGET_OFFER_CAPABILITY], 'this build\'s target lists the capability');
        return write(encodeOk(chunk.readUInt32LE(8), body));
      }) as typeof stream.write;
      onStream(stream);
    }),
  };
}

/** A target in this process: what it adopted, what it logged (with a way to wait for a line). */
class Target {
  readonly adopted: Vm[] = [];
  readonly lines: string[] = [];
  private readonly stored = new Map<string, StoredOutcome>();
  private waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  readonly receiver: MigrationReceiver;

  constructor(transport: Transport) {
    this.receiver = new MigrationReceiver({
      admit: () => undefined,
      adopt: (vm) => { this.adopted.push(vm); return Promise.resolve(); },
      prepareDisk: () => Promise.reject(new FerryError('MIGRATION_REFUSED', 'no disks in this test')),
      recordOutcome: (id, outcome) => { this.stored.set(id, outcome); return Promise.resolve(); },
      storedOutcome: (id) => Promise.resolve(this.stored.get(id) ?? null),
      log: (line) => {
        this.lines.push(line);
        this.waiters = this.waiters.filter((w) => { if (!w.re.test(line)) return true; w.resolve(line); return false; });
      },
    }, transport, { host: '127.0.0.1', port: 0 });
  }

  /** The first line matching `re`, logged already or later. */
  line(re: RegExp): Promise<string> {
    const seen = this.lines.find((l) => re.test(l));
    return seen !== undefined ? Promise.resolve(seen) : new Promise((resolve) => { this.waiters.push({ re, resolve }); });
  }

  async peer(): Promise<MigrationTargetPeer> {
    const { port } = await this.receiver.listen();
    return {
      label: `in-process target :${port}`,
      requestTicket: async (_timeoutMs, sourceMigrationId) => {
        const t = await this.receiver.issueTicket(sourceMigrationId);
        return { migrationId: t.migrationId, ticket: t.ticket, address: { host: '127.0.0.1', port: t.port }, expiresInMs: t.expiresInMs };
      },
      incomingOutcome: (id) => this.receiver.outcome(id),
    };
  }
}

async function runningVm(name: string): Promise<Vm> {
  const vm = Vm.create(await readFile(guestImagePath('dirtier')), { name, ...CONFIG });
  await vm.start();
  return vm;
}

describe('migration with the source\'s instrumented module', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => { for (const c of cleanup.splice(0).reverse()) await c(); });

  it('a target that never instrumented the image adopts the offer (record: source), the guest verifies, the target then verifies the module and caches it', { timeout: 120_000 }, async () => {
    const target = new Target(tcpTransport);
    const peer = await target.peer();
    cleanup.push(async () => { await target.receiver.close(); for (const vm of target.adopted) await vm.stop(); });
    const vm = await runningVm('offer-1');
    cleanup.push(() => vm.stop());
    clearInstrumentCache(); // the target (this process) has never instrumented the image

    const record = await new MigrationJob(vm, vm.imageBytes, peer, tcpTransport, {}, null).run();
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.instrumentation, 'source');
    assert.ok(target.lines.some((l) => /prepared VM offer-1 .* in \d+ ms \(instrumentation: source\)/.test(l)), 'the target logged where the module came from');
    const moved = target.adopted[0];
    assert.ok(moved !== undefined);
    assert.equal(moved.state, 'running');
    await moved.pause();
    assert.equal(moved.selfcheck(), 0, 'the guest\'s own invariants hold on the adopted module');
    moved.resume();
    assert.match(await target.line(/offer-1's instrumented module from the source (verified|failed verification)/), /verified: identical to this host's build ferry-instrument\//);

    // The verification cached this host's build: the next VM of the image needs no offer.
    const second = await runningVm('offer-2');
    cleanup.push(() => second.stop());
    const again = await new MigrationJob(second, second.imageBytes, peer, tcpTransport, {}, null).run();
    assert.equal(again.outcome, 'succeeded', JSON.stringify(again.error));
    assert.equal(again.instrumentation, 'cache');
  });

  it('a refused offer (another instrumenter build) is one log line, and the target instruments the image (record: local)', async () => {
    const target = new Target(tcpTransport);
    const peer = await target.peer();
    cleanup.push(async () => { await target.receiver.close(); for (const vm of target.adopted) await vm.stop(); });
    const bytes = await readFile(guestImagePath('dirtier'));
    // A source whose module says another build made it (the bytes are this build's, so the VM runs the same).
    const own = instrumentImage(bytes, { ramBytes: CONFIG.memoryBytes, granularityBytes: DEFAULT_GRANULARITY_BYTES });
    const vm = Vm.create(bytes, { name: 'other-build-1', ...CONFIG }, null, undefined, { ...own, build: 'ferry-instrument/0+binaryen@0.0.0' });
    await vm.start();
    cleanup.push(() => vm.stop());
    clearInstrumentCache();

    const record = await new MigrationJob(vm, vm.imageBytes, peer, tcpTransport, {}, null).run();
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.instrumentation, 'local');
    assert.match(target.lines.find((l) => l.includes('not using the source\'s instrumented module')) ?? '(no such line)', /made by instrumenter ferry-instrument\/0\+binaryen@0\.0\.0; this host's is .*; instrumenting the image here/);
  });

  it('offers no fault-injected module: the PREPARE says "none to give" (null) and the target instruments the image (record: local)', async () => {
    const target = new Target(tcpTransport);
    const peer = await target.peer();
    cleanup.push(async () => { await target.receiver.close(); for (const vm of target.adopted) await vm.stop(); });
    // An empty FaultInjection injects nothing but makes a build that is never cached nor offered.
    const vm = Vm.create(await readFile(guestImagePath('dirtier')), { name: 'faulty-1', ...CONFIG }, null, {});
    await vm.start();
    cleanup.push(() => vm.stop());
    assert.equal(vm.image.build, null);
    clearInstrumentCache();

    const record = await new MigrationJob(vm, vm.imageBytes, peer, tcpTransport, {}, null).run();
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.instrumentation, 'local');
  });

  it('offers nothing to a target whose HELLO reply does not list the capability (an older target): the record says nothing', async () => {
    const target = new Target(olderTarget(tcpTransport));
    const peer = await target.peer();
    cleanup.push(async () => { await target.receiver.close(); for (const vm of target.adopted) await vm.stop(); });
    const vm = await runningVm('plain-1');
    cleanup.push(() => vm.stop());
    clearInstrumentCache();

    const record = await new MigrationJob(vm, vm.imageBytes, peer, tcpTransport, {}, null).run();
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.instrumentation, undefined);
    assert.ok(target.lines.some((l) => /prepared VM plain-1 .*\(instrumentation: local\)/.test(l)));
  });
});
