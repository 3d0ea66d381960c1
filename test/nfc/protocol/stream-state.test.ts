import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from '../../../src/nfc/protocol/frame.js';
import { StreamState } from '../../../src/nfc/protocol/stream-state.js';
import { throwsCode } from './fixtures.js';

function accepted(commands: readonly number[]): StreamState {
  const s = new StreamState();
  for (const c of commands) s.accept(c);
  return s;
}

describe('NFC stream order', () => {
  it('takes HELLO, then writes, syncs and finished files in any order, COMPLETE, then CLOSE', () => {
    const s = accepted([Command.HELLO, Command.DATA, Command.HOLE, Command.DATA, Command.SYNC, Command.FINISH_FILE, Command.DATA,
      Command.FINISH_FILE, Command.COMPLETE, Command.SYNC, Command.CLOSE]);
    assert.equal(s.phase, 'ended');
    assert.equal(accepted([Command.HELLO, Command.ABORT]).phase, 'ended');
    assert.equal(accepted([Command.HELLO, Command.COMPLETE, Command.ABORT]).phase, 'ended');
  });

  it('refuses anything before HELLO, a second HELLO, writes after COMPLETE, anything after CLOSE, and replies as requests', () => {
    const cases: [number[], number, RegExp][] = [
      [[], Command.DATA, /before the stream's HELLO/],
      [[], Command.SYNC, /before/],
      [[Command.HELLO], Command.HELLO, /twice/],
      [[Command.HELLO, Command.COMPLETE], Command.DATA, /after COMPLETE/],
      [[Command.HELLO, Command.COMPLETE], Command.FINISH_FILE, /after COMPLETE/],
      [[Command.HELLO, Command.COMPLETE], Command.COMPLETE, /after COMPLETE/],
      [[Command.HELLO, Command.CLOSE], Command.DATA, /closed/],
      [[Command.HELLO], Command.OK, /reply/],
      [[], Command.ERROR, /reply/],
    ];
    for (const [before, next, why] of cases) {
      const s = accepted(before);
      throwsCode(() => { s.accept(next); }, 'PROTOCOL_OUT_OF_ORDER', why);
      assert.equal(s.phase, 'failed');
      throwsCode(() => { s.accept(Command.CLOSE); }, 'PROTOCOL_OUT_OF_ORDER', /failed/);
    }
  });
});
