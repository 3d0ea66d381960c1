/**
 * The host agent's control API, version 1: every route, request and response declared once. The
 * host's HTTP app (src/host/app.ts) serves exactly these routes and validates requests with these
 * schemas, the OpenAPI document (GET /v1/openapi.json) is generated from them, and the one typed
 * client (./host-client.ts) builds its URLs from them and validates what it receives with them.
 *
 * Errors are `{ error: { code, message, details? } }` with the stable codes of src/lib/errors.ts;
 * the HTTP status of each code comes from ./http-status.ts.
 */
import { createRoute, z } from '@hono/zod-openapi';
import { MAX_COPY_FILES } from '../nfc/plan.js';
import { migrationOptionsSchema } from '../migration/options.js';
import { migrationJobStatusSchema, migrationProgressSchema, migrationRecordSchema, type MigrationJobStatus } from '../migration/record.js';
import { incomingOutcomeSchema } from '../migration/peer.js';
import { PATH_DRIVER_KINDS, PATH_ID_PATTERN, pathSpecSchema } from '../dataplane/path/spec.js';
import { MAX_HANG_TIMEOUT_MS, MIN_HANG_TIMEOUT_MS } from '../vmm/config.js';
import {
  consolidateResultSchema, diskChainSchema, revertRequestSchema, revertResultSchema, snapshotResultSchema,
} from './disk-v1.js';
import {
  copyJournalQuerySchema, copyJournalViewSchema, copyParams, copyStatusSchema, copyTicketRequestSchema, copyTicketSchema, startCopyRequestSchema,
} from './copy-v1.js';
import { deleteSeedsQuerySchema, deleteSeedsResultSchema, putSeedsRequestSchema, seedsViewSchema } from './seed-v1.js';
import { MAX_DATASTORE_PATH_BYTES, MAX_IMAGE_BYTES, VM_NAME_PATTERN, cmdlineSchema, granularitySchema, vcpusSchema, vmNameSchema as limitVmNameSchema } from '../lib/limits.js';

export const HOST_API_VERSION = 'v1';
export const HOST_API_PREFIX = `/${HOST_API_VERSION}`;
/** Largest request body: a guest image of MAX_IMAGE_BYTES base64-encoded (4/3) in JSON, plus 64 KiB for the rest. */
export const MAX_CREATE_BODY_BYTES = Math.ceil(MAX_IMAGE_BYTES / 3) * 4 + 64 * 1024;
/** Every other request is a few fields. */
export const MAX_SMALL_BODY_BYTES = 64 * 1024;
/**
 * A copy's start or ticket request lists its plan: up to MAX_COPY_FILES files, each a path of up to
 * MAX_DATASTORE_PATH_BYTES and two numbers (128 bytes of JSON around them), plus 64 KiB for the rest.
 */
export const MAX_COPY_BODY_BYTES = MAX_COPY_FILES * (MAX_DATASTORE_PATH_BYTES + 128) + 64 * 1024;

// ---- shared pieces --------------------------------------------------------------------------

export const errorBodySchema = z.object({
  error: z.object({
    code: z.string().openapi({ description: 'stable error code (src/lib/errors.ts)' }),
    message: z.string(),
    details: z.record(z.string(), z.unknown()).optional(),
  }),
}).openapi('Error');
export type ErrorBody = z.infer<typeof errorBodySchema>;

/** VM names: the one rule of src/lib/limits.ts (data directory, snapshot format and protocol agree). */
export const vmNameSchema = limitVmNameSchema();
/** Migration ids are 128-bit random values in hex. */
export const migrationIdSchema = z.string().regex(/^[0-9a-f]{32}$/, 'must be 32 lowercase hex digits');

