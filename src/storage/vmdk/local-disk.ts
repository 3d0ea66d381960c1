/**
 * VMDK disks on local paths outside any datastore (the `ferry disk` CLI, tests): parent hints are
 * resolved relative to the child's directory, as a datastore resolves them, but not confined to a
 * directory — that confinement is what a datastore adds (docs/design/datastores.md).
 */
import { dirname, resolve } from 'node:path';
import { LocalFile } from '../local-file.js';
import { VmdkDisk, type OpenParent } from './disk.js';

/** The hint is relative to the child's directory; parents open read-only. */
export const openLocalParent: OpenParent = (hint, childName) => LocalFile.open(resolve(dirname(childName), hint), { readOnly: true });

/** Opens a disk and its chain; the file is closed if the open fails (on success the disk owns it). */
export async function openLocalDisk(path: string, readOnly = false): Promise<VmdkDisk> {
  return VmdkDisk.open(await LocalFile.open(path, { readOnly }), { openParent: openLocalParent });
}
