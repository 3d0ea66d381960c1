/**
 * Request order on one NFC stream, as the receiver sees it (docs/nfc-protocol.md, "Order"), as a pure
 * state machine. It models the sender's requests only: OK and ERROR are replies, never valid requests.
 *
 *   new        HELLO, exactly once, first
 *   open       DATA*, HOLE*, SYNC*, FINISH_FILE*, then COMPLETE at most once; CLOSE or ABORT at any time
 *   complete   SYNC, CLOSE or ABORT only (every file was finished: there is nothing left to write)
 *   ended      nothing: CLOSE or ABORT ended the stream
 *
 * Anything else throws PROTOCOL_OUT_OF_ORDER, after which the state is `failed` and rejects every
 * further request (the connection is closed after the ERROR reply).
 */
import { FerryError } from '../../lib/errors.js';
import { Command, commandName } from './frame.js';

export type StreamPhase = 'new' | 'open' | 'complete' | 'ended' | 'failed';

const REQUESTS_IN: Readonly<Record<StreamPhase, readonly number[]>> = {
  new: [Command.HELLO],
  open: [Command.DATA, Command.HOLE, Command.SYNC, Command.FINISH_FILE, Command.COMPLETE, Command.CLOSE, Command.ABORT],
  complete: [Command.SYNC, Command.CLOSE, Command.ABORT],
  ended: [],
  failed: [],
};

const NEXT: Readonly<Partial<Record<number, StreamPhase>>> = {
  [Command.HELLO]: 'open',
  [Command.COMPLETE]: 'complete',
  [Command.CLOSE]: 'ended',
  [Command.ABORT]: 'ended',
};

export class StreamState {
  private current: StreamPhase = 'new';

  get phase(): StreamPhase {
    return this.current;
  }

  /** Takes the next request's command; throws PROTOCOL_OUT_OF_ORDER (and fails) if it may not come now. */
  accept(command: number): void {
    if (!REQUESTS_IN[this.current].includes(command)) {
      const was = this.current;
      this.current = 'failed';
      throw new FerryError('PROTOCOL_OUT_OF_ORDER', `${commandName(command)} may not come ${describe(was, command)}`, { command, phase: was });
    }
    this.current = NEXT[command] ?? this.current;
  }

  /** The stream failed (a refused request): nothing more is accepted. */
  fail(): void {
    this.current = 'failed';
  }
}

function describe(phase: StreamPhase, command: number): string {
  if (command === Command.OK || command === Command.ERROR) return 'as a request (it is a reply)';
  switch (phase) {
    case 'new': return 'before the stream\'s HELLO';
    case 'open': return command === Command.HELLO ? 'twice on one stream' : 'now';
    case 'complete': return 'after COMPLETE';
    case 'ended': return 'after the stream was closed';
    case 'failed': return 'after the stream failed';
  }
}
