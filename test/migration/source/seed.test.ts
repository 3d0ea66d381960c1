/**
 * Copy-mode live migration over a pre-seeded base (docs/migration-protocol.md, "Seeded base
 * levels"), engine to engine: a real VM (the dirtier guest), a MigrationJob and a MigrationReceiver
 * over real TCP on 127.0.0.1, real VMDK files in a temp dir. The source's disk is a delta over a
 * base; the target's prepareDisk copies that base into its own directory (the seed) and creates its
 * new top as a delta over it, marking the base `migrate: false`. The record, the frames on the wire
 * (a TCP proxy between the two reads every frame header) and both chains' full content are the judges.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../../../src/lib/errors.js';
import { KiB, MiB } from '../../../src/lib/units.js';
import { tcpTransport } from '../../../src/dataplane/tcp.js';
import { LocalFile } from '../../../src/storage/local-file.js';
import { ChangedBlocks } from '../../../src/storage/changed-blocks.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import { formatCid } from '../../../src/storage/vmdk/descriptor.js';
import { blockBackend } from '../../../src/vmm/devices/block.js';
import { Vm } from '../../../src/vmm/vm.js';
import { MigrationJob } from '../../../src/migration/source/job.js';
import { MigrationReceiver } from '../../../src/migration/target/receiver.js';
import type { ReceiverHooks, StoredOutcome } from '../../../src/migration/target/hooks.js';
import type { ChainLevelSpec, IncomingDisk, MigrationSourceDisk, PrepareDisk, PreparedDisk } from '../../../src/migration/disk.js';
import type { MigrationTargetPeer } from '../../../src/migration/peer.js';
import type { MigrationRecord } from '../../../src/migration/record.js';
import type { MigrationOptions } from '../../../src/migration/options.js';
import { MIN_SEED_VERIFY_BYTES_PER_SEC } from '../../../src/migration/source/seed.js';
import { Command, HEADER_BYTES } from '../../../src/migration/protocol/frame.js';
import { guestImagePath } from '../../helpers/guests.js';
import { createLocalDisk, openLocalDisk } from '../../helpers/vmdk.js';

const DISK_BYTES = 8 * MiB;
const BLOCK_BYTES = 64 * KiB;
const RAM_BYTES = 8 * MiB;
/** The base's data: what the seed saves moving. */
const BASE_DATA_BYTES = 1 * MiB;
/** The delta's own blocks with data (block indices); one more block of the delta is all zeros over the base's data. */
const DELTA_DATA_BLOCKS = [2, 40, 41];
const DELTA_ZERO_BLOCK = 5;
/**
 * How long the test holds the seed after round 1's ROUND reached the target: the window in which a
 * target that did not wait for its seed would already have answered it. A correct target's pass never
 * depends on it (its answer can only come after the release); it only gives a broken one time to show.
 */
const HOLD_AFTER_ROUND_MS = 300;

let dir = '';
before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-seed-migration-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

/** The source's chain: base.vmdk with BASE_DATA_BYTES of data, delta.vmdk over it with a few blocks. */
interface SourceChain {
  readonly top: VmdkDisk;
  readonly chain: ChainLevelSpec[];
  readonly baseFile: string;
}

async function allocatedBytes(disk: VmdkDisk, levels: number): Promise<number> {
  let sum = 0;
  await disk.forEachAllocatedRangeInTop(levels, (_o, l) => { sum += l; });
  return sum;
}

async function makeSourceChain(at: string): Promise<SourceChain> {
  await mkdir(at, { recursive: true });
  const baseFile = join(at, 'base.vmdk');
  const base = await createLocalDisk(baseFile, DISK_BYTES);
  await base.write(0, randomBytes(BASE_DATA_BYTES));
  const baseAllocated = await allocatedBytes(base, 1);
  // Durable before the seed is copied from it (close alone does not write the grain tables).
  await base.flush();
  await base.close();
  const parent = await openLocalDisk(baseFile, true);
  const top = await VmdkDisk.createDelta(parent, await LocalFile.open(join(at, 'delta.vmdk'), { create: true }), 'base.vmdk');
  for (const b of DELTA_DATA_BLOCKS) await top.write(b * BLOCK_BYTES, randomBytes(BLOCK_BYTES));
  // Zeros over the base's data: a seeded target must get them, or it would show the base's bytes there.
  await top.write(DELTA_ZERO_BLOCK * BLOCK_BYTES, new Uint8Array(BLOCK_BYTES));
  const level = (d: VmdkDisk, path: string, allocated: number): ChainLevelSpec => ({
    path, cid: formatCid(d.cid), parentCid: formatCid(d.parentCid), capacityBytes: DISK_BYTES, allocatedBytes: allocated,
  });
  const chain = [level(top, 'vm/delta.vmdk', await allocatedBytes(top, 1)), level(parent, 'vm/base.vmdk', baseAllocated)];
  return { top, chain, baseFile };
}

