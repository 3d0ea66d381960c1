/**
 * Length-prefixed frames, shared by Ferry's wire protocols (the live migration's, src/migration/protocol;
 * the network file copy's, src/nfc/protocol): both put a 16-byte little-endian header before each payload,
 *
 *   0  4  magic (four ASCII characters naming the protocol)
 *   4  1  protocol version
 *   5  1  command (1..the protocol's last; 0 is never valid)
 *   6  2  flags (reserved, 0)
 *   8  4  requestId (u32, echoed by the reply)
 *  12  4  payload length (bounded per command)
 *
 * and differ in their magic, commands and bounds. `defineFraming` makes a protocol's header codec from
 * those; `LengthPrefixedReader` is the incremental decoder over any such codec: feed it the chunks a socket
 * delivers, in order, and it returns every frame completed so far.
 *
 * Memory stays bounded: the header is validated (magic, version, command, flags and the command's payload
 * bound) as soon as its bytes are in, before a single payload byte is kept, so the most ever buffered is
 * the header + the bound of the frame being received — and never more than the bytes actually received.
 * Payload pieces are collected as they arrive and copied once, when the frame is complete (an 8 MiB frame
 * arriving in 64 KiB chunks costs one 8 MiB copy, not 128 growing ones).
 *
 * Errors are FerryErrors with PROTOCOL_* codes. After an error the reader is failed: every later push()
 * or end() throws the same error (the connection must be closed after the ERROR reply). Frames completed
 * earlier in the same push() as the error are not returned. Everything here is pure (no I/O).
 */
import { assert } from './assert.js';
import { FerryError } from './errors.js';
import { formatBytes } from './units.js';

const EMPTY = Buffer.alloc(0);

/** What every protocol's header says about its frame. */
export interface FrameHeaderFields<C extends number = number> {
  readonly command: C;
  readonly requestId: number;
  readonly payloadLength: number;
}

/** One complete frame. */
export interface DecodedFrame<C extends number = number> {
  readonly command: C;
  readonly requestId: number;
  readonly payload: Buffer;
  /** Set when the payload lives in a pooled buffer: call once the payload is no longer used. */
  readonly release?: () => void;
}

/** A protocol's header, as the reader needs it. */
export interface FrameHeaderCodec<H extends FrameHeaderFields> {
  readonly headerBytes: number;
  /** Validates the header bytes (exactly `headerBytes` of them); throws a PROTOCOL_* FerryError. */
  decodeHeader(buf: Uint8Array): H;
  /** A command's name for messages ("HELLO", or "command 42"). */
  commandName(command: number): string;
}

/**
 * Supplies payload buffers for large frames (e.g. from a pool of warm buffers), so that receiving
 * does not page-fault on fresh memory for every frame; `release` is called by the frame's consumer.
 */
export interface PayloadAllocator {
  /** Payloads at least this large are taken from the allocator. */
  readonly minBytes: number;
  acquire(bytes: number): Buffer;
  release(buf: Buffer): void;
}

/** Bytes of every Ferry protocol's frame header. */
export const FRAME_HEADER_BYTES = 16;

const U32_LIMIT = 2 ** 32;

/** What makes one protocol's frames its own. */
export interface FramingSpec<C extends number> {
  /** Four ASCII characters, e.g. "FMIG". */
  readonly magic: string;
  readonly version: number;
  /** For messages: "migration", "network file copy". */
  readonly protocolName: string;
  /** For the bad-magic hint: which port of a Ferry host speaks it ("migration", "copy"). */
  readonly portName: string;
  /** Commands are 1..lastCommand. */
  readonly lastCommand: number;
  /** Names of the codes 0..lastCommand (index = code). */
  readonly commandNames: readonly string[];
  /** The payload bound of each command (index = code). */
  readonly maxPayloadBytes: Readonly<Record<C, number>>;
}

