/**
 * The one implementation of CenterStore, over Kysely: every query is written once and compiled for
 * SQLite or PostgreSQL. What the two backends do differently is in BackendHooks (row locks, error
 * translation); docs/design/center-store.md says why each difference is safe.
 *
 * Every public method validates its input (./model.ts) before touching the database, runs through
 * `run` (a closed store refuses, a driver error becomes a FerryError with a stable code), and checks
 * every row it reads back (a row this code cannot understand is STORE_IO, never a guess).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';
import type { z } from 'zod';
import { sql, type Kysely, type Selectable, type Transaction } from 'kysely';
import { FerryError, isFerryErrorCode } from '../../lib/errors.js';
import {
  centerCaInputSchema, fingerprintSchema, hostCertificateInputSchema, type CenterCaInput, type CenterCaRecord, type HostCertificate, type HostCertificateInput,
  CREDENTIAL_KINDS, credentialIdSchema, credentialInputSchema, secretHashSchema, type Credential, type CredentialInput,
  FINISHED_TASK_STATES, HOST_STATES, MAX_EVENT_PAYLOAD_BYTES, MAX_JSON_BYTES, MAX_REQUEUE_BATCH, MAX_TASK_COUNT_GROUPS, TASK_STATES, VM_STATES,
  actorSchema, claimKindsSchema, datastoreIdSchema, datastoreInputSchema, datastoreListSchema, dutyNameSchema, encodeJson,
  eventIdSchema, eventInputSchema, eventRetentionSchema, eventsLimitSchema, heartbeatAtSchema, heartbeatInputSchema, hostInputSchema, hostListSchema,
  hostHeartbeatsSchema, hostStateSchema, leaseMsSchema, mountSpaceInputSchema, mountsInputSchema, nameListSchema, nameSchema, outcomeSchema, parseInput, siteInputSchema,
  secretNameSchema, secretValueSchema, taskIdSchema, taskInputSchema, taskMoveInputSchema, taskListSchema, vmInputSchema, vmListSchema, vmStateSchema, waitingReasonSchema, workerIdSchema,
  type Datastore, type DatastoreInput, type DutyLease, type EventInput, type Host, type HostDatastore, type HostHeartbeat, type HostInput,
  type HostListOptions, type HostState, type JsonValue, type ListOptions, type MountInput, type MountSpaceInput, type Site, type SiteInput,
  type StoredEvent, type Task, type TaskCount, type TaskHeartbeat, type TaskInput, type TaskListOptions, type TaskMoveInput, type TaskOutcome, type TaskState,
  type Vm, type VmInput, type VmListOptions, type VmState,
  MAX_ALLOCATION_ATTEMPTS, MAX_LIST_LIMIT, MAX_LIVE_PATHS, PATH_STATES, cidrTextSchema, hostDataPlaneSchema, pathAllocationSchema, pathIdSchema,
  pathLimitSchema, pathListSchema, pathTimeSchema, releaseReasonSchema, type HostDataPlane, type MobilityPath, type PathAllocationInput, type PathListOptions,
} from './model.js';
import { vmNameSchema } from '../../lib/limits.js';
import type { CenterStore, Clock, EventsCommittedListener, EventRetention, StoreBackend } from './store.js';
import type { StoreDatabase, TasksTable } from './tables.js';
import { appliedMigrations, schemaVersionOf } from './migrate.js';
import { EVENTS_CHANNEL } from './pg-listen.js';
import { MAX_PATH_TTL_MS, PATH_DRIVER_KINDS } from '../../dataplane/path/spec.js';
import {
  DEFAULT_SITE_PREFIX_LENGTH, VIRTUAL_SPACE, cidrsOverlap, formatCidr, lowestFreeDefaultSubnet, nthUsableAddress, parseCidr, parseSiteSubnet,
  usableAddressCount, usableIndexOf, type Cidr,
} from '../mobility/subnets.js';

/** What differs between the backends, beyond the SQL Kysely compiles for each. */
export interface BackendHooks {
  readonly backend: StoreBackend;
  /**
   * PostgreSQL: claims lock their candidate rows with FOR UPDATE SKIP LOCKED, so that concurrent
   * claimers in other centers pass over a row another transaction holds instead of waiting for it.
   * SQLite has no row locks: its write transactions (BEGIN IMMEDIATE) are serialised whole.
   */
  readonly rowLocks: boolean;
  /** A driver error as a FerryError (constraint → ALREADY_EXISTS/NOT_FOUND, lost connection → STORE_UNAVAILABLE, …). */
  translateError(err: unknown, what: string): FerryError;
  /**
   * PostgreSQL: each appended event is also `pg_notify`'d in its transaction (delivered at commit, to
   * every center's listener). SQLite has one process per file: its own commits are all there is.
   */
  readonly notifiesEvents: boolean;
}

/** What a backend opens to hear of events other processes commit (PostgreSQL: ./pg-listen.ts). */
export type EventSource = (onNotify: (payload: string) => void, onResync: () => void) => { close(): Promise<void> };

type Db = Kysely<StoreDatabase>;
type Tx = Transaction<StoreDatabase>;
type TaskRow = Selectable<TasksTable>;

/** A claim or cancel that lost a race re-reads and tries again, this many times at most. */
const MAX_STATE_RETRIES = 3;
/** The counters row whose lock serialises path allocations and subnet changes (migrations/0006-mobility-paths.ts). */
const MOBILITY_LOCK = 'mobility';
/**
 * Sites that may have a virtual subnet, at most (as many as default /24s fit in 100.64.0.0/10): each
 * overlap check reads every site's subnet, so this bounds that read and makes it complete.
 */
const MAX_SITE_SUBNETS = 16_384;

function notFound(what: string, name: string | number): FerryError {
  return new FerryError('NOT_FOUND', `${what} ${JSON.stringify(name)} does not exist`, { [what]: name });
}

function corrupt(what: string, detail: string): FerryError {
  return new FerryError('STORE_IO', `the database holds a ${what} this Ferry cannot read: ${detail}`);
}

function decodeJson(text: string, what: string): JsonValue {
  try {
    return JSON.parse(text) as JsonValue;
  } catch {
    throw corrupt(what, 'not JSON');
  }
}

function oneOf<T extends string>(values: readonly T[], value: string, what: string): T {
  const found = values.find((v) => v === value);
  if (found === undefined) throw corrupt(what, `unknown state ${JSON.stringify(value)}`);
  return found;
}

function toTask(r: TaskRow): Task {
  let error: Task['error'] = null;
  if (r.error_code !== null) {
    if (!isFerryErrorCode(r.error_code)) throw corrupt('task', `unknown error code ${JSON.stringify(r.error_code)}`);
    error = { code: r.error_code, message: r.error_message ?? '' };
  }
  return {
    id: r.id, kind: r.kind, target: r.target, state: oneOf(TASK_STATES, r.state, 'task'), phase: r.phase, progress: r.progress,
    waitingReason: r.waiting_reason, requestedBy: r.requested_by, params: decodeJson(r.params_json, 'task'),
    createdAtMs: r.created_at_ms, startedAtMs: r.started_at_ms, endedAtMs: r.ended_at_ms,
    result: r.result_json === null ? null : decodeJson(r.result_json, 'task'), error,
    claimedBy: r.claimed_by, claimExpiresAtMs: r.claim_expires_at_ms, attempts: r.attempts, cancelRequested: r.cancel_requested === 1,
    admitted: r.admitted === 1, plan: r.plan_json === null ? null : decodeJson(r.plan_json, 'task'),
    checkpoint: r.checkpoint_json === null ? null : decodeJson(r.checkpoint_json, 'task'),
    moveRequest: r.move_seq === 0 ? null : { seq: r.move_seq, to: r.move_to, by: r.move_requested_by ?? '', atMs: r.move_requested_at_ms ?? 0 },
  };
}

function toHost(r: Selectable<StoreDatabase['hosts']>): Host {
  return {
    name: r.name, site: r.site, url: r.url, state: oneOf(HOST_STATES, r.state, 'host'),
    capacity: { memoryBytes: r.memory_bytes, vcpus: r.vcpus }, lastHeartbeatAtMs: r.last_heartbeat_at_ms,
    createdAtMs: r.created_at_ms, updatedAtMs: r.updated_at_ms, dataPlane: r.data_plane === null ? null : toDataPlane(r.data_plane),
  };
}

function toDataPlane(text: string): HostDataPlane {
  const checked = hostDataPlaneSchema.safeParse(decodeJson(text, 'host data plane'));
  if (!checked.success) throw corrupt('host data plane', checked.error.issues[0]?.message ?? 'rejected');
  return checked.data;
}

