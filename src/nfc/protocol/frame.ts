/**
 * Frames of the Ferry network file copy (NFC) wire protocol, version 1 (docs/nfc-protocol.md is the
 * normative description). Every message is a 16-byte little-endian header followed by its payload:
 *
 *   0  4  magic "FNFC"
 *   4  1  protocol version (1)
 *   5  1  command (1..10)
 *   6  2  flags (reserved, 0)
 *   8  4  requestId (u32, echoed by the reply; 0 only on the receiver's unsolicited ERROR)
 *  12  4  payload length (bounded per command)
 *
 * The codec is the shared one of src/lib/framing.ts (the migration protocol's too). Everything here is
 * pure: no I/O, nothing but src/lib and src/nfc/plan.ts imported (architecture rule).
 */
import { defineFraming, FRAME_HEADER_BYTES, type DecodedFrame, type FrameHeaderFields, type Framing } from '../../lib/framing.js';
import { KiB } from '../../lib/units.js';
import { NFC_CHUNK_BYTES } from '../plan.js';

export const MAGIC = 'FNFC';
/** The magic as it appears on the wire: 0x46 0x4e 0x46 0x43. */
export const MAGIC_BYTES: readonly number[] = [0x46, 0x4e, 0x46, 0x43];
export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = FRAME_HEADER_BYTES;

/** Command codes (header byte 5). 0 is never valid on the wire. */
export const Command = {
  INVALID: 0,
  HELLO: 1,
  DATA: 2,
  HOLE: 3,
  SYNC: 4,
  FINISH_FILE: 5,
  COMPLETE: 6,
  CLOSE: 7,
  ABORT: 8,
  OK: 9,
  ERROR: 10,
} as const;
export type Command = (typeof Command)[keyof typeof Command];
/** A command that may appear on the wire (1..10). */
export type FrameCommand = Exclude<Command, typeof Command.INVALID>;

/** The highest command code this build knows. */
const LAST_COMMAND = Command.ERROR;

/**
 * The binary header of a DATA payload (docs/nfc-protocol.md, "DATA payload"): file index, length,
 * offset, CRC-32, reserved, SHA-256 — then the chunk's bytes.
 */
export const DATA_HEADER_BYTES = 56;

/** Every JSON request (HELLO, HOLE, SYNC, FINISH_FILE, COMPLETE, CLOSE, ABORT) is small: 4 KiB holds any with room to spare. */
export const MAX_REQUEST_JSON_PAYLOAD_BYTES = 4 * KiB;
/** One chunk and its header: a DATA never carries more than NFC_CHUNK_BYTES of file. */
export const MAX_DATA_PAYLOAD_BYTES = DATA_HEADER_BYTES + NFC_CHUNK_BYTES;
/**
 * The largest reply is COMPLETE's: one entry per file (≤ MAX_COPY_FILES = 1024) of index, size and two
 * 64-digit digests, about 210 bytes each without the path (the sender knows the paths from its plan).
 */
export const MAX_OK_PAYLOAD_BYTES = 512 * KiB;
/** A code and a message of at most MAX_ERROR_MESSAGE_CHARS characters, JSON-escaped. */
export const MAX_ERROR_PAYLOAD_BYTES = 64 * KiB;

export const MAX_PAYLOAD_BYTES: Readonly<Record<FrameCommand, number>> = {
  [Command.HELLO]: MAX_REQUEST_JSON_PAYLOAD_BYTES,
  [Command.DATA]: MAX_DATA_PAYLOAD_BYTES,
  [Command.HOLE]: MAX_REQUEST_JSON_PAYLOAD_BYTES,
  [Command.SYNC]: MAX_REQUEST_JSON_PAYLOAD_BYTES,
  [Command.FINISH_FILE]: MAX_REQUEST_JSON_PAYLOAD_BYTES,
  [Command.COMPLETE]: MAX_REQUEST_JSON_PAYLOAD_BYTES,
  [Command.CLOSE]: MAX_REQUEST_JSON_PAYLOAD_BYTES,
  [Command.ABORT]: MAX_REQUEST_JSON_PAYLOAD_BYTES,
  [Command.OK]: MAX_OK_PAYLOAD_BYTES,
  [Command.ERROR]: MAX_ERROR_PAYLOAD_BYTES,
};

/**
 * Requests a sender may have outstanding on one stream; replies come in request order. Four 1 MiB
 * chunks cover a 10 Gbit/s link's bandwidth-delay product at 1 ms RTT, and bound what a receiver holds
 * per stream to 4 MiB queued plus the frame being read (about 40 MiB for the MAX_COPY_STREAMS streams of
 * one copy). A receiver refuses a fifth.
 */
export const MAX_IN_FLIGHT_PER_STREAM = 4;
/**
 * How long a receiver's ticket stays valid without a connected stream: for the first HELLO, and for a
 * sender that reconnects (opens its sink again) after its connection broke. Long enough for a retry
 * after a network blip, short enough that tickets of copies nobody continues go away on their own.
 */
export const TICKET_TTL_MS = 5 * 60_000;
/** Times a chunk refused as CHUNK_CORRUPT is sent again before the copy fails (a link that corrupts this often is broken). */
export const MAX_CHUNK_RESENDS = 3;
/** requestId of the receiver's unsolicited ERROR: the session ends (e.g. COPY_FENCED); senders number requests from 1. */
export const SESSION_REQUEST_ID = 0;

export type FrameHeader = FrameHeaderFields<FrameCommand>;
export type Frame = DecodedFrame<FrameCommand>;

/** The header codec of this protocol: the shared framing (src/lib/framing.ts) with this magic, these commands and bounds. */
export const NFC_FRAMING: Framing<FrameCommand> = defineFraming<FrameCommand>({
  magic: MAGIC, version: PROTOCOL_VERSION, protocolName: 'network file copy', portName: 'copy',
  lastCommand: LAST_COMMAND, commandNames: Object.keys(Command), maxPayloadBytes: MAX_PAYLOAD_BYTES,
});

/** Name of a command code for messages and logs ("HELLO", or "command 42" for unknown codes). */
export const commandName = (command: number): string => NFC_FRAMING.commandName(command);
export const isFrameCommand = (value: number): value is FrameCommand => NFC_FRAMING.isFrameCommand(value);

/**
 * Decodes and validates a frame header at `offset` of `buf` (only the 16 header bytes are read).
 * Checks, in this order: enough bytes (PROTOCOL_TRUNCATED), magic (PROTOCOL_BAD_MAGIC), version
 * (PROTOCOL_VERSION), command 1..10 (PROTOCOL_BAD_COMMAND), reserved flags = 0 (PROTOCOL_VERSION),
 * payload length within the command's bound (PROTOCOL_TOO_LARGE).
 */
export function decodeHeader(buf: Uint8Array, offset = 0): FrameHeader {
  return NFC_FRAMING.decodeHeaderAt(buf, offset);
}

/** Writes a header into `buf` at `offset` (a DATA's frame and payload headers share one buffer). */
export function writeHeader(buf: Buffer, offset: number, command: Command, requestId: number, payloadLength: number): void {
  NFC_FRAMING.writeHeader(buf, offset, command, requestId, payloadLength);
}

/**
 * One complete frame: header + a copy of `payload`. Throws PROTOCOL_BAD_COMMAND (command not 1..10),
 * PROTOCOL_TOO_LARGE (payload over the command's bound) or INVALID_ARGUMENT (requestId not a u32).
 */
export function encodeFrame(command: Command, requestId: number, payload: Uint8Array): Buffer {
  return NFC_FRAMING.encodeFrame(command, requestId, payload);
}