function sourceDisk(top: VmdkDisk, plan: PrepareDisk): MigrationSourceDisk {
  return {
    plan,
    // Nothing but the test writes this disk, and only before the migration: no write to report.
    track: (blockBytes) => new ChangedBlocks(DISK_BYTES, blockBytes),
    untrack: () => undefined,
    forEachAllocatedRange: (fn) => top.forEachAllocatedRange(fn),
    forEachAllocatedRangeInTop: (levels, fn) => top.forEachAllocatedRangeInTop(levels, fn),
    read: (offsetBytes, buf) => top.read(offsetBytes, buf),
    release: () => Promise.resolve(),
    reacquire: () => Promise.resolve(),
    released: false,
  };
}

/** How the test's target treats the disk PREPARE announces. */
interface TargetBehaviour {
  /** 'seed': a delta over a copy of the source's base, base marked migrate:false; 'old': a fresh disk and no `prepared` (an older target). */
  readonly mode: 'seed' | 'old';
  verifySeed(signal: AbortSignal): Promise<void>;
  /** What the target says it verifies (default: the seed file's size). */
  readonly verifyBytes?: number;
  /** The target's idle timeout (default INCOMING_IDLE_TIMEOUT_MS). */
  readonly idleTimeoutMs?: number;
}

class TestTarget {
  readonly stored = new Map<string, StoredOutcome>();
  disk: { top: VmdkDisk; files: string[]; discarded: boolean } | null = null;
  adopted: Vm | null = null;
  verifyCalls = 0;
  readonly receiver: MigrationReceiver;
  /** Resolves with the first outcome the target records (after it discarded the disk, for an abort). */
  readonly recorded: Promise<StoredOutcome>;
  private onRecorded: (o: StoredOutcome) => void = () => undefined;

  constructor(private readonly at: string, private readonly source: SourceChain, private readonly behaviour: TargetBehaviour, readonly log: string[]) {
    this.recorded = new Promise((resolve) => { this.onRecorded = resolve; });
    const hooks: ReceiverHooks = {
      admit: () => undefined,
      adopt: (vm) => { this.adopted = vm; return Promise.resolve(); },
      prepareDisk: (_id, _vm, plan) => this.prepareDisk(plan),
      recordOutcome: (id, outcome) => { this.stored.set(id, outcome); this.onRecorded(outcome); return Promise.resolve(); },
      storedOutcome: (id) => Promise.resolve(this.stored.get(id) ?? null),
      log: (line) => { log.push(`target: ${line}`); },
    };
    this.receiver = new MigrationReceiver(hooks, tcpTransport, { host: '127.0.0.1', port: 0 }, ...(behaviour.idleTimeoutMs !== undefined ? [behaviour.idleTimeoutMs] : []));
  }

  private async prepareDisk(plan: PrepareDisk): Promise<IncomingDisk> {
    if (plan.mode !== 'copy') throw new FerryError('MIGRATION_REFUSED', 'this test copies');
    await mkdir(this.at, { recursive: true });
    const topFile = join(this.at, 'disk.vmdk');
    let top: VmdkDisk;
    let prepared: PreparedDisk | undefined;
    const files = [topFile];
    if (this.behaviour.mode === 'seed') {
      const chain = plan.chain ?? [];
      const seedFile = join(this.at, 'seed-base.vmdk');
      await copyFile(this.source.baseFile, seedFile);
      files.push(seedFile);
      const parent = await openLocalDisk(seedFile, true);
      assert.equal(formatCid(parent.cid), chain.at(-1)?.cid, 'the seed is the announced base');
      top = await VmdkDisk.createDelta(parent, await LocalFile.open(topFile, { create: true }), 'seed-base.vmdk');
      prepared = {
        chain: chain.map((l, i) => ({ path: l.path, cid: l.cid, migrate: i < chain.length - 1 })),
        seedPath: 'seed-base.vmdk', verifyBytes: this.behaviour.verifyBytes ?? (await stat(seedFile)).size,
      };
    } else {
      top = await createLocalDisk(topFile, plan.capacityBytes);
    }
    const disk = { top, files, discarded: false };
    this.disk = disk;
    const behaviour = this.behaviour;
    return {
      backend: blockBackend(top, plan.capacityBytes),
      write: (offsetBytes, data) => top.write(offsetBytes, data),
      flush: () => top.flush(),
      ...(prepared !== undefined ? { prepared } : {}),
      verifySeed: (signal) => { this.verifyCalls++; return behaviour.verifySeed(signal); },
      activate: () => Promise.resolve(),
      discard: async () => {
        disk.discarded = true;
        await top.close();
        for (const f of files) await rm(f, { force: true });
      },
    };
  }
}

