/**
 * The center's store: the one interface the rest of the center uses for durable state, whichever
 * backend holds it (embedded SQLite by default, PostgreSQL for fleets and for several centers sharing
 * the work). Both backends pass the same contract suite (test/center/store/contract.ts); what differs
 * between them is said where it matters (claiming, duties) in docs/design/center-store.md.
 *
 * Errors are FerryErrors: INVALID_ARGUMENT (an input the schemas of ./model.ts refuse), NOT_FOUND,
 * ALREADY_EXISTS, TASK_NOT_CLAIMED (a worker acts on a task it no longer holds), TASK_STATE (an action
 * the task's state does not allow), BUSY (a write lost a race too often; retry), STORE_UNAVAILABLE (the
 * database cannot be reached, or the store is closed), STORE_SCHEMA_VERSION (the database was migrated
 * by a newer Ferry), STORE_IO (the database failed or holds a row this code cannot read); for the
 * mobility paths also ADDRESS_EXHAUSTED (a site's subnet, or the fleet's operation numbers, are full)
 * and PATH_REFUSED (renewing a path that is released or already expired).
 */
import type {
  CenterCaInput, CenterCaRecord, HostCertificate, HostCertificateInput,
  Credential, CredentialInput, Datastore, JsonValue, DatastoreInput, DutyLease, EventInput, EventRetention, Host, HostHeartbeat, HostDatastore, HostInput, MountSpaceInput, HostListOptions, HostState,
  HostDataPlane, ListOptions, MobilityPath, MountInput, PathAllocationInput, PathListOptions, Site, SiteInput, StoredEvent, Task, TaskCount, TaskHeartbeat, TaskInput, TaskListOptions,
  TaskMoveInput, TaskOutcome, Vm, VmInput, VmListOptions, VmState,
} from './model.js';

export type StoreBackend = 'sqlite' | 'postgres';

/** Milliseconds since the epoch. Injected so that leases can be tested without sleeping. */
export type Clock = () => number;

/**
 * Told that events were committed: the newest id known, or null when it is not known (after the
 * backend's listening connection came back: events may have been committed meanwhile). A hint to read
 * the store, never the events themselves.
 */
export type EventsCommittedListener = (latestId: number | null) => void;

export type { EventRetention };

export interface CenterStore {
  readonly backend: StoreBackend;

  /** The schema version of the database (the number of the last migration applied). */
  schemaVersion(): Promise<number>;

  // -- sites
  upsertSite(input: SiteInput): Promise<Site>;
  getSite(name: string): Promise<Site>;
  listSites(options?: ListOptions<string>): Promise<readonly Site[]>;

  // -- hosts
  /** Insert, or update every given field of an existing host (a new host is `joining` unless a state is given). */
  upsertHost(input: HostInput): Promise<Host>;
  getHost(name: string): Promise<Host>;
  listHosts(options?: HostListOptions): Promise<readonly Host[]>;
  /**
   * Set a host's state; with `onlyFrom`, only if it is in one of those now (a compare-and-set: a heartbeat
   * racing an operator's maintenance request cannot undo it). Answers the host as it is after.
   */
  setHostState(name: string, state: HostState, onlyFrom?: readonly HostState[]): Promise<Host>;
  recordHostHeartbeat(name: string, atMs: number): Promise<Host>;
  /**
   * Record many hosts' heartbeat times in one transaction (one commit: on SQLite one sync to disk, not
   * one per host), at most MAX_HEARTBEAT_BATCH; a host that no longer exists is skipped. Answers how many
   * were recorded. Never moves a time back, like recordHostHeartbeat.
   */
  recordHostHeartbeats(beats: readonly HostHeartbeat[]): Promise<number>;

  // -- datastores and mounts
  upsertDatastore(input: DatastoreInput): Promise<Datastore>;
  getDatastore(id: string): Promise<Datastore>;
  listDatastores(options?: ListOptions<string>): Promise<readonly Datastore[]>;
  /** Replace the set of datastores a host mounts with what it reports (each datastore must exist). */
  setHostDatastores(host: string, mounts: readonly MountInput[]): Promise<readonly HostDatastore[]>;
  /** Record one mount's space as its host reports it (NOT_FOUND if the host does not mount the datastore). */
  setHostDatastoreSpace(host: string, datastoreId: string, space: MountSpaceInput): Promise<HostDatastore>;
  listHostDatastores(host: string): Promise<readonly HostDatastore[]>;
  /** The hosts that mount a datastore (the candidates for a migration that moves no disk data). */
  listDatastoreHosts(datastoreId: string): Promise<readonly HostDatastore[]>;

