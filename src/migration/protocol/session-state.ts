/**
 * Per-connection request order on the receiving (target) side, as a pure state machine
 * (docs/migration-protocol.md, "Rules the decoder enforces"). It models the peer's requests only:
 * OK and ERROR are replies and are never valid requests.
 *
 *   every connection   HELLO first, exactly once
 *   control            PREPARE once, then ROUND*, then STATE once, then COMMIT once;
 *                      ABORT at any time after HELLO. COMMIT and ABORT end the conversation.
 *   data               MEMORY* and DISK*, only once the migration was prepared (markPrepared(), called by
 *                      the owner of the migration when the control connection's PREPARE was accepted,
 *                      before the data connection's MEMORY is passed to accept())
 *
 * The role is fixed by the constructor, or by the HELLO's role passed to accept(HELLO, role), or,
 * if neither is given, by the first request after HELLO: PREPARE or ABORT make it a control
 * connection, MEMORY a data connection. Passing the role is stricter (a HELLO saying "data"
 * followed by PREPARE is then out of order).
 *
 * Anything else throws PROTOCOL_OUT_OF_ORDER, after which the state is `failed` and rejects every
 * further request (the connection is closed after the ERROR reply).
 */
import { assert } from '../../lib/assert.js';
import { FerryError } from '../../lib/errors.js';
import { Command, commandName, isFrameCommand } from './frame.js';
import type { ConnectionRole } from './messages.js';

export type ConnectionPhase =
  /** Nothing received yet: only HELLO is valid. */
  | 'new'
  /** HELLO accepted. Control: waiting for PREPARE. Data: MEMORY once prepared. */
  | 'hello'
  /** Control: PREPARE accepted; ROUND or STATE next. */
  | 'prepared'
  /** Control: STATE accepted; COMMIT next. */
  | 'state'
  | 'committed'
  | 'aborted'
  /** A request was rejected; the connection is closing. */
  | 'failed';

/** What data connections carry: memory pages, and disk blocks of a migration that copies its disk. */
const DATA_COMMANDS: readonly Command[] = [Command.MEMORY, Command.DISK];

function isDataCommand(command: number): boolean {
  return command === Command.MEMORY || command === Command.DISK;
}

const REQUESTS_AFTER: Readonly<Record<ConnectionPhase, readonly Command[]>> = {
  new: [Command.HELLO],
  hello: [Command.PREPARE, Command.ABORT],
  prepared: [Command.ROUND, Command.STATE, Command.ABORT],
  state: [Command.COMMIT, Command.ABORT],
  committed: [],
  aborted: [],
  failed: [],
};

export class ConnectionState {
  private currentPhase: ConnectionPhase = 'new';
  private connectionRole: ConnectionRole | undefined;
  private migrationPrepared = false;
  private roundCount = 0;
  private requestCount = 0;

  /**
   * `role`: the role this connection must have, if known in advance. If omitted, the role is taken
   * from the HELLO (pass it to accept()).
   */
  constructor(private readonly expectedRole?: ConnectionRole) {}

  get phase(): ConnectionPhase {
    return this.currentPhase;
  }

  /** The connection's role: from the constructor, the HELLO, or the first request after HELLO. */
  get role(): ConnectionRole | undefined {
    return this.connectionRole;
  }

  get prepared(): boolean {
    return this.migrationPrepared;
  }

  /** ROUND requests accepted on this (control) connection. */
  get rounds(): number {
    return this.roundCount;
  }

  /** Requests accepted so far. */
  get accepted(): number {
    return this.requestCount;
  }

  /** Whether the conversation ended (COMMIT or ABORT accepted, or a request rejected). */
  get closed(): boolean {
    return this.currentPhase === 'committed' || this.currentPhase === 'aborted' || this.currentPhase === 'failed';
  }

  /**
   * The migration was prepared (the control connection's PREPARE was accepted): data connections
   * may carry MEMORY from now on. May be called before or after this connection's HELLO.
   */
  markPrepared(): void {
    this.migrationPrepared = true;
  }

  /** Requests valid next (for messages and tests). */
  expected(): Command[] {
    if (this.currentPhase === 'new') return [Command.HELLO];
    if (this.connectionRole === undefined && this.currentPhase === 'hello') {
      return this.migrationPrepared ? [Command.PREPARE, Command.ABORT, ...DATA_COMMANDS] : [Command.PREPARE, Command.ABORT];
    }
    if (this.connectionRole === 'data') {
      return this.currentPhase === 'hello' && this.migrationPrepared ? [...DATA_COMMANDS] : [];
    }
    return [...REQUESTS_AFTER[this.currentPhase]];
  }

