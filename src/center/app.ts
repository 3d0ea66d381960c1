/**
 * The center's HTTP app: the routes of src/api/center-v1.ts over the store, the auth checks and the
 * inventory. A `(Request) => Response` function (Hono): tests may call it without sockets, the center
 * serves it on node:http (./center.ts).
 *
 * Every request is authenticated before its body is read (an API token; on the heartbeat route a host
 * credential and the TLS client certificate issued with it, for that host only), except health, the
 * CA certificate, the OpenAPI document and join (whose token is in the body). Bodies are bounded before they are read, every input is validated by the route's
 * schemas, every list is a bounded page, and every error leaves as `{ error: { code, message } }`.
 */
import { OpenAPIHono } from '@hono/zod-openapi';
import { except } from 'hono/combine';
import { stream } from 'hono/streaming';
import type { Context } from 'hono';
import { IncomingMessage } from 'node:http';
import { TLSSocket } from 'node:tls';
import { FerryError } from '../lib/errors.js';
import {
  CENTER_API_VERSION, CENTER_OPENAPI_INFO, CENTER_OPENAPI_PATH, DEFAULT_JOIN_TOKEN_TTL_MS, MAX_CENTER_BODY_BYTES, MAX_HEARTBEAT_BODY_BYTES,
  EVENTS_LOST_KIND, MAX_PAGE_LIMIT, centerRoutes, type CenterEvent, type EventsLostPayload, type CenterHostView, type CenterTaskView, type CenterVmView,
} from '../api/center-v1.js';
import { limitBody, onAppError, sendError, validationHook } from '../api/http-errors.js';
import { encodeSseWithId } from '../api/sse.js';
import { MAX_EVENTS_PAGE, type Host, type JsonValue, type StoredEvent, type Task, type Vm } from './store/model.js';
import type { CenterStore } from './store/store.js';
import type { CenterAuth, PeerCertificate } from './auth.js';
import type { CenterCa } from './ca.js';
import type { EventWakeups } from './events.js';
import type { Inventory } from './inventory.js';
import { siteViews } from './sites.js';
import { checkSite } from './site-placement.js';
import { checkPrepareRequest } from './tasks/prepare-plan.js';
import type { HostControl } from './host-control.js';
import { TASK_KINDS, hostSubject, vmSubject } from './tasks/kinds.js';
import { chooseCopier, copierCandidates, copyJournalSchema, enqueueCopy } from './tasks/copy-plan.js';
import type { CenterMetrics } from './metrics.js';
import type { DiskChainView } from '../api/disk-v1.js';
import { countRequests } from '../api/http-metrics.js';
import { isWebUiPath, mountWebUi } from './web-ui.js';

/** Concurrent event streams one center serves: each holds a connection and polls the store. */
export const MAX_EVENT_STREAMS = 256;
/** A stream with nothing to say sends a comment this often, so a dead client is noticed and proxies keep it open. */
export const SSE_KEEPALIVE_MS = 15_000;
/** Default fallback poll of an event stream for events written elsewhere (another center, a task worker). */
export const DEFAULT_EVENT_POLL_MS = 1000;

export interface CenterAppDeps {
  readonly store: CenterStore;
  readonly auth: CenterAuth;
  readonly ca: CenterCa;
  readonly inventory: Inventory;
  readonly wakeups: EventWakeups;
  readonly heartbeatIntervalMs: number;
  readonly hostControl: HostControl;
  readonly eventPollMs?: number;
  /** Aborted when the center shuts down: event streams end. */
  readonly shutdown: AbortSignal;
  readonly metrics: CenterMetrics;
  /** Which hosts a mobility operation's path joins (the broker answers only the path's source host). */
  readonly pathHosts: (pathId: string) => Promise<{ readonly source: string; readonly target: string } | null>;
}

/** How long the broker waits for a target's answer about an incoming migration (the source asks again). */
export const BROKER_TIMEOUT_MS = 5_000;

const P = `/api/${CENTER_API_VERSION}`;
const OPEN_PATHS: ReadonlySet<string> = new Set([centerRoutes.health.path, centerRoutes.ca.path, CENTER_OPENAPI_PATH, centerRoutes.joinHost.path]);
const NO_PEER: PeerCertificate = { presented: false, authorized: false, authorizationError: null, subject: '', fingerprint: '' };

