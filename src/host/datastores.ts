/**
 * The datastores a host mounts (`ferry host --datastore name=path`): checked at boot — each name
 * by the datastore name rule, each path an existing directory, no name twice — before the host
 * listens, so a mistyped flag stops the host instead of surfacing at the first disk. Every disk the
 * host opens is reached through one of these by name.
 */
import { FerryError } from '../lib/errors.js';
import type { Datastore } from '../storage/datastore.js';
import { LocalDatastore } from '../storage/local-datastore.js';
import type { LeaseOwner, LeaseTiming } from '../storage/lease.js';
import type { DatastoreFileStat, DatastoreView } from '../api/host-v1.js';

export interface DatastoreMount {
  readonly name: string;
  /** A local directory (possibly a shared file system mounted here). */
  readonly path: string;
}

export class HostDatastores {
  private constructor(private readonly byName: ReadonlyMap<string, Datastore>) {}

  static async mount(mounts: readonly DatastoreMount[], owner: LeaseOwner, leaseTiming?: LeaseTiming): Promise<HostDatastores> {
    const byName = new Map<string, Datastore>();
    for (const m of mounts) {
      if (byName.has(m.name)) throw new FerryError('DATASTORE_INVALID', `datastore ${m.name} is mounted twice (each --datastore needs its own name)`, { name: m.name, reason: 'duplicate' });
      byName.set(m.name, await LocalDatastore.mount(m.name, m.path, { owner, ...(leaseTiming !== undefined ? { leaseTiming } : {}) }));
    }
    return new HostDatastores(byName);
  }

  get names(): string[] { return [...this.byName.keys()]; }

  /** The datastore called `name`, or NOT_FOUND. */
  get(name: string): Datastore {
    const ds = this.byName.get(name);
    if (ds === undefined) throw new FerryError('NOT_FOUND', `no datastore ${name} on this host (mounted: ${this.names.join(', ') || 'none'})`);
    return ds;
  }

  /** The datastore with identity `id`, or undefined (this host does not mount that store). */
  byId(id: string): Datastore | undefined {
    return [...this.byName.values()].find((ds) => ds.id === id);
  }

  /** What POST /v1/datastores/{name}/stat answers: each path's kind, size and modification time, in the order asked. */
  async stat(name: string, paths: readonly string[]): Promise<DatastoreFileStat[]> {
    const ds = this.get(name);
    const out: DatastoreFileStat[] = [];
    // One at a time: a copy's plan is a few files, and a bad path is reported as the first one.
    for (const path of paths) out.push({ path, ...(await ds.stat(path)) });
    return out;
  }

  /** What GET /v1/datastores answers: each datastore with its space now, in mount order. */
  async list(): Promise<DatastoreView[]> {
    return Promise.all([...this.byName.values()].map(async (ds) => {
      const s = await ds.space();
      return { name: ds.name, id: ds.id, path: ds.location, spaceLeftBytes: s.freeBytes, totalBytes: s.totalBytes };
    }));
  }
}
