/**
 * The target side of a live migration: the host's migration endpoint. It issues one-time tickets
 * (through the authenticated control API), accepts the source's control and data connections and
 * hands each to its IncomingMigration (incoming.ts), and remembers, bounded, what became of every
 * migration for the sources that ask (outcomes.ts).
 */
import { migrationBegins } from '../in-progress.js';
import { randomBytes } from 'node:crypto';
import { FerryError, errorMessage } from '../../lib/errors.js';
import { ServerChannel } from '../channel.js';
import { Command, TICKET_TTL_MS, type Frame } from '../protocol/frame.js';
import { TARGET_OFFER_CAPABILITY, decodeMessage, type ConnectionRole, type OkBody } from '../protocol/messages.js';
import { ConnectionState } from '../protocol/session-state.js';
import type { ByteStream, Listener, Transport, TransportAddress } from '../../dataplane/transport.js';
import type { IncomingOutcome } from '../peer.js';
import type { IncomingIds, ReceiverHooks, StoredOutcome } from './hooks.js';
import { INCOMING_IDLE_TIMEOUT_MS, IncomingMigration } from './incoming.js';
import { MAX_REMEMBERED_OUTCOMES, RememberedOutcomes } from './outcomes.js';

/** Tickets issued but not yet used, at most (a flood of ticket requests cannot exhaust memory). */
export const MAX_OPEN_TICKETS = 64;
/** A connection must present a valid HELLO this quickly, or it is dropped (idle or hostile peers). */
export const HELLO_TIMEOUT_MS = 10_000;

interface Ticket {
  readonly migrationId: string;
  /** The source's id of the migration, if it said it when it asked for the ticket. */
  readonly sourceMigrationId: string | null;
  readonly expiresAt: number;
  incoming: IncomingMigration | null;
  /** The listener of a ticket to be used through an operation's own path (closed with the ticket); null: the host's endpoint. */
  listener: Listener | null;
  /** Told once when the ticket's migration ended (or the ticket expired unused): the path's owner removes it then. */
  ended: (() => void) | null;
  /** When the control connection arrived (performance.now()), for the duration the observer is told. */
  startedAt: number;
}

function idsOf(ticket: Ticket): IncomingIds {
  return { migrationId: ticket.sourceMigrationId ?? ticket.migrationId, incomingId: ticket.migrationId };
}

export class MigrationReceiver {
  private readonly tickets = new Map<string, Ticket>();
  private readonly outcomes = new RememberedOutcomes();
  private readonly live = new Set<IncomingMigration>();
  private listener: Listener | null = null;

  /** `idleTimeoutMs`: how long an incoming migration may go without a request (INCOMING_IDLE_TIMEOUT_MS; tests shorten it). */
  constructor(private readonly hooks: ReceiverHooks, private readonly transport: Transport, private readonly at: TransportAddress, private readonly idleTimeoutMs: number = INCOMING_IDLE_TIMEOUT_MS) {}

  get port(): number { return this.listener?.address.port ?? 0; }

  async listen(): Promise<TransportAddress> {
    this.listener = await this.transport.listen(this.at, (stream) => { this.onConnection(stream); });
    return this.listener.address;
  }

  /**
   * A one-time ticket. `via`: the migration comes through the operation's own transport (its virtual
   * path) to that address, listened on for this ticket only — not the host's migration endpoint.
   */
  async issueTicket(sourceMigrationId?: string, via?: { transport: Transport; at: TransportAddress; ended?: () => void }): Promise<{ migrationId: string; ticket: string; port: number; expiresInMs: number }> {
    this.expireTickets();
    if (this.tickets.size >= MAX_OPEN_TICKETS) throw new FerryError('BUSY', `too many migrations being set up (${MAX_OPEN_TICKETS}); try again shortly`);
    if (this.outcomes.full) {
      throw new FerryError('BUSY', `${MAX_REMEMBERED_OUTCOMES} incoming migrations have outcomes not yet recorded durably; try again shortly`);
    }
    const listener = via !== undefined ? await via.transport.listen(via.at, (stream) => { this.onConnection(stream); }) : null;
    const ticket = randomBytes(32).toString('hex');
    const migrationId = randomBytes(16).toString('hex');
    this.tickets.set(ticket, { migrationId, sourceMigrationId: sourceMigrationId ?? null, expiresAt: Date.now() + TICKET_TTL_MS, incoming: null, listener, ended: via?.ended ?? null, startedAt: 0 });
    this.outcomes.addPending(migrationId);
    return { migrationId, ticket, port: listener?.address.port ?? this.port, expiresInMs: TICKET_TTL_MS };
  }

  /**
   * What this host knows of migration `id`. "unknown" only when neither memory nor the data
   * directory has a record of it; a record that cannot be read rejects (STORE_IO): answering
   * "unknown" then could make a source resume a VM that runs here.
   */
  async outcome(id: string): Promise<IncomingOutcome> {
    const known = this.outcomes.get(id);
    if (known !== undefined) return known;
    let stored: StoredOutcome | null;
    try {
      stored = await this.hooks.storedOutcome(id);
    } catch (err) {
      // Loud: a source in doubt keeps its VM paused until this record can be read again.
      this.hooks.log(`incoming migration ${id.slice(0, 8)}: cannot read its outcome record, answering an error (not "unknown"): ${errorMessage(err)}`);
      throw err;
    }
    return stored === null ? { state: 'unknown' } : { state: stored };
  }