/** A protocol's header codec (see defineFraming). */
export interface Framing<C extends number> extends FrameHeaderCodec<FrameHeaderFields<C>> {
  readonly magicBytes: readonly number[];
  isFrameCommand(value: number): value is C;
  /** Throws PROTOCOL_TOO_LARGE when `payloadLength` is over the command's bound (encoder and decoder agree). */
  checkPayloadLength(command: C, requestId: number, payloadLength: number): void;
  /** Decodes and validates the header at `offset` of `buf` (see defineFraming for the order of checks). */
  decodeHeaderAt(buf: Uint8Array, offset?: number): FrameHeaderFields<C>;
  /** Writes a header into `buf` at `offset` (so a frame's header and payload can share one buffer). */
  writeHeader(buf: Buffer, offset: number, command: number, requestId: number, payloadLength: number): void;
  encodeHeader(command: number, requestId: number, payloadLength: number): Buffer;
  /** Header + a copy of `payload`. */
  encodeFrame(command: number, requestId: number, payload: Uint8Array): Buffer;
}

function hex(buf: Uint8Array): string {
  return Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).toString('hex');
}

/**
 * A protocol's header codec. The decoder checks, in this order: enough bytes (PROTOCOL_TRUNCATED), magic
 * (PROTOCOL_BAD_MAGIC), version (PROTOCOL_VERSION), command 1..last (PROTOCOL_BAD_COMMAND), reserved
 * flags = 0 (PROTOCOL_VERSION: set flags mean an extension this version does not have), payload length
 * within the command's bound (PROTOCOL_TOO_LARGE). The encoder refuses what the decoder would.
 */
