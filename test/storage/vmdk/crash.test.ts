/**
 * Crash consistency: a writer process is killed with SIGKILL at random points; each time the disk
 * (a delta over a base, so copy-up is in play) passes `qemu-img check`, opens in Ferry, and holds
 * every write of every epoch whose flush was acknowledged. Only the epoch in flight at the kill may
 * be partly there; its bytes are left out of the comparison, and what the disk then holds becomes the
 * next round's starting content.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LocalFile } from '../../../src/storage/local-file.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import { crashEpoch } from '../../helpers/vmdk-crash.js';
import { createLocalDisk, openLocalDisk, prng, qemuImgOk, withTempDir, writePattern } from '../../helpers/vmdk.js';

const WRITER = fileURLToPath(new URL('../../helpers/vmdk-crash-writer.js', import.meta.url));
const MiB = 1024 * 1024;
const CAPACITY_BYTES = 8 * MiB;
const ITERATIONS = 20;
/** A writer that never acknowledges within this is killed anyway (and the test still checks the disk). */
const WRITER_DEADLINE_MS = 5_000;

interface Killed { readonly acked: number; readonly stderr: string }

/** Runs the writer until `killAfterAcks` acknowledgements plus `extraMs`, then SIGKILLs it. */
function runAndKill(path: string, seed: number, killAfterAcks: number, extraMs: number): Promise<Killed> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WRITER, path, String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let stderr = '';
    let killTimer: NodeJS.Timeout | undefined;
    const kill = (): void => { if (child.exitCode === null) child.kill('SIGKILL'); };
    const deadline = setTimeout(kill, WRITER_DEADLINE_MS);
    const schedule = (): void => { killTimer ??= setTimeout(kill, extraMs); };
    if (killAfterAcks === 0) schedule();
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if ((out.match(/acked/g) ?? []).length >= killAfterAcks) schedule();
    });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', () => {
      clearTimeout(deadline);
      if (killTimer !== undefined) clearTimeout(killTimer);
      const acks = [...out.matchAll(/acked (\d+)/g)].map((m) => Number(m[1]));
      resolve({ acked: acks.length === 0 ? 0 : Math.max(...acks), stderr });
    });
  });
}

describe('VMDK crash consistency', () => {
  it(`${ITERATIONS} writers killed with SIGKILL: qemu-img check passes and every acknowledged write reads back`, { timeout: 60_000 }, () => withTempDir(async (dir) => {
    const basePath = join(dir, 'base.vmdk');
    const base = await createLocalDisk(basePath, CAPACITY_BYTES);
    let expected = Buffer.alloc(CAPACITY_BYTES);
    for (const w of writePattern(99, 30, CAPACITY_BYTES)) { await base.write(w.offsetBytes, w.data); expected.set(w.data, w.offsetBytes); }
    await base.flush();
    await base.close();
    const deltaPath = join(dir, 'delta.vmdk');
    const delta = await VmdkDisk.createDelta(await openLocalDisk(basePath, true), await LocalFile.open(deltaPath, { create: true }), 'base.vmdk');
    await delta.close();

    const rnd = prng(2026);
    let totalAcked = 0;
    for (let it = 1; it <= ITERATIONS; it++) {
      const { acked, stderr } = await runAndKill(deltaPath, it, Math.floor(rnd() * 4), Math.floor(rnd() * 25));
      assert.equal(stderr.includes('Error'), false, `writer failed on its own: ${stderr}`);
      totalAcked += acked;
      await qemuImgOk('check', deltaPath);
      const inFlight = new Uint8Array(CAPACITY_BYTES);
      for (let e = 1; e <= acked; e++) for (const w of crashEpoch(it, e, CAPACITY_BYTES)) expected.set(w.data, w.offsetBytes);
      for (const w of crashEpoch(it, acked + 1, CAPACITY_BYTES)) inFlight.fill(1, w.offsetBytes, w.offsetBytes + w.data.length);
      const disk = await openLocalDisk(deltaPath, true);
      const actual = Buffer.alloc(CAPACITY_BYTES);
      await disk.read(0, actual);
      await disk.close();
      for (let i = 0; i < CAPACITY_BYTES; i++) {
        if (inFlight[i] === 0 && actual[i] !== expected[i]) assert.fail(`iteration ${it} (${acked} epochs acknowledged): byte ${i} is ${actual[i]}, expected ${expected[i]}`);
      }
      expected = actual;
    }
    assert.ok(totalAcked > ITERATIONS, `the writers got work acknowledged (${totalAcked} epochs)`);
  }));
});
