/**
 * The one typed client of the center's API (./center-v1.ts): used by the CLI, a host's center link,
 * the tests and (later) the UI's server side. URLs come from the route declarations, every answer is
 * checked against its schema; an error answer becomes a FerryError with the center's own code (origin
 * 'remote'), a center that cannot be reached a local CENTER_UNREACHABLE.
 *
 * The bearer is whichever secret the caller holds: an API token (clients) or a host credential (a
 * host's heartbeats). Join presents its token in the body and sends no bearer.
 *
 * The center speaks HTTPS with its own CA: a client is given that CA's certificate to trust (./tls.ts;
 * `ferry login` keeps it in the client config), a host also its own certificate. A center whose
 * certificate the client does not trust is TLS_UNTRUSTED, never silently accepted.
 */
import type { z } from 'zod';
import { FerryError, errorMessage } from '../lib/errors.js';
import {
  CENTER_OPENAPI_PATH, centerEventSchema, centerRoutes,
  type CenterCaView, type CenterEvent, type CenterHostDetail, type CenterRoute, type CenterTaskView, type CenterVmView, type HeartbeatRequest,
  type HeartbeatResult, type JoinRequest, type JoinResult, type JoinTokenView, type CenterCreateVmRequest, type CenterMigrateRequest, type CenterCopyRequest, type CenterPrepareMigrationRequest, type MaintenanceRequest,
} from './center-v1.js';
import { errorOf, pathOf, responseSchema } from './host-client.js';
import type { IncomingStatus } from './host-v1.js';
import type { DiskChainView } from './disk-v1.js';
import { readSse } from './sse.js';
import { TlsFetch, transportError, type TlsClientOptions } from './tls.js';
import { fingerprintOf, normalizeFingerprint } from '../lib/fingerprint.js';

/** Ordinary requests time out; the event stream does not. */
export const CENTER_TIMEOUT_MS = 30_000;
/** A task follower re-reads the task at least this often, whatever the event stream says. */
const TASK_WAIT_SLICE_MS = 1000;
/**
 * Reads of the task in a row that may fail by transport (the center restarting, a connection reset on a
 * loaded machine) before a follower gives up: a slice apart, so a blip of a few seconds is ridden out
 * while a center that is really gone is still reported within ~5 s.
 */
const MAX_TASK_WAIT_TRANSPORT_FAILURES = 5;

interface RequestOptions {
  readonly body?: unknown;
  readonly query?: Readonly<Record<string, string | number | undefined>>;
  readonly headers?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /** false: send no bearer (join). */
  readonly auth?: boolean;
}

export interface PageOptions<K> { readonly after?: K; readonly limit?: number }

type ResponseOf<R extends CenterRoute, S extends number> = R['responses'] extends { [K in S]: { content: { 'application/json': { schema: infer Z } } } }
  ? (Z extends z.ZodType ? z.output<Z> : never)
  : never;

const PEER = { what: 'center', fallback: 'CENTER_ERROR' } as const;

export class CenterClient {
  readonly baseUrl: string;
  readonly #tls: TlsFetch;

  /**
   * `secret`: an API token or a host credential; null for the calls that need none (health, CA, join).
   * `tls`: the center's CA to trust (default: the system's CAs, which do not know a center's own CA) and
   * a host's client certificate.
   */
  constructor(baseUrl: string, private readonly secret: string | null, tls: TlsClientOptions = {}) {
    this.baseUrl = centerOrigin(baseUrl);
    this.#tls = new TlsFetch(tls);
  }

  /**
   * The CA certificate a center presents at GET /api/v1/ca, read without trusting the center yet, and
   * accepted only if its fingerprint is `expected` (else TLS_UNTRUSTED); without `expected`, answered
   * for the caller to show a person, who decides. The CA is then what the caller trusts.
   */
  static async readCa(baseUrl: string, expected?: string): Promise<CenterCaView> {
    const want = expected === undefined ? undefined : normalizeFingerprint(expected);
    const probe = new CenterClient(baseUrl, null, { insecureReadCaOnly: true });
    let ca: CenterCaView;
    try { ca = await probe.json(centerRoutes.ca, {}, 200, { auth: false }); } finally { await probe.close(); }
    // Computed here, not taken from the answer: whoever answered may lie about the fingerprint.
    const fingerprint = fingerprintOf(ca.certificate);
    if (want !== undefined && fingerprint !== want) {
      throw new FerryError('TLS_UNTRUSTED', `center ${probe.baseUrl} presents a CA with fingerprint ${fingerprint}, not the expected ${want}: not trusted (another server, or a man in the middle)`, { fingerprint, expected: want });
    }
    return { certificate: ca.certificate, fingerprint };
  }

