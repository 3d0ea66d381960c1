import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { appendFile, mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { isFerryError, type FerryErrorCode } from '../../src/lib/errors.js';
import {
  SNAPSHOT_CHUNK_BYTES, SNAPSHOT_FORMAT_VERSION, SNAPSHOT_MAGIC, openSnapshot, writeSnapshot,
  type SnapshotMetadata, type SnapshotProgress,
} from '../../src/vmm/snapshot.js';

// The byte layout is restated here from docs/snapshot-format.md on purpose: these tests check the
// file against the document, not against the implementation's own constants.
const CHUNK = 64 * 1024;
const HEADER = 88;
const RECORD = 16 + CHUNK;
const OFF = {
  version: 8, headerLength: 12, metadataOffset: 16, metadataLength: 24, imageOffset: 32, imageLength: 40,
  memoryOffset: 48, memoryLength: 56, recordCount: 64, metadataCrc: 68, imageCrc: 72, memoryIndexCrc: 76,
  chunkBytes: 80, headerCrc: 84,
} as const;

let dir = '';
let counter = 0;
void before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-snapshot-test-')); });
void after(async () => { await rm(dir, { recursive: true, force: true }); });

function freshPath(): string {
  counter++;
  return join(dir, `snap-${counter}.fsnap`);
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function makeImage(bytes = 3000): Uint8Array {
  const image = new Uint8Array(bytes);
  image.set(randomBytes(bytes));
  image.set([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
  return image;
}

function makeMeta(image: Uint8Array, ramBytes: number, over: Partial<SnapshotMetadata> = {}): SnapshotMetadata {
  return {
    vm: { name: 'web-1', ramBytes, vcpus: 2, granularityBytes: 4096, cmdline: 'hot=64MiB pattern=random' },
    imageSha256: sha256(image),
    claimedPages: ramBytes / CHUNK,
    clockNs: 2n ** 63n + 12_345n,
    vcpuStates: [
      {
        halted: false,
        globals: [
          { type: 'i32', value: -7 },
          { type: 'i64', value: -(2n ** 63n) },
          { type: 'i64', value: 2n ** 63n - 1n },
          { type: 'f32', value: 1.5 },
          { type: 'f64', value: Math.PI },
        ],
      },
      {
        halted: true,
        globals: [
          { type: 'f64', value: NaN },
          { type: 'f64', value: -0 },
          { type: 'f32', value: -Infinity },
          { type: 'f64', value: Infinity },
          { type: 'i32', value: 2 ** 31 - 1 },
        ],
      },
    ],
    createdAt: '2024-05-01T12:00:00.000Z',
    ...over,
  };
}

/** RAM whose chunk i is non-zero iff nonZero(i); non-zero chunks hold random bytes (plus edge cases). */
function makeRam(chunks: number, nonZero: (i: number) => boolean, shared = false): Uint8Array {
  const ram = new Uint8Array(shared ? new SharedArrayBuffer(chunks * CHUNK) : new ArrayBuffer(chunks * CHUNK));
  for (let i = 0; i < chunks; i++) {
    if (!nonZero(i)) continue;
    const base = i * CHUNK;
    switch (i % 3) {
      case 0: ram.set(randomBytes(CHUNK), base); break;
      case 1: ram[base + CHUNK - 1] = 0x5a; break; // only the last byte set
      default: ram[base] = 1; break; // only the first byte set
    }
  }
  return ram;
}

interface Valid { path: string; meta: SnapshotMetadata; image: Uint8Array; ram: Uint8Array; bytes: Buffer }

/** A valid snapshot of 8 chunks (4 non-zero: 0, 2, 5, 7) and its bytes. */
async function writeValid(): Promise<Valid> {
  const path = freshPath();
  const image = makeImage();
  const ram = makeRam(8, (i) => [0, 2, 5, 7].includes(i));
  const meta = makeMeta(image, ram.byteLength);
  await writeSnapshot(path, meta, image, ram);
  return { path, meta, image, ram, bytes: await readFile(path) };
}

function fixHeaderCrc(b: Buffer): void {
  b.writeUInt32LE(crc32(b.subarray(0, OFF.headerCrc)), OFF.headerCrc);
}

function metadataRange(b: Buffer): [number, number] {
  const at = Number(b.readBigUInt64LE(OFF.metadataOffset));
  return [at, at + Number(b.readBigUInt64LE(OFF.metadataLength))];
}

function imageRange(b: Buffer): [number, number] {
  const at = Number(b.readBigUInt64LE(OFF.imageOffset));
  return [at, at + Number(b.readBigUInt64LE(OFF.imageLength))];
}

function recordAt(b: Buffer, index: number): number {
  return Number(b.readBigUInt64LE(OFF.memoryOffset)) + index * RECORD;
}

/** Replaces the metadata JSON text by one of the same byte length and fixes both checksums. */
function patchMetadata(b: Buffer, edit: (json: string) => string): void {
  const [start, end] = metadataRange(b);
  const text = b.subarray(start, end).toString('utf8');
  const patched = Buffer.from(edit(text), 'utf8');
  assert.notEqual(patched.toString(), text, 'the patch must change the metadata');
  assert.equal(patched.byteLength, end - start, 'test patches keep the metadata length');
  patched.copy(b, start);
  b.writeUInt32LE(crc32(b.subarray(start, end)), OFF.metadataCrc);
  fixHeaderCrc(b);
}

async function saveBytes(bytes: Uint8Array): Promise<string> {
  const path = freshPath();
  await writeFile(path, bytes);
  return path;
}

async function expectOpenError(path: string, code: FerryErrorCode, message: RegExp): Promise<void> {
  await assert.rejects(openSnapshot(path), (err: unknown) => {
    assert.ok(isFerryError(err, code), `expected ${code}, got ${String(err)}`);
    assert.match(err.message, message);
    return true;
  });
}

/** Opens fine, but restoring the memory fails with `code`. */
async function expectRestoreError(path: string, code: FerryErrorCode, message: RegExp): Promise<void> {
  const snap = await openSnapshot(path);
  try {
    const ram = new Uint8Array(snap.meta.vm.ramBytes);
    await assert.rejects(snap.restoreMemory(ram), (err: unknown) => {
      assert.ok(isFerryError(err, code), `expected ${code}, got ${String(err)}`);
      assert.match(err.message, message);
      return true;
    });
  } finally {
    await snap.close();
  }
}

void describe('snapshot format', () => {
  void it('exports the documented constants', () => {
    assert.equal(SNAPSHOT_MAGIC, 'FERRYSNP');
    assert.equal(SNAPSHOT_FORMAT_VERSION, 1);
    assert.equal(SNAPSHOT_CHUNK_BYTES, CHUNK);
  });

  void it('round-trips RAM, image and metadata; skips and counts zero chunks; marks exactly the stored chunks', async () => {
    const chunks = 200; // > 3 batches of 64 records
    const nonZero = (i: number): boolean => i % 5 !== 1 && i % 7 !== 0;
    const ram = makeRam(chunks, nonZero, true);
    const image = makeImage(100_000);
    const meta = makeMeta(image, ram.byteLength, { claimedPages: 17 });
    const path = freshPath();
    const expected = Array.from({ length: chunks }, (_, i) => i).filter(nonZero);

    const result = await writeSnapshot(path, meta, image, ram);
    assert.equal(result.chunksWritten, expected.length);
    assert.equal(result.zeroChunksSkipped, chunks - expected.length);
    assert.equal(result.sizeBytes, (await stat(path)).size);
    assert.deepEqual(await readdir(dir).then((names) => names.filter((n) => n.endsWith('.tmp'))), []);

    const bytes = await readFile(path);
    assert.equal(bytes.subarray(0, 8).toString('latin1'), 'FERRYSNP');
    assert.equal(bytes.readUInt32LE(OFF.version), 1);
    assert.equal(bytes.readUInt32LE(OFF.headerLength), HEADER);
    assert.equal(bytes.readUInt32LE(OFF.recordCount), expected.length);
    assert.equal(bytes.readUInt32LE(OFF.chunkBytes), CHUNK);
    assert.equal(result.sizeBytes, HEADER + (metadataRange(bytes)[1] - HEADER) + image.byteLength + expected.length * RECORD);

    const snap = await openSnapshot(path);
    try {
      assert.deepEqual(snap.meta, meta);
      assert.ok(Object.is(snap.meta.vcpuStates[1]?.globals[1]?.value, -0), '-0 survives');
      assert.equal(typeof snap.meta.clockNs, 'bigint');
      assert.deepEqual(snap.image, image);
      const restored = new Uint8Array(ram.byteLength);
      const marks: [number, number][] = [];
      const { chunksRead } = await snap.restoreMemory(restored, (offset, length) => { marks.push([offset, length]); });
      assert.equal(chunksRead, expected.length);
      assert.ok(Buffer.from(restored).equals(Buffer.from(ram.buffer)), 'restored RAM equals the original byte for byte');
      assert.deepEqual(marks, expected.map((i) => [i * CHUNK, CHUNK]));
      // restoreMemory can be run again (e.g. into a second VM).
      const again = new Uint8Array(ram.byteLength);
      await snap.restoreMemory(again);
      assert.ok(Buffer.from(again).equals(Buffer.from(ram.buffer)));
    } finally {
      await snap.close();
      await snap.close(); // idempotent
    }
  });

  void it('round-trips an all-zero RAM as a snapshot with no memory records', async () => {
    const image = makeImage();
    const ram = new Uint8Array(4 * CHUNK);
    const path = freshPath();
    const result = await writeSnapshot(path, makeMeta(image, ram.byteLength), image, ram);
    assert.deepEqual({ chunksWritten: result.chunksWritten, zeroChunksSkipped: result.zeroChunksSkipped }, { chunksWritten: 0, zeroChunksSkipped: 4 });
    const snap = await openSnapshot(path);
    try {
      const progress: SnapshotProgress[] = [];
      let marks = 0;
      const { chunksRead } = await snap.restoreMemory(new Uint8Array(ram.byteLength), () => { marks++; }, (p) => progress.push(p));
      assert.equal(chunksRead, 0);
      assert.equal(marks, 0);
      assert.deepEqual(progress, [{ doneBytes: 0, totalBytes: 0 }]);
    } finally {
      await snap.close();
    }
  });

  void it('reports monotonic progress ending at the total, for writing and restoring', async () => {
    const chunks = 512; // 32 MiB RAM: several 4 MiB batches
    const ram = makeRam(chunks, (i) => i % 2 === 0);
    const image = makeImage();
    const path = freshPath();
    const writes: SnapshotProgress[] = [];
    await writeSnapshot(path, makeMeta(image, ram.byteLength), image, ram, (p) => writes.push(p));
    const reads: SnapshotProgress[] = [];
    const snap = await openSnapshot(path);
    try {
      await snap.restoreMemory(new Uint8Array(ram.byteLength), undefined, (p) => reads.push(p));
    } finally {
      await snap.close();
    }
    for (const [events, total] of [[writes, ram.byteLength], [reads, (chunks / 2) * CHUNK]] as const) {
      assert.ok(events.length >= 3, `several progress events (${events.length})`);
      for (let i = 0; i < events.length; i++) {
        const e = events[i];
        assert.ok(e);
        assert.equal(e.totalBytes, total);
        assert.ok(e.doneBytes <= total);
        if (i > 0) assert.ok(e.doneBytes > (events[i - 1]?.doneBytes ?? -1), 'strictly increasing');
      }
      assert.deepEqual(events.at(-1), { doneBytes: total, totalBytes: total });
    }
  });

  void it('refuses a restore into RAM of the wrong size and after close', async () => {
    const { path } = await writeValid();
    const snap = await openSnapshot(path);
    await assert.rejects(snap.restoreMemory(new Uint8Array(CHUNK)), (e: unknown) => isFerryError(e, 'INVALID_ARGUMENT'));
    await snap.close();
    await assert.rejects(snap.restoreMemory(new Uint8Array(8 * CHUNK)), (e: unknown) => isFerryError(e, 'INVALID_ARGUMENT'));
  });
});

void describe('writeSnapshot failures', () => {
  void it('leaves no file behind when the RAM length does not match', async () => {
    const path = freshPath();
    const image = makeImage();
    await assert.rejects(writeSnapshot(path, makeMeta(image, 8 * CHUNK), image, new Uint8Array(7 * CHUNK)),
      (e: unknown) => isFerryError(e, 'INVALID_ARGUMENT') && /RAM buffer/.test(e.message));
    await assert.rejects(stat(path), { code: 'ENOENT' });
    await assert.rejects(stat(`${path}.tmp`), { code: 'ENOENT' });
  });

  void it('removes the temporary file and keeps the previous snapshot when writing fails midway', async () => {
    const { path, bytes } = await writeValid();
    const image = makeImage();
    const ram = makeRam(256, () => true);
    const boom = new Error('progress consumer failed');
    let calls = 0;
    await assert.rejects(writeSnapshot(path, makeMeta(image, ram.byteLength), image, ram, () => {
      calls++;
      throw boom;
    }), (e: unknown) => e === boom);
    assert.equal(calls, 1, 'failed after the first batch was written');
    await assert.rejects(stat(`${path}.tmp`), { code: 'ENOENT' });
    assert.ok((await readFile(path)).equals(bytes), 'the earlier snapshot under the real name is untouched');
  });

  void it('rejects invalid metadata before creating any file', async () => {
    const path = freshPath();
    const image = makeImage();
    const ram = new Uint8Array(2 * CHUNK);
    const bad: [string, SnapshotMetadata, RegExp][] = [
      ['vcpus mismatch', makeMeta(image, ram.byteLength, { vcpuStates: [{ halted: false, globals: [] }] }), /vcpuStates/],
      ['wrong sha', makeMeta(image, ram.byteLength, { imageSha256: '0'.repeat(64) }), /imageSha256/],
      ['claimed pages', makeMeta(image, ram.byteLength, { claimedPages: 3 }), /claimedPages/],
      ['f32 value', makeMeta(image, ram.byteLength, { vcpuStates: [{ halted: false, globals: [{ type: 'f32', value: 0.1 }] }, { halted: false, globals: [] }] }), /f32/],
    ];
    for (const [what, meta, message] of bad) {
      await assert.rejects(writeSnapshot(path, meta, image, ram), (e: unknown) => isFerryError(e, 'INVALID_ARGUMENT') && message.test(e.message), what);
    }
    assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith(path.split('/').at(-1) ?? '?')), []);
  });

  void it('reports a missing directory as SNAPSHOT_IO with the path', async () => {
    const path = join(dir, 'no-such-dir', 'x.fsnap');
    const image = makeImage();
    await assert.rejects(writeSnapshot(path, makeMeta(image, CHUNK), image, new Uint8Array(CHUNK)),
      (e: unknown) => isFerryError(e, 'SNAPSHOT_IO') && e.message.includes('no-such-dir'));
  });
});

void describe('openSnapshot rejects hostile and damaged files', () => {
  void it('a missing file: SNAPSHOT_IO naming the path', async () => {
    const path = join(dir, 'missing.fsnap');
    await expectOpenError(path, 'SNAPSHOT_IO', /missing\.fsnap/);
  });

  void it('an empty file: SNAPSHOT_NOT_FERRY', async () => {
    await expectOpenError(await saveBytes(new Uint8Array(0)), 'SNAPSHOT_NOT_FERRY', /empty/);
  });

  void it('bad magic: SNAPSHOT_NOT_FERRY', async () => {
    const { bytes } = await writeValid();
    bytes.write('FERRYSNQ', 0, 'latin1');
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_NOT_FERRY', /not a Ferry snapshot/);
    await expectOpenError(await saveBytes(makeImage()), 'SNAPSHOT_NOT_FERRY', /not a Ferry snapshot/);
  });

  void it('format version 2: SNAPSHOT_VERSION asking for a newer Ferry', async () => {
    const { bytes } = await writeValid();
    bytes.writeUInt32LE(2, OFF.version);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_VERSION', /newer Ferry.*version 2/);
  });

  void it('truncation at any point: SNAPSHOT_TRUNCATED naming the section', async () => {
    const { bytes } = await writeValid();
    const [metaStart] = metadataRange(bytes);
    const [imageStart, imageEnd] = imageRange(bytes);
    const cuts: [number, RegExp][] = [
      [4, /shorter than the header/], // inside the magic
      [10, /shorter than the header/], // inside the version
      [50, /shorter than the 88-byte header/],
      [metaStart + 10, /metadata section is cut short/],
      [imageStart + 100, /image section is cut short/],
      [imageEnd + 8, /memory record 0 of 4 is cut short/], // inside the first record header
      [recordAt(bytes, 2) + 30_000, /memory record 2 of 4 is cut short/], // middle of a record's data
      [bytes.byteLength - 1, /memory record 3 of 4 is cut short/],
    ];
    for (const [at, message] of cuts) {
      await expectOpenError(await saveBytes(bytes.subarray(0, at)), 'SNAPSHOT_TRUNCATED', message);
    }
  });

  void it('a file cut short after it was opened: restoreMemory fails with SNAPSHOT_TRUNCATED', async () => {
    const { path, bytes } = await writeValid();
    const snap = await openSnapshot(path);
    try {
      await truncate(path, recordAt(bytes, 1) + 100);
      await assert.rejects(snap.restoreMemory(new Uint8Array(8 * CHUNK)), (e: unknown) => isFerryError(e, 'SNAPSHOT_TRUNCATED') && /record 1 of 4/.test(e.message));
    } finally {
      await snap.close();
    }
  });

  void it('a flipped byte in the header: SNAPSHOT_CORRUPT (header checksum)', async () => {
    const { bytes } = await writeValid();
    bytes[OFF.recordCount] = (bytes[OFF.recordCount] ?? 0) ^ 0x01;
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /header checksum mismatch/);
  });

  void it('a wrong header length: SNAPSHOT_CORRUPT', async () => {
    const { bytes } = await writeValid();
    bytes.writeUInt32LE(96, OFF.headerLength);
    fixHeaderCrc(bytes);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /header length is 96/);
  });

  void it('a flipped byte in the metadata: SNAPSHOT_CORRUPT (metadata checksum)', async () => {
    const { bytes } = await writeValid();
    const [start] = metadataRange(bytes);
    bytes[start + 5] = (bytes[start + 5] ?? 0) ^ 0x20;
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /metadata checksum mismatch/);
  });

  void it('a flipped byte in the image: SNAPSHOT_CORRUPT (image checksum); with a fixed crc, the sha-256 catches it', async () => {
    const { bytes } = await writeValid();
    const [start, end] = imageRange(bytes);
    bytes[start + 1234] = (bytes[start + 1234] ?? 0) ^ 0xff;
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /image checksum mismatch/);
    bytes.writeUInt32LE(crc32(bytes.subarray(start, end)), OFF.imageCrc);
    fixHeaderCrc(bytes);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /sha-256/);
  });

  void it('a flipped byte in a record\'s data: restoreMemory fails with SNAPSHOT_CORRUPT (record checksum)', async () => {
    const { bytes } = await writeValid();
    const at = recordAt(bytes, 2) + 16 + 40_000;
    bytes[at] = (bytes[at] ?? 0) ^ 0x04;
    await expectRestoreError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /memory record 2 .*checksum mismatch/);
  });

  void it('a damaged record offset that still looks plausible: caught by the memory index checksum', async () => {
    const { bytes } = await writeValid(); // records at chunks 0, 2, 5, 7
    bytes.writeBigUInt64LE(BigInt(3 * CHUNK), recordAt(bytes, 1)); // 2 -> 3: aligned, in order, inside RAM
    await expectRestoreError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /memory index checksum mismatch/);
  });

  void it('out-of-order records: SNAPSHOT_CORRUPT', async () => {
    const { bytes } = await writeValid();
    const a = recordAt(bytes, 1);
    const b = recordAt(bytes, 2);
    const first = Buffer.from(bytes.subarray(a, a + RECORD));
    bytes.copy(bytes, a, b, b + RECORD);
    first.copy(bytes, b);
    await expectRestoreError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /memory record 2 .*out of order/);
  });

  void it('a duplicated record: SNAPSHOT_CORRUPT (offsets must strictly increase)', async () => {
    const { bytes } = await writeValid();
    bytes.copy(bytes, recordAt(bytes, 2), recordAt(bytes, 1), recordAt(bytes, 1) + RECORD);
    await expectRestoreError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /out of order/);
  });

  void it('a record outside RAM: SNAPSHOT_CORRUPT', async () => {
    const { bytes } = await writeValid();
    bytes.writeBigUInt64LE(BigInt(8 * CHUNK), recordAt(bytes, 3));
    await expectRestoreError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /memory record 3 .*outside/);
    bytes.writeBigUInt64LE(2n ** 64n - BigInt(CHUNK), recordAt(bytes, 3)); // no wrap-around
    await expectRestoreError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /memory record 3 .*outside/);
  });

  void it('a misaligned record: SNAPSHOT_CORRUPT', async () => {
    const { bytes } = await writeValid();
    bytes.writeBigUInt64LE(BigInt(5 * CHUNK + 4096), recordAt(bytes, 2));
    await expectRestoreError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /memory record 2 .*not aligned/);
  });

  void it('a record of the wrong length: SNAPSHOT_CORRUPT', async () => {
    const { bytes } = await writeValid();
    bytes.writeUInt32LE(4096, recordAt(bytes, 0) + 8);
    await expectRestoreError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /memory record 0 .*length 4096/);
  });

  void it('trailing garbage after the last record: SNAPSHOT_CORRUPT', async () => {
    const { path } = await writeValid();
    await appendFile(path, Buffer.from('extra'));
    await expectOpenError(path, 'SNAPSHOT_CORRUPT', /5 bytes of unexpected data follow the last memory record/);
  });

  void it('an oversized metadata length field: SNAPSHOT_TOO_LARGE (nothing allocated for it)', async () => {
    const { bytes } = await writeValid();
    bytes.writeBigUInt64LE(2n ** 62n, OFF.metadataLength);
    fixHeaderCrc(bytes);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_TOO_LARGE', /metadata section claims/);
    bytes.writeBigUInt64LE(16n * 1024n * 1024n + 1n, OFF.metadataLength);
    fixHeaderCrc(bytes);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_TOO_LARGE', /metadata section claims/);
  });

  void it('an oversized image length or record count: SNAPSHOT_TOO_LARGE', async () => {
    const { bytes } = await writeValid();
    const image = Buffer.from(bytes);
    image.writeBigUInt64LE(65n * 1024n * 1024n, OFF.imageLength);
    fixHeaderCrc(image);
    await expectOpenError(await saveBytes(image), 'SNAPSHOT_TOO_LARGE', /image section claims/);
    bytes.writeUInt32LE(0xffff_ffff, OFF.recordCount);
    fixHeaderCrc(bytes);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_TOO_LARGE', /memory records/);
  });

  void it('section offsets that do not follow the layout: SNAPSHOT_CORRUPT', async () => {
    const { bytes } = await writeValid();
    bytes.writeBigUInt64LE(bytes.readBigUInt64LE(OFF.imageOffset) + 1n, OFF.imageOffset);
    fixHeaderCrc(bytes);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /header image offset/);
  });

  void it('more records than RAM chunks: SNAPSHOT_CORRUPT', async () => {
    const path = freshPath();
    const image = makeImage();
    const ram = makeRam(4, () => true); // 4 records
    await writeSnapshot(path, makeMeta(image, ram.byteLength, { claimedPages: 1 }), image, ram);
    const bytes = await readFile(path);
    patchMetadata(bytes, (json) => json.replace('"ramBytes":262144', '"ramBytes":196608')); // 3 chunks
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /4 memory records .*only 3 chunks/);
  });

  void it('vcpus that do not match vcpuStates: SNAPSHOT_CORRUPT (metadata schema)', async () => {
    const { bytes } = await writeValid();
    patchMetadata(bytes, (json) => json.replace('"vcpus":2', '"vcpus":3'));
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /metadata is invalid: vcpuStates has 2 entries but vm.vcpus is 3/);
  });

  void it('metadata breaking other schema rules: SNAPSHOT_CORRUPT naming the field', async () => {
    const cases: [(json: string) => string, RegExp][] = [
      [(j) => j.replace('"vcpus":2', '"vcpus":0'), /vm\.vcpus/],
      [(j) => j.replace('"granularityBytes":4096', '"granularityBytes":5000'), /vm\.granularityBytes/],
      [(j) => j.replace('"name":', '"nome":'), /Unrecognized key.*nome/],
      [(j) => j.replace('"type":"i64"', '"type":"i65"'), /vcpuStates\.0\.globals\.1/],
      [(j) => j.replace(/"clockNs":"(\d)/, '"clockNs":"x'), /clockNs/],
    ];
    for (const [edit, message] of cases) {
      const { bytes } = await writeValid();
      patchMetadata(bytes, edit);
      await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', message);
    }
  });

  void it('metadata that is not JSON: SNAPSHOT_CORRUPT', async () => {
    const { bytes } = await writeValid();
    patchMetadata(bytes, (json) => `x${json.slice(1)}`);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /metadata is not valid JSON/);
  });

  void it('metadata that is not UTF-8: SNAPSHOT_CORRUPT', async () => {
    const { bytes } = await writeValid();
    const [start, end] = metadataRange(bytes);
    bytes[start + 3] = 0xff;
    bytes.writeUInt32LE(crc32(bytes.subarray(start, end)), OFF.metadataCrc);
    fixHeaderCrc(bytes);
    await expectOpenError(await saveBytes(bytes), 'SNAPSHOT_CORRUPT', /not valid UTF-8/);
  });

  void it('a directory instead of a file: SNAPSHOT_NOT_FERRY', async () => {
    await expectOpenError(dir, 'SNAPSHOT_NOT_FERRY', /not a regular file/);
  });
});
