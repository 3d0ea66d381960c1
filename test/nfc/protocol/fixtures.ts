// Shared fixtures for the NFC protocol tests. The byte layout is restated from docs/nfc-protocol.md on
// purpose: tests check the wire against the document, not against the implementation's own constants.
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import type { CopyPlan } from '../../../src/nfc/plan.js';
import {
  encodeData, encodeEmpty, encodeFinishFile, encodeHello, encodeHole, type DataBody, type HelloBody,
} from '../../../src/nfc/protocol/messages.js';
import { Command } from '../../../src/nfc/protocol/frame.js';
import { planDigestOf } from '../../../src/nfc/journal.js';
import { rawHeader as migrationRawHeader } from '../../migration/protocol/fixtures.js';

export { throwsCode } from '../../migration/protocol/fixtures.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const DOC_HEADER_BYTES = 16;
export const DOC_MAGIC = [0x46, 0x4e, 0x46, 0x43] as const;
export const DOC_DATA_HEADER_BYTES = 56;
export const DOC_CHUNK_BYTES = 1 * MiB;

/** Per-command payload bounds as the document states them. */
export const DOC_MAX_PAYLOAD: Readonly<Record<number, number>> = {
  1: 4 * KiB,
  2: 56 + 1 * MiB,
  3: 4 * KiB,
  4: 4 * KiB,
  5: 4 * KiB,
  6: 4 * KiB,
  7: 4 * KiB,
  8: 4 * KiB,
  9: 512 * KiB,
  10: 64 * KiB,
};

export const TICKET = 'b2'.repeat(32);
export const COPY_ID = '0123456789abcdef0123456789abcdef';
export const SESSION = 'c3'.repeat(16);

/** Three files: two whole chunks and a short one, empty, one short chunk. */
export const PLAN: CopyPlan = {
  copyId: COPY_ID,
  files: [
    { path: 'disks/a.vmdk', sizeBytes: 2 * MiB + 300, modifiedMs: 1_700_000_000_000 },
    { path: 'disks/empty.vmdk', sizeBytes: 0, modifiedMs: 1_700_000_000_001 },
    { path: 'images/b.img', sizeBytes: 100, modifiedMs: 1_700_000_000_002 },
  ],
};

/** A raw header in the NFC magic, each field overridable (for malformed headers). */
export function rawHeader(fields: {
  magic?: readonly number[] | undefined; version?: number | undefined; command: number; flags?: number | undefined;
  requestId?: number | undefined; length: number;
}): Buffer {
  return migrationRawHeader({ ...fields, magic: fields.magic ?? DOC_MAGIC });
}

/** A frame from raw parts, bypassing every encoder check. */
export function rawFrame(command: number, payload: Uint8Array, requestId = 0): Buffer {
  return Buffer.concat([rawHeader({ command, requestId, length: payload.byteLength }), payload]);
}

export function jsonFrame(command: number, value: unknown, requestId = 0): Buffer {
  return rawFrame(command, Buffer.from(JSON.stringify(value), 'utf8'), requestId);
}

export function helloBody(stream = 0, streams = 1): HelloBody {
  return { protocol: 1, ticket: TICKET, copyId: COPY_ID, epoch: 1, session: SESSION, stream, streams, planDigest: planDigestOf(PLAN) };
}

/** Deterministic bytes of a chunk (different per file and offset). */
export function chunkBytes(fileIndex: number, offsetBytes: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4096) b[i] = (fileIndex * 31 + offsetBytes / 4096 + i / 4096) & 0xff;
  return b;
}

export function dataBody(fileIndex: number, offsetBytes: number, data: Buffer): DataBody {
  return { fileIndex, offsetBytes, crc32: crc32(data), sha256: createHash('sha256').update(data).digest(), data };
}

/** A DATA payload laid out by hand from the document's table. */
export function docDataPayload(fields: { fileIndex: number; offsetBytes: bigint; crc32: number; reserved?: number; sha256: Uint8Array; data: Uint8Array; lengthBytes?: number }): Buffer {
  const head = Buffer.alloc(DOC_DATA_HEADER_BYTES);
  head.writeUInt32LE(fields.fileIndex, 0);
  head.writeUInt32LE(fields.lengthBytes ?? fields.data.byteLength, 4);
  head.writeBigUInt64LE(fields.offsetBytes, 8);
  head.writeUInt32LE(fields.crc32, 16);
  head.writeUInt32LE(fields.reserved ?? 0, 20);
  Buffer.from(fields.sha256).copy(head, 24);
  return Buffer.concat([head, fields.data]);
}

/**
 * A complete valid conversation on one stream over PLAN, small enough to fuzz: HELLO, HOLE×2 (file 0's
 * two whole chunks), DATA of its last, FINISH_FILE×3, DATA, SYNC, COMPLETE, CLOSE.
 */
export function copyStream(): Buffer {
  let id = 1;
  const data = (fileIndex: number, offset: number, n: number): Buffer => encodeData(id++, dataBody(fileIndex, offset, chunkBytes(fileIndex, offset, n)));
  return Buffer.concat([
    encodeHello(id++, helloBody()),
    encodeHole(id++, { fileIndex: 0, offsetBytes: 0, lengthBytes: MiB }),
    encodeHole(id++, { fileIndex: 0, offsetBytes: MiB, lengthBytes: MiB }),
    data(0, 2 * MiB, 300),
    encodeFinishFile(id++, { fileIndex: 0 }),
    encodeFinishFile(id++, { fileIndex: 1 }),
    data(2, 0, 100),
    encodeEmpty(Command.SYNC, id++),
    encodeFinishFile(id++, { fileIndex: 2 }),
    encodeEmpty(Command.COMPLETE, id++),
    encodeEmpty(Command.CLOSE, id++),
  ]);
}