export function defineFraming<C extends number>(spec: FramingSpec<C>): Framing<C> {
  const magicBytes = [...Buffer.from(spec.magic, 'latin1')];
  assert(magicBytes.length === 4, 'a frame magic is four bytes');
  const magicHex = hex(Buffer.from(magicBytes));
  const isFrameCommand = (value: number): value is C => Number.isInteger(value) && value >= 1 && value <= spec.lastCommand;
  const commandName = (command: number): string =>
    Number.isInteger(command) && command >= 0 && command <= spec.lastCommand ? (spec.commandNames[command] ?? `command ${command}`) : `command ${command}`;
  const checkPayloadLength = (command: C, requestId: number, payloadLength: number): void => {
    const max = spec.maxPayloadBytes[command];
    if (payloadLength > max) {
      throw new FerryError('PROTOCOL_TOO_LARGE',
        `${commandName(command)} frame (request ${requestId}) has a ${formatBytes(payloadLength)} payload; ` +
        `the limit for ${commandName(command)} is ${formatBytes(max)}`,
        { command, requestId, payloadLength, maxPayloadBytes: max });
    }
  };
  const decodeHeaderAt = (buf: Uint8Array, offset = 0): FrameHeaderFields<C> => {
    if (!Number.isInteger(offset) || offset < 0 || buf.byteLength - offset < FRAME_HEADER_BYTES) {
      throw new FerryError('PROTOCOL_TRUNCATED',
        `a frame header is ${FRAME_HEADER_BYTES} bytes but only ${Math.max(0, buf.byteLength - offset)} are available`,
        { availableBytes: Math.max(0, buf.byteLength - offset) });
    }
    const view = new DataView(buf.buffer, buf.byteOffset + offset, FRAME_HEADER_BYTES);
    if (magicBytes.some((b, i) => buf[offset + i] !== b)) {
      throw new FerryError('PROTOCOL_BAD_MAGIC',
        `not a Ferry ${spec.protocolName} frame: the header starts with 0x${hex(buf.subarray(offset, offset + 4))}, ` +
        `expected "${spec.magic}" (0x${magicHex}); is the peer a Ferry host on its ${spec.portName} port?`,
        { magic: hex(buf.subarray(offset, offset + 4)) });
    }
    const version = view.getUint8(4);
    if (version !== spec.version) {
      throw new FerryError('PROTOCOL_VERSION',
        `the peer speaks ${spec.protocolName} protocol version ${version}; this host speaks version ${spec.version} only`,
        { version, supported: spec.version });
    }
    const command = view.getUint8(5);
    const requestId = view.getUint32(8, true);
    if (!isFrameCommand(command)) {
      throw new FerryError('PROTOCOL_BAD_COMMAND',
        `frame (request ${requestId}) has command code ${command}; valid codes are 1..${spec.lastCommand}`, { command, requestId });
    }
    const flags = view.getUint16(6, true);
    if (flags !== 0) {
      throw new FerryError('PROTOCOL_VERSION',
        `${commandName(command)} frame (request ${requestId}) has reserved flags 0x${flags.toString(16).padStart(4, '0')} set; ` +
        `protocol version ${spec.version} requires 0 (the peer uses an extension this host does not know)`,
        { command, requestId, flags });
    }
    const payloadLength = view.getUint32(12, true);
    checkPayloadLength(command, requestId, payloadLength);
    return { command, requestId, payloadLength };
  };
  const writeHeader = (buf: Buffer, offset: number, command: number, requestId: number, payloadLength: number): void => {
    if (!isFrameCommand(command)) {
      throw new FerryError('PROTOCOL_BAD_COMMAND', `cannot encode a frame with command code ${command}; valid codes are 1..${spec.lastCommand}`,
        { command });
    }
    if (!Number.isInteger(requestId) || requestId < 0 || requestId >= U32_LIMIT) {
      throw new FerryError('INVALID_ARGUMENT', `requestId ${requestId} is not a u32`, { requestId });
    }
    if (!Number.isSafeInteger(payloadLength) || payloadLength < 0) {
      throw new FerryError('INVALID_ARGUMENT', `payload length ${payloadLength} is not a byte count`, { payloadLength });
    }
    checkPayloadLength(command, requestId, payloadLength);
    for (let i = 0; i < magicBytes.length; i++) buf[offset + i] = magicBytes[i] ?? 0;
    buf.writeUInt8(spec.version, offset + 4);
    buf.writeUInt8(command, offset + 5);
    buf.writeUInt16LE(0, offset + 6);
    buf.writeUInt32LE(requestId, offset + 8);
    buf.writeUInt32LE(payloadLength, offset + 12);
  };
  return {
    headerBytes: FRAME_HEADER_BYTES,
    magicBytes,
    isFrameCommand,
    commandName,
    checkPayloadLength,
    decodeHeaderAt,
    decodeHeader: (buf) => decodeHeaderAt(buf, 0),
    writeHeader,
    encodeHeader: (command, requestId, payloadLength) => {
      const header = Buffer.alloc(FRAME_HEADER_BYTES);
      writeHeader(header, 0, command, requestId, payloadLength);
      return header;
    },
    encodeFrame: (command, requestId, payload) => {
      const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.byteLength);
      writeHeader(frame, 0, command, requestId, payload.byteLength);
      frame.set(payload, FRAME_HEADER_BYTES);
      return frame;
    },
  };
}

export class LengthPrefixedReader<H extends FrameHeaderFields> {
  /** Header bytes of the frame being received. */
  private readonly headerBytes: Buffer;
  private headerFilled = 0;
  /** Header of the frame whose payload is being received, if its header is complete. */
  private header: H | undefined;
  /** Payload pieces of that frame (views into pushed chunks) and their total length. */
  private pieces: Buffer[] = [];
  private payloadFilled = 0;
  private failure: FerryError | undefined;
  private framesDecoded = 0;

  constructor(private readonly codec: FrameHeaderCodec<H>, private readonly allocator: PayloadAllocator | null = null) {
    this.headerBytes = Buffer.alloc(codec.headerBytes);
  }

  /** Bytes held for the frame in progress (header and payload); 0 between frames. */
  get bufferedBytes(): number {
    return this.headerFilled + this.payloadFilled;
  }

