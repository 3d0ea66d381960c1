/**
 * How a `vm.migrate` task connects its two hosts: over the operation's own virtual path (the default,
 * ARCHITECTURE.md §1.4) or directly (asked for with `isolation: false`, or when the hosts share no path
 * driver — and the task's result says which, and why).
 *
 * Over a path: the center allocates the path (addresses from each site's subnet, ports, VNI, secret,
 * expiry: src/center/mobility), pushes each host its end, asks the target for a ticket on its virtual
 * address and for its datastores, and gives the source only the target's name, the ticket and the path
 * id — never the target's URL. While the migration runs the path is renewed; when it ends in any way
 * it is released in the store and removed from both hosts (a host that cannot be reached removes its
 * end by itself when it expires).
 */
import type { DatastoreView, MigrateRequest, TicketView } from '../../api/host-v1.js';
import type { HostClient } from '../../api/host-client.js';
import { errorMessage, isFerryError } from '../../lib/errors.js';
import type { CenterStore } from '../store/store.js';
import { chooseDriver, pathSpecs, type MobilityManager } from '../mobility/paths.js';
import { shortPathId, type PathDriverKind, type PathSpec } from '../../dataplane/path/spec.js';
import type { Host, JsonValue } from '../store/model.js';
import type { TaskContext } from './workers.js';

/** A migration uses one port of its path; a few more let a retried ticket listen while an old one drains. */
export const MIGRATION_PATH_PORTS = 4;
/** The first port granted on a migration's virtual addresses (the same on every path: each path has its own addresses). */
export const MIGRATION_PATH_FIRST_PORT = 7300;
/** A migration's path lives this long unless renewed (a center that died cannot leave it open for ever). */
export const DEFAULT_MIGRATION_PATH_TTL_MS = 10 * 60_000;
/** Shorter lives would be renewed more than once a second (tests of expiry use the minimum). */
export const MIN_MIGRATION_PATH_TTL_MS = 3_000;

/** What a path is for: a live migration, or a network file copy (./copy-route.ts). */
export type PathKind = 'migration' | 'copy';

/** The center's mobility manager as the migrate task needs it. */
export interface MobilityPaths {
  /** The driver both hosts offer (the source's preference first), or null: no isolation possible. */
  chooseDriver(source: Host, target: Host): PathDriverKind | null;
  /** A new path for task `taskId` (or the task's live one again after a takeover). */
  allocate(req: { taskId: number; source: Host; target: Host; driver: PathDriverKind; ttlMs: number; firstPort: number; portCount: number; kind?: PathKind }): Promise<PathPair>;
  renew(pathId: string, expiresAtMs: number): Promise<PathPair | null>;
  /** The task's live path, if a worker before this one (a center that died) allocated it. */
  liveOfTask(taskId: number): Promise<string | null>;
  /** Idempotent; true when it was live. */
  release(pathId: string, reason: string): Promise<boolean>;
}

/** The migrate task's view of the mobility manager (src/center/mobility/paths.ts) and the store. */
export function mobilityPaths(store: CenterStore, manager: MobilityManager): MobilityPaths {
  return {
    chooseDriver: (source, target) => chooseDriver(source.dataPlane, target.dataPlane),
    allocate: async (req) => {
      const a = await manager.allocate({ ...req, kind: req.kind ?? 'migration' });
      return { pathId: a.row.pathId, sourceSpec: a.sourceSpec, targetSpec: a.targetSpec };
    },
    renew: async (pathId, expiresAtMs) => {
      let row;
      try { row = await store.renewPath(pathId, expiresAtMs); } catch (err) {
        // Released or expired meanwhile: nothing to renew (the operation is ending).
        if (isFerryError(err, 'PATH_REFUSED')) return null;
        throw err;
      }
      const [source, target] = await Promise.all([store.getHost(row.sourceHost), store.getHost(row.targetHost)]);
      return { pathId, ...pathSpecs(row, source, target) };
    },
    release: (pathId, reason) => manager.release(pathId, reason),
    liveOfTask: async (taskId) => (await store.pathsOfTask(taskId)).find((p) => p.state === 'live')?.pathId ?? null,
  };
}

export interface PathPair {
  readonly pathId: string;
  readonly sourceSpec: PathSpec;
  readonly targetSpec: PathSpec;
}

export type IsolationSummary =
  | { readonly mode: 'path'; readonly pathId: string; readonly driver: PathDriverKind; readonly sourceAddress: string; readonly targetAddress: string }
  | { readonly mode: 'direct'; readonly reason: string };