  /** Outcomes remembered now (tests and diagnostics). */
  get rememberedOutcomes(): number { return this.outcomes.size; }

  private expireTickets(): void {
    const now = Date.now();
    for (const [k, t] of this.tickets) {
      if (t.incoming === null && t.expiresAt < now) {
        this.tickets.delete(k);
        this.release(t);
        // No source ever connected with it, so none can be in doubt about it: nothing to keep durably.
        this.outcomes.remember(t.migrationId, { state: 'aborted', reason: 'ticket expired unused' }, true);
      }
    }
  }

  private onConnection(socket: ByteStream): void {
    const helloTimer = setTimeout(() => { socket.destroy(); }, HELLO_TIMEOUT_MS);
    socket.once('close', () => { clearTimeout(helloTimer); });
    const state = new ConnectionState();
    let incoming: IncomingMigration | null = null;
    const channel = new ServerChannel(socket, async (frame: Frame): Promise<OkBody> => {
      // A data connection may carry MEMORY (and DISK) once the migration's PREPARE was accepted.
      if ((frame.command === Command.MEMORY || frame.command === Command.DISK) && incoming?.isPrepared === true && !state.prepared) state.markPrepared();
      state.accept(frame.command);
      if (frame.command === Command.HELLO) {
        const hello = this.hello(frame);
        incoming = hello.incoming; // before attach: a refused extra connection still ends the migration when it closes
        incoming.attach(channel, hello.role);
        clearTimeout(helloTimer); // from here the migration's own idle timeout applies
        // offers: this target reads PREPARE's `instrumented` (docs/migration-protocol.md, "Instrumented module offer").
        return { host: 'ferry', protocol: 1, offers: [TARGET_OFFER_CAPABILITY] };
      }
      if (incoming === null) throw new FerryError('PROTOCOL_OUT_OF_ORDER', 'HELLO first');
      const result = await incoming.handle(frame);
      if (frame.command === Command.PREPARE) incoming.markPrepared();
      if (frame.command === Command.MEMORY || frame.command === Command.DISK) this.hooks.observer?.received(frame.command === Command.MEMORY ? 'memory' : 'disk', frame.payload.byteLength);
      return result;
    }, (reason) => { incoming?.connectionClosed(channel, reason); });
  }

  /** A HELLO: the ticket names the migration; a control connection starts it, data connections join it. */
  private hello(frame: Frame): { incoming: IncomingMigration; role: ConnectionRole } {
    const msg = decodeMessage(frame);
    if (msg.command !== Command.HELLO) throw new FerryError('PROTOCOL_BAD_PAYLOAD', 'expected HELLO');
    this.expireTickets();
    const ticket = this.tickets.get(msg.body.ticket);
    if (ticket === undefined) throw new FerryError('TICKET_INVALID', 'unknown, used or expired migration ticket; ask the target for a new one');
    return { incoming: this.incomingFor(ticket, msg.body.role), role: msg.body.role };
  }

  private incomingFor(ticket: Ticket, role: ConnectionRole): IncomingMigration {
    if (role === 'control') {
      if (ticket.incoming !== null) throw new FerryError('TICKET_INVALID', 'this migration ticket is already in use');
      const ids = idsOf(ticket);
      const hooks = this.hooks;
      const logFor = (vm: string | null): ((line: string) => void) => hooks.logFor?.({ ...ids, ...(vm !== null ? { vm } : {}) }) ?? ((line) => { hooks.log(line); });
      const ended = migrationBegins(ticket);
      ticket.incoming = new IncomingMigration(ticket.migrationId, hooks, (outcome, durable) => { ended(); this.finish(ticket, outcome, durable); }, logFor, this.idleTimeoutMs);
      ticket.startedAt = performance.now();
      this.live.add(ticket.incoming);
      this.hooks.observer?.started(ids);
    } else if (ticket.incoming === null) {
      throw new FerryError('PROTOCOL_OUT_OF_ORDER', 'a data connection arrived before the control connection');
    }
    return ticket.incoming;
  }

  private finish(ticket: Ticket, outcome: IncomingOutcome, durable: boolean): void {
    this.outcomes.remember(ticket.migrationId, outcome, durable);
    for (const [k, t] of this.tickets) if (t === ticket) this.tickets.delete(k);
    this.release(ticket);
    // Told once: an outcome is reported again when it has been recorded durably.
    if (ticket.incoming !== null && this.live.delete(ticket.incoming)) {
      this.hooks.observer?.ended(idsOf(ticket), outcome.state === 'committed' ? 'committed' : 'aborted', performance.now() - ticket.startedAt);
    }
  }

  /** The ticket's own listener stops taking streams (accepted ones stay their migration's); its owner is told, once. */
  private release(ticket: Ticket): void {
    void ticket.listener?.close();
    const ended = ticket.ended;
    ticket.ended = null;
    ended?.();
  }

  /** Stops accepting; aborts every migration that has not committed. */
  async close(): Promise<void> {
    for (const m of this.live) await m.abort('target host shutting down');
    for (const t of this.tickets.values()) await t.listener?.close();
    await this.listener?.close();
  }
}
