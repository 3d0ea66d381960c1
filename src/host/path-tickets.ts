/**
 * A ticket for an incoming mobility operation (a migration, a copy's sessions) over its virtual path:
 * the receiver listens on this host's virtual address of the path, on the first free port of the
 * path's grant, and the path is held (not removed when idle) until the operation's part here ends.
 */
import { FerryError, isFerryError } from '../lib/errors.js';
import type { TransportAddress } from '../dataplane/transport.js';
import { shortPathId } from '../dataplane/path/spec.js';
import type { VirtualPath } from '../dataplane/path/virtual-path.js';
import type { HostPaths } from './paths.js';

/** Where a receiver listens for one ticket, and what it calls when that ticket's operation has ended here. */
export interface PathListen {
  readonly transport: VirtualPath;
  readonly at: TransportAddress;
  readonly ended: () => void;
}

/**
 * Issues a ticket with `issue` on the first port of the path's grant that takes it: a ticket asked
 * again (a center that took the task over) must not collide with the listener of an earlier one, whose
 * operation may still run. `what` names the operation in errors and in the path's removal reason.
 * `isNew`: false for a ticket the receiver answered again (it holds the path already, and only its first
 * `ended` will be told); by default every ticket is new.
 */
export async function ticketOnPath<T>(paths: HostPaths, pathId: string, what: string, issue: (via: PathListen) => Promise<T>, isNew: (ticket: T) => boolean = () => true): Promise<T> {
  const path = paths.transport(pathId, 'target');
  let release: (() => void) | null = null;
  // The part here ended: this end of the path goes once the last reply is flushed (and no other ticket holds it).
  const ended = (): void => { release?.(); };
  for (let port = path.spec.firstPort; port < path.spec.firstPort + path.spec.portCount; port++) {
    try {
      const ticket = await issue({ transport: path, at: { host: path.spec.localAddress, port }, ended });
      if (isNew(ticket)) release = paths.hold(pathId, `the incoming ${what} ended`);
      return ticket;
    } catch (err) {
      const taken = isFerryError(err, 'ALREADY_EXISTS') || (isFerryError(err, 'INVALID_ARGUMENT') && err.details['errno'] === 'EADDRINUSE');
      if (!taken) throw err;
    }
  }
  throw new FerryError('BUSY', `every port of path ${shortPathId(pathId)} has a ${what} ticket listening; try again when one ends`, { pathId });
}
