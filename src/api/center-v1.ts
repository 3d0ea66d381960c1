/**
 * The center's REST API, version 1: every route, request and response declared once, like the host's
 * (./host-v1.ts). The center's app (src/center/app.ts) serves exactly these routes and validates with
 * these schemas, the OpenAPI document (GET /api/v1/openapi.json) is generated from them, and the one
 * typed client (./center-client.ts) builds its URLs from them and checks every answer against them.
 *
 * Who may call what:
 * - `GET /api/v1/health`, `GET /api/v1/ca` and the OpenAPI document: anyone (a load balancer, `ferry up`
 *   waiting for it, `ferry login` and a joining host reading the CA to compare its fingerprint);
 * - `POST /api/v1/hosts/join`: a host presenting a one-time join token in the body;
 * - `POST /api/v1/hosts/{name}/heartbeat` and `GET /api/v1/hosts/{name}/paths/{path}/incoming/{id}` (the
 *   host-link routes): that host's own credential (bearer) and its own certificate (TLS client
 *   certificate, signed by the center's CA, issued with that credential);
 * - everything else: an API token (bearer).
 * Errors are `{ error: { code, message, details? } }` with the stable codes of src/lib/errors.ts.
 */
import { createRoute, z } from '@hono/zod-openapi';
import { KiB, MiB } from '../lib/units.js';
import { DATASTORE_ID_PATTERN } from '../storage/datastore.js';
import { MAX_DATASTORE_PATH_BYTES, MAX_PEM_CHARS, VM_NAME_PATTERN, cmdlineSchema, granularitySchema, vcpusSchema, vmNameSchema as limitVmNameSchema } from '../lib/limits.js';
import { migrationOptionsSchema } from '../migration/options.js';
import { errorBodySchema, incomingStatusSchema, pathDriverReportSchema, pathIdSchema, migrationIdSchema, vmStateSchema as hostVmStateSchema } from './host-v1.js';
import { PATH_DRIVER_KINDS } from '../dataplane/path/spec.js';
import { diskChainSchema } from './disk-v1.js';
import { MAX_COPY_STREAMS } from '../nfc/plan.js';
import { MIN_RATE_BYTES_PER_SEC } from '../dataplane/rate-limiter.js';

export const CENTER_API_VERSION = 'v1';
export const CENTER_API_PREFIX = `/api/${CENTER_API_VERSION}`;
export const CENTER_OPENAPI_PATH = `${CENTER_API_PREFIX}/openapi.json`;
export const CENTER_OPENAPI_INFO = { title: 'Ferry center API', version: CENTER_API_VERSION } as const;

// ---- bounds ---------------------------------------------------------------------------------

/** Every request but a heartbeat is a few fields. */
export const MAX_CENTER_BODY_BYTES = 64 * KiB;
/** A heartbeat lists the host's VMs (a few hundred bytes each) and datastores. */
export const MAX_HEARTBEAT_BODY_BYTES = 1 * MiB;
/** VMs one heartbeat may report: 10× the fleet goal's average (10,000 VMs on 1,000 hosts), within the body bound. */
export const MAX_HEARTBEAT_VMS = 1000;
/** Datastores one heartbeat may report: the store's MAX_MOUNTS_PER_HOST. */
export const MAX_HEARTBEAT_DATASTORES = 256;
/** Largest page of a list (the store's MAX_LIST_LIMIT); a client pages with `after`. */
export const MAX_PAGE_LIMIT = 1000;
/** A join token lives an hour unless asked otherwise, at most a week: an unspent token is a standing invitation. */
export const DEFAULT_JOIN_TOKEN_TTL_MS = 60 * 60_000;
export const MIN_JOIN_TOKEN_TTL_MS = 1000;
export const MAX_JOIN_TOKEN_TTL_MS = 7 * 24 * 60 * 60_000;
/** Host names one site view lists at most (a fleet's site is far smaller; GET /hosts pages beyond). */
export const MAX_SITE_VIEW_HOSTS = 1000;
/** Datastores one site view lists at most. */
export const MAX_SITE_VIEW_DATASTORES = 256;
/** URLs a host reports for itself. */
export const MAX_URL_CHARS = 2048;