  // -- VMs
  /** Insert, or replace an existing VM's host, state, config and disks (registration and reconciliation). */
  /**
   * With `onlyIfHost` (a host name, or null for "on no host"), an existing row is replaced only if it is
   * still recorded there — a compare-and-set, so a writer that read the row before another moved the VM
   * changes nothing. Answers the row as it is after.
   */
  upsertVm(input: VmInput, onlyIfHost?: string | null): Promise<Vm>;
  /** A new VM (the center's own create): ALREADY_EXISTS if the name is taken, also by a concurrent create elsewhere. */
  createVm(input: VmInput): Promise<Vm>;
  getVm(name: string): Promise<Vm>;
  listVms(options?: VmListOptions): Promise<readonly Vm[]>;
  deleteVm(name: string): Promise<void>;
  /** Set the state of every VM a host holds (a silent host's VMs become `unknown`); answers how many. */
  setVmStatesOnHost(host: string, state: VmState): Promise<number>;

  // -- tasks
  enqueueTask(input: TaskInput): Promise<Task>;
  getTask(id: number): Promise<Task>;
  listTasks(options?: TaskListOptions): Promise<readonly Task[]>;
  /**
   * Unfinished (queued, running) tasks counted by state and kind, in that order, at most
   * MAX_TASK_COUNT_GROUPS groups: the metrics' queue depth. Finished tasks are not counted (their number
   * only grows: counting them would make every scrape scan the whole history).
   */
  countTasksByState(): Promise<readonly TaskCount[]>;
  /** A queued task's reason to wait (null: it does not wait for anything). */
  setTaskWaiting(id: number, reason: string | null): Promise<Task>;
  /**
   * Claim the oldest queued task of one of `kinds` for `workerId`, until now + leaseMs unless renewed;
   * null if none is queued. However many claimers race (in this process or in other centers on the same
   * database), each task goes to exactly one of them.
   */
  claimNextTask(workerId: string, kinds: readonly string[], leaseMs: number): Promise<Task | null>;
  /** Renew the claim and report progress (never lowered: a lower value leaves the stored one) and phase. */
  heartbeatTask(id: number, workerId: string, heartbeat: TaskHeartbeat): Promise<Task>;
  finishTask(id: number, workerId: string, outcome: TaskOutcome): Promise<Task>;
  /**
   * Cancel in every state: a queued task ends `cancelled` now; a running one is marked
   * cancelRequested for its worker to stop and finish; a finished one is answered as it is.
   */
  cancelTask(id: number, by: string): Promise<Task>;
  /**
   * Admit a queued, unadmitted task with the scheduler's plan (its waiting reason is cleared): from now
   * on it may be claimed. TASK_STATE if it is not queued or already admitted.
   */
  admitTask(id: number, plan: JsonValue | null): Promise<Task>;
  /**
   * Ask a running task to move its work to another host (`to`, or one its worker chooses): stored on the
   * row as the next move request (seq + 1), which its worker reads with its next claim renewal. TASK_STATE
   * unless the task is running (a queued one has no host yet; a finished one nothing to move). Whether the
   * task's kind can move at all is its caller's to check.
   */
  requestTaskMove(id: number, request: TaskMoveInput): Promise<Task>;
  /** Record a checkpoint of the task's work (its claimer only; TASK_NOT_CLAIMED otherwise). */
  checkpointTask(id: number, workerId: string, checkpoint: JsonValue): Promise<Task>;
  /** Re-queue running tasks whose claim expired (their worker died or lost the database); answers them. */
  requeueExpiredClaims(): Promise<readonly Task[]>;

  // -- events
  appendEvent(input: EventInput): Promise<StoredEvent>;
  /** Events with id > afterId, in id order, at most `limit` (≤ MAX_EVENTS_PAGE): a replay from Last-Event-ID. */
  eventsSince(afterId: number, limit: number): Promise<readonly StoredEvent[]>;
  /** The id of the newest event (0 before the first). */
  latestEventId(): Promise<number>;
  /** The id of the oldest event kept (null when none is): every id from it to the newest is there. */
  oldestEventId(): Promise<number | null>;
  /**
   * Delete the oldest events beyond the retention, at most `retention.batch` of them; answers how many
   * went (a full batch: call again). What is kept stays one unbroken run of ids up to the newest.
   */
  pruneEvents(retention: EventRetention): Promise<number>;
  /**
   * Call `listener` whenever events are committed: by this store (after its call returned: committed),
   * and on PostgreSQL by every other process on the database too (LISTEN/NOTIFY; after a lost listening
   * connection comes back, once with null). Answers the unsubscribe function. SQLite: this store's own.
   */
  onEventsCommitted(listener: EventsCommittedListener): () => void;

