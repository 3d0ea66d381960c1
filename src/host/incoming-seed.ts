/**
 * An incoming copy-mode migration over a seed (docs/design/cross-site.md, "How the target uses
 * seeds"): which of the announced chain levels the target holds already (`matchSeed`), and the check
 * of their files' bytes before the switch-over (`verifySeedFiles`). The new top is created over the
 * seed by ./migration-disks.ts; seed files are never written, moved or removed here.
 */
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import type { Datastore } from '../storage/datastore.js';
import { checkSeedLevels, readSeedManifest, removeSeedManifest, writeSeedManifest, type SeedLevel } from '../storage/seed-manifest.js';
import { fileDigest } from '../nfc/file-digest.js';
import type { ChainLevelSpec, PreparedDisk } from '../migration/disk.js';

/** The seeded levels a migration uses (base first; empty: none), and the target's answer to PREPARE. */
export interface SeedMatch {
  readonly levels: readonly SeedLevel[];
  readonly prepared: PreparedDisk;
}

/**
 * How many levels from the base end of `announced` (base first) the manifest holds with the same CID,
 * parent CID and capacity — never the top, which the VM is writing.
 */
export function matchingLevels(announced: readonly ChainLevelSpec[], seeded: readonly SeedLevel[]): number {
  let k = 0;
  while (k < announced.length - 1 && k < seeded.length) {
    const a = announced[k];
    const s = seeded[k];
    if (a === undefined || s === undefined || a.cid !== s.cid || a.parentCid !== s.parentCid || a.capacityBytes !== s.capacityBytes) break;
    k++;
  }
  return k;
}

/** What the target answers when it uses `levels` (base first) of `chain` (top first, as announced). */
export function preparedFor(chain: readonly ChainLevelSpec[], levels: readonly SeedLevel[]): PreparedDisk {
  const n = chain.length;
  const k = levels.length;
  return {
    chain: chain.map((l, i) => ({ path: l.path, cid: l.cid, migrate: i < n - k })),
    seedPath: levels.at(-1)?.path ?? null,
    verifyBytes: levels.reduce((sum, l) => sum + l.fileBytes, 0),
  };
}

/**
 * The seed of `vm` on `ds` that matches `chain` (top first), its files checked (size, CIDs, linkage);
 * no manifest, an unreadable one, or files that no longer match: fewer levels (usually none: the disk
 * is copied whole), with a line in the log saying why. Never refuses the migration.
 */
export async function matchSeed(ds: Datastore, vm: string, chain: readonly ChainLevelSpec[], log: (line: string) => void): Promise<SeedMatch> {
  const none = (): SeedMatch => ({ levels: [], prepared: preparedFor(chain, []) });
  let manifest;
  try {
    manifest = await readSeedManifest(ds, vm);
  } catch (err) {
    log(`VM ${vm}: seed manifest on ${ds.name} not used, the disk is copied whole: ${errorMessage(err)}`);
    return none();
  }
  if (manifest === null) return none();
  const announced = [...chain].reverse();
  let k = matchingLevels(announced, manifest.levels);
  if (k === 0) {
    log(`VM ${vm}: the seed on ${ds.name} (${manifest.levels.map((l) => `${l.path} CID ${l.cid}`).join(', ')}) is not the base of the source's chain (${announced.map((l) => `CID ${l.cid}`).join(', ')}): the base was modified since it was seeded, the disk is copied whole`);
    return none();
  }
  for (; k > 0; k--) {
    try {
      await checkSeedLevels(ds, manifest.levels.slice(0, k));
      break;
    } catch (err) {
      const missing = isFerryError(err, 'SEED_INVALID') && err.details?.['reason'] === 'missing';
      log(`VM ${vm}: ${missing ? 'missing seed' : 'seed does not match its file'} (${errorMessage(err)}): ${k - 1 === 0 ? 'the disk is copied whole' : `trying ${k - 1} seeded levels`}`);
    }
  }
  const levels = manifest.levels.slice(0, k);
  if (k > 0) log(`VM ${vm}: ${k} of ${chain.length} chain levels seeded on ${ds.name} (top seeded ${levels.at(-1)?.path ?? ''}): they do not move`);
  return { levels, prepared: preparedFor(chain, levels) };
}

/**
 * Reads every seeded file (base first) and compares its NFC digest with the one the source's file had
 * when it was seeded. A level that differs is removed from the manifest with every level above it —
 * never used again, the next migration copies the disk whole — and SEED_DAMAGED is thrown.
 */
export async function verifySeedFiles(ds: Datastore, vm: string, levels: readonly SeedLevel[], hostName: string, signal: AbortSignal): Promise<void> {
  for (const level of levels) {
    signal.throwIfAborted();
    const file = await ds.open(level.path, { readOnly: true });
    let digest: string;
    try { digest = await fileDigest(file, level.fileBytes, signal); } finally { await file.close(); }
    if (digest === level.digest) continue;
    await forgetFrom(ds, vm, level.path);
    throw new FerryError('SEED_DAMAGED',
      `seed ${ds.name}:${level.path} on host ${hostName} is damaged: its digest is ${digest}, the source file's was ${level.digest} when it was seeded; the VM stays on its source, and the seed is no longer used (the next migration copies the disk whole)`,
      { datastore: ds.name, path: level.path, host: hostName, digest, expectedDigest: level.digest });
  }
}

/** Removes the level at `path` and those above it from `vm`'s manifest (the manifest goes if none is left). */
async function forgetFrom(ds: Datastore, vm: string, path: string): Promise<void> {
  const manifest = await readSeedManifest(ds, vm).catch(() => null);
  const at = manifest?.levels.findIndex((l) => l.path === path) ?? -1;
  if (manifest === null || at < 0) return;
  const kept = manifest.levels.slice(0, at);
  if (kept.length === 0) await removeSeedManifest(ds, vm);
  else await writeSeedManifest(ds, { ...manifest, levels: kept });
}
