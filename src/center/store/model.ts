/**
 * The center's inventory, tasks, events and duties as the rest of the center sees them: the record
 * types the store returns, the zod schemas every input is checked against at the store's boundary,
 * and the bounds. The store is the last line before durable state, so it trusts no caller (the REST
 * layer, the host protocol, the scheduler): each string, number and JSON document is bounded here.
 */
import { z } from 'zod';
import { FERRY_ERROR_CODES, FerryError, type FerryErrorCode } from '../../lib/errors.js';
import { KiB } from '../../lib/units.js';
import { MAX_PEM_CHARS, vmNameSchema } from '../../lib/limits.js';
import { DATASTORE_ID_PATTERN } from '../../storage/datastore.js';
import { CENTER_VM_STATES, HOST_STATES, TASK_STATES } from '../../api/center-v1.js';
import {
  MAX_PATH_PORTS, MAX_PATH_TTL_MS, MIN_PATH_PORT, PATH_DRIVER_KINDS, PATH_ID_PATTERN, pathEndpointSchema, pathSpecSchema,
  type PathDriverKind, type PathEndpoint,
} from '../../dataplane/path/spec.js';

// ---------------------------------------------------------------------------------------------
// Bounds (private to the store; the VM name rule is the host's own, src/lib/limits.ts)

/**
 * Largest page any list returns. The fleet goal is 1,000 hosts and 10,000 VMs: a caller pages
 * through them (`after`), and no single query reads or serialises an unbounded table.
 */
export const MAX_LIST_LIMIT = 1000;
/** Largest page of events for an SSE replay; a client that is further behind asks again. */
export const MAX_EVENTS_PAGE = 1000;
/** Kinds a claimer may ask for in one claimNextTask call (an IN list, bounded like any other input). */
export const MAX_CLAIM_KINDS = 64;
/** Tasks one requeueExpiredClaims call re-queues; the sweeper runs again for the rest. */
export const MAX_REQUEUE_BATCH = 500;
/** Host, site and mount names: the VM name's shape (filesystem- and URL-safe), the same length. */
export const MAX_NAME_CHARS = 64;
/** Task kinds and event kinds: dotted lowercase words ("vm.migrate", "task.progress"). */
export const MAX_KIND_CHARS = 64;
/** A task's target and an event's subject ("vm:web", "host:a"): a kind prefix and a name or two. */
export const MAX_SUBJECT_CHARS = 256;
/** Who asked for a task: a user, a token name, or "center:<id>" for the center's own duties. */
export const MAX_ACTOR_CHARS = 128;
/** A worker or duty holder id ("center-<hostname>-<pid>-<random>"). */
export const MAX_HOLDER_CHARS = 128;
/** A phase line ("round 3: 120 MiB dirty") or a waiting reason ("host a: 2 of 2 outbound migrations running"). */
export const MAX_PHASE_CHARS = 512;
/** A task's error message: an error's gist, as the host API's messages are. */
export const MAX_ERROR_MESSAGE_CHARS = 4096;
/** A host's control URL. */
export const MAX_URL_CHARS = 2048;
/**
 * A VM's configuration or disk list, a task's parameters or result, as JSON text. A VM's config is a
 * few hundred bytes; 64 KiB leaves room for what later issues add and still keeps a list of 1,000 VMs
 * bounded (what is listed is bounded by rows × this).
 */
export const MAX_JSON_BYTES = 64 * KiB;
/**
 * An event's payload as JSON text. PostgreSQL's NOTIFY payload must stay under 8,000 bytes; 7 KiB
 * leaves room for the envelope, so an event can travel whole in one NOTIFY when events are fanned out
 * to every center.
 */
export const MAX_EVENT_PAYLOAD_BYTES = 7 * KiB;
/** Shortest claim or duty lease: shorter would expire between two heartbeats of a healthy worker. */
export const MIN_LEASE_MS = 10;
/** Longest lease: a dead worker's task or a dead center's duty waits at most this long to be taken over. */
export const MAX_LEASE_MS = 10 * 60_000;
/** Largest capacity a host may report: far beyond real hosts, and exact in a double. */
export const MAX_HOST_MEMORY_BYTES = 2 ** 50; // 1 PiB
export const MAX_HOST_VCPUS = 4096;

