/**
 * The `ferry` command as a user runs it: real child processes, real files. Save in one process,
 * restore in another, and the deterministic compute guest's output is identical to an
 * uninterrupted run; Ctrl-C pauses and summarises; bad input gets a stable error code.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { runFerry, startFerry } from '../helpers/cli.js';
import { guestImagePath } from '../helpers/guests.js';

let dir = '';
before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-cli-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });


describe('ferry vm run / save / restore', () => {
  it('continues the compute guest exactly in another process (output identical to an uninterrupted run)', async () => {
    const compute = guestImagePath('compute');
    // Long enough (~2 s of guest time here) that a 150 ms run cannot reach the end even when a loaded
    // machine fires the --for timer late (20M iterations, ~0.6 s, did: 1 run in 6 under load).
    const cmdline = 'iters=60000000 report=1500000';
    const whole = await runFerry(['vm', 'run', compute, '--cmdline', cmdline]);
    assert.equal(whole.code, 0, whole.stderr);
    assert.match(whole.stdout, /compute: done i=60000000 h=[0-9a-f]{16}\n$/);

    const snap = join(dir, 'compute.snap');
    const first = await runFerry(['vm', 'run', compute, '--cmdline', cmdline, '--for', '150ms', '--save', snap]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /paused \(ran for 0\.15 s\).*saved to/);
    assert.doesNotMatch(first.stdout, /done/, 'the first part stopped before the end (else the test proves nothing)');
    const second = await runFerry(['vm', 'restore', snap]);
    assert.equal(second.code, 0, second.stderr);
    assert.equal(first.stdout + second.stdout, whole.stdout);
  });

  it('a multi-vCPU dirtier saved and restored keeps its invariants and keeps running', async () => {
    const snap = join(dir, 'dirtier.snap');
    const first = await runFerry(['vm', 'run', guestImagePath('dirtier'), '--vcpus', '3', '--memory', '32MiB', '--cmdline', 'hot=8MiB pattern=seq check=1', '--for', '400ms', '--save', snap]);
    assert.equal(first.code, 0, first.stderr);
    const inspect = await runFerry(['vm', 'inspect', snap]);
    assert.equal(inspect.code, 0, inspect.stderr);
    assert.match(inspect.stdout, /3 vCPU\(s\), 32 MiB RAM/);
    // check=1: the guest verifies every page before it modifies it, so a bad restore panics (exit 3).
    const second = await runFerry(['vm', 'restore', snap, '--for', '400ms']);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stderr, /paused \(ran for 0\.4 s\)/);
  });

  it('Ctrl-C pauses the VM, prints a one-line summary and exits 0', async () => {
    const run = startFerry(['vm', 'run', guestImagePath('dirtier'), '--vcpus', '2', '--memory', '64MiB', '--cmdline', 'hot=4MiB']);
    const deadline = Date.now() + 20_000;
    while (!run.stdout().includes('dirtier:') && Date.now() < deadline) await sleep(20);
    run.child.kill('SIGINT');
    const r = await run.done;
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.match(lines.at(-1) ?? '', /^ferry: vm dirtier paused \(interrupted\) after .* 2 vCPU\(s\).*steps.*pause [\d.]+ ms$/);
  });

  it('a crashing guest exits 3 with the crash reason', async () => {
    const r = await runFerry(['vm', 'run', guestImagePath('dirtier'), '--cmdline', 'hot=banana']);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /crashed .*panic on vCPU 0.*hot=banana/);
  });
});

describe('ferry demo (npm start)', () => {
  it('starts two hosts, migrates the demo VM back and forth, then shuts everything down', async () => {
    const r = await runFerry(['demo', '--migrations', '2', '--memory', '32MiB', '--cmdline', 'hot=8MiB pattern=random']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /#1 alpha -> beta: .*SUCCEEDED/);
    assert.match(r.stdout, /#2 beta -> alpha: .*SUCCEEDED/);
    assert.equal((r.stdout.match(/guest self-check on \w+: intact/g) ?? []).length, 2);
    assert.match(r.stderr, /hosts stopped, temporary data removed/);
  });
});

describe('ferry: bad input gets a clear error and a stable code', () => {
  const cases: readonly { args: readonly string[]; code: number; match: RegExp }[] = [
    { args: ['vm', 'run', '/nonexistent.wasm'], code: 1, match: /\[INVALID_ARGUMENT\].*cannot read guest image/ },
    { args: ['vm', 'run', 'IMAGE', '--memory', '12X'], code: 1, match: /\[INVALID_SIZE\]: --memory: "12X"/ },
    { args: ['vm', 'run', 'IMAGE', '--memory', '1000'], code: 1, match: /\[VM_CONFIG_INVALID\].*multiple of 64 KiB/ },
    { args: ['vm', 'run', 'IMAGE', '--vcpus', '0'], code: 1, match: /\[INVALID_ARGUMENT\]: --vcpus: 0 is out of range/ },
    { args: ['vm', 'run', 'IMAGE', '--vcpus', 'two'], code: 1, match: /\[INVALID_ARGUMENT\]: --vcpus: "two" is not a whole number/ },
    { args: ['vm', 'run', 'IMAGE', '--trace-granularity', '3KiB'], code: 1, match: /\[VM_CONFIG_INVALID\]: trace granularity/ },
    { args: ['vm', 'run', 'IMAGE', '--for', 'soon'], code: 1, match: /\[INVALID_DURATION\]/ },
    { args: ['vm', 'run', 'NOTWASM'], code: 1, match: /\[IMAGE_NOT_WASM\]/ },
    { args: ['vm', 'restore', 'NOTWASM'], code: 1, match: /\[SNAPSHOT_NOT_FERRY\]/ },
    { args: ['vm', 'inspect', '/nonexistent.snap'], code: 1, match: /\[SNAPSHOT_IO\]/ },
    { args: ['vm', 'frobnicate'], code: 2, match: /unknown command/ },
    { args: ['vm', 'run'], code: 2, match: /missing required argument/ },
    { args: ['copy', 'a.img', '--to', 'ds2'], code: 2, match: /required option '--from <datastore>'/ },
    { args: ['copy', '--from', 'ds1', '--to', 'ds2'], code: 2, match: /missing required argument 'files'/ },
    { args: ['copy', 'a.img', '--from', 'ds1', '--to', 'ds2', '--streams', '0'], code: 1, match: /\[INVALID_ARGUMENT\]: --streams: 0 is out of range 1\.\.8/ },
    { args: ['copy', 'a.img', '--from', 'ds1', '--to', 'ds2', '--rate', '1KiB'], code: 1, match: /\[INVALID_ARGUMENT\]: --rate must be at least 1 MiB\/s/ },
    { args: ['task', 'move', 'x1', '--to', 'b'], code: 1, match: /\[INVALID_ARGUMENT\].*not a task id/ },
  ];
  for (const c of cases) {
    it(c.args.join(' '), async () => {
      const notWasm = join(dir, 'not.wasm');
      await writeFile(notWasm, 'this is a text file\n');
      const args = c.args.map((a) => (a === 'IMAGE' ? guestImagePath('dirtier') : a === 'NOTWASM' ? notWasm : a));
      const r = await runFerry(args);
      assert.equal(r.code, c.code, r.stderr);
      assert.match(r.stderr, c.match);
    });
  }
});
