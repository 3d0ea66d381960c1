/**
 * The kvlog guest (guests/src/kvlog.ts) on a real file: it runs, is stopped, and a fresh VM on the
 * same disk finds and verifies every record; a save/restore in the middle loses and repeats
 * nothing; kill -9 of a `ferry vm run --disk` child right after a "flushed N" line loses none of
 * the N records. The disk is also checked by an independent decoder here (node's zlib.crc32).
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { setTimeout as sleep } from 'node:timers/promises';
import { Vm } from '../../src/vmm/vm.js';
import { saveVm, restoreVm } from '../../src/vmm/persist.js';
import { MiB } from '../../src/lib/units.js';
import { LocalFile } from '../../src/storage/local-file.js';
import { blockBackend } from '../../src/vmm/devices/block.js';
import { guestImagePath } from '../helpers/guests.js';
import { startFerry } from '../helpers/cli.js';

const RECORD_BYTES = 64;
const RECORD_MAGIC = 0x314c564b;
const DISK_BYTES = 2 * MiB;
const RAM_BYTES = 8 * MiB;

let dir = '';
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  if (dir !== '') await rm(dir, { recursive: true, force: true });
  dir = '';
});

async function newDisk(): Promise<string> {
  dir = await mkdtemp(join(tmpdir(), 'ferry-kvlog-'));
  const path = join(dir, 'kvlog.img');
  await writeFile(path, new Uint8Array(DISK_BYTES));
  return path;
}

/** Valid consecutive records at the start of the disk image, by an independent decoder. */
async function recordsOnDisk(path: string): Promise<number> {
  const bytes = await readFile(path);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let n = 0;
  let epoch = 1;
  for (let off = 0; off + RECORD_BYTES <= bytes.length; off += RECORD_BYTES, n++) {
    if (view.getUint32(off, true) !== RECORD_MAGIC) break;
    if (view.getUint32(off + 60, true) !== crc32(bytes.subarray(off, off + 60))) break;
    if (view.getBigUint64(off + 8, true) !== BigInt(n + 1)) break;
    const e = view.getUint32(off + 4, true);
    if (e < epoch) break;
    epoch = e;
  }
  return n;
}

interface Running { vm: Vm; lines: string[] }

/** Starts kvlog on the disk at `path`: booted with `cmdline`, or restored from the snapshot `fromSnapshot`. */
async function startKvlog(path: string, cmdline: string, fromSnapshot?: string): Promise<Running> {
  const file = await LocalFile.open(path);
  const disk = blockBackend(file, await file.size());
  const vm = fromSnapshot !== undefined
    ? await restoreVm(fromSnapshot, { disk })
    : Vm.create(new Uint8Array(await readFile(guestImagePath('kvlog'))), { memoryBytes: RAM_BYTES, vcpus: 2, cmdline, disk });
  cleanups.push(async () => { await vm.stop(); await file.close(); });
  const lines: string[] = [];
  vm.on('console', (text) => { lines.push(...text.split('\n').filter((l) => l !== '')); });
  await vm.start();
  return { vm, lines };
}

function lastNumber(lines: readonly string[], re: RegExp): number | null {
  for (let i = lines.length - 1; i >= 0; i--) {
    const m = re.exec(lines[i] ?? '');
    if (m?.[1] !== undefined) return Number(m[1]);
  }
  return null;
}

