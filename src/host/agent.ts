/**
 * The host agent (`ferry host`): runs VMs, keeps their definitions in its data directory, serves an
 * authenticated control API over HTTP and a migration endpoint over TCP. Shutting down (SIGTERM)
 * pauses and saves every running VM to the data directory; the next start restores them.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { FerryError, errorMessage } from '../lib/errors.js';
import { GiB, formatBytes } from '../lib/units.js';
import { Vm, normalizeConfig } from '../vmm/vm.js';
import { restoreVm, saveVm } from '../vmm/persist.js';
import { instrumentImage, warmUpInstrumenter } from '../vmm/instrument.js';
import { warmUpSwitchoverCodecs } from '../migration/protocol/messages.js';
import { digestOf } from '../migration/digest.js';
import { MigrationJob, migrationOptionsSchema, type MigrationRecord } from '../migration/source.js';
import { MigrationReceiver } from '../migration/target.js';
import { bearerMatches } from './auth.js';
import { readJsonBody, sendError, sendJson } from './http.js';
import { HostStore } from './store.js';
import { VmSlot } from './vm-slot.js';

export const HOST_API_VERSION = 'v1';
/** Default memory the host lends to VMs in all (an operator sets it to what the machine can spare). */
export const DEFAULT_MEMORY_LIMIT_BYTES = 16 * GiB;
/** Finished migration jobs remembered for status queries. */
const MAX_FINISHED_JOBS = 100;

export interface HostOptions {
  readonly name: string;
  readonly dataDir: string;
  readonly listenHost: string;
  readonly listenPort: number;
  readonly token: string;
  readonly memoryLimitBytes?: number;
  /** Port for the migration endpoint (0: any free port). */
  readonly migrationPort?: number;
  readonly log?: (line: string) => void;
}

const createVmSchema = z.object({
  name: z.string(),
  imageBase64: z.string().min(8),
  memoryBytes: z.number().int().positive(),
  vcpus: z.number().int().positive().optional(),
  granularityBytes: z.number().int().positive().optional(),
  cmdline: z.string().optional(),
  hangTimeoutMs: z.number().positive().optional(),
  start: z.boolean().optional(),
}).strict();

const migrateSchema = z.object({
  to: z.string().url(),
  token: z.string().optional(),
  options: migrationOptionsSchema.optional(),
}).strict();

export class HostAgent {
  readonly name: string;
  readonly store: HostStore;
  private readonly slots = new Map<string, VmSlot>();
  private readonly jobs = new Map<string, MigrationJob>();
  private readonly server: Server;
  private readonly receiver: MigrationReceiver;
  private readonly memoryLimitBytes: number;
  private readonly log: (line: string) => void;
  private closing = false;
  private port = 0;

  private constructor(private readonly options: HostOptions) {
    this.name = options.name;
    this.store = new HostStore(options.dataDir);
    this.memoryLimitBytes = options.memoryLimitBytes ?? DEFAULT_MEMORY_LIMIT_BYTES;
    this.log = options.log ?? ((line) => { process.stderr.write(`${line}\n`); });
    this.server = createServer((req, res) => { void this.handle(req, res); });
    this.receiver = new MigrationReceiver({
      admit: (vm) => { this.admit(vm.name, vm.memoryBytes); },
      adopt: (vm, imageBytes) => this.adopt(vm, imageBytes),
      // Synchronous underneath (see HostStore.writeMigrationOutcome); an I/O error rejects.
      recordOutcome: (id, outcome, vmName) => new Promise<void>((resolve) => { this.store.writeMigrationOutcome(id, outcome, vmName); resolve(); }),
      storedOutcome: (id) => this.store.readMigrationOutcome(id),
      log: this.log,
    }, options.listenHost);
  }

