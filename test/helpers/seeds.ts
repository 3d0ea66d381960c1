/**
 * Seeds for host tests (docs/design/cross-site.md): the level a center would record after copying a
 * base disk of a VM to another datastore — its CIDs and capacity from the VM's chain on the source, its
 * size from the file, its digest computed with the NFC file digest (src/nfc/file-digest.ts) the way a
 * copy reports the source file's.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileDigest } from '../../src/nfc/file-digest.js';
import { LocalDatastore } from '../../src/storage/local-datastore.js';
import type { SeedLevel } from '../../src/storage/seed-manifest.js';
import type { HostClient } from '../../src/api/host-client.js';

/** The NFC digest of the file at `path` under the datastore directory `root`. */
export async function nfcDigestOf(root: string, path: string): Promise<string> {
  // Mounted here only to read: no lease is taken, nothing is written (the id file exists already).
  const ds = await LocalDatastore.mount('digest', root, { owner: { hostName: 'test', hostId: 'cccccccccccccccc' } });
  const file = await ds.open(path, { readOnly: true });
  try { return await fileDigest(file, await file.size()); } finally { await file.close(); }
}

/**
 * The seed level for the level of `vm`'s chain on `source` at `sourcePath` (index from the base: 0 is
 * the base), copied to `path` on the datastore directory `root`.
 */
export async function seedLevelFor(source: HostClient, vm: string, sourcePath: string, root: string, path: string): Promise<SeedLevel> {
  const chain = await source.diskChain(vm);
  const level = chain.chain.find((l) => l.path === sourcePath);
  if (level === undefined) throw new Error(`${sourcePath} is not in the chain of ${vm} (${chain.chain.map((l) => l.path).join(', ')})`);
  const datastoreId = (await source.listDatastores()).find((d) => d.name === chain.datastore)?.id ?? '';
  return {
    path, cid: level.cid, parentCid: level.parentCid, capacityBytes: chain.capacityBytes, fileBytes: (await stat(join(root, path))).size,
    digest: await nfcDigestOf(root, path), source: { datastoreId, path: sourcePath },
  };
}