export interface MigrationRoute {
  /** What the source host is asked (to be completed with the migration's id, options and disk). */
  readonly request: Pick<MigrateRequest, 'to' | 'token' | 'isolated'>;
  readonly isolation: IsolationSummary;
  /** Releases the path (if any) in the store and on both hosts. Never throws. */
  close(reason: string): Promise<void>;
}

export interface RouteDeps {
  readonly paths: MobilityPaths;
  readonly ttlMs: number;
  readonly tokenFor: (host: string) => string;
}

export async function routeMigration(d: RouteDeps, ctx: TaskContext, wanted: boolean, source: Host, target: Host, src: HostClient, dst: HostClient, migrationId: string): Promise<MigrationRoute> {
  const driver = wanted ? d.paths.chooseDriver(source, target) : null;
  if (driver === null) {
    const reason = wanted ? `hosts ${source.name} and ${target.name} share no virtual-path driver` : 'isolation was turned off for this migration';
    ctx.log(`migration ${migrationId.slice(0, 8)} connects the hosts directly: ${reason}`);
    return { request: { to: target.url, token: d.tokenFor(target.name) }, isolation: { mode: 'direct', reason }, close: () => Promise.resolve() };
  }
  const pair = await takenOver(d, ctx) ?? await d.paths.allocate({ taskId: ctx.task.id, source, target, driver, ttlMs: d.ttlMs, firstPort: MIGRATION_PATH_FIRST_PORT, portCount: MIGRATION_PATH_PORTS });
  const close = async (reason: string): Promise<void> => {
    renewal.stop();
    await d.paths.release(pair.pathId, reason).catch((err: unknown) => { ctx.log(`cannot release path ${shortPathId(pair.pathId)} in the store: ${errorMessage(err)}`); });
    // Best effort: a host that does not answer removes its end when the path expires.
    await Promise.all([dst.deletePath(pair.pathId), src.deletePath(pair.pathId)].map((p) => p.catch((err: unknown) => { ctx.log(`cannot remove path ${shortPathId(pair.pathId)} from a host: ${errorMessage(err)}`); })));
  };
  const renewal = renewLoop(d, ctx, pair, src, dst);
  try {
    // The target's end first: the source's streams then find a listener.
    await dst.putPath(pair.targetSpec);
    await src.putPath(pair.sourceSpec);
    const ticket: TicketView = await dst.createTicket(undefined, { sourceMigrationId: migrationId, pathId: pair.pathId });
    const targetDatastores: DatastoreView[] = await dst.listDatastores();
    const isolation: IsolationSummary = { mode: 'path', pathId: pair.pathId, driver, sourceAddress: pair.sourceSpec.localAddress, targetAddress: pair.targetSpec.localAddress };
    return { request: { isolated: { pathId: pair.pathId, target: target.name, ticket, targetDatastores } }, isolation, close };
  } catch (err) {
    await close(`setting it up failed: ${errorMessage(err)}`);
    throw err;
  }
}

/**
 * A task taken over keeps its live path (renewed now): the migration the first worker started may still
 * run on it, and a new path would leave that one to expire under it.
 */
async function takenOver(d: RouteDeps, ctx: TaskContext): Promise<PathPair | null> {
  if (ctx.task.attempts <= 1) return null;
  const pathId = await d.paths.liveOfTask(ctx.task.id);
  if (pathId === null) return null;
  const pair = await d.paths.renew(pathId, Date.now() + d.ttlMs);
  if (pair !== null) ctx.log(`taken over: migration keeps its path ${shortPathId(pathId)}`);
  return pair;
}

/** Renews the path in the store and on both hosts every third of its life while the operation runs. */
export function renewLoop(d: Pick<RouteDeps, 'paths' | 'ttlMs'>, ctx: TaskContext, pair: PathPair, src: HostClient, dst: HostClient): { stop(): void } {
  const timer = setInterval(() => {
    void (async () => {
      const renewed = await d.paths.renew(pair.pathId, Date.now() + d.ttlMs);
      if (renewed === null) return;
      await Promise.all([dst.putPath(renewed.targetSpec), src.putPath(renewed.sourceSpec)]);
    })().catch((err: unknown) => { ctx.log(`cannot renew path ${shortPathId(pair.pathId)}: ${errorMessage(err)}`); });
  }, Math.max(1000, Math.floor(d.ttlMs / 3)));
  timer.unref();
  return { stop: () => { clearInterval(timer); } };
}

export function isolationJson(i: IsolationSummary): JsonValue {
  return { ...i };
}