const vmParams = z.object({ name: vmNameSchema.openapi({ param: { name: 'name', in: 'path' } }) });
/** A datastore (this host's name for it) and a VM whose seeds it holds. */
const seedParams = z.object({ name: vmNameSchema.openapi({ param: { name: 'name', in: 'path' } }), vm: vmNameSchema.openapi({ param: { name: 'vm', in: 'path' } }) });
const migrationParams = z.object({ id: migrationIdSchema.openapi({ param: { name: 'id', in: 'path' } }) });
export const pathIdSchema = z.string().regex(PATH_ID_PATTERN, 'must be 32 lowercase hex digits');
const pathParams = z.object({ id: pathIdSchema.openapi({ param: { name: 'id', in: 'path' } }) });

export const vmStateSchema = z.enum(['defined', 'created', 'running', 'paused', 'halted', 'crashed', 'stopped']);

export const crashInfoSchema = z.object({
  reason: z.enum(['trap', 'panic', 'fault', 'abi', 'internal', 'hung']),
  vcpu: z.number().int(),
  message: z.string(),
});

export const vcpuStatsSchema = z.object({
  vcpu: z.number().int(),
  state: z.number().int().openapi({ description: 'VcpuState (src/vmm/control.ts)' }),
  steps: z.number(),
  units: z.number(),
  stepMs: z.number(),
  maxStepMs: z.number(),
  throttledMs: z.number(),
  budget: z.number(),
});

export const vmViewSchema = z.object({
  name: z.string(),
  state: vmStateSchema,
  /** The operation that owns the VM now (other verbs get BUSY), or null. */
  owner: z.string().nullable(),
  config: z.object({ memoryBytes: z.number().int(), vcpus: z.number().int(), granularityBytes: z.number().int(), cmdline: z.string() }),
  crash: crashInfoSchema.nullable(),
  vcpus: z.array(vcpuStatsSchema),
  lastMigration: migrationRecordSchema.nullable(),
  /** The VM's disk: a VMDK on one of the host's datastores, with its content IDs. */
  disk: z.object({
    datastore: z.string(), path: z.string(), capacityBytes: z.number(), cid: z.string(), parentCid: z.string(),
    /** False while its lease is handed to a migration target (cid and parentCid are empty then). */
    attached: z.boolean(),
  }).nullable(),
}).openapi('Vm');
export type VmView = z.infer<typeof vmViewSchema>;

export const hostInfoSchema = z.object({
  name: z.string(),
  /** Random per run of the host; the owner id in its disk leases. */
  hostId: z.string(),
  api: z.literal(HOST_API_VERSION),
  migrationPort: z.number().int(),
  /** The network file copy receiver's port (remote form; its tickets come from POST /v1/copies/incoming). */
  copyPort: z.number().int(),
  memoryLimitBytes: z.number(),
  memoryCommittedBytes: z.number(),
  vms: z.number().int(),
}).openapi('Host');
export type HostInfo = z.infer<typeof hostInfoSchema>;

export const datastoreViewSchema = z.object({
  name: z.string(),
  /** The datastore's identity: two hosts showing the same id mount the same store (a shared datastore). */
  id: z.string(),
  /** The directory's real path on this host. */
  path: z.string(),
  /** Bytes a writer can still allocate (statfs). */
  spaceLeftBytes: z.number().int().nonnegative(),
  totalBytes: z.number().int().nonnegative(),
}).openapi('Datastore');
export type DatastoreView = z.infer<typeof datastoreViewSchema>;

/**
 * POST /v1/datastores/{name}/stat: the size and modification time of files of a datastore, read-only —
 * what the center records in a network file copy's plan (the copying host checks the source against it).
 * At most MAX_COPY_FILES paths: one copy's worth.
 */
export const datastoreStatRequestSchema = z.object({
  paths: z.array(z.string().min(1).max(MAX_DATASTORE_PATH_BYTES)).min(1).max(MAX_COPY_FILES),
}).strict().openapi('DatastoreStatRequest');
export const datastoreFileStatSchema = z.object({
  path: z.string(),
  kind: z.enum(['file', 'directory', 'symlink', 'other']),
  sizeBytes: z.number().int().nonnegative(),
  modifiedMs: z.number().nonnegative(),
}).openapi('DatastoreFileStat');
export type DatastoreFileStat = z.infer<typeof datastoreFileStatSchema>;

