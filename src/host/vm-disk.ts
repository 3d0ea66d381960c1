/**
 * A VM's disk as the host holds it: a VMDK on one of the host's datastores, opened for writing
 * (so its datastore lease is held) for as long as the VM is defined here, and handed to the VM as
 * its block device. One disk per VM for now; its chain may have parents in the same directory.
 */
import { posix } from 'node:path';
import { FerryError } from '../lib/errors.js';
import { VmdkDisk } from '../storage/vmdk/disk.js';
import type { BlockFile } from '../storage/block-file.js';
import type { Datastore, DatastoreFile } from '../storage/datastore.js';
import { blockBackend, type BlockBackend } from '../vmm/devices/block.js';
import type { HostDatastores } from './datastores.js';

/** Where a VM's disk lives: what the data directory records and the API shows. */
export interface DiskSpec {
  readonly datastore: string;
  readonly path: string;
}

export interface AttachedDisk {
  readonly spec: DiskSpec;
  readonly disk: VmdkDisk;
  readonly backend: BlockBackend;
  /** Flushes, closes the chain and releases the lease; idempotent. */
  close(): Promise<void>;
}

/** Parents of a delta are opened read-only in the child's directory of the same datastore. */
function parentOpener(ds: Datastore, childPath: string): (hint: string) => Promise<BlockFile> {
  return (hint) => ds.open(posix.join(posix.dirname(childPath), hint), { readOnly: true });
}

/**
 * Opens the disk at `spec` (or creates a new one of `sizeBytes` — never over an existing file)
 * and takes its write lease: DISK_LOCKED when another host holds it.
 */
export async function attachDisk(datastores: HostDatastores, spec: DiskSpec, sizeBytes?: number): Promise<AttachedDisk> {
  const ds = datastores.get(spec.datastore);
  let file: DatastoreFile;
  try {
    file = await ds.open(spec.path, sizeBytes !== undefined ? { create: true } : {});
  } catch (err) {
    if (err instanceof FerryError && err.code === 'ALREADY_EXISTS') {
      throw new FerryError('ALREADY_EXISTS', `${spec.datastore}:${spec.path} already exists; give no size to attach the existing disk`, { ...spec });
    }
    throw err;
  }
  let disk: VmdkDisk;
  try {
    disk = sizeBytes !== undefined
      ? await VmdkDisk.create(file, { capacityBytes: sizeBytes })
      : await VmdkDisk.open(file, { openParent: parentOpener(ds, spec.path) });
  } catch (err) {
    await file.close();
    if (sizeBytes !== undefined) await ds.remove(spec.path).catch(() => undefined);
    throw err;
  }
  let closed: Promise<void> | null = null;
  return {
    spec, disk, backend: blockBackend(disk, disk.capacityBytes),
    close: () => (closed ??= (async () => { await disk.flush().catch(() => undefined); await disk.close(); })()),
  };
}

/** The disk as the API shows it. */
export function describeDisk(d: AttachedDisk): { datastore: string; path: string; capacityBytes: number; cid: string; parentCid: string } {
  const info = d.disk.info();
  return { ...d.spec, capacityBytes: info.capacityBytes, cid: info.cid, parentCid: info.parentCid };
}