  static async start(options: HostOptions): Promise<HostAgent> {
    const agent = new HostAgent(options);
    await agent.store.init();
    await agent.loadStoredVms();
    await agent.receiver.listen(options.migrationPort ?? 0);
    await new Promise<void>((resolve, reject) => {
      agent.server.once('error', reject);
      agent.server.listen(options.listenPort, options.listenHost, () => { agent.server.off('error', reject); resolve(); });
    });
    agent.port = (agent.server.address() as AddressInfo).port;
    // Warm binaryen up before the first VM arrives (its first run is several times slower).
    const tw = performance.now();
    warmUpInstrumenter();
    // ...and the switch-over's message codecs, which otherwise run cold with the guest stunned.
    warmUpSwitchoverCodecs();
    agent.log(`host ${agent.name}: instrumenter and switch-over codecs warmed up in ${(performance.now() - tw).toFixed(0)} ms`);
    agent.log(`host ${agent.name}: control API on ${agent.url}, migration endpoint on ${options.listenHost}:${agent.receiver.port}, data in ${options.dataDir}`);
    return agent;
  }

  get url(): string { return `http://${this.options.listenHost}:${this.port}`; }
  get migrationPort(): number { return this.receiver.port; }

  /** Restores VMs saved at the last shutdown; VMs lost in a crash come back as defined (not running). */
  private async loadStoredVms(): Promise<void> {
    const { vms, problems } = await this.store.loadAll();
    for (const p of problems) this.log(`host ${this.name}: ${p}`);
    for (const stored of vms) {
      const slot = new VmSlot(stored.config, stored.image);
      this.slots.set(slot.name, slot);
      if (stored.snapshotPath === null) continue;
      try {
        const vm = await restoreVm(stored.snapshotPath, { hangTimeoutMs: stored.config.hangTimeoutMs });
        slot.attach(vm);
        // The snapshot is consumed: a later crash must not resurrect this older state.
        await this.store.removeSnapshot(slot.name);
        await this.store.saveVm(slot.config, null, false);
        if (stored.runningAtShutdown) await vm.start();
        this.log(`host ${this.name}: restored VM ${slot.name} from its shutdown snapshot${stored.runningAtShutdown ? ' and resumed it' : ''}`);
      } catch (err) {
        this.log(`host ${this.name}: VM ${slot.name}: cannot restore its shutdown snapshot: ${errorMessage(err)}`);
      }
    }
  }

  /** Capacity and name checks for a VM about to arrive (create or incoming migration). */
  private admit(name: string, memoryBytes: number): void {
    if (this.closing) throw new FerryError('MIGRATION_REFUSED', `host ${this.name} is shutting down`);
    if (this.slots.has(name)) throw new FerryError('ALREADY_EXISTS', `host ${this.name} already has a VM named ${name}`);
    const used = [...this.slots.values()].reduce((a, s) => a + s.config.memoryBytes, 0);
    if (used + memoryBytes > this.memoryLimitBytes) {
      throw new FerryError('CAPACITY', `host ${this.name} cannot take ${formatBytes(memoryBytes)} more: ${formatBytes(used)} of ${formatBytes(this.memoryLimitBytes)} is committed to VMs`);
    }
  }

  /** A VM that arrived by migration and is now running here. */
  private adopt(vm: Vm, imageBytes: Uint8Array): Promise<void> {
    const slot = new VmSlot(vm.config, imageBytes);
    slot.attach(vm);
    this.slots.set(slot.name, slot);
    return this.persist(slot.name, () => this.store.saveVm(vm.config, imageBytes, false));
  }

  /** Store writes of one VM run one after another (a delete must not race a save). */
  private persist(name: string, op: () => Promise<void>): Promise<void> {
    const next = (this.pendingStore.get(name) ?? Promise.resolve()).catch(() => undefined).then(op);
    this.pendingStore.set(name, next);
    void next.finally(() => { if (this.pendingStore.get(name) === next) this.pendingStore.delete(name); }).catch(() => undefined);
    return next;
  }

  private readonly pendingStore = new Map<string, Promise<void>>();