/**
 * The TLS client certificate of a request, read off its socket (served by @hono/node-server, the
 * request's IncomingMessage is in the context's env); none when the app is called without TLS.
 */
function peerOf(c: { readonly env: unknown }): PeerCertificate {
  const env: unknown = c.env;
  const incoming: unknown = typeof env === 'object' && env !== null && 'incoming' in env ? env.incoming : undefined;
  const socket = incoming instanceof IncomingMessage ? incoming.socket : undefined;
  if (!(socket instanceof TLSSocket)) return NO_PEER;
  const cert = socket.getPeerX509Certificate();
  if (cert === undefined) return NO_PEER;
  // node:tls types it as an Error; at run time it is the OpenSSL verdict's code, as a string.
  const why: unknown = socket.authorizationError;
  return {
    presented: true, authorized: socket.authorized, authorizationError: typeof why === 'string' ? why : why instanceof Error ? why.message : null,
    subject: cert.subject, fingerprint: cert.fingerprint256,
  };
}
/** Routes a host calls with its own credential and certificate: heartbeats (POST) and the migration broker (GET). */
const HOST_LINK_PATHS = { POST: /^\/api\/v1\/hosts\/([^/]+)\/heartbeat$/, GET: /^\/api\/v1\/hosts\/([^/]+)\/paths\/[^/]+\/incoming\/[^/]+$/ } as const;

const hostView = (h: Host): CenterHostView => ({
  name: h.name, site: h.site, url: h.url, state: h.state, capacity: { ...h.capacity }, lastHeartbeatAtMs: h.lastHeartbeatAtMs,
  createdAtMs: h.createdAtMs, updatedAtMs: h.updatedAtMs,
});
const vmView = (v: Vm): CenterVmView => ({ name: v.name, host: v.host, state: v.state, config: v.config, disks: v.disks, createdAtMs: v.createdAtMs, updatedAtMs: v.updatedAtMs });
const taskView = (t: Task): CenterTaskView => ({
  id: t.id, kind: t.kind, target: t.target, state: t.state, phase: t.phase, progress: t.progress, waitingReason: t.waitingReason,
  requestedBy: t.requestedBy, params: t.params, createdAtMs: t.createdAtMs, startedAtMs: t.startedAtMs, endedAtMs: t.endedAtMs,
  result: t.result, error: t.error === null ? null : { ...t.error }, attempts: t.attempts, cancelRequested: t.cancelRequested, plan: t.plan,
  moveRequest: t.moveRequest === null ? null : { ...t.moveRequest },
});
const eventView = (e: StoredEvent): CenterEvent => ({ id: e.id, atMs: e.atMs, kind: e.kind, subject: e.subject, payload: e.payload });

/** A validated request as stored JSON (optional fields that are absent are left out). */
const asJson = (value: object): JsonValue => JSON.parse(JSON.stringify(value)) as JsonValue;

/** The cursor for the next page: the last key of a full page, null when there is no more. */
function nextKey<T, K>(page: readonly T[], limit: number, key: (x: T) => K): K | null {
  const last = page[page.length - 1];
  return page.length === limit && last !== undefined ? key(last) : null;
}

