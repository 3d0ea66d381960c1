/**
 * The inventory's writers for what hosts tell the center: a join, each heartbeat (capacity, datastores
 * and mounts, the VMs the host runs), and the sweep that marks silent hosts `disconnected`.
 *
 * The rules (issue 9): a VM is in one place — the host that reports it running there is where it is;
 * a VM recorded on a host that no longer reports it becomes `unknown`, never deleted (it may be on a
 * disk nobody mounts now, or its host may have lost it; people decide, not a heartbeat); a silent
 * host's VMs become `unknown` too, and its next heartbeat reconciles them with what it really runs.
 *
 * Heartbeats write only what changed (a steady fleet's heartbeat is four reads — the credential, the
 * host, its mounts, its VMs — and its time, written with the other hosts' in one batch a second), and
 * every change appends an event for the event streams.
 */
import { FerryError, isFerryError } from '../lib/errors.js';
import type { HeartbeatRequest } from '../api/center-v1.js';
import { MAX_HEARTBEAT_BATCH, MAX_LIST_LIMIT, type Datastore, type Host, type HostDataPlane, type HostDatastore, type HostState, type JsonValue, type Vm } from './store/model.js';
import type { CenterStore, Clock } from './store/store.js';
import { everyPage } from './store/pages.js';

/** A new host's site unless it names one. */
export const DEFAULT_SITE = 'default';

/** States a heartbeat ends (the host is connected again); maintenance states are the orchestrator's and a heartbeat keeps them. */
const RECONNECTING_STATES: readonly HostState[] = ['joining', 'disconnected'];
/** Hosts the sweep watches: those expected to heartbeat (a joined host that never did counts from its join). */
const SWEPT_STATES: readonly HostState[] = ['joining', 'connected', 'entering-maintenance', 'in-maintenance'];

/**
 * Steady heartbeats' times are written together, at most this long after they arrived: one commit per
 * flush instead of one per heartbeat (on SQLite each commit is a sync to disk that holds the event loop:
 * at 200 heartbeats/s that alone took half the center's time, docs/benchmarks.md "Fleet"). A crash loses
 * at most this much of heartbeat times, which the hosts' next heartbeats restore.
 */
export const HEARTBEAT_FLUSH_MAX_MS = 1000;

/**
 * A mount's reported space is written when its capacity or free bytes moved by more than this since the
 * value kept: a datastore's free space changes with every write on it, and a write per heartbeat per
 * mount would undo the steady heartbeat's no-write rule. 64 MiB is what a person reading "space left"
 * does not miss, and several of the demo disks.
 */
export const DATASTORE_SPACE_WRITE_THRESHOLD_BYTES = 64 * 1024 * 1024;

export interface InventoryDeps {
  readonly store: CenterStore;
  readonly clock: Clock;
  /**
   * How long a steady heartbeat's time may wait to be written (default HEARTBEAT_FLUSH_MAX_MS). Well
   * below the silence that disconnects a host: another center's sweeper sees the time this late.
   */
  readonly heartbeatFlushMs?: number;
}

/** What a host says of one VM that its inventory row keeps (a heartbeat's report, or a host API's answer). */
export interface VmFacts {
  readonly memoryBytes: number;
  readonly vcpus: number;
  readonly disk: { readonly datastore: string; readonly path: string; readonly capacityBytes: number } | null;
}

/** The row's config and disks, written the one way (placement reads them back: ./placement.ts). */
export function vmRecord(v: VmFacts): { config: JsonValue; disks: JsonValue } {
  return {
    config: { memoryBytes: v.memoryBytes, vcpus: v.vcpus },
    disks: v.disk === null ? [] : [{ datastore: v.disk.datastore, path: v.disk.path, capacityBytes: v.disk.capacityBytes }],
  };
}
/** A heartbeat's datastore space under the store's names (a host's file system can report more free than total: clamped). */
const spaceOf = (r: HeartbeatRequest['datastores'][number]): { capacityBytes: number; freeBytes: number } => ({ capacityBytes: r.totalBytes, freeBytes: Math.min(r.spaceLeftBytes, r.totalBytes) });
const movedBeyondThreshold = (kept: number, now: number): boolean => Math.abs(kept - now) > DATASTORE_SPACE_WRITE_THRESHOLD_BYTES;
const sameJson = (a: JsonValue, b: JsonValue): boolean => JSON.stringify(a) === JSON.stringify(b);