  private slot(name: string): VmSlot {
    const slot = this.slots.get(name);
    if (slot === undefined) throw new FerryError('NOT_FOUND', `host ${this.name} has no VM named ${name}`);
    return slot;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      if (!bearerMatches(req.headers.authorization, this.options.token)) {
        // Refused before anything else happens, including reading the body.
        throw new FerryError('UNAUTHORIZED', 'missing or wrong API token (send Authorization: Bearer <token>)');
      }
      const url = new URL(req.url ?? '/', 'http://host');
      const parts = url.pathname.split('/').filter((p) => p !== '');
      if (parts[0] !== HOST_API_VERSION) throw new FerryError('NOT_FOUND', `unknown API path ${url.pathname}; the API is under /${HOST_API_VERSION}/`);
      await this.route(req, res, req.method ?? 'GET', parts.slice(1), url);
    } catch (err) {
      sendError(res, err);
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse, method: string, p: string[], url: URL): Promise<void> {
    // "incoming" is a fixed segment, so incoming migrations are addressed by the third one.
    const incoming = p[0] === 'migrations' && p[1] === 'incoming';
    const [a, b, c] = incoming ? ['migrations/incoming', p[2], undefined] : p;
    if (p.length > 3 || (incoming && p.length > 3)) throw new FerryError('NOT_FOUND', `no route ${method} ${url.pathname}`);
    const route = `${method} /${a ?? ''}${b !== undefined ? '/:x' : ''}${c !== undefined ? `/${c}` : ''}`;
    switch (route) {
      case 'GET /host':
        return sendJson(res, 200, this.hostInfo());
      case 'GET /vms':
        return sendJson(res, 200, { vms: [...this.slots.values()].map((s) => s.describe()) });
      case 'POST /vms':
        return sendJson(res, 201, await this.createVm(await readJsonBody(req)));
      case 'GET /vms/:x':
        return sendJson(res, 200, this.slot(b ?? '').describe());
      case 'DELETE /vms/:x':
        return sendJson(res, 200, await this.deleteVm(b ?? ''));
      case 'POST /vms/:x/start':
        return sendJson(res, 200, await this.startVm(b ?? ''));
      case 'POST /vms/:x/stop':
        return sendJson(res, 200, await this.stopVm(b ?? ''));
      case 'POST /vms/:x/pause': {
        const slot = this.slot(b ?? '');
        slot.requireFree('pause');
        const r = await slot.requireVm('pause').pause();
        return sendJson(res, 200, { ...slot.describe(), pauseLatencyMs: r.latencyMs });
      }
      case 'POST /vms/:x/resume': {
        const slot = this.slot(b ?? '');
        slot.requireFree('resume');
        slot.requireVm('resume').resume();
        return sendJson(res, 200, slot.describe());
      }
      case 'POST /vms/:x/verify':
        return sendJson(res, 200, await this.verifyVm(b ?? ''));
      case 'GET /vms/:x/console':
        return this.streamConsole(res, this.slot(b ?? ''), url.searchParams.get('follow') === '1');
      case 'POST /vms/:x/migrate':
        return sendJson(res, 202, this.startMigration(b ?? '', await readJsonBody(req)));
      case 'GET /migrations/:x':
        return sendJson(res, 200, this.job(b ?? '').status());
      case 'GET /migrations/:x/events':
        return this.streamEvents(req, res, this.job(b ?? ''));
      case 'DELETE /migrations/:x': {
        const job = this.job(b ?? '');
        job.cancel('cancelled by the operator');
        return sendJson(res, 202, job.status());
      }
      case 'POST /migrations/incoming':
        await readJsonBody(req, 4096);
        return sendJson(res, 201, this.receiver.issueTicket());
      case 'GET /migrations/incoming/:x':
        return sendJson(res, 200, { migrationId: b, outcome: await this.receiver.outcome(b ?? '') });
      default:
        throw new FerryError('NOT_FOUND', `no route ${method} ${url.pathname}`);
    }
  }

  hostInfo(): Record<string, unknown> {
    const used = [...this.slots.values()].reduce((a, s) => a + s.config.memoryBytes, 0);
    return {
      name: this.name, api: HOST_API_VERSION, migrationPort: this.receiver.port,
      memoryLimitBytes: this.memoryLimitBytes, memoryCommittedBytes: used, vms: this.slots.size,
    };
  }