/** Frames seen between source and target, in order, with the test's own marks between them. */
type Seen = { dir: 'out' | 'back'; command: number; requestId: number; conn: number } | { mark: string };

/** A TCP proxy that forwards byte for byte and notes every frame header in each direction. */
async function frameProxy(to: { host: string; port: number }, seen: Seen[], onFrame: () => void): Promise<{ port: number; close(): Promise<void> }> {
  let conns = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((down: Socket) => {
    const conn = conns++;
    const up = createConnection(to);
    for (const s of [down, up]) { sockets.add(s); s.on('close', () => { sockets.delete(s); }); }
    const watch = (from: Socket, into: Socket, dir: 'out' | 'back'): void => {
      let pending = Buffer.alloc(0);
      from.on('data', (chunk: Buffer) => {
        into.write(chunk);
        pending = Buffer.concat([pending, chunk]);
        while (pending.length >= HEADER_BYTES) {
          const length = pending.readUInt32LE(12);
          if (pending.length < HEADER_BYTES + length) break;
          seen.push({ dir, command: pending[5] ?? 0, requestId: pending.readUInt32LE(8), conn });
          pending = pending.subarray(HEADER_BYTES + length);
          onFrame();
        }
      });
      from.on('close', () => { into.destroy(); });
      from.on('error', () => { into.destroy(); });
    };
    watch(down, up, 'out');
    watch(up, down, 'back');
  });
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve); });
  return {
    port: (server.address() as { port: number }).port,
    close: () => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => { resolve(); }); }),
  };
}

interface Run {
  readonly record: MigrationRecord;
  readonly vm: Vm;
  readonly source: SourceChain;
  readonly target: TestTarget;
  readonly seen: Seen[];
  readonly log: string[];
}

const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close().catch(() => undefined);
});

/** One migration of a VM with the delta-over-base disk to a target behaving as told. */
async function migrate(name: string, behaviour: TargetBehaviour, onFrame: (seen: Seen[]) => void = () => undefined, options: MigrationOptions = {}): Promise<Run> {
  const log: string[] = [];
  const source = await makeSourceChain(join(dir, name, 'source'));
  open.push({ close: () => source.top.close() });
  const target = new TestTarget(join(dir, name, 'target'), source, behaviour, log);
  const address = await target.receiver.listen();
  open.push({ close: () => target.receiver.close() });
  open.push({ close: async () => { await target.adopted?.stop(); if (target.disk !== null && !target.disk.discarded) await target.disk.top.close(); } });
  const seen: Seen[] = [];
  const proxy = await frameProxy(address, seen, () => { onFrame(seen); });
  open.push(proxy);
  const proxyPort = proxy.port;
  const peer: MigrationTargetPeer = {
    label: 'test-target',
    requestTicket: async () => {
      const t = await target.receiver.issueTicket();
      return { migrationId: t.migrationId, ticket: t.ticket, address: { host: '127.0.0.1', port: proxyPort }, expiresInMs: t.expiresInMs };
    },
    incomingOutcome: (id) => target.receiver.outcome(id),
  };
  const image = new Uint8Array(await readFile(guestImagePath('dirtier')));
  const vm = Vm.create(image, { name, memoryBytes: RAM_BYTES, vcpus: 1, cmdline: 'hot=256KiB' });
  open.push({ close: () => vm.stop() });
  await vm.start();
  const plan: PrepareDisk = { mode: 'copy', datastore: 'ds1', path: 'vm/disk.vmdk', capacityBytes: DISK_BYTES, blockBytes: BLOCK_BYTES, chain: source.chain };
  const job = new MigrationJob(vm, image, peer, tcpTransport, options, sourceDisk(source.top, plan), (line) => { log.push(`source: ${line}`); });
  const record = await job.run();
  return { record, vm, source, target, seen, log };
}

