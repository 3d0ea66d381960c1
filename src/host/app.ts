/**
 * The host agent's HTTP app: the routes of src/api/host-v1.ts, bound to the VM, migration and
 * copy services. A `(Request) => Response` function (Hono), so tests can call it without sockets; the
 * agent serves it on node:http. Every request but the OpenAPI document needs the bearer token and
 * is refused before its body is read; every error leaves as `{ error: { code, message, details? } }`
 * with the status of src/api/http-status.ts.
 */
import { OpenAPIHono } from '@hono/zod-openapi';
import { except } from 'hono/combine';
import { stream } from 'hono/streaming';
import type { Context } from 'hono';
import type { BlankEnv } from 'hono/types';
import { FerryError } from '../lib/errors.js';
import { limitBody, onAppError, sendError, validationHook } from '../api/http-errors.js';
import {
  HOST_API_VERSION, MAX_COPY_BODY_BYTES, MAX_CREATE_BODY_BYTES, MAX_SMALL_BODY_BYTES, OPENAPI_INFO, OPENAPI_PATH, routes,
  type DatastoreFileStat, type DatastoreView, type HostInfo, type IncomingStatus, type TicketRequest, type TicketView,
} from '../api/host-v1.js';
import { encodeSse } from '../api/sse.js';
import type { EventEmitter } from 'node:events';
import type { IncomingOutcome } from '../migration/peer.js';
import { bearerMatches } from './auth.js';
import type { VmService } from './vm-service.js';
import type { MigrationService } from './migration-service.js';
import type { DiskSnapshots } from './disk-snapshots.js';
import type { VmSlot } from './vm-slot.js';
import type { HostMetrics } from './metrics.js';
import type { HostPaths } from './paths.js';
import type { CopyService } from './copy-service.js';
import type { IncomingCopies } from './copy-incoming.js';
import type { HostSeeds } from './seeds.js';
import { countRequests } from '../api/http-metrics.js';

export interface HostAppDeps {
  readonly token: string;
  /** A second accepted token: the center's control credential for this host, once the center told it. */
  readonly centerToken?: () => string | null;
  readonly vms: VmService;
  readonly migrations: MigrationService;
  readonly disks: DiskSnapshots;
  readonly hostInfo: () => HostInfo;
  readonly listDatastores: () => Promise<DatastoreView[]>;
  /** Size and modification time of files of one datastore (read-only). */
  readonly statDatastoreFiles: (datastore: string, paths: readonly string[]) => Promise<DatastoreFileStat[]>;
  readonly issueTicket: (req: TicketRequest) => Promise<TicketView>;
  readonly paths: HostPaths;
  readonly incomingOutcome: (id: string) => Promise<IncomingOutcome>;
  readonly metrics: HostMetrics;
  readonly copies: CopyService;
  readonly incomingCopies: IncomingCopies;
  readonly seeds: HostSeeds;
}