export function buildCenterApp(d: CenterAppDeps): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  const pollMs = d.eventPollMs ?? DEFAULT_EVENT_POLL_MS;
  // Who made each request ("token:admin"): recorded on what it asks for (cancel now, tasks later).
  const actors = new WeakMap<Request, string>();
  let streams = 0;

  app.onError(onAppError);
  // details.route false: "no such route", told apart from "no such host" without reading the message.
  app.notFound((c) => sendError(c, new FerryError('NOT_FOUND', `no route ${c.req.method} ${c.req.path}; the API is under ${P}/ (see ${CENTER_OPENAPI_PATH})`, { route: false })));

  // First: it counts what the auth check refuses too.
  app.use('*', countRequests(d.metrics.httpRequests));
  app.use('*', async (c, next) => {
    const path = c.req.path;
    // The web UI's pages have their own session check (./web-ui.ts); the API stays bearer-only.
    if (!OPEN_PATHS.has(path) && !isWebUiPath(path)) {
      const header = c.req.header('authorization');
      const method = c.req.method;
      const hb = method === 'POST' || method === 'GET' ? HOST_LINK_PATHS[method].exec(path) : null;
      if (hb !== null) {
        let host: string;
        try { host = decodeURIComponent(hb[1] ?? ''); } catch { throw new FerryError('UNAUTHORIZED', 'malformed host name in the path'); }
        const credential = await d.auth.authenticateHost(header, host);
        await d.auth.authenticateHostCertificate(peerOf(c), host, credential);
      } else {
        const credential = await d.auth.authenticate(header, 'api');
        actors.set(c.req.raw, `token:${credential.subject}`);
      }
    }
    await next();
  });
  app.use(centerRoutes.heartbeat.path.replace('{name}', ':name'), limitBody(MAX_HEARTBEAT_BODY_BYTES));
  app.use('*', except(centerRoutes.heartbeat.path.replace('{name}', ':name'), limitBody(MAX_CENTER_BODY_BYTES)));

  app.openapi(centerRoutes.health, (c) => c.json({ ok: true as const, api: CENTER_API_VERSION }, 200));
  app.openapi(centerRoutes.ca, (c) => c.json({ certificate: d.ca.certPem, fingerprint: d.ca.fingerprint }, 200));

  app.openapi(centerRoutes.listSites, async (c) => {
    const q = c.req.valid('query');
    const limit = q.limit ?? MAX_PAGE_LIMIT;
    const page = await d.store.listSites({ limit, ...(q.after !== undefined ? { after: q.after } : {}) });
    return c.json({ sites: await siteViews(d.store, page), next: nextKey(page, limit, (s) => s.name) }, 200);
  });
  app.openapi(centerRoutes.getSite, async (c) => {
    const [view] = await siteViews(d.store, [await d.store.getSite(c.req.valid('param').name)]);
    if (view === undefined) throw new FerryError('INTERNAL', 'a site has no view');
    return c.json(view, 200);
  });
  app.openapi(centerRoutes.setSiteSubnet, async (c) => {
    const name = c.req.valid('param').name;
    await d.store.getSite(name);
    const [view] = await siteViews(d.store, [await d.store.setSiteSubnet(name, c.req.valid('json').virtualSubnet)]);
    if (view === undefined) throw new FerryError('INTERNAL', 'a site has no view');
    return c.json(view, 200);
  });
  app.openapi(centerRoutes.listHosts, async (c) => {
    const q = c.req.valid('query');
    const limit = q.limit ?? MAX_PAGE_LIMIT;
    const page = await d.store.listHosts({ limit, ...(q.after !== undefined ? { after: q.after } : {}), ...(q.state !== undefined ? { state: q.state } : {}) });
    return c.json({ hosts: page.map(hostView), next: nextKey(page, limit, (h) => h.name) }, 200);
  });
  app.openapi(centerRoutes.getHost, async (c) => {
    const name = c.req.valid('param').name;
    const host = await d.store.getHost(name);
    const mounts = await d.store.listHostDatastores(name);
    const datastores = await Promise.all(mounts.map(async (m) => ({
      id: m.datastoreId, mountName: m.mountName, shared: (await d.store.getDatastore(m.datastoreId)).shared,
      capacityBytes: m.space?.capacityBytes ?? null, freeBytes: m.space?.freeBytes ?? null, spaceAtMs: m.space?.atMs ?? null,
    })));
    return c.json({ ...hostView(host), datastores }, 200);
  });
  app.openapi(centerRoutes.listVms, async (c) => {
    const q = c.req.valid('query');
    const limit = q.limit ?? MAX_PAGE_LIMIT;
    const page = await d.store.listVms({
      limit, ...(q.after !== undefined ? { after: q.after } : {}), ...(q.host !== undefined ? { host: q.host } : {}), ...(q.state !== undefined ? { state: q.state } : {}),
    });
    return c.json({ vms: page.map(vmView), next: nextKey(page, limit, (v) => v.name) }, 200);
  });
  app.openapi(centerRoutes.getVm, async (c) => c.json(vmView(await d.store.getVm(c.req.valid('param').name)), 200));

  app.openapi(centerRoutes.listTasks, async (c) => {
    const q = c.req.valid('query');
    const limit = q.limit ?? MAX_PAGE_LIMIT;
    const page = await d.store.listTasks({
      limit, ...(q.after !== undefined ? { after: q.after } : {}), ...(q.state !== undefined ? { state: q.state } : {}),
      ...(q.kind !== undefined ? { kind: q.kind } : {}), ...(q.target !== undefined ? { target: q.target } : {}),
    });
    return c.json({ tasks: page.map(taskView), next: nextKey(page, limit, (t) => t.id) }, 200);
  });
  app.openapi(centerRoutes.getTask, async (c) => c.json(taskView(await d.store.getTask(c.req.valid('param').id)), 200));
  app.openapi(centerRoutes.cancelTask, async (c) => {
    const task = await d.store.cancelTask(c.req.valid('param').id, actors.get(c.req.raw) ?? 'token:unknown');
    return c.json(taskView(task), 200);
  });

  const actor = (c: Context): string => actors.get(c.req.raw) ?? 'token:unknown';
  const enqueue = async (input: Parameters<CenterStore['enqueueTask']>[0]): Promise<CenterTaskView> => {
    const task = await d.store.enqueueTask(input);
    d.wakeups.poke();
    return taskView(task);
  };
  app.openapi(centerRoutes.createVm, async (c) => {
    const req = c.req.valid('json');
    if (req.host !== undefined) await d.store.getHost(req.host);
    // The name is reserved now (a row on no host): a second create of it is refused here, not in a task.
    await d.store.createVm({ name: req.name, host: null, state: 'defined', config: { memoryBytes: req.memoryBytes, vcpus: req.vcpus ?? 1 }, disks: [] });
    try {
      return c.json(await enqueue({ kind: TASK_KINDS.createVm, target: vmSubject(req.name), requestedBy: actor(c), params: asJson(req) }), 202);
    } catch (err) {
      await d.store.deleteVm(req.name).catch(() => undefined);
      throw err;
    }
  });
  for (const [route, kind] of [[centerRoutes.startVm, TASK_KINDS.startVm], [centerRoutes.stopVm, TASK_KINDS.stopVm], [centerRoutes.deleteVm, TASK_KINDS.deleteVm]] as const) {
    app.openapi(route, async (c) => {
      const vm = await d.store.getVm(c.req.valid('param').name);
      return c.json(await enqueue({ kind, target: vmSubject(vm.name), requestedBy: actor(c), params: { vm: vm.name } }), 202);
    });
  }
  app.openapi(centerRoutes.vmConsole, (c) => relayConsole(c, d) as never);
  app.openapi(centerRoutes.vmDiskChain, async (c) => c.json(await diskChainOf(d, c.req.valid('param').name), 200));
  app.openapi(centerRoutes.migrateVm, async (c) => {
    const vm = await d.store.getVm(c.req.valid('param').name);
    const request = c.req.valid('json');
    if (request.to !== undefined) await d.store.getHost(request.to);
    if (request.toSite !== undefined) await checkSite(d.store, request.toSite, request.to);
    return c.json(await enqueue({
      kind: TASK_KINDS.migrateVm, target: vmSubject(vm.name), requestedBy: actor(c), admitted: false,
      params: asJson({ vm: vm.name, request }), waitingReason: 'waiting for the scheduler',
    }), 202);
  });
  app.openapi(centerRoutes.prepareMigration, async (c) => {
    const vm = c.req.valid('param').name;
    const request = c.req.valid('json');
    // Refused here, not in a task: an unknown VM or site, a VM without a disk or not running, its own site, a datastore not in the site.
    await checkPrepareRequest(d.store, vm, request);
    return c.json(await enqueue({ kind: TASK_KINDS.prepareMigration, target: vmSubject(vm), requestedBy: actor(c), params: asJson({ vm, request }) }), 202);
  });
  app.openapi(centerRoutes.createCopy, async (c) => {
    const task = await enqueueCopy(d.store, c.req.valid('json'), actor(c));
    d.wakeups.poke();
    return c.json(taskView(task), 202);
  });
  app.openapi(centerRoutes.moveTask, async (c) => {
    const task = await d.store.getTask(c.req.valid('param').id);
    const { to } = c.req.valid('json');
    if (task.kind !== TASK_KINDS.copy) throw new FerryError('INVALID_ARGUMENT', `task ${task.id} is a ${task.kind} task: only copy tasks move between hosts`);
    if (task.state !== 'running') throw new FerryError('TASK_STATE', `task ${task.id} is ${task.state}: only a running copy can be moved`, { state: task.state });
    if (to !== undefined) await d.store.getHost(to);
    await checkMove(d.store, task, to ?? null);
    const moved = await d.store.requestTaskMove(task.id, { to: to ?? null, by: actor(c) });
    d.wakeups.poke();
    return c.json(taskView(moved), 202);
  });
  app.openapi(centerRoutes.maintenance, async (c) => {
    const host = await d.store.getHost(c.req.valid('param').name);
    const { action } = c.req.valid('json');
    const kind = action === 'enter' ? TASK_KINDS.enterMaintenance : TASK_KINDS.exitMaintenance;
    return c.json(await enqueue({ kind, target: hostSubject(host.name), requestedBy: actor(c), params: { host: host.name } }), 202);
  });

  app.openapi(centerRoutes.createJoinToken, async (c) => {
    const t = await d.auth.issueJoinToken(actors.get(c.req.raw) ?? 'token:unknown', c.req.valid('json').ttlMs ?? DEFAULT_JOIN_TOKEN_TTL_MS);
    return c.json(t, 201);
  });
  app.openapi(centerRoutes.joinHost, async (c) => {
    const req = c.req.valid('json');
    // Before the token is spent (a spend revokes the host's credential): a refused re-join leaves the host as it was and the token usable.
    const { credential, certificate } = await d.auth.join(req.joinToken, req.name, req.csr, req.url, () => d.inventory.checkJoinSite(req.name, req.site));
    await d.inventory.recordJoin(req.name, req.url, req.site);
    return c.json({ name: req.name, credential, certificate, caCertificate: d.ca.certPem, heartbeatIntervalMs: d.heartbeatIntervalMs }, 201);
  });
  app.openapi(centerRoutes.heartbeat, async (c) => {
    const name = c.req.valid('param').name;
    const state = await d.inventory.applyHeartbeat(name, c.req.valid('json'));
    return c.json({ state, heartbeatIntervalMs: d.heartbeatIntervalMs, controlToken: d.hostControl.tokenFor(name) }, 200);
  });

  app.openapi(centerRoutes.brokeredIncoming, async (c) => {
    const { name, path, id } = c.req.valid('param');
    const hosts = await d.pathHosts(path);
    if (hosts?.source !== name) throw new FerryError('NOT_FOUND', `host ${name} is not the source of a migration over path ${path.slice(0, 8)}`);
    const target = await d.store.getHost(hosts.target);
    return c.json(await d.hostControl.client(target).incoming(id, BROKER_TIMEOUT_MS), 200);
  });

  // Streams are plain Responses; hono's typed responses describe JSON bodies only.
  app.openapi(centerRoutes.events, async (c) => {
    const fromHeader = c.req.valid('header')['last-event-id'];
    const fromQuery = c.req.valid('query').after;
    const given = fromHeader ?? fromQuery;
    // Without a Last-Event-ID a client wants what happens from now on; with one, everything after it.
    const start = given !== undefined ? Number(given) : await d.store.latestEventId();
    if (streams >= MAX_EVENT_STREAMS) throw new FerryError('BUSY', `this center serves at most ${MAX_EVENT_STREAMS} event streams at once; retry later`);
    return eventStream(c, d, start, given !== undefined, pollMs, () => { streams++; return () => { streams--; }; });
  });

  // Text, not JSON: the Prometheus exposition format.
  app.openapi(centerRoutes.metrics, async (c) => c.body(await d.metrics.text(), 200, { 'content-type': d.metrics.contentType }) as never);

  mountWebUi(app, { auth: d.auth });
  app.doc(CENTER_OPENAPI_PATH, { openapi: '3.0.3', info: { ...CENTER_OPENAPI_INFO } });
  return app;
}