/**
 * Secrets the center issues: `ferry-<kind>-<43 base64url chars>` (32 random bytes). The kind prefix
 * lets a person, a log scrubber or a secret scanner tell an API token from a host credential.
 */
export const SECRET_KINDS = ['api', 'join', 'host'] as const;
export type SecretKind = (typeof SECRET_KINDS)[number];
export const SECRET_PATTERN = /^ferry-(api|join|host)-[A-Za-z0-9_-]{43}$/;
export const secretSchema = z.string().regex(SECRET_PATTERN, 'must be a Ferry secret (ferry-<kind>-<43 characters>)');

// ---- states (the store validates against these too: one list) ------------------------------

export const HOST_STATES = ['joining', 'connected', 'disconnected', 'entering-maintenance', 'in-maintenance'] as const;
/** A VM's state as its host reports it, or `unknown` while its host is silent (not lost, not deleted). */
export const CENTER_VM_STATES = [...hostVmStateSchema.options, 'unknown'] as const;
export const TASK_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;

// ---- shared pieces --------------------------------------------------------------------------

export const nameSchema = limitVmNameSchema();
export const datastoreIdSchema = z.string().regex(DATASTORE_ID_PATTERN, 'must be 32 lowercase hex digits');
/** A datastore as the center names it: its name, or its id (32 hex digits). */
export const datastoreRefSchema = z.string().regex(VM_NAME_PATTERN, 'must be a datastore name or id');
const httpUrlSchema = z.string().max(MAX_URL_CHARS).refine((s) => {
  try { const u = new URL(s); return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === ''; } catch { return false; }
}, 'must be an http(s) URL without credentials');
const jsonValueSchema = z.unknown().openapi({ description: 'a JSON value' });
const bytesSchema = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const capacitySchema = z.object({
  memoryBytes: bytesSchema,
  vcpus: z.number().int().min(0).max(4096),
}).strict();

export const hostViewSchema = z.object({
  name: z.string(),
  site: z.string(),
  url: z.string(),
  state: z.enum(HOST_STATES),
  capacity: z.object({ memoryBytes: z.number(), vcpus: z.number() }),
  lastHeartbeatAtMs: z.number().nullable(),
  createdAtMs: z.number(),
  updatedAtMs: z.number(),
}).openapi('CenterHost');
export type CenterHostView = z.infer<typeof hostViewSchema>;

export const hostDetailSchema = hostViewSchema.extend({
  /**
   * The datastores it mounts, under its own name for each, with the space this host last reported for
   * each (null before its first report; kept within 64 MiB of what the host says, see center-store.md).
   */
  datastores: z.array(z.object({
    id: z.string(), mountName: z.string(), shared: z.boolean(),
    capacityBytes: z.number().nullable(), freeBytes: z.number().nullable(), spaceAtMs: z.number().nullable(),
  })),
}).openapi('CenterHostDetail');
export type CenterHostDetail = z.infer<typeof hostDetailSchema>;

export const vmViewSchema = z.object({
  name: z.string(),
  host: z.string().nullable(),
  state: z.enum(CENTER_VM_STATES),
  config: jsonValueSchema,
  disks: jsonValueSchema,
  createdAtMs: z.number(),
  updatedAtMs: z.number(),
}).openapi('CenterVm');
export type CenterVmView = z.infer<typeof vmViewSchema>;

export const taskViewSchema = z.object({
  id: z.number().int(),
  kind: z.string(),
  target: z.string(),
  state: z.enum(TASK_STATES),
  phase: z.string(),
  progress: z.number(),
  waitingReason: z.string().nullable(),
  requestedBy: z.string(),
  params: jsonValueSchema,
  createdAtMs: z.number(),
  startedAtMs: z.number().nullable(),
  endedAtMs: z.number().nullable(),
  result: jsonValueSchema,
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  attempts: z.number().int(),
  cancelRequested: z.boolean(),
  /** What the scheduler decided when it admitted the task (a migration: its hosts), or null while it waits. */
  plan: jsonValueSchema,
  /** The latest `ferry task move` request (seq counts them; to: the host asked for, or null), or null. */
  moveRequest: z.object({ seq: z.number().int(), to: z.string().nullable(), by: z.string(), atMs: z.number() }).nullable(),
}).openapi('CenterTask');
export type CenterTaskView = z.infer<typeof taskViewSchema>;

