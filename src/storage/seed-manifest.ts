/**
 * Seeds (docs/design/cross-site.md): base disks of a VM copied ahead of a migration to a datastore of
 * another site, while the VM runs on a delta above them. A datastore records the seeds it holds for
 * each VM in a manifest, `<COPY_AREA_DIR>/seeds/<vm>.json` (reserved: no user opens it; written
 * atomically and durably through Datastore.copyArea()). A migration's target looks the VM's manifest
 * up on the datastore the disk goes to, and keeps the levels whose content IDs are the source's.
 *
 * The manifest is the target site's memory of what was copied, never trusted further than its files:
 * each level's size, CID, parent CID and capacity are checked against the file when it is recorded and
 * when a migration uses it, and the file's digest against `digest` before the switch-over.
 */
import { z } from 'zod';
import { KiB } from '../lib/units.js';
import { MAX_CHAIN_DEPTH, MAX_DATASTORE_PATH_BYTES, MAX_DISK_CAPACITY_BYTES, VM_NAME_PATTERN } from '../lib/limits.js';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { COPY_AREA_DIR, type Datastore, type DatastoreFile } from './datastore.js';
import { chainPaths, openDatastoreChain } from './vmdk/chain-ops.js';
import type { VmdkDisk } from './vmdk/disk.js';

export const SEED_MANIFEST_VERSION = 1;
/** Where the manifests are, inside the datastore's copy area. */
export const SEED_MANIFEST_DIR = `${COPY_AREA_DIR}/seeds`;
/** A manifest larger than this is refused unread (MAX_CHAIN_DEPTH levels of the longest paths fit in a tenth of it). */
export const MAX_SEED_MANIFEST_BYTES = 256 * KiB;

const hex = (chars: number): z.ZodString => z.string().regex(new RegExp(`^[0-9a-f]{${chars}}$`), `must be ${chars} lowercase hex digits`);
const pathSchema = z.string().min(1).max(MAX_DATASTORE_PATH_BYTES);

/** One seeded level: a base disk file on this datastore, as the copy that made it verified it. */
export const seedLevelSchema = z.object({
  /** Its path on this datastore. */
  path: pathSchema,
  /** The descriptor's CID and parentCID (8 hex digits; ffffffff: no parent), the same as the source's. */
  cid: hex(8),
  parentCid: hex(8),
  capacityBytes: z.number().int().positive().max(MAX_DISK_CAPACITY_BYTES),
  /** The file's size in bytes. */
  fileBytes: z.number().int().nonnegative(),
  /** The source file's digest as the copy read it: SHA-256 over its 1 MiB chunks' SHA-256s (docs/design/nfc.md). */
  digest: hex(64),
  /** Where it was copied from: the source datastore's id and the path there (the chain level's identity on the source). */
  source: z.object({ datastoreId: hex(32), path: pathSchema }).strict(),
}).strict();
export type SeedLevel = z.infer<typeof seedLevelSchema>;

export const seedManifestSchema = z.object({
  version: z.literal(SEED_MANIFEST_VERSION),
  vm: z.string().regex(VM_NAME_PATTERN),
  /** Base first: levels[0] has no parent, each next one's parentCid is the previous one's cid. */
  levels: z.array(seedLevelSchema).min(1).max(MAX_CHAIN_DEPTH),
  seededAtMs: z.number().int().nonnegative(),
  /** The center task that seeded it (for people reading it), if a center did. */
  taskId: z.number().int().positive().nullable(),
}).strict();
export type SeedManifest = z.infer<typeof seedManifestSchema>;

/** Where `vm`'s manifest lies inside a datastore (a copy-area path: Datastore.copyArea() opens it). */
export function seedManifestPath(vm: string): string {
  return `${SEED_MANIFEST_DIR}/${vm}.json`;
}

function invalid(ds: Datastore, what: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('SEED_INVALID', `${ds.name}:${what}`, details);
}

/** A manifest that exists but cannot be opened or read (a directory in its place, an I/O error): not trusted. */
function unreadable(ds: Datastore, path: string, err: unknown): FerryError {
  return invalid(ds, `${path} cannot be read (${errorMessage(err)}); remove it and seed the VM again`, { path });
}

/** The manifest of `vm` on `ds`; null if it has none; SEED_INVALID if it cannot be trusted whole. */
export async function readSeedManifest(ds: Datastore, vm: string): Promise<SeedManifest | null> {
  const path = seedManifestPath(vm);
  let file: DatastoreFile;
  try {
    file = await ds.copyArea().open(path, { readOnly: true });
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return null;
    throw unreadable(ds, path, err);
  }
  let bytes: Buffer;
  try {
    const size = await file.size();
    if (size > MAX_SEED_MANIFEST_BYTES) throw invalid(ds, `${path} is ${size} bytes, more than a seed manifest may be (${MAX_SEED_MANIFEST_BYTES}); remove it and seed the VM again`, { path });
    bytes = Buffer.alloc(size);
    await file.read(0, bytes);
  } catch (err) {
    throw isFerryError(err, 'SEED_INVALID') ? err : unreadable(ds, path, err);
  } finally {
    await file.close();
  }
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw invalid(ds, `${path} is not JSON (${errorMessage(err)}); remove it and seed the VM again`, { path });
  }
  const parsed = seedManifestSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw invalid(ds, `${path} is not a version-${SEED_MANIFEST_VERSION} seed manifest (${issue === undefined ? 'invalid' : `${issue.path.join('.') || 'manifest'}: ${issue.message}`}); remove it and seed the VM again`, { path });
  }
  if (parsed.data.vm !== vm) throw invalid(ds, `${path} is the manifest of VM ${parsed.data.vm}, not of ${vm}`, { path });
  return parsed.data;
}

