/**
 * The receiving side of a host's network file copies (remote form, docs/design/nfc.md): the NFC
 * receiver on the host's copy port, the tickets the center asks for (POST /v1/copies/incoming), and
 * the target journals of this host's datastores (GET/DELETE /v1/copies/{id}/journal): the durable
 * boundary a hand-off resumes from, and giving a copy up there.
 */
import type { Transport, TransportAddress } from '../dataplane/transport.js';
import type { Logger } from '../lib/logger.js';
import { lineLog } from '../lib/logger.js';
import { CopyReceiver } from '../nfc/receiver.js';
import { discardCopy, openLocalSink, readCopyJournal } from '../nfc/local-sink.js';
import type { CopyJournalView, CopyTicket, CopyTicketRequest } from '../api/copy-v1.js';
import type { HostDatastores } from './datastores.js';
import type { HostPaths } from './paths.js';
import { parsePlan } from './copy-service.js';
import { ticketOnPath } from './path-tickets.js';

export interface IncomingCopiesOptions {
  readonly datastores: HostDatastores;
  readonly paths: HostPaths;
  /** What carries copies that come without a virtual path (the host's transport). */
  readonly transport: Transport;
  /** The copy port: the host's listen address, `--copy-port` (0: any free port). */
  readonly at: TransportAddress;
  readonly logger: Logger;
}

export class IncomingCopies {
  private readonly receiver: CopyReceiver;
  /**
   * Tickets on a virtual path that hold it now: the receiver answers a repeated request with the same
   * ticket, which must not hold the path a second time (its sessions' end is told once). Bounded by the
   * receiver's open tickets: each leaves when its sessions end or it expires.
   */
  private readonly holding = new Set<string>();

  constructor(private readonly o: IncomingCopiesOptions) {
    this.receiver = new CopyReceiver({
      // The datastore was resolved when the ticket was issued; a name unknown here now is NOT_FOUND all the same.
      openSink: (datastore, open) => openLocalSink(o.datastores.get(datastore), open),
      log: lineLog(o.logger.child({ component: 'copy-receiver' })),
    }, o.transport, o.at);
  }

  listen(): Promise<void> { return this.receiver.listen(); }
  close(): Promise<void> { return this.receiver.close(); }
  get port(): number { return this.receiver.port; }

  /**
   * A ticket for a copy's sessions into datastore `req.datastore` under `req.epoch`: NOT_FOUND (with the
   * mounted names) for a datastore this host does not mount. With a path id the sessions come through that
   * copy's path to this host's virtual address, and the path is held until they end.
   */
  async issueTicket(req: CopyTicketRequest): Promise<CopyTicket> {
    this.o.datastores.get(req.datastore);
    const ticket = { copyId: req.copyId, epoch: req.epoch, datastore: req.datastore, plan: parsePlan(req) };
    if (req.pathId === undefined) return this.receiver.issueTicket(ticket);
    let issued: string | null = null;
    return ticketOnPath(this.o.paths, req.pathId, 'copy', (via) => this.receiver.issueTicket(ticket, {
      ...via, ended: () => { if (issued !== null) this.holding.delete(issued); via.ended(); },
    }), (t) => {
      if (this.holding.has(t.ticket)) return false;
      this.holding.add(t.ticket);
      issued = t.ticket;
      return true;
    });
  }

  /** What datastore `datastore`'s journal of copy `id` says (boundary null: it holds none). */
  journal(id: string, datastore: string): Promise<CopyJournalView> {
    return readCopyJournal(this.o.datastores.get(datastore), id);
  }

  /** Gives copy `id` up on datastore `datastore`: its staging files and journal removed (finished files stay). */
  discard(id: string, datastore: string): Promise<CopyJournalView> {
    return discardCopy(this.o.datastores.get(datastore), id);
  }
}