export function buildHostApp(d: HostAppDeps): OpenAPIHono {
  const app = new OpenAPIHono<BlankEnv>({ defaultHook: validationHook });

  app.onError(onAppError);
  // details.route false: "no such route", as a client or test tells it from "no such VM" without reading the message.
  app.notFound((c) => sendError(c, new FerryError('NOT_FOUND', `no route ${c.req.method} ${c.req.path}; the API is under /${HOST_API_VERSION}/ (see ${OPENAPI_PATH})`, { route: false })));

  // First: it counts what the token check refuses too.
  app.use('*', countRequests(d.metrics.httpRequests));
  app.use('*', async (c, next) => {
    // Refused before anything else happens, including reading the body.
    const header = c.req.header('authorization');
    const center = d.centerToken?.() ?? null;
    if (c.req.path !== OPENAPI_PATH && !bearerMatches(header, d.token) && (center === null || !bearerMatches(header, center))) {
      return sendError(c, new FerryError('UNAUTHORIZED', 'missing or wrong API token (send Authorization: Bearer <token>)'));
    }
    await next();
    return undefined;
  });
  const big = limitBody(MAX_CREATE_BODY_BYTES);
  const plan = limitBody(MAX_COPY_BODY_BYTES);
  const small = limitBody(MAX_SMALL_BODY_BYTES);
  // A guest image travels in POST /v1/vms, a copy's plan in POST /v1/copies and /v1/copies/incoming; everything else is small.
  app.use(routes.createVm.path, big);
  const copyBodies = [routes.startCopy.path, routes.createCopyTicket.path];
  for (const path of copyBodies) app.use(path, plan);
  app.use('*', except([routes.createVm.path, ...copyBodies], small));

  // Each handler's body is type-checked against the route's declared response schema.
  app.openapi(routes.getHost, (c) => c.json(d.hostInfo(), 200));
  app.openapi(routes.listDatastores, async (c) => c.json({ datastores: await d.listDatastores() }, 200));
  app.openapi(routes.statDatastoreFiles, async (c) => c.json({ files: await d.statDatastoreFiles(c.req.valid('param').name, c.req.valid('json').paths) }, 200));
  app.openapi(routes.listVms, (c) => c.json({ vms: d.vms.list() }, 200));
  app.openapi(routes.createVm, async (c) => c.json(await d.vms.create(c.req.valid('json')), 201));
  app.openapi(routes.getVm, (c) => c.json(d.vms.get(c.req.valid('param').name), 200));
  app.openapi(routes.deleteVm, async (c) => c.json(await d.vms.delete(c.req.valid('param').name), 200));
  app.openapi(routes.startVm, async (c) => c.json(await d.vms.start(c.req.valid('param').name), 200));
  app.openapi(routes.stopVm, async (c) => c.json(await d.vms.stop(c.req.valid('param').name), 200));
  app.openapi(routes.pauseVm, async (c) => c.json(await d.vms.pause(c.req.valid('param').name), 200));
  app.openapi(routes.resumeVm, (c) => c.json(d.vms.resume(c.req.valid('param').name), 200));
  app.openapi(routes.verifyVm, async (c) => c.json(await d.vms.verify(c.req.valid('param').name), 200));
  // Streams are plain Responses; hono's typed responses describe JSON bodies only.
  app.openapi(routes.vmConsole, (c) => consoleStream(c, d.vms.slot(c.req.valid('param').name), c.req.valid('query').follow === '1') as never);
  app.openapi(routes.migrateVm, async (c) => c.json(await d.migrations.start(c.req.valid('param').name, c.req.valid('json')), 202));
  app.openapi(routes.getMigration, (c) => c.json(d.migrations.status(c.req.valid('param').id), 200));
  app.openapi(routes.migrationEvents, (c) => eventStream(c, d.migrations.job(c.req.valid('param').id)) as never);
  app.openapi(routes.cancelMigration, (c) => c.json(d.migrations.cancel(c.req.valid('param').id), 202));
  app.openapi(routes.createTicket, async (c) => c.json(await d.issueTicket(c.req.valid('json')), 201));
  app.openapi(routes.listPaths, (c) => c.json({ drivers: d.paths.drivers(), paths: d.paths.list() }, 200));
  app.openapi(routes.putPath, async (c) => {
    const spec = c.req.valid('json');
    if (spec.pathId !== c.req.valid('param').id) throw new FerryError('INVALID_ARGUMENT', `the body is path ${spec.pathId.slice(0, 8)}, the URL path ${c.req.valid('param').id.slice(0, 8)}`);
    return c.json(await d.paths.put(spec), 200);
  });
  app.openapi(routes.deletePath, async (c) => {
    const id = c.req.valid('param').id;
    return c.json({ pathId: id, removed: await d.paths.remove(id, 'removed by the center') }, 200);
  });
  app.openapi(routes.getIncoming, async (c) => {
    const id = c.req.valid('param').id;
    const status: IncomingStatus = { migrationId: id, outcome: await d.incomingOutcome(id) };
    return c.json(status, 200);
  });

  app.openapi(routes.startCopy, async (c) => c.json(await d.copies.start(c.req.valid('json')), 202));
  app.openapi(routes.getCopy, (c) => c.json(d.copies.status(c.req.valid('param').id), 200));
  app.openapi(routes.copyEvents, (c) => eventStream(c, d.copies.run(c.req.valid('param').id)) as never);
  app.openapi(routes.stopCopy, (c) => c.json(d.copies.stop(c.req.valid('param').id), 202));
  app.openapi(routes.cancelCopy, (c) => c.json(d.copies.cancel(c.req.valid('param').id), 202));
  app.openapi(routes.createCopyTicket, async (c) => c.json(await d.incomingCopies.issueTicket(c.req.valid('json')), 201));
  app.openapi(routes.getCopyJournal, async (c) => c.json(await d.incomingCopies.journal(c.req.valid('param').id, c.req.valid('query').datastore), 200));
  app.openapi(routes.discardCopyJournal, async (c) => c.json(await d.incomingCopies.discard(c.req.valid('param').id, c.req.valid('query').datastore), 200));

  app.openapi(routes.snapshotVm, async (c) => c.json(await d.disks.snapshot(c.req.valid('param').name), 201));
  app.openapi(routes.diskChain, async (c) => c.json(await d.disks.chain(c.req.valid('param').name), 200));
  app.openapi(routes.revertVm, async (c) => c.json(await d.disks.revert(c.req.valid('param').name, c.req.valid('json').to), 200));
  app.openapi(routes.consolidateVm, async (c) => c.json(await d.disks.consolidate(c.req.valid('param').name), 200));

  app.openapi(routes.putSeeds, async (c) => { const p = c.req.valid('param'); return c.json(await d.seeds.put(p.name, p.vm, c.req.valid('json')), 200); });
  app.openapi(routes.getSeeds, async (c) => { const p = c.req.valid('param'); return c.json(await d.seeds.get(p.name, p.vm), 200); });
  app.openapi(routes.deleteSeeds, async (c) => { const p = c.req.valid('param'); return c.json(await d.seeds.delete(p.name, p.vm, c.req.valid('query').files === 'true'), 200); });

  // Text, not JSON: the Prometheus exposition format.
  app.openapi(routes.metrics, async (c) => c.body(await d.metrics.text(), 200, { 'content-type': d.metrics.contentType }) as never);

  app.doc(OPENAPI_PATH, { openapi: '3.0.3', info: { ...OPENAPI_INFO } });
  return app;
}

