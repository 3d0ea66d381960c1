/**
 * The one typed client of the host API (./host-v1.ts): used by the CLI, the demo, the benchmarks,
 * the tests and a migration source asking its target. URLs come from the route declarations and
 * every answer is validated against its schema; an error answer becomes a FerryError with the
 * host's own code (origin 'remote'), a host that cannot be reached a local HOST_UNREACHABLE.
 *
 * A host joined to a center may serve HTTPS with its CA-signed certificate (`ferry host --tls`): the
 * client is then given the center's CA to trust and, for the center's own calls, a client certificate
 * (./tls.ts); a host whose certificate it does not trust is TLS_UNTRUSTED.
 */
import type { z } from 'zod';
import { FerryError, errorMessage } from '../lib/errors.js';
import type { MigrationProgress, MigrationRecord } from '../migration/record.js';
import {
  errorBodySchema, migrationEventSchemas, routes, OPENAPI_PATH,
  type CreateVmRequest, type DatastoreFileStat, type DatastoreView, type HostInfo, type IncomingStatus, type MigrateRequest, type MigrationEvent, type MigrationStatus,
  type PathListView, type PauseResultView, type TicketRequest, type TicketView, type VerifyResult, type VmView,
} from './host-v1.js';
import {
  copyEventSchemas, type CopyEvent, type CopyJournalView, type CopyTicket, type CopyTicketRequest, type StartCopyRequest,
} from './copy-v1.js';
import type { CopyJobRecord, CopyJobStatus, CopyProgress } from '../nfc/plan.js';
import type { DeleteSeedsResult, PutSeedsRequest, SeedsView } from './seed-v1.js';
import type { ConsolidateResultView, DiskChainView, RevertResultView, SnapshotResultView } from './disk-v1.js';
import { readSse } from './sse.js';
import type { PathSpec, PathView } from '../dataplane/path/spec.js';
import { TlsFetch, transportError, type TlsClientOptions } from './tls.js';

/** Ordinary requests time out; streams (console follow, migration events) do not. */
export const API_TIMEOUT_MS = 30_000;
/** A revert copies nothing but may boot the VM again (a large RAM takes a while to instrument and start). */
export const DISK_OPERATION_TIMEOUT_MS = 120_000;
/** While following a migration whose event stream broke, its status is polled this often. */
export const MIGRATION_POLL_MS = 100;

type Route = (typeof routes)[keyof typeof routes];

interface RequestOptions {
  readonly body?: unknown;
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

export interface FollowOptions<P = MigrationProgress> {
  readonly onProgress?: (p: P) => void;
  readonly signal?: AbortSignal;
  /** Give up (HOST_ERROR) if the migration has not ended by then; default: wait as long as it runs. */
  readonly timeoutMs?: number;
}

/**
 * Fills a route's `{param}` placeholders, URL-encoded. "." and ".." are refused: encoding leaves
 * them as they are and a URL resolves them as path steps (/v1/vms/.. is /v1/), so the request
 * would reach another route, whose "no route" 404 would read as "no such VM".
 */
export function pathOf(route: { readonly path: string }, params: Readonly<Record<string, string>> = {}): string {
  return route.path.replace(/\{(\w+)\}/g, (_m, key: string) => {
    const v = params[key];
    if (v === undefined) throw new FerryError('INVALID_ARGUMENT', `missing path parameter ${key} for ${route.path}`);
    if (v === '.' || v === '..') throw new FerryError('INVALID_ARGUMENT', `path parameter ${key} of ${route.path} cannot be "${v}"`);
    return encodeURIComponent(v);
  });
}

export class HostClient {
  readonly baseUrl: string;
  readonly #tls: TlsFetch;

