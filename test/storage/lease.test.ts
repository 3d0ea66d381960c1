/**
 * Disk leases on real files: take, refuse a live lease, renew by heartbeat, break an expired one,
 * N concurrent breakers (in this process and in child processes) of which exactly one wins, loss
 * reported by an event, release. Short timings keep it fast; every wait is on an event or a
 * condition with a deadline.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, rename, stat, utimes, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { FerryError, type FerryErrorCode } from '../../src/lib/errors.js';
import {
  LEASE_FORMAT_VERSION, Lease, checkLeaseTiming, encodeLeaseRecord, lockPathOf, readLease,
  type LeaseLost, type LeaseOwner, type LeaseRecord, type LeaseTiming,
} from '../../src/storage/lease.js';

/** Fast enough for a test, slow enough that a loaded 2-core machine renews in time (8 beats per lease). */
const TIMING: LeaseTiming = { durationMs: 1_600, renewIntervalMs: 200, clockSkewMs: 100 };
/** Any wait in this file gives up after this. */
const WAIT_MS = 15_000;
const WORKER = fileURLToPath(new URL('../helpers/lease-worker.js', import.meta.url));

let n = 0;
function owner(hostName: string): LeaseOwner {
  return { hostName, hostId: (++n).toString(16).padStart(16, '0') };
}