  // -- one-per-fleet duties
  /**
   * Take or renew the duty `name` for `holder` until now + leaseMs: acquired when it was free, expired,
   * or already this holder's; otherwise the current holder is answered with acquired = false.
   */
  tryAcquireDuty(name: string, holder: string, leaseMs: number): Promise<DutyLease>;
  /** Give a duty up (only its holder can); answers whether it was held. */
  releaseDuty(name: string, holder: string): Promise<boolean>;

  // -- credentials (secrets are never stored, only their hashes: src/center/auth.ts)
  createCredential(input: CredentialInput): Promise<Credential>;
  /** The credential whose secret has this hash (also a revoked, spent or expired one: the caller decides), or null. */
  findCredential(secretHash: string): Promise<Credential | null>;
  /**
   * Spend a join token and issue the host credential in one transaction: the token must be an unspent,
   * unrevoked, unexpired join token; the host's earlier credentials are revoked (a re-joined host has one).
   * Null if the token is not usable — however many hosts race with one token, exactly one gets a credential.
   */
  spendJoinToken(tokenHash: string, hostCredential: CredentialInput): Promise<Credential | null>;
  /** Revoke a credential by id (idempotent: a revoked one is answered as it is). */
  revokeCredential(id: string): Promise<Credential>;

  // -- secrets every center of one database shares
  /** The secret `name`: the stored one if any, else `value`, stored now (the first center to ask wins). */
  ensureSecret(name: string, value: string): Promise<string>;

  // -- the CA and the certificates it issued (src/center/ca.ts)
  /** The fleet's CA, or null before the first center made it. */
  getCenterCa(): Promise<CenterCaRecord | null>;
  /** Keep `ca` as the fleet's CA unless one exists already; answers the one kept (of racing centers, the first's). */
  createCenterCa(ca: CenterCaInput): Promise<CenterCaRecord>;
  recordHostCertificate(input: HostCertificateInput): Promise<HostCertificate>;
  /** The issued certificate with this fingerprint, or null. */
  findHostCertificate(fingerprint: string): Promise<HostCertificate | null>;

  // -- mobility: sites' virtual subnets, hosts' path drivers, operations' virtual paths (src/center/mobility)
  /**
   * The site's virtual subnet (canonical CIDR). A site that has none gets one now: the lowest /24 of
   * 100.64.0.0/10 that overlaps no other site's (ADDRESS_EXHAUSTED if none is left).
   */
  siteSubnet(site: string): Promise<string>;
  /**
   * Give a site its virtual subnet: a /16../29 inside 100.64.0.0/10 (INVALID_ARGUMENT otherwise).
   * ALREADY_EXISTS if it overlaps another site's; BUSY while the site has live paths (their addresses
   * would fall outside it): release them first.
   */
  setSiteSubnet(site: string, cidr: string): Promise<Site>;
  /** Record what a host reported about its path drivers (null: it reported none). */
  setHostDataPlane(host: string, dataPlane: HostDataPlane | null): Promise<Host>;
  /**
   * A live path between two hosts: a free virtual address in each host's site's subnet (never one any
   * live path holds, also against other centers racing: a database constraint), a free operation
   * number (VNI), expiring ttlMs from now. ADDRESS_EXHAUSTED when a subnet (or the VNIs) are full;
   * ALREADY_EXISTS if the path id was used before; NOT_FOUND for a host or task that does not exist.
   */
  allocatePath(input: PathAllocationInput): Promise<MobilityPath>;
  /** Release a path and free its addresses and VNI. Idempotent: answers whether it was live (NOT_FOUND if it never existed). */
  releasePath(pathId: string, reason: string): Promise<boolean>;
  getPath(pathId: string): Promise<MobilityPath>;
  /** Paths by id, after `after`, at most `limit` (≤ MAX_LIST_LIMIT), optionally of one state, host (either end) or task. */
  listPaths(options?: PathListOptions): Promise<readonly MobilityPath[]>;
  /** A task's paths, oldest first (at most MAX_LIST_LIMIT). */
  pathsOfTask(taskId: number): Promise<readonly MobilityPath[]>;
  /** Move a live, unexpired path's expiry (at most MAX_PATH_TTL_MS ahead); PATH_REFUSED if it is released or expired. */
  renewPath(pathId: string, expiresAtMs: number): Promise<MobilityPath>;
  /** Live paths whose expiry is at or before nowMs, soonest first, at most `limit`: the sweeper releases them. */
  expiredLivePaths(nowMs: number, limit: number): Promise<readonly MobilityPath[]>;

  /** Close the database connections; every later call fails with STORE_UNAVAILABLE. Idempotent. */
  close(): Promise<void>;
}
