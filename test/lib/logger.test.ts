/** The structured log: JSON lines with bindings, the pretty form, levels, and the line adapters. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createLogger, formatPretty, lineLog, loggerFromLines, type LoggerOptions } from '../../src/lib/logger.js';

/** A destination that keeps what it is given. */
function sink(isTTY = false): { lines: string[]; destination: NonNullable<LoggerOptions['destination']> } {
  const lines: string[] = [];
  return { lines, destination: { isTTY, write: (s) => { lines.push(s); } } };
}

const parse = (line: string): Record<string, unknown> => JSON.parse(line) as Record<string, unknown>;

describe('logger', () => {
  it('writes one JSON object per line, with time, level name, pid, message, the bindings of every child and the fields', () => {
    const s = sink();
    const root = createLogger({ destination: s.destination, bindings: { host: 'a' } });
    const job = root.child({ migrationId: 'f'.repeat(32), role: 'source' }).child({ vm: 'web' });
    job.info('precopy', { round: 3, bytes: 4096 });
    root.warn('plain');
    assert.equal(s.lines.length, 2);
    for (const l of s.lines) assert.ok(l.endsWith('\n') && !l.slice(0, -1).includes('\n'), 'one line each');
    const [first, second] = s.lines.map(parse);
    assert.equal(first?.msg, 'precopy');
    assert.equal(first?.level, 'info');
    assert.equal(first?.host, 'a');
    assert.equal(first?.migrationId, 'f'.repeat(32));
    assert.equal(first?.role, 'source');
    assert.equal(first?.vm, 'web');
    assert.equal(first?.round, 3);
    assert.equal(first?.bytes, 4096);
    assert.equal(first?.pid, process.pid);
    assert.ok(!Number.isNaN(Date.parse(String(first?.time))), 'an ISO time');
    // A child's bindings stay on the child: the parent's lines do not carry them.
    assert.equal(second?.level, 'warn');
    assert.equal(second?.host, 'a');
    assert.equal('migrationId' in (second ?? {}), false);
  });

  it('drops lines below its level; debug shows at debug', () => {
    const s = sink();
    const quiet = createLogger({ destination: s.destination, level: 'warn' });
    quiet.debug('no');
    quiet.info('no');
    quiet.warn('yes');
    quiet.error('yes too');
    assert.deepEqual(s.lines.map((l) => parse(l).msg), ['yes', 'yes too']);
    assert.equal(quiet.level, 'warn');
    const d = sink();
    createLogger({ destination: d.destination, level: 'debug' }).child({ taskId: 7 }).debug('detail');
    assert.equal(parse(d.lines[0] ?? '{}').taskId, 7);
    const none = sink();
    createLogger({ destination: none.destination, level: 'silent' }).error('nothing');
    assert.equal(none.lines.length, 0);
  });

  it('is human-readable on a terminal (or when asked): time of day, level, bindings, message, fields', () => {
    const tty = sink(true);
    createLogger({ destination: tty.destination, color: false, bindings: { host: 'b' } }).child({ migrationId: '6dae5135dc50f283def995ed8d79c164', vm: 'web' }).info('committed', { ms: 12 });
    // Ids shortened as the messages name them; the JSON form keeps them whole.
    assert.match(tty.lines[0] ?? '', /^\d\d:\d\d:\d\d\.\d{3} INFO {2}host=b migrationId=6dae5135 vm=web committed ms=12\n$/);
    const asked = sink(false);
    createLogger({ destination: asked.destination, format: 'pretty', color: false }).error('boom');
    assert.match(asked.lines[0] ?? '', /^\S+ ERROR boom\n$/);
    // And JSON when not a terminal, unless asked otherwise.
    const pipe = sink(false);
    createLogger({ destination: pipe.destination }).info('x');
    assert.equal(parse(pipe.lines[0] ?? '{}').msg, 'x');
    const forced = sink(true);
    createLogger({ destination: forced.destination, format: 'json' }).info('y');
    assert.equal(parse(forced.lines[0] ?? '{}').msg, 'y');
    // Colour only when asked (the default on a terminal).
    assert.ok(formatPretty(JSON.stringify({ time: '2026-01-01T10:00:00.000Z', level: 'warn', msg: 'm' }), true).includes('\u001b[33mWARN'));
  });

  it('lineLog: a line callback onto a logger, trouble as warnings; loggerFromLines: the reverse, messages only', () => {
    const s = sink();
    const log = lineLog(createLogger({ destination: s.destination }).child({ host: 'c' }));
    log('host c: ready');
    log('host c: cannot remove migrated VM v: EACCES');
    assert.deepEqual(s.lines.map((l) => [parse(l).level, parse(l).host, parse(l).msg]), [['info', 'c', 'host c: ready'], ['warn', 'c', 'host c: cannot remove migrated VM v: EACCES']]);
    const got: string[] = [];
    const back = loggerFromLines((line) => { got.push(line); });
    back.child({ migrationId: 'x' }).info('said "this"', { n: 1 });
    back.debug('below the default level');
    assert.deepEqual(got, ['said "this"']);
  });
});
