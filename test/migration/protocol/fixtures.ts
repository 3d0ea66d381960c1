// Shared fixtures for the migration protocol tests. The byte layout of the header is restated from
// docs/migration-protocol.md on purpose: tests check the wire against the document, not against the
// implementation's own constants.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { isFerryError, type FerryErrorCode } from '../../../src/lib/errors.js';
import {
  encodeAbort, encodeCommit, encodeHello, encodeMemory, encodePrepare, encodeRound, encodeState,
  type ChainLevelSpec, type HelloBody, type PrepareBody, type PrepareDisk, type PreparedDisk, type StateBody,
} from '../../../src/migration/protocol/messages.js';
import type { MemoryEntryInput } from '../../../src/migration/protocol/memory-batch.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const DOC_HEADER_BYTES = 16;
export const DOC_MAGIC = [0x46, 0x4d, 0x49, 0x47] as const;

/** Per-command payload bounds as the document states them. */
export const DOC_MAX_PAYLOAD: Readonly<Record<number, number>> = {
  1: 4 * KiB,
  2: 64 * MiB + 64 * KiB,
  3: 8 * MiB + 64 * KiB,
  4: 4 * KiB,
  5: 1 * MiB,
  6: 4 * KiB,
  7: 4 * KiB,
  8: 1 * MiB,
  9: 64 * KiB,
  10: 8 * MiB + 64 * KiB,
};

export const TICKET = 'a1'.repeat(32);
export const RAM_BYTES = 1 * MiB;

/** A raw header, each field overridable (for malformed headers). */
export function rawHeader(fields: {
  magic?: readonly number[] | undefined; version?: number | undefined; command: number; flags?: number | undefined;
  requestId?: number | undefined; length: number;
}): Buffer {
  const b = Buffer.alloc(DOC_HEADER_BYTES);
  Buffer.from(fields.magic ?? DOC_MAGIC).copy(b, 0);
  b.writeUInt8(fields.version ?? 1, 4);
  b.writeUInt8(fields.command, 5);
  b.writeUInt16LE(fields.flags ?? 0, 6);
  b.writeUInt32LE(fields.requestId ?? 0, 8);
  b.writeUInt32LE(fields.length, 12);
  return b;
}

/** A frame from raw parts, bypassing every encoder check. */
export function rawFrame(command: number, payload: Uint8Array, requestId = 0): Buffer {
  return Buffer.concat([rawHeader({ command, requestId, length: payload.byteLength }), payload]);
}