  private async createVm(body: unknown): Promise<Record<string, unknown>> {
    const req = createVmSchema.safeParse(body);
    if (!req.success) throw new FerryError('BAD_REQUEST', `invalid VM definition: ${req.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    const d = req.data;
    const config = normalizeConfig({
      name: d.name, memoryBytes: d.memoryBytes,
      ...(d.vcpus !== undefined ? { vcpus: d.vcpus } : {}),
      ...(d.granularityBytes !== undefined ? { granularityBytes: d.granularityBytes } : {}),
      ...(d.cmdline !== undefined ? { cmdline: d.cmdline } : {}),
      ...(d.hangTimeoutMs !== undefined ? { hangTimeoutMs: d.hangTimeoutMs } : {}),
    });
    const image = new Uint8Array(Buffer.from(d.imageBase64, 'base64'));
    // Validate the image against this configuration now, not at first start.
    instrumentImage(image, { ramBytes: config.memoryBytes, granularityBytes: config.granularityBytes });
    this.admit(config.name, config.memoryBytes);
    const slot = new VmSlot(config, image);
    this.slots.set(slot.name, slot);
    try {
      await this.store.saveVm(config, image, false);
    } catch (err) {
      this.slots.delete(slot.name);
      throw err;
    }
    if (d.start === true) await this.startVm(slot.name);
    return slot.describe();
  }

  private async startVm(name: string): Promise<Record<string, unknown>> {
    const slot = this.slot(name);
    slot.requireFree('start');
    if (slot.vm !== null && (slot.vm.state === 'running' || slot.vm.state === 'paused' || slot.vm.state === 'halted')) {
      throw new FerryError('VM_STATE', `VM ${name} is already ${slot.vm.state}`);
    }
    const vm = slot.vm !== null && slot.vm.state === 'created' ? slot.vm : Vm.create(slot.imageBytes, slot.config);
    if (slot.vm !== vm) slot.attach(vm);
    await vm.start();
    return slot.describe();
  }

  private async stopVm(name: string): Promise<Record<string, unknown>> {
    const slot = this.slot(name);
    slot.requireFree('stop');
    if (slot.vm !== null) await slot.vm.stop();
    slot.vm = null;
    return slot.describe();
  }

  private async deleteVm(name: string): Promise<Record<string, unknown>> {
    const slot = this.slot(name);
    slot.requireFree('delete');
    if (slot.vm !== null && slot.vm.state !== 'stopped' && slot.vm.state !== 'crashed') {
      throw new FerryError('VM_STATE', `VM ${name} is ${slot.vm.state}; stop it before deleting it`);
    }
    await slot.vm?.stop();
    this.slots.delete(name);
    await this.persist(name, () => this.store.removeVm(name));
    return { name, deleted: true };
  }

  /** Pauses the VM, runs the guest's self-check and digests its RAM, then resumes it. */
  private async verifyVm(name: string): Promise<Record<string, unknown>> {
    const slot = this.slot(name);
    slot.requireFree('verify');
    const vm = slot.requireVm('verify');
    const wasRunning = vm.state === 'running';
    if (wasRunning) await vm.pause();
    try {
      const gapNs = vm.guestMaxClockGapNs();
      return {
        name, state: wasRunning ? 'running' : vm.state,
        selfcheck: vm.image.hasSelfcheck ? vm.selfcheck() : null,
        // The guest's own record of its longest stall since boot (includes every migration's downtime).
        guestMaxClockGapMs: gapNs === null ? null : Number(gapNs) / 1e6,
        digest: digestOf(vm.ram),
        claimedPages: vm.claimedPages,
      };
    } finally {
      if (wasRunning) vm.resume();
    }
  }

  private streamConsole(res: ServerResponse, slot: VmSlot, follow: boolean): void {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.write(slot.console.snapshot());
    if (!follow) { res.end(); return; }
    const stop = slot.console.follow((text) => { res.write(text); });
    res.on('close', stop);
  }

  private job(id: string): MigrationJob {
    const job = this.jobs.get(id);
    if (job === undefined) throw new FerryError('NOT_FOUND', `host ${this.name} has no migration ${id}`);
    return job;
  }

  private startMigration(name: string, body: unknown): Record<string, unknown> {
    const parsed = migrateSchema.safeParse(body);
    if (!parsed.success) throw new FerryError('BAD_REQUEST', `invalid migration request: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    const slot = this.slot(name);
    slot.requireFree('migrate');
    const vm = slot.requireVm('migrate');
    if (vm.state !== 'running' && vm.state !== 'paused') {
      const why = vm.crash !== null ? ` (${vm.crash.reason} on vCPU ${vm.crash.vcpu}: ${vm.crash.message})` : '';
      throw new FerryError('VM_STATE', `VM ${name} is ${vm.state}${why}; only a running or paused VM can be migrated`, vm.crash !== null ? { crash: vm.crash } : {});
    }
    const job = new MigrationJob(vm, slot.imageBytes, { url: parsed.data.to, token: parsed.data.token ?? this.options.token }, parsed.data.options ?? {}, this.log);
    slot.owner = `migration ${job.id}`;
    this.jobs.set(job.id, job);
    this.trimJobs();
    void job.run().then(async (record) => { await this.migrationFinished(slot, record); });
    return job.status();
  }

  private async migrationFinished(slot: VmSlot, record: MigrationRecord): Promise<void> {
    slot.owner = null;
    slot.lastMigration = record;
    if (record.outcome === 'succeeded') {
      // The VM runs on the target now: this host forgets it (its copy was stopped by the job).
      this.slots.delete(slot.name);
      await this.persist(slot.name, () => this.store.removeVm(slot.name)).catch((err: unknown) => { this.log(`host ${this.name}: cannot remove migrated VM ${slot.name}: ${errorMessage(err)}`); });
    }
  }

  private trimJobs(): void {
    const finished = [...this.jobs.values()].filter((j) => j.finished);
    for (const j of finished.slice(0, Math.max(0, finished.length - MAX_FINISHED_JOBS))) this.jobs.delete(j.id);
  }

  private streamEvents(req: IncomingMessage, res: ServerResponse, job: MigrationJob): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const send = (event: string, data: unknown): void => {
      res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    send('status', job.status());
    if (job.finished) { res.end(); return; }
    const onProgress = (p: unknown): void => { send('progress', p); };
    const onDone = (r: MigrationRecord): void => { send('done', r); res.end(); };
    job.on('progress', onProgress);
    job.once('done', onDone);
    req.on('close', () => { job.off('progress', onProgress); job.off('done', onDone); });
  }

  /**
   * Clean shutdown: migrations are cancelled (their VMs resume here), running VMs are paused and
   * saved to the data directory, every thread and socket is closed. Returns what happened per VM.
   */
  async close(): Promise<string[]> {
    if (this.closing) return [];
    this.closing = true;
    const report: string[] = [];
    for (const job of this.jobs.values()) if (!job.finished) job.cancel('host shutting down');
    for (const job of this.jobs.values()) await job.done;
    for (const slot of this.slots.values()) {
      const vm = slot.vm;
      if (vm === null) continue;
      const wasRunning = vm.state === 'running';
      try {
        if (wasRunning || vm.state === 'paused' || vm.state === 'halted') {
          if (wasRunning) await vm.pause();
          await saveVm(vm, this.store.snapshotPath(slot.name));
          await this.store.saveVm(slot.config, null, wasRunning);
          report.push(`VM ${slot.name}: paused and saved (${wasRunning ? 'will resume' : 'stays paused'} at the next start)`);
        } else if (vm.state === 'crashed') {
          report.push(`VM ${slot.name}: was crashed; nothing to save`);
        }
      } catch (err) {
        report.push(`VM ${slot.name}: NOT saved (${errorMessage(err)}); its running state is lost`);
      }
      await vm.stop();
    }
    await this.receiver.close();
    await new Promise<void>((resolve) => { this.server.close(() => { resolve(); }); this.server.closeAllConnections(); });
    return report;
  }
}

/** A fresh random token (for the demo and tests). */
export function randomToken(): string {
  return randomBytes(24).toString('hex');
}