async function orNull<T>(p: Promise<T>): Promise<T | null> {
  try { return await p; } catch (err) {
    if (isFerryError(err) && err.code === 'NOT_FOUND') return null;
    throw err;
  }
}

export class Inventory {
  /** Steady heartbeats not yet written: host → newest time. */
  readonly #pendingBeats = new Map<string, number>();
  #flushTimer: NodeJS.Timeout | null = null;
  #flushing: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(private readonly d: InventoryDeps) {}

  private queueBeat(name: string, atMs: number): void {
    this.#pendingBeats.set(name, Math.max(atMs, this.#pendingBeats.get(name) ?? 0));
    if (this.#flushTimer !== null || this.#closed) return;
    this.#flushTimer = setTimeout(() => { this.#flushTimer = null; void this.flushHeartbeats().catch(() => undefined); }, this.d.heartbeatFlushMs ?? HEARTBEAT_FLUSH_MAX_MS);
  }

  /**
   * Write the pending heartbeat times now (the timer does it; the sweep first; close last). A failed
   * write puts them back for the next flush, unless a newer time arrived meanwhile.
   */
  async flushHeartbeats(): Promise<void> {
    const run = this.#flushing.then(async () => {
      const beats = [...this.#pendingBeats].map(([name, atMs]) => ({ name, atMs }));
      this.#pendingBeats.clear();
      for (let i = 0; i < beats.length; i += MAX_HEARTBEAT_BATCH) {
        const chunk = beats.slice(i, i + MAX_HEARTBEAT_BATCH);
        try {
          await this.d.store.recordHostHeartbeats(chunk);
        } catch (err) {
          for (const b of beats.slice(i)) if (!this.#pendingBeats.has(b.name)) this.#pendingBeats.set(b.name, b.atMs);
          if (!this.#closed && this.#flushTimer === null && this.#pendingBeats.size > 0) {
            this.#flushTimer = setTimeout(() => { this.#flushTimer = null; void this.flushHeartbeats().catch(() => undefined); }, this.d.heartbeatFlushMs ?? HEARTBEAT_FLUSH_MAX_MS);
          }
          throw err;
        }
      }
    });
    this.#flushing = run.catch(() => undefined);
    return run;
  }

  /** Stop the flush timer and write what is pending (the center closes the store after this). */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#flushTimer !== null) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    await this.flushHeartbeats().catch(() => undefined);
  }

  /** Event streams hear of it from the store (onEventsCommitted), here and in every other center. */
  private async event(kind: string, subject: string, payload: JsonValue): Promise<void> {
    await this.d.store.appendEvent({ kind, subject, payload });
  }

  /**
   * Refuses, before a join token is spent, a re-join of a host into another site than the one it is in.
   * Refused, not moved: the host's VMs, its datastores' seeds and its mobility paths' addresses belong
   * to its site (a prepare-migration's seeds, a migration's plan); moving it silently would make them
   * lie. A host that really moves joins under a new name.
   */
  async checkJoinSite(name: string, site: string = DEFAULT_SITE): Promise<void> {
    const existing = await orNull(this.d.store.getHost(name));
    if (existing !== null && existing.site !== site) {
      throw new FerryError('HOST_STATE', `host ${name} is in site ${existing.site}; a host does not change sites by joining again: join it with --site ${existing.site}, or under a new name to put it in site ${site}`, { site: existing.site });
    }
  }

  /** A host that spent a join token: recorded as `joining` until its first heartbeat (a re-join keeps its state and site: checkJoinSite first). */
  async recordJoin(name: string, url: string, site: string = DEFAULT_SITE): Promise<Host> {
    await this.checkJoinSite(name, site);
    await this.d.store.upsertSite({ name: site });
    const existing = await orNull(this.d.store.getHost(name));
    const host = await this.d.store.upsertHost({ name, site, url, capacity: existing?.capacity ?? { memoryBytes: 0, vcpus: 0 } });
    await this.event('host.joined', `host:${name}`, { host: name, site, url, rejoined: existing !== null });
    return host;
  }