export function jsonFrame(command: number, value: unknown, requestId = 0): Buffer {
  return rawFrame(command, Buffer.from(JSON.stringify(value), 'utf8'), requestId);
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export function helloBody(role: 'control' | 'data', channel = 0): HelloBody {
  return { protocol: 1, ticket: TICKET, role, channel };
}

export function makeImage(bytes = 64): Buffer {
  const image = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) image[i] = (i * 31 + 7) & 0xff;
  image.set([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
  return image;
}

export function prepareBody(image: Uint8Array = makeImage(), ramBytes = RAM_BYTES): PrepareBody {
  return {
    migrationId: 'mig-0001',
    vm: { name: 'web-1', memoryBytes: ramBytes, vcpus: 2, granularityBytes: 4096, cmdline: 'hot=64MiB pattern=random', imageSha256: sha256(image) },
    dataChannels: 2,
    image,
  };
}

export function stateBody(): StateBody {
  return {
    claimedPages: 16,
    clockNs: 2n ** 64n - 1n,
    clockWallMs: 1_700_000_000_123,
    vcpus: [
      {
        halted: false,
        globals: [
          { type: 'i32', value: -(2 ** 31) },
          { type: 'i32', value: 2 ** 31 - 1 },
          { type: 'i64', value: -(2n ** 63n) },
          { type: 'i64', value: 2n ** 63n - 1n },
          { type: 'i64', value: 0n },
          { type: 'f32', value: 1.5 },
          { type: 'f32', value: Math.fround(0.1) },
          { type: 'f32', value: Number.NaN },
          { type: 'f64', value: Math.PI },
          { type: 'f64', value: -0 },
          { type: 'f64', value: Number.POSITIVE_INFINITY },
          { type: 'f64', value: Number.NEGATIVE_INFINITY },
          { type: 'f64', value: Number.MIN_VALUE },
        ],
        lastClockReadNs: 2n ** 64n - 2n,
      },
      { halted: true, globals: [], lastClockReadNs: 0n },
    ],
  };
}

export function memoryEntries(): MemoryEntryInput[] {
  const raw = Buffer.alloc(4096, 0x5a);
  return [
    { offset: 0, length: 4096, encoding: 'raw', data: raw },
    { offset: 8192, length: 8192, encoding: 'zero' },
    { offset: RAM_BYTES - 4096, length: 4096, encoding: 'deflate', data: Buffer.from([0x01, 0x02, 0x03]) },
  ];
}

/** A copied disk's chain as a source announces it: delta, delta, base (top first). */
export function chainSpec(capacityBytes = 64 * MiB): ChainLevelSpec[] {
  return [
    { path: 'vms/web-1/web-1-000002.vmdk', cid: '0000abcd', parentCid: '12345678', capacityBytes, allocatedBytes: 3 * MiB },
    { path: 'vms/web-1/web-1-000001.vmdk', cid: '12345678', parentCid: 'fedcba98', capacityBytes, allocatedBytes: 0 },
    { path: 'vms/web-1/web-1.vmdk', cid: 'fedcba98', parentCid: 'ffffffff', capacityBytes, allocatedBytes: 40 * MiB },
  ];
}

/** A copy-mode disk with its chain announced. */
export function chainDisk(chain: ChainLevelSpec[] = chainSpec()): PrepareDisk {
  return { mode: 'copy', datastore: 'ds2', path: 'web-1.vmdk', capacityBytes: 64 * MiB, blockBytes: 64 * KiB, chain };
}

/** The target's answer to chainDisk() that keeps the `kept` base levels. */
export function preparedFor(chain: readonly ChainLevelSpec[], kept: number): PreparedDisk {
  return {
    chain: chain.map((l, i) => ({ path: l.path, cid: l.cid, migrate: i < chain.length - kept })),
    seedPath: kept > 0 ? 'seeds/web-1/web-1.vmdk' : null,
    verifyBytes: kept > 0 ? 41 * MiB : 0,
  };
}

/** A valid control conversation whose PREPARE announces a copied disk's chain. */
export function chainControlStream(): Buffer {
  return Buffer.concat([
    encodeHello(1, helloBody('control')),
    encodePrepare(2, { ...prepareBody(), disk: chainDisk() }),
    encodeRound(3, { round: 1, regions: 3, bytes: 12288 }),
  ]);
}

/** A complete valid control conversation: HELLO, PREPARE, ROUND×2, STATE, COMMIT. */
export function controlStream(): Buffer {
  return Buffer.concat([
    encodeHello(1, helloBody('control')),
    encodePrepare(2, prepareBody()),
    encodeRound(3, { round: 0, regions: 3, bytes: 12288 }),
    encodeRound(4, { round: 1, regions: 1, bytes: 4096 }),
    encodeState(5, stateBody()),
    encodeCommit(6, { digest: '0123456789abcdef' }),
  ]);
}

/** A control conversation that ends in ABORT. */
export function abortStream(): Buffer {
  return Buffer.concat([
    encodeHello(1, helloBody('control')),
    encodePrepare(2, prepareBody()),
    encodeAbort(3, { reason: 'operator cancelled' }),
  ]);
}

/** A valid data conversation: HELLO, MEMORY×2 (for RAM_BYTES of RAM). */
export function dataStream(): Buffer {
  return Buffer.concat([
    encodeHello(1, helloBody('data', 1)),
    encodeMemory(2, 0, memoryEntries()),
    encodeMemory(3, 1, [{ offset: 4096, length: 4096, encoding: 'zero' }]),
  ]);
}

/** Asserts `fn` throws a FerryError with `code` (and returns it). */
export function throwsCode(fn: () => unknown, code: FerryErrorCode, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(isFerryError(err), `expected FerryError ${code}, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}