export const centerEventSchema = z.object({
  /** Gap-free, in commit order: resume with Last-Event-ID = the last id seen. */
  id: z.number().int(),
  atMs: z.number(),
  kind: z.string(),
  subject: z.string(),
  payload: jsonValueSchema,
}).openapi('CenterEvent');
export type CenterEvent = z.infer<typeof centerEventSchema>;

export const caSchema = z.object({
  /** The center's CA certificate, PEM. */
  certificate: z.string(),
  /** SHA-256 of its DER, `AB:CD:…` (as `openssl x509 -fingerprint -sha256` shows it). */
  fingerprint: z.string(),
}).openapi('CenterCa');
export type CenterCaView = z.infer<typeof caSchema>;
/**
 * The kind of the one event the center makes up rather than stores: a stream resumed after an id older
 * than the oldest event kept (the log is pruned: retention) starts with it, and so does a stream that
 * fell behind the pruner. Its id is the last id lost (the stream goes on after it, so a reconnect does
 * not hear it again); its payload says from where to where (`EventsLostPayload`). A client that gets it
 * refetches what it shows (hosts, VMs, tasks), since changes in between are not in the stream.
 */
export const EVENTS_LOST_KIND = 'events.lost';
export interface EventsLostPayload {
  /** The id the client resumed after. */
  readonly afterId: number;
  /** The stream goes on after this one: events afterId + 1 .. resumeAfterId are gone. */
  readonly resumeAfterId: number;
  readonly reason: string;
}

export const healthSchema = z.object({ ok: z.literal(true), api: z.literal(CENTER_API_VERSION) }).openapi('Health');

export const joinTokenRequestSchema = z.object({
  ttlMs: z.number().int().min(MIN_JOIN_TOKEN_TTL_MS).max(MAX_JOIN_TOKEN_TTL_MS).optional(),
}).strict().openapi('JoinTokenRequest');
export const joinTokenSchema = z.object({
  id: z.string(),
  /** Shown once: the center keeps only its hash. */
  token: z.string(),
  expiresAtMs: z.number(),
  /** The SHA-256 fingerprint of the center's CA: the joining host checks the center against it. */
  caFingerprint: z.string(),
}).openapi('JoinToken');
export type JoinTokenView = z.infer<typeof joinTokenSchema>;

export const joinRequestSchema = z.object({
  joinToken: secretSchema,
  name: nameSchema,
  /** The host's control API, as the center should reach it. */
  url: httpUrlSchema,
  site: nameSchema.optional(),
  /** A PKCS#10 request (PEM) for a certificate named CN=<name>, made with a key that stays on the host. */
  csr: z.string().min(1).max(MAX_PEM_CHARS),
}).strict().openapi('JoinRequest');
export type JoinRequest = z.infer<typeof joinRequestSchema>;
export const joinResultSchema = z.object({
  name: z.string(),
  /** The host's own credential, shown once; it presents it as a bearer token from now on. */
  credential: z.string(),
  /** The host's certificate (PEM) signed by the center's CA: its TLS identity towards the center and as a server. */
  certificate: z.string(),
  /** The center's CA certificate (PEM): what the host verifies the center with from now on. */
  caCertificate: z.string(),
  heartbeatIntervalMs: z.number().int(),
}).openapi('JoinResult');
export type JoinResult = z.infer<typeof joinResultSchema>;