/**
 * A move is refused when no host could take the copy (or not the one asked for): a host in service
 * that mounts its source, other than the one it runs on. The task's worker checks again when it acts.
 */
async function checkMove(store: CenterStore, task: Task, to: string | null): Promise<void> {
  const j = copyJournalSchema.safeParse(task.checkpoint);
  if (!j.success) throw new FerryError('TASK_STATE', `copy task ${task.id} has not chosen its first host yet: move it once it runs`);
  const choice = chooseCopier(await copierCandidates(store, j.data.sourceId, j.data.targetId, new Set([j.data.host])), to, (await store.getDatastore(j.data.sourceId)).name);
  if ('refused' in choice) throw new FerryError('NO_COMPATIBLE_HOST', `copy task ${task.id} cannot move off ${j.data.host}${to !== null ? ` to ${to}` : ''}: ${choice.refused}`);
}

/** The VM's disk chain, asked of its host (the inventory keeps only the top file; the chain and its CIDs are the host's). */
async function diskChainOf(d: CenterAppDeps, name: string): Promise<DiskChainView> {
  const vm = await d.store.getVm(name);
  if (vm.host === null) throw new FerryError('VM_STATE', `VM ${vm.name} is on no host yet`);
  return d.hostControl.client(await d.store.getHost(vm.host)).diskChain(vm.name);
}