async function until(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const FOUND = /^kvlog: found (\d+) records, all verified/;
const FLUSHED = /^kvlog: flushed (\d+) records/;

describe('kvlog guest on the block device', () => {
  it('runs, is stopped; a fresh VM on the same disk finds and verifies all its records', async () => {
    const path = await newDisk();
    const first = await startKvlog(path, 'flush=64 rate=20000');
    await until(() => (lastNumber(first.lines, FLUSHED) ?? 0) >= 2000, 'a few flushes');
    await first.vm.pause();
    assert.equal(first.vm.selfcheck(), 0);
    const flushed = lastNumber(first.lines, FLUSHED) ?? 0;
    await first.vm.stop(); // drains in-flight writes: every appended-and-written record is in the file
    assert.ok(await recordsOnDisk(path) >= flushed);

    const second = await startKvlog(path, 'flush=64 rate=20000');
    await until(() => lastNumber(second.lines, FOUND) !== null, 'the boot scan');
    const found = lastNumber(second.lines, FOUND) ?? 0;
    assert.ok(found >= flushed, `found ${found} >= flushed ${flushed}`);
    assert.match(second.lines.join('\n'), /\(epoch 2\)/);
    await until(() => (lastNumber(second.lines, FLUSHED) ?? 0) > found + 500, 'appends after the boot scan');
    await second.vm.pause();
    assert.equal(second.vm.selfcheck(), 0);
  });

  it('a save and restore mid-run loses and repeats no request (pause drains the queue)', async () => {
    const path = await newDisk();
    const run = await startKvlog(path, 'flush=32 rate=50000');
    await until(() => (lastNumber(run.lines, FLUSHED) ?? 0) >= 1000, 'flushes');
    const pause = await run.vm.pause();
    assert.equal(run.vm.blockStats()?.inFlight, 0);
    assert.ok(pause.blockDrainMs >= 0);
    const snap = join(dir, 'kvlog.snap');
    await saveVm(run.vm, snap);
    await run.vm.stop();

    const again = await startKvlog(path, '', snap);
    const before = lastNumber(run.lines, FLUSHED) ?? 0;
    await until(() => (lastNumber(again.lines, FLUSHED) ?? 0) >= before + 1000, 'flushes after the restore');
    await again.vm.pause();
    assert.equal(again.vm.selfcheck(), 0, 'every record and the index are intact');
    assert.equal(lastNumber(again.lines, FOUND), null, 'a restored VM does not boot again');
    await again.vm.stop();
    assert.ok(await recordsOnDisk(path) >= (lastNumber(again.lines, FLUSHED) ?? 0));
  });

  it('kill -9 of `ferry vm run --disk` right after "flushed N" loses none of the N records, boot after boot', async () => {
    const path = await newDisk();
    let flushedBefore = 0;
    // Three lives on one disk, killed after the 1st, 4th and 12th flush line: each next boot must
    // find at least what the previous life reported flushed, and append after it (new epoch).
    for (const [life, killAfter] of [1, 4, 12].entries()) {
      const child = startFerry(['vm', 'run', guestImagePath('kvlog'), '--memory', '8MiB', '--disk', path, '--cmdline', 'flush=48 rate=30000']);
      let flushLines = 0;
      let flushedAtKill = -1;
      let found = -1;
      let buffered = '';
      child.child.stdout?.on('data', (d: Buffer) => {
        buffered += d.toString();
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          const f = FOUND.exec(line);
          if (f?.[1] !== undefined) found = Number(f[1]);
          const m = FLUSHED.exec(line);
          if (m?.[1] !== undefined && flushedAtKill < 0 && ++flushLines === killAfter) {
            flushedAtKill = Number(m[1]);
            child.child.kill('SIGKILL');
          }
        }
      });
      const result = await child.done;
      assert.equal(result.signal, 'SIGKILL', `life ${life}: killed (stderr: ${result.stderr})`);
      assert.ok(found >= flushedBefore, `life ${life}: boot found ${found} records, the previous life had flushed ${flushedBefore}`);
      assert.ok(flushedAtKill > found, `life ${life}: flushed ${flushedAtKill} beyond what it found (${found})`);
      assert.ok(await recordsOnDisk(path) >= flushedAtKill, `life ${life}: the disk holds every one of the ${flushedAtKill} flushed records`);
      flushedBefore = flushedAtKill;
    }
    // And the guest itself agrees, checking everything at boot and in its self-check.
    const last = await startKvlog(path, 'rate=1');
    await until(() => lastNumber(last.lines, FOUND) !== null, 'the boot scan');
    assert.ok((lastNumber(last.lines, FOUND) ?? 0) >= flushedBefore);
    assert.match(last.lines.join('\n'), /\(epoch 4\)/);
    await last.vm.pause();
    assert.equal(last.vm.selfcheck(), 0);
  });
});