export const createVmRequestSchema = z.object({
  name: vmNameSchema,
  imageBase64: z.string().min(8),
  memoryBytes: z.number().int().positive(),
  vcpus: vcpusSchema().optional(),
  granularityBytes: granularitySchema().optional(),
  cmdline: cmdlineSchema().optional(),
  hangTimeoutMs: z.number().min(MIN_HANG_TIMEOUT_MS).max(MAX_HANG_TIMEOUT_MS).optional(),
  /**
   * A disk on one of the host's datastores: with sizeBytes a new VMDK of that size is created (never
   * over an existing file); without, the existing disk at path is attached. Its lease is held while
   * the VM is defined on this host.
   */
  disk: z.object({
    datastore: z.string().min(1),
    path: z.string().min(1),
    sizeBytes: z.number().int().positive().multipleOf(512).optional(),
  }).strict().optional(),
  start: z.boolean().optional(),
}).strict().openapi('CreateVm');
export type CreateVmRequest = z.infer<typeof createVmRequestSchema>;

export const pauseResultSchema = vmViewSchema.extend({ pauseLatencyMs: z.number() }).openapi('Paused');
export type PauseResultView = z.infer<typeof pauseResultSchema>;

export const verifyResultSchema = z.object({
  name: z.string(),
  state: vmStateSchema,
  /** Violations the guest's own self-check found (0: intact), null if the guest has none. */
  selfcheck: z.number().int().nullable(),
  /** The guest's own record of its longest stall since boot (includes every migration's downtime). */
  guestMaxClockGapMs: z.number().nullable(),
  digest: z.string(),
  claimedPages: z.number().int(),
}).openapi('Verify');
export type VerifyResult = z.infer<typeof verifyResultSchema>;

export const deleteResultSchema = z.object({ name: z.string(), deleted: z.literal(true) });

export const ticketSchema = z.object({
  migrationId: migrationIdSchema,
  ticket: z.string().regex(/^[0-9a-f]{64}$/),
  port: z.number().int().min(1).max(65535),
  expiresInMs: z.number().int().positive(),
}).openapi('Ticket');
export type TicketView = z.infer<typeof ticketSchema>;

/** Datastores of a target the center lists for a source, at most (a host mounts a handful). */
export const MAX_TARGET_DATASTORES = 256;

/**
 * A migration over the operation's virtual path (ARCHITECTURE.md §1.4), brokered by the center: the
 * source learns the target only by name and virtual address. The center asked the target for the
 * ticket (its port is on the target's virtual address) and for its datastores; the source asks the
 * center, not the target, what became of the migration when in doubt.
 */
export const isolatedMigrationSchema = z.object({
  pathId: pathIdSchema,
  /** The target host's name (for logs and the record). */
  target: limitVmNameSchema(),
  ticket: ticketSchema,
  targetDatastores: z.array(datastoreViewSchema).max(MAX_TARGET_DATASTORES),
}).strict().openapi('IsolatedMigration');
export type IsolatedMigration = z.infer<typeof isolatedMigrationSchema>;

export const migrateRequestSchema = z.object({
  /** The target host's control API (a direct migration); a migration over a virtual path has `isolated` instead. */
  to: z.url().optional().openapi({ description: 'target host URL (direct migrations)' }),
  isolated: isolatedMigrationSchema.optional(),
  /** Token of the target host, if it differs from this host's. */
  token: z.string().optional(),
  options: migrationOptionsSchema.optional(),
  /**
   * Where the VM's disk goes when the target does not mount its datastore: the disk is copied
   * live to this datastore of the target (path: the same as on the source unless given). Without
   * it, a VM with a disk migrates only to a host that mounts the same datastore (by id).
   */
  disk: z.object({ datastore: z.string().regex(VM_NAME_PATTERN), path: z.string().min(1).max(MAX_DATASTORE_PATH_BYTES).optional() }).strict().optional(),
  /**
   * The caller's id for the migration (32 hex digits): asking again with the id of a migration this host
   * knows answers that migration's status instead of starting another — a center that died after
   * asking finds out what became of it.
   */
  migrationId: z.string().regex(/^[0-9a-f]{32}$/, 'must be 32 lowercase hex digits').optional(),
}).strict().refine((r) => (r.to === undefined) !== (r.isolated === undefined), { path: ['to'], message: 'give exactly one of "to" (a direct migration) and "isolated" (over a virtual path)' })
  .openapi('MigrateRequest');
