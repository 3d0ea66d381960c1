/**
 * VmdkDisk with many operations in flight (src/storage/vmdk/io-order.ts): reads and writes run
 * concurrently on the file, yet every read sees exactly the writes issued before it (per grain),
 * the disk ends as the operations applied in issue order, and nothing is lost when concurrent
 * writes allocate grains of one table that was not yet in memory. The files answer after random
 * delays, so operations finish out of issue order.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BlockFile } from '../../../src/storage/block-file.js';
import { LocalFile } from '../../../src/storage/local-file.js';
import { VmdkDisk } from '../../../src/storage/vmdk/disk.js';
import { createLocalDisk, openLocalDisk, openLocalParent, prng, qemuImgOk, withTempDir, writePattern } from '../../helpers/vmdk.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const GRAIN_BYTES = 64 * 1024;
/** Longest delay a jittery file adds to one call. */
const MAX_JITTER_MS = 2;

/** A BlockFile whose reads and writes resolve after a random delay; counts how many ran at once. */
class JitteryFile implements BlockFile {
  maxReadsAtOnce = 0;
  private reads = 0;
  constructor(private readonly inner: BlockFile, private readonly rnd: () => number,
    private readonly readJitterMs = MAX_JITTER_MS, private readonly writeJitterMs = MAX_JITTER_MS) {}
  get name(): string { return this.inner.name; }
  get readOnly(): boolean { return this.inner.readOnly; }
  async read(position: number, buf: Uint8Array): Promise<void> {
    this.reads++;
    this.maxReadsAtOnce = Math.max(this.maxReadsAtOnce, this.reads);
    try {
      await sleep(this.rnd() * this.readJitterMs);
      await this.inner.read(position, buf);
    } finally {
      this.reads--;
    }
  }
  async write(position: number, data: Uint8Array): Promise<void> {
    await sleep(this.rnd() * this.writeJitterMs);
    await this.inner.write(position, data);
  }
  flush(): Promise<void> { return this.inner.flush(); }
  size(): Promise<number> { return this.inner.size(); }
  truncate(length: number): Promise<void> { return this.inner.truncate(length); }
  close(): Promise<void> { return this.inner.close(); }
}

describe('VMDK disk with many operations in flight', () => {
  it('every read sees the writes issued before it and no later one; the disk ends in issue order (delta over a base, copy-up)', () => withTempDir(async (dir) => {
    const capacityBytes = 4 * MiB;
    const basePath = join(dir, 'base.vmdk');
    const base = await createLocalDisk(basePath, capacityBytes);
    const model = Buffer.alloc(capacityBytes);
    for (const w of writePattern(5, 20, capacityBytes)) { await base.write(w.offsetBytes, w.data); model.set(w.data, w.offsetBytes); }
    await base.flush();
    await base.close();
    const rnd = prng(77);
    const parentFile = new JitteryFile(await openLocalParent('base.vmdk', join(dir, 'delta.vmdk')), rnd);
    const deltaFile = new JitteryFile(await LocalFile.open(join(dir, 'delta.vmdk'), { create: true }), rnd);
    const delta = await VmdkDisk.createDelta(await VmdkDisk.open(parentFile), deltaFile, 'base.vmdk');

    const writes = writePattern(6, 300, capacityBytes, 100_000);
    const pending: Promise<void>[] = [];
    const reads: { got: Buffer; want: Buffer; at: number }[] = [];
    for (const [i, w] of writes.entries()) {
      const r = rnd();
      if (r < 0.45) {
        // Another range, read now: it must show the model as it stands at this point of the issue order.
        const length = 1 + Math.floor(rnd() * 150_000);
        const at = Math.floor(rnd() * (capacityBytes - length));
        const got = Buffer.alloc(length);
        reads.push({ got, want: Buffer.from(model.subarray(at, at + length)), at });
        pending.push(delta.read(at, got));
      } else if (r < 0.5) {
        pending.push(delta.flush());
      }
      model.set(w.data, w.offsetBytes);
      pending.push(delta.write(w.offsetBytes, w.data));
      if (i % 40 === 39) await Promise.all(pending.splice(0)); // windows of ~70 in flight, like a deep queue
    }
    await Promise.all(pending);
    for (const { got, want, at } of reads) assert.ok(got.equals(want), `the read at ${at} (${got.length} B) saw other writes than those issued before it`);
    assert.ok(deltaFile.maxReadsAtOnce + parentFile.maxReadsAtOnce > 2, 'reads ran concurrently');
    const all = Buffer.alloc(capacityBytes);
    await delta.read(0, all);
    assert.ok(all.equals(model), 'the disk holds every write, in issue order');
    await delta.flush();
    await delta.close();
    await qemuImgOk('check', join(dir, 'delta.vmdk'));
    const reopened = await openLocalDisk(join(dir, 'delta.vmdk'), true);
    await reopened.read(0, all);
    await reopened.close();
    assert.ok(all.equals(model), 'and so does the file after a reopen');
  }));

  it('concurrent first writes into grains of a table not yet in memory lose no entry (a disk too large to read its tables at open)', () => withTempDir(async (dir) => {
    const capacityBytes = 64 * GiB; // above the size whose tables open reads eagerly
    const path = join(dir, 'big.vmdk');
    await (await createLocalDisk(path, capacityBytes)).close();
    const rnd = prng(3);
    // Slow table reads, fast grain writes: an entry is set while other reads of its table are still
    // on their way (a second read of the table must not replace the one holding the entry).
    const disk = await VmdkDisk.open(new JitteryFile(await LocalFile.open(path), rnd, 10 * MAX_JITTER_MS, 0));
    // Grains 0..31 share table 0; grains 512*k share nothing but the directory.
    const grains = [...Array.from({ length: 32 }, (_, i) => i), ...Array.from({ length: 8 }, (_, k) => 512 * (k + 1))];
    const data = (g: number): Uint8Array => new Uint8Array(4096).fill((g % 251) + 1);
    await Promise.all(grains.map((g) => disk.write(g * GRAIN_BYTES, data(g))));
    await disk.flush();
    await disk.close();
    await qemuImgOk('check', path);
    const reopened = await openLocalDisk(path, true);
    for (const g of grains) {
      const got = new Uint8Array(4096);
      await reopened.read(g * GRAIN_BYTES, got);
      assert.deepEqual(got, data(g), `grain ${g}`);
    }
    await reopened.close();
  }));
});