function consoleStream(c: Context, slot: VmSlot, follow: boolean): Response {
  c.header('content-type', 'text/plain; charset=utf-8');
  return stream(c, async (s) => {
    await s.write(slot.console.snapshot());
    if (!follow) return;
    await new Promise<void>((resolve) => {
      // Ends when the client goes away or the VM leaves this host (deleted, migrated).
      const stop = slot.console.follow((text) => { void s.write(text); }, resolve);
      s.onAbort(() => { stop(); resolve(); });
    });
  });
}

/** What an event stream follows: a migration or a copy, each with its status, progress events and a record at its end. */
interface Followed<P, R> extends EventEmitter<{ progress: [P]; done: [R] }> {
  status(): unknown;
  readonly finished: boolean;
}

/** One `status` event, then `progress` events, then `done` with the record (at once if it has ended). */
function eventStream<P, R>(c: Context, job: Followed<P, R>): Response {
  c.header('content-type', 'text/event-stream');
  c.header('cache-control', 'no-cache');
  return stream(c, async (s) => {
    await s.write(encodeSse('status', job.status()));
    if (job.finished) return;
    await new Promise<void>((resolve) => {
      const onProgress = (p: P): void => { void s.write(encodeSse('progress', p)); };
      const onDone = (r: R): void => { void s.write(encodeSse('done', r)).then(() => { cleanup(); resolve(); }); };
      const cleanup = (): void => { job.off('progress', onProgress); job.off('done', onDone); };
      job.on('progress', onProgress);
      job.once('done', onDone);
      s.onAbort(() => { cleanup(); resolve(); });
    });
  });
}