export const heartbeatRequestSchema = z.object({
  url: httpUrlSchema,
  capacity: capacitySchema,
  datastores: z.array(z.object({
    name: nameSchema,
    id: datastoreIdSchema,
    spaceLeftBytes: bytesSchema,
    totalBytes: bytesSchema,
  }).strict()).max(MAX_HEARTBEAT_DATASTORES),
  vms: z.array(z.object({
    name: nameSchema,
    state: hostVmStateSchema,
    memoryBytes: bytesSchema,
    vcpus: z.number().int().min(1).max(4096),
    /** The VM's disk, if it has one: on which of the reported datastores, where, how large. */
    disk: z.object({ datastore: nameSchema, path: z.string().min(1).max(4096), capacityBytes: bytesSchema }).strict().nullable(),
  }).strict()).max(MAX_HEARTBEAT_VMS),
  /** The host's virtual-path drivers (in its order of preference) and their tunnel endpoints; absent from hosts older than paths. */
  dataPlane: z.object({ drivers: z.array(pathDriverReportSchema).max(PATH_DRIVER_KINDS.length) }).strict().optional(),
}).strict().openapi('Heartbeat');
export type HeartbeatRequest = z.infer<typeof heartbeatRequestSchema>;
export const heartbeatResultSchema = z.object({
  state: z.enum(HOST_STATES),
  /** How often the center wants heartbeats: it marks a host disconnected after a few missed ones. */
  heartbeatIntervalMs: z.number().int(),
  /** The credential the center presents to this host's control API (the host accepts it beside its own token). */
  controlToken: z.string().min(16).max(256),
}).openapi('HeartbeatResult');
export type HeartbeatResult = z.infer<typeof heartbeatResultSchema>;

const limitQuery = z.coerce.number().int().min(1).max(MAX_PAGE_LIMIT).optional();
export const siteListQuerySchema = z.object({ after: nameSchema.optional(), limit: limitQuery }).strict();
export const hostListQuerySchema = z.object({ after: nameSchema.optional(), limit: limitQuery, state: z.enum(HOST_STATES).optional() }).strict();
export const vmListQuerySchema = z.object({ after: nameSchema.optional(), limit: limitQuery, host: nameSchema.optional(), state: z.enum(CENTER_VM_STATES).optional() }).strict();
const taskIdSchema = z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER);
export const taskListQuerySchema = z.object({
  after: taskIdSchema.optional(), limit: limitQuery, state: z.enum(TASK_STATES).optional(),
  kind: z.string().max(64).regex(/^[a-z][a-z0-9.-]*$/).optional(), target: z.string().min(1).max(256).optional(),
}).strict();
const eventIdText = z.string().regex(/^\d{1,15}$/, 'must be an event id (a non-negative integer)');
export const eventsQuerySchema = z.object({
  /** Same as the Last-Event-ID header (a browser's EventSource cannot set headers on its first connection). */
  after: eventIdText.optional(),
}).strict();
export const eventsHeadersSchema = z.object({ 'last-event-id': eventIdText.optional() });

export const hostListSchema = z.object({ hosts: z.array(hostViewSchema), next: z.string().nullable() });
export const siteViewSchema = z.object({
  name: z.string(),
  description: z.string(),
  /** The site's virtual subnet for mobility operations' paths; null until first needed (the lowest free /24 of 100.64.0.0/10 is given then). */
  virtualSubnet: z.string().nullable(),
  /** The site's hosts, by name (at most MAX_SITE_VIEW_HOSTS; `hostsTruncated` says when there are more: list them with GET /hosts). */
  hosts: z.array(z.string()).max(MAX_SITE_VIEW_HOSTS),
  hostsTruncated: z.boolean(),
  /** The datastores its hosts mount (each once; at most MAX_SITE_VIEW_DATASTORES), with the center's name for each. */
  datastores: z.array(z.object({ id: z.string(), name: z.string() })).max(MAX_SITE_VIEW_DATASTORES),
  datastoresTruncated: z.boolean(),
}).openapi('Site');
export type CenterSiteView = z.infer<typeof siteViewSchema>;
export const siteListSchema = z.object({ sites: z.array(siteViewSchema), next: z.string().nullable() });
export const siteSubnetRequestSchema = z.object({
  /** An IPv4 CIDR of /16 to /29 inside 100.64.0.0/10, overlapping no other site's. */
  virtualSubnet: z.string().min(9).max(18),
}).strict().openapi('SiteSubnet');
export const vmListSchema = z.object({ vms: z.array(vmViewSchema), next: z.string().nullable() });
export const taskListSchema = z.object({ tasks: z.array(taskViewSchema), next: z.number().int().nullable() });

// ---- operations (each answers the task that carries it out) --------------------------------

/**
 * A guest image travels in the request (bounded by the task's stored parameters) or is one of the
 * images built with Ferry (`dirtier`, `kvlog`, …), read by the center from its own installation.
 */
