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
import { COPY_AREA_DIR } from './datastore.js';

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
