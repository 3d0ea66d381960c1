/**
 * How the remote form of a copy connects its copying host to its receiving host: over the copy's own
 * virtual path (ARCHITECTURE.md §1.4) when both hosts share a path driver and isolation is not turned
 * off, else directly to the receiver's underlay address — and the task's result says which, and why.
 * Each part of a copy has its own pair of hosts, so a hand-off closes the part's path and the next part
 * opens one for its own pair. While a part runs its path is renewed; when it ends in any way the path
 * is released in the store and removed from both hosts.
 */
import type { HostClient } from '../../api/host-client.js';
import { errorMessage } from '../../lib/errors.js';
import { shortPathId } from '../../dataplane/path/spec.js';
import type { Host } from '../store/model.js';
import type { TaskContext } from './workers.js';
import { renewLoop, type IsolationSummary, type MobilityPaths, type PathPair } from './migration-path.js';

/** A copy uses one port of its path per ticket; a few more let a new ticket listen while an old one drains. */
export const COPY_PATH_PORTS = 4;
/** The first port granted on a copy's virtual addresses (migrations use 7300..: ./migration-path.ts). */
export const COPY_PATH_FIRST_PORT = 7400;

export interface CopyRoute {
  /** The part's path, or null (direct). */
  readonly pathId: string | null;
  /** The receiver's address the copier dials: its virtual address over the path, else its underlay host. */
  readonly address: string;
  readonly isolation: IsolationSummary;
  /** Releases the path (if any) in the store and on both hosts. Never throws. */
  close(reason: string): Promise<void>;
}

export interface CopyRouteDeps {
  readonly paths: MobilityPaths;
  readonly ttlMs: number;
}

/** The host part of a URL, without IPv6 brackets. */
function hostOf(url: string): string {
  return new URL(url).hostname.replace(/^\[(.*)\]$/, '$1');
}

/**
 * The route of one part. `reuse`: the path a worker before this one (a center that died) opened for
 * this same pair, kept if still live (the part it started may be running on it).
 */
export async function routeCopy(d: CopyRouteDeps, ctx: TaskContext, wanted: boolean, copier: Host, receiver: Host, src: HostClient, dst: HostClient, reuse: string | null): Promise<CopyRoute> {
  const driver = wanted ? d.paths.chooseDriver(copier, receiver) : null;
  if (driver === null) {
    const reason = wanted ? `hosts ${copier.name} and ${receiver.name} share no virtual-path driver` : 'isolation was turned off for this copy';
    return { pathId: null, address: hostOf(receiver.url), isolation: { mode: 'direct', reason }, close: () => Promise.resolve() };
  }
  const renewed: PathPair | null = reuse !== null ? await d.paths.renew(reuse, Date.now() + d.ttlMs) : null;
  const pair = renewed ?? await d.paths.allocate({
    taskId: ctx.task.id, source: copier, target: receiver, driver, ttlMs: d.ttlMs, firstPort: COPY_PATH_FIRST_PORT, portCount: COPY_PATH_PORTS, kind: 'copy',
  });
  const renewal = renewLoop(d, ctx, pair, src, dst);
  const close = async (reason: string): Promise<void> => {
    renewal.stop();
    await d.paths.release(pair.pathId, reason).catch((err: unknown) => { ctx.log(`cannot release path ${shortPathId(pair.pathId)} in the store: ${errorMessage(err)}`); });
    // Best effort: a host that does not answer removes its end when the path expires.
    await Promise.all([dst.deletePath(pair.pathId), src.deletePath(pair.pathId)].map((p) => p.catch((err: unknown) => { ctx.log(`cannot remove path ${shortPathId(pair.pathId)} from a host: ${errorMessage(err)}`); })));
  };
  try {
    // The receiver's end first: the copier's streams then find a listener.
    await dst.putPath(pair.targetSpec);
    await src.putPath(pair.sourceSpec);
  } catch (err) {
    await close(`setting it up failed: ${errorMessage(err)}`);
    throw err;
  }
  const isolation: IsolationSummary = { mode: 'path', pathId: pair.pathId, driver, sourceAddress: pair.sourceSpec.localAddress, targetAddress: pair.targetSpec.localAddress };
  return { pathId: pair.pathId, address: pair.targetSpec.localAddress, isolation, close };
}