// ---------------------------------------------------------------------------------------------
// Shared schemas

/** JSON as stored: any JSON value (zod checks it is one: no undefined, NaN, Date, cycles). */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

const NAME_PATTERN = new RegExp(`^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,${MAX_NAME_CHARS}}$`);
export const nameSchema = (): z.ZodString => z.string().regex(NAME_PATTERN, `must be 1-${MAX_NAME_CHARS} characters of letters, digits, '.', '_' or '-', other than "." and ".."`);
const KIND_PATTERN = new RegExp(`^[a-z][a-z0-9]*(?:[.-][a-z0-9]+)*$`);
const kindSchema = (): z.ZodString => z.string().max(MAX_KIND_CHARS).regex(KIND_PATTERN, 'must be lowercase words joined by "." or "-"');
/** Free text shown to people: printable (no control characters: it ends up on terminals and in logs). */
const textSchema = (max: number): z.ZodString => z.string().max(max).regex(/^[^\p{Cc}]*$/u, 'must not contain control characters');
const idTextSchema = (max: number): z.ZodString => textSchema(max).min(1);
const timeMsSchema = (): z.ZodNumber => z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
export const leaseMsSchema = (): z.ZodNumber => z.number().int().min(MIN_LEASE_MS).max(MAX_LEASE_MS);
export const datastoreIdSchema = (): z.ZodString => z.string().regex(DATASTORE_ID_PATTERN, 'must be 32 lowercase hex digits (the datastore identity hosts report)');
const errorCodeSchema = z.enum(FERRY_ERROR_CODES);

/** JSON documents are stored as text: the bound is on that text, in UTF-8 bytes. */
export function encodeJson(value: unknown, maxBytes: number, what: string): string {
  let text: string;
  try {
    const checked = z.json().safeParse(value);
    if (!checked.success) throw new Error('not a JSON value');
    text = JSON.stringify(checked.data);
  } catch (err) {
    // A RangeError (nesting too deep for the stack) is as much a hostile input as a non-JSON value.
    throw new FerryError('INVALID_ARGUMENT', `${what} must be a JSON value`, { reason: err instanceof Error ? err.message : String(err) });
  }
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > maxBytes) throw new FerryError('INVALID_ARGUMENT', `${what} is ${bytes} bytes of JSON; at most ${maxBytes} are stored`, { bytes, maxBytes });
  return text;
}

/** Parse an input or throw INVALID_ARGUMENT naming the first bad field (the REST layer passes it on as is). */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  let result: z.ZodSafeParseResult<z.output<S>>;
  try {
    result = schema.safeParse(input);
  } catch (err) {
    // zod recurses into nested JSON: a document nested deeper than the stack is refused like any bad input.
    if (err instanceof RangeError) throw new FerryError('INVALID_ARGUMENT', `invalid ${what}: nested too deeply`);
    throw err;
  }
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const path = issue === undefined || issue.path.length === 0 ? '' : ` (${issue.path.map(String).join('.')})`;
  throw new FerryError('INVALID_ARGUMENT', `invalid ${what}${path}: ${issue?.message ?? 'rejected'}`, { issues: result.error.issues.slice(0, 5).map((i) => ({ path: i.path.map(String), message: i.message })) });
}

// ---------------------------------------------------------------------------------------------
// Inventory

/** The states are the API's (src/api/center-v1.ts): one list, so the store and the API cannot disagree. */
export { HOST_STATES, TASK_STATES };
export type HostState = (typeof HOST_STATES)[number];

/** A VM's state as its host reports it, or `unknown` while its host is silent (not lost, not deleted). */
export const VM_STATES = CENTER_VM_STATES;
export type VmState = (typeof VM_STATES)[number];

export interface Site {
  readonly name: string;
  readonly description: string;
  readonly createdAtMs: number;
  /** The site's virtual subnet (canonical CIDR), or null until first needed (siteSubnet assigns one). */
  readonly virtualSubnet: string | null;
}
export const siteInputSchema = z.object({
  name: nameSchema(),
  description: textSchema(MAX_PHASE_CHARS).optional(),
}).strict();
export type SiteInput = z.input<typeof siteInputSchema>;

