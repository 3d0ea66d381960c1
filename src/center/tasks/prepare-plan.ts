/**
 * What a prepare-migration (docs/design/cross-site.md) runs on, checked: the VM (running or paused, on
 * a host, with a disk), its disk's datastore, the target site (another one than the VM's), and the
 * datastore of that site the bases are seeded on — mounted by a host of the site in service (connected,
 * not entering or in maintenance), named by its name or id, else the one with the most space left.
 *
 * The API checks the request with these before it queues the task (a mistake is answered at once); the
 * task checks again when it runs, since the inventory may have changed meanwhile.
 */
import { FerryError, errorMessage, isFerryError } from '../../lib/errors.js';
import type { CenterPrepareMigrationRequest } from '../../api/center-v1.js';
import type { HostControl } from '../host-control.js';
import type { Datastore, Host, Vm } from '../store/model.js';
import type { CenterStore } from '../store/store.js';
import { vmDisk } from '../placement.js';
import { siteHosts } from '../sites.js';
import { resolveDatastore } from './copy-plan.js';

/** The VM side of a prepare-migration. */
export interface PrepareSource {
  readonly vm: Vm;
  readonly host: Host;
  /** The VM's disk as its row records it (the host's mount name and the top's path). */
  readonly disk: { readonly datastore: string; readonly path: string };
  readonly datastoreId: string;
}

/** A datastore of the target site, with the site's hosts in service that mount it (by their mount names). */
export interface SiteDatastore {
  readonly datastore: Datastore;
  readonly mounts: readonly { readonly host: Host; readonly mountName: string }[];
}

/** The VM, checked: on a host, running or paused, with a disk on a datastore its host reports, not already in `toSite`. */
export async function prepareSource(store: CenterStore, name: string, toSite: string): Promise<PrepareSource> {
  const vm = await store.getVm(name);
  if (vm.host === null) throw new FerryError('VM_STATE', `VM ${vm.name} is on no host: only a VM that runs on a host is prepared for a migration`);
  if (vm.state !== 'running' && vm.state !== 'paused') throw new FerryError('VM_STATE', `VM ${vm.name} is ${vm.state}: only a running or paused VM is prepared for a migration (its disk is snapshotted live)`);
  const disk = vmDisk(vm.disks);
  if (disk === null) throw new FerryError('INVALID_ARGUMENT', `VM ${vm.name} has no disk: there is nothing to seed (a migration moves its memory only)`);
  const host = await store.getHost(vm.host);
  await store.getSite(toSite).catch((err: unknown) => {
    if (isFerryError(err, 'NOT_FOUND')) throw new FerryError('NOT_FOUND', `no site ${toSite} (ferry site list shows the sites; a site exists once a host joins it with ferry host --site)`);
    throw err;
  });
  if (host.site === toSite) throw new FerryError('INVALID_ARGUMENT', `VM ${vm.name} is already in site ${toSite} (on host ${host.name}): seeds are for another site`);
  const mount = (await store.listHostDatastores(host.name)).find((m) => m.mountName === disk.datastore);
  if (mount === undefined) throw new FerryError('NOT_FOUND', `VM ${vm.name}'s disk is on datastore ${disk.datastore}, which host ${host.name} no longer reports`);
  return { vm, host, disk, datastoreId: mount.datastoreId };
}

/** Every datastore the hosts of `site` mount, each with the hosts in service among them. */
export async function siteDatastores(store: CenterStore, site: string): Promise<SiteDatastore[]> {
  const byId = new Map<string, { datastore: Datastore; mounts: { host: Host; mountName: string }[] }>();
  for (const host of await siteHosts(store, site)) {
    for (const m of await store.listHostDatastores(host.name)) {
      let entry = byId.get(m.datastoreId);
      if (entry === undefined) {
        entry = { datastore: await store.getDatastore(m.datastoreId), mounts: [] };
        byId.set(m.datastoreId, entry);
      }
      if (host.state === 'connected') entry.mounts.push({ host, mountName: m.mountName });
    }
  }
  return [...byId.values()].sort((a, b) => (a.datastore.name < b.datastore.name ? -1 : a.datastore.name > b.datastore.name ? 1 : 0));
}

/**
 * The seeds' datastore in `site`: `ref` (a name or id, the center's or a host's mount name) if given —
 * NOT_FOUND when no datastore is called that, INVALID_ARGUMENT when it is not in the site or the name is
 * ambiguous, HOST_STATE when no host of the site in service mounts it — else the one with the most space
 * left (`spaceOf` asks a host; without it, the first by name: the API's early check).
 */
export async function targetDatastore(store: CenterStore, site: string, ref: string | undefined, spaceOf?: (d: SiteDatastore) => Promise<number>): Promise<SiteDatastore> {
  const all = await siteDatastores(store, site);
  if (ref !== undefined) {
    const named = all.filter((d) => d.datastore.id === ref || d.datastore.name === ref || d.mounts.some((m) => m.mountName === ref));
    if (named.length > 1) throw new FerryError('INVALID_ARGUMENT', `${named.length} datastores of site ${site} are called ${ref} (ids ${named.map((d) => d.datastore.id).join(', ')}): name one by its id`);
    const found = named[0];
    if (found === undefined) {
      // Known elsewhere (NOT_FOUND from resolveDatastore otherwise, with its own message)?
      const elsewhere = await resolveDatastore(store, ref);
      throw new FerryError('INVALID_ARGUMENT', `datastore ${ref} (${elsewhere.id}) is not in site ${site}: its hosts mount ${all.length === 0 ? 'no datastore' : all.map((d) => d.datastore.name).join(', ')}`);
    }
    if (found.mounts.length === 0) throw new FerryError('HOST_STATE', `no host of site ${site} that mounts datastore ${found.datastore.name} is in service (connected, not in maintenance): the seeds could not be recorded`);
    return found;
  }
  const usable = all.filter((d) => d.mounts.length > 0);
  if (usable.length === 0) {
    throw new FerryError('NOT_FOUND', `site ${site} has no datastore mounted by a host in service${all.length > 0 ? ` (${all.map((d) => d.datastore.name).join(', ')}: no host in service mounts them)` : ' (join a host with ferry host --site and --datastore)'}`);
  }
  if (spaceOf === undefined) return usable[0] as SiteDatastore;
  let best: { d: SiteDatastore; space: number } | null = null;
  for (const d of usable) {
    const space = await spaceOf(d).catch(() => -1);
    if (best === null || space > best.space) best = { d, space };
  }
  return (best as { d: SiteDatastore }).d;
}

/** Space left on a datastore, as the first host in service that mounts it reports it (statfs). */
export function spaceLeft(hosts: HostControl): (d: SiteDatastore) => Promise<number> {
  return async (d) => {
    const m = d.mounts[0];
    if (m === undefined) return -1;
    try {
      const views = await hosts.client(m.host).listDatastores();
      return views.find((v) => v.id === d.datastore.id)?.spaceLeftBytes ?? -1;
    } catch (err) {
      throw new FerryError('HOST_UNREACHABLE', `cannot ask host ${m.host.name} about datastore ${d.datastore.name}: ${errorMessage(err)}`);
    }
  };
}

/** The checks of a request before it is queued (no host is asked). */
export async function checkPrepareRequest(store: CenterStore, vm: string, req: CenterPrepareMigrationRequest): Promise<void> {
  await prepareSource(store, vm, req.toSite);
  await targetDatastore(store, req.toSite, req.datastore);
}