export type MigrateRequest = z.infer<typeof migrateRequestSchema>;

export const migrationStatusSchema = migrationJobStatusSchema.openapi('MigrationStatus');
export type MigrationStatus = MigrationJobStatus;


/** Asking for a ticket: the source may say its own id of the migration, so that the target's log lines carry it too. */
export const ticketRequestSchema = z.object({
  sourceMigrationId: migrationIdSchema.optional(),
  /** The operation's virtual path (this host's target end): the migration streams come through it, to its virtual address. */
  pathId: pathIdSchema.optional(),
}).strict().openapi('TicketRequest');
export type TicketRequest = z.infer<typeof ticketRequestSchema>;

export const incomingStatusSchema = z.object({ migrationId: z.string(), outcome: incomingOutcomeSchema }).openapi('IncomingMigration');
export type IncomingStatus = z.infer<typeof incomingStatusSchema>;

export const pathViewSchema = z.object({
  pathId: z.string(), side: z.enum(['source', 'target']), driver: z.enum(PATH_DRIVER_KINDS),
  localAddress: z.string(), peerAddress: z.string(), firstPort: z.number().int(), portCount: z.number().int(),
  expiresAtMs: z.number(), openStreams: z.number().int(),
}).openapi('Path');
export const pathDriverReportSchema = z.object({
  kind: z.enum(PATH_DRIVER_KINDS),
  /** Where peers' drivers reach this host's end of a path (its underlay address; never given to an operation). */
  endpoint: z.object({ host: z.string(), port: z.number().int() }),
}).openapi('PathDriver');
export const pathListSchema = z.object({ drivers: z.array(pathDriverReportSchema), paths: z.array(pathViewSchema) }).openapi('Paths');
export type PathListView = z.infer<typeof pathListSchema>;
export const pathRemovedSchema = z.object({ pathId: z.string(), removed: z.boolean() }).openapi('PathRemoved');
export { pathSpecSchema };

export const consoleQuerySchema = z.object({ follow: z.enum(['0', '1']).optional() });

/** Server-sent events of GET /v1/migrations/{id}/events, in order: one status, progress…, done. */
export const migrationEventSchemas = {
  status: migrationStatusSchema,
  progress: migrationProgressSchema,
  done: migrationRecordSchema,
} as const;
export type MigrationEvent =
  | { event: 'status'; data: MigrationStatus }
  | { event: 'progress'; data: z.infer<typeof migrationProgressSchema> }
  | { event: 'done'; data: z.infer<typeof migrationRecordSchema> };

// ---- routes ---------------------------------------------------------------------------------

const json = <S extends z.ZodType>(schema: S, description: string) => ({ content: { 'application/json': { schema } }, description });
const body = <S extends z.ZodType>(schema: S) => ({ body: { content: { 'application/json': { schema } }, required: true } });
const errors = (...statuses: (400 | 401 | 404 | 409 | 413 | 500 | 503 | 507)[]) =>
  Object.fromEntries(statuses.map((s) => [s, json(errorBodySchema, ERROR_DESCRIPTIONS[s])])) as Record<number, ReturnType<typeof json<typeof errorBodySchema>>>;
const ERROR_DESCRIPTIONS = {
  400: 'invalid request', 401: 'missing or wrong API token', 404: 'no such VM, migration or route',
  409: 'conflicts with the current state (VM state, BUSY, ALREADY_EXISTS, refused)', 413: 'request body too large',
  500: 'internal or storage error', 503: 'host shutting down or unreachable peer', 507: 'not enough capacity',
} as const;