/** Records `manifest` on `ds`, atomically (readers see the old one or the new one) and durably. */
export async function writeSeedManifest(ds: Datastore, manifest: SeedManifest): Promise<void> {
  const checked = seedManifestSchema.parse(manifest);
  const data = Buffer.from(JSON.stringify(checked, null, 2));
  if (data.length > MAX_SEED_MANIFEST_BYTES) throw new FerryError('SEED_INVALID', `the seed manifest of ${manifest.vm} would be ${data.length} bytes, more than ${MAX_SEED_MANIFEST_BYTES}`);
  const area = ds.copyArea();
  await area.mkdir(SEED_MANIFEST_DIR);
  await area.replaceFile(seedManifestPath(manifest.vm), data);
}

/** Forgets `vm`'s seeds on `ds` (the manifest only; the files stay). False if there was none. */
export async function removeSeedManifest(ds: Datastore, vm: string): Promise<boolean> {
  const area = ds.copyArea();
  try {
    await area.remove(seedManifestPath(vm));
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return false;
    throw err;
  }
  await area.syncDirectory(SEED_MANIFEST_DIR);
  return true;
}

/**
 * Checks seeded `levels` (base first) against their files on `ds`: each exists with `fileBytes`, and
 * the chain opened read-only from the top level (its parent hints resolved, each parent's CID checked
 * against its child's parentCID by the open) is exactly these files with their CIDs, parent CIDs and
 * capacity. SEED_INVALID names the file and what differs. The digest is not checked here (that reads
 * every byte: a migration does it before its switch-over).
 */
export async function checkSeedLevels(ds: Datastore, levels: readonly SeedLevel[]): Promise<void> {
  const top = levels.at(-1);
  if (top === undefined) throw new FerryError('SEED_INVALID', 'no seeded levels');
  for (const level of levels) {
    let sizeBytes: number;
    try {
      const st = await ds.stat(level.path);
      if (st.kind !== 'file') throw invalid(ds, `${level.path} is not a file`, { path: level.path });
      sizeBytes = st.sizeBytes;
    } catch (err) {
      if (isFerryError(err, 'NOT_FOUND')) throw invalid(ds, `${level.path}: the seed file is missing`, { path: level.path, reason: 'missing' });
      throw err;
    }
    if (sizeBytes !== level.fileBytes) throw invalid(ds, `${level.path} is ${sizeBytes} bytes, the seed ${level.fileBytes}`, { path: level.path, reason: 'size' });
  }
  let chain: VmdkDisk;
  try {
    chain = await openDatastoreChain(ds, top.path, { readOnly: true });
  } catch (err) {
    if (isFerryError(err, 'SEED_INVALID')) throw err;
    throw invalid(ds, `${top.path}: the seeded chain does not open (${errorMessage(err)})`, { path: top.path, reason: 'open' });
  }
  try {
    const found = chainPaths(chain, top.path);
    const disks: VmdkDisk[] = [];
    for (let d: VmdkDisk | undefined = chain; d !== undefined; d = d.parent) disks.push(d);
    if (disks.length !== levels.length) {
      throw invalid(ds, `${top.path}: its chain has ${disks.length} levels (${found.join(' → ')}), the seed ${levels.length}`, { path: top.path, reason: 'depth' });
    }
    // Top first, as the chain opens; the manifest is base first.
    disks.forEach((disk, i) => { checkLevel(ds, levels[levels.length - 1 - i], disk, found[i]); });
  } finally {
    await chain.close();
  }
}

function checkLevel(ds: Datastore, level: SeedLevel | undefined, disk: VmdkDisk, foundPath: string | undefined): void {
  if (level === undefined) return;
  const info = disk.info();
  const differs = (what: string, file: string | number, seed: string | number): never => {
    throw invalid(ds, `${level.path}: its ${what} is ${file}, the seed's ${seed}`, { path: level.path, reason: what });
  };
  if (foundPath !== level.path) differs('place in the chain', foundPath ?? '?', level.path);
  if (info.cid !== level.cid) differs('CID', info.cid, level.cid);
  if (info.parentCid !== level.parentCid) differs('parent CID', info.parentCid, level.parentCid);
  if (info.capacityBytes !== level.capacityBytes) differs('capacity', info.capacityBytes, level.capacityBytes);
}