export const MAX_CENTER_IMAGE_BYTES = 40 * KiB;
export const BUILTIN_IMAGE_PATTERN = /^[a-z][a-z0-9-]{0,63}$/;
export const centerCreateVmRequestSchema = z.object({
  name: nameSchema,
  /** Where to create it; without, the center places it (most free memory among compatible hosts). */
  host: nameSchema.optional(),
  image: z.string().regex(BUILTIN_IMAGE_PATTERN, 'must be the name of an image built with Ferry').optional(),
  imageBase64: z.string().min(8).max(Math.ceil(MAX_CENTER_IMAGE_BYTES / 3) * 4).optional(),
  memoryBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  vcpus: vcpusSchema().optional(),
  granularityBytes: granularitySchema().optional(),
  cmdline: cmdlineSchema().optional(),
  disk: z.object({
    datastore: z.string().regex(VM_NAME_PATTERN), path: z.string().min(1).max(MAX_DATASTORE_PATH_BYTES),
    sizeBytes: z.number().int().positive().multipleOf(512).max(Number.MAX_SAFE_INTEGER).optional(),
  }).strict().optional(),
  /** Start it once created (default true). */
  start: z.boolean().optional(),
}).strict().refine((r) => (r.image === undefined) !== (r.imageBase64 === undefined), 'give exactly one of image and imageBase64').openapi('CenterCreateVm');
export type CenterCreateVmRequest = z.infer<typeof centerCreateVmRequestSchema>;

export const centerMigrateRequestSchema = z.object({
  /** The target host; without, the center picks a compatible one (most free memory, fewest migrations). */
  to: nameSchema.optional(),
  options: migrationOptionsSchema.optional(),
  /**
   * false: connect the two hosts directly (plain TCP between their physical addresses) instead of over
   * the operation's own virtual path; the task's result says so. Also what happens, said in the result,
   * when the two hosts share no path driver.
   */
  isolation: z.boolean().optional(),
  /** Copy the disk live to this datastore of the target (as `ferry vm migrate --disk-datastore`). */
  disk: z.object({ datastore: z.string().regex(VM_NAME_PATTERN), path: z.string().min(1).max(MAX_DATASTORE_PATH_BYTES).optional() }).strict().optional(),
  /**
   * A host of this site (docs/design/cross-site.md): the center picks one (with `to`, it must be in this
   * site), and the disk goes to the datastore a prepare-migration seeded for the VM there (else the
   * target's roomiest), its seeded bases skipped.
   */
  toSite: nameSchema.optional(),
}).strict().openapi('CenterMigrate');

/** `ferry vm prepare-migration <vm> --to-site <site> [--datastore <ds>]` (docs/design/cross-site.md). */
export const centerPrepareMigrationRequestSchema = z.object({
  toSite: nameSchema,
  /** A datastore of the target site (its name or id, as the center lists datastores); default: the roomiest one its hosts mount. */
  datastore: datastoreRefSchema.optional(),
}).strict().openapi('CenterPrepareMigration');
export type CenterPrepareMigrationRequest = z.infer<typeof centerPrepareMigrationRequestSchema>;

/** What a succeeded `vm.prepare-migration` task's result says. */
export const prepareMigrationResultSchema = z.object({
  vm: z.string(),
  toSite: z.string(),
  /** The seeds' datastore (the center's name for it) and its id. */
  datastore: z.string(),
  datastoreId: z.string(),
  /** The snapshot taken: the VM runs on `top` now; `bases` (base first) are read-only and were copied. */
  snapshot: z.object({ top: z.string(), bases: z.array(z.string()) }).strict(),
  /** The seeds, base first: path on the seeds' datastore, CID, the digest both files had, size. */
  seeds: z.array(z.object({ path: z.string(), cid: z.string(), digest: z.string(), fileBytes: z.number() }).strict()),
  /** The copy task that moved them (its hand-offs and segments are there); null when every base was seeded already (nothing copied). */
  copyTaskId: z.number().int().nullable(),
  copiedBytes: z.number(),
}).strict().openapi('PrepareMigrationResult');
export type PrepareMigrationResult = z.infer<typeof prepareMigrationResultSchema>;
export type CenterMigrateRequest = z.infer<typeof centerMigrateRequestSchema>;