  /** Ends this client's pooled TLS connections. */
  close(): Promise<void> { return this.#tls.close(); }

  health(): Promise<ResponseOf<typeof centerRoutes.health, 200>> { return this.json(centerRoutes.health, {}, 200, { auth: false }); }
  ca(): Promise<CenterCaView> { return this.json(centerRoutes.ca, {}, 200, { auth: false }); }
  listSites(o: PageOptions<string> = {}): Promise<ResponseOf<typeof centerRoutes.listSites, 200>> {
    return this.json(centerRoutes.listSites, {}, 200, { query: { ...(o.after !== undefined ? { after: o.after } : {}), ...(o.limit !== undefined ? { limit: o.limit } : {}) } });
  }
  site(name: string): Promise<ResponseOf<typeof centerRoutes.getSite, 200>> { return this.json(centerRoutes.getSite, { name }, 200); }
  setSiteSubnet(site: string, virtualSubnet: string): Promise<ResponseOf<typeof centerRoutes.setSiteSubnet, 200>> {
    return this.json(centerRoutes.setSiteSubnet, { name: site }, 200, { body: { virtualSubnet } });
  }
  listHosts(o: PageOptions<string> & { state?: CenterHostDetail['state'] } = {}): Promise<ResponseOf<typeof centerRoutes.listHosts, 200>> {
    return this.json(centerRoutes.listHosts, {}, 200, { query: { ...o } });
  }
  host(name: string): Promise<CenterHostDetail> { return this.json(centerRoutes.getHost, { name }, 200); }
  listVms(o: PageOptions<string> & { host?: string; state?: CenterVmView['state'] } = {}): Promise<ResponseOf<typeof centerRoutes.listVms, 200>> {
    return this.json(centerRoutes.listVms, {}, 200, { query: { ...o } });
  }
  vm(name: string): Promise<CenterVmView> { return this.json(centerRoutes.getVm, { name }, 200); }
  /** The VM's disk chain (top first, with CIDs), asked of its host through the center. */
  vmDiskChain(name: string): Promise<DiskChainView> { return this.json(centerRoutes.vmDiskChain, { name }, 200); }
  listTasks(o: PageOptions<number> & { state?: CenterTaskView['state']; kind?: string; target?: string } = {}): Promise<ResponseOf<typeof centerRoutes.listTasks, 200>> {
    return this.json(centerRoutes.listTasks, {}, 200, { query: { ...o } });
  }
  task(id: number): Promise<CenterTaskView> { return this.json(centerRoutes.getTask, { id: String(id) }, 200); }
  cancelTask(id: number): Promise<CenterTaskView> { return this.json(centerRoutes.cancelTask, { id: String(id) }, 200); }
  createVm(req: CenterCreateVmRequest): Promise<CenterTaskView> { return this.json(centerRoutes.createVm, {}, 202, { body: req }); }
  startVm(name: string): Promise<CenterTaskView> { return this.json(centerRoutes.startVm, { name }, 202); }
  stopVm(name: string): Promise<CenterTaskView> { return this.json(centerRoutes.stopVm, { name }, 202); }
  deleteVm(name: string): Promise<CenterTaskView> { return this.json(centerRoutes.deleteVm, { name }, 202); }
  /** The VM's console from its host, through the center; with `follow`, a stream until `signal` aborts. */
  async console(name: string, opts: { follow?: boolean; signal?: AbortSignal } = {}): Promise<AsyncIterable<Uint8Array>> {
    const res = await this.send(centerRoutes.vmConsole, { name }, { query: opts.follow === true ? { follow: '1' } : {}, timeoutMs: opts.follow === true ? 0 : CENTER_TIMEOUT_MS, ...(opts.signal !== undefined ? { signal: opts.signal } : {}) });
    const body = res.body;
    if (body === null) return (async function* () { /* empty */ })();
    return body as AsyncIterable<Uint8Array>;
  }
  migrateVm(name: string, req: CenterMigrateRequest = {}): Promise<CenterTaskView> { return this.json(centerRoutes.migrateVm, { name }, 202, { body: req }); }
  /** A network file copy: answers its task (TASK_KINDS.copy). */
  /** Snapshot the VM's disk and seed its bases on a datastore of `toSite` (a `vm.prepare-migration` task). */
  prepareMigration(name: string, req: CenterPrepareMigrationRequest): Promise<CenterTaskView> { return this.json(centerRoutes.prepareMigration, { name }, 202, { body: req }); }
  copy(req: CenterCopyRequest): Promise<CenterTaskView> { return this.json(centerRoutes.createCopy, {}, 202, { body: req }); }
  /** Hand a running copy task to `to` (or a host the center picks). */
  moveTask(id: number, to?: string): Promise<CenterTaskView> { return this.json(centerRoutes.moveTask, { id: String(id) }, 202, { body: to !== undefined ? { to } : {} }); }
  maintenance(host: string, action: MaintenanceRequest['action']): Promise<CenterTaskView> { return this.json(centerRoutes.maintenance, { name: host }, 202, { body: { action } }); }

  /**
   * Waits for a task to finish and answers it as it ended: follows the event stream (every change to
   * `onChange`), re-reading the task after each of its events so nothing between two is missed; a
   * broken stream is resumed from the last event id seen.
   */
  async waitForTask(id: number, opts: { onChange?: (t: CenterTaskView) => void; signal?: AbortSignal; timeoutMs?: number } = {}): Promise<CenterTaskView> {
    const deadline = opts.timeoutMs !== undefined ? performance.now() + opts.timeoutMs : Infinity;
    const subject = `task:${id}`;
    let failures = 0;
    for (;;) {
      let t: CenterTaskView;
      try {
        t = await this.task(id);
        failures = 0;
      } catch (err) {
        const transport = err instanceof FerryError && err.code === 'CENTER_UNREACHABLE' && err.origin === 'local';
        if (!transport || ++failures >= MAX_TASK_WAIT_TRANSPORT_FAILURES || performance.now() > deadline || opts.signal?.aborted === true) throw err;
        await new Promise((resolve) => setTimeout(resolve, TASK_WAIT_SLICE_MS));
        continue;
      }
      opts.onChange?.(t);
      if (t.state === 'succeeded' || t.state === 'failed' || t.state === 'cancelled') return t;
      if (performance.now() > deadline) throw new FerryError('CENTER_ERROR', `task ${id} did not end within ${opts.timeoutMs ?? 0} ms (it is ${t.state}: ${t.phase})`);
      const ac = new AbortController();
      const timer = setTimeout(() => { ac.abort(); }, Math.min(TASK_WAIT_SLICE_MS, Math.max(1, deadline - performance.now())));
      const signal = opts.signal !== undefined ? AbortSignal.any([ac.signal, opts.signal]) : ac.signal;
      try {
        // Events only make the wait short: the task is read again after each slice, so one that
        // changed between the read and the stream's start costs at most a slice, never a miss.
        for await (const e of this.events(null, signal)) if (e.subject === subject) break;
      } catch {
        // A stream that broke (the center restarted, a proxy cut it) only ends this slice: the task is
        // read again at the top, and that read fails loudly if the center is really gone.
        if (opts.signal?.aborted === true) throw new FerryError('CANCELLED', `stopped waiting for task ${id}`);
      } finally {
        clearTimeout(timer);
        ac.abort();
      }
    }
  }

  createJoinToken(ttlMs?: number): Promise<JoinTokenView> { return this.json(centerRoutes.createJoinToken, {}, 201, { body: ttlMs !== undefined ? { ttlMs } : {} }); }
  join(req: JoinRequest): Promise<JoinResult> { return this.json(centerRoutes.joinHost, {}, 201, { body: req, auth: false }); }
  heartbeat(name: string, hb: HeartbeatRequest): Promise<HeartbeatResult> { return this.json(centerRoutes.heartbeat, { name }, 200, { body: hb }); }
  /** Host `name`, the source of the migration over path `pathId`, asks what the target recorded for incoming migration `id`. */
  brokeredIncoming(name: string, pathId: string, id: string, timeoutMs?: number): Promise<IncomingStatus> {
    return this.json(centerRoutes.brokeredIncoming, { name, path: pathId, id }, 200, timeoutMs !== undefined ? { timeoutMs } : {});
  }
  /** The center's Prometheus metrics, in the text exposition format. */
  async metrics(): Promise<string> { return (await this.send(centerRoutes.metrics, {}, {})).text(); }
  openApi(): Promise<unknown> { return this.raw('GET', CENTER_OPENAPI_PATH, { token: null }).then((r) => r.json()); }

  /**
   * The event stream: every event after `afterId` (replayed from the store), then live ones, until
   * `signal` aborts or the stream ends. A caller that reconnects passes the last id it saw.
   */
  async *events(afterId: number | null, signal?: AbortSignal): AsyncGenerator<CenterEvent> {
    const res = await this.send(centerRoutes.events, {}, { headers: afterId === null ? {} : { 'last-event-id': String(afterId) }, timeoutMs: 0, ...(signal !== undefined ? { signal } : {}) });
    if (res.body === null) return;
    for await (const { data } of readSse(res.body)) {
      const parsed = centerEventSchema.safeParse(data);
      if (!parsed.success) throw new FerryError('CENTER_ERROR', `center ${this.baseUrl} sent a malformed event: ${parsed.error.issues[0]?.message ?? ''}`);
      yield parsed.data;
    }
  }

  /** A request outside the declared routes (tests of the negative space). `token: null` sends no bearer. */
  raw(method: string, path: string, init: { body?: string; headers?: Record<string, string>; token?: string | null; signal?: AbortSignal } = {}): Promise<Response> {
    const headers: Record<string, string> = { 'content-type': 'application/json', ...(init.headers ?? {}) };
    const token = init.token === undefined ? this.secret : init.token;
    if (token !== null) headers.authorization = `Bearer ${token}`;
    return this.#tls.fetch(new URL(path, this.baseUrl), { method, headers, ...(init.body !== undefined ? { body: init.body } : {}), signal: init.signal ?? AbortSignal.timeout(CENTER_TIMEOUT_MS) });
  }

  private async json<R extends CenterRoute, S extends number>(route: R, params: Record<string, string>, status: S, opts: RequestOptions = {}): Promise<ResponseOf<R, S>> {
    const res = await this.send(route, params, opts);
    let payload: unknown;
    try { payload = await res.json(); } catch (err) {
      throw new FerryError('CENTER_ERROR', `center ${this.baseUrl} answered ${route.method.toUpperCase()} ${route.path} with a body that is not JSON: ${errorMessage(err)}`);
    }
    const parsed = responseSchema(route, status).safeParse(payload);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new FerryError('CENTER_ERROR', `center ${this.baseUrl} answered ${route.method.toUpperCase()} ${route.path} with an unexpected body (${issue?.path.join('.') ?? ''}: ${issue?.message ?? ''})`);
    }
    return parsed.data as ResponseOf<R, S>;
  }