async function rejectsWithCode(p: Promise<unknown>, code: FerryErrorCode): Promise<FerryError> {
  const err = await p.then(() => null, (e: unknown) => e);
  assert.ok(err instanceof FerryError, `expected ${code}, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  return err;
}

/** A lock left by a host that died long ago (or one that is still fresh, with `expiresInMs` > 0). */
async function plantLock(filePath: string, hostName: string, expiresInMs: number): Promise<LeaseRecord> {
  const now = Date.now();
  const r: LeaseRecord = {
    version: LEASE_FORMAT_VERSION, hostName, hostId: 'deadbeefdeadbeef', leaseId: 'ab'.repeat(16),
    generation: 7, acquiredAtMs: now - 60_000, renewedAtMs: now - 30_000, expiresAtMs: now + expiresInMs,
  };
  await writeFile(`${lockPathOf(filePath)}.plant`, encodeLeaseRecord(r));
  await rename(`${lockPathOf(filePath)}.plant`, lockPathOf(filePath));
  return r;
}

function lostEvent(lease: Lease): Promise<LeaseLost> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error('no lost event in time')); }, WAIT_MS);
    lease.once('lost', (l) => { clearTimeout(timer); resolve(l); });
  });
}

describe('disk leases', () => {
  let dir = '';
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-lease-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });
  const file = (name: string): string => join(dir, name);

  it('take writes the owner, generation 1 and an expiry; a second taker (another host or this one) is refused with DISK_LOCKED naming the owner', async () => {
    const a = owner('a');
    const lease = await Lease.take(file('one.raw'), a, TIMING);
    try {
      const r = await readLease(file('one.raw'));
      assert.ok(r !== null);
      assert.deepEqual([r.hostName, r.hostId, r.generation], ['a', a.hostId, 1]);
      assert.ok(r.expiresAtMs > Date.now() && r.expiresAtMs <= Date.now() + TIMING.durationMs);
      assert.equal(lease.broke, null);
      const err = await rejectsWithCode(Lease.take(file('one.raw'), owner('b'), TIMING), 'DISK_LOCKED');
      assert.deepEqual(err.details.owner, { hostName: 'a', hostId: a.hostId });
      assert.equal(typeof err.details.expiresAt, 'string');
      assert.ok(Date.parse(String(err.details.expiresAt)) >= r.expiresAtMs - 1);
      await rejectsWithCode(Lease.take(file('one.raw'), a, TIMING), 'DISK_LOCKED');
    } finally {
      await lease.release();
    }
  });

  it('the heartbeat renews it past its first expiry (new generations, later expiries); it stays refused to others', async () => {
    const lease = await Lease.take(file('renew.raw'), owner('a'), TIMING);
    try {
      const firstExpiry = lease.expiresAtMs;
      const renewals: LeaseRecord[] = [];
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => { reject(new Error(`renewed ${renewals.length} times only`)); }, WAIT_MS);
        lease.on('renewed', (r) => {
          renewals.push(r);
          if (Date.now() > firstExpiry + TIMING.clockSkewMs) { clearTimeout(timer); resolve(); }
        });
      });
      assert.ok(renewals.length >= 2);
      assert.deepEqual(renewals.map((r) => r.generation), renewals.map((_, i) => i + 2), 'generations count up by one');
      assert.ok(lease.expiresAtMs > firstExpiry);
      assert.equal((await readLease(file('renew.raw')))?.generation, lease.generation);
      // Past the first expiry, and still live: nobody can break it.
      await rejectsWithCode(Lease.take(file('renew.raw'), owner('b'), TIMING), 'DISK_LOCKED');
    } finally {
      await lease.release();
    }
  });

  it('release removes the lock (another may take it), is idempotent, and a released lease refuses writes (LEASE_LOST)', async () => {
    const lease = await Lease.take(file('rel.raw'), owner('a'), TIMING);
    await lease.release();
    await lease.release();
    assert.equal(await readLease(file('rel.raw')), null);
    await assert.rejects(stat(lockPathOf(file('rel.raw'))), { code: 'ENOENT' }, 'no lock file left');
    assert.throws(() => { lease.check(); }, (e: unknown) => e instanceof FerryError && e.code === 'LEASE_LOST');
    const next = await Lease.take(file('rel.raw'), owner('b'), TIMING);
    assert.equal(next.broke, null, 'a released lease is free, not broken');
    await next.release();
  });

  it('an expired lease (its host died) is broken and taken; a fresh one is not; an unreadable lock lives by its mtime', async () => {
    await plantLock(file('dead.raw'), 'dead', -(TIMING.clockSkewMs + 50));
    const lease = await Lease.take(file('dead.raw'), owner('b'), TIMING);
    assert.equal(lease.broke?.hostName, 'dead');
    assert.equal((await readLease(file('dead.raw')))?.hostName, 'b');
    await lease.release();
    // Within the clock-skew allowance past its expiry a lease is still respected.
    await plantLock(file('skew.raw'), 'slow-clock', -10);
    await rejectsWithCode(Lease.take(file('skew.raw'), owner('b'), TIMING), 'DISK_LOCKED');
    // Garbage in a lock file: live while recent (owner unknown), breakable once old.
    await writeFile(lockPathOf(file('junk.raw')), 'not a lease');
    const err = await rejectsWithCode(Lease.take(file('junk.raw'), owner('b'), TIMING), 'DISK_LOCKED');
    assert.equal(err.details.owner, null);
    const old = new Date(Date.now() - 10 * TIMING.durationMs);
    await utimes(lockPathOf(file('junk.raw')), old, old);
    const taken = await Lease.take(file('junk.raw'), owner('b'), TIMING);
    assert.equal(taken.broke, null, 'an unreadable lock has no owner to report');
    assert.equal((await readLease(file('junk.raw')))?.hostName, 'b');
    await taken.release();
  });

  it('a lease whose lock is replaced or removed is reported lost by an event; it refuses writes and its release leaves the new lock alone', async () => {
    const replaced = await Lease.take(file('lost.raw'), owner('a'), TIMING);
    const lost = lostEvent(replaced);
    const usurper = await plantLock(file('lost.raw'), 'usurper', 60_000);
    const info = await lost;
    assert.deepEqual([info.reason, info.by?.hostName], ['replaced', 'usurper']);
    assert.equal(replaced.held, false);
    assert.throws(() => { replaced.check(); }, (e: unknown) => e instanceof FerryError && e.code === 'LEASE_LOST');
    await replaced.release();
    assert.equal((await readLease(file('lost.raw')))?.leaseId, usurper.leaseId, 'the usurper\'s lock is untouched');

    const removed = await Lease.take(file('gone.raw'), owner('a'), TIMING);
    const gone = lostEvent(removed);
    await rm(lockPathOf(file('gone.raw')));
    assert.equal((await gone).reason, 'removed');
    await removed.release();
  });

  it('N concurrent breakers of one stale lease in this process: exactly one wins each round, the rest get DISK_LOCKED', async () => {
    const BREAKERS = 12;
    const ROUNDS = 15;
    for (let round = 0; round < ROUNDS; round++) {
      const path = file(`race-${round}.raw`);
      await plantLock(path, 'dead', -10 * TIMING.durationMs);
      const results = await Promise.allSettled(Array.from({ length: BREAKERS }, (_, i) => Lease.take(path, owner(`b${i}`), TIMING)));
      const won = results.filter((r): r is PromiseFulfilledResult<Lease> => r.status === 'fulfilled');
      const refused = results.filter((r) => r.status === 'rejected' && r.reason instanceof FerryError && r.reason.code === 'DISK_LOCKED');
      assert.equal(won.length, 1, `round ${round}: exactly one winner`);
      assert.equal(refused.length, BREAKERS - 1, `round ${round}: every other breaker refused`);
      const winner = won[0]?.value;
      assert.ok(winner !== undefined);
      assert.equal((await readLease(path))?.leaseId, winner.record.leaseId, 'the lock on disk is the winner\'s');
      await winner.release();
    }
  });

  it('N concurrent breakers in child processes: exactly one wins each round', async () => {
    const WORKERS = 6;
    const ROUNDS = 3;
    for (let round = 0; round < ROUNDS; round++) {
      const path = file(`proc-race-${round}.raw`);
      await plantLock(path, 'dead', -10 * TIMING.durationMs);
      const children = Array.from({ length: WORKERS }, (_, i) => spawn(process.execPath, [WORKER, JSON.stringify({ filePath: path, hostName: `w${i}`, timing: TIMING })], { stdio: ['pipe', 'pipe', 'inherit'] }));
      const timer = setTimeout(() => { for (const c of children) c.kill('SIGKILL'); }, WAIT_MS);
      try {
        const readers = children.map((c) => createInterface({ input: c.stdout }));
        const firstLines = readers.map((r) => once(r, 'line').then(([l]) => String(l)));
        assert.deepEqual(await Promise.all(firstLines), children.map(() => 'ready'));
        const results = readers.map((r) => once(r, 'line').then(([l]) => JSON.parse(String(l)) as { won: boolean; hostName: string; code?: string }));
        for (const c of children) c.stdin.write('go\n');
        const outcome = await Promise.all(results);
        assert.equal(outcome.filter((o) => o.won).length, 1, `round ${round}: exactly one winner: ${JSON.stringify(outcome)}`);
        assert.ok(outcome.filter((o) => !o.won).every((o) => o.code === 'DISK_LOCKED'), JSON.stringify(outcome));
        // The winner broke the dead lock itself, or linked cleanly right after another breaker removed it.
        const winner = outcome.find((o) => o.won);
        assert.equal((await readLease(path))?.hostName, winner?.hostName, 'the lock on disk is the winner\'s');
      } finally {
        for (const c of children) c.stdin.end();
        await Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : once(c, 'exit'))));
        clearTimeout(timer);
      }
      assert.equal(await readLease(path), null, 'the winner released on exit');
    }
  });

  it('timings under which a heartbeat cannot keep a lease are refused', () => {
    for (const t of [{ durationMs: 100, renewIntervalMs: 60, clockSkewMs: 0 }, { durationMs: 100, renewIntervalMs: 0, clockSkewMs: 0 }, { durationMs: NaN, renewIntervalMs: 1, clockSkewMs: 0 }, { durationMs: 100, renewIntervalMs: 10, clockSkewMs: -1 }]) {
      assert.throws(() => checkLeaseTiming(t), (e: unknown) => e instanceof FerryError && e.code === 'INVALID_ARGUMENT', JSON.stringify(t));
    }
  });
});
