/**
 * What the UI shows, kept live: sites, hosts (with their datastores), VMs and tasks, read from the REST
 * API and refreshed by the event stream — every event names its subject (`vm:<name>`, `host:<name>`,
 * `task:<id>`), and the subject is read again, so what is shown is always what the API answers now,
 * never a value patched together from events. When the stream opens again after a break (resumed, or
 * with `events.lost`), everything is read again. Migration and copy progress, which the API does not
 * keep, is collected from their events (`migration.progress`, `copy.progress`, …).
 *
 * Reads can overlap (a whole-fleet refetch and an event's single read): each item keeps the sequence
 * number of the read that last set it, and an older read never overwrites a newer one.
 */
import { useEffect, useState } from 'preact/hooks';
import * as api from './api.js';
import type { CenterHostDetail, CenterTaskView, CenterVmView, SiteView } from './api.js';
import { EVENTS_LOST_KIND, EventStream, replayEvents, type CenterEvent, type StreamStatus } from './events.js';

/** Events of one subject arriving close together cause one read. */
const REFETCH_COALESCE_MS = 100;
/** Progress samples kept per migration (one per round, the latest of each): a long run shows its last rounds. */
export const MAX_MIGRATION_ROUNDS = 500;
/** Hand-offs and parts kept per copy. */
const MAX_COPY_PARTS = 200;

export interface MigrationSample {
  readonly phase: string;
  readonly round: number;
  readonly sentBytes: number;
  readonly roundSentBytes: number;
  readonly roundTotalBytes: number;
  readonly dirtyBytes: number;
  readonly dirtyRateBytesPerSec: number;
  readonly throughputBytesPerSec: number;
  readonly throttlePermille: number;
  readonly etaMs: number | null;
  readonly elapsedMs: number;
}
export interface MigrationFinish {
  readonly outcome: string;
  readonly engineDowntimeMs: number | null;
  readonly guestDowntimeMs: number | null;
  readonly totalMs: number | null;
  /** Where the engine downtime went, when the center's event carries it. */
  readonly switchoverMs: Readonly<Record<string, number>> | null;
}
export interface MigrationLive {
  readonly taskId: number;
  from: string | null;
  to: string | null;
  /** One per round (its latest sample), in round order. */
  rounds: MigrationSample[];
  last: MigrationSample | null;
  phases: string[];
  finished: MigrationFinish | null;
}
export interface CopyPart { readonly host: string; readonly epoch: number; readonly reason: string | null; readonly boundary: unknown }
export interface CopyLive {
  readonly taskId: number;
  parts: CopyPart[];
  doneBytes: number;
  totalBytes: number;
  rateBytesPerSec: number;
  etaMs: number | null;
  host: string | null;
  outcome: string | null;
}

type Key = string;
const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const numOrNull = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Record<string, unknown> : {});

export class Fleet {
  sites: SiteView[] = [];
  readonly hosts = new Map<string, CenterHostDetail>();
  readonly vms = new Map<string, CenterVmView>();
  readonly tasks = new Map<number, CenterTaskView>();
  readonly migrations = new Map<number, MigrationLive>();
  readonly copies = new Map<number, CopyLive>();
  /** The most progress shown per task: a task's bar never runs backwards. */
  readonly #maxProgress = new Map<number, number>();
  status: StreamStatus = 'connecting';
  statusWhy: string | null = null;
  loaded = false;
  error: string | null = null;
  /** Full refetches done (tests and the status line show it). */
  refetches = 0;
  version = 0;
  /** Events seen per VM (progress samples aside): what the VM page reads its disk chain again on. */
  readonly vmEvents = new Map<string, number>();

