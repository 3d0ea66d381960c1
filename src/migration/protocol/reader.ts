/**
 * Incremental frame decoder of the migration protocol: the shared length-prefixed reader
 * (src/lib/framing.ts, which says how memory stays bounded and how errors fail it) over this
 * protocol's header (./frame.ts). Feed it the chunks a socket delivers, in order, and it returns every
 * frame completed so far; a bad header throws a PROTOCOL_* FerryError, after which the reader is failed.
 */
import { LengthPrefixedReader, type FrameHeaderFields, type PayloadAllocator } from '../../lib/framing.js';
import { MIGRATION_FRAMING, type FrameCommand } from './frame.js';

export type { PayloadAllocator };

export class FrameReader extends LengthPrefixedReader<FrameHeaderFields<FrameCommand>> {
  constructor(allocator: PayloadAllocator | null = null) {
    super(MIGRATION_FRAMING, allocator);
  }
}