  private async send(route: CenterRoute, params: Record<string, string>, opts: RequestOptions): Promise<Response> {
    const method = route.method.toUpperCase();
    const timeoutMs = opts.timeoutMs ?? CENTER_TIMEOUT_MS;
    const signals = [...(opts.signal !== undefined ? [opts.signal] : []), ...(timeoutMs > 0 ? [AbortSignal.timeout(timeoutMs)] : [])];
    const url = new URL(pathOf(route, params), this.baseUrl);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { 'content-type': 'application/json', ...(opts.headers ?? {}) };
    if (opts.auth !== false && this.secret !== null) headers.authorization = `Bearer ${this.secret}`;
    let res: Response;
    try {
      res = await this.#tls.fetch(url, {
        method, headers,
        ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
        ...(signals.length > 0 ? { signal: signals.length === 1 ? signals[0] : AbortSignal.any(signals) } : {}),
      });
    } catch (err) {
      throw transportError(err, `center ${this.baseUrl}`, `${method} ${route.path}`, 'CENTER_UNREACHABLE');
    }
    if (!res.ok) throw await errorOf(res, this.baseUrl, PEER);
    return res;
  }
}

/** The origin of a center URL; INVALID_ARGUMENT unless it is https:// (a center serves nothing else). */
export function centerOrigin(baseUrl: string): string {
  let u: URL;
  try {
    u = new URL(baseUrl);
  } catch (err) {
    throw new FerryError('INVALID_ARGUMENT', `"${baseUrl}" is not a center URL like https://127.0.0.1:7100 (${errorMessage(err)})`);
  }
  if (u.protocol !== 'https:') throw new FerryError('INVALID_ARGUMENT', `"${baseUrl}" is not a center URL like https://127.0.0.1:7100 (a center serves HTTPS only)`);
  return u.origin;
}
