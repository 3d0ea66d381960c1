/**
 * The virtual paths of one host (ARCHITECTURE.md §1.4): the center pushes a path spec for each
 * mobility operation this host takes part in (PUT /v1/paths/{id}); this registry opens it with the
 * driver the spec names, gives the operation only its VirtualPath (a Transport bound to the virtual
 * addresses), and removes it — streams, listeners, keys, and whatever the driver made — when:
 *   - the center says so (DELETE, at the operation's end in any way),
 *   - this host's own part of the operation ends (the source's job; the target's incoming, once idle),
 *   - it expires (the center renews live ones; a center that vanished cannot leave one open),
 *   - the host stops, or — after a crash — at the next start, from the durable records.
 *
 * A record (the spec without its secret) is written before the driver creates anything and removed
 * after everything is gone, so a crash at any point leaves a record of whatever might remain.
 */
import { FerryError, errorMessage } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { PathDriver } from '../dataplane/path/driver.js';
import { shortPathId, pathRecord, type PathDriverKind, type PathSpec, type PathView } from '../dataplane/path/spec.js';
import { VirtualPath } from '../dataplane/path/virtual-path.js';
import type { HostStore } from './store.js';

/** Paths open on one host at once, at most (each is one operation; budgets keep a host far below). */
export const MAX_LIVE_PATHS = 64;
/** How often expiry is checked: a path outlives its expiry by at most this much. */
export const PATH_EXPIRY_CHECK_MS = 1_000;
/** A target's path closes this long after its incoming migration ended even if a stream is still open (its reply was flushed long before). */
export const PATH_IDLE_GRACE_MS = 5_000;

/** What a host tells the center about its drivers (heartbeat) and shows in GET /v1/paths. */
export interface PathDriverReport {
  readonly kind: PathDriverKind;
  readonly endpoint: { readonly host: string; readonly port: number };
}

export interface HostPathsOptions {
  readonly store: HostStore;
  /** The drivers this host offers, in its order of preference. */
  readonly drivers: readonly PathDriver[];
  readonly logger: Logger;
  readonly now?: () => number;
}

export class HostPaths {
  private readonly paths = new Map<string, VirtualPath>();
  /** Opens and removals in progress, so two requests for one path id never race. */
  private readonly pending = new Map<string, Promise<unknown>>();
  /** Incoming migrations (tickets) per path on this host: the last to end removes its target end. */
  private readonly holds = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  private readonly now: () => number;
  private closed = false;

  constructor(private readonly o: HostPathsOptions) {
    this.now = o.now ?? Date.now;
  }

  /** Removes what a crashed run left, then starts the expiry sweep. */
  async start(): Promise<void> {
    const { records, problems } = await this.o.store.pathRecords();
    for (const p of problems) this.o.logger.warn(p);
    for (const driver of this.o.drivers) {
      const mine = records.filter((r) => r.driver === driver.kind);
      if (mine.length === 0) continue;
      try {
        await driver.removeLeftovers(mine, this.o.logger);
      } catch (err) {
        // Loud, not fatal: the host serves; the records stay, so the next start tries again.
        this.o.logger.error(`cannot remove what ${mine.length} ${driver.kind} path(s) of the previous run left (their records are kept for the next start): ${errorMessage(err)}`);
        continue;
      }
      for (const r of mine) await this.o.store.removePathRecord(r.pathId);
      this.o.logger.info(`removed what ${mine.length} ${driver.kind} path(s) of the previous run left`, { driver: driver.kind, paths: mine.length });
    }
    // A record of a driver this run does not offer cannot be acted on: say so, keep it for a run that can.
    for (const r of records) {
      if (!this.o.drivers.some((d) => d.kind === r.driver)) this.o.logger.warn(`path ${shortPathId(r.pathId)} of the previous run used the ${r.driver} driver, which this run does not offer: its leftovers stay until a run with it starts`);
    }
    this.timer = setInterval(() => { void this.sweep(); }, PATH_EXPIRY_CHECK_MS);
    this.timer.unref();
  }

  drivers(): PathDriverReport[] {
    return this.o.drivers.map((d) => ({ kind: d.kind, endpoint: { host: d.endpoint.host, port: d.endpoint.port } }));
  }

  list(): PathView[] { return [...this.paths.values()].map((p) => p.view()); }

