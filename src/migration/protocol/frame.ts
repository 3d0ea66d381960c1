/**
 * Frames of the Ferry live-migration wire protocol, version 1 (docs/migration-protocol.md is the
 * normative description). Every message is a 16-byte little-endian header followed by its payload:
 *
 *   0  4  magic "FMIG"
 *   4  1  protocol version (1)
 *   5  1  command (1..9)
 *   6  2  flags (reserved, 0)
 *   8  4  requestId (u32, echoed by the reply)
 *  12  4  payload length (bounded per command)
 *
 * Everything here is pure: no I/O, nothing but src/lib imported (architecture rule).
 */
import { FerryError } from '../../lib/errors.js';
import { KiB, MiB, formatBytes } from '../../lib/units.js';

export const MAGIC = 'FMIG';
/** The magic as it appears on the wire: 0x46 0x4d 0x49 0x47. */
export const MAGIC_BYTES: readonly number[] = [0x46, 0x4d, 0x49, 0x47];
export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = 16;

/** Command codes (header byte 5). 0 is never valid on the wire. */
export const Command = {
  INVALID: 0,
  HELLO: 1,
  PREPARE: 2,
  MEMORY: 3,
  ROUND: 4,
  STATE: 5,
  COMMIT: 6,
  ABORT: 7,
  OK: 8,
  ERROR: 9,
  /** Disk blocks of a storage live migration: the MEMORY batch layout over the disk's sectors. */
  DISK: 10,
} as const;
export type Command = (typeof Command)[keyof typeof Command];
/** A command that may appear on the wire (1..9). */
export type FrameCommand = Exclude<Command, typeof Command.INVALID>;

const COMMAND_NAMES: Readonly<Record<Command, string>> = {
  0: 'INVALID', 1: 'HELLO', 2: 'PREPARE', 3: 'MEMORY', 4: 'ROUND', 5: 'STATE', 6: 'COMMIT', 7: 'ABORT', 8: 'OK',
  9: 'ERROR', 10: 'DISK',
};
/** The highest command code this build knows. */
const LAST_COMMAND = Command.DISK;

/** Name of a command code for messages and logs ("HELLO", or "command 42" for unknown codes). */
export function commandName(command: number): string {
  return isCommand(command) ? COMMAND_NAMES[command] : `command ${command}`;
}

export function isCommand(value: number): value is Command {
  return Number.isInteger(value) && value >= Command.INVALID && value <= LAST_COMMAND;
}

export function isFrameCommand(value: number): value is FrameCommand {
  return Number.isInteger(value) && value >= Command.HELLO && value <= LAST_COMMAND;
}

// Per-command payload bounds (bytes).
export const MAX_HELLO_PAYLOAD_BYTES = 4 * KiB;
export const MAX_PREPARE_PAYLOAD_BYTES = 64 * MiB + 64 * KiB;
export const MAX_MEMORY_PAYLOAD_BYTES = 8 * MiB + 64 * KiB;
export const MAX_ROUND_PAYLOAD_BYTES = 4 * KiB;
export const MAX_STATE_PAYLOAD_BYTES = 1 * MiB;
export const MAX_COMMIT_PAYLOAD_BYTES = 4 * KiB;
export const MAX_ABORT_PAYLOAD_BYTES = 4 * KiB;
export const MAX_OK_PAYLOAD_BYTES = 1 * MiB;
export const MAX_ERROR_PAYLOAD_BYTES = 64 * KiB;

/** Largest payload any command may carry. */
export const MAX_ANY_PAYLOAD_BYTES = MAX_PREPARE_PAYLOAD_BYTES;

export const MAX_PAYLOAD_BYTES: Readonly<Record<FrameCommand, number>> = {
  [Command.HELLO]: MAX_HELLO_PAYLOAD_BYTES,
  [Command.PREPARE]: MAX_PREPARE_PAYLOAD_BYTES,
  [Command.MEMORY]: MAX_MEMORY_PAYLOAD_BYTES,
  [Command.ROUND]: MAX_ROUND_PAYLOAD_BYTES,
  [Command.STATE]: MAX_STATE_PAYLOAD_BYTES,
  [Command.COMMIT]: MAX_COMMIT_PAYLOAD_BYTES,
  [Command.ABORT]: MAX_ABORT_PAYLOAD_BYTES,
  [Command.OK]: MAX_OK_PAYLOAD_BYTES,
  [Command.ERROR]: MAX_ERROR_PAYLOAD_BYTES,
  [Command.DISK]: MAX_MEMORY_PAYLOAD_BYTES,
};

/** Requests a sender may have outstanding on one connection; replies come in request order. */
export const MAX_IN_FLIGHT = 8;
/** An unused migration ticket expires after this long. */
export const TICKET_TTL_MS = 30_000;

// MEMORY payload limits (see memory-batch.ts).
export const MAX_ENTRIES_PER_BATCH = 4096;
export const MAX_ENTRY_BYTES = 2 * MiB;
export const PAGE_ALIGN_BYTES = 4096;

const U32_LIMIT = 2 ** 32;

export interface FrameHeader {
  readonly command: FrameCommand;
  readonly requestId: number;
  readonly payloadLength: number;
}

export interface Frame {
  readonly command: FrameCommand;
  readonly requestId: number;
  readonly payload: Buffer;
  /** Set when the payload lives in a pooled buffer: call once the payload is no longer used. */
  readonly release?: () => void;
}

function isU32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value < U32_LIMIT;
}