/** Both chains read in full must be equal (the target's through its delta over the seed). */
async function assertSameContent(a: VmdkDisk, b: VmdkDisk): Promise<void> {
  const step = 1 * MiB;
  const x = Buffer.alloc(step);
  const y = Buffer.alloc(step);
  for (let at = 0; at < DISK_BYTES; at += step) {
    await a.read(at, x);
    await b.read(at, y);
    assert.ok(x.equals(y), `the target's disk differs from the source's in [${at}, ${at + step})`);
  }
}

const deltaDataBytes = DELTA_DATA_BLOCKS.length * BLOCK_BYTES;
const rounds = (seen: Seen[]): Seen[] => seen.filter((s) => 'command' in s && s.dir === 'out' && s.command === Command.ROUND);

describe('copy-mode migration over a seeded base', () => {
  it('moves only the delta: the record counts the seeded base, and the target reads what the source reads', async () => {
    const run = await migrate('seeded', { mode: 'seed', verifySeed: () => Promise.resolve() });
    const { record, target, source } = run;
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    const disk = record.disk;
    assert.ok(disk !== null);
    assert.equal(disk.seededLevels, 1);
    assert.equal(disk.seededBytes, source.chain[1]?.allocatedBytes);
    assert.ok((disk.seededBytes ?? 0) >= BASE_DATA_BYTES);
    assert.equal(disk.seedPath, 'seed-base.vmdk');
    assert.ok((disk.seedVerifyBytes ?? 0) > BASE_DATA_BYTES);
    assert.deepEqual(disk.chain?.map((l) => l.migrate), [true, false]);
    // The delta's data blocks move (its zero block as a zero entry, no bytes), the base's MiB does not.
    assert.equal(disk.sentBytes, deltaDataBytes);
    assert.equal(target.verifyCalls, 1);
    assert.equal(run.vm.state, 'stopped');
    assert.ok(target.adopted !== null && target.disk !== null);
    await assertSameContent(source.top, target.disk.top);
    assert.ok(run.log.some((l) => /1 of 2 levels \(\d+ bytes\) stay/.test(l)), 'the source logs what is seeded');
    assert.ok(run.log.some((l) => /seed verified \(\d+ bytes\) in \d+ ms/.test(l)), 'the target logs the verification');
  });

  it('a damaged seed fails round 1 with SEED_DAMAGED: the VM keeps running on the source, the target discards its disk', async () => {
    const run = await migrate('damaged', { mode: 'seed', verifySeed: () => Promise.reject(new FerryError('SEED_DAMAGED', 'seed-base.vmdk: sha256 differs from the seed manifest')) });
    const { record, target } = run;
    assert.equal(record.outcome, 'failed');
    assert.equal(record.error?.code, 'SEED_DAMAGED');
    assert.match(record.error?.message ?? '', /sha256 differs/);
    assert.equal(run.vm.state, 'running', 'the VM runs on at the source');
    assert.equal(record.rounds.length, 0, 'no round completed');
    // The target ends its side on its own time (the ERROR reply closed the connection): wait for its record.
    assert.equal(await target.recorded, 'aborted');
    assert.equal(target.adopted, null);
    assert.ok(target.disk?.discarded === true, 'the target discarded its disk');
    await assert.rejects(stat(join(dir, 'damaged', 'target', 'disk.vmdk')), { code: 'ENOENT' });
    const outcome = await target.receiver.outcome([...target.stored.keys()][0] ?? '');
    assert.equal(outcome.state, 'aborted');
  });

  it('no second ROUND before the seed is verified: round 1 is answered only after the verification ends', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => { release = resolve; });
    let released = false;
    const releaseOnce = (seen: Seen[]): void => {
      if (released) return;
      released = true;
      seen.push({ mark: 'release' });
      release();
    };
    let holdTimer: NodeJS.Timeout | null = null;
    const run = await migrate('held', { mode: 'seed', verifySeed: () => gate }, (seen) => {
      if (released) return;
      const first = rounds(seen)[0];
      if (first === undefined || !('command' in first)) return;
      // A reply to round 1 while the seed is held is the failure this test looks for: release at once so it shows.
      if (seen.some((s) => 'command' in s && s.dir === 'back' && s.conn === first.conn && s.requestId === first.requestId)) { releaseOnce(seen); return; }
      holdTimer ??= setTimeout(() => { releaseOnce(seen); }, HOLD_AFTER_ROUND_MS);
    });
    if (holdTimer !== null) clearTimeout(holdTimer);
    assert.equal(run.record.outcome, 'succeeded', JSON.stringify(run.record.error));
    const at = run.seen.findIndex((s) => 'mark' in s);
    assert.ok(at >= 0, 'round 1 reached the target and the seed was held');
    const before = run.seen.slice(0, at);
    assert.equal(rounds(before).length, 1, 'exactly round 1 was sent while the seed was held');
    const first = rounds(before)[0];
    assert.ok(first !== undefined && 'command' in first);
    assert.ok(!before.some((s) => 'command' in s && s.dir === 'back' && s.conn === first.conn && s.requestId === first.requestId), 'round 1 was not answered before the release');
    assert.ok(run.record.rounds.length >= 1);
  });

  it('round 1\'s ROUND may take as long as hashing the announced verifyBytes takes at the minimum rate, beyond the request timeout', async () => {
    const requestTimeoutMs = 1_000;
    // The target's verification outlasts the request timeout, but not the allowance for what it said it verifies.
    const verifyMs = 1_500;
    const verifySeed = (signal: AbortSignal): Promise<void> => sleep(verifyMs, undefined, { signal });
    const allowed = await migrate('slow-seed', { mode: 'seed', verifySeed, verifyBytes: 2 * MIN_SEED_VERIFY_BYTES_PER_SEC }, undefined, { requestTimeoutMs });
    assert.equal(allowed.record.outcome, 'succeeded', JSON.stringify(allowed.record.error));
    // The same verification, announced as (almost) nothing to verify: round 1 times out, the VM stays.
    const timedOut = await migrate('slow-seed-unannounced', { mode: 'seed', verifySeed, verifyBytes: 1 }, undefined, { requestTimeoutMs });
    assert.equal(timedOut.record.outcome, 'failed');
    assert.equal(timedOut.record.error?.code, 'MIGRATION_TIMEOUT');
    assert.match(timedOut.record.error?.message ?? '', /ROUND/);
    assert.equal(timedOut.vm.state, 'running');
  });

  it('the target\'s idle timeout does not fire while the target itself verifies its seed', async () => {
    // Round 1's ROUND is the source's last request until the verification ends: a target that counted
    // its own verification as the source's silence would abort after idleTimeoutMs.
    const idleTimeoutMs = 1_000;
    const verifySeed = (signal: AbortSignal): Promise<void> => sleep(2.5 * idleTimeoutMs, undefined, { signal });
    const run = await migrate('idle-while-verifying', { mode: 'seed', verifySeed, idleTimeoutMs });
    assert.equal(run.record.outcome, 'succeeded', JSON.stringify(run.record.error));
    assert.ok(!run.log.some((l) => /no request from the source/.test(l)), run.log.join('\n'));
  });

  it('an older target (its PREPARE answer has no disk part) gets everything: base and delta', async () => {
    const run = await migrate('old-target', { mode: 'old', verifySeed: () => Promise.resolve() });
    const { record, target, source } = run;
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    const disk = record.disk;
    assert.ok(disk !== null);
    assert.equal(disk.seededLevels, 0);
    assert.equal(disk.seededBytes, 0);
    assert.equal(disk.seedPath, null);
    assert.deepEqual(disk.chain?.map((l) => l.migrate), [true, true]);
    // Every block with data: the base's MiB (less the block the delta zeroed) and the delta's blocks past it.
    const moved = BASE_DATA_BYTES - BLOCK_BYTES + DELTA_DATA_BLOCKS.filter((b) => b * BLOCK_BYTES >= BASE_DATA_BYTES).length * BLOCK_BYTES;
    assert.equal(disk.sentBytes, moved);
    assert.ok(target.disk !== null);
    await assertSameContent(source.top, target.disk.top);
  });
});