export interface HostCapacity {
  readonly memoryBytes: number;
  readonly vcpus: number;
}
export interface Host {
  readonly name: string;
  readonly site: string;
  readonly url: string;
  readonly state: HostState;
  readonly capacity: HostCapacity;
  /** Last heartbeat the center received, or null before the first. */
  readonly lastHeartbeatAtMs: number | null;
  readonly createdAtMs: number;
  readonly updatedAtMs: number;
  /** The path drivers the host reported (setHostDataPlane), or null before it did. */
  readonly dataPlane: HostDataPlane | null;
}
const capacitySchema = z.object({
  memoryBytes: z.number().int().min(0).max(MAX_HOST_MEMORY_BYTES),
  vcpus: z.number().int().min(0).max(MAX_HOST_VCPUS),
}).strict();
const hostUrlSchema = z.string().max(MAX_URL_CHARS).refine((s) => {
  try { const u = new URL(s); return (u.protocol === 'https:' || u.protocol === 'http:') && u.username === '' && u.password === ''; } catch { return false; }
}, 'must be an http(s) URL without credentials');
export const hostInputSchema = z.object({
  name: nameSchema(),
  site: nameSchema(),
  url: hostUrlSchema,
  capacity: capacitySchema,
  /** A new host starts as `joining` unless given; an existing host keeps its state unless given. */
  state: z.enum(HOST_STATES).optional(),
}).strict();
export type HostInput = z.input<typeof hostInputSchema>;
export const hostStateSchema = z.enum(HOST_STATES);
export const heartbeatAtSchema = timeMsSchema();
/** Heartbeat times one recordHostHeartbeats call writes: a second's worth of a 5,000-host fleet, one short transaction. */
export const MAX_HEARTBEAT_BATCH = 1000;
export interface HostHeartbeat {
  readonly name: string;
  readonly atMs: number;
}
export const hostHeartbeatsSchema = z.array(z.object({ name: nameSchema(), atMs: timeMsSchema() }).strict()).max(MAX_HEARTBEAT_BATCH);

export interface Datastore {
  /** The identity every host that mounts it reports (DATASTORE_ID_FILE at its root). */
  readonly id: string;
  readonly name: string;
  readonly shared: boolean;
  readonly createdAtMs: number;
}
export const datastoreInputSchema = z.object({
  id: datastoreIdSchema(),
  name: nameSchema(),
  shared: z.boolean(),
}).strict();
export type DatastoreInput = z.input<typeof datastoreInputSchema>;

/** One host's mount of one datastore, under the host's own name for it. */
export interface HostDatastore {
  readonly host: string;
  readonly datastoreId: string;
  readonly mountName: string;
  /** The mount's space as its host last reported it (null before the first report); kept within DATASTORE_SPACE_WRITE_THRESHOLD_BYTES. */
  readonly space: MountSpace | null;
}
/** A mount's capacity and free bytes as its host's file system sees them, and when reported. */
export interface MountSpace {
  readonly capacityBytes: number;
  readonly freeBytes: number;
  readonly atMs: number;
}
const mountSpaceSchema = z.object({ capacityBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER), freeBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER) }).strict();
export type MountSpaceInput = z.input<typeof mountSpaceSchema>;
export const mountSpaceInputSchema = mountSpaceSchema;
/** The most datastores one host reports (each a directory it mounts). */
export const MAX_MOUNTS_PER_HOST = 256;
export const mountsInputSchema = z.array(z.object({ datastoreId: datastoreIdSchema(), mountName: nameSchema(), space: mountSpaceSchema.optional() }).strict()).max(MAX_MOUNTS_PER_HOST);
export type MountInput = z.input<typeof mountsInputSchema>[number];

export interface Vm {
  readonly name: string;
  /** Where it runs or is defined; null while it is nowhere (not yet placed). A VM is in one place by construction. */
  readonly host: string | null;
  readonly state: VmState;
  readonly config: JsonValue;
  readonly disks: JsonValue;
  readonly createdAtMs: number;
  readonly updatedAtMs: number;
}
export const vmInputSchema = z.object({
  name: vmNameSchema(),
  host: nameSchema().nullable(),
  state: z.enum(VM_STATES),
  config: z.json(),
  disks: z.json(),
}).strict();
export type VmInput = z.input<typeof vmInputSchema>;
export const vmStateSchema = z.enum(VM_STATES);