function magicMatches(buf: Uint8Array, offset: number): boolean {
  for (let i = 0; i < MAGIC_BYTES.length; i++) {
    if (buf[offset + i] !== MAGIC_BYTES[i]) return false;
  }
  return true;
}

function hex(buf: Uint8Array): string {
  return Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).toString('hex');
}

/**
 * Checks a payload length against the command's bound; throws PROTOCOL_TOO_LARGE. Shared by the
 * encoder and the decoder so both sides agree on the limits.
 */
export function checkPayloadLength(command: FrameCommand, requestId: number, payloadLength: number): void {
  const max = MAX_PAYLOAD_BYTES[command];
  if (payloadLength > max) {
    throw new FerryError('PROTOCOL_TOO_LARGE',
      `${commandName(command)} frame (request ${requestId}) has a ${formatBytes(payloadLength)} payload; ` +
      `the limit for ${commandName(command)} is ${formatBytes(max)}`,
      { command, requestId, payloadLength, maxPayloadBytes: max });
  }
}

/**
 * Decodes and validates a frame header at `offset` of `buf` (only the 16 header bytes are read).
 * Checks, in this order: enough bytes (PROTOCOL_TRUNCATED), magic (PROTOCOL_BAD_MAGIC), version
 * (PROTOCOL_VERSION), command 1..9 (PROTOCOL_BAD_COMMAND), reserved flags = 0 (PROTOCOL_VERSION: set
 * flags mean a protocol extension version 1 does not have), payload length within the command's
 * bound (PROTOCOL_TOO_LARGE).
 */
export function decodeHeader(buf: Uint8Array, offset = 0): FrameHeader {
  if (!Number.isInteger(offset) || offset < 0 || buf.byteLength - offset < HEADER_BYTES) {
    throw new FerryError('PROTOCOL_TRUNCATED',
      `a frame header is ${HEADER_BYTES} bytes but only ${Math.max(0, buf.byteLength - offset)} are available`,
      { availableBytes: Math.max(0, buf.byteLength - offset) });
  }
  const view = new DataView(buf.buffer, buf.byteOffset + offset, HEADER_BYTES);
  if (!magicMatches(buf, offset)) {
    throw new FerryError('PROTOCOL_BAD_MAGIC',
      `not a Ferry migration frame: the header starts with 0x${hex(buf.subarray(offset, offset + 4))}, ` +
      `expected "${MAGIC}" (0x464d4947); is the peer a Ferry host on its migration port?`,
      { magic: hex(buf.subarray(offset, offset + 4)) });
  }
  const version = view.getUint8(4);
  if (version !== PROTOCOL_VERSION) {
    throw new FerryError('PROTOCOL_VERSION',
      `the peer speaks migration protocol version ${version}; this host speaks version ${PROTOCOL_VERSION} only`,
      { version, supported: PROTOCOL_VERSION });
  }
  const command = view.getUint8(5);
  const requestId = view.getUint32(8, true);
  if (!isFrameCommand(command)) {
    throw new FerryError('PROTOCOL_BAD_COMMAND',
      `frame (request ${requestId}) has command code ${command}; valid codes are 1..9`, { command, requestId });
  }
  const flags = view.getUint16(6, true);
  if (flags !== 0) {
    throw new FerryError('PROTOCOL_VERSION',
      `${commandName(command)} frame (request ${requestId}) has reserved flags 0x${flags.toString(16).padStart(4, '0')} set; ` +
      `protocol version ${PROTOCOL_VERSION} requires 0 (the peer uses an extension this host does not know)`,
      { command, requestId, flags });
  }
  const payloadLength = view.getUint32(12, true);
  checkPayloadLength(command, requestId, payloadLength);
  return { command, requestId, payloadLength };
}

/** Encodes a header for a payload of `payloadLength` bytes (for writing header and payload separately). */
export function encodeHeader(command: Command, requestId: number, payloadLength: number): Buffer {
  if (!isFrameCommand(command)) {
    throw new FerryError('PROTOCOL_BAD_COMMAND', `cannot encode a frame with command code ${command}; valid codes are 1..9`,
      { command });
  }
  if (!isU32(requestId)) {
    throw new FerryError('INVALID_ARGUMENT', `requestId ${requestId} is not a u32`, { requestId });
  }
  if (!Number.isSafeInteger(payloadLength) || payloadLength < 0) {
    throw new FerryError('INVALID_ARGUMENT', `payload length ${payloadLength} is not a byte count`, { payloadLength });
  }
  checkPayloadLength(command, requestId, payloadLength);
  const header = Buffer.alloc(HEADER_BYTES);
  for (let i = 0; i < MAGIC_BYTES.length; i++) header[i] = MAGIC_BYTES[i] ?? 0;
  header.writeUInt8(PROTOCOL_VERSION, 4);
  header.writeUInt8(command, 5);
  header.writeUInt16LE(0, 6);
  header.writeUInt32LE(requestId, 8);
  header.writeUInt32LE(payloadLength, 12);
  return header;
}

/**
 * One complete frame: header + a copy of `payload`. Throws PROTOCOL_BAD_COMMAND (command not 1..9),
 * PROTOCOL_TOO_LARGE (payload over the command's bound) or INVALID_ARGUMENT (requestId not a u32).
 */
export function encodeFrame(command: Command, requestId: number, payload: Uint8Array): Buffer {
  const header = encodeHeader(command, requestId, payload.byteLength);
  const frame = Buffer.allocUnsafe(HEADER_BYTES + payload.byteLength);
  header.copy(frame, 0);
  frame.set(payload, HEADER_BYTES);
  return frame;
}