/** The VM's console, relayed from its host (the CLI and UI need no host token). */
async function relayConsole(c: Context, d: CenterAppDeps): Promise<Response> {
  const vm = await d.store.getVm(c.req.param('name') ?? '');
  if (vm.host === null) throw new FerryError('VM_STATE', `VM ${vm.name} is on no host yet`);
  const host = await d.store.getHost(vm.host);
  const follow = c.req.query('follow') === '1';
  const gone = new AbortController();
  const source = await d.hostControl.client(host).console(vm.name, { follow, signal: AbortSignal.any([gone.signal, d.shutdown]) });
  c.header('content-type', 'text/plain; charset=utf-8');
  c.header('cache-control', 'no-cache');
  // Relayed as it comes: the center holds no console text, it only passes the host's stream on.
  return stream(c, async (s) => {
    s.onAbort(() => { gone.abort(); });
    try { for await (const chunk of source) await s.write(chunk); } catch { /* the host or the client went away */ } finally { gone.abort(); }
  });
}

/**
 * One loop for replay and live: read the store after the cursor, send, and wait for a wakeup (the store
 * says events were committed, here or in another center) or the fallback poll. Since the store's event
 * ids are gap-free and in commit order, reading "after the last id sent" can neither skip nor repeat an
 * event — unless the pruner deleted some first, which the stream says with one EVENTS_LOST_KIND event.
 */