// ---------------------------------------------------------------------------------------------
// Tasks

export type TaskState = (typeof TASK_STATES)[number];
export const FINISHED_TASK_STATES: readonly TaskState[] = ['succeeded', 'failed', 'cancelled'];

export interface TaskError {
  readonly code: FerryErrorCode;
  readonly message: string;
}
/** How many unfinished tasks of one kind are in one state (queue depth: state queued). */
export interface TaskCount {
  readonly state: TaskState;
  readonly kind: string;
  readonly count: number;
}
/**
 * Most (state, kind) groups countTasksByState answers: unfinished states × the kinds a center runs are a
 * few dozen; kinds are validated names but not a closed list, so the answer (read at every metrics
 * scrape) is cut here rather than grow with whatever kinds were ever enqueued.
 */
export const MAX_TASK_COUNT_GROUPS = 1024;

export interface Task {
  readonly id: number;
  readonly kind: string;
  readonly target: string;
  readonly state: TaskState;
  readonly phase: string;
  /** 0..1, never lower than any value it had before (the store keeps the highest). */
  readonly progress: number;
  /** Why a queued task waits ("host a: 2 of 2 outbound migrations running"), or null. */
  readonly waitingReason: string | null;
  readonly requestedBy: string;
  readonly params: JsonValue;
  readonly createdAtMs: number;
  readonly startedAtMs: number | null;
  readonly endedAtMs: number | null;
  readonly result: JsonValue | null;
  readonly error: TaskError | null;
  /** The worker that holds it while running, and until when unless renewed. */
  readonly claimedBy: string | null;
  readonly claimExpiresAtMs: number | null;
  /** How many times it was claimed: above 1, a worker died or lost its claim and another took over. */
  readonly attempts: number;
  /** Cancel was asked while it ran: its worker stops it and finishes it (cancelled, or the truth if too late). */
  readonly cancelRequested: boolean;
  /** Only admitted tasks are claimed; a task that costs against budgets waits unadmitted for the scheduler. */
  readonly admitted: boolean;
  /** What the scheduler decided at admission (e.g. the hosts a migration runs between), or null. */
  readonly plan: JsonValue | null;
  /** What a worker recorded before an irreversible step, for whoever takes the task over; or null. */
  readonly checkpoint: JsonValue | null;
  /** The latest request to move the task's work to another host (requestTaskMove), or null: never asked. */
  readonly moveRequest: TaskMoveRequest | null;
}
/**
 * A request to move a running task's work to another host (`ferry task move`). `seq` counts requests
 * (1 for the first): its worker notes the last seq it acted on, so each request is acted on once.
 */
export interface TaskMoveRequest {
  readonly seq: number;
  /** The host asked for, or null: the worker chooses. */
  readonly to: string | null;
  readonly by: string;
  readonly atMs: number;
}
export const taskMoveInputSchema = z.object({
  to: nameSchema().nullable().optional(),
  by: idTextSchema(MAX_ACTOR_CHARS),
}).strict();
export type TaskMoveInput = z.input<typeof taskMoveInputSchema>;
export const taskInputSchema = z.object({
  kind: kindSchema(),
  target: idTextSchema(MAX_SUBJECT_CHARS),
  requestedBy: idTextSchema(MAX_ACTOR_CHARS),
  params: z.json().optional(),
  waitingReason: textSchema(MAX_PHASE_CHARS).optional(),
  /** Default true: claimable at once. False: it waits for the scheduler's admitTask. */
  admitted: z.boolean().optional(),
}).strict();
export type TaskInput = z.input<typeof taskInputSchema>;
export const workerIdSchema = (): z.ZodString => idTextSchema(MAX_HOLDER_CHARS);
export const claimKindsSchema = z.array(kindSchema()).min(1).max(MAX_CLAIM_KINDS);
export const heartbeatInputSchema = z.object({
  leaseMs: leaseMsSchema(),
  progress: z.number().min(0).max(1).optional(),
  phase: textSchema(MAX_PHASE_CHARS).optional(),
}).strict();
export type TaskHeartbeat = z.input<typeof heartbeatInputSchema>;
export const outcomeSchema = z.discriminatedUnion('state', [
  z.object({ state: z.literal('succeeded'), result: z.json().optional() }).strict(),
  z.object({ state: z.literal('failed'), error: z.object({ code: errorCodeSchema, message: textSchema(MAX_ERROR_MESSAGE_CHARS) }).strict(), result: z.json().optional() }).strict(),
  z.object({ state: z.literal('cancelled'), result: z.json().optional() }).strict(),
]);
export type TaskOutcome = z.input<typeof outcomeSchema>;
export const waitingReasonSchema = textSchema(MAX_PHASE_CHARS).nullable();
export const actorSchema = (): z.ZodString => idTextSchema(MAX_ACTOR_CHARS);
export const taskIdSchema = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);

