/**
 * Where a migration `--to-site` goes (docs/design/cross-site.md): a host of that site, and — for a VM
 * with a disk whose datastore the host does not mount, when the request names no disk destination —
 * the datastore the disk is copied to: the one the newest succeeded prepare-migration of the VM to that
 * site seeded, if the host mounts it (the target then skips the seeded bases), else the host's roomiest
 * (chosen by the migration task, which asks the host; the scheduler knows no free space).
 *
 * Hosts that mount the seeds' datastore are preferred over those that do not; then the usual order
 * (./placement.ts best).
 */
import { FerryError, isFerryError } from '../lib/errors.js';
import { prepareMigrationResultSchema } from '../api/center-v1.js';
import { fits, type HostFit, type VmNeeds } from './placement.js';
import type { Vm } from './store/model.js';
import { everyPage } from './store/pages.js';
import type { CenterStore } from './store/store.js';
import { TASK_KINDS, vmSubject, type MigrateDisk } from './tasks/kinds.js';

/** The seeds a prepare-migration left for a VM in a site: on which datastore, by which task. */
export interface SiteSeeds {
  readonly datastoreId: string;
  readonly taskId: number;
}

/** The newest succeeded `vm.prepare-migration` of `vm` to `site`, or null. */
export async function newestSeeds(store: CenterStore, vm: string, site: string): Promise<SiteSeeds | null> {
  const tasks = await everyPage((after: number | undefined, limit) => store.listTasks({
    kind: TASK_KINDS.prepareMigration, target: vmSubject(vm), state: 'succeeded', limit, ...(after !== undefined ? { after } : {}),
  }), (t) => t.id);
  for (const t of tasks.reverse()) {
    const r = prepareMigrationResultSchema.safeParse(t.result);
    if (r.success && r.data.toSite === site) return { datastoreId: r.data.datastoreId, taskId: t.id };
  }
  return null;
}

/** A host of the site that fits, with where the disk goes there (null: it mounts the disk's datastore, nothing moves). */
export interface SiteFit extends HostFit {
  readonly disk: MigrateDisk | null;
}

/** NOT_FOUND: no such site (or no such host `requested`); INVALID_ARGUMENT: `requested` is not in the site. */
export async function checkSite(store: CenterStore, site: string, requested: string | undefined): Promise<void> {
  await store.getSite(site).catch((err: unknown) => {
    if (isFerryError(err, 'NOT_FOUND')) throw new FerryError('NOT_FOUND', `no site ${site} (ferry site list shows the sites)`);
    throw err;
  });
  if (requested !== undefined) {
    const h = await store.getHost(requested);
    if (h.site !== site) throw new FerryError('INVALID_ARGUMENT', `host ${requested} is in site ${h.site}, not in site ${site}`);
  }
}

/**
 * The site's hosts (other than the VM's own; only `requested` if given), each with why it does not fit
 * or where the disk goes. `needs` is the VM's as placement reads it without a disk destination.
 */
export async function siteFits(store: CenterStore, vm: Vm, site: string, requested: string | undefined, needs: VmNeeds, inbound: ReadonlyMap<string, number>): Promise<SiteFit[]> {
  const hasDisk = needs.diskDatastoreId !== null;
  // Memory and state as usual; the disk's datastore is this module's to decide, per host.
  const all = await fits(store, { ...needs, diskDatastoreId: null, diskDestination: null }, inbound, new Set(vm.host !== null ? [vm.host] : []));
  const inSite = all.filter((c) => c.host.site === site && (requested === undefined || c.host.name === requested));
  const seeds = hasDisk ? await newestSeeds(store, vm.name, site) : null;
  return inSite.map((c) => {
    if (c.reason !== null || !hasDisk) return { ...c, disk: null };
    if (c.mounts.some((m) => m.datastoreId === needs.diskDatastoreId)) return { ...c, disk: null };
    const seeded = seeds === null ? undefined : c.mounts.find((m) => m.datastoreId === seeds.datastoreId);
    if (seeded !== undefined) return { ...c, disk: { datastore: seeded.mountName, datastoreId: seeded.datastoreId, seeded: true, prepareTaskId: seeds?.taskId ?? null } };
    if (c.mounts.length === 0) return { ...c, reason: `host ${c.host.name} mounts no datastore to copy the VM's disk to`, disk: null };
    return { ...c, disk: { datastore: null, datastoreId: null, seeded: false, prepareTaskId: null } };
  });
}

/** The candidates to choose from: those that fit, the ones on the seeds' datastore first if any. */
export function preferSeeded(fitting: readonly SiteFit[]): SiteFit[] {
  const seeded = fitting.filter((c) => c.disk?.seeded === true);
  return seeded.length > 0 ? seeded : [...fitting];
}