/**
 * Files one copy task moves at most: a VM's disk chain and snapshot files, a few images. The task keeps
 * its plan, its parts and each file's two digests in its checkpoint and result (each at most 64 KiB of
 * JSON): more files go in several copies.
 */
export const MAX_CENTER_COPY_FILES = 64;
/** The copy's paths together, as JSON, at most: what leaves the task's checkpoint room for its parts. */
export const MAX_CENTER_COPY_PATHS_BYTES = 16 * KiB;
/**
 * A network file copy (docs/design/nfc.md): `files` (paths in the source datastore; each lands at the
 * same path in the target) from datastore `from` to datastore `to`, each named as the center lists
 * datastores (its name, or its id when two datastores share a name).
 */
export const centerCopyRequestSchema = z.object({
  files: z.array(z.string().min(1).max(MAX_DATASTORE_PATH_BYTES)).min(1).max(MAX_CENTER_COPY_FILES)
    .refine((f) => new Set(f).size === f.length, 'a file is listed twice')
    .refine((f) => Buffer.byteLength(JSON.stringify(f), 'utf8') <= MAX_CENTER_COPY_PATHS_BYTES, `the paths must be at most ${MAX_CENTER_COPY_PATHS_BYTES} bytes of JSON together (copy more files in several copies)`),
  from: datastoreRefSchema,
  to: datastoreRefSchema,
  /** The host that copies (it must mount `from`); without, the center picks one. */
  via: nameSchema.optional(),
  streams: z.number().int().min(1).max(MAX_COPY_STREAMS).optional(),
  /** A bandwidth cap for the copy, bytes per second. */
  rateBytesPerSec: z.number().int().min(MIN_RATE_BYTES_PER_SEC).max(Number.MAX_SAFE_INTEGER).optional(),
  /** false: in the remote form, connect the two hosts directly instead of over the copy's own virtual path. */
  isolation: z.boolean().optional(),
}).strict().openapi('CenterCopy');
export type CenterCopyRequest = z.infer<typeof centerCopyRequestSchema>;

/** `ferry task move`: hand a running copy to `to` (it must mount the source and be in service), or to a host the center picks. */
export const taskMoveRequestSchema = z.object({ to: nameSchema.optional() }).strict().openapi('TaskMove');
export type TaskMoveRequest = z.infer<typeof taskMoveRequestSchema>;

export const maintenanceRequestSchema = z.object({ action: z.enum(['enter', 'exit']) }).strict().openapi('Maintenance');
export type MaintenanceRequest = z.infer<typeof maintenanceRequestSchema>;
export const emptyBodySchema = z.object({}).strict();

// ---- routes ---------------------------------------------------------------------------------

const json = <S extends z.ZodType>(schema: S, description: string) => ({ content: { 'application/json': { schema } }, description });
const body = <S extends z.ZodType>(schema: S) => ({ body: { content: { 'application/json': { schema } }, required: true } });
const ERROR_DESCRIPTIONS = {
  400: 'invalid request', 401: 'missing, wrong, revoked or expired token, credential or client certificate', 404: 'no such host, VM, task or route',
  409: 'conflicts with the current state', 413: 'request body too large', 500: 'internal or store error', 503: 'store unavailable',
} as const;
const errors = (...statuses: (keyof typeof ERROR_DESCRIPTIONS)[]) =>
  Object.fromEntries(statuses.map((s) => [s, json(errorBodySchema, ERROR_DESCRIPTIONS[s])])) as Record<number, ReturnType<typeof json<typeof errorBodySchema>>>;
const hostParams = z.object({ name: nameSchema.openapi({ param: { name: 'name', in: 'path' } }) });
const brokeredIncomingParams = hostParams.extend({
  path: pathIdSchema.openapi({ param: { name: 'path', in: 'path' } }),
  id: migrationIdSchema.openapi({ param: { name: 'id', in: 'path' } }),
});
const taskParams = z.object({ id: taskIdSchema.openapi({ param: { name: 'id', in: 'path' }, type: 'integer' }) });
const P = CENTER_API_PREFIX;