// ---------------------------------------------------------------------------------------------
// Events and duties

export interface StoredEvent {
  /** Monotonic and gap-free: every committed event has the next id, in commit order. */
  readonly id: number;
  readonly atMs: number;
  readonly kind: string;
  readonly subject: string;
  readonly payload: JsonValue;
}
export const eventInputSchema = z.object({
  kind: kindSchema(),
  subject: idTextSchema(MAX_SUBJECT_CHARS),
  payload: z.json().optional(),
}).strict();
export type EventInput = z.input<typeof eventInputSchema>;
/** Names of the secrets centers share (kind-like words). */
export const secretNameSchema = (): z.ZodString => kindSchema();
/** A shared secret's value: printable, bounded (a key in hex or base64url). */
export const secretValueSchema = (): z.ZodString => z.string().regex(/^[A-Za-z0-9_-]{16,256}$/, 'must be 16-256 characters of letters, digits, "_" or "-"');

export const eventIdSchema = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/**
 * Events one pruneEvents call deletes at most: one short statement, so pruning a long backlog (a
 * retention just lowered, a center that was off) never holds the table for long; the pruner calls again.
 */
export const MAX_EVENT_PRUNE_BATCH = 10_000;
/** What the event log keeps: events younger than maxAgeMs, and at most the newest maxEvents (both bound it). */
export interface EventRetention {
  readonly maxAgeMs: number;
  readonly maxEvents: number;
  /** At most this many are deleted by one call (≤ MAX_EVENT_PRUNE_BATCH). */
  readonly batch: number;
}
export const eventRetentionSchema = z.object({
  maxAgeMs: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  maxEvents: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  batch: z.number().int().min(1).max(MAX_EVENT_PRUNE_BATCH),
}).strict();
export const eventsLimitSchema = z.number().int().min(1).max(MAX_EVENTS_PAGE);

/** What tryAcquireDuty answers: who holds the duty now, until when, and its fencing epoch. */
export interface DutyLease {
  readonly name: string;
  readonly holder: string;
  readonly acquired: boolean;
  readonly expiresAtMs: number;
  /** Incremented each time the duty changes holder: a holder stamps its writes with it to fence a stale predecessor. */
  readonly epoch: number;
}
export const dutyNameSchema = (): z.ZodString => kindSchema();

// ---------------------------------------------------------------------------------------------
// Lists

/** Keyset paging: rows after `after` (a name or id), at most `limit` (default and bound MAX_LIST_LIMIT). */
export interface ListOptions<K> {
  readonly after?: K;
  readonly limit?: number;
}
export const listLimitSchema = z.number().int().min(1).max(MAX_LIST_LIMIT).default(MAX_LIST_LIMIT);
export const hostListSchema = z.object({ after: nameSchema().optional(), limit: listLimitSchema, site: nameSchema().optional(), state: hostStateSchema.optional() }).strict();
export type HostListOptions = z.input<typeof hostListSchema>;
export const vmListSchema = z.object({ after: vmNameSchema().optional(), limit: listLimitSchema, host: nameSchema().optional(), state: vmStateSchema.optional() }).strict();
export type VmListOptions = z.input<typeof vmListSchema>;
export const nameListSchema = z.object({ after: nameSchema().optional(), limit: listLimitSchema }).strict();
export const datastoreListSchema = z.object({ after: datastoreIdSchema().optional(), limit: listLimitSchema }).strict();
export const taskListSchema = z.object({
  after: taskIdSchema.optional(),
  limit: listLimitSchema,
  state: z.enum(TASK_STATES).optional(),
  kind: kindSchema().optional(),
  target: idTextSchema(MAX_SUBJECT_CHARS).optional(),
  admitted: z.boolean().optional(),
}).strict();
export type TaskListOptions = z.input<typeof taskListSchema>;

