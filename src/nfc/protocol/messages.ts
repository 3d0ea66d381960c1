/**
 * Typed messages of the NFC protocol (docs/nfc-protocol.md): strict zod schemas for every JSON payload
 * (src/lib/wire-json.ts: UTF-8, a JSON object, unknown keys rejected), the binary DATA payload, encoders
 * that produce complete frames, the schemas of each request's OK reply, and `decodeMessage`, which turns
 * a frame into a `Message` discriminated by `command`.
 *
 * What a chunk may be is the plan's business: a DATA or HOLE that is not a whole chunk of the plan
 * the receiver holds is PROTOCOL_BAD_PAYLOAD, so a confused or hostile sender cannot write
 * outside the files it was given. The CRC-32 of a DATA is not checked by the decoder (a damaged chunk
 * is a valid message carrying damaged bytes): `checkDataCrc` says CHUNK_CORRUPT, and the sender resends.
 */
import { crc32 } from 'node:zlib';
import { z } from 'zod';
import { FerryError } from '../../lib/errors.js';
import { MAX_ABORT_REASON_CHARS } from '../../lib/limits.js';
import {
  badPayload as labelledBadPayload, clipMessage, decodeJsonPayload, encodeJsonPayload, encodeObjectPayload, validatePayload,
  errorBodyOf, errorBodySchema, encodeErrorPayload, type Envelope, type ErrorBody, type OkBody,
} from '../../lib/wire-json.js';

export { MAX_ERROR_CODE_CHARS, MAX_ERROR_MESSAGE_CHARS } from '../../lib/wire-json.js';
import {
  MAX_COPY_FILES, MAX_COPY_FILE_BYTES, MAX_COPY_STREAMS, MAX_COPY_EPOCHS, NFC_CHUNK_BYTES, boundarySchema, copyIdSchema,
  type Boundary, type CopiedFile, type CopyPlan,
} from '../plan.js';
import { Command, DATA_HEADER_BYTES, HEADER_BYTES, MAX_DATA_PAYLOAD_BYTES, commandName, encodeFrame, writeHeader, type Frame, type FrameCommand } from './frame.js';

/** SHA-256 bytes: a chunk's checksum as the source computed it. */
export const SHA256_BYTES = 32;

// ---------------------------------------------------------------------------------------------
// Typed bodies

export interface HelloBody {
  readonly protocol: 1;
  /** The receiver's ticket: 64 lowercase hex digits. */
  readonly ticket: string;
  readonly copyId: string;
  readonly epoch: number;
  /** One opening of the sender's sink (32 lowercase hex digits): its streams share one session. */
  readonly session: string;
  /** This stream's index, 0..streams-1. */
  readonly stream: number;
  readonly streams: number;
  /** The digest of the sender's plan as the target's journal keeps it (src/nfc/journal.ts): the receiver refuses (COPY_CONFLICT) another. */
  readonly planDigest: string;
}

export interface DataBody {
  readonly fileIndex: number;
  readonly offsetBytes: number;
  /** CRC-32 (zlib's) of `data`, computed by the sender just before sending. */
  readonly crc32: number;
  /** The source's SHA-256 of the chunk (a view into the frame payload when decoded). */
  readonly sha256: Uint8Array;
  /** The chunk's bytes (a view into the frame payload when decoded). */
  readonly data: Uint8Array;
}