export const centerRoutes = {
  health: createRoute({ method: 'get', path: `${P}/health`, summary: 'liveness (no token needed)', responses: { 200: json(healthSchema, 'alive'), ...errors(503) } }),
  ca: createRoute({
    method: 'get', path: `${P}/ca`, summary: 'the center\'s CA certificate (no token needed: compare its fingerprint before trusting it)',
    responses: { 200: json(caSchema, 'the CA'), ...errors(503) },
  }),
  listSites: createRoute({ method: 'get', path: `${P}/sites`, request: { query: siteListQuerySchema }, responses: { 200: json(siteListSchema, 'a page of sites'), ...errors(400, 401, 503) } }),
  getSite: createRoute({ method: 'get', path: `${P}/sites/{name}`, request: { params: hostParams }, responses: { 200: json(siteViewSchema, 'the site'), ...errors(400, 401, 404, 503) } }),
  setSiteSubnet: createRoute({
    method: 'put', path: `${P}/sites/{name}/subnet`, summary: 'set the virtual subnet the site\'s hosts take their path addresses from (refused while the site has live paths)',
    request: { params: hostParams, ...body(siteSubnetRequestSchema) }, responses: { 200: json(siteViewSchema, 'the site'), ...errors(400, 401, 404, 409, 503) },
  }),
  listHosts: createRoute({ method: 'get', path: `${P}/hosts`, request: { query: hostListQuerySchema }, responses: { 200: json(hostListSchema, 'a page of hosts'), ...errors(400, 401, 503) } }),
  getHost: createRoute({ method: 'get', path: `${P}/hosts/{name}`, request: { params: hostParams }, responses: { 200: json(hostDetailSchema, 'the host'), ...errors(400, 401, 404, 503) } }),
  listVms: createRoute({ method: 'get', path: `${P}/vms`, request: { query: vmListQuerySchema }, responses: { 200: json(vmListSchema, 'a page of VMs'), ...errors(400, 401, 503) } }),
  getVm: createRoute({ method: 'get', path: `${P}/vms/{name}`, request: { params: hostParams }, responses: { 200: json(vmViewSchema, 'the VM'), ...errors(400, 401, 404, 503) } }),
  listTasks: createRoute({ method: 'get', path: `${P}/tasks`, summary: 'oldest first (page on with after = the last id)', request: { query: taskListQuerySchema }, responses: { 200: json(taskListSchema, 'a page of tasks'), ...errors(400, 401, 503) } }),
  getTask: createRoute({ method: 'get', path: `${P}/tasks/{id}`, request: { params: taskParams }, responses: { 200: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 503) } }),
  cancelTask: createRoute({
    method: 'post', path: `${P}/tasks/{id}/cancel`, summary: 'cancel in any state (a running task stops at its next step; a finished one is answered as it is)',
    request: { params: taskParams }, responses: { 200: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 503) },
  }),
  metrics: createRoute({
    method: 'get', path: '/metrics', summary: 'Prometheus metrics (text exposition format 0.0.4; an API token is needed here too)',
    responses: { 200: { content: { 'text/plain': { schema: z.string() } }, description: 'metrics' }, ...errors(401, 500, 503) },
  }),
  events: createRoute({
    method: 'get', path: `${P}/events`, summary: 'server-sent events: replay after Last-Event-ID, then live',
    request: { query: eventsQuerySchema, headers: eventsHeadersSchema },
    responses: { 200: { content: { 'text/event-stream': { schema: z.string() } }, description: 'event stream; each event\'s data is a CenterEvent' }, ...errors(400, 401, 503) },
  }),
  createJoinToken: createRoute({
    method: 'post', path: `${P}/join-tokens`, summary: 'a one-time token a new host joins with', request: body(joinTokenRequestSchema),
    responses: { 201: json(joinTokenSchema, 'the token (shown once)'), ...errors(400, 401, 413, 503) },
  }),
  joinHost: createRoute({
    method: 'post', path: `${P}/hosts/join`, summary: 'a host presents a join token (spent by this call) and a CSR, and receives its own credential and certificate', request: body(joinRequestSchema),
    responses: { 201: json(joinResultSchema, 'joined'), ...errors(400, 401, 413, 503) },
  }),
  createVm: createRoute({
    method: 'post', path: `${P}/vms`, summary: 'create a VM (on a chosen host or one the center places): answers its task', request: body(centerCreateVmRequestSchema),
    responses: { 202: json(taskViewSchema, 'the task creating it'), ...errors(400, 401, 409, 413, 503) },
  }),
  startVm: createRoute({
    method: 'post', path: `${P}/vms/{name}/start`, summary: 'start a VM: answers its task', request: { params: hostParams },
    responses: { 202: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 503) },
  }),
  stopVm: createRoute({
    method: 'post', path: `${P}/vms/{name}/stop`, summary: 'stop a VM: answers its task', request: { params: hostParams },
    responses: { 202: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 503) },
  }),
  deleteVm: createRoute({
    method: 'delete', path: `${P}/vms/{name}`, summary: 'stop and remove a VM from its host and the inventory: answers its task', request: { params: hostParams },
    responses: { 202: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 503) },
  }),
  vmConsole: createRoute({
    method: 'get', path: `${P}/vms/{name}/console`, summary: 'the VM\'s console text, from its host; follow=1 streams it', request: { params: hostParams, query: z.object({ follow: z.enum(['0', '1']).optional() }).strict() },
    responses: { 200: { content: { 'text/plain': { schema: z.string() } }, description: 'console text' }, ...errors(400, 401, 404, 409, 503) },
  }),
  vmDiskChain: createRoute({
    method: 'get', path: `${P}/vms/{name}/disk/chain`, summary: 'the VM\'s disk chain (top first, with CIDs) and any disk operation in progress, from its host', request: { params: hostParams },
    responses: { 200: json(diskChainSchema, 'the chain'), ...errors(400, 401, 404, 409, 503) },
  }),
  migrateVm: createRoute({
    method: 'post', path: `${P}/vms/{name}/migrate`, summary: 'live-migrate a VM (queued while budgets are spent): answers its task',
    request: { params: hostParams, ...body(centerMigrateRequestSchema) },
    responses: { 202: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 413, 503) },
  }),
  prepareMigration: createRoute({
    method: 'post', path: `${P}/vms/{name}/prepare-migration`, summary: 'snapshot a running VM\'s disk and copy its read-only bases to a datastore of another site ahead of a migration: answers its task',
    request: { params: hostParams, ...body(centerPrepareMigrationRequestSchema) },
    responses: { 202: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 409, 503) },
  }),
  createCopy: createRoute({
    method: 'post', path: `${P}/copies`, summary: 'copy files from one datastore to another through a host (handed to another host when that one is drained or on request): answers its task',
    request: body(centerCopyRequestSchema), responses: { 202: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 409, 413, 503) },
  }),
  moveTask: createRoute({
    method: 'post', path: `${P}/tasks/{id}/move`, summary: 'hand a running copy to another host (one that mounts its source and is in service): answers the task, the hand-off follows',
    request: { params: taskParams, ...body(taskMoveRequestSchema) }, responses: { 202: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 409, 503) },
  }),
  maintenance: createRoute({
    method: 'post', path: `${P}/hosts/{name}/maintenance`, summary: 'enter (evacuate every running VM by live migration) or exit maintenance: answers the task',
    request: { params: hostParams, ...body(maintenanceRequestSchema) },
    responses: { 202: json(taskViewSchema, 'the task'), ...errors(400, 401, 404, 409, 503) },
  }),
  brokeredIncoming: createRoute({
    method: 'get', path: `${P}/hosts/{name}/paths/{path}/incoming/{id}`,
    summary: 'the source host of a migration over a virtual path asks what its target recorded (the center asks the target); host credential and certificate only',
    request: { params: brokeredIncomingParams }, responses: { 200: json(incomingStatusSchema, 'what the target recorded'), ...errors(400, 401, 404, 503) },
  }),
  heartbeat: createRoute({
    method: 'post', path: `${P}/hosts/{name}/heartbeat`, summary: 'a host reports its capacity, datastores and VMs (its own credential and client certificate only)',
    request: { params: hostParams, ...body(heartbeatRequestSchema) },
    responses: { 200: json(heartbeatResultSchema, 'recorded'), ...errors(400, 401, 404, 413, 503) },
  }),
} as const;

export type CenterRoute = (typeof centerRoutes)[keyof typeof centerRoutes];
