/**
 * Import into a new monolithicSparse disk: grain by grain, skipping grains that are absent or all
 * zeros, so the sparse disk holds only what has data. The source is anything byte-addressed: a
 * streamOptimized disk (an OVA's disk), any opened VMDK chain, or a raw image.
 */
import { FerryError } from '../../lib/errors.js';
import type { BlockFile } from '../block-file.js';
import { VmdkDisk } from './disk.js';

export interface ImportResult {
  readonly capacityBytes: number;
  readonly allocatedBytes: number;
}

/** What an import reads: the guest-visible bytes of a disk of `capacityBytes`. */
export interface ImportSource {
  readonly capacityBytes: number;
  read(offsetBytes: number, buf: Uint8Array): Promise<void>;
}

/** Called after each grain with the bytes done so far (for a progress bar). */
export type ImportProgress = (doneBytes: number, totalBytes: number) => void;

/** Copies `from` into the empty disk `to` (same capacity), writes only grains holding data, and flushes. */
export async function copyIntoDisk(from: ImportSource, to: VmdkDisk, onProgress?: ImportProgress): Promise<ImportResult> {
  if (from.capacityBytes > to.capacityBytes) throw new FerryError('INVALID_ARGUMENT', `${to.name} (${to.capacityBytes} bytes) is smaller than the source (${from.capacityBytes} bytes)`);
  const grainBytes = to.info().grainSizeBytes;
  const grain = new Uint8Array(grainBytes);
  for (let at = 0; at < from.capacityBytes; at += grainBytes) {
    const part = grain.subarray(0, Math.min(grainBytes, from.capacityBytes - at));
    await from.read(at, part);
    if (part.some((b) => b !== 0)) await to.write(at, part);
    onProgress?.(at + part.length, from.capacityBytes);
  }
  await to.flush();
  return { capacityBytes: to.capacityBytes, allocatedBytes: await to.allocatedBytes() };
}

/** Reads `src` (opened read-only), writes `dst` (an empty file); both files are closed when it returns. */
export async function importStreamOptimized(src: BlockFile, dst: BlockFile): Promise<ImportResult> {
  // Each file is ours until a disk takes it (VmdkDisk.open and create close it when they fail).
  const from = await VmdkDisk.open(src).catch(async (err: unknown) => { await dst.close(); throw err; });
  try {
    const info = from.info();
    if (info.createType !== 'streamOptimized') {
      await dst.close();
      throw new FerryError('DISK_UNSUPPORTED', `${src.name} is ${info.createType}, not streamOptimized`);
    }
    const to = await VmdkDisk.create(dst, { capacityBytes: from.capacityBytes });
    try {
      return await copyIntoDisk(from, to);
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
  }
}
