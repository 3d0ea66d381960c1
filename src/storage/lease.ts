/**
 * The write lease of one disk file: an on-disk lock `<file>.lck` next to it, so that two hosts
 * mounting one shared directory never open one disk for writing at the same time. The protocol
 * (docs/design/datastores.md has the sequence diagrams):
 *
 * - **take**: write the record (owner host name and id, a random lease id, generation 1, expiry)
 *   to a private temporary file, fsync it, then `link(tmp, <file>.lck)`. link(2) creates the name
 *   in one step and fails with EEXIST if it exists, so exactly one of any number of concurrent
 *   takers gets it, and no reader ever sees a half-written lock (the content was complete before
 *   the name appeared — an O_EXCL create followed by a write would show an empty lock for a moment).
 * - **renew** (the heartbeat, every renewIntervalMs): check the lock is still ours (same lease id),
 *   write the next generation with a later expiry to a temporary file and rename(2) it over the
 *   lock (atomic replace). Never after our own expiry: see "clocks" below.
 * - **refuse**: a taker that finds a live lock held by anyone (another host, or this host's other
 *   open) gets DISK_LOCKED with the owner and the expiry.
 * - **break**: a lock whose expiry (+ clockSkewMs) has passed belongs to a dead or stuck host. Its
 *   breakers serialize on a marker file named after that lock version's identity (inode, mtime,
 *   bytes), created with O_EXCL; the marker's holder looks again and unlinks the lock only if it is
 *   still that very version. Then it takes as above (link) — so of N concurrent breakers exactly one
 *   ends up holding the lease, and a fresh lock is never removed. (Renaming the stale lock aside
 *   without a marker is not enough: a slow breaker would rename a *fresh* lock aside, and putting it
 *   back races with takers — the test with N breakers caught exactly that.)
 * - **release** (close): unlink the lock if it is still ours.
 * - **lost**: a renewal that finds the lock gone or someone else's, or that could not renew before
 *   the expiry, emits `lost` (and the leased file refuses further writes with LEASE_LOST).
 *
 * Clocks: expiry is wall-clock time, compared across hosts. A breaker waits until
 * expiresAtMs + clockSkewMs, and an owner never renews at or after expiresAtMs, so the two never
 * overlap as long as the hosts' clocks agree within clockSkewMs and an owner is not stalled for
 * longer than that between its last check and its rename. A shared file system must give link
 * (no-replace) and rename (replace) their local atomicity and show one host's rename to the others
 * at once (NFSv3+ with the lock directory not attribute-cached beyond that; see the design note).
 */
