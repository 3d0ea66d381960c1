import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AssertionError } from '../../../src/lib/assert.js';
import { isFerryError } from '../../../src/lib/errors.js';
import { Command } from '../../../src/migration/protocol/frame.js';
import { ConnectionState } from '../../../src/migration/protocol/session-state.js';
import { throwsCode } from './fixtures.js';

const { HELLO, PREPARE, MEMORY, ROUND, STATE, COMMIT, ABORT, OK, ERROR, DISK } = Command;
const ALL = [HELLO, PREPARE, MEMORY, ROUND, STATE, COMMIT, ABORT, OK, ERROR, DISK];

function control(...commands: number[]): ConnectionState {
  const s = new ConnectionState();
  s.accept(HELLO, 'control');
  for (const c of commands) s.accept(c);
  return s;
}

function data(prepared: boolean): ConnectionState {
  const s = new ConnectionState();
  s.accept(HELLO, 'data');
  if (prepared) s.markPrepared();
  return s;
}

/** Every command except `allowed` is rejected (each on a fresh copy of the state). */
function onlyAllowed(make: () => ConnectionState, allowed: number[], label: string): void {
  for (const c of ALL) {
    const s = make();
    if (allowed.includes(c)) {
      s.accept(c);
    } else {
      assert.throws(() => s.accept(c), (err: unknown) => isFerryError(err, 'PROTOCOL_OUT_OF_ORDER'),
        `${label}: command ${c} should be out of order`);
      assert.equal(s.phase, 'failed');
    }
  }
}

describe('ConnectionState: control connection', () => {
  it('accepts HELLO, PREPARE, ROUND*, STATE, COMMIT', () => {
    const s = control(PREPARE, ROUND, ROUND, ROUND, STATE, COMMIT);
    assert.equal(s.phase, 'committed');
    assert.equal(s.role, 'control');
    assert.equal(s.rounds, 3);
    assert.equal(s.accepted, 7);
    assert.ok(s.closed);
    assert.equal(control(PREPARE, STATE, COMMIT).phase, 'committed');
  });

  it('allows exactly the documented requests in each phase', () => {
    onlyAllowed(() => new ConnectionState('control'), [HELLO], 'new');
    onlyAllowed(() => control(), [PREPARE, ABORT], 'after HELLO');
    onlyAllowed(() => control(PREPARE), [ROUND, STATE, ABORT], 'after PREPARE');
    onlyAllowed(() => control(PREPARE, ROUND), [ROUND, STATE, ABORT], 'after ROUND');
    onlyAllowed(() => control(PREPARE, STATE), [COMMIT, ABORT], 'after STATE');
    onlyAllowed(() => control(PREPARE, STATE, COMMIT), [], 'after COMMIT');
    onlyAllowed(() => control(ABORT), [], 'after ABORT');
    onlyAllowed(() => control(PREPARE, ROUND, ABORT), [], 'after ABORT');
  });

  it('rejects the classic mistakes with a message naming what was expected', () => {
    throwsCode(() => new ConnectionState().accept(PREPARE), 'PROTOCOL_OUT_OF_ORDER', /HELLO must come first/);
    throwsCode(() => control().accept(ROUND), 'PROTOCOL_OUT_OF_ORDER', /ROUND before PREPARE.*expected PREPARE or ABORT/);
    throwsCode(() => control(PREPARE).accept(PREPARE), 'PROTOCOL_OUT_OF_ORDER', /already/);
    throwsCode(() => control(PREPARE).accept(COMMIT), 'PROTOCOL_OUT_OF_ORDER', /COMMIT before STATE/);
    throwsCode(() => control(PREPARE, STATE).accept(STATE), 'PROTOCOL_OUT_OF_ORDER', /already/);
    throwsCode(() => control(PREPARE, STATE).accept(ROUND), 'PROTOCOL_OUT_OF_ORDER', /ROUND after STATE/);
    throwsCode(() => control(PREPARE).accept(MEMORY), 'PROTOCOL_OUT_OF_ORDER', /data connections/);
    throwsCode(() => control().accept(HELLO), 'PROTOCOL_OUT_OF_ORDER', /already/);
    throwsCode(() => control(PREPARE).accept(OK), 'PROTOCOL_OUT_OF_ORDER', /reply/);
    throwsCode(() => control(PREPARE).accept(ERROR), 'PROTOCOL_OUT_OF_ORDER', /reply/);
    throwsCode(() => new ConnectionState().accept(ABORT), 'PROTOCOL_OUT_OF_ORDER', /HELLO/);
  });

  it('stays failed after a rejected request', () => {
    const s = control(PREPARE);
    throwsCode(() => s.accept(COMMIT), 'PROTOCOL_OUT_OF_ORDER');
    throwsCode(() => s.accept(STATE), 'PROTOCOL_OUT_OF_ORDER', /failed/);
    assert.deepEqual(s.expected(), []);
  });

  it('lists the expected requests', () => {
    assert.deepEqual(new ConnectionState().expected(), [HELLO]);
    assert.deepEqual(control().expected(), [PREPARE, ABORT]);
    assert.deepEqual(control(PREPARE).expected(), [ROUND, STATE, ABORT]);
    assert.deepEqual(control(PREPARE, STATE).expected(), [COMMIT, ABORT]);
  });
});

