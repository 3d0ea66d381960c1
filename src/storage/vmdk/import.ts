/**
 * Import of a streamOptimized disk (an OVA's disk) into a new monolithicSparse one: grain by grain,
 * skipping grains that are absent or all zeros, so the sparse disk holds only what has data.
 */
import { FerryError } from '../../lib/errors.js';
import type { BlockFile } from '../block-file.js';
import { VmdkDisk } from './disk.js';

export interface ImportResult {
  readonly capacityBytes: number;
  readonly allocatedBytes: number;
}

/** Reads `src` (opened read-only), writes `dst` (an empty file); both files are closed when it returns. */
export async function importStreamOptimized(src: BlockFile, dst: BlockFile): Promise<ImportResult> {
  const from = await VmdkDisk.open(src).catch(async (err: unknown) => { await src.close(); throw err; });
  let to: VmdkDisk | undefined;
  try {
    const info = from.info();
    if (info.createType !== 'streamOptimized') throw new FerryError('DISK_UNSUPPORTED', `${src.name} is ${info.createType}, not streamOptimized`);
    to = await VmdkDisk.create(dst, { capacityBytes: from.capacityBytes });
    const grainBytes = info.grainSizeBytes;
    const grain = new Uint8Array(grainBytes);
    for (let at = 0; at < from.capacityBytes; at += grainBytes) {
      const part = grain.subarray(0, Math.min(grainBytes, from.capacityBytes - at));
      await from.read(at, part);
      if (part.some((b) => b !== 0)) await to.write(at, part);
    }
    await to.flush();
    return { capacityBytes: to.capacityBytes, allocatedBytes: await to.allocatedBytes() };
  } finally {
    await from.close();
    if (to !== undefined) await to.close(); else await dst.close();
  }
}