import { EventEmitter } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { link, lstat, open, rename, unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { FerryError, errnoCode, errorMessage } from '../lib/errors.js';
import { LEASE_SUFFIX } from './datastore.js';

/** How long a lease lasts without renewal: a dead host's disks can be taken over this long after its last heartbeat. */
export const LEASE_DURATION_MS = 10_000;
/** Heartbeat period: five renewals per lease duration, so a few slow or failed ones lose nothing. */
export const LEASE_RENEW_INTERVAL_MS = 2_000;
/** How far hosts' clocks may disagree (NTP keeps them far closer); a breaker waits this long past the expiry. */
export const LEASE_CLOCK_SKEW_MS = 1_000;
/** A lock file is a few hundred bytes of JSON; a larger one is not ours and is not read. */
export const MAX_LEASE_FILE_BYTES = 4096;
/** Take attempts (each can lose a race to a concurrent taker or breaker) before giving up as DISK_LOCKED. */
export const MAX_TAKE_ATTEMPTS = 8;
/** Levels of break markers passed over (each one's breaker died mid-break) before giving up. */
export const MAX_BREAK_LEVELS = 4;
/** A breaker that finds another breaker at work looks again after this (a break is a few file operations). */
export const BREAK_RETRY_MS = 20;
export const LEASE_FORMAT_VERSION = 1;
/** Host ids are random: 64 bits in hex, new each time a host starts. */
export const HOST_ID_PATTERN = /^[0-9a-f]{16}$/;

export interface LeaseOwner {
  readonly hostName: string;
  /** Unique to one run of one host: a restarted host does not mistake its old leases for live ones. */
  readonly hostId: string;
}

export interface LeaseTiming {
  readonly durationMs: number;
  readonly renewIntervalMs: number;
  readonly clockSkewMs: number;
}

export const DEFAULT_LEASE_TIMING: LeaseTiming = {
  durationMs: LEASE_DURATION_MS, renewIntervalMs: LEASE_RENEW_INTERVAL_MS, clockSkewMs: LEASE_CLOCK_SKEW_MS,
};

/** Refuses timings under which a heartbeat could not keep a lease (renewal must fit well inside a duration). */
export function checkLeaseTiming(t: LeaseTiming): LeaseTiming {
  const ok = Number.isFinite(t.durationMs) && Number.isFinite(t.renewIntervalMs) && Number.isFinite(t.clockSkewMs)
    && t.renewIntervalMs > 0 && t.clockSkewMs >= 0 && t.renewIntervalMs * 2 <= t.durationMs;
  if (!ok) throw new FerryError('INVALID_ARGUMENT', `lease timing ${JSON.stringify(t)}: renewal interval must be positive and at most half the duration`);
  return t;
}

/** Refuses an owner whose locks nobody could read back (its hostId must match HOST_ID_PATTERN). */
export function checkLeaseOwner(owner: LeaseOwner): LeaseOwner {
  if (!HOST_ID_PATTERN.test(owner.hostId) || owner.hostName.length > 256) {
    throw new FerryError('INVALID_ARGUMENT', `lease owner ${JSON.stringify(owner).slice(0, 200)}: hostId must be 16 lowercase hex digits and hostName at most 256 characters`);
  }
  return owner;
}

const leaseRecordSchema = z.object({
  version: z.literal(LEASE_FORMAT_VERSION),
  hostName: z.string().max(256),
  hostId: z.string().regex(HOST_ID_PATTERN),
  leaseId: z.string().regex(/^[0-9a-f]{32}$/),
  generation: z.number().int().positive(),
  acquiredAtMs: z.number(),
  renewedAtMs: z.number(),
  expiresAtMs: z.number(),
}).strict();
/** What a lock file holds (JSON, one line). */
export type LeaseRecord = z.infer<typeof leaseRecordSchema>;

export function encodeLeaseRecord(r: LeaseRecord): string {
  return `${JSON.stringify(r)}\n`;
}

export function lockPathOf(filePath: string): string {
  return `${filePath}${LEASE_SUFFIX}`;
}

/** A lock as read from disk: its record (null if unreadable), its identity (inode + bytes), and when it expires. */
interface Observed {
  readonly record: LeaseRecord | null;
  readonly raw: string;
  readonly ino: number;
  readonly mtimeMs: number;
  readonly expiresAtMs: number;
}

/** The lock at `lockPath`, or null if there is none. */
async function observe(lockPath: string, timing: LeaseTiming): Promise<Observed | null> {
  let fh;
  try {
    fh = await open(lockPath, 'r');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return null;
    throw new FerryError('STORE_IO', `cannot read lease ${lockPath}: ${errorMessage(err)}`);
  }
  try {
    const st = await fh.stat();
    const buf = Buffer.alloc(Math.min(st.size, MAX_LEASE_FILE_BYTES));
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    const raw = buf.subarray(0, bytesRead).toString('utf8');
    let record: LeaseRecord | null = null;
    if (st.size <= MAX_LEASE_FILE_BYTES) {
      try { record = leaseRecordSchema.parse(JSON.parse(raw)); } catch { record = null; }
    }
    // A lock we cannot read is still a lock: it lives as long as a lease would from its last write
    // (renewals replace the file, so its mtime is the last heartbeat).
    return { record, raw, ino: st.ino, mtimeMs: st.mtimeMs, expiresAtMs: record?.expiresAtMs ?? st.mtimeMs + timing.durationMs };
  } finally {
    await fh.close();
  }
}

/** The record of the lock on `filePath` (for inspection), or null if there is none or it is unreadable. */
export async function readLease(filePath: string, timing: LeaseTiming = DEFAULT_LEASE_TIMING): Promise<LeaseRecord | null> {
  return (await observe(lockPathOf(filePath), timing))?.record ?? null;
}

function isLive(o: Observed, timing: LeaseTiming, nowMs: number): boolean {
  return nowMs <= o.expiresAtMs + timing.clockSkewMs;
}

function lockedError(label: string, o: Observed, self: LeaseOwner): FerryError {
  const r = o.record;
  const owner = r === null ? null : { hostName: r.hostName, hostId: r.hostId };
  const who = r === null ? 'an unreadable lock' : r.hostId === self.hostId ? `this host (${r.hostName}, another open)` : `host ${r.hostName} (${r.hostId})`;
  const expiresAt = new Date(o.expiresAtMs).toISOString();
  return new FerryError('DISK_LOCKED', `${label} is open for writing by ${who}; its lease expires at ${expiresAt} unless renewed`, {
    owner, expiresAt, generation: r?.generation ?? null,
  });
}

/** Writes a complete lock record to a new private file and makes it durable before any name points to it. */
async function writeRecord(path: string, r: LeaseRecord): Promise<void> {
  const fh = await open(path, 'wx');
  try {
    await fh.writeFile(encodeLeaseRecord(r));
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function unlinkQuietly(path: string): Promise<void> {
  try { await unlink(path); } catch { /* already gone: nothing to tidy */ }
}

/** Identity of one version of a lock: renewals replace the file, so any change gives a new identity. */
function identityOf(o: Observed): string {
  return createHash('sha256').update(`${o.ino}:${o.mtimeMs}:`).update(o.raw).digest('hex').slice(0, 24);
}

type BreakResult = 'broken' | 'changed' | 'busy';

/**
 * Breaks the stale lock `judged` at `lockPath` (see the header). The breakers of one stale lock
 * first create a marker named after its identity with O_EXCL, so one of them at a time looks again
 * and, if the lock is still that very stale version, unlinks it. Nothing else can change a stale
 * lock meanwhile: its owner neither renews nor releases after its expiry, and a taker links only
 * where no lock is. A marker whose breaker died (older than a lease duration) is passed over to
 * the next level's marker. Returns 'broken', 'changed' (the lock is no longer the judged one: look
 * again) or 'busy' (another breaker is at it now: look again shortly).
 */
async function breakStale(lockPath: string, judged: Observed, timing: LeaseTiming): Promise<BreakResult> {
  const id = identityOf(judged);
  const markers: string[] = [];
  try {
    for (let level = 0; level < MAX_BREAK_LEVELS; level++) {
      const marker = `${lockPath}.${id}.${level}.break`;
      try {
        await (await open(marker, 'wx')).close();
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') throw new FerryError('STORE_IO', `cannot break lease ${lockPath}: ${errorMessage(err)}`);
        markers.push(marker);
        let st;
        try { st = await lstat(marker); } catch { continue; /* finished meanwhile: take the next level */ }
        if (Date.now() - st.mtimeMs <= timing.durationMs) { markers.length = 0; return 'busy'; }
        continue; // its breaker died mid-break
      }
      markers.push(marker);
      const now = await observe(lockPath, timing);
      if (now === null || identityOf(now) !== id) return 'changed';
      await unlinkQuietly(lockPath);
      return 'broken';
    }
    return 'busy';
  } finally {
    // Ours (and dead breakers' below ours) are done with: a late breaker that creates one again looks and finds the lock changed.
    await Promise.all(markers.map(unlinkQuietly));
  }
}

/** Removes the lock of `filePath` if it is stale (a dead host's leftover); a live one is DISK_LOCKED. */
export async function clearStaleLease(filePath: string, label: string, self: LeaseOwner, timing: LeaseTiming = DEFAULT_LEASE_TIMING): Promise<void> {
  const lockPath = lockPathOf(filePath);
  for (let attempt = 0; attempt < MAX_TAKE_ATTEMPTS; attempt++) {
    const o = await observe(lockPath, timing);
    if (o === null) return;
    if (isLive(o, timing, Date.now())) throw lockedError(label, o, self);
    if (await breakStale(lockPath, o, timing) === 'busy') await sleep(BREAK_RETRY_MS);
  }
  throw new FerryError('DISK_LOCKED', `${label}: its lease kept changing while it was being cleared`);
}

export type LeaseLostReason = 'removed' | 'replaced' | 'expired';

export interface LeaseLost {
  readonly reason: LeaseLostReason;
  readonly message: string;
  /** Who holds the lock now, when someone does and it can be read. */
  readonly by: LeaseOwner | null;
}

interface LeaseEvents {
  /** The lease is no longer ours: stop writing. Emitted once; renewals stop. */
  lost: [LeaseLost];
  /** A heartbeat renewed it (generation and new expiry). */
  renewed: [LeaseRecord];
}

/** A write lease held by this process, renewed by its heartbeat until release() (or until it is lost). */
export class Lease extends EventEmitter<LeaseEvents> {
  private lostInfo: LeaseLost | null = null;
  private released = false;
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<void> | null = null;

  private constructor(
    readonly label: string,
    readonly lockPath: string,
    private current: LeaseRecord,
    private readonly timing: LeaseTiming,
    /** The stale lock this take broke (its dead owner), or null if the file was free. */
    readonly broke: LeaseRecord | null,
  ) {
    super();
    this.schedule();
  }

  /**
   * Takes the lease of `filePath` for `owner` (see the header for why this is atomic), or
   * DISK_LOCKED with details { owner, expiresAt, generation } if someone holds a live one.
   */
  static async take(filePath: string, owner: LeaseOwner, timing: LeaseTiming = DEFAULT_LEASE_TIMING, label: string = filePath): Promise<Lease> {
    checkLeaseTiming(timing);
    const lockPath = lockPathOf(filePath);
    const leaseId = randomBytes(16).toString('hex');
    const now = Date.now();
    const record: LeaseRecord = {
      version: LEASE_FORMAT_VERSION, hostName: owner.hostName, hostId: owner.hostId, leaseId,
      generation: 1, acquiredAtMs: now, renewedAtMs: now, expiresAtMs: now + timing.durationMs,
    };
    const tmp = `${lockPath}.${leaseId}.tmp`;
    try {
      await writeRecord(tmp, record);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') throw new FerryError('NOT_FOUND', `${label}: its directory does not exist`);
      throw new FerryError('STORE_IO', `cannot write lease ${lockPath}: ${errorMessage(err)}`);
    }
    let broke: LeaseRecord | null = null;
    try {
      for (let attempt = 0; attempt < MAX_TAKE_ATTEMPTS; attempt++) {
        try {
          await link(tmp, lockPath);
          return new Lease(label, lockPath, record, timing, broke);
        } catch (err) {
          if (errnoCode(err) !== 'EEXIST') throw new FerryError('STORE_IO', `cannot take lease ${lockPath}: ${errorMessage(err)}`);
        }
        const o = await observe(lockPath, timing);
        if (o === null) continue; // released or broken since our link: try again
        // On NFS a retransmitted link whose first reply was lost answers EEXIST although it worked.
        if (o.record?.leaseId === leaseId) return new Lease(label, lockPath, record, timing, broke);
        if (isLive(o, timing, Date.now())) throw lockedError(label, o, owner);
        const result = await breakStale(lockPath, o, timing);
        if (result === 'broken') broke = o.record;
        else if (result === 'busy') await sleep(BREAK_RETRY_MS);
      }
      throw new FerryError('DISK_LOCKED', `${label}: gave up taking its lease after ${MAX_TAKE_ATTEMPTS} attempts (other hosts are taking and breaking it)`, { owner: null, expiresAt: null, generation: null });
    } finally {
      await unlinkQuietly(tmp);
    }
  }

  get record(): LeaseRecord { return this.current; }
  get generation(): number { return this.current.generation; }
  get expiresAtMs(): number { return this.current.expiresAtMs; }
  /** Why the lease was lost, or null while it is held (or after a clean release). */
  get lost(): LeaseLost | null { return this.lostInfo; }
  get held(): boolean { return this.lostInfo === null && !this.released; }

  /** LEASE_LOST if the lease is not held: what a writer calls before every write. */
  check(): void {
    if (this.lostInfo !== null) throw new FerryError('LEASE_LOST', `${this.label}: write lease lost (${this.lostInfo.message}); writes are refused`, { reason: this.lostInfo.reason, by: this.lostInfo.by });
    if (this.released) throw new FerryError('LEASE_LOST', `${this.label}: write lease released; writes are refused`, { reason: 'released', by: null });
  }

  /** One renewal (the heartbeat calls this; exposed so that a caller can renew before a long operation). */
  renew(): Promise<void> {
    const run = (this.inFlight ?? Promise.resolve()).then(() => this.renewOnce());
    this.inFlight = run.catch(() => undefined);
    return run;
  }

  /** Stops the heartbeat and removes the lock if it is still ours. Idempotent. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.stopHeartbeat();
    await this.inFlight;
    if (this.lostInfo !== null) return;
    // Past our expiry the lock may be a breaker's to remove: an owner never touches a stale lock.
    if (Date.now() >= this.current.expiresAtMs) return;
    const o = await observe(this.lockPath, this.timing);
    if (o?.record?.leaseId === this.current.leaseId) await unlinkQuietly(this.lockPath);
  }

  private async renewOnce(): Promise<void> {
    this.check();
    if (Date.now() >= this.current.expiresAtMs) return this.lose('expired', 'not renewed before its expiry', null);
    const o = await observe(this.lockPath, this.timing);
    if (o === null) return this.lose('removed', 'its lock file was removed', null);
    if (o.record?.leaseId !== this.current.leaseId) {
      const by = o.record === null ? null : { hostName: o.record.hostName, hostId: o.record.hostId };
      return this.lose('replaced', `its lock now belongs to ${by === null ? 'an unreadable lock' : `host ${by.hostName} (${by.hostId})`}`, by);
    }
    const now = Date.now();
    const next: LeaseRecord = { ...this.current, generation: this.current.generation + 1, renewedAtMs: now, expiresAtMs: now + this.timing.durationMs };
    const tmp = `${this.lockPath}.${this.current.leaseId}.${next.generation}.tmp`;
    try {
      await writeRecord(tmp, next);
      // The last look at the clock before the replace: a breaker waits until our expiry + clockSkewMs.
      if (Date.now() >= this.current.expiresAtMs) { await unlinkQuietly(tmp); return this.lose('expired', 'not renewed before its expiry', null); }
      await rename(tmp, this.lockPath);
    } catch (err) {
      await unlinkQuietly(tmp);
      throw new FerryError('STORE_IO', `cannot renew lease ${this.lockPath}: ${errorMessage(err)}`);
    }
    this.current = next;
    this.emit('renewed', next);
  }

  private lose(reason: LeaseLostReason, message: string, by: LeaseOwner | null): void {
    if (this.lostInfo !== null) return;
    this.lostInfo = { reason, message, by };
    this.stopHeartbeat();
    this.emit('lost', this.lostInfo);
    this.check(); // the renewal that found it out fails with LEASE_LOST
  }

  private schedule(): void {
    // Not unref'd: a held lease keeps its process alive until released, so a forgotten close shows
    // as a process that does not exit rather than as a disk whose lease lapses while it is written.
    this.timer = setTimeout(() => { void this.beat(); }, this.timing.renewIntervalMs);
  }

  private async beat(): Promise<void> {
    this.timer = null;
    if (!this.held) return;
    try {
      await this.renew();
    } catch {
      // An I/O error is retried at the next beat; a lost lease has emitted `lost` and stopped the beat.
    }
    if (this.held && this.timer === null) this.schedule();
  }

  private stopHeartbeat(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}