describe('ConnectionState: data connection', () => {
  it('carries MEMORY and DISK only, and only once prepared', () => {
    onlyAllowed(() => data(false), [], 'data before prepare');
    onlyAllowed(() => data(true), [MEMORY, DISK], 'data after prepare');
    const s = data(true);
    for (let i = 0; i < 100; i++) s.accept(i % 2 === 0 ? MEMORY : DISK);
    assert.equal(s.accepted, 101);
    throwsCode(() => data(false).accept(DISK), 'PROTOCOL_OUT_OF_ORDER', /before the migration was prepared/);
    throwsCode(() => data(false).accept(MEMORY), 'PROTOCOL_OUT_OF_ORDER', /before the migration was prepared/);
    throwsCode(() => data(true).accept(ABORT), 'PROTOCOL_OUT_OF_ORDER', /MEMORY and DISK only/);
    throwsCode(() => data(true).accept(PREPARE), 'PROTOCOL_OUT_OF_ORDER', /MEMORY and DISK only/);
  });

  it('markPrepared may come before HELLO, but MEMORY still needs HELLO first', () => {
    const s = new ConnectionState();
    s.markPrepared();
    throwsCode(() => s.accept(MEMORY), 'PROTOCOL_OUT_OF_ORDER', /HELLO/);
    const t = new ConnectionState();
    t.markPrepared();
    t.accept(HELLO, 'data');
    t.accept(MEMORY);
    assert.ok(t.prepared);
    assert.deepEqual(t.expected(), [MEMORY, DISK]);
  });
});

describe('ConnectionState: roles', () => {
  it('takes the role from the constructor or from HELLO', () => {
    const a = new ConnectionState('data');
    a.accept(HELLO);
    assert.equal(a.role, 'data');
    const b = new ConnectionState('control');
    b.accept(HELLO, 'control');
    assert.equal(b.role, 'control');
  });

  it('rejects a HELLO whose role contradicts the expected one', () => {
    throwsCode(() => new ConnectionState('control').accept(HELLO, 'data'), 'PROTOCOL_BAD_PAYLOAD', /role/);
  });

  it('infers an undeclared role from the first request after HELLO', () => {
    const c = new ConnectionState();
    c.accept(HELLO);
    assert.equal(c.role, undefined);
    assert.deepEqual(c.expected(), [PREPARE, ABORT]);
    c.accept(PREPARE);
    assert.equal(c.role, 'control');
    c.accept(STATE);
    c.accept(COMMIT);
    assert.equal(c.phase, 'committed');

    const a = new ConnectionState();
    a.accept(HELLO);
    a.accept(ABORT);
    assert.equal(a.role, 'control');
    assert.equal(a.phase, 'aborted');

    const d = new ConnectionState();
    d.markPrepared();
    d.accept(HELLO);
    assert.deepEqual(d.expected(), [PREPARE, ABORT, MEMORY, DISK]);
    d.accept(MEMORY);
    assert.equal(d.role, 'data');
    throwsCode(() => d.accept(PREPARE), 'PROTOCOL_OUT_OF_ORDER', /MEMORY and DISK only/);

    const early = new ConnectionState();
    early.accept(HELLO);
    throwsCode(() => early.accept(MEMORY), 'PROTOCOL_OUT_OF_ORDER', /before the migration was prepared/);
    for (const c2 of [ROUND, STATE, COMMIT, OK, ERROR, HELLO]) {
      const s = new ConnectionState();
      s.accept(HELLO);
      throwsCode(() => s.accept(c2), 'PROTOCOL_OUT_OF_ORDER');
    }
  });

  it('a declared data role is stricter than inference', () => {
    const s = new ConnectionState();
    s.accept(HELLO, 'data');
    s.markPrepared();
    throwsCode(() => s.accept(PREPARE), 'PROTOCOL_OUT_OF_ORDER', /MEMORY and DISK only/);
  });

  it('treats a role on a non-HELLO request as a programmer error', () => {
    assert.throws(() => control().accept(PREPARE, 'control'), AssertionError);
  });

  it('rejects codes that are not commands', () => {
    for (const c of [0, 11, -1, 1.5]) throwsCode(() => new ConnectionState().accept(c), 'PROTOCOL_BAD_COMMAND');
  });
});