  /** Complete frames returned so far. */
  get frameCount(): number {
    return this.framesDecoded;
  }

  /** Header of the frame being received, once its bytes are in (e.g. to reply ERROR to its requestId). */
  get pendingHeader(): H | undefined {
    return this.header;
  }

  /**
   * Consumes one chunk and returns the frames it completes (possibly none). The reader keeps views
   * into `chunk` until the frame is complete: do not modify a chunk after pushing it. Returned
   * payloads are fresh buffers owned by the caller. Throws a PROTOCOL_* FerryError on a bad header.
   */
  push(chunk: Uint8Array): DecodedFrame<H['command']>[] {
    if (this.failure) throw this.failure;
    const data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const frames: DecodedFrame<H['command']>[] = [];
    const headerSize = this.codec.headerBytes;
    let pos = 0;
    try {
      while (pos < data.length) {
        if (this.header === undefined) {
          const take = Math.min(headerSize - this.headerFilled, data.length - pos);
          data.copy(this.headerBytes, this.headerFilled, pos, pos + take);
          this.headerFilled += take;
          pos += take;
          if (this.headerFilled < headerSize) break;
          this.header = this.codec.decodeHeader(this.headerBytes);
          if (this.header.payloadLength === 0) frames.push(this.complete(EMPTY));
          continue;
        }
        const need = this.header.payloadLength - this.payloadFilled;
        const take = Math.min(need, data.length - pos);
        this.pieces.push(data.subarray(pos, pos + take));
        this.payloadFilled += take;
        pos += take;
        if (this.payloadFilled === this.header.payloadLength) {
          const alloc = this.allocator;
          if (alloc !== null && this.payloadFilled >= alloc.minBytes) {
            const whole = alloc.acquire(this.payloadFilled);
            let at = 0;
            for (const piece of this.pieces) { piece.copy(whole, at); at += piece.length; }
            frames.push(this.complete(whole.subarray(0, this.payloadFilled), () => { alloc.release(whole); }));
          } else {
            frames.push(this.complete(Buffer.concat(this.pieces, this.payloadFilled)));
          }
        }
      }
    } catch (err) {
      this.fail(err);
    }
    return frames;
  }

  /**
   * Declares the end of the stream. Throws PROTOCOL_TRUNCATED if it ended inside a header or a
   * payload; a stream that ends between frames is fine.
   */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.header !== undefined) {
      const h = this.header;
      const name = this.codec.commandName(h.command);
      this.fail(new FerryError('PROTOCOL_TRUNCATED',
        `the stream ended inside the payload of ${name} (request ${h.requestId}): ` +
        `${this.payloadFilled} of ${h.payloadLength} bytes arrived`,
        { command: h.command, requestId: h.requestId, receivedBytes: this.payloadFilled, payloadLength: h.payloadLength }));
    }
    if (this.headerFilled > 0) {
      this.fail(new FerryError('PROTOCOL_TRUNCATED',
        `the stream ended inside a frame header: ${this.headerFilled} of ${this.codec.headerBytes} bytes arrived`,
        { receivedBytes: this.headerFilled }));
    }
  }

  private complete(payload: Buffer, release?: () => void): DecodedFrame<H['command']> {
    const h = this.header;
    assert(h !== undefined, 'LengthPrefixedReader.complete() needs a decoded header');
    const frame: DecodedFrame<H['command']> = { command: h.command, requestId: h.requestId, payload, ...(release !== undefined ? { release } : {}) };
    this.header = undefined;
    this.headerFilled = 0;
    this.pieces = [];
    this.payloadFilled = 0;
    this.framesDecoded++;
    return frame;
  }

  private fail(err: unknown): never {
    // Drop everything buffered: a failed reader holds no memory.
    this.pieces = [];
    this.payloadFilled = 0;
    this.headerFilled = 0;
    this.header = undefined;
    if (err instanceof FerryError) this.failure = err;
    throw err;
  }
}