// ---------------------------------------------------------------------------------------------
// Credentials

/**
 * `api`: a client's bearer token (the CLI, the UI); `join`: a one-time token a new host presents once;
 * `host`: the credential a joined host presents on every call after.
 */
export const CREDENTIAL_KINDS = ['api', 'join', 'host'] as const;
export type CredentialKind = (typeof CREDENTIAL_KINDS)[number];

/** A credential as stored: never its secret, only the hash (src/center/auth.ts makes both). */
export interface Credential {
  /** Public id: shown in lists and logs, used to revoke; not a secret. */
  readonly id: string;
  readonly kind: CredentialKind;
  /** An API token's name, a join token's creator, a host credential's host. */
  readonly subject: string;
  readonly createdAtMs: number;
  readonly expiresAtMs: number | null;
  /** A join token's one use; null while unspent (and always for other kinds). */
  readonly spentAtMs: number | null;
  readonly revokedAtMs: number | null;
}
/** Credential ids: 16 lowercase hex digits (64 random bits: unique without coordination). */
export const credentialIdSchema = (): z.ZodString => z.string().regex(/^[0-9a-f]{16}$/, 'must be 16 lowercase hex digits');
/** SHA-256 of the secret, in hex. */
export const secretHashSchema = (): z.ZodString => z.string().regex(/^[0-9a-f]{64}$/, 'must be a SHA-256 in hex');
export const credentialInputSchema = z.object({
  id: credentialIdSchema(),
  kind: z.enum(CREDENTIAL_KINDS),
  subject: idTextSchema(MAX_ACTOR_CHARS),
  secretHash: secretHashSchema(),
  expiresAtMs: timeMsSchema().nullable().optional(),
}).strict();
export type CredentialInput = z.input<typeof credentialInputSchema>;

// ---------------------------------------------------------------------------------------------
// The CA and host certificates (src/center/ca.ts makes them; the store keeps them)

const pemSchema = (label: string): z.ZodString => z.string().max(MAX_PEM_CHARS).refine((s) => s.startsWith(`-----BEGIN ${label}-----`), `must be a PEM ${label.toLowerCase()}`);
export const centerCaInputSchema = z.object({ certPem: pemSchema('CERTIFICATE'), keyPem: pemSchema('PRIVATE KEY') }).strict();
export type CenterCaInput = z.input<typeof centerCaInputSchema>;
export interface CenterCaRecord { readonly certPem: string; readonly keyPem: string; readonly createdAtMs: number }

/** `AB:CD:…`: the SHA-256 of a certificate's DER (src/lib/x509.ts fingerprintOf). */
export const fingerprintSchema = (): z.ZodString => z.string().regex(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/, 'must be a SHA-256 fingerprint AB:CD:…');
export const hostCertificateInputSchema = z.object({
  fingerprint: fingerprintSchema(),
  host: nameSchema(),
  credentialId: credentialIdSchema(),
  serial: z.string().regex(/^[0-9a-f]{1,40}$/, 'must be a serial number in lowercase hex'),
  notAfterMs: timeMsSchema(),
}).strict();
export type HostCertificateInput = z.input<typeof hostCertificateInputSchema>;
export interface HostCertificate {
  readonly fingerprint: string;
  readonly host: string;
  readonly credentialId: string;
  readonly serial: string;
  readonly createdAtMs: number;
  readonly notAfterMs: number;
}

// ---------------------------------------------------------------------------------------------
// Mobility: hosts' path drivers, operations' virtual paths (src/center/mobility, ARCHITECTURE.md §1.4)

/** Drivers one host reports, at most: there are two kinds today; the bound leaves room and keeps a host row small. */
export const MAX_DATA_PLANE_DRIVERS = 4;
/** Shortest path lifetime: shorter would expire before both hosts set it up. */
export const MIN_PATH_TTL_MS = 1000;
/**
 * Live paths the whole fleet holds at once, at most: bounds what one allocation reads to pick a free
 * operation number (and is far below the 2^24 VNIs). Each operation holds one path.
 */