function eventStream(c: Context, d: CenterAppDeps, start: number, resumed: boolean, pollMs: number, open: () => () => void): Response {
  c.header('content-type', 'text/event-stream');
  c.header('cache-control', 'no-cache');
  return stream(c, async (s) => {
    const close = open();
    const gone = new AbortController();
    s.onAbort(() => { gone.abort(); });
    const signal = AbortSignal.any([gone.signal, d.shutdown]);
    let cursor = start;
    let lastWriteMs = performance.now();
    // A resumed stream checks, on its first read, whether what it asks for was pruned altogether.
    let checkPruned = resumed;
    try {
      // The first bytes tell the client the stream is open (its fetch resolves) before any event exists.
      await s.write(': ferry center events\n\n');
      while (!signal.aborted) {
        const generation = d.wakeups.generation;
        // The newest id read before the page: an id up to it that the page lacks was committed and then
        // pruned, not still in flight.
        const latest = checkPruned ? await d.store.latestEventId() : cursor;
        checkPruned = false;
        const page = await d.store.eventsSince(cursor, MAX_EVENTS_PAGE);
        // Ids are gap-free: a page that does not start right after the cursor means the pruner took the rest.
        const resumeAfter = page[0] !== undefined ? page[0].id - 1 : latest;
        if (resumeAfter > cursor) {
          const lost: EventsLostPayload = {
            afterId: cursor, resumeAfterId: resumeAfter,
            reason: `events ${cursor + 1}..${resumeAfter} are older than this center keeps (its event retention): refetch the state, then follow the stream`,
          };
          await s.write(encodeSseWithId(resumeAfter, EVENTS_LOST_KIND, { id: resumeAfter, atMs: Date.now(), kind: EVENTS_LOST_KIND, subject: 'center', payload: lost }));
          cursor = resumeAfter;
        }
        for (const e of page) {
          await s.write(encodeSseWithId(e.id, e.kind, eventView(e)));
          cursor = e.id;
        }
        if (page.length > 0) lastWriteMs = performance.now();
        if (page.length === MAX_EVENTS_PAGE) continue;
        if (performance.now() - lastWriteMs >= SSE_KEEPALIVE_MS) {
          await s.write(': keepalive\n\n');
          lastWriteMs = performance.now();
        }
        await d.wakeups.wait(generation, pollMs, signal);
      }
    } catch {
      // The client went away or the store closed (the center is stopping): the stream ends; the
      // client reconnects with its Last-Event-ID and misses nothing.
    } finally {
      close();
    }
  });
}
