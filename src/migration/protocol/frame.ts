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
 * The codec is the shared one of src/lib/framing.ts. Everything here is pure: no I/O, nothing but
 * src/lib imported (architecture rule).
 */
import { defineFraming, FRAME_HEADER_BYTES, type Framing } from '../../lib/framing.js';
import { KiB, MiB } from '../../lib/units.js';

export const MAGIC = 'FMIG';
/** The magic as it appears on the wire: 0x46 0x4d 0x49 0x47. */
export const MAGIC_BYTES: readonly number[] = [0x46, 0x4d, 0x49, 0x47];
export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = FRAME_HEADER_BYTES;

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

/** The header codec of this protocol: the shared framing (src/lib/framing.ts) with this magic, these commands and bounds. */
export const MIGRATION_FRAMING: Framing<FrameCommand> = defineFraming<FrameCommand>({
  magic: MAGIC, version: PROTOCOL_VERSION, protocolName: 'migration', portName: 'migration',
  lastCommand: LAST_COMMAND, commandNames: Object.values(COMMAND_NAMES), maxPayloadBytes: MAX_PAYLOAD_BYTES,
});

/**
 * Checks a payload length against the command's bound; throws PROTOCOL_TOO_LARGE. Shared by the
 * encoder and the decoder so both sides agree on the limits.
 */
export function checkPayloadLength(command: FrameCommand, requestId: number, payloadLength: number): void {
  MIGRATION_FRAMING.checkPayloadLength(command, requestId, payloadLength);
}

/**
 * Decodes and validates a frame header at `offset` of `buf` (only the 16 header bytes are read).
 * Checks, in this order: enough bytes (PROTOCOL_TRUNCATED), magic (PROTOCOL_BAD_MAGIC), version
 * (PROTOCOL_VERSION), command 1..10 (PROTOCOL_BAD_COMMAND), reserved flags = 0 (PROTOCOL_VERSION: set
 * flags mean a protocol extension version 1 does not have), payload length within the command's
 * bound (PROTOCOL_TOO_LARGE).
 */
export function decodeHeader(buf: Uint8Array, offset = 0): FrameHeader {
  return MIGRATION_FRAMING.decodeHeaderAt(buf, offset);
}

/** Encodes a header for a payload of `payloadLength` bytes (for writing header and payload separately). */
export function encodeHeader(command: Command, requestId: number, payloadLength: number): Buffer {
  return MIGRATION_FRAMING.encodeHeader(command, requestId, payloadLength);
}

/**
 * One complete frame: header + a copy of `payload`. Throws PROTOCOL_BAD_COMMAND (command not 1..10),
 * PROTOCOL_TOO_LARGE (payload over the command's bound) or INVALID_ARGUMENT (requestId not a u32).
 */
export function encodeFrame(command: Command, requestId: number, payload: Uint8Array): Buffer {
  return MIGRATION_FRAMING.encodeFrame(command, requestId, payload);
}
