/** The host's console buffer keeps the last CONSOLE_LOG_BYTES bytes of UTF-8, whole characters only. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CONSOLE_LOG_BYTES, ConsoleLog, MAX_CONSOLE_FOLLOWERS } from '../../src/host/console-log.js';

const utf8Bytes = (s: string): number => Buffer.byteLength(s, 'utf8');

/** The kept text is the longest whole-character suffix of everything appended that fits the bound. */
function assertKeptTail(kept: string, all: string): void {
  assert.ok(utf8Bytes(kept) <= CONSOLE_LOG_BYTES, `kept ${utf8Bytes(kept)} bytes; the bound is ${CONSOLE_LOG_BYTES}`);
  assert.ok(all.endsWith(kept), 'kept text is the end of what was appended');
  // Whole characters: re-encoding loses nothing (a cut character would become U+FFFD or a lone surrogate).
  assert.equal(Buffer.from(kept, 'utf8').toString('utf8'), kept);
  assert.ok(!/^[\uDC00-\uDFFF]/.test(kept), 'does not start with the second half of a surrogate pair');
  // The longest such suffix: one more character from `all` would not fit.
  const dropped = all.slice(0, all.length - kept.length);
  const next = [...dropped].at(-1);
  if (next !== undefined) assert.ok(utf8Bytes(next + kept) > CONSOLE_LOG_BYTES, 'kept as much as fits');
}

describe('console log bound', () => {
  it('keeps everything while under the bound', () => {
    const log = new ConsoleLog();
    log.append('héllo ');
    log.append('wörld\n');
    assert.equal(log.snapshot(), 'héllo wörld\n');
  });

  it('bounds bytes, not UTF-16 code units, for 2-byte characters', () => {
    const log = new ConsoleLog();
    // 40000 characters are fewer code units than the bound but 80000 bytes.
    const all = 'é'.repeat(40_000);
    log.append(all);
    assertKeptTail(log.snapshot(), all);
    assert.equal(utf8Bytes(log.snapshot()), CONSOLE_LOG_BYTES);
  });

  it('cuts at a character boundary when the bound falls inside a 3-byte character', () => {
    const log = new ConsoleLog();
    let all = '';
    for (let i = 0; i < 3000; i++) {
      const line = `line ${i}: €€€ ✓\n`;
      all += line;
      log.append(line);
    }
    assertKeptTail(log.snapshot(), all);
  });

  it('never keeps half a surrogate pair (4-byte characters)', () => {
    for (const lead of ['', 'a', 'ab', 'abc']) {
      const log = new ConsoleLog();
      const all = lead + '😀'.repeat(20_000);
      log.append(all);
      assertKeptTail(log.snapshot(), all);
    }
  });

  it('counts a surrogate pair split across two appends as one 4-byte character', () => {
    const log = new ConsoleLog();
    const pair = '😀';
    let all = '';
    for (let i = 0; i < 20_000; i++) {
      log.append(pair.slice(0, 1));
      log.append(pair.slice(1));
      all += pair;
    }
    assertKeptTail(log.snapshot(), all);
    assert.equal(utf8Bytes(log.snapshot()), CONSOLE_LOG_BYTES);
  });

  it('followers get every chunk as appended, untrimmed', () => {
    const log = new ConsoleLog();
    const seen: string[] = [];
    const stop = log.follow((t) => { seen.push(t); });
    const big = 'ü'.repeat(CONSOLE_LOG_BYTES);
    log.append(big);
    stop();
    log.append('after');
    assert.deepEqual(seen, [big]);
  });
});

describe('console followers', () => {
  it('end when the console closes (the VM left the host), also when they come after', () => {
    const log = new ConsoleLog();
    const seen: string[] = [];
    let ended = 0;
    log.follow((t) => { seen.push(t); }, () => { ended++; });
    log.append('a');
    log.close();
    log.append('b');
    assert.deepEqual(seen, ['a'], 'nothing after the close');
    assert.equal(ended, 1);
    log.follow(() => undefined, () => { ended++; });
    assert.equal(ended, 2, 'a follower of a closed console ends at once');
  });

  it('are bounded', () => {
    const log = new ConsoleLog();
    for (let i = 0; i < MAX_CONSOLE_FOLLOWERS; i++) log.follow(() => undefined);
    assert.throws(() => log.follow(() => undefined), { code: 'BUSY' });
  });
});