export interface HoleBody {
  readonly fileIndex: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

export interface FinishFileBody {
  readonly fileIndex: number;
}

export type EmptyBody = Readonly<Record<string, never>>;

export interface AbortBody {
  readonly reason: string;
}

export type { OkBody, ErrorBody };

/** A decoded message: the command discriminates the body. */
export type Message =
  | Envelope<typeof Command.HELLO, HelloBody>
  | Envelope<typeof Command.DATA, DataBody>
  | Envelope<typeof Command.HOLE, HoleBody>
  | Envelope<typeof Command.SYNC | typeof Command.COMPLETE | typeof Command.CLOSE, EmptyBody>
  | Envelope<typeof Command.FINISH_FILE, FinishFileBody>
  | Envelope<typeof Command.ABORT, AbortBody>
  | Envelope<typeof Command.OK, OkBody>
  | Envelope<typeof Command.ERROR, ErrorBody>;

/** What decodeMessage needs beyond the frame: the plan, once the stream's HELLO was accepted. */
export interface DecodeContext {
  readonly plan?: Pick<CopyPlan, 'files'>;
}

// ---------------------------------------------------------------------------------------------
// Wire schemas (JSON form)

const lowerHex = (chars: number): z.ZodString =>
  z.string().regex(new RegExp(`^[0-9a-f]{${chars}}$`), `must be ${chars} lowercase hex digits`);

const intIn = (min: number, max: number): z.ZodNumber => z.number().int().min(min).max(max);

const fileIndexSchema = intIn(0, MAX_COPY_FILES - 1);

export const helloSchema = z.object({
  protocol: z.literal(1),
  ticket: lowerHex(64),
  copyId: copyIdSchema,
  epoch: intIn(1, MAX_COPY_EPOCHS),
  session: lowerHex(32),
  stream: intIn(0, MAX_COPY_STREAMS - 1),
  streams: intIn(1, MAX_COPY_STREAMS),
  planDigest: lowerHex(64),
}).strict().refine((h) => h.stream < h.streams, { message: 'stream must be below streams', path: ['stream'] });

export const holeSchema = z.object({
  fileIndex: fileIndexSchema,
  offsetBytes: intIn(0, MAX_COPY_FILE_BYTES),
  lengthBytes: intIn(1, NFC_CHUNK_BYTES),
}).strict();

export const emptySchema = z.object({}).strict();
export const finishFileSchema = z.object({ fileIndex: fileIndexSchema }).strict();
export const abortSchema = z.object({ reason: z.string().max(MAX_ABORT_REASON_CHARS) }).strict();
export const okSchema = z.record(z.string(), z.unknown());
export const errorSchema = errorBodySchema;

// Replies (OK bodies), per request.

/** A finished file on the wire: its index in the plan instead of its path (the sender has the plan). */
export const copiedFileWireSchema = z.object({
  index: fileIndexSchema,
  sizeBytes: intIn(0, MAX_COPY_FILE_BYTES),
  sourceDigest: lowerHex(64),
  targetDigest: lowerHex(64),
}).strict();
export type CopiedFileWire = z.infer<typeof copiedFileWireSchema>;

/** HELLO's reply: where the copy resumes (the receiver's sink's durable boundary). */
export const helloReplySchema = z.object({ resumeAt: boundarySchema }).strict();
/** SYNC's reply: the boundary now durable on the receiver. */
export const syncReplySchema = z.object({ boundary: boundarySchema }).strict();
export const finishFileReplySchema = z.object({ file: copiedFileWireSchema }).strict();
export const completeReplySchema = z.object({ files: z.array(copiedFileWireSchema).max(MAX_COPY_FILES) }).strict();
/** DATA, HOLE, CLOSE and ABORT are answered with an empty object. */
export const emptyReplySchema = emptySchema;

// ---------------------------------------------------------------------------------------------
// Helpers

function badPayload(command: FrameCommand, message: string, details: Record<string, unknown> = {}): FerryError {
  return labelledBadPayload(commandName(command), message, { command, ...details });
}

function decodeJson<S extends z.ZodTypeAny>(command: FrameCommand, schema: S, bytes: Uint8Array): z.output<S> {
  return decodeJsonPayload(commandName(command), schema, bytes, { command });
}

function encodeJson(command: FrameCommand, schema: z.ZodTypeAny, wire: unknown): Buffer {
  return encodeJsonPayload(commandName(command), schema, wire, { command });
}

function planFile(command: FrameCommand, plan: Pick<CopyPlan, 'files'>, fileIndex: number): { readonly sizeBytes: number } {
  const file = plan.files[fileIndex];
  if (file === undefined) throw badPayload(command, `file ${fileIndex} is not in the plan (${plan.files.length} files)`, { fileIndex });
  return file;
}

/**
 * Throws PROTOCOL_BAD_PAYLOAD unless [offsetBytes, offsetBytes + lengthBytes) of file `fileIndex` is one
 * whole chunk of the plan: it starts at a multiple of NFC_CHUNK_BYTES inside the file and is
 * NFC_CHUNK_BYTES long, the file's last one shorter (a DATA's bytes, or a HOLE's zeros).
 */
export function checkChunkInPlan(command: typeof Command.DATA | typeof Command.HOLE, plan: Pick<CopyPlan, 'files'>,
  fileIndex: number, offsetBytes: number, lengthBytes: number): void {
  const { sizeBytes } = planFile(command, plan, fileIndex);
  const where = { fileIndex, offsetBytes, lengthBytes, sizeBytes };
  const range = `[${offsetBytes}, ${offsetBytes + lengthBytes}) of file ${fileIndex} (${sizeBytes} bytes)`;
  if (offsetBytes % NFC_CHUNK_BYTES !== 0 || offsetBytes >= sizeBytes) {
    throw badPayload(command, `${range} does not start at a chunk of the file (chunks are ${NFC_CHUNK_BYTES} bytes)`, where);
  }
  if (lengthBytes !== Math.min(NFC_CHUNK_BYTES, sizeBytes - offsetBytes)) throw badPayload(command, `${range} is not one whole chunk of the plan`, where);
}

/** The CRC-32 a DATA carries (zlib's, over the chunk's bytes): both ends compute it the same way. */
export function dataCrc32(data: Uint8Array): number {
  return crc32(data);
}

/** Throws CHUNK_CORRUPT when a DATA's bytes do not match its CRC-32 (damaged on the way: the sender resends it). */
export function checkDataCrc(body: DataBody): void {
  const actual = dataCrc32(body.data);
  if (actual !== body.crc32) {
    throw new FerryError('CHUNK_CORRUPT',
      `chunk at ${body.offsetBytes} of file ${body.fileIndex} arrived damaged: CRC-32 0x${actual.toString(16).padStart(8, '0')}, ` +
      `sent 0x${body.crc32.toString(16).padStart(8, '0')}; send it again`,
      { fileIndex: body.fileIndex, offsetBytes: body.offsetBytes, crc32: body.crc32, actualCrc32: actual });
  }
}

export function copiedFileToWire(index: number, file: CopiedFile): CopiedFileWire {
  return { index, sizeBytes: file.sizeBytes, sourceDigest: file.sourceDigest, targetDigest: file.targetDigest };
}

/** A finished file of a reply, named by its plan path again; PROTOCOL_BAD_PAYLOAD if it is not the plan's file. */
export function copiedFileFromWire(plan: Pick<CopyPlan, 'files'>, wire: CopiedFileWire): CopiedFile {
  const file = plan.files[wire.index];
  if (file === undefined || file.sizeBytes !== wire.sizeBytes) {
    throw badPayload(Command.OK, `finished file ${wire.index} (${wire.sizeBytes} bytes) is not a file of the plan`, { fileIndex: wire.index });
  }
  return { path: file.path, sizeBytes: wire.sizeBytes, sourceDigest: wire.sourceDigest, targetDigest: wire.targetDigest };
}

/** An OK body checked against the reply schema of the request it answers (PROTOCOL_BAD_PAYLOAD otherwise). */
export function parseReply<S extends z.ZodTypeAny>(request: FrameCommand, schema: S, body: OkBody): z.output<S> {
  return validatePayload(`OK to ${commandName(request)}`, schema, body, { command: Command.OK, request });
}

// ---------------------------------------------------------------------------------------------
// Decoders (payload -> body)

export function decodeHello(payload: Uint8Array): HelloBody {
  return decodeJson(Command.HELLO, helloSchema, payload);
}

/**
 * DATA: the 56-byte binary header (file index, length, offset, CRC-32, reserved, SHA-256), then the
 * chunk's bytes; `sha256` and `data` are views into `payload`. The layout is checked here; whether the
 * chunk is one of the plan's is checkChunkInPlan's.
 */
export function decodeData(payload: Uint8Array): DataBody {
  const C = Command.DATA;
  if (payload.byteLength < DATA_HEADER_BYTES) {
    throw badPayload(C, `is ${payload.byteLength} bytes, shorter than its ${DATA_HEADER_BYTES}-byte header`);
  }
  const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const fileIndex = buf.readUInt32LE(0);
  const lengthBytes = buf.readUInt32LE(4);
  const offset = buf.readBigUInt64LE(8);
  const crc = buf.readUInt32LE(16);
  const reserved = buf.readUInt32LE(20);
  if (lengthBytes !== buf.length - DATA_HEADER_BYTES) {
    throw badPayload(C, `says ${lengthBytes} bytes of data but carries ${buf.length - DATA_HEADER_BYTES}`, { lengthBytes });
  }
  if (offset > BigInt(MAX_COPY_FILE_BYTES)) throw badPayload(C, `offset ${offset} is beyond the largest file a copy moves`);
  if (reserved !== 0) throw badPayload(C, `reserved field is 0x${reserved.toString(16)}, must be 0`);
  if (fileIndex >= MAX_COPY_FILES) throw badPayload(C, `file index ${fileIndex} is beyond the ${MAX_COPY_FILES} files a copy may have`, { fileIndex });
  return { fileIndex, offsetBytes: Number(offset), crc32: crc, sha256: buf.subarray(24, DATA_HEADER_BYTES), data: buf.subarray(DATA_HEADER_BYTES) };
}

export function decodeHole(payload: Uint8Array): HoleBody {
  return decodeJson(Command.HOLE, holeSchema, payload);
}

export function decodeFinishFile(payload: Uint8Array): FinishFileBody {
  return decodeJson(Command.FINISH_FILE, finishFileSchema, payload);
}

export function decodeEmpty(command: typeof Command.SYNC | typeof Command.COMPLETE | typeof Command.CLOSE, payload: Uint8Array): EmptyBody {
  decodeJson(command, emptySchema, payload);
  return {};
}

export function decodeAbort(payload: Uint8Array): AbortBody {
  return decodeJson(Command.ABORT, abortSchema, payload);
}

export function decodeOk(payload: Uint8Array): OkBody {
  return decodeJson(Command.OK, okSchema, payload);
}

export function decodeError(payload: Uint8Array): ErrorBody {
  return decodeJson(Command.ERROR, errorSchema, payload);
}

function needPlan(command: FrameCommand, requestId: number, context: DecodeContext): Pick<CopyPlan, 'files'> {
  if (context.plan === undefined) {
    throw new FerryError('PROTOCOL_OUT_OF_ORDER', `${commandName(command)} (request ${requestId}) arrived before the stream's HELLO was accepted`,
      { command, requestId });
  }
  return context.plan;
}

/**
 * Decodes a complete frame into a typed message. DATA, HOLE and FINISH_FILE need `context.plan` (known
 * once the stream's HELLO was accepted) and must name the plan's chunks and files; without a plan they
 * are PROTOCOL_OUT_OF_ORDER.
 */
export function decodeMessage(frame: Frame, context: DecodeContext = {}): Message {
  const { requestId, payload } = frame;
  switch (frame.command) {
    case Command.HELLO: return { command: Command.HELLO, requestId, body: decodeHello(payload) };
    case Command.DATA: {
      const plan = needPlan(Command.DATA, requestId, context);
      const body = decodeData(payload);
      checkChunkInPlan(Command.DATA, plan, body.fileIndex, body.offsetBytes, body.data.byteLength);
      return { command: Command.DATA, requestId, body };
    }
    case Command.HOLE: {
      const plan = needPlan(Command.HOLE, requestId, context);
      const body = decodeHole(payload);
      checkChunkInPlan(Command.HOLE, plan, body.fileIndex, body.offsetBytes, body.lengthBytes);
      return { command: Command.HOLE, requestId, body };
    }
    case Command.SYNC: return { command: Command.SYNC, requestId, body: decodeEmpty(Command.SYNC, payload) };
    case Command.FINISH_FILE: {
      const plan = needPlan(Command.FINISH_FILE, requestId, context);
      const body = decodeFinishFile(payload);
      planFile(Command.FINISH_FILE, plan, body.fileIndex);
      return { command: Command.FINISH_FILE, requestId, body };
    }
    case Command.COMPLETE: return { command: Command.COMPLETE, requestId, body: decodeEmpty(Command.COMPLETE, payload) };
    case Command.CLOSE: return { command: Command.CLOSE, requestId, body: decodeEmpty(Command.CLOSE, payload) };
    case Command.ABORT: return { command: Command.ABORT, requestId, body: decodeAbort(payload) };
    case Command.OK: return { command: Command.OK, requestId, body: decodeOk(payload) };
    case Command.ERROR: return { command: Command.ERROR, requestId, body: decodeError(payload) };
    default: {
      const command: number = frame.command;
      throw new FerryError('PROTOCOL_BAD_COMMAND', `NFC frame (request ${requestId}) has command code ${command}`, { command, requestId });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Encoders (body -> complete frame)

export function encodeHello(requestId: number, body: HelloBody): Buffer {
  const wire = {
    protocol: body.protocol, ticket: body.ticket, copyId: body.copyId, epoch: body.epoch, session: body.session,
    stream: body.stream, streams: body.streams, planDigest: body.planDigest,
  };
  return encodeFrame(Command.HELLO, requestId, encodeJson(Command.HELLO, helloSchema, wire));
}

/**
 * The frame header and DATA header of a chunk (HEADER_BYTES + DATA_HEADER_BYTES): the sender writes it
 * and then the chunk's own buffer, so a chunk is never copied to be sent.
 */
export function encodeDataHead(requestId: number, body: Omit<DataBody, 'data'> & { readonly lengthBytes: number }): Buffer {
  const C = Command.DATA;
  const { fileIndex, offsetBytes, lengthBytes, crc32: crc, sha256 } = body;
  if (sha256.byteLength !== SHA256_BYTES) throw badPayload(C, `the checksum is ${sha256.byteLength} bytes, not ${SHA256_BYTES}`);
  if (!Number.isInteger(fileIndex) || fileIndex < 0 || fileIndex >= MAX_COPY_FILES) throw badPayload(C, `file index ${fileIndex} is out of range`);
  if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || offsetBytes > MAX_COPY_FILE_BYTES) throw badPayload(C, `offset ${offsetBytes} is out of range`);
  if (!Number.isInteger(crc) || crc < 0 || crc > 0xffff_ffff) throw badPayload(C, `CRC-32 ${crc} is not a u32`);
  if (!Number.isInteger(lengthBytes) || lengthBytes < 0 || DATA_HEADER_BYTES + lengthBytes > MAX_DATA_PAYLOAD_BYTES) {
    throw new FerryError('PROTOCOL_TOO_LARGE', `cannot encode DATA: a chunk of ${lengthBytes} bytes; the limit is ${NFC_CHUNK_BYTES}`,
      { command: C, lengthBytes });
  }
  const head = Buffer.alloc(HEADER_BYTES + DATA_HEADER_BYTES);
  writeHeader(head, 0, C, requestId, DATA_HEADER_BYTES + lengthBytes);
  head.writeUInt32LE(fileIndex, HEADER_BYTES);
  head.writeUInt32LE(lengthBytes, HEADER_BYTES + 4);
  head.writeBigUInt64LE(BigInt(offsetBytes), HEADER_BYTES + 8);
  head.writeUInt32LE(crc, HEADER_BYTES + 16);
  head.writeUInt32LE(0, HEADER_BYTES + 20);
  head.set(sha256, HEADER_BYTES + 24);
  return head;
}

/** A whole DATA frame (one buffer: for tests and small chunks; the sender writes encodeDataHead + the chunk). */
export function encodeData(requestId: number, body: DataBody): Buffer {
  return Buffer.concat([encodeDataHead(requestId, { ...body, lengthBytes: body.data.byteLength }), body.data]);
}

export function encodeHole(requestId: number, body: HoleBody): Buffer {
  const wire = { fileIndex: body.fileIndex, offsetBytes: body.offsetBytes, lengthBytes: body.lengthBytes };
  return encodeFrame(Command.HOLE, requestId, encodeJson(Command.HOLE, holeSchema, wire));
}

export function encodeFinishFile(requestId: number, body: FinishFileBody): Buffer {
  return encodeFrame(Command.FINISH_FILE, requestId, encodeJson(Command.FINISH_FILE, finishFileSchema, { fileIndex: body.fileIndex }));
}

/** SYNC, COMPLETE and CLOSE carry an empty object. */
export function encodeEmpty(command: typeof Command.SYNC | typeof Command.COMPLETE | typeof Command.CLOSE, requestId: number): Buffer {
  return encodeFrame(command, requestId, encodeJson(command, emptySchema, {}));
}

export function encodeAbort(requestId: number, body: AbortBody): Buffer {
  const reason = clipMessage(body.reason, MAX_ABORT_REASON_CHARS);
  return encodeFrame(Command.ABORT, requestId, encodeJson(Command.ABORT, abortSchema, { reason }));
}

/** OK reply: `body` must be a plain JSON-serialisable object (the request's reply schema says which). */
export function encodeOk(requestId: number, body: OkBody = {}): Buffer {
  return encodeFrame(Command.OK, requestId, encodeObjectPayload(commandName(Command.OK), body, { command: Command.OK }));
}

/** ERROR reply; a message longer than the bound is shortened (with an ellipsis) rather than refused. */
export function encodeError(requestId: number, body: ErrorBody): Buffer {
  return encodeFrame(Command.ERROR, requestId, encodeErrorPayload(commandName(Command.ERROR), body, { command: Command.ERROR }));
}

/** ERROR reply for a thrown value: a FerryError keeps its stable code, anything else becomes INTERNAL. */
export function encodeErrorFor(requestId: number, err: unknown): Buffer {
  return encodeError(requestId, errorBodyOf(err));
}

/** Encodes any message (decode → encode round-trips). */
export function encodeMessage(message: Message): Buffer {
  switch (message.command) {
    case Command.HELLO: return encodeHello(message.requestId, message.body);
    case Command.DATA: return encodeData(message.requestId, message.body);
    case Command.HOLE: return encodeHole(message.requestId, message.body);
    case Command.SYNC:
    case Command.COMPLETE:
    case Command.CLOSE: return encodeEmpty(message.command, message.requestId);
    case Command.FINISH_FILE: return encodeFinishFile(message.requestId, message.body);
    case Command.ABORT: return encodeAbort(message.requestId, message.body);
    case Command.OK: return encodeOk(message.requestId, message.body);
    case Command.ERROR: return encodeError(message.requestId, message.body);
  }
}

/** The durable boundary as a reply body (SYNC) — and as HELLO's resumeAt. */
export function boundaryReply(key: 'boundary' | 'resumeAt', b: Boundary): OkBody {
  return { [key]: { fileIndex: b.fileIndex, offsetBytes: b.offsetBytes } };
}
