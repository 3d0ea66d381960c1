/**
 * Incremental frame decoder: feed it the chunks a socket delivers, in order, and it returns every
 * frame completed so far.
 *
 * Memory stays bounded: the header is validated (magic, version, command, flags, the command's
 * payload bound) as soon as its 16 bytes are in, before a single payload byte is kept, so the most
 * ever buffered is HEADER_BYTES + the bound of the frame being received — and never more than the
 * bytes actually received. Payload pieces are collected as they arrive and copied once, when the
 * frame is complete (an 8 MiB MEMORY frame arriving in 64 KiB chunks costs one 8 MiB copy, not 128
 * growing ones).
 *
 * Errors are FerryErrors with PROTOCOL_* codes. After an error the reader is failed: every later
 * push() or end() throws the same error (the connection must be closed after the ERROR reply).
 * Frames completed earlier in the same push() as the error are not returned.
 */
import { assert } from '../../lib/assert.js';
import { FerryError } from '../../lib/errors.js';
import { HEADER_BYTES, commandName, decodeHeader, type Frame, type FrameHeader } from './frame.js';

const EMPTY = Buffer.alloc(0);

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

export class FrameReader {
  /** Header bytes of the frame being received. */
  private readonly headerBytes = Buffer.alloc(HEADER_BYTES);
  private headerFilled = 0;
  /** Header of the frame whose payload is being received, if its header is complete. */
  private header: FrameHeader | undefined;
  /** Payload pieces of that frame (views into pushed chunks) and their total length. */
  private pieces: Buffer[] = [];
  private payloadFilled = 0;
  private failure: FerryError | undefined;
  private framesDecoded = 0;

  constructor(private readonly allocator: PayloadAllocator | null = null) {}

  /** Bytes held for the frame in progress (header and payload); 0 between frames. */
  get bufferedBytes(): number {
    return this.headerFilled + this.payloadFilled;
  }

  /** Complete frames returned so far. */
  get frameCount(): number {
    return this.framesDecoded;
  }

  /** Header of the frame being received, once its 16 bytes are in (e.g. to reply ERROR to its requestId). */
  get pendingHeader(): FrameHeader | undefined {
    return this.header;
  }

  /**
   * Consumes one chunk and returns the frames it completes (possibly none). The reader keeps views
   * into `chunk` until the frame is complete: do not modify a chunk after pushing it. Returned
   * payloads are fresh buffers owned by the caller. Throws a PROTOCOL_* FerryError on a bad header.
   */
  push(chunk: Uint8Array): Frame[] {
    if (this.failure) throw this.failure;
    const data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const frames: Frame[] = [];
    let pos = 0;
    try {
      while (pos < data.length) {
        if (this.header === undefined) {
          const take = Math.min(HEADER_BYTES - this.headerFilled, data.length - pos);
          data.copy(this.headerBytes, this.headerFilled, pos, pos + take);
          this.headerFilled += take;
          pos += take;
          if (this.headerFilled < HEADER_BYTES) break;
          this.header = decodeHeader(this.headerBytes);
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
      this.fail(new FerryError('PROTOCOL_TRUNCATED',
        `the stream ended inside the payload of ${commandName(h.command)} (request ${h.requestId}): ` +
        `${this.payloadFilled} of ${h.payloadLength} bytes arrived`,
        { command: h.command, requestId: h.requestId, receivedBytes: this.payloadFilled, payloadLength: h.payloadLength }));
    }
    if (this.headerFilled > 0) {
      this.fail(new FerryError('PROTOCOL_TRUNCATED',
        `the stream ended inside a frame header: ${this.headerFilled} of ${HEADER_BYTES} bytes arrived`,
        { receivedBytes: this.headerFilled }));
    }
  }

  private complete(payload: Buffer, release?: () => void): Frame {
    const h = this.header;
    assert(h !== undefined, 'FrameReader.complete() needs a decoded header');
    const frame: Frame = { command: h.command, requestId: h.requestId, payload, ...(release !== undefined ? { release } : {}) };
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
    if (err instanceof FerryError) {
      this.failure = err;
      throw err;
    }
    throw err;
  }
}