  /**
   * Accepts the next request from the peer, or throws (PROTOCOL_OUT_OF_ORDER; PROTOCOL_BAD_COMMAND
   * for a code outside 1..9; PROTOCOL_BAD_PAYLOAD for a HELLO whose role contradicts the role given
   * to the constructor). For HELLO, pass the role from its payload if known (see the class comment).
   */
  accept(command: number, role?: ConnectionRole): void {
    assert(role === undefined || command === Command.HELLO, 'a role is passed with HELLO only');
    try {
      this.transition(command, role);
      this.requestCount++;
    } catch (err) {
      if (err instanceof FerryError) this.currentPhase = 'failed';
      throw err;
    }
  }

  private transition(command: number, helloRole: ConnectionRole | undefined): void {
    if (!isFrameCommand(command)) {
      throw new FerryError('PROTOCOL_BAD_COMMAND', `command code ${command} is not a request`, { command });
    }
    if (this.currentPhase === 'failed') throw this.outOfOrder(command, 'the connection already failed');
    if (command === Command.OK || command === Command.ERROR) {
      throw this.outOfOrder(command, `${commandName(command)} is a reply, not a request`);
    }
    if (this.currentPhase === 'new') {
      if (command !== Command.HELLO) throw this.outOfOrder(command, 'HELLO must come first');
      const resolved = helloRole ?? this.expectedRole;
      if (this.expectedRole !== undefined && resolved !== this.expectedRole) {
        throw new FerryError('PROTOCOL_BAD_PAYLOAD',
          `HELLO says role "${resolved}" on a ${this.expectedRole} connection`, { role: resolved, expected: this.expectedRole });
      }
      this.connectionRole = resolved;
      this.currentPhase = 'hello';
      return;
    }
    if (command === Command.HELLO) throw this.outOfOrder(command, 'HELLO was already received on this connection');
    if (this.currentPhase === 'committed' || this.currentPhase === 'aborted') {
      throw this.outOfOrder(command, `the migration was already ${this.currentPhase} on this connection`);
    }
    if (this.connectionRole === undefined) {
      // Role not declared: the first request after HELLO decides it.
      if (isDataCommand(command)) {
        if (!this.migrationPrepared) throw this.outOfOrder(command, `${commandName(command)} arrived before the migration was prepared`);
        this.connectionRole = 'data';
        return;
      }
      if (command !== Command.PREPARE && command !== Command.ABORT) {
        throw this.outOfOrder(command, `${commandName(command)} before PREPARE`);
      }
      this.connectionRole = 'control';
    }
    if (this.connectionRole === 'data') {
      if (!isDataCommand(command)) throw this.outOfOrder(command, 'data connections carry MEMORY and DISK only');
      if (!this.migrationPrepared) throw this.outOfOrder(command, `${commandName(command)} arrived before the migration was prepared`);
      return;
    }
    switch (command) {
      case Command.ABORT:
        this.currentPhase = 'aborted';
        return;
      case Command.MEMORY:
      case Command.DISK:
        throw this.outOfOrder(command, `${commandName(command)} is sent on data connections, not on the control connection`);
      case Command.PREPARE:
        if (this.currentPhase !== 'hello') throw this.outOfOrder(command, 'PREPARE was already received');
        this.currentPhase = 'prepared';
        return;
      case Command.ROUND:
        if (this.currentPhase !== 'prepared') {
          throw this.outOfOrder(command, this.currentPhase === 'hello' ? 'ROUND before PREPARE' : 'ROUND after STATE');
        }
        this.roundCount++;
        return;
      case Command.STATE:
        if (this.currentPhase !== 'prepared') {
          throw this.outOfOrder(command, this.currentPhase === 'hello' ? 'STATE before PREPARE' : 'STATE was already received');
        }
        this.currentPhase = 'state';
        return;
      case Command.COMMIT:
        if (this.currentPhase !== 'state') throw this.outOfOrder(command, 'COMMIT before STATE');
        this.currentPhase = 'committed';
        return;
    }
  }

  private outOfOrder(command: number, why: string): FerryError {
    const expected = this.expected().map(commandName);
    return new FerryError('PROTOCOL_OUT_OF_ORDER',
      `${commandName(command)} is not valid here on ${this.connectionRole === undefined ? 'this' : `a ${this.connectionRole}`} connection: ${why}` +
      ` (expected ${expected.length > 0 ? expected.join(' or ') : 'nothing more'})`,
      { command, phase: this.currentPhase, role: this.connectionRole ?? null, expected });
  }
}
