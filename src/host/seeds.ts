/**
 * The seeds this host's datastores hold (docs/design/cross-site.md): base disks of a VM copied
 * ahead of a cross-site migration, recorded per datastore in a manifest (src/storage/seed-manifest.ts).
 * PUT records the levels a center copied — each checked against its file first (size, CID, parent
 * CID, capacity, the chain's linkage), GET reads them, DELETE forgets them and, on request, removes
 * the seed files no chain here uses. An incoming migration holds the files it runs over (`hold`) from
 * PREPARE until it commits or is discarded, so that a DELETE meanwhile keeps them.
 */
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import type { Datastore } from '../storage/datastore.js';
import { chainPaths } from '../storage/vmdk/chain-ops.js';
import {
  SEED_MANIFEST_VERSION, checkSeedLevels, readSeedManifest, removeSeedManifest, writeSeedManifest, type SeedManifest,
} from '../storage/seed-manifest.js';
import type { DeleteSeedsResult, PutSeedsRequest, SeedsView } from '../api/seed-v1.js';
import type { HostDatastores } from './datastores.js';
import type { SeedHolds } from './migration-disks.js';
import type { VmService } from './vm-service.js';

export interface HostSeedsOptions {
  readonly hostName: string;
  readonly datastores: HostDatastores;
  readonly vms: VmService;
  readonly log: (line: string) => void;
}

export class HostSeeds implements SeedHolds {
  /** `<datastore id>:<path>` → how many incoming migrations hold that seed file. */
  private readonly held = new Map<string, number>();

  constructor(private readonly o: HostSeedsOptions) {}

  async put(datastore: string, vm: string, req: PutSeedsRequest): Promise<SeedsView> {
    const ds = this.o.datastores.get(datastore);
    await checkSeedLevels(ds, req.levels);
    const manifest: SeedManifest = { version: SEED_MANIFEST_VERSION, vm, levels: req.levels, seededAtMs: Date.now(), taskId: req.taskId };
    await writeSeedManifest(ds, manifest);
    this.o.log(`host ${this.o.hostName}: seeds of VM ${vm} recorded on ${ds.name}: ${req.levels.map((l) => `${l.path} (CID ${l.cid})`).join(', ')}`);
    return this.view(ds, manifest);
  }

  async get(datastore: string, vm: string): Promise<SeedsView> {
    const ds = this.o.datastores.get(datastore);
    const manifest = await readSeedManifest(ds, vm);
    if (manifest === null) throw new FerryError('NOT_FOUND', `datastore ${ds.name} on host ${this.o.hostName} holds no seeds of VM ${vm}`, { datastore: ds.name, vm });
    return this.view(ds, manifest);
  }

  /**
   * Forgets `vm`'s seeds on `datastore`. With `files`, also removes each seed file (top first) that no
   * VM's open chain here includes, no incoming migration holds and no one holds a live lease on; the
   * others are kept, with the reason. A manifest that cannot be read is removed (its files are unknown: kept).
   */
  async delete(datastore: string, vm: string, files: boolean): Promise<DeleteSeedsResult> {
    const ds = this.o.datastores.get(datastore);
    let manifest: SeedManifest | null;
    try {
      manifest = await readSeedManifest(ds, vm);
    } catch (err) {
      if (!isFerryError(err, 'SEED_INVALID')) throw err;
      await removeSeedManifest(ds, vm);
      this.o.log(`host ${this.o.hostName}: unreadable seed manifest of VM ${vm} on ${ds.name} removed (${errorMessage(err)})`);
      return { removedFiles: [], keptFiles: [] };
    }
    if (manifest === null) throw new FerryError('NOT_FOUND', `datastore ${ds.name} on host ${this.o.hostName} holds no seeds of VM ${vm}`, { datastore: ds.name, vm });
    // The manifest first: a seed being removed is never offered to a migration.
    await removeSeedManifest(ds, vm);
    const result: { removedFiles: string[]; keptFiles: { path: string; reason: string }[] } = { removedFiles: [], keptFiles: [] };
    if (files) {
      const used = this.chainsUsing(ds);
      for (const level of [...manifest.levels].reverse()) {
        const reason = used.get(level.path) ?? (this.isHeld(ds, level.path) ? 'in use by an incoming migration' : await this.removeFile(ds, level.path));
        if (reason === null) result.removedFiles.push(level.path);
        else result.keptFiles.push({ path: level.path, reason });
      }
    }
    this.o.log(`host ${this.o.hostName}: seeds of VM ${vm} on ${ds.name} forgotten${files ? `; files removed: ${result.removedFiles.join(', ') || 'none'}, kept: ${result.keptFiles.map((k) => `${k.path} (${k.reason})`).join(', ') || 'none'}` : ''}`);
    return result;
  }

  hold(datastore: string, paths: readonly string[]): () => void {
    const id = this.o.datastores.get(datastore).id;
    const keys = paths.map((p) => `${id}:${p}`);
    for (const k of keys) this.held.set(k, (this.held.get(k) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const k of keys) {
        const n = (this.held.get(k) ?? 1) - 1;
        if (n <= 0) this.held.delete(k); else this.held.set(k, n);
      }
    };
  }

  private isHeld(ds: Datastore, path: string): boolean {
    return this.held.has(`${ds.id}:${path}`);
  }

  /** Every file of `ds` in a chain of a VM on this host → why it is kept. */
  private chainsUsing(ds: Datastore): Map<string, string> {
    const used = new Map<string, string>();
    for (const view of this.o.vms.list()) {
      const disk = this.o.vms.slot(view.name).disk;
      if (disk === null || this.o.datastores.get(disk.spec.datastore).id !== ds.id) continue;
      const paths = disk.attached ? chainPaths(disk.disk, disk.spec.path) : [disk.spec.path];
      for (const p of paths) used.set(p, `in the disk chain of VM ${view.name}`);
    }
    return used;
  }

  /** Removes a seed file: null when done, else why it stays. */
  private async removeFile(ds: Datastore, path: string): Promise<string | null> {
    try {
      await ds.remove(path);
      return null;
    } catch (err) {
      if (isFerryError(err, 'DISK_LOCKED')) return `locked: ${err.message}`;
      if (isFerryError(err, 'NOT_FOUND')) return 'not there (already removed)';
      throw err;
    }
  }

  private view(ds: Datastore, manifest: SeedManifest): SeedsView {
    return { datastore: ds.name, datastoreId: ds.id, manifest };
  }
}