  /** Apply one heartbeat; answers the host's state after it. */
  async applyHeartbeat(name: string, hb: HeartbeatRequest): Promise<HostState> {
    const { store } = this.d;
    const before = await store.getHost(name);
    // A steady host (connected or in a maintenance state, same URL and capacity) costs no host write
    // here: only the heartbeat time, in the next flush (one commit for all of them).
    const unchanged = !RECONNECTING_STATES.includes(before.state) && before.url === hb.url
      && before.capacity.memoryBytes === hb.capacity.memoryBytes && before.capacity.vcpus === hb.capacity.vcpus;
    if (!unchanged) await store.upsertHost({ name, site: before.site, url: hb.url, capacity: hb.capacity });
    await this.applyDataPlane(before, hb.dataPlane ?? null);
    await this.applyDatastores(name, hb.datastores);
    await this.applyVms(name, hb.vms);
    if (unchanged) this.queueBeat(name, this.d.clock());
    else await store.recordHostHeartbeat(name, this.d.clock());
    // Compare-and-set: only a joining or disconnected host becomes connected; maintenance states are the
    // orchestrator's and stay, even when it set one between this heartbeat's read and write.
    const state = unchanged ? before.state : (await store.setHostState(name, 'connected', RECONNECTING_STATES)).state;
    // Last: a client that sees the host (re)connected finds its datastores and VMs already reconciled.
    if (state !== before.state) await this.event('host.connected', `host:${name}`, { host: name, from: before.state });
    return state;
  }

  /** The host's path drivers and tunnel endpoints, written when they change (a restarted host may listen on another port). */
  private async applyDataPlane(before: Host, reported: HostDataPlane | null): Promise<void> {
    if (JSON.stringify(before.dataPlane) === JSON.stringify(reported)) return;
    await this.d.store.setHostDataPlane(before.name, reported);
  }

  private async applyDatastores(host: string, reported: HeartbeatRequest['datastores']): Promise<void> {
    const { store } = this.d;
    const ids = new Set(reported.map((d) => d.id));
    if (ids.size !== reported.length) throw new FerryError('BAD_REQUEST', `host ${host} reported one datastore id twice`);
    const mounts = await store.listHostDatastores(host);
    const unchanged = mounts.length === reported.length && reported.every((r) => mounts.some((m) => m.datastoreId === r.id && m.mountName === r.name));
    if (unchanged) { await this.applySpace(host, mounts, reported); return; }
    for (const r of reported) {
      const existing: Datastore | null = await orNull(store.getDatastore(r.id));
      // Shared: another host mounts the same identity. Once seen shared, it stays so (it is the storage's nature).
      const shared = existing?.shared === true || (await store.listDatastoreHosts(r.id)).some((m) => m.host !== host);
      if (existing === null || existing.shared !== shared) await store.upsertDatastore({ id: r.id, name: existing?.name ?? r.name, shared });
    }
    await store.setHostDatastores(host, reported.map((r) => ({ datastoreId: r.id, mountName: r.name, space: spaceOf(r) })));
    await this.event('host.datastores', `host:${host}`, { host, datastores: reported.map((r) => ({ id: r.id, name: r.name })) });
  }

  /** The mounts' space, written only where it moved by more than the threshold (steady heartbeats write nothing). */
  private async applySpace(host: string, mounts: readonly HostDatastore[], reported: HeartbeatRequest['datastores']): Promise<void> {
    for (const r of reported) {
      const kept = mounts.find((m) => m.datastoreId === r.id)?.space ?? null;
      const now = spaceOf(r);
      if (kept !== null && !movedBeyondThreshold(kept.capacityBytes, now.capacityBytes) && !movedBeyondThreshold(kept.freeBytes, now.freeBytes)) continue;
      await this.d.store.setHostDatastoreSpace(host, r.id, now);
    }
  }