export const MAX_LIVE_PATHS = 65_536;
/** Times one allocation is tried again after losing a race for an address or VNI to another center. */
export const MAX_ALLOCATION_ATTEMPTS = 4;

export interface HostDataPlaneDriver {
  readonly kind: PathDriverKind;
  /** The host's tunnel endpoint for this driver (underlay): given only to the peer's driver. */
  readonly endpoint: PathEndpoint;
}
/** What a host reported about its path drivers, in its order of preference. */
export interface HostDataPlane {
  readonly drivers: readonly HostDataPlaneDriver[];
}
export const hostDataPlaneSchema = z.object({
  drivers: z.array(z.object({ kind: z.enum(PATH_DRIVER_KINDS), endpoint: pathEndpointSchema }).strict()).max(MAX_DATA_PLANE_DRIVERS)
    .refine((ds) => new Set(ds.map((d) => d.kind)).size === ds.length, 'each driver kind is reported once'),
}).strict();

export const PATH_STATES = ['live', 'released'] as const;
export type PathState = (typeof PATH_STATES)[number];

/**
 * One operation's virtual path as stored. It holds the secret: the store's callers (the mobility
 * manager) push it to the two hosts; it is never shown by the API or written to events or logs.
 */
export interface MobilityPath {
  readonly pathId: string;
  readonly taskId: number | null;
  /** What the operation is ("migration"; later "copy", "cross-site-migration"). */
  readonly kind: string;
  readonly sourceHost: string;
  readonly targetHost: string;
  readonly sourceSite: string;
  readonly targetSite: string;
  /** Virtual IPv4 addresses from each site's subnet: held by no other live path while this one is live. */
  readonly sourceAddress: string;
  readonly targetAddress: string;
  readonly vni: number;
  readonly firstPort: number;
  readonly portCount: number;
  readonly driver: PathDriverKind;
  /** 32 bytes, base64url (PathSpec.secret). */
  readonly secret: string;
  readonly state: PathState;
  readonly createdAtMs: number;
  readonly expiresAtMs: number;
  readonly releasedAtMs: number | null;
  readonly releaseReason: string | null;
}

export const pathIdSchema = (): z.ZodString => z.string().regex(PATH_ID_PATTERN, 'must be 32 lowercase hex digits');
const pathSecretSchema = pathSpecSchema.shape.secret;
const pathPortSchema = z.number().int().min(MIN_PATH_PORT).max(65535);
/** What allocatePath takes: the sites are the hosts' own (read from the store), the rest is chosen here. */
export const pathAllocationSchema = z.object({
  /** Made by the caller (random, node:crypto): the store generates nothing random, so it is testable. */
  pathId: pathIdSchema(),
  taskId: taskIdSchema.nullable().optional(),
  kind: kindSchema(),
  sourceHost: nameSchema(),
  targetHost: nameSchema(),
  driver: z.enum(PATH_DRIVER_KINDS),
  firstPort: pathPortSchema,
  portCount: z.number().int().min(1).max(MAX_PATH_PORTS),
  ttlMs: z.number().int().min(MIN_PATH_TTL_MS).max(MAX_PATH_TTL_MS),
  secret: pathSecretSchema,
}).strict().refine((a) => a.firstPort + a.portCount - 1 <= 65535, 'the port range runs past 65535');
export type PathAllocationInput = z.input<typeof pathAllocationSchema>;
export const releaseReasonSchema = (): z.ZodString => idTextSchema(MAX_PHASE_CHARS);
export const pathTimeSchema = timeMsSchema();
export const pathListSchema = z.object({
  after: pathIdSchema().optional(),
  limit: listLimitSchema,
  state: z.enum(PATH_STATES).optional(),
  /** Paths with this host at either end. */
  host: nameSchema().optional(),
  taskId: taskIdSchema.optional(),
}).strict();
export type PathListOptions = z.input<typeof pathListSchema>;
/** `255.255.255.255/32`: the longest IPv4 CIDR text. */
export const MAX_CIDR_CHARS = 18;
export const cidrTextSchema = (): z.ZodString => z.string().min(1).max(MAX_CIDR_CHARS);
export const pathLimitSchema = z.number().int().min(1).max(MAX_LIST_LIMIT);