export const routes = {
  getHost: createRoute({ method: 'get', path: '/v1/host', summary: 'host identity and capacity', responses: { 200: json(hostInfoSchema, 'the host'), ...errors(401) } }),
  listDatastores: createRoute({
    method: 'get', path: '/v1/datastores', summary: 'datastores this host mounts, with their space',
    responses: { 200: json(z.object({ datastores: z.array(datastoreViewSchema) }), 'the datastores'), ...errors(401, 500) },
  }),
  statDatastoreFiles: createRoute({
    method: 'post', path: '/v1/datastores/{name}/stat', summary: 'size and modification time of files of a datastore (read-only: a copy\'s plan)',
    request: { params: vmParams, ...body(datastoreStatRequestSchema) }, responses: { 200: json(z.object({ files: z.array(datastoreFileStatSchema) }), 'the files, in the order asked'), ...errors(400, 401, 404, 500) },
  }),
  listVms: createRoute({ method: 'get', path: '/v1/vms', summary: 'VMs of this host', responses: { 200: json(z.object({ vms: z.array(vmViewSchema) }), 'the VMs'), ...errors(401) } }),
  createVm: createRoute({
    method: 'post', path: '/v1/vms', summary: 'define a VM (and start it with start: true)', request: body(createVmRequestSchema),
    responses: { 201: json(vmViewSchema, 'defined'), ...errors(400, 401, 409, 413, 500, 507) },
  }),
  getVm: createRoute({ method: 'get', path: '/v1/vms/{name}', request: { params: vmParams }, responses: { 200: json(vmViewSchema, 'the VM'), ...errors(400, 401, 404) } }),
  deleteVm: createRoute({ method: 'delete', path: '/v1/vms/{name}', summary: 'remove a stopped VM and its definition', request: { params: vmParams }, responses: { 200: json(deleteResultSchema, 'deleted'), ...errors(400, 401, 404, 409) } }),
  startVm: createRoute({ method: 'post', path: '/v1/vms/{name}/start', request: { params: vmParams }, responses: { 200: json(vmViewSchema, 'running'), ...errors(400, 401, 404, 409, 500) } }),
  stopVm: createRoute({ method: 'post', path: '/v1/vms/{name}/stop', summary: 'power off', request: { params: vmParams }, responses: { 200: json(vmViewSchema, 'stopped'), ...errors(400, 401, 404, 409) } }),
  pauseVm: createRoute({ method: 'post', path: '/v1/vms/{name}/pause', request: { params: vmParams }, responses: { 200: json(pauseResultSchema, 'paused'), ...errors(400, 401, 404, 409) } }),
  resumeVm: createRoute({ method: 'post', path: '/v1/vms/{name}/resume', request: { params: vmParams }, responses: { 200: json(vmViewSchema, 'running'), ...errors(400, 401, 404, 409) } }),
  verifyVm: createRoute({
    method: 'post', path: '/v1/vms/{name}/verify', summary: 'pause briefly, run the guest self-check and digest RAM, resume', request: { params: vmParams },
    responses: { 200: json(verifyResultSchema, 'checked'), ...errors(400, 401, 404, 409) },
  }),
  vmConsole: createRoute({
    method: 'get', path: '/v1/vms/{name}/console', summary: 'the console log; follow=1 streams it', request: { params: vmParams, query: consoleQuerySchema },
    responses: { 200: { content: { 'text/plain': { schema: z.string() } }, description: 'console text' }, ...errors(400, 401, 404) },
  }),
  migrateVm: createRoute({
    method: 'post', path: '/v1/vms/{name}/migrate', summary: 'start a live migration to another host', request: { params: vmParams, ...body(migrateRequestSchema) },
    responses: { 202: json(migrationStatusSchema, 'started'), ...errors(400, 401, 404, 409) },
  }),
  getMigration: createRoute({ method: 'get', path: '/v1/migrations/{id}', request: { params: migrationParams }, responses: { 200: json(migrationStatusSchema, 'status'), ...errors(400, 401, 404) } }),
  migrationEvents: createRoute({
    method: 'get', path: '/v1/migrations/{id}/events', summary: 'server-sent events: status, progress…, done', request: { params: migrationParams },
    responses: { 200: { content: { 'text/event-stream': { schema: z.string() } }, description: 'event stream' }, ...errors(400, 401, 404) },
  }),
  cancelMigration: createRoute({
    method: 'delete', path: '/v1/migrations/{id}', summary: 'cancel (before the commit the VM keeps running here)', request: { params: migrationParams },
    responses: { 202: json(migrationStatusSchema, 'cancelling'), ...errors(400, 401, 404) },
  }),
  createTicket: createRoute({
    method: 'post', path: '/v1/migrations/incoming', summary: 'expect an incoming migration: a one-time ticket and the port to dial', request: body(ticketRequestSchema),
    responses: { 201: json(ticketSchema, 'ticket'), ...errors(400, 401, 409) },
  }),
  getIncoming: createRoute({
    method: 'get', path: '/v1/migrations/incoming/{id}', summary: 'what became of an incoming migration (answers an error, never "unknown", when its record cannot be read)',
    request: { params: migrationParams }, responses: { 200: json(incomingStatusSchema, 'outcome'), ...errors(400, 401, 500) },
  }),
  listPaths: createRoute({
    method: 'get', path: '/v1/paths', summary: 'this host\'s path drivers and the virtual paths open now (no secrets, no underlay addresses of peers)',
    responses: { 200: json(pathListSchema, 'drivers and paths'), ...errors(401) },
  }),
  putPath: createRoute({
    method: 'put', path: '/v1/paths/{id}', summary: 'open (or renew) the virtual path of one mobility operation; sent by the center',
    request: { params: pathParams, ...body(pathSpecSchema) }, responses: { 200: json(pathViewSchema, 'open'), ...errors(400, 401, 409, 500) },
  }),
  deletePath: createRoute({
    method: 'delete', path: '/v1/paths/{id}', summary: 'remove a virtual path and everything it made (idempotent)',
    request: { params: pathParams }, responses: { 200: json(pathRemovedSchema, 'removed, or was not open'), ...errors(400, 401, 500) },
  }),
  metrics: createRoute({
    method: 'get', path: '/metrics', summary: 'Prometheus metrics (text exposition format 0.0.4; the token is needed here too)',
    responses: { 200: { content: { 'text/plain': { schema: z.string() } }, description: 'metrics' }, ...errors(401) },
  }),
  // Network file copies (./copy-v1.ts, docs/design/nfc.md).
  startCopy: createRoute({
    method: 'post', path: '/v1/copies', summary: 'copy files from a datastore of this host, from the target\'s durable boundary on (asking again with the same copy id and epoch answers its status)',
    request: body(startCopyRequestSchema), responses: { 202: json(copyStatusSchema, 'started'), ...errors(400, 401, 404, 409, 500, 507) },
  }),
  getCopy: createRoute({ method: 'get', path: '/v1/copies/{id}', summary: 'this host\'s part of a copy', request: { params: copyParams }, responses: { 200: json(copyStatusSchema, 'status'), ...errors(400, 401, 404) } }),
  copyEvents: createRoute({
    method: 'get', path: '/v1/copies/{id}/events', summary: 'server-sent events: status, progress…, done', request: { params: copyParams },
    responses: { 200: { content: { 'text/event-stream': { schema: z.string() } }, description: 'event stream' }, ...errors(400, 401, 404) },
  }),
  stopCopy: createRoute({
    method: 'post', path: '/v1/copies/{id}/stop', summary: 'hand-off: stop at the next boundary the target acknowledges (the record says which)', request: { params: copyParams },
    responses: { 202: json(copyStatusSchema, 'stopping'), ...errors(400, 401, 404) },
  }),
  cancelCopy: createRoute({
    method: 'delete', path: '/v1/copies/{id}', summary: 'stop at once (the target keeps its journal: the copy can still resume)', request: { params: copyParams },
    responses: { 202: json(copyStatusSchema, 'cancelling'), ...errors(400, 401, 404) },
  }),
  createCopyTicket: createRoute({
    method: 'post', path: '/v1/copies/incoming', summary: 'remote form: receive a copy into a datastore of this host (a ticket and the port to dial)',
    request: body(copyTicketRequestSchema), responses: { 201: json(copyTicketSchema, 'ticket'), ...errors(400, 401, 404, 409, 507) },
  }),
  getCopyJournal: createRoute({
    method: 'get', path: '/v1/copies/{id}/journal', summary: 'the durable boundary a target datastore of this host holds for a copy',
    request: { params: copyParams, query: copyJournalQuerySchema }, responses: { 200: json(copyJournalViewSchema, 'journal'), ...errors(400, 401, 404, 500) },
  }),
  discardCopyJournal: createRoute({
    method: 'delete', path: '/v1/copies/{id}/journal', summary: 'give a copy up on a target datastore of this host: staging files and journal removed (finished files stay)',
    request: { params: copyParams, query: copyJournalQuerySchema }, responses: { 200: json(copyJournalViewSchema, 'discarded'), ...errors(400, 401, 404, 409, 500) },
  }),
  // Seeds: base disks copied ahead of a cross-site migration (./seed-v1.ts, docs/design/cross-site.md).
  putSeeds: createRoute({
    method: 'put', path: '/v1/datastores/{name}/seeds/{vm}', summary: 'record the base disks of a VM seeded on this datastore (each checked against its file: size, CID, parent CID, capacity)',
    request: { params: seedParams, ...body(putSeedsRequestSchema) }, responses: { 200: json(seedsViewSchema, 'recorded'), ...errors(400, 401, 404, 409, 500) },
  }),
  getSeeds: createRoute({
    method: 'get', path: '/v1/datastores/{name}/seeds/{vm}', summary: 'the seeds this datastore holds for a VM',
    request: { params: seedParams }, responses: { 200: json(seedsViewSchema, 'the manifest'), ...errors(400, 401, 404, 409, 500) },
  }),
  deleteSeeds: createRoute({
    method: 'delete', path: '/v1/datastores/{name}/seeds/{vm}', summary: 'forget a VM\'s seeds on this datastore (files=true: also remove the seed files no open chain holds)',
    request: { params: seedParams, query: deleteSeedsQuerySchema }, responses: { 200: json(deleteSeedsResultSchema, 'forgotten'), ...errors(400, 401, 404, 409, 500) },
  }),
  // Disk snapshots (./disk-v1.ts, docs/design/disk-snapshots.md).
  snapshotVm: createRoute({
    method: 'post', path: '/v1/vms/{name}/snapshots', summary: 'snapshot the VM\'s disk: the top becomes read-only, a new delta takes the writes (a running VM pauses briefly)',
    request: { params: vmParams }, responses: { 201: json(snapshotResultSchema, 'snapshot taken'), ...errors(400, 401, 404, 409, 500) },
  }),
  diskChain: createRoute({
    method: 'get', path: '/v1/vms/{name}/disk/chain', summary: 'the VM\'s disk chain, top first, with CIDs, and the disk operation running on it',
    request: { params: vmParams }, responses: { 200: json(diskChainSchema, 'the chain'), ...errors(400, 401, 404, 409, 500) },
  }),
  revertVm: createRoute({
    method: 'post', path: '/v1/vms/{name}/revert', summary: 'go back to a snapshot (default: the newest); a running VM is restarted on it',
    request: { params: vmParams, ...body(revertRequestSchema) }, responses: { 200: json(revertResultSchema, 'reverted'), ...errors(400, 401, 404, 409, 500) },
  }),
  consolidateVm: createRoute({
    method: 'post', path: '/v1/vms/{name}/consolidate', summary: 'merge the top delta into its parent (live if the VM runs); answers when done',
    request: { params: vmParams }, responses: { 200: json(consolidateResultSchema, 'consolidated'), ...errors(400, 401, 404, 409, 500) },
  }),
} as const;

export const OPENAPI_PATH = '/v1/openapi.json';
export const OPENAPI_INFO = { title: 'Ferry host agent API', version: HOST_API_VERSION } as const;