  /** Tasks whose missed progress events were replayed (or are being): 'loading', 'done', or why not. */
  readonly history = new Map<number, string>();
  readonly #listeners = new Set<() => void>();
  readonly #applied = new Map<Key, number>();
  readonly #pending = new Set<Key>();
  #seq = 0;
  #flushTimer: ReturnType<typeof setTimeout> | null = null;
  #notifyQueued = false;
  readonly #stream = new EventStream({
    onEvent: (e) => { this.onEvent(e); },
    onOpen: () => { void this.refetchAll(); },
    onStatus: (s, why) => { this.status = s; this.statusWhy = why; this.notify(); },
  });

  /**
   * Reads everything now (shown even while the stream cannot open, e.g. the center serves its most
   * streams: the header says so), and again once the stream is open, since a stream opened without a
   * Last-Event-ID starts at the newest event and anything between the two reads would be missed.
   */
  start(): void { void this.refetchAll(); this.#stream.start(); }
  get lastEventId(): number | null { return this.#stream.lastId; }

  subscribe(fn: () => void): () => void { this.#listeners.add(fn); return () => { this.#listeners.delete(fn); }; }

  notify(): void {
    if (this.#notifyQueued) return;
    this.#notifyQueued = true;
    queueMicrotask(() => { this.#notifyQueued = false; this.version++; for (const l of this.#listeners) l(); });
  }

  progressOf(t: CenterTaskView): number {
    const p = Math.max(this.#maxProgress.get(t.id) ?? 0, t.progress);
    this.#maxProgress.set(t.id, p);
    return p;
  }

  /** Reads everything the UI shows (at start, and each time the stream opens again). */
  async refetchAll(): Promise<void> {
    const seq = ++this.#seq;
    try {
      const [sites, hosts, vms, tasks] = await Promise.all([api.listSites(), api.listHosts(), api.listVms(), api.listTasks()]);
      const details = await Promise.all(hosts.map((h) => api.getHost(h.name).catch(() => ({ ...h, datastores: [] }))));
      this.sites = sites;
      this.replaceAll('host:', this.hosts, details.map((h) => [h.name, h]), seq);
      this.replaceAll('vm:', this.vms, vms.map((v) => [v.name, v]), seq);
      this.replaceAll('task:', this.tasks, tasks.map((t) => [t.id, t]), seq);
      this.loaded = true;
      this.error = null;
      this.refetches++;
    } catch (err) {
      this.error = err instanceof Error ? err.message : String(err);
    }
    this.notify();
  }

  private replaceAll<K extends string | number, V>(prefix: string, map: Map<K, V>, rows: readonly (readonly [K, V])[], seq: number): void {
    const seen = new Set<K>();
    for (const [k, v] of rows) {
      seen.add(k);
      if ((this.#applied.get(`${prefix}${k}`) ?? 0) > seq) continue;
      this.#applied.set(`${prefix}${k}`, seq);
      map.set(k, v);
    }
    for (const k of [...map.keys()]) {
      if (!seen.has(k) && (this.#applied.get(`${prefix}${k}`) ?? 0) <= seq) map.delete(k);
    }
  }

  /**
   * The progress events of task `taskId` that arrived before this page was open (a view opened after a
   * migration began, or after a reload): replayed from the event log up to the live stream's position.
   * Samples already seen are dropped by onMigration's order check, so a replay never moves a view back.
   */
  loadHistory(task: CenterTaskView): void {
    const taskId = task.id;
    const finished = task.state === 'succeeded' || task.state === 'failed' || task.state === 'cancelled';
    // A running task's replay ends where the live stream is, known once it has carried an event (this
    // task's progress brings one soon); a finished task's ends at its last event.
    const live = this.lastEventId;
    if (this.history.has(taskId) || (live === null && !finished)) return;
    this.history.set(taskId, 'loading');
    const ac = new AbortController();
    const end = `task:${taskId}`;
    void replayEvents(0, live ?? Number.MAX_SAFE_INTEGER, (e) => {
      const p = obj(e.payload);
      if (e.subject === end && (e.kind === 'task.succeeded' || e.kind === 'task.failed' || e.kind === 'task.cancelled')) return false;
      if (numOrNull(p.taskId) !== taskId) return true;
      if (e.kind.startsWith('migration.')) this.onMigration(e.kind, p);
      else if (e.kind.startsWith('copy.')) this.onCopy(e.kind, p);
      return true;
    }, ac.signal).then((complete) => {
      this.history.set(taskId, complete ? 'done' : 'the event log is too long to replay here');
    }, (err: unknown) => {
      this.history.set(taskId, `cannot replay the event log: ${err instanceof Error ? err.message : String(err)}`);
    }).finally(() => { this.notify(); });
  }

  /** Reads one subject again now (after an action the UI took itself, not to wait for its event). */
  refresh(subject: string): void { this.#pending.add(subject); this.scheduleFlush(); }

  private onEvent(e: CenterEvent): void {
    if (e.kind === EVENTS_LOST_KIND) { void this.refetchAll(); return; }
    const p = obj(e.payload);
    if (e.kind.startsWith('migration.')) this.onMigration(e.kind, p);
    else if (e.kind.startsWith('copy.')) this.onCopy(e.kind, p);
    const taskId = numOrNull(p.taskId);
    if (taskId !== null) this.#pending.add(`task:${taskId}`);
    // Progress events carry their own numbers: the VM row does not change with each of them.
    if (e.kind !== 'migration.progress' && e.kind !== 'copy.progress') {
      this.#pending.add(e.subject);
      if (e.subject.startsWith('vm:')) this.vmEvents.set(e.subject.slice(3), (this.vmEvents.get(e.subject.slice(3)) ?? 0) + 1);
    }
    if (e.kind.startsWith('host.') && e.subject.startsWith('host:')) this.#pending.add('sites');
    this.scheduleFlush();
    this.notify();
  }

  private onMigration(kind: string, p: Record<string, unknown>): void {
    const taskId = numOrNull(p.taskId);
    if (taskId === null) return;
    const m = this.migrations.get(taskId) ?? { taskId, from: null, to: null, rounds: [], last: null, phases: [], finished: null };
    this.migrations.set(taskId, m);
    if (kind === 'migration.started') { m.from = str(p.from); m.to = str(p.to); if (!m.phases.includes('prepare')) m.phases.push('prepare'); }
    if (kind === 'migration.progress') {
      const s: MigrationSample = {
        phase: str(p.phase) ?? 'precopy', round: num(p.round), sentBytes: num(p.sentBytes), roundSentBytes: num(p.roundSentBytes), roundTotalBytes: num(p.roundTotalBytes),
        dirtyBytes: num(p.dirtyBytes), dirtyRateBytesPerSec: num(p.dirtyRateBytesPerSec), throughputBytesPerSec: num(p.throughputBytesPerSec),
        throttlePermille: num(p.throttlePermille), etaMs: numOrNull(p.etaMs), elapsedMs: num(p.elapsedMs),
      };
      // Samples may arrive twice or out of order (a replay of the log beside the live stream): a round
      // keeps its newest sample, the view its newest overall, so nothing shown ever moves back.
      if (m.last === null || s.elapsedMs >= m.last.elapsedMs) m.last = s;
      if (!m.phases.includes(s.phase)) m.phases.push(s.phase);
      const i = m.rounds.findIndex((r) => r.round >= s.round);
      const at = m.rounds[i];
      if (at === undefined) m.rounds.push(s);
      else if (at.round !== s.round) m.rounds.splice(i, 0, s);
      else if (s.elapsedMs >= at.elapsedMs) m.rounds[i] = s;
      if (m.rounds.length > MAX_MIGRATION_ROUNDS) m.rounds.splice(0, m.rounds.length - MAX_MIGRATION_ROUNDS);
    }
    if (kind === 'migration.finished') {
      const sw = obj(p.switchoverMs);
      m.finished = {
        outcome: str(p.outcome) ?? 'unknown', engineDowntimeMs: numOrNull(p.engineDowntimeMs), guestDowntimeMs: numOrNull(p.guestDowntimeMs), totalMs: numOrNull(p.totalMs),
        switchoverMs: Object.keys(sw).length === 0 ? null : Object.fromEntries(Object.entries(sw).map(([k, v]) => [k, num(v)])),
      };
      if (m.finished.outcome === 'succeeded') for (const ph of ['switchover', 'release']) if (!m.phases.includes(ph)) m.phases.push(ph);
    }
  }

  private onCopy(kind: string, p: Record<string, unknown>): void {
    const taskId = numOrNull(p.taskId);
    if (taskId === null) return;
    const c = this.copies.get(taskId) ?? { taskId, parts: [], doneBytes: 0, totalBytes: 0, rateBytesPerSec: 0, etaMs: null, host: null, outcome: null };
    this.copies.set(taskId, c);
    const part = (host: string | null, epoch: number, reason: string | null, boundary: unknown): void => {
      if (host === null || c.parts.some((x) => x.epoch === epoch)) return;
      c.parts.push({ host, epoch, reason, boundary });
      if (c.parts.length > MAX_COPY_PARTS) c.parts.shift();
    };
    if (kind === 'copy.started') { c.host = str(p.host); part(c.host, num(p.epoch), null, p.from); }
    if (kind === 'copy.handoff') { c.host = str(p.to); part(c.host, num(p.epoch), str(p.reason), p.boundary); }
    if (kind === 'copy.progress') {
      c.doneBytes = Math.max(c.doneBytes, num(p.doneBytes));
      c.totalBytes = num(p.totalBytes);
      c.rateBytesPerSec = num(p.rateBytesPerSec);
      c.etaMs = numOrNull(p.etaMs);
      c.host = str(p.host) ?? c.host;
    }
    if (kind === 'copy.finished') c.outcome = str(p.outcome);
  }

  private scheduleFlush(): void {
    if (this.#flushTimer !== null) return;
    this.#flushTimer = setTimeout(() => { this.#flushTimer = null; void this.flush(); }, REFETCH_COALESCE_MS);
  }

  private async flush(): Promise<void> {
    const subjects = [...this.#pending];
    this.#pending.clear();
    await Promise.all(subjects.map((s) => this.read(s)));
    this.notify();
  }

  /** Reads one subject and sets it unless a newer read already did; a 404 removes it. */
  private async read(subject: string): Promise<void> {
    const seq = ++this.#seq;
    const colon = subject.indexOf(':');
    const kind = colon < 0 ? subject : subject.slice(0, colon);
    const name = subject.slice(colon + 1);
    const apply = (fn: () => void): void => {
      if ((this.#applied.get(subject) ?? 0) > seq) return;
      this.#applied.set(subject, seq);
      fn();
    };
    try {
      if (kind === 'vm') { const v = await api.getVm(name); apply(() => { this.vms.set(name, v); }); }
      else if (kind === 'host') { const h = await api.getHost(name); apply(() => { this.hosts.set(name, h); }); }
      else if (kind === 'task') { const t = await api.getTask(Number(name)); apply(() => { this.tasks.set(t.id, t); }); }
      else if (kind === 'sites') { this.sites = await api.listSites(); }
    } catch (err) {
      if (err instanceof api.ApiError && err.status === 404) {
        apply(() => {
          if (kind === 'vm') this.vms.delete(name);
          else if (kind === 'host') this.hosts.delete(name);
          else if (kind === 'task') this.tasks.delete(Number(name));
        });
      } else {
        this.error = err instanceof Error ? err.message : String(err);
      }
    }
  }
}

export const fleet = new Fleet();

/** Re-renders the calling component whenever the fleet changes. */
export function useFleet(): Fleet {
  const [, setVersion] = useState(0);
  useEffect(() => fleet.subscribe(() => { setVersion(fleet.version); }), []);
  return fleet;
}