  /** `tls`: for an https:// host, the CA to trust (the center's) and an optional client certificate. */
  constructor(baseUrl: string, private readonly token: string, tls: TlsClientOptions = {}) {
    let u: URL;
    try {
      u = new URL(baseUrl);
    } catch (err) {
      throw new FerryError('INVALID_ARGUMENT', `"${baseUrl}" is not a host URL like http://127.0.0.1:7000 (${errorMessage(err)})`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new FerryError('INVALID_ARGUMENT', `"${baseUrl}" is not a host URL like http://127.0.0.1:7000 (only http:// and https:// are supported)`);
    this.baseUrl = u.origin;
    this.#tls = new TlsFetch(tls);
  }

  /** Ends this client's pooled TLS connections (a client without TLS options holds none). */
  close(): Promise<void> { return this.#tls.close(); }

  host(): Promise<HostInfo> { return this.json(routes.getHost, {}, 200); }
  async listDatastores(): Promise<DatastoreView[]> { return (await this.json(routes.listDatastores, {}, 200)).datastores; }
  /** Size and modification time of files of datastore `name` (this host's name for it), in the order asked. */
  async statDatastoreFiles(name: string, paths: readonly string[]): Promise<DatastoreFileStat[]> {
    return (await this.json(routes.statDatastoreFiles, { name }, 200, { body: { paths } })).files;
  }
  /** Records the seeds of `vm` on datastore `datastore` (this host's name for it); SEED_INVALID if a level does not match its file. */
  putSeeds(datastore: string, vm: string, req: PutSeedsRequest): Promise<SeedsView> { return this.json(routes.putSeeds, { name: datastore, vm }, 200, { body: req }); }
  /** The seeds `datastore` holds for `vm` (NOT_FOUND: none). */
  seeds(datastore: string, vm: string): Promise<SeedsView> { return this.json(routes.getSeeds, { name: datastore, vm }, 200); }
  /** Forgets `vm`'s seeds on `datastore`; with `files`, also removes the seed files no open chain holds. */
  deleteSeeds(datastore: string, vm: string, opts: { files?: boolean } = {}): Promise<DeleteSeedsResult> {
    return this.jsonQuery(routes.deleteSeeds, { name: datastore, vm }, 200, opts.files === true ? '?files=true' : '');
  }
  async listVms(): Promise<VmView[]> { return (await this.json(routes.listVms, {}, 200)).vms; }
  createVm(req: CreateVmRequest): Promise<VmView> { return this.json(routes.createVm, {}, 201, { body: req }); }
  vm(name: string): Promise<VmView> { return this.json(routes.getVm, { name }, 200); }
  deleteVm(name: string): Promise<{ name: string; deleted: true }> { return this.json(routes.deleteVm, { name }, 200); }
  startVm(name: string): Promise<VmView> { return this.json(routes.startVm, { name }, 200); }
  stopVm(name: string): Promise<VmView> { return this.json(routes.stopVm, { name }, 200); }
  pauseVm(name: string): Promise<PauseResultView> { return this.json(routes.pauseVm, { name }, 200); }
  resumeVm(name: string): Promise<VmView> { return this.json(routes.resumeVm, { name }, 200); }
  verifyVm(name: string): Promise<VerifyResult> { return this.json(routes.verifyVm, { name }, 200); }

  /** The console text; with `follow`, a stream that ends when `signal` aborts or the VM goes away. */
  async console(name: string, opts: { follow?: boolean; signal?: AbortSignal } = {}): Promise<AsyncIterable<Uint8Array>> {
    const res = await this.send(routes.vmConsole, { name }, { ...(opts.signal !== undefined ? { signal: opts.signal } : {}), timeoutMs: opts.follow === true ? 0 : API_TIMEOUT_MS }, opts.follow === true ? '?follow=1' : '');
    return bodyOf(res);
  }

  /** The host's Prometheus metrics, in the text exposition format. */
  async metrics(): Promise<string> { return (await this.send(routes.metrics, {}, {})).text(); }

  /** The console text so far, decoded (UTF-8). */
  async consoleText(name: string): Promise<string> {
    let text = '';
    const decoder = new TextDecoder();
    for await (const chunk of await this.console(name)) text += decoder.decode(chunk, { stream: true });
    return text + decoder.decode();
  }

  /** Follows the console until `text` appears in it (e.g. a guest's boot line); HOST_ERROR after `timeoutMs`. */
  async waitForConsole(name: string, text: string, timeoutMs: number = API_TIMEOUT_MS): Promise<void> {
    const ac = new AbortController();
    const timer = setTimeout(() => { ac.abort(); }, timeoutMs);
    const decoder = new TextDecoder();
    let seen = '';
    try {
      for await (const chunk of await this.console(name, { follow: true, signal: ac.signal })) {
        // Keep only a tail long enough to hold `text` across chunk boundaries.
        seen = (seen + decoder.decode(chunk, { stream: true })).slice(-Math.max(text.length * 2, 4096));
        if (seen.includes(text)) return;
      }
    } catch (err) {
      if (!ac.signal.aborted) throw err;
    } finally {
      clearTimeout(timer);
      ac.abort();
    }
    throw new FerryError('HOST_ERROR', `"${text}" did not appear on the console of VM ${name} within ${timeoutMs} ms`);
  }

  snapshotVm(name: string): Promise<SnapshotResultView> { return this.json(routes.snapshotVm, { name }, 201); }
  diskChain(name: string): Promise<DiskChainView> { return this.json(routes.diskChain, { name }, 200); }
  /** Back to snapshot `to` (a chain level's path; default: the newest). A running VM boots again on it. */
  revertVm(name: string, to?: string): Promise<RevertResultView> { return this.json(routes.revertVm, { name }, 200, { body: to !== undefined ? { to } : {}, timeoutMs: DISK_OPERATION_TIMEOUT_MS }); }
  /** Answers when the merge is done, however long that takes; its progress is in diskChain(name).operation meanwhile. */
  consolidateVm(name: string): Promise<ConsolidateResultView> { return this.json(routes.consolidateVm, { name }, 200, { timeoutMs: 0 }); }

  migrate(name: string, req: MigrateRequest): Promise<MigrationStatus> { return this.json(routes.migrateVm, { name }, 202, { body: req }); }
  migration(id: string): Promise<MigrationStatus> { return this.json(routes.getMigration, { id }, 200); }
  cancelMigration(id: string): Promise<MigrationStatus> { return this.json(routes.cancelMigration, { id }, 202); }
  createTicket(timeoutMs?: number, req: TicketRequest = {}): Promise<TicketView> {
    return this.json(routes.createTicket, {}, 201, { body: req, ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
  }
  incoming(id: string, timeoutMs?: number): Promise<IncomingStatus> { return this.json(routes.getIncoming, { id }, 200, timeoutMs !== undefined ? { timeoutMs } : {}); }
  listPaths(): Promise<PathListView> { return this.json(routes.listPaths, {}, 200); }
  putPath(spec: PathSpec): Promise<PathView> { return this.json(routes.putPath, { id: spec.pathId }, 200, { body: spec }); }
  deletePath(pathId: string): Promise<{ pathId: string; removed: boolean }> { return this.json(routes.deletePath, { id: pathId }, 200); }
  openApi(): Promise<unknown> { return this.raw('GET', OPENAPI_PATH).then((r) => r.json()); }

  /** A migration's events as they happen: one status, progress…, done. Ends when the stream does. */
  async *migrationEvents(id: string, signal?: AbortSignal): AsyncGenerator<MigrationEvent> {
    const res = await this.send(routes.migrationEvents, { id }, { ...(signal !== undefined ? { signal } : {}), timeoutMs: 0 });
    for await (const { event, data } of readSse(bodyOf(res))) {
      if (event !== 'status' && event !== 'progress' && event !== 'done') continue;
      const parsed = migrationEventSchemas[event].safeParse(data);
      if (!parsed.success) throw new FerryError('HOST_ERROR', `host ${this.baseUrl} sent a malformed ${event} event for migration ${id}: ${parsed.error.issues[0]?.message ?? ''}`);
      yield { event, data: parsed.data } as MigrationEvent;
    }
  }

  /**
   * Waits for a migration to end and returns its record: follows the event stream (progress to
   * `onProgress`), and if the stream breaks, polls the status instead. The one way every caller
   * waits for a migration.
   */
  waitForMigration(id: string, opts: FollowOptions = {}): Promise<MigrationRecord> {
    return followToEnd(`migration ${id}`, (signal) => this.migrationEvents(id, signal), () => this.migration(id), opts);
  }

  // Network file copies (./copy-v1.ts).
  startCopy(req: StartCopyRequest): Promise<CopyJobStatus> { return this.json(routes.startCopy, {}, 202, { body: req }); }
  copy(id: string): Promise<CopyJobStatus> { return this.json(routes.getCopy, { id }, 200); }
  stopCopy(id: string): Promise<CopyJobStatus> { return this.json(routes.stopCopy, { id }, 202); }
  cancelCopy(id: string): Promise<CopyJobStatus> { return this.json(routes.cancelCopy, { id }, 202); }
  createCopyTicket(req: CopyTicketRequest): Promise<CopyTicket> { return this.json(routes.createCopyTicket, {}, 201, { body: req }); }
  copyJournal(id: string, datastore: string): Promise<CopyJournalView> {
    return this.jsonQuery(routes.getCopyJournal, { id }, 200, `?datastore=${encodeURIComponent(datastore)}`);
  }
  discardCopyJournal(id: string, datastore: string): Promise<CopyJournalView> {
    return this.jsonQuery(routes.discardCopyJournal, { id }, 200, `?datastore=${encodeURIComponent(datastore)}`);
  }

  /** A copy's events as they happen: one status, progress…, done. Ends when the stream does. */
  async *copyEvents(id: string, signal?: AbortSignal): AsyncGenerator<CopyEvent> {
    const res = await this.send(routes.copyEvents, { id }, { ...(signal !== undefined ? { signal } : {}), timeoutMs: 0 });
    for await (const { event, data } of readSse(bodyOf(res))) {
      if (event !== 'status' && event !== 'progress' && event !== 'done') continue;
      const parsed = copyEventSchemas[event].safeParse(data);
      if (!parsed.success) throw new FerryError('HOST_ERROR', `host ${this.baseUrl} sent a malformed ${event} event for copy ${id}: ${parsed.error.issues[0]?.message ?? ''}`);
      yield { event, data: parsed.data } as CopyEvent;
    }
  }

  /** Waits for this host's part of a copy to end (events, else polling its status, as waitForMigration). */
  waitForCopy(id: string, opts: FollowOptions<CopyProgress> = {}): Promise<CopyJobRecord> {
    return followToEnd(`copy ${id}`, (signal) => this.copyEvents(id, signal), () => this.copy(id), opts);
  }

  /** A request outside the declared routes (tests of the negative space: unknown paths, bad bodies). */
  raw(method: string, path: string, init: { body?: string; headers?: Record<string, string>; token?: string | null } = {}): Promise<Response> {
    const headers: Record<string, string> = { 'content-type': 'application/json', ...(init.headers ?? {}) };
    const token = init.token === undefined ? this.token : init.token;
    if (token !== null) headers.authorization = `Bearer ${token}`;
    return this.#tls.fetch(new URL(path, this.baseUrl), { method, headers, ...(init.body !== undefined ? { body: init.body } : {}), signal: AbortSignal.timeout(API_TIMEOUT_MS) });
  }

  private async json<R extends Route, S extends number>(route: R, params: Record<string, string>, status: S, opts: RequestOptions = {}): Promise<ResponseOf<R, S>> {
    const res = await this.send(route, params, opts);
    const schema = responseSchema(route, status);
    let payload: unknown;
    try { payload = await res.json(); } catch (err) {
      throw new FerryError('HOST_ERROR', `host ${this.baseUrl} answered ${route.method.toUpperCase()} ${route.path} with a body that is not JSON: ${errorMessage(err)}`);
    }
    const parsed = schema.safeParse(payload);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new FerryError('HOST_ERROR', `host ${this.baseUrl} answered ${route.method.toUpperCase()} ${route.path} with an unexpected body (${issue?.path.join('.') ?? ''}: ${issue?.message ?? ''}); is it a Ferry host of API ${routes.getHost.path.split('/')[1] ?? ''}?`);
    }
    return parsed.data as ResponseOf<R, S>;
  }

  private async jsonQuery<R extends Route, S extends number>(route: R, params: Record<string, string>, status: S, query: string): Promise<ResponseOf<R, S>> {
    const res = await this.send(route, params, {}, query);
    const parsed = responseSchema(route, status).safeParse(await res.json().catch(() => undefined));
    if (!parsed.success) throw new FerryError('HOST_ERROR', `host ${this.baseUrl} answered ${route.method.toUpperCase()} ${route.path} with an unexpected body`);
    return parsed.data as ResponseOf<R, S>;
  }

  private async send(route: Route, params: Record<string, string>, opts: RequestOptions, query = ''): Promise<Response> {
    const method = route.method.toUpperCase();
    const timeoutMs = opts.timeoutMs ?? API_TIMEOUT_MS;
    const signals = [...(opts.signal !== undefined ? [opts.signal] : []), ...(timeoutMs > 0 ? [AbortSignal.timeout(timeoutMs)] : [])];
    // Outside the try below: a bad parameter is the caller's error, not an unreachable host.
    const url = new URL(pathOf(route, params) + query, this.baseUrl);
    let res: Response;
    try {
      res = await this.#tls.fetch(url, {
        method,
        headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json' },
        ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
        ...(signals.length > 0 ? { signal: signals.length === 1 ? signals[0] : AbortSignal.any(signals) } : {}),
      });
    } catch (err) {
      throw transportError(err, `host ${this.baseUrl}`, `${method} ${route.path}`, 'HOST_UNREACHABLE');
    }
    if (!res.ok) throw await errorOf(res, this.baseUrl);
    return res;
  }
}

/** The JSON body a route declares for one status. */
type ResponseOf<R extends Route, S extends number> = R['responses'] extends { [K in S]: { content: { 'application/json': { schema: infer Z } } } }
  ? (Z extends z.ZodType ? z.output<Z> : never)
  : never;

/** The JSON schema a route declares for one status (shared by the center's client). */
export function responseSchema(route: { readonly path: string; readonly responses: unknown }, status: number): z.ZodType {
  const r = (route.responses as Record<number, { content?: { 'application/json'?: { schema: z.ZodType } } }>)[status];
  const schema = r?.content?.['application/json']?.schema;
  if (schema === undefined) throw new FerryError('INTERNAL', `route ${route.path} declares no JSON body for status ${status}`);
  return schema;
}

/** The error body of a refused request, as a FerryError with the peer's own code (a host's, or the center's). */
export async function errorOf(res: Response, baseUrl: string, peer: { readonly what: string; readonly fallback: 'HOST_ERROR' | 'CENTER_ERROR' } = { what: 'host', fallback: 'HOST_ERROR' }): Promise<FerryError> {
  const text = await res.text().catch(() => '');
  let payload: unknown = null;
  try { payload = JSON.parse(text); } catch { /* not JSON: reported below */ }
  const parsed = errorBodySchema.safeParse(payload);
  if (!parsed.success) {
    return new FerryError(peer.fallback, `${peer.what} ${baseUrl} answered ${res.status} ${res.statusText} without a Ferry error body${text !== '' ? `: ${text.slice(0, 200)}` : ''}`, { status: res.status }, { origin: 'remote' });
  }
  const e = parsed.data.error;
  return FerryError.fromRemote(e.code, e.message, peer.fallback, { ...(e.details ?? {}), status: res.status });
}

function bodyOf(res: Response): AsyncIterable<Uint8Array> {
  if (res.body === null) return (async function* () { /* empty */ })();
  return res.body;
}

type JobEvent<P, R> = { readonly event: 'status'; readonly data: { readonly record: R | null } } | { readonly event: 'progress'; readonly data: P } | { readonly event: 'done'; readonly data: R };

/**
 * Follows a host job (a migration, a copy) to its end: its event stream while it lasts, then — if the
 * stream broke, which is not the job's end — its status, polled. A host's own error answer ends it.
 */
async function followToEnd<P, R>(
  what: string,
  events: (signal: AbortSignal | undefined) => AsyncIterable<JobEvent<P, R>>,
  status: () => Promise<{ readonly record: R | null; readonly progress: P | null; readonly phase: string }>,
  opts: FollowOptions<P>,
): Promise<R> {
  const deadline = opts.timeoutMs !== undefined ? performance.now() + opts.timeoutMs : Infinity;
  const timeout = opts.timeoutMs !== undefined ? AbortSignal.timeout(opts.timeoutMs) : undefined;
  const signal = timeout !== undefined && opts.signal !== undefined ? AbortSignal.any([timeout, opts.signal]) : (timeout ?? opts.signal);
  try {
    for await (const e of events(signal)) {
      if (e.event === 'progress') opts.onProgress?.(e.data);
      else if (e.event === 'done') return e.data;
      else if (e.data.record !== null) return e.data.record;
    }
  } catch (err) {
    // A broken stream is not the job's end: ask for its status below. A host error is.
    if (err instanceof FerryError && err.origin === 'remote') throw err;
    if (opts.signal?.aborted === true) throw err;
  }
  for (;;) {
    const s = await status();
    if (s.record !== null) return s.record;
    if (performance.now() > deadline) throw new FerryError('HOST_ERROR', `${what} did not end within ${opts.timeoutMs ?? 0} ms (phase ${s.phase})`);
    if (opts.signal?.aborted === true) throw new FerryError('CANCELLED', `stopped waiting for ${what}`);
    if (s.progress !== null) opts.onProgress?.(s.progress);
    await new Promise((resolve) => setTimeout(resolve, MIGRATION_POLL_MS));
  }
}