  /**
   * Opens the path, or — asked again with the same spec but a later expiry — renews it. The same id
   * with a different spec is ALREADY_EXISTS: a path's addresses and keys never change under it.
   */
  put(spec: PathSpec): Promise<PathView> {
    return this.serial(spec.pathId, async () => {
      if (this.closed) throw new FerryError('BUSY', 'the host is shutting down; it opens no path');
      const known = this.paths.get(spec.pathId);
      if (known !== undefined) return this.renew(known, spec);
      if (spec.expiresAtMs <= this.now()) throw new FerryError('PATH_REFUSED', `path ${shortPathId(spec.pathId)} has already expired`, { pathId: spec.pathId });
      if (this.paths.size >= MAX_LIVE_PATHS) throw new FerryError('BUSY', `host has ${MAX_LIVE_PATHS} virtual paths open; try again when an operation ends`);
      const driver = this.o.drivers.find((d) => d.kind === spec.driver);
      if (driver === undefined) {
        throw new FerryError('PATH_SETUP_FAILED', `this host does not offer the ${spec.driver} path driver (it offers: ${this.o.drivers.map((d) => d.kind).join(', ') || 'none'})`, { driver: spec.driver });
      }
      await this.o.store.writePathRecord(pathRecord(spec));
      let path: VirtualPath;
      try {
        path = new VirtualPath(spec, await driver.open(spec, this.o.logger.child({ pathId: shortPathId(spec.pathId) })), this.now);
      } catch (err) {
        await this.o.store.removePathRecord(spec.pathId);
        throw err;
      }
      this.paths.set(spec.pathId, path);
      this.o.logger.info(`virtual path ${shortPathId(spec.pathId)} open: ${spec.side}, ${spec.driver}, ${spec.localAddress} <-> ${spec.peerAddress}`, { pathId: spec.pathId, side: spec.side, driver: spec.driver });
      return path.view();
    });
  }

  /** The operation's transport. NOT_FOUND for a path this host does not have; PATH_REFUSED for one of the other side. */
  transport(pathId: string, side: PathSpec['side']): VirtualPath {
    const path = this.paths.get(pathId);
    if (path === undefined) throw new FerryError('NOT_FOUND', `this host has no virtual path ${shortPathId(pathId)} (never pushed, ended or expired)`, { pathId });
    if (path.spec.side !== side) throw new FerryError('PATH_REFUSED', `path ${shortPathId(pathId)} is this host's ${path.spec.side} end, not its ${side} end`, { pathId });
    return path;
  }

  /** Removes the path and everything it made; false when it was not open here (already removed: fine). */
  remove(pathId: string, reason: string): Promise<boolean> {
    return this.serial(pathId, async () => {
      const path = this.paths.get(pathId);
      if (path === undefined) return false;
      this.paths.delete(pathId);
      this.holds.delete(pathId);
      try {
        await path.close();
      } finally {
        // The record stays only if the driver failed to remove its parts: the next start tries again.
        await this.o.store.removePathRecord(pathId).catch(() => undefined);
      }
      this.o.logger.info(`virtual path ${shortPathId(pathId)} removed: ${reason}`, { pathId, reason });
      return true;
    });
  }

  /**
   * An incoming migration holds the path while its ticket lives: when the last holder lets go (its
   * migration ended, or its ticket expired unused), the path is removed once idle. A second ticket on
   * one path (a center that took the task over asked again) keeps it open for the first one's migration.
   */
  hold(pathId: string, reason: string): () => void {
    if (!this.paths.has(pathId)) throw new FerryError('NOT_FOUND', `this host has no virtual path ${shortPathId(pathId)}`, { pathId });
    this.holds.set(pathId, (this.holds.get(pathId) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.holds.get(pathId) ?? 1) - 1;
      if (left > 0) { this.holds.set(pathId, left); return; }
      this.holds.delete(pathId);
      this.removeWhenIdle(pathId, reason);
    };
  }

  /** Removes the path once none of its streams is open (or after PATH_IDLE_GRACE_MS): a target whose part ended, its last reply in flight. */
  removeWhenIdle(pathId: string, reason: string): void {
    const path = this.paths.get(pathId);
    if (path === undefined) return;
    const deadline = this.now() + PATH_IDLE_GRACE_MS;
    const check = (): void => {
      if (this.paths.get(pathId) !== path) return;
      if (path.openStreams > 0 && this.now() < deadline && !this.closed) { setTimeout(check, 100).unref(); return; }
      void this.remove(pathId, reason).catch((err: unknown) => { this.o.logger.warn(`cannot remove path ${shortPathId(pathId)}: ${errorMessage(err)}`); });
    };
    check();
  }

  /** At host stop: every path removed, the drivers' listeners closed. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    await Promise.allSettled([...this.paths.keys()].map((id) => this.remove(id, 'host shutting down')));
    await Promise.allSettled(this.o.drivers.map((d) => d.close()));
  }

  private renew(path: VirtualPath, spec: PathSpec): PathView {
    if (JSON.stringify({ ...spec, expiresAtMs: 0 }) !== JSON.stringify({ ...path.spec, expiresAtMs: 0 })) {
      throw new FerryError('ALREADY_EXISTS', `path ${shortPathId(spec.pathId)} is open here with other addresses, ports or keys; a path never changes under its operation`, { pathId: spec.pathId });
    }
    if (spec.expiresAtMs > path.expiresAt) path.renew(spec.expiresAtMs);
    return path.view();
  }

  private async sweep(): Promise<void> {
    for (const [id, path] of this.paths) {
      if (path.expired()) await this.remove(id, 'expired').catch((err: unknown) => { this.o.logger.warn(`cannot remove expired path ${shortPathId(id)}: ${errorMessage(err)}`); });
    }
  }

  private serial<T>(pathId: string, fn: () => Promise<T>): Promise<T> {
    const before = this.pending.get(pathId) ?? Promise.resolve();
    const next = before.catch(() => undefined).then(fn);
    const settled = next.catch(() => undefined);
    this.pending.set(pathId, settled);
    void settled.then(() => { if (this.pending.get(pathId) === settled) this.pending.delete(pathId); });
    return next;
  }
}