function toPath(r: Selectable<StoreDatabase['mobility_paths']>): MobilityPath {
  return {
    pathId: r.path_id, taskId: r.task_id, kind: r.kind, sourceHost: r.source_host, targetHost: r.target_host,
    sourceSite: r.source_site, targetSite: r.target_site, sourceAddress: r.source_address, targetAddress: r.target_address,
    vni: r.vni, firstPort: r.first_port, portCount: r.port_count, driver: oneOf(PATH_DRIVER_KINDS, r.driver, 'path'), secret: r.secret,
    state: oneOf(PATH_STATES, r.state, 'path'), createdAtMs: r.created_at_ms, expiresAtMs: r.expires_at_ms,
    releasedAtMs: r.released_at_ms, releaseReason: r.release_reason,
  };
}

/** A subnet read back from the database: written canonical by this store, anything else is a corrupt row. */
function storedCidr(text: string): Cidr {
  try {
    return parseCidr(text);
  } catch {
    throw corrupt('site subnet', `${JSON.stringify(text)} is not a CIDR`);
  }
}

function toVm(r: Selectable<StoreDatabase['vms']>): Vm {
  return {
    name: r.name, host: r.host, state: oneOf(VM_STATES, r.state, 'VM'), config: decodeJson(r.config_json, 'VM'),
    disks: decodeJson(r.disks_json, 'VM'), createdAtMs: r.created_at_ms, updatedAtMs: r.updated_at_ms,
  };
}

function toEvent(r: Selectable<StoreDatabase['events']>): StoredEvent {
  return { id: r.id, atMs: r.at_ms, kind: r.kind, subject: r.subject, payload: decodeJson(r.payload_json, 'event') };
}

function toCredential(r: Selectable<StoreDatabase['credentials']>): Credential {
  return {
    id: r.id, kind: oneOf(CREDENTIAL_KINDS, r.kind, 'credential'), subject: r.subject, createdAtMs: r.created_at_ms,
    expiresAtMs: r.expires_at_ms, spentAtMs: r.spent_at_ms, revokedAtMs: r.revoked_at_ms,
  };
}

const toHostCertificate = (r: Selectable<StoreDatabase['host_certificates']>): HostCertificate => ({
  fingerprint: r.fingerprint, host: r.host, credentialId: r.credential_id, serial: r.serial, createdAtMs: r.created_at_ms, notAfterMs: r.not_after_ms,
});
const toSite = (r: Selectable<StoreDatabase['sites']>): Site => ({ name: r.name, description: r.description, createdAtMs: r.created_at_ms, virtualSubnet: r.virtual_subnet });
const toDatastore = (r: Selectable<StoreDatabase['datastores']>): Datastore => ({ id: r.id, name: r.name, shared: r.shared === 1, createdAtMs: r.created_at_ms });
const toMount = (r: Selectable<StoreDatabase['host_datastores']>): HostDatastore => ({
  host: r.host, datastoreId: r.datastore_id, mountName: r.mount_name,
  space: r.capacity_bytes === null || r.free_bytes === null ? null : { capacityBytes: r.capacity_bytes, freeBytes: r.free_bytes, atMs: r.space_at_ms ?? 0 },
});

/** What a task event carries: enough for a progress bar and a task list without a second read. */
function taskPayload(t: Task): JsonValue {
  return { id: t.id, kind: t.kind, target: t.target, state: t.state, phase: t.phase, progress: t.progress, waitingReason: t.waitingReason, attempts: t.attempts, cancelRequested: t.cancelRequested, moveSeq: t.moveRequest?.seq ?? 0, error: t.error === null ? null : { ...t.error } };
}

/** Per store call: the newest event it appended (0: none), set by insertEvent. */
interface CallScope { lastEventId: number }

export class KyselyCenterStore implements CenterStore {
  readonly backend: StoreBackend;
  #closed = false;
  /** Tells this store's own notifications from other processes' (they are delivered to every listener, the sender's too). */
  readonly #origin = randomBytes(8).toString('hex');
  readonly #scope = new AsyncLocalStorage<CallScope>();
  readonly #listeners = new Set<EventsCommittedListener>();
  #eventSource: { close(): Promise<void> } | null = null;

  constructor(private readonly db: Db, private readonly hooks: BackendHooks, private readonly clock: Clock, private readonly openEventSource?: EventSource) {
    this.backend = hooks.backend;
  }

