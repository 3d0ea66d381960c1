/**
 * `--disk <file>` of `ferry vm run` / `ferry vm restore`: a raw disk image on a local file as the
 * guest's block device. The disk's size is the file's size; `--disk-size` creates a missing file
 * of that size (an existing file is never resized: its content is someone's disk).
 */
import { FerryError } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { LocalFile } from '../storage/local-file.js';
import { BLOCK_SECTOR_BYTES, blockBackend, type BlockBackend } from '../vmm/devices/block.js';

export interface OpenedDisk {
  readonly backend: BlockBackend;
  close(): Promise<void>;
}

export async function openRawDisk(path: string, createSizeBytes?: number): Promise<OpenedDisk> {
  let file: LocalFile;
  try {
    file = await LocalFile.open(path);
  } catch (err) {
    if (!(err instanceof FerryError && err.code === 'NOT_FOUND') || createSizeBytes === undefined) throw err;
    file = await LocalFile.open(path, { create: true });
    await file.truncate(createSizeBytes);
  }
  try {
    const sizeBytes = await file.size();
    if (createSizeBytes !== undefined && sizeBytes !== createSizeBytes) {
      throw new FerryError('INVALID_ARGUMENT', `disk ${path} exists with ${formatBytes(sizeBytes)}, not the ${formatBytes(createSizeBytes)} of --disk-size; an existing disk is never resized`);
    }
    if (sizeBytes === 0 || sizeBytes % BLOCK_SECTOR_BYTES !== 0) {
      throw new FerryError('INVALID_ARGUMENT', `disk ${path} is ${sizeBytes} bytes; a raw disk is a non-zero multiple of ${BLOCK_SECTOR_BYTES} bytes`);
    }
    return { backend: blockBackend(file, sizeBytes), close: () => file.close() };
  } catch (err) {
    await file.close();
    throw err;
  }
}