  private async applyVms(host: string, reported: HeartbeatRequest['vms']): Promise<void> {
    const { store } = this.d;
    const recorded = new Map((await this.vmsOn(host)).map((v) => [v.name, v]));
    const seen = new Set<string>();
    for (const r of reported) {
      if (seen.has(r.name)) throw new FerryError('BAD_REQUEST', `host ${host} reported VM ${r.name} twice`);
      seen.add(r.name);
      const { config, disks } = vmRecord(r);
      const was = recorded.get(r.name) ?? await orNull(store.getVm(r.name));
      if (was !== null && was.host === host && was.state === r.state && sameJson(was.config, config) && sameJson(was.disks, disks)) continue;
      // Recorded on another host that still reports it: the report is stale (a heartbeat built before a
      // migration moved the VM) or the two hosts overlap mid-migration. The row stays; it moves when the
      // migration task records the outcome, or when the other host stops reporting it (its row turns
      // unknown) — so the inventory never flips a VM back to where it was.
      if (was !== null && was.host !== null && was.host !== host && was.state !== 'unknown') continue;
      const now = await store.upsertVm({ name: r.name, host, state: r.state, config, disks }, was === null ? null : was.host);
      if (now.host !== host || now.state !== r.state) continue;
      await this.event('vm.changed', `vm:${r.name}`, { vm: r.name, host, state: r.state, from: was === null ? null : { host: was.host, state: was.state } });
    }
    for (const v of recorded.values()) {
      if (seen.has(v.name) || v.state === 'unknown') continue;
      const now = await store.upsertVm({ name: v.name, host, state: 'unknown', config: v.config, disks: v.disks }, host);
      if (now.host !== host) continue;
      await this.event('vm.changed', `vm:${v.name}`, { vm: v.name, host, state: 'unknown', from: { host, state: v.state }, reason: 'not reported by its host' });
    }
  }

  /** Every VM recorded on a host, page by page (bounded per page; a host holds at most a heartbeat's worth). */
  private vmsOn(host: string): Promise<Vm[]> {
    return everyPage((after: string | undefined, limit) => this.d.store.listVms({ host, limit, ...(after !== undefined ? { after } : {}) }), (v) => v.name);
  }

  /**
   * Mark every host silent for longer than `silentAfterMs` `disconnected` and its VMs `unknown`.
   * Answers the hosts marked. Run by one center at a time (the heartbeat-sweep duty).
   */
  async sweep(silentAfterMs: number): Promise<string[]> {
    const { store } = this.d;
    const marked: string[] = [];
    // This center's own pending heartbeats first: a host it heard from is not silent.
    await this.flushHeartbeats();
    for (const state of SWEPT_STATES) {
      for (let after: string | undefined; ;) {
        const page = await store.listHosts({ state, limit: MAX_LIST_LIMIT, ...(after !== undefined ? { after } : {}) });
        for (const h of page) if (await this.markIfSilent(h, silentAfterMs)) marked.push(h.name);
        if (page.length < MAX_LIST_LIMIT) break;
        after = page[page.length - 1]?.name;
      }
    }
    return marked;
  }

  private async markIfSilent(listed: Host, silentAfterMs: number): Promise<boolean> {
    const silent = (h: Host): boolean => (h.lastHeartbeatAtMs ?? h.updatedAtMs) < this.d.clock() - silentAfterMs;
    if (!silent(listed)) return false;
    // Read again just before marking: a heartbeat that landed since the list wins. One landing after
    // this read is undone by the host's next heartbeat, which reconnects and reconciles.
    const h = await this.d.store.getHost(listed.name);
    if (!SWEPT_STATES.includes(h.state) || !silent(h) || this.#pendingBeats.has(h.name)) return false;
    const now = await this.d.store.setHostState(h.name, 'disconnected', [h.state]);
    if (now.state !== 'disconnected') return false;
    const vms = await this.d.store.setVmStatesOnHost(h.name, 'unknown');
    await this.event('host.disconnected', `host:${h.name}`, { host: h.name, from: h.state, lastHeartbeatAtMs: h.lastHeartbeatAtMs, vmsUnknown: vms });
    return true;
  }
}
