/**
 * Sites as the API shows them (docs/design/cross-site.md): each with its hosts and the datastores they
 * mount. A host's site is fixed when it joins (./inventory.ts checkJoinSite); a datastore belongs to the
 * sites of the hosts that mount it — normally one, since a site's storage is its own.
 *
 * Read from the inventory on each request: every host once (paged), then each listed host's mounts.
 * Bounded: at most MAX_SITE_VIEW_HOSTS host names and MAX_SITE_VIEW_DATASTORES datastores per site,
 * with a flag saying when more were left out.
 */
import { MAX_SITE_VIEW_DATASTORES, MAX_SITE_VIEW_HOSTS, type CenterSiteView } from '../api/center-v1.js';
import type { Datastore, Host, Site } from './store/model.js';
import { everyPage } from './store/pages.js';
import type { CenterStore } from './store/store.js';

export type SiteView = CenterSiteView;

/** Every host of the inventory, paged. */
export function allHosts(store: CenterStore): Promise<Host[]> {
  return everyPage((after: string | undefined, limit) => store.listHosts({ limit, ...(after !== undefined ? { after } : {}) }), (h) => h.name);
}

/** The hosts of one site (every page of the inventory, filtered: the store has no site index). */
export async function siteHosts(store: CenterStore, site: string): Promise<Host[]> {
  return (await allHosts(store)).filter((h) => h.site === site);
}

/** The views of `sites`, their hosts and datastores read once for all of them. */
export async function siteViews(store: CenterStore, sites: readonly Site[]): Promise<SiteView[]> {
  if (sites.length === 0) return [];
  const wanted = new Set(sites.map((s) => s.name));
  const hosts = (await allHosts(store)).filter((h) => wanted.has(h.site));
  const known = new Map<string, Datastore | null>();
  const views: SiteView[] = [];
  for (const s of sites) {
    const mine = hosts.filter((h) => h.site === s.name);
    const shown = mine.slice(0, MAX_SITE_VIEW_HOSTS);
    const datastores = new Map<string, string>();
    let datastoresTruncated = false;
    for (const h of shown) {
      for (const m of await store.listHostDatastores(h.name)) {
        if (datastores.has(m.datastoreId)) continue;
        if (datastores.size >= MAX_SITE_VIEW_DATASTORES) { datastoresTruncated = true; continue; }
        if (!known.has(m.datastoreId)) known.set(m.datastoreId, await store.getDatastore(m.datastoreId).catch(() => null));
        datastores.set(m.datastoreId, known.get(m.datastoreId)?.name ?? m.mountName);
      }
    }
    views.push({
      name: s.name, description: s.description, virtualSubnet: s.virtualSubnet,
      hosts: shown.map((h) => h.name), hostsTruncated: mine.length > shown.length,
      datastores: [...datastores].map(([id, name]) => ({ id, name })), datastoresTruncated,
    });
  }
  return views;
}
