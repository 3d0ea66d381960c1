/**
 * A migration target reached through the center (a migration over a virtual path): the engine's
 * MigrationTargetPeer without any address of the target host. The center asked the target for the
 * ticket before it asked this host to migrate (the ticket's port is on the target's virtual address);
 * after COMMIT, an in-doubt source asks the center what the target recorded, and the center asks the
 * target over its control channel. So the source host never needs a route to the target host.
 */
import { FerryError } from '../lib/errors.js';
import type { TicketView } from '../api/host-v1.js';
import type { IncomingOutcome, IncomingTicket, MigrationTargetPeer } from '../migration/peer.js';
import { shortPathId } from '../dataplane/path/spec.js';

/** Asks the center what the target recorded for incoming migration `incomingId` of path `pathId`. */
export type BrokeredOutcome = (pathId: string, incomingId: string, timeoutMs: number) => Promise<IncomingOutcome>;

export class BrokeredTargetPeer implements MigrationTargetPeer {
  readonly label: string;
  private ticketTaken = false;

  /** `targetAddress`: the target's virtual address on the path (the only address the migration dials). */
  constructor(targetName: string, private readonly pathId: string, private readonly ticket: TicketView, private readonly targetAddress: string, private readonly ask: BrokeredOutcome) {
    this.label = `host ${targetName} (virtual path ${shortPathId(pathId)})`;
  }

  requestTicket(): Promise<IncomingTicket> {
    // One ticket, one migration: a second attempt needs a new one from the center.
    if (this.ticketTaken) return Promise.reject(new FerryError('TICKET_INVALID', 'the ticket the center brokered was already used; the center asks the target for a new one'));
    this.ticketTaken = true;
    const t = this.ticket;
    return Promise.resolve({ migrationId: t.migrationId, ticket: t.ticket, address: { host: this.targetAddress, port: t.port }, expiresInMs: t.expiresInMs });
  }

  incomingOutcome(migrationId: string, timeoutMs: number): Promise<IncomingOutcome> {
    return this.ask(this.pathId, migrationId, timeoutMs);
  }
}
