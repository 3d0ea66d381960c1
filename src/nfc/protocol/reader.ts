/**
 * Incremental frame decoder of the NFC protocol: the shared length-prefixed reader (src/lib/framing.ts,
 * which says how memory stays bounded and how errors fail it) over this protocol's header (./frame.ts).
 * The most it ever buffers is one frame: HEADER_BYTES + MAX_DATA_PAYLOAD_BYTES. A bad header throws a
 * PROTOCOL_* FerryError, after which the reader is failed.
 */
import { LengthPrefixedReader, type FrameHeaderFields, type PayloadAllocator } from '../../lib/framing.js';
import { NFC_FRAMING, type FrameCommand } from './frame.js';

export type { PayloadAllocator };

export class FrameReader extends LengthPrefixedReader<FrameHeaderFields<FrameCommand>> {
  constructor(allocator: PayloadAllocator | null = null) {
    super(NFC_FRAMING, allocator);
  }
}
