/**
 * Where a VM can go: the hosts compatible with it, and the best of them. Compatible means connected
 * (not disconnected, not in or entering maintenance), enough memory left for the VM (the host's memory
 * limit less the memory of the VMs recorded on it and of those already on their way to it), and, for a
 * VM with a disk, mounting the disk's datastore by identity (the shared mode: no disk data moves) — or,
 * when a disk destination is given, mounting a datastore of that name (the copy mode). The best is the
 * one with the most memory left, then the fewest migrations in flight, then by name (deterministic).
 *
 * Each incompatible host comes with its reason, so a refusal or a stuck evacuation says why.
 */
import { FerryError } from '../lib/errors.js';
import type { Host, HostDatastore, JsonValue, Vm } from './store/model.js';
import { everyPage } from './store/pages.js';
import type { CenterStore } from './store/store.js';

/** What the placement needs to know of a VM. */
export interface VmNeeds {
  readonly memoryBytes: number;
  /** The datastore identity its disk lies on (shared mode), or null. */
  readonly diskDatastoreId: string | null;
  /** Copy mode: the target must mount a datastore of this name (then diskDatastoreId is not required). */
  readonly diskDestination: string | null;
}

export interface HostFit {
  readonly host: Host;
  readonly freeMemoryBytes: number;
  readonly mounts: readonly HostDatastore[];
  /** Null when it fits; else why not. */
  readonly reason: string | null;
}

/** The memory a VM's recorded configuration says it has (0 for a row without one). */
export function vmMemoryBytes(config: JsonValue): number {
  if (typeof config === 'object' && config !== null && !Array.isArray(config)) {
    const m = config.memoryBytes;
    if (typeof m === 'number' && Number.isFinite(m) && m >= 0) return m;
  }
  return 0;
}

/** The datastore (mount name) and path of a VM's first disk as recorded, or null. */
export function vmDisk(disks: JsonValue): { datastore: string; path: string } | null {
  if (!Array.isArray(disks)) return null;
  const d = disks[0];
  if (typeof d !== 'object' || d === null || Array.isArray(d)) return null;
  return typeof d.datastore === 'string' && typeof d.path === 'string' ? { datastore: d.datastore, path: d.path } : null;
}

/** What a VM needs of a target, from its inventory row (its disk's datastore resolved to an identity through its host's mounts). */
export async function needsOf(store: CenterStore, vm: Vm, diskDestination: string | null): Promise<VmNeeds> {
  const disk = vmDisk(vm.disks);
  let diskDatastoreId: string | null = null;
  if (disk !== null && vm.host !== null) {
    const mount = (await store.listHostDatastores(vm.host)).find((m) => m.mountName === disk.datastore);
    if (mount === undefined && diskDestination === null) throw new FerryError('NO_COMPATIBLE_HOST', `VM ${vm.name}'s disk is on datastore ${disk.datastore}, which host ${vm.host} no longer reports`);
    diskDatastoreId = mount?.datastoreId ?? null;
  }
  return { memoryBytes: vmMemoryBytes(vm.config), diskDatastoreId, diskDestination: disk === null ? null : diskDestination };
}

/**
 * Every host with how well it fits `needs`. `inbound` is memory already promised to hosts by admitted
 * migrations (name → bytes); `exclude` are hosts that may not be chosen (the VM's own).
 */
export async function fits(store: CenterStore, needs: VmNeeds, inbound: ReadonlyMap<string, number>, exclude: ReadonlySet<string>): Promise<HostFit[]> {
  const hosts = await everyPage((after: string | undefined, limit) => store.listHosts({ limit, ...(after !== undefined ? { after } : {}) }), (h) => h.name);
  const out: HostFit[] = [];
  for (const host of hosts) {
    if (exclude.has(host.name)) continue;
    const vms = await everyPage((after: string | undefined, limit) => store.listVms({ host: host.name, limit, ...(after !== undefined ? { after } : {}) }), (v) => v.name);
    const used = vms.reduce((sum, v) => sum + vmMemoryBytes(v.config), 0) + (inbound.get(host.name) ?? 0);
    const freeMemoryBytes = Math.max(0, host.capacity.memoryBytes - used);
    const mounts = await store.listHostDatastores(host.name);
    out.push({ host, freeMemoryBytes, mounts, reason: reasonNotFit(host, freeMemoryBytes, mounts, needs) });
  }
  return out;
}

function reasonNotFit(host: Host, freeMemoryBytes: number, mounts: readonly HostDatastore[], needs: VmNeeds): string | null {
  if (host.state !== 'connected') return `host ${host.name} is ${host.state}`;
  if (freeMemoryBytes < needs.memoryBytes) return `host ${host.name} has ${freeMemoryBytes} bytes of memory left, the VM needs ${needs.memoryBytes}`;
  if (needs.diskDestination !== null) {
    if (!mounts.some((m) => m.mountName === needs.diskDestination)) return `host ${host.name} mounts no datastore named ${needs.diskDestination}`;
  } else if (needs.diskDatastoreId !== null && !mounts.some((m) => m.datastoreId === needs.diskDatastoreId)) {
    return `host ${host.name} does not mount the VM's disk datastore (${needs.diskDatastoreId})`;
  }
  return null;
}

/** The best fitting host (most memory left, then least loaded, then by name), or null with every host's reason. */
export function best(candidates: readonly HostFit[], load: (host: string) => number): HostFit | null {
  const ok = candidates.filter((c) => c.reason === null);
  ok.sort((a, b) => b.freeMemoryBytes - a.freeMemoryBytes || load(a.host.name) - load(b.host.name) || (a.host.name < b.host.name ? -1 : 1));
  return ok[0] ?? null;
}

/** One line that says why no host fits (bounded: the first few reasons). */
export function noFitReason(candidates: readonly HostFit[]): string {
  if (candidates.length === 0) return 'no other host is in the inventory';
  const reasons = candidates.map((c) => c.reason).filter((r): r is string => r !== null);
  const shown = reasons.slice(0, 5).join('; ');
  return `no compatible host: ${shown}${reasons.length > 5 ? `; and ${reasons.length - 5} more` : ''}`;
}
