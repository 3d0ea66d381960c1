/**
 * The center's mobility manager (ARCHITECTURE.md §1.4, issue 10): for each mobility operation it
 * allocates a virtual path in the store (an address in each host's site subnet, an operation number,
 * the granted ports, a fresh secret, an expiry) and builds the PathSpec each of the two hosts is told.
 * No HTTP here: the caller (the migrate task) pushes the specs and releases the path when the
 * operation ends in any way. The store is the one record of every path, secret included, so any
 * center can push a path again or release it after the center that made it died.
 */
import { randomBytes } from 'node:crypto';
import { FerryError } from '../../lib/errors.js';
import { PATH_SECRET_BYTES, pathSpecSchema, type PathDriverKind, type PathEndpoint, type PathSpec } from '../../dataplane/path/spec.js';
import type { CenterStore } from '../store/store.js';
import type { Host, HostDataPlane, MobilityPath } from '../store/model.js';

/** Bytes of a path id: 16, shown as the 32 hex digits PATH_ID_PATTERN asks for. */
const PATH_ID_BYTES = 16;

export interface PathRequest {
  readonly taskId: number | null;
  /** What the operation is ("migration"). */
  readonly kind: string;
  readonly source: Host;
  readonly target: Host;
  readonly driver: PathDriverKind;
  readonly ttlMs: number;
  readonly firstPort: number;
  readonly portCount: number;
}

export interface AllocatedPath {
  readonly row: MobilityPath;
  /** What the source host is told (it dials the target's virtual address). */
  readonly sourceSpec: PathSpec;
  /** What the target host is told (it listens on its own virtual address). */
  readonly targetSpec: PathSpec;
}

/**
 * The driver both ends can use: the first of the source's drivers (its order of preference) that the
 * target reported too; null when there is none (or either host reported nothing) — no isolated path
 * is possible, and the caller falls back explicitly and says so in the operation's record.
 */
export function chooseDriver(source: HostDataPlane | null, target: HostDataPlane | null): PathDriverKind | null {
  if (source === null || target === null) return null;
  const theirs = new Set(target.drivers.map((d) => d.kind));
  return source.drivers.find((d) => theirs.has(d.kind))?.kind ?? null;
}

/** The host's tunnel endpoint for a driver; PATH_SETUP_FAILED if it did not report that driver. */
export function endpointFor(host: Host, driver: PathDriverKind): PathEndpoint {
  const entry = host.dataPlane?.drivers.find((d) => d.kind === driver);
  if (entry === undefined) {
    throw new FerryError('PATH_SETUP_FAILED', `host ${host.name} reported no ${driver} path driver: choose a driver both hosts have (chooseDriver) or fall back explicitly`, { host: host.name, driver });
  }
  return entry.endpoint;
}

/**
 * The two hosts' specs of one stored path: each side's local and peer addresses swapped, each told
 * the other host's endpoint for the path's driver (read from the hosts as given, so a host that
 * restarted on another port gets a current spec when the path is pushed again).
 */
export function pathSpecs(row: MobilityPath, source: Host, target: Host): { sourceSpec: PathSpec; targetSpec: PathSpec } {
  const common = { pathId: row.pathId, driver: row.driver, firstPort: row.firstPort, portCount: row.portCount, vni: row.vni, secret: row.secret, expiresAtMs: row.expiresAtMs };
  const sourceSpec = checkedSpec({ ...common, side: 'source', localAddress: row.sourceAddress, peerAddress: row.targetAddress, peerEndpoint: endpointFor(target, row.driver) });
  const targetSpec = checkedSpec({ ...common, side: 'target', localAddress: row.targetAddress, peerAddress: row.sourceAddress, peerEndpoint: endpointFor(source, row.driver) });
  return { sourceSpec, targetSpec };
}

/** A spec built from a stored row is checked like any host would check it: a bad one is never pushed. */
function checkedSpec(spec: PathSpec): PathSpec {
  const r = pathSpecSchema.safeParse(spec);
  if (!r.success) throw new FerryError('INTERNAL', `path ${spec.pathId} makes no valid spec for its ${spec.side}: ${r.error.issues[0]?.message ?? 'rejected'}`, { pathId: spec.pathId });
  return r.data;
}

export class MobilityManager {
  constructor(private readonly store: CenterStore) {}

  /**
   * Allocate a path for one operation and build both hosts' specs. Both endpoints are checked before
   * anything is stored: a host without the driver leaves no live path behind.
   */
  async allocate(request: PathRequest): Promise<AllocatedPath> {
    endpointFor(request.source, request.driver);
    endpointFor(request.target, request.driver);
    const row = await this.store.allocatePath({
      pathId: randomBytes(PATH_ID_BYTES).toString('hex'), taskId: request.taskId, kind: request.kind,
      sourceHost: request.source.name, targetHost: request.target.name, driver: request.driver,
      firstPort: request.firstPort, portCount: request.portCount, ttlMs: request.ttlMs,
      secret: randomBytes(PATH_SECRET_BYTES).toString('base64url'),
    });
    return { row, ...pathSpecs(row, request.source, request.target) };
  }

  /** Release a path (idempotent): answers whether it was live. The caller also tells both hosts to remove it. */
  async release(pathId: string, reason: string): Promise<boolean> {
    return this.store.releasePath(pathId, reason);
  }
}