  /**
   * Every public operation: refused once closed; driver errors translated. A call that appended events
   * tells this store's listeners once it has returned — its transaction committed — never before.
   */
  private async run<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new FerryError('STORE_UNAVAILABLE', `the center's store is closed (${what})`);
    const scope: CallScope = { lastEventId: 0 };
    let out: T;
    try {
      out = await this.#scope.run(scope, fn);
    } catch (err) {
      throw this.hooks.translateError(err, what);
    }
    if (scope.lastEventId > 0) this.emitCommitted(scope.lastEventId);
    return out;
  }

  private emitCommitted(latestId: number | null): void {
    for (const l of [...this.#listeners]) {
      // A listener's failure is its own: the commit happened, and the other listeners hear of it.
      try { l(latestId); } catch { /* ignored */ }
    }
  }

  onEventsCommitted(listener: EventsCommittedListener): () => void {
    if (this.#closed) throw new FerryError('STORE_UNAVAILABLE', "the center's store is closed (listen for events)");
    this.#listeners.add(listener);
    // The first listener opens the backend's source of other processes' events; the store keeps it until closed.
    if (this.#eventSource === null && this.openEventSource !== undefined) {
      this.#eventSource = this.openEventSource((payload) => {
        const sep = payload.indexOf(':');
        if (payload.slice(0, sep) === this.#origin) return; // heard already, at its commit
        const id = Number(payload.slice(sep + 1));
        this.emitCommitted(Number.isSafeInteger(id) && id > 0 ? id : null);
      }, () => { this.emitCommitted(null); });
    }
    return () => { this.#listeners.delete(listener); };
  }

  private now(): number {
    return this.clock();
  }

  async schemaVersion(): Promise<number> {
    return this.run('schema version', async () => schemaVersionOf(await appliedMigrations(this.db as unknown as Kysely<unknown>)));
  }

  // ------------------------------------------------------------------------------------------
  // Sites

  async upsertSite(input: SiteInput): Promise<Site> {
    const s = parseInput(siteInputSchema, input, 'site');
    return this.run('upsert site', async () => {
      const row = await this.db.insertInto('sites')
        .values({ name: s.name, description: s.description ?? '', created_at_ms: this.now() })
        // No description given: keep the one it has (a no-op update still returns the row).
        .onConflict((oc) => oc.column('name').doUpdateSet((eb) => ({ description: s.description === undefined ? eb.ref('sites.description') : eb.ref('excluded.description') })))
        .returningAll().executeTakeFirstOrThrow();
      return toSite(row);
    });
  }

  async getSite(name: string): Promise<Site> {
    const n = parseInput(nameSchema(), name, 'site name');
    return this.getOne('site', n, () => this.db.selectFrom('sites').selectAll().where('name', '=', n).executeTakeFirst(), toSite);
  }

  async listSites(options: ListOptions<string> = {}): Promise<readonly Site[]> {
    const o = parseInput(nameListSchema, options, 'site list');
    return this.run('list sites', async () => {
      const rows = await this.db.selectFrom('sites').selectAll()
        .$if(o.after !== undefined, (q) => q.where('name', '>', o.after ?? ''))
        .orderBy('name').limit(o.limit).execute();
      return rows.map(toSite);
    });
  }

  // ------------------------------------------------------------------------------------------
  // Hosts

  async upsertHost(input: HostInput): Promise<Host> {
    const h = parseInput(hostInputSchema, input, 'host');
    return this.run('upsert host', () => this.db.transaction().execute(async (tx) => {
      await this.requireSite(tx, h.site);
      const now = this.now();
      const row = await tx.insertInto('hosts')
        .values({
          name: h.name, site: h.site, url: h.url, state: h.state ?? 'joining', memory_bytes: h.capacity.memoryBytes,
          vcpus: h.capacity.vcpus, last_heartbeat_at_ms: null, created_at_ms: now, updated_at_ms: now,
        })
        .onConflict((oc) => oc.column('name').doUpdateSet((eb) => ({
          site: eb.ref('excluded.site'), url: eb.ref('excluded.url'), memory_bytes: eb.ref('excluded.memory_bytes'),
          vcpus: eb.ref('excluded.vcpus'), updated_at_ms: eb.ref('excluded.updated_at_ms'),
          state: h.state === undefined ? eb.ref('hosts.state') : eb.ref('excluded.state'),
        })))
        .returningAll().executeTakeFirstOrThrow();
      return toHost(row);
    }));
  }

  async getHost(name: string): Promise<Host> {
    const n = parseInput(nameSchema(), name, 'host name');
    return this.getOne('host', n, () => this.db.selectFrom('hosts').selectAll().where('name', '=', n).executeTakeFirst(), toHost);
  }

  async listHosts(options: HostListOptions = {}): Promise<readonly Host[]> {
    const o = parseInput(hostListSchema, options, 'host list');
    return this.run('list hosts', async () => {
      const rows = await this.db.selectFrom('hosts').selectAll()
        .$if(o.after !== undefined, (q) => q.where('name', '>', o.after ?? ''))
        .$if(o.site !== undefined, (q) => q.where('site', '=', o.site ?? ''))
        .$if(o.state !== undefined, (q) => q.where('state', '=', o.state ?? ''))
        .orderBy('name').limit(o.limit).execute();
      return rows.map(toHost);
    });
  }

  async setHostState(name: string, state: HostState, onlyFrom?: readonly HostState[]): Promise<Host> {
    const n = parseInput(nameSchema(), name, 'host name');
    const s = parseInput(hostStateSchema, state, 'host state');
    const from = onlyFrom === undefined ? undefined : parseInput(hostStateSchema.array().min(1), onlyFrom, 'host states');
    return this.run('set host state', async () => {
      const row = await this.db.updateTable('hosts').set({ state: s, updated_at_ms: this.now() }).where('name', '=', n)
        .$if(from !== undefined, (q) => q.where('state', 'in', from ?? []))
        .returningAll().executeTakeFirst();
      if (row !== undefined) return toHost(row);
      // Not in one of the states it may leave: answered as it is (the caller compares).
      const current = await this.db.selectFrom('hosts').selectAll().where('name', '=', n).executeTakeFirst();
      if (current === undefined) throw notFound('host', n);
      return toHost(current);
    });
  }

  async recordHostHeartbeat(name: string, atMs: number): Promise<Host> {
    const n = parseInput(nameSchema(), name, 'host name');
    const at = parseInput(heartbeatAtSchema, atMs, 'heartbeat time');
    return this.run('record heartbeat', async () => {
      // Heartbeats can arrive out of order (two connections, a retry): the last one seen never moves back.
      const row = await this.db.updateTable('hosts')
        .set({ last_heartbeat_at_ms: sql<number>`case when last_heartbeat_at_ms is null or last_heartbeat_at_ms < ${at} then ${at} else last_heartbeat_at_ms end` })
        .where('name', '=', n).returningAll().executeTakeFirst();
      if (row === undefined) throw notFound('host', n);
      return toHost(row);
    });
  }

  async recordHostHeartbeats(beats: readonly HostHeartbeat[]): Promise<number> {
    const b = parseInput(hostHeartbeatsSchema, beats, 'heartbeats');
    if (b.length === 0) return 0;
    return this.run('record heartbeats', () => this.db.transaction().execute(async (tx) => {
      let recorded = 0;
      for (const { name, atMs } of b) {
        const r = await tx.updateTable('hosts')
          .set({ last_heartbeat_at_ms: sql<number>`case when last_heartbeat_at_ms is null or last_heartbeat_at_ms < ${atMs} then ${atMs} else last_heartbeat_at_ms end` })
          .where('name', '=', name).executeTakeFirst();
        recorded += Number(r.numUpdatedRows);
      }
      return recorded;
    }));
  }

  // ------------------------------------------------------------------------------------------
  // Datastores

  async upsertDatastore(input: DatastoreInput): Promise<Datastore> {
    const d = parseInput(datastoreInputSchema, input, 'datastore');
    return this.run('upsert datastore', async () => {
      const row = await this.db.insertInto('datastores')
        .values({ id: d.id, name: d.name, shared: d.shared ? 1 : 0, created_at_ms: this.now() })
        .onConflict((oc) => oc.column('id').doUpdateSet((eb) => ({ name: eb.ref('excluded.name'), shared: eb.ref('excluded.shared') })))
        .returningAll().executeTakeFirstOrThrow();
      return toDatastore(row);
    });
  }

  async getDatastore(id: string): Promise<Datastore> {
    const i = parseInput(datastoreIdSchema(), id, 'datastore id');
    return this.getOne('datastore', i, () => this.db.selectFrom('datastores').selectAll().where('id', '=', i).executeTakeFirst(), toDatastore);
  }

  async listDatastores(options: ListOptions<string> = {}): Promise<readonly Datastore[]> {
    const o = parseInput(datastoreListSchema, options, 'datastore list');
    return this.run('list datastores', async () => {
      const rows = await this.db.selectFrom('datastores').selectAll()
        .$if(o.after !== undefined, (q) => q.where('id', '>', o.after ?? ''))
        .orderBy('id').limit(o.limit).execute();
      return rows.map(toDatastore);
    });
  }

  async setHostDatastores(host: string, mounts: readonly MountInput[]): Promise<readonly HostDatastore[]> {
    const h = parseInput(nameSchema(), host, 'host name');
    const m = parseInput(mountsInputSchema, mounts, 'mounts');
    const twice = (key: (x: MountInput) => string): string | undefined => {
      const seen = new Set<string>();
      for (const x of m) { if (seen.has(key(x))) return key(x); seen.add(key(x)); }
      return undefined;
    };
    const dupId = twice((x) => x.datastoreId);
    const dupName = twice((x) => x.mountName);
    if (dupId !== undefined) throw new FerryError('INVALID_ARGUMENT', `datastore ${dupId} is listed twice for host ${h}`);
    if (dupName !== undefined) throw new FerryError('INVALID_ARGUMENT', `mount name ${JSON.stringify(dupName)} is listed twice for host ${h}`);
    return this.run('set host datastores', () => this.db.transaction().execute(async (tx) => {
      if (await tx.selectFrom('hosts').select('name').where('name', '=', h).executeTakeFirst() === undefined) throw notFound('host', h);
      if (m.length > 0) {
        const known = new Set((await tx.selectFrom('datastores').select('id').where('id', 'in', m.map((x) => x.datastoreId)).execute()).map((r) => r.id));
        const missing = m.find((x) => !known.has(x.datastoreId));
        if (missing !== undefined) throw notFound('datastore', missing.datastoreId);
      }
      await tx.deleteFrom('host_datastores').where('host', '=', h).execute();
      const now = this.now();
      if (m.length > 0) {
        await tx.insertInto('host_datastores').values(m.map((x) => ({
          host: h, datastore_id: x.datastoreId, mount_name: x.mountName,
          capacity_bytes: x.space?.capacityBytes ?? null, free_bytes: x.space?.freeBytes ?? null, space_at_ms: x.space !== undefined ? now : null,
        }))).execute();
      }
      return (await tx.selectFrom('host_datastores').selectAll().where('host', '=', h).orderBy('mount_name').execute()).map(toMount);
    }));
  }

  async setHostDatastoreSpace(host: string, datastoreId: string, space: MountSpaceInput): Promise<HostDatastore> {
    const h = parseInput(nameSchema(), host, 'host name');
    const d = parseInput(datastoreIdSchema(), datastoreId, 'datastore id');
    const s = parseInput(mountSpaceInputSchema, space, 'datastore space');
    if (s.freeBytes > s.capacityBytes) throw new FerryError('INVALID_ARGUMENT', `datastore ${d} on host ${h}: ${s.freeBytes} bytes free is more than its capacity of ${s.capacityBytes}`);
    return this.run('set host datastore space', async () => {
      const row = await this.db.updateTable('host_datastores').set({ capacity_bytes: s.capacityBytes, free_bytes: s.freeBytes, space_at_ms: this.now() })
        .where('host', '=', h).where('datastore_id', '=', d).returningAll().executeTakeFirst();
      if (row === undefined) throw notFound('mount', `${h}:${d}`);
      return toMount(row);
    });
  }

  async listHostDatastores(host: string): Promise<readonly HostDatastore[]> {
    const h = parseInput(nameSchema(), host, 'host name');
    return this.run('list host datastores', async () =>
      // Bounded by MAX_MOUNTS_PER_HOST: setHostDatastores is the only writer.
      (await this.db.selectFrom('host_datastores').selectAll().where('host', '=', h).orderBy('mount_name').execute()).map(toMount));
  }

  async listDatastoreHosts(datastoreId: string): Promise<readonly HostDatastore[]> {
    const d = parseInput(datastoreIdSchema(), datastoreId, 'datastore id');
    return this.run('list datastore hosts', async () =>
      (await this.db.selectFrom('host_datastores').selectAll().where('datastore_id', '=', d).orderBy('host').limit(parseInput(nameListSchema, {}, 'list').limit).execute()).map(toMount));
  }

  // ------------------------------------------------------------------------------------------
  // VMs

  async upsertVm(input: VmInput, onlyIfHost?: string | null): Promise<Vm> {
    const expected = onlyIfHost === undefined || onlyIfHost === null ? onlyIfHost : parseInput(nameSchema(), onlyIfHost, 'expected host');
    return this.writeVm(input, 'upsert', expected);
  }

  async createVm(input: VmInput): Promise<Vm> {
    return this.writeVm(input, 'create');
  }

  private async writeVm(input: VmInput, mode: 'upsert' | 'create', onlyIfHost?: string | null): Promise<Vm> {
    const v = parseInput(vmInputSchema, input, 'VM');
    const config = encodeJson(v.config, MAX_JSON_BYTES, 'VM config');
    const disks = encodeJson(v.disks, MAX_JSON_BYTES, 'VM disks');
    return this.run(`${mode} VM`, () => this.db.transaction().execute(async (tx) => {
      if (v.host !== null && await tx.selectFrom('hosts').select('name').where('name', '=', v.host).executeTakeFirst() === undefined) throw notFound('host', v.host);
      const now = this.now();
      const insert = tx.insertInto('vms').values({ name: v.name, host: v.host, state: v.state, config_json: config, disks_json: disks, created_at_ms: now, updated_at_ms: now });
      // create: a name taken (also by a concurrent create in another center) is the primary key's
      // unique violation, which translateError answers as ALREADY_EXISTS.
      const row = mode === 'create'
        ? await insert.returningAll().executeTakeFirstOrThrow()
        : await insert.onConflict((oc) => {
          const update = oc.column('name').doUpdateSet((eb) => ({
            host: eb.ref('excluded.host'), state: eb.ref('excluded.state'), config_json: eb.ref('excluded.config_json'),
            disks_json: eb.ref('excluded.disks_json'), updated_at_ms: eb.ref('excluded.updated_at_ms'),
          }));
          // Compare-and-set on where the row says the VM is: a writer that read it before another moved it changes nothing.
          if (onlyIfHost === undefined) return update;
          return onlyIfHost === null ? update.where('vms.host', 'is', null) : update.where('vms.host', '=', onlyIfHost);
        }).returningAll().executeTakeFirst();
      if (row !== undefined) return toVm(row);
      const current = await tx.selectFrom('vms').selectAll().where('name', '=', v.name).executeTakeFirstOrThrow();
      return toVm(current);
    }));
  }

  async getVm(name: string): Promise<Vm> {
    const n = parseInput(vmNameSchema(), name, 'VM name');
    return this.getOne('VM', n, () => this.db.selectFrom('vms').selectAll().where('name', '=', n).executeTakeFirst(), toVm);
  }

  async listVms(options: VmListOptions = {}): Promise<readonly Vm[]> {
    const o = parseInput(vmListSchema, options, 'VM list');
    return this.run('list VMs', async () => {
      const rows = await this.db.selectFrom('vms').selectAll()
        .$if(o.after !== undefined, (q) => q.where('name', '>', o.after ?? ''))
        .$if(o.host !== undefined, (q) => q.where('host', '=', o.host ?? ''))
        .$if(o.state !== undefined, (q) => q.where('state', '=', o.state ?? ''))
        .orderBy('name').limit(o.limit).execute();
      return rows.map(toVm);
    });
  }

  async deleteVm(name: string): Promise<void> {
    const n = parseInput(vmNameSchema(), name, 'VM name');
    return this.run('delete VM', async () => {
      const r = await this.db.deleteFrom('vms').where('name', '=', n).executeTakeFirst();
      if (r.numDeletedRows === 0n) throw notFound('VM', n);
    });
  }

  async setVmStatesOnHost(host: string, state: VmState): Promise<number> {
    const h = parseInput(nameSchema(), host, 'host name');
    const s = parseInput(vmStateSchema, state, 'VM state');
    return this.run('set VM states', async () => {
      const r = await this.db.updateTable('vms').set({ state: s, updated_at_ms: this.now() }).where('host', '=', h).executeTakeFirst();
      return Number(r.numUpdatedRows);
    });
  }

  // ------------------------------------------------------------------------------------------
  // Tasks

  async enqueueTask(input: TaskInput): Promise<Task> {
    const t = parseInput(taskInputSchema, input, 'task');
    const params = encodeJson(t.params ?? null, MAX_JSON_BYTES, 'task params');
    return this.run('enqueue task', () => this.db.transaction().execute(async (tx) => {
      const row = await tx.insertInto('tasks').values({
        kind: t.kind, target: t.target, state: 'queued', phase: '', progress: 0, waiting_reason: t.waitingReason ?? null,
        requested_by: t.requestedBy, params_json: params, created_at_ms: this.now(), started_at_ms: null, ended_at_ms: null,
        result_json: null, error_code: null, error_message: null, claimed_by: null, claim_expires_at_ms: null, attempts: 0, cancel_requested: 0,
        admitted: t.admitted === false ? 0 : 1, plan_json: null, checkpoint_json: null,
      }).returningAll().executeTakeFirstOrThrow();
      return this.taskChanged(tx, row);
    }));
  }

  async getTask(id: number): Promise<Task> {
    const i = parseInput(taskIdSchema, id, 'task id');
    return this.run('get task', async () => toTask(await this.requireTask(this.db, i)));
  }

  async listTasks(options: TaskListOptions = {}): Promise<readonly Task[]> {
    const o = parseInput(taskListSchema, options, 'task list');
    return this.run('list tasks', async () => {
      const rows = await this.db.selectFrom('tasks').selectAll()
        .$if(o.after !== undefined, (q) => q.where('id', '>', o.after ?? 0))
        .$if(o.state !== undefined, (q) => q.where('state', '=', o.state ?? ''))
        .$if(o.kind !== undefined, (q) => q.where('kind', '=', o.kind ?? ''))
        .$if(o.target !== undefined, (q) => q.where('target', '=', o.target ?? ''))
        .$if(o.admitted !== undefined, (q) => q.where('admitted', '=', o.admitted === true ? 1 : 0))
        .orderBy('id').limit(o.limit).execute();
      return rows.map(toTask);
    });
  }

  async countTasksByState(): Promise<readonly TaskCount[]> {
    const unfinished = TASK_STATES.filter((s) => !FINISHED_TASK_STATES.includes(s));
    return this.run('count tasks', async () => {
      // On the (state, kind, id) index: only the unfinished part of the table is read.
      const rows = await this.db.selectFrom('tasks')
        .select((eb) => ['state', 'kind', eb.fn.countAll<number | string | bigint>().as('count')])
        .where('state', 'in', unfinished).groupBy(['state', 'kind']).orderBy('state').orderBy('kind').limit(MAX_TASK_COUNT_GROUPS).execute();
      return rows.map((r) => ({ state: oneOf(TASK_STATES, r.state, 'task count'), kind: r.kind, count: Number(r.count) }));
    });
  }

  async setTaskWaiting(id: number, reason: string | null): Promise<Task> {
    const i = parseInput(taskIdSchema, id, 'task id');
    const r = parseInput(waitingReasonSchema, reason, 'waiting reason');
    return this.run('set task waiting', () => this.db.transaction().execute(async (tx) => {
      const row = await tx.updateTable('tasks').set({ waiting_reason: r }).where('id', '=', i).where('state', '=', 'queued').returningAll().executeTakeFirst();
      if (row === undefined) throw this.stateError(await this.requireTask(tx, i), 'set a waiting reason', ['queued']);
      return this.taskChanged(tx, row);
    }));
  }

  async claimNextTask(workerId: string, kinds: readonly string[], leaseMs: number): Promise<Task | null> {
    const w = parseInput(workerIdSchema(), workerId, 'worker id');
    const k = parseInput(claimKindsSchema, kinds, 'task kinds');
    const lease = parseInput(leaseMsSchema(), leaseMs, 'lease');
    return this.run('claim task', () => this.db.transaction().execute(async (tx) => {
      for (let attempt = 0; attempt < MAX_STATE_RETRIES; attempt++) {
        // PostgreSQL: the candidate row is locked until commit and other claimers skip it (they take
        // the next one, or none). SQLite: this whole transaction holds the database's write lock.
        const candidate = await tx.selectFrom('tasks').select('id').where('state', '=', 'queued').where('admitted', '=', 1).where('kind', 'in', k)
          .orderBy('id').limit(1)
          .$if(this.hooks.rowLocks, (q) => q.forUpdate().skipLocked())
          .executeTakeFirst();
        if (candidate === undefined) return null;
        const now = this.now();
        // The state guard makes the claim conditional even if a backend's locking were weaker than
        // assumed: a row that is no longer queued is not claimed twice, it is passed over.
        const row = await tx.updateTable('tasks').set({
          state: 'running', claimed_by: w, claim_expires_at_ms: now + lease, waiting_reason: null,
          started_at_ms: sql<number>`coalesce(started_at_ms, ${now})`, attempts: sql<number>`attempts + 1`,
        }).where('id', '=', candidate.id).where('state', '=', 'queued').where('admitted', '=', 1).returningAll().executeTakeFirst();
        if (row !== undefined) return this.taskChanged(tx, row);
      }
      return null;
    }));
  }

  async heartbeatTask(id: number, workerId: string, heartbeat: TaskHeartbeat): Promise<Task> {
    const i = parseInput(taskIdSchema, id, 'task id');
    const w = parseInput(workerIdSchema(), workerId, 'worker id');
    const hb = parseInput(heartbeatInputSchema, heartbeat, 'heartbeat');
    return this.run('heartbeat task', () => this.db.transaction().execute(async (tx) => {
      const p = hb.progress;
      const row = await tx.updateTable('tasks').set({
        claim_expires_at_ms: this.now() + hb.leaseMs,
        // Progress never runs backwards, whatever order reports arrive in: the store keeps the highest.
        ...(p === undefined ? {} : { progress: sql<number>`case when progress < ${p} then ${p} else progress end` }),
        ...(hb.phase === undefined ? {} : { phase: hb.phase }),
      }).where('id', '=', i).where('state', '=', 'running').where('claimed_by', '=', w).returningAll().executeTakeFirst();
      if (row === undefined) throw this.claimError(await this.requireTask(tx, i), w);
      // A bare lease renewal is not news; progress or a new phase is.
      return p === undefined && hb.phase === undefined ? toTask(row) : this.taskChanged(tx, row);
    }));
  }

  async finishTask(id: number, workerId: string, outcome: TaskOutcome): Promise<Task> {
    const i = parseInput(taskIdSchema, id, 'task id');
    const w = parseInput(workerIdSchema(), workerId, 'worker id');
    const o = parseInput(outcomeSchema, outcome, 'task outcome');
    const result = o.result === undefined ? null : encodeJson(o.result, MAX_JSON_BYTES, 'task result');
    const error = o.state === 'failed' ? o.error : o.state === 'cancelled' ? { code: 'CANCELLED' as const, message: 'cancelled while running' } : null;
    return this.run('finish task', () => this.db.transaction().execute(async (tx) => {
      const row = await tx.updateTable('tasks').set({
        state: o.state, ended_at_ms: this.now(), result_json: result, error_code: error?.code ?? null, error_message: error?.message ?? null,
        claim_expires_at_ms: null, ...(o.state === 'succeeded' ? { progress: 1 } : {}),
      }).where('id', '=', i).where('state', '=', 'running').where('claimed_by', '=', w).returningAll().executeTakeFirst();
      if (row === undefined) throw this.claimError(await this.requireTask(tx, i), w);
      return this.taskChanged(tx, row);
    }));
  }

  async cancelTask(id: number, by: string): Promise<Task> {
    const i = parseInput(taskIdSchema, id, 'task id');
    const who = parseInput(actorSchema(), by, 'cancelled by');
    return this.run('cancel task', () => this.db.transaction().execute(async (tx) => {
      for (let attempt = 0; attempt < MAX_STATE_RETRIES; attempt++) {
        const task = toTask(await this.requireTask(tx, i));
        if (FINISHED_TASK_STATES.includes(task.state) || task.cancelRequested) return task;
        // Each update is guarded by the state just read: a task claimed (or finished) in between is
        // read again and handled in its new state.
        const row = task.state === 'queued'
          ? await tx.updateTable('tasks').set({ state: 'cancelled', ended_at_ms: this.now(), error_code: 'CANCELLED', error_message: `cancelled by ${who} before it started` })
            .where('id', '=', i).where('state', '=', 'queued').returningAll().executeTakeFirst()
          : await tx.updateTable('tasks').set({ cancel_requested: 1 }).where('id', '=', i).where('state', '=', 'running').returningAll().executeTakeFirst();
        if (row !== undefined) return this.taskChanged(tx, row);
      }
      throw new FerryError('BUSY', `task ${i} kept changing state while being cancelled; try again`);
    }));
  }

  async admitTask(id: number, plan: JsonValue | null): Promise<Task> {
    const i = parseInput(taskIdSchema, id, 'task id');
    const p = plan === null ? null : encodeJson(plan, MAX_JSON_BYTES, 'task plan');
    return this.run('admit task', () => this.db.transaction().execute(async (tx) => {
      const row = await tx.updateTable('tasks').set({ admitted: 1, plan_json: p, waiting_reason: null })
        .where('id', '=', i).where('state', '=', 'queued').where('admitted', '=', 0).returningAll().executeTakeFirst();
      if (row === undefined) {
        const t = await this.requireTask(tx, i);
        if (t.state === 'queued') throw new FerryError('TASK_STATE', `task ${i} is already admitted`, { state: t.state });
        throw this.stateError(t, 'admit', ['queued']);
      }
      return this.taskChanged(tx, row);
    }));
  }

  async requestTaskMove(id: number, request: TaskMoveInput): Promise<Task> {
    const i = parseInput(taskIdSchema, id, 'task id');
    const r = parseInput(taskMoveInputSchema, request, 'move request');
    return this.run('request task move', () => this.db.transaction().execute(async (tx) => {
      const row = await tx.updateTable('tasks').set({
        move_seq: sql<number>`move_seq + 1`, move_to: r.to ?? null, move_requested_by: r.by, move_requested_at_ms: this.now(),
      }).where('id', '=', i).where('state', '=', 'running').returningAll().executeTakeFirst();
      if (row === undefined) throw this.stateError(await this.requireTask(tx, i), 'move', ['running']);
      return this.taskChanged(tx, row);
    }));
  }

  async checkpointTask(id: number, workerId: string, checkpoint: JsonValue): Promise<Task> {
    const i = parseInput(taskIdSchema, id, 'task id');
    const w = parseInput(workerIdSchema(), workerId, 'worker id');
    const c = encodeJson(checkpoint, MAX_JSON_BYTES, 'task checkpoint');
    return this.run('checkpoint task', () => this.db.transaction().execute(async (tx) => {
      const row = await tx.updateTable('tasks').set({ checkpoint_json: c })
        .where('id', '=', i).where('state', '=', 'running').where('claimed_by', '=', w).returningAll().executeTakeFirst();
      if (row === undefined) throw this.claimError(await this.requireTask(tx, i), w);
      // Not an event: a checkpoint is the worker's note to its successor, not news for clients.
      return toTask(row);
    }));
  }

  async requeueExpiredClaims(): Promise<readonly Task[]> {
    return this.run('requeue expired claims', () => this.db.transaction().execute(async (tx) => {
      const now = this.now();
      const ids = (await tx.selectFrom('tasks').select('id').where('state', '=', 'running').where('claim_expires_at_ms', '<=', now)
        .orderBy('claim_expires_at_ms').limit(MAX_REQUEUE_BATCH)
        .$if(this.hooks.rowLocks, (q) => q.forUpdate().skipLocked())
        .execute()).map((r) => r.id);
      if (ids.length === 0) return [];
      // Progress stays (it never runs backwards); the next claimer reconciles with what really happened.
      const rows = await tx.updateTable('tasks').set({
        state: 'queued', claimed_by: null, claim_expires_at_ms: null,
        phase: sql<string>`'re-queued: the claim of ' || claimed_by || ' expired'`,
      }).where('id', 'in', ids).where('state', '=', 'running').where('claim_expires_at_ms', '<=', now).returningAll().execute();
      const out: Task[] = [];
      for (const row of rows.sort((a, b) => a.id - b.id)) out.push(await this.taskChanged(tx, row));
      return out;
    }));
  }

  /** One row by its key, as a record, or NOT_FOUND. */
  private async getOne<R, T>(what: string, key: string, fetch: () => Promise<R | undefined>, map: (row: R) => T): Promise<T> {
    return this.run(`get ${what}`, async () => {
      const row = await fetch();
      if (row === undefined) throw notFound(what, key);
      return map(row);
    });
  }

  private async requireTask(db: Db | Tx, id: number): Promise<TaskRow> {
    const row = await db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirst();
    if (row === undefined) throw notFound('task', id);
    return row;
  }

  private async requireSite(tx: Tx, name: string): Promise<void> {
    if (await tx.selectFrom('sites').select('name').where('name', '=', name).executeTakeFirst() === undefined) throw notFound('site', name);
  }

  private claimError(row: TaskRow, workerId: string): FerryError {
    const t = toTask(row);
    const held = t.state === 'running' ? `claimed by ${t.claimedBy ?? 'nobody'}` : t.state;
    return new FerryError('TASK_NOT_CLAIMED', `task ${t.id} is not claimed by ${workerId} (it is ${held}): stop working on it`, { state: t.state, claimedBy: t.claimedBy });
  }

  private stateError(row: TaskRow, action: string, allowed: readonly TaskState[]): FerryError {
    return new FerryError('TASK_STATE', `cannot ${action} for task ${row.id}: it is ${row.state}, not ${allowed.join(' or ')}`, { state: row.state });
  }

  /** Record a task's new state as an event in the same transaction: a reader never sees one without the other. */
  private async taskChanged(tx: Tx, row: TaskRow): Promise<Task> {
    const t = toTask(row);
    await this.insertEvent(tx, { kind: `task.${t.state}`, subject: `task:${t.id}`, payload: taskPayload(t) });
    return t;
  }

  // ------------------------------------------------------------------------------------------
  // Events

  async appendEvent(input: EventInput): Promise<StoredEvent> {
    const e = parseInput(eventInputSchema, input, 'event');
    return this.run('append event', () => this.db.transaction().execute((tx) => this.insertEvent(tx, { kind: e.kind, subject: e.subject, payload: e.payload ?? null })));
  }

  /**
   * Event ids come from a counter row, incremented in the inserting transaction — not from a sequence.
   * A sequence hands out ids at insert time, so a transaction holding id 5 may commit after one holding
   * id 6; a reader that saw 6 and resumes "after 6" would never see 5. The counter row is locked from
   * the increment to commit, so ids become visible in order and without gaps (a rolled-back increment
   * is undone). That serialises event writers; each holds the row only for its last statements.
   * Callers therefore append the event last in their transaction.
   */
  private async insertEvent(tx: Tx, e: { kind: string; subject: string; payload: JsonValue }): Promise<StoredEvent> {
    const payload = encodeJson(e.payload, MAX_EVENT_PAYLOAD_BYTES, 'event payload');
    const counter = await tx.updateTable('counters').set({ value: sql<number>`value + 1` }).where('name', '=', 'events').returning('value').executeTakeFirst();
    if (counter === undefined) throw corrupt('event counter', 'the counters row "events" is missing');
    const row = await tx.insertInto('events').values({ id: counter.value, at_ms: this.now(), kind: e.kind, subject: e.subject, payload_json: payload }).returningAll().executeTakeFirstOrThrow();
    // Delivered by PostgreSQL at commit (never for a rolled-back append), to every center listening.
    if (this.hooks.notifiesEvents) await sql`select pg_notify(${EVENTS_CHANNEL}, ${`${this.#origin}:${row.id}`})`.execute(tx);
    const scope = this.#scope.getStore();
    if (scope !== undefined) scope.lastEventId = Math.max(scope.lastEventId, row.id);
    return toEvent(row);
  }

  async eventsSince(afterId: number, limit: number): Promise<readonly StoredEvent[]> {
    const a = parseInput(eventIdSchema, afterId, 'event id');
    const l = parseInput(eventsLimitSchema, limit, 'event limit');
    return this.run('read events', async () =>
      (await this.db.selectFrom('events').selectAll().where('id', '>', a).orderBy('id').limit(l).execute()).map(toEvent));
  }

  async oldestEventId(): Promise<number | null> {
    return this.run('oldest event id', async () => {
      const row = await this.db.selectFrom('events').select('id').orderBy('id').limit(1).executeTakeFirst();
      return row?.id ?? null;
    });
  }

  async pruneEvents(retention: EventRetention): Promise<number> {
    const r = parseInput(eventRetentionSchema, retention, 'event retention');
    return this.run('prune events', async () => {
      const oldest = await this.db.selectFrom('events').select('id').orderBy('id').limit(1).executeTakeFirst();
      if (oldest === undefined) return 0;
      const latest = await this.db.selectFrom('counters').select('value').where('name', '=', 'events').executeTakeFirst();
      if (latest === undefined) throw corrupt('event counter', 'the counters row "events" is missing');
      // The newest event too old to keep (events_by_time): everything up to it goes, so what is kept
      // stays one unbroken run of ids (a reader that finds the first id it wants missing knows all
      // before it went). Times come from each writer's clock, so "too old" is as exact as the clocks.
      const tooOld = await this.db.selectFrom('events').select('id').where('at_ms', '<', this.now() - r.maxAgeMs).orderBy('at_ms', 'desc').orderBy('id', 'desc').limit(1).executeTakeFirst();
      const upTo = Math.max(latest.value - r.maxEvents, tooOld?.id ?? 0);
      // Ids are gap-free from the oldest kept on, so this range holds at most `batch` rows.
      const last = Math.min(upTo, oldest.id + r.batch - 1);
      if (last < oldest.id) return 0;
      const deleted = await this.db.deleteFrom('events').where('id', '<=', last).executeTakeFirst();
      return Number(deleted.numDeletedRows);
    });
  }

  async latestEventId(): Promise<number> {
    return this.run('latest event id', async () => {
      const row = await this.db.selectFrom('counters').select('value').where('name', '=', 'events').executeTakeFirst();
      if (row === undefined) throw corrupt('event counter', 'the counters row "events" is missing');
      return row.value;
    });
  }

  // ------------------------------------------------------------------------------------------
  // Duties

  async tryAcquireDuty(name: string, holder: string, leaseMs: number): Promise<DutyLease> {
    const n = parseInput(dutyNameSchema(), name, 'duty name');
    const h = parseInput(workerIdSchema(), holder, 'duty holder');
    const lease = parseInput(leaseMsSchema(), leaseMs, 'lease');
    return this.run('acquire duty', async () => {
      const now = this.now();
      // One statement, atomic on both backends: insert the lease, or take over the row only if it is
      // this holder's already or expired. PostgreSQL locks the conflicting row and evaluates the WHERE
      // on its newest version, so of two centers racing for an expired duty exactly one gets it.
      const row = await this.db.insertInto('duties').values({ name: n, holder: h, expires_at_ms: now + lease, epoch: 1 })
        .onConflict((oc) => oc.column('name').doUpdateSet((eb) => ({
          holder: eb.ref('excluded.holder'), expires_at_ms: eb.ref('excluded.expires_at_ms'),
          epoch: sql<number>`case when duties.holder = excluded.holder then duties.epoch else duties.epoch + 1 end`,
        })).where((eb) => eb.or([eb('duties.holder', '=', eb.ref('excluded.holder')), eb('duties.expires_at_ms', '<=', now)])))
        .returningAll().executeTakeFirst();
      if (row !== undefined) return { name: n, holder: row.holder, acquired: true, expiresAtMs: row.expires_at_ms, epoch: row.epoch };
      const current = await this.db.selectFrom('duties').selectAll().where('name', '=', n).executeTakeFirstOrThrow();
      return { name: n, holder: current.holder, acquired: false, expiresAtMs: current.expires_at_ms, epoch: current.epoch };
    });
  }

  async releaseDuty(name: string, holder: string): Promise<boolean> {
    const n = parseInput(dutyNameSchema(), name, 'duty name');
    const h = parseInput(workerIdSchema(), holder, 'duty holder');
    return this.run('release duty', async () => {
      // Expire rather than delete: the row keeps its epoch, so the next holder's epoch is still higher.
      const r = await this.db.updateTable('duties').set({ expires_at_ms: 0 }).where('name', '=', n).where('holder', '=', h).where('expires_at_ms', '>', this.now()).executeTakeFirst();
      return r.numUpdatedRows > 0n;
    });
  }

  // ------------------------------------------------------------------------------------------
  // Credentials

  async createCredential(input: CredentialInput): Promise<Credential> {
    const c = parseInput(credentialInputSchema, input, 'credential');
    return this.run('create credential', async () => toCredential(await this.insertCredential(this.db, c)));
  }

  private async insertCredential(db: Db | Tx, c: z.output<typeof credentialInputSchema>): Promise<Selectable<StoreDatabase['credentials']>> {
    return db.insertInto('credentials').values({
      id: c.id, kind: c.kind, subject: c.subject, secret_hash: c.secretHash, created_at_ms: this.now(),
      expires_at_ms: c.expiresAtMs ?? null, spent_at_ms: null, revoked_at_ms: null,
    }).returningAll().executeTakeFirstOrThrow();
  }

  async findCredential(secretHash: string): Promise<Credential | null> {
    const h = parseInput(secretHashSchema(), secretHash, 'secret hash');
    return this.run('find credential', async () => {
      const row = await this.db.selectFrom('credentials').selectAll().where('secret_hash', '=', h).executeTakeFirst();
      return row === undefined ? null : toCredential(row);
    });
  }

  async spendJoinToken(tokenHash: string, hostCredential: CredentialInput): Promise<Credential | null> {
    const h = parseInput(secretHashSchema(), tokenHash, 'join token hash');
    const c = parseInput(credentialInputSchema, hostCredential, 'host credential');
    if (c.kind !== 'host') throw new FerryError('INVALID_ARGUMENT', `a join token is spent for a host credential, not a ${c.kind} one`);
    return this.run('spend join token', () => this.db.transaction().execute(async (tx) => {
      const now = this.now();
      // One guarded update: of two joins racing with one token, the second finds it spent (PostgreSQL
      // re-checks the WHERE on the row's newest version; SQLite serialises the transactions).
      const spent = await tx.updateTable('credentials').set({ spent_at_ms: now })
        .where('secret_hash', '=', h).where('kind', '=', 'join').where('spent_at_ms', 'is', null).where('revoked_at_ms', 'is', null)
        .where((eb) => eb.or([eb('expires_at_ms', 'is', null), eb('expires_at_ms', '>', now)]))
        .returning('id').executeTakeFirst();
      if (spent === undefined) return null;
      await tx.updateTable('credentials').set({ revoked_at_ms: now })
        .where('kind', '=', 'host').where('subject', '=', c.subject).where('revoked_at_ms', 'is', null).execute();
      return toCredential(await this.insertCredential(tx, c));
    }));
  }

  async revokeCredential(id: string): Promise<Credential> {
    const i = parseInput(credentialIdSchema(), id, 'credential id');
    return this.run('revoke credential', async () => {
      await this.db.updateTable('credentials').set({ revoked_at_ms: this.now() }).where('id', '=', i).where('revoked_at_ms', 'is', null).execute();
      const row = await this.db.selectFrom('credentials').selectAll().where('id', '=', i).executeTakeFirst();
      if (row === undefined) throw notFound('credential', i);
      return toCredential(row);
    });
  }

  // ------------------------------------------------------------------------------------------
  // Shared secrets

  async ensureSecret(name: string, value: string): Promise<string> {
    const n = parseInput(secretNameSchema(), name, 'secret name');
    const v = parseInput(secretValueSchema(), value, 'secret value');
    return this.run('ensure secret', () => this.db.transaction().execute(async (tx) => {
      // Insert-if-absent, then read: of centers racing at first start, every one reads the winner's value.
      await tx.insertInto('center_secrets').values({ name: n, value: v, created_at_ms: this.now() })
        .onConflict((oc) => oc.column('name').doNothing()).execute();
      const row = await tx.selectFrom('center_secrets').select('value').where('name', '=', n).executeTakeFirstOrThrow();
      return parseInput(secretValueSchema(), row.value, 'stored secret');
    }));
  }

  // The CA and host certificates

  async getCenterCa(): Promise<CenterCaRecord | null> {
    return this.run('get center CA', async () => {
      const row = await this.db.selectFrom('center_ca').selectAll().where('id', '=', 'ca').executeTakeFirst();
      return row === undefined ? null : { certPem: row.cert_pem, keyPem: row.key_pem, createdAtMs: row.created_at_ms };
    });
  }

  async createCenterCa(ca: CenterCaInput): Promise<CenterCaRecord> {
    const c = parseInput(centerCaInputSchema, ca, 'center CA');
    return this.run('create center CA', async () => {
      // Insert-or-keep: of two centers starting on one empty database, both answer the first's CA.
      await this.db.insertInto('center_ca').values({ id: 'ca', cert_pem: c.certPem, key_pem: c.keyPem, created_at_ms: this.now() })
        .onConflict((oc) => oc.column('id').doNothing()).execute();
      const row = await this.db.selectFrom('center_ca').selectAll().where('id', '=', 'ca').executeTakeFirstOrThrow();
      return { certPem: row.cert_pem, keyPem: row.key_pem, createdAtMs: row.created_at_ms };
    });
  }

  async recordHostCertificate(input: HostCertificateInput): Promise<HostCertificate> {
    const c = parseInput(hostCertificateInputSchema, input, 'host certificate');
    return this.run('record host certificate', async () => toHostCertificate(await this.db.insertInto('host_certificates').values({
      fingerprint: c.fingerprint, host: c.host, credential_id: c.credentialId, serial: c.serial, created_at_ms: this.now(), not_after_ms: c.notAfterMs,
    }).returningAll().executeTakeFirstOrThrow()));
  }

  async findHostCertificate(fingerprint: string): Promise<HostCertificate | null> {
    const f = parseInput(fingerprintSchema(), fingerprint, 'certificate fingerprint');
    return this.run('find host certificate', async () => {
      const row = await this.db.selectFrom('host_certificates').selectAll().where('fingerprint', '=', f).executeTakeFirst();
      return row === undefined ? null : toHostCertificate(row);
    });
  }

  // ------------------------------------------------------------------------------------------
  // Mobility: sites' virtual subnets, hosts' data planes, operations' paths

  async setHostDataPlane(host: string, dataPlane: HostDataPlane | null): Promise<Host> {
    const n = parseInput(nameSchema(), host, 'host name');
    const d = parseInput(hostDataPlaneSchema.nullable(), dataPlane, 'host data plane');
    return this.run('set host data plane', async () => {
      const row = await this.db.updateTable('hosts').set({ data_plane: d === null ? null : JSON.stringify(d) }).where('name', '=', n).returningAll().executeTakeFirst();
      if (row === undefined) throw notFound('host', n);
      return toHost(row);
    });
  }

  async siteSubnet(site: string): Promise<string> {
    const n = parseInput(nameSchema(), site, 'site name');
    return this.run('site subnet', async () => {
      const row = await this.db.selectFrom('sites').select('virtual_subnet').where('name', '=', n).executeTakeFirst();
      if (row === undefined) throw notFound('site', n);
      if (row.virtual_subnet !== null) return row.virtual_subnet;
      return this.db.transaction().execute(async (tx) => {
        await this.lockMobility(tx);
        return formatCidr(await this.subnetOf(tx, n));
      });
    });
  }

  async setSiteSubnet(site: string, cidr: string): Promise<Site> {
    const n = parseInput(nameSchema(), site, 'site name');
    const c = parseSiteSubnet(parseInput(cidrTextSchema(), cidr, 'site subnet'));
    return this.run('set site subnet', () => this.db.transaction().execute(async (tx) => {
      await this.lockMobility(tx);
      const current = await tx.selectFrom('sites').selectAll().where('name', '=', n).executeTakeFirst();
      if (current === undefined) throw notFound('site', n);
      if (current.virtual_subnet === formatCidr(c)) return toSite(current);
      const live = await tx.selectFrom('mobility_addresses').select('address').where('site', '=', n).limit(1).executeTakeFirst();
      if (live !== undefined) throw new FerryError('BUSY', `site ${n} has live paths (${live.address} is held): its subnet can change once they are released`, { site: n });
      const others = current.virtual_subnet === null ? await this.siteSubnetsBeforeOneMore(tx, n) : await this.siteSubnets(tx);
      const clash = others.find((o) => o.site !== n && cidrsOverlap(o.cidr, c));
      if (clash !== undefined) throw new FerryError('ALREADY_EXISTS', `${formatCidr(c)} overlaps site ${clash.site}'s subnet ${formatCidr(clash.cidr)}: choose a subnet no other site uses`, { site: n, otherSite: clash.site });
      return toSite(await tx.updateTable('sites').set({ virtual_subnet: formatCidr(c) }).where('name', '=', n).returningAll().executeTakeFirstOrThrow());
    }));
  }

  async allocatePath(input: PathAllocationInput): Promise<MobilityPath> {
    const a = parseInput(pathAllocationSchema, input, 'path allocation');
    return this.run('allocate path', async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.db.transaction().execute((tx) => this.insertPath(tx, a));
        } catch (err) {
          // A driver's unique violation: another center took the address or VNI between our read and
          // insert (the lock makes this rare). Our own FerryErrors (a used path id, exhaustion) are final.
          const lostRace = !(err instanceof FerryError) && this.hooks.translateError(err, 'allocate path').code === 'ALREADY_EXISTS';
          if (!lostRace) throw err;
          if (attempt >= MAX_ALLOCATION_ATTEMPTS) throw new FerryError('BUSY', `allocating path ${a.pathId} lost the race for an address ${attempt} times: retry`, { pathId: a.pathId }, { cause: err });
        }
      }
    });
  }

  private async insertPath(tx: Tx, a: z.output<typeof pathAllocationSchema>): Promise<MobilityPath> {
    await this.lockMobility(tx);
    if (await tx.selectFrom('mobility_paths').select('path_id').where('path_id', '=', a.pathId).executeTakeFirst() !== undefined) {
      throw new FerryError('ALREADY_EXISTS', `path ${a.pathId} exists already: every operation's path needs a new random id`, { pathId: a.pathId });
    }
    if (a.taskId !== undefined && a.taskId !== null) await this.requireTask(tx, a.taskId);
    const source = await this.requireHostSite(tx, a.sourceHost);
    const target = await this.requireHostSite(tx, a.targetHost);
    const sourceAddress = await this.freeAddress(tx, source, null);
    const targetAddress = await this.freeAddress(tx, target, sourceAddress);
    const now = this.now();
    const row = await tx.insertInto('mobility_paths').values({
      path_id: a.pathId, task_id: a.taskId ?? null, kind: a.kind, source_host: a.sourceHost, target_host: a.targetHost,
      source_site: source, target_site: target, source_address: sourceAddress, target_address: targetAddress, vni: await this.freeVni(tx),
      first_port: a.firstPort, port_count: a.portCount, driver: a.driver, secret: a.secret, state: 'live',
      created_at_ms: now, expires_at_ms: now + a.ttlMs, released_at_ms: null, release_reason: null,
    }).returningAll().executeTakeFirstOrThrow();
    // The guarantee itself: each address a live path holds is one primary key (see the migration).
    await tx.insertInto('mobility_addresses').values([
      { address: sourceAddress, path_id: a.pathId, site: source },
      { address: targetAddress, path_id: a.pathId, site: target },
    ]).execute();
    return toPath(row);
  }

  private async requireHostSite(tx: Tx, host: string): Promise<string> {
    const row = await tx.selectFrom('hosts').select('site').where('name', '=', host).executeTakeFirst();
    if (row === undefined) throw notFound('host', host);
    return row.site;
  }

  /** The lowest usable address of the site's subnet that no live path holds (and that is not `alsoTaken`). */
  private async freeAddress(tx: Tx, site: string, alsoTaken: string | null): Promise<string> {
    const subnet = await this.subnetOf(tx, site);
    const held = await tx.selectFrom('mobility_addresses').select('address').where('site', '=', site).limit(usableAddressCount(subnet)).execute();
    const taken = new Set<number>();
    for (const address of [...held.map((h) => h.address), ...(alsoTaken === null ? [] : [alsoTaken])]) {
      const i = usableIndexOf(subnet, address);
      if (i !== null) taken.add(i);
    }
    for (let i = 0; i < usableAddressCount(subnet); i++) {
      const address = nthUsableAddress(subnet, i);
      if (address !== null && !taken.has(i)) return address;
    }
    throw new FerryError('ADDRESS_EXHAUSTED', `site ${site}'s virtual subnet ${formatCidr(subnet)} has no free address: all ${usableAddressCount(subnet)} usable addresses are held by live paths; wait for operations to end, release stale paths, or give the site a wider subnet once it has none live`, { site, subnet: formatCidr(subnet) });
  }

  /** The lowest operation number (VNI) no live path holds. */
  private async freeVni(tx: Tx): Promise<number> {
    const rows = await tx.selectFrom('mobility_paths').select('vni').where('state', '=', 'live').orderBy('vni').limit(MAX_LIVE_PATHS).execute();
    if (rows.length >= MAX_LIVE_PATHS) throw new FerryError('ADDRESS_EXHAUSTED', `the fleet holds ${MAX_LIVE_PATHS} live paths, the most it allows: wait for operations to end or release stale paths`);
    let vni = 1;
    for (const r of rows) {
      if (r.vni > vni) break;
      vni = r.vni + 1;
    }
    // At most MAX_LIVE_PATHS, so far below MAX_VNI: never a number the wire cannot carry.
    return vni;
  }

  /** Serialise allocations and subnet changes across centers (a row lock held to commit on PostgreSQL). */
  private async lockMobility(tx: Tx): Promise<void> {
    const r = await tx.updateTable('counters').set({ value: sql<number>`value + 1` }).where('name', '=', MOBILITY_LOCK).executeTakeFirst();
    if (r.numUpdatedRows === 0n) throw corrupt('mobility lock', `the counters row "${MOBILITY_LOCK}" is missing`);
  }

  /** The site's subnet, first giving it the lowest free default /24 if it has none. Call with the mobility lock held. */
  private async subnetOf(tx: Tx, site: string): Promise<Cidr> {
    const row = await tx.selectFrom('sites').select('virtual_subnet').where('name', '=', site).executeTakeFirst();
    if (row === undefined) throw notFound('site', site);
    if (row.virtual_subnet !== null) return storedCidr(row.virtual_subnet);
    const free = lowestFreeDefaultSubnet((await this.siteSubnetsBeforeOneMore(tx, site)).map((s) => s.cidr));
    if (free === null) throw new FerryError('ADDRESS_EXHAUSTED', `every /${DEFAULT_SITE_PREFIX_LENGTH} of ${formatCidr(VIRTUAL_SPACE)} overlaps another site's subnet: give site ${site} a subnet by hand`, { site });
    await tx.updateTable('sites').set({ virtual_subnet: formatCidr(free) }).where('name', '=', site).execute();
    return free;
  }

  /** Every site subnet, before one more site gets one: refused at MAX_SITE_SUBNETS, so siteSubnets always reads them all. */
  private async siteSubnetsBeforeOneMore(tx: Tx, site: string): Promise<{ site: string; cidr: Cidr }[]> {
    const all = await this.siteSubnets(tx);
    if (all.length >= MAX_SITE_SUBNETS) throw new FerryError('ADDRESS_EXHAUSTED', `${MAX_SITE_SUBNETS} sites have virtual subnets, the most a fleet has: site ${site} cannot get one`, { site });
    return all;
  }

  private async siteSubnets(tx: Tx): Promise<{ site: string; cidr: Cidr }[]> {
    const rows = await tx.selectFrom('sites').select(['name', 'virtual_subnet']).where('virtual_subnet', 'is not', null).orderBy('name').limit(MAX_SITE_SUBNETS).execute();
    return rows.map((r) => ({ site: r.name, cidr: storedCidr(r.virtual_subnet ?? '') }));
  }

  async releasePath(pathId: string, reason: string): Promise<boolean> {
    const id = parseInput(pathIdSchema(), pathId, 'path id');
    const why = parseInput(releaseReasonSchema(), reason, 'release reason');
    return this.run('release path', () => this.db.transaction().execute(async (tx) => {
      // Guarded by state: of two releases racing (two centers, a sweeper and a task), one releases.
      const r = await tx.updateTable('mobility_paths').set({ state: 'released', released_at_ms: this.now(), release_reason: why })
        .where('path_id', '=', id).where('state', '=', 'live').executeTakeFirst();
      if (r.numUpdatedRows === 0n) {
        if (await tx.selectFrom('mobility_paths').select('path_id').where('path_id', '=', id).executeTakeFirst() === undefined) throw notFound('path', id);
        return false;
      }
      await tx.deleteFrom('mobility_addresses').where('path_id', '=', id).execute();
      return true;
    }));
  }

  async getPath(pathId: string): Promise<MobilityPath> {
    const id = parseInput(pathIdSchema(), pathId, 'path id');
    return this.getOne('path', id, () => this.db.selectFrom('mobility_paths').selectAll().where('path_id', '=', id).executeTakeFirst(), toPath);
  }

  async listPaths(options: PathListOptions = {}): Promise<readonly MobilityPath[]> {
    const o = parseInput(pathListSchema, options, 'path list');
    return this.run('list paths', async () => {
      const rows = await this.db.selectFrom('mobility_paths').selectAll()
        .$if(o.after !== undefined, (q) => q.where('path_id', '>', o.after ?? ''))
        .$if(o.state !== undefined, (q) => q.where('state', '=', o.state ?? ''))
        .$if(o.taskId !== undefined, (q) => q.where('task_id', '=', o.taskId ?? 0))
        .$if(o.host !== undefined, (q) => q.where((eb) => eb.or([eb('source_host', '=', o.host ?? ''), eb('target_host', '=', o.host ?? '')])))
        .orderBy('path_id').limit(o.limit).execute();
      return rows.map(toPath);
    });
  }

  async pathsOfTask(taskId: number): Promise<readonly MobilityPath[]> {
    const id = parseInput(taskIdSchema, taskId, 'task id');
    return this.run('paths of task', async () =>
      (await this.db.selectFrom('mobility_paths').selectAll().where('task_id', '=', id).orderBy('created_at_ms').orderBy('path_id').limit(MAX_LIST_LIMIT).execute()).map(toPath));
  }

  async renewPath(pathId: string, expiresAtMs: number): Promise<MobilityPath> {
    const id = parseInput(pathIdSchema(), pathId, 'path id');
    const until = parseInput(pathTimeSchema, expiresAtMs, 'path expiry');
    return this.run('renew path', async () => {
      const now = this.now();
      if (until <= now || until > now + MAX_PATH_TTL_MS) {
        throw new FerryError('INVALID_ARGUMENT', `a path is renewed to a time after now and at most ${MAX_PATH_TTL_MS} ms ahead (to end it, release it)`, { expiresAtMs: until, nowMs: now });
      }
      // Only a live path that has not expired: at expiry the hosts removed it by themselves.
      const row = await this.db.updateTable('mobility_paths').set({ expires_at_ms: until })
        .where('path_id', '=', id).where('state', '=', 'live').where('expires_at_ms', '>', now).returningAll().executeTakeFirst();
      if (row !== undefined) return toPath(row);
      const current = await this.db.selectFrom('mobility_paths').selectAll().where('path_id', '=', id).executeTakeFirst();
      if (current === undefined) throw notFound('path', id);
      const why = current.state === 'live' ? 'expired' : `released (${current.release_reason ?? 'no reason'})`;
      throw new FerryError('PATH_REFUSED', `path ${id} is ${why}: it cannot be renewed; allocate a new path`, { pathId: id, state: current.state });
    });
  }

  async expiredLivePaths(nowMs: number, limit: number): Promise<readonly MobilityPath[]> {
    const now = parseInput(pathTimeSchema, nowMs, 'time');
    const l = parseInput(pathLimitSchema, limit, 'path limit');
    return this.run('expired paths', async () =>
      (await this.db.selectFrom('mobility_paths').selectAll().where('state', '=', 'live').where('expires_at_ms', '<=', now)
        .orderBy('expires_at_ms').orderBy('path_id').limit(l).execute()).map(toPath));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listeners.clear();
    await this.#eventSource?.close();
    this.#eventSource = null;
    // Kysely's destroy ends the pg pool (every connection) or closes the SQLite file.
    await this.db.destroy();
  }
}
