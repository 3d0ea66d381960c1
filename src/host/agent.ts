/**
 * The host agent (`ferry host`): the one place a host's parts are wired — data directory, mounted
 * datastores, VM service, operations registry, outgoing migrations, the migration receiver on a transport,
 * network file copies (outgoing, and the copy receiver on its own port), and the HTTP app — plus boot
 * (restore saved VMs, warm the switch-over path) and shutdown (SIGTERM: migrations and copies cancelled,
 * running VMs paused and saved to the data directory, everything closed).
 */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { randomBytes } from 'node:crypto';
import { createAdaptorServer } from '@hono/node-server';
import { GiB, formatBytes } from '../lib/units.js';
import { FerryError, errorMessage } from '../lib/errors.js';
import { warmUpInstrumenter } from '../vmm/instrument.js';
import { WarmMemory, registerWarmMemory } from '../vmm/warm-memory.js';
import { computeLayout } from '../vmm/layout.js';
import { warmUpSwitchoverCodecs } from '../migration/protocol/messages.js';
import { MigrationReceiver } from '../migration/target/receiver.js';
import { listenError, tcpTransport } from '../dataplane/tcp.js';
import type { Transport } from '../dataplane/transport.js';
import { HOST_API_VERSION, type HostInfo } from '../api/host-v1.js';
import { buildHostApp } from './app.js';
import { HostStore } from './store.js';
import { OperationsRegistry } from './operations.js';
import { IncomingVmDisk, prepareIncomingDisk, sweepIncomingCopies } from './migration-disks.js';
import { VmService } from './vm-service.js';
import { MigrationService } from './migration-service.js';
import { DiskSnapshots } from './disk-snapshots.js';
import { HostDatastores, type DatastoreMount } from './datastores.js';
import { DEFAULT_LEASE_TIMING, type LeaseTiming } from '../storage/lease.js';
import { availableParallelism } from 'node:os';
import type { HeartbeatRequest } from '../api/center-v1.js';
import { CenterLink, type CenterLinkOptions, type HostTlsIdentity } from './center-link.js';
import { createLogger, lineLog, loggerFromLines, type Logger } from '../lib/logger.js';
import { HostMetrics } from './metrics.js';
import { HTTP_SERVER_IDLE_MS } from '../api/tls.js';
import { HostPaths } from './paths.js';
import { openPathDrivers, type PathDriverChoice } from './path-drivers.js';
import type { PathDriver } from '../dataplane/path/driver.js';
import type { TicketRequest, TicketView } from '../api/host-v1.js';
import { ticketOnPath } from './path-tickets.js';
import { CopyService } from './copy-service.js';
import { IncomingCopies } from './copy-incoming.js';
import { HostSeeds } from './seeds.js';

/** Default memory the host lends to VMs in all (an operator sets it to what the machine can spare). */
export const DEFAULT_MEMORY_LIMIT_BYTES = 16 * GiB;

export interface HostOptions {
  readonly name: string;
  readonly dataDir: string;
  readonly listenHost: string;
  readonly listenPort: number;
  readonly token: string;
  readonly memoryLimitBytes?: number;
  /**
   * Keep one guest memory for a VM of this much RAM faulted in ahead of need (src/vmm/warm-memory.ts):
   * the next VM of that size created or migrated here skips its page faults. Absent: none.
   */
  readonly warmMemoryBytes?: number;
  /** Port for the migration endpoint (0: any free port). */
  readonly migrationPort?: number;
  /** Port for the network file copy receiver (0: any free port). */
  readonly copyPort?: number;
  /** What carries migration and copy streams (default: plain TCP). */
  readonly transport?: Transport;
  /** Where the host logs (default: JSON lines on stderr, pretty on a terminal); every line is bound to `host`. */
  readonly logger?: Logger;
  /** An older form of `logger`: each line's message only. Ignored when `logger` is given. */
  readonly log?: (line: string) => void;
  /** Datastores to mount (`--datastore name=path`); checked before the host listens. */
  readonly datastores?: readonly DatastoreMount[];
  /** Lease duration and heartbeat of the disks this host writes (default: src/storage/lease.ts; tests shorten them). */
  readonly leaseTiming?: LeaseTiming;
  /** The center to join and heartbeat to (`--center`); without it the host stands alone. */
  readonly center?: Omit<CenterLinkOptions, 'hostName' | 'dataDir' | 'report' | 'log' | 'onIdentity'>;
  /**
   * Serve the control API over HTTPS with the certificate the center signed (`--tls`; needs `center`).
   * Until the first join gives it one, the API refuses every TLS handshake (nobody trusts the host
   * before that anyway); a joined host has it from its files before it listens.
   */
  readonly tls?: boolean;
  /**
   * The virtual-path drivers this host offers, in its order of preference (default: portable only) and
   * where their tunnel endpoint is (default: the control API's address, any free port).
   */
  readonly pathDrivers?: PathDriverChoice;
}

/** Random per run of a host: written into its disk leases, so that a restarted host never takes a lease of its previous run for its own. */
function newHostId(): string {
  return randomBytes(8).toString('hex');
}

export class HostAgent {
  readonly name: string;
  readonly hostId: string;
  readonly store: HostStore;
  readonly vms: VmService;
  readonly operations = new OperationsRegistry();
  private readonly migrations: MigrationService;
  readonly disks: DiskSnapshots;
  private readonly receiver: MigrationReceiver;
  /** This host's parts of network file copies, as the copying host. */
  readonly copies: CopyService;
  /** Copies other hosts send into this host's datastores (remote form), and the target journals. */
  readonly incomingCopies: IncomingCopies;
  /** The seeds this host's datastores hold for cross-site migrations. */
  readonly seeds: HostSeeds;
  private readonly server: Server | HttpsServer;
  private readonly memoryLimitBytes: number;
  /** The host's logger (bound to its name). */
  readonly logger: Logger;
  private readonly log: (line: string) => void;
  readonly metrics: HostMetrics;
  /** The virtual paths of the mobility operations this host takes part in. */
  readonly paths: HostPaths;
  private closing = false;
  private port = 0;
  /** The spare guest memory (--warm-memory) and the function that withdraws it; null without one. */
  private warm: { readonly memory: WarmMemory; readonly unregister: () => void } | null = null;
  /** The link to the center, if the host was started with one. */
  centerLink: CenterLink | null = null;

  private constructor(private readonly options: HostOptions, hostId: string, readonly datastores: HostDatastores, pathDrivers: readonly PathDriver[]) {
    this.name = options.name;
    this.hostId = hostId;
    this.store = new HostStore(options.dataDir);
    this.memoryLimitBytes = options.memoryLimitBytes ?? DEFAULT_MEMORY_LIMIT_BYTES;
    const base = options.logger ?? (options.log !== undefined ? loggerFromLines(options.log) : createLogger());
    this.logger = base.child({ host: this.name });
    this.log = lineLog(this.logger);
    const transport = options.transport ?? tcpTransport;
    this.vms = new VmService({ hostName: this.name, store: this.store, operations: this.operations, memoryLimitBytes: this.memoryLimitBytes, datastores, log: this.log });
    // Read at scrape time: the path registry is made just below.
    this.metrics = new HostMetrics(() => this.vms.list().map((v) => v.state), () => this.paths.list().map((p) => p.driver));
    this.paths = new HostPaths({ store: this.store, drivers: pathDrivers, logger: this.logger.child({ component: 'paths' }) });
    this.migrations = new MigrationService({
      paths: this.paths,
      brokeredOutcome: (pathId, id, timeoutMs) => {
        const link = this.centerLink;
        if (link === null) return Promise.reject(new FerryError('CENTER_UNREACHABLE', 'a migration over a virtual path asks its center what the target recorded, and this host has no center'));
        return link.brokeredOutcome(pathId, id, timeoutMs);
      },
      hostName: this.name, token: options.token, vms: this.vms, operations: this.operations, datastores, transport, logger: this.logger, metrics: this.metrics,
      // Once joined: this host's certificate and the center's CA, for targets that serve HTTPS.
      peerTls: () => this.centerLink?.tls ?? {},
    });
    this.copies = new CopyService({ hostName: this.name, datastores, transport, paths: this.paths, logger: this.logger, metrics: this.metrics });
    this.incomingCopies = new IncomingCopies({ datastores, paths: this.paths, transport, at: { host: options.listenHost, port: options.copyPort ?? 0 }, logger: this.logger });
    this.seeds = new HostSeeds({ hostName: this.name, datastores, vms: this.vms, log: this.log });
    this.disks = new DiskSnapshots({ hostName: this.name, vms: this.vms, operations: this.operations, datastores, log: this.log });
    this.receiver = new MigrationReceiver({
      admit: (vm) => { this.vms.admit(vm.name, vm.memoryBytes); },
      adopt: (vm, imageBytes, disk) => {
        const saved = this.vms.adopt(vm, imageBytes, disk instanceof IncomingVmDisk ? disk.vmDisk : null);
        return disk instanceof IncomingVmDisk ? saved.then(() => disk.kept()) : saved;
      },
      prepareDisk: (id, vmName, plan) => prepareIncomingDisk(datastores, vmName, plan, {
        notes: { note: (spec) => this.store.writeIncomingCopy(id, spec), forget: () => this.store.removeIncomingCopy(id) },
        hostName: this.name, holds: this.seeds, log: lineLog(this.logger.child({ migrationId: id, role: 'target', vm: vmName })),
      }),
      // Synchronous underneath (see HostStore.writeMigrationOutcome); an I/O error rejects.
      recordOutcome: (id, outcome, vmName) => new Promise<void>((resolve) => { this.store.writeMigrationOutcome(id, outcome, vmName); resolve(); }),
      storedOutcome: (id) => this.store.readMigrationOutcome(id),
      log: this.log,
      logFor: (ids) => lineLog(this.logger.child({ migrationId: ids.migrationId, incomingId: ids.incomingId, role: 'target', ...(ids.vm !== undefined ? { vm: ids.vm } : {}) })),
      observer: this.metrics.incoming,
    }, transport, { host: options.listenHost, port: options.migrationPort ?? 0 });
    if (options.tls === true && options.center === undefined) throw new FerryError('INVALID_ARGUMENT', 'a host serves HTTPS with the certificate of its center: --tls needs --center');
    const app = buildHostApp({
      token: options.token, centerToken: () => this.centerLink?.controlToken ?? null, vms: this.vms, migrations: this.migrations, disks: this.disks, hostInfo: () => this.hostInfo(), listDatastores: () => this.datastores.list(),
      paths: this.paths, issueTicket: (req) => this.issueTicket(req), incomingOutcome: (id) => this.receiver.outcome(id), metrics: this.metrics,
      statDatastoreFiles: (name, paths) => this.datastores.stat(name, paths),
      copies: this.copies, incomingCopies: this.incomingCopies, seeds: this.seeds,
    });
    // An HTTPS server without a certificate yet: setSecureContext gives it the center-signed one (./center-link.ts).
    this.server = options.tls === true
      ? createAdaptorServer({ fetch: app.fetch, createServer: createHttpsServer, serverOptions: {} }) as HttpsServer
      : createAdaptorServer({ fetch: app.fetch }) as Server;
    // Clients drop idle connections first (see HTTP_SERVER_IDLE_MS): no request lands on one being closed.
    this.server.keepAliveTimeout = HTTP_SERVER_IDLE_MS;
  }

  static async start(options: HostOptions): Promise<HostAgent> {
    if (options.warmMemoryBytes !== undefined) checkWarmMemory(options.warmMemoryBytes, options.memoryLimitBytes ?? DEFAULT_MEMORY_LIMIT_BYTES);
    const hostId = newHostId();
    const datastores = await HostDatastores.mount(options.datastores ?? [], { hostName: options.name, hostId }, options.leaseTiming);
    const drivers = await openPathDrivers(options.pathDrivers ?? {}, options.listenHost);
    const agent = new HostAgent(options, hostId, datastores, drivers);
    await agent.store.init();
    // What a crashed run's paths left (interfaces, routes) goes before anything new is set up.
    await agent.paths.start();
    // Warm binaryen up before the first VM arrives (its first run is several times slower). Before
    // the saved VMs' disks are attached: the warm-up blocks the event loop — for seconds on a
    // loaded machine — and with it the heartbeat of every lease already held.
    const tw = performance.now();
    warmUpInstrumenter();
    // ...and the switch-over's message codecs, which otherwise run cold with the guest stunned.
    warmUpSwitchoverCodecs();
    agent.log(`host ${agent.name}: instrumenter and switch-over codecs warmed up in ${(performance.now() - tw).toFixed(0)} ms`);
    await agent.vms.load();
    agent.startWarmMemory();
    // Copies left by a crash mid-migration: in the background, as each one's stale lease expires.
    const timing = options.leaseTiming ?? DEFAULT_LEASE_TIMING;
    void sweepIncomingCopies(agent.store, datastores, 2 * timing.durationMs + timing.clockSkewMs, agent.log, () => agent.closing)
      .catch((err: unknown) => { agent.log(`host ${agent.name}: cannot sweep incoming disk copies: ${errorMessage(err)}`); });
    if (options.center !== undefined) {
      agent.centerLink = new CenterLink({
        ...options.center, hostName: agent.name, dataDir: options.dataDir, report: () => agent.centerReport(), log: lineLog(agent.logger.child({ component: 'center-link' })),
        ...(options.tls === true ? { onIdentity: (tls: HostTlsIdentity) => { agent.useCertificate(tls); } } : {}),
      });
    }
    try {
      // A joined host serving HTTPS has its certificate before its first connection.
      if (options.tls === true) await agent.centerLink?.loadStored();
      await agent.receiver.listen();
      await agent.incomingCopies.listen();
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => { reject(listenError(err, `${options.listenHost}:${options.listenPort}`)); };
        agent.server.once('error', onError);
        agent.server.listen(options.listenPort, options.listenHost, () => { agent.server.off('error', onError); resolve(); });
      });
    } catch (err) {
      // Nothing of a host that could not start stays behind: VMs saved, disks' leases released, ports closed.
      await agent.vms.saveAll().catch(() => undefined);
      await agent.receiver.close().catch(() => undefined);
      await agent.incomingCopies.close().catch(() => undefined);
      await agent.paths.close().catch(() => undefined);
      throw err;
    }
    agent.port = (agent.server.address() as AddressInfo).port;
    agent.log(`host ${agent.name}: control API on ${agent.url}, migration endpoint on ${options.listenHost}:${agent.receiver.port}, copy endpoint on ${options.listenHost}:${agent.incomingCopies.port}, data in ${options.dataDir}, host id ${hostId}`);
    for (const ds of datastores.names) agent.log(`host ${agent.name}: datastore ${ds} mounted at ${datastores.get(ds).location}`);
    const offered = agent.paths.drivers();
    agent.log(offered.length === 0
      ? `host ${agent.name}: no virtual-path drivers (--path-drivers none): the center connects its migrations directly`
      : `host ${agent.name}: virtual-path drivers ${offered.map((d) => `${d.kind} (tunnel endpoint ${d.endpoint.host}:${d.endpoint.port})`).join(', ')}`);
    agent.centerLink?.start();
    return agent;
  }

  get url(): string {
    const h = this.options.listenHost;
    return `${this.options.tls === true ? 'https' : 'http'}://${h.includes(':') ? `[${h}]` : h}:${this.port}`;
  }

  /** Serve HTTPS with this certificate from now on (new connections; open ones keep theirs). */
  private useCertificate(tls: HostTlsIdentity): void {
    if (!('setSecureContext' in this.server)) return;
    this.server.setSecureContext({ key: tls.keyPem, cert: tls.certPem });
    this.log(`host ${this.name}: control API serves HTTPS with the certificate from the center`);
  }

  get migrationPort(): number { return this.receiver.port; }
  get copyPort(): number { return this.incomingCopies.port; }

  /** A ticket for an incoming migration; with a path id, the migration comes through that operation's path to this host's virtual address. */
  private async issueTicket(req: TicketRequest): Promise<TicketView> {
    if (req.pathId === undefined) return this.receiver.issueTicket(req.sourceMigrationId);
    const from = req.sourceMigrationId;
    return ticketOnPath(this.paths, req.pathId, 'migration', (via) => this.receiver.issueTicket(from, via));
  }

  hostInfo(): HostInfo {
    return {
      name: this.name, hostId: this.hostId, api: HOST_API_VERSION, migrationPort: this.receiver.port, copyPort: this.incomingCopies.port,
      memoryLimitBytes: this.memoryLimitBytes, memoryCommittedBytes: this.vms.memoryCommittedBytes, vms: this.vms.count,
    };
  }

  /** What a heartbeat tells the center: capacity, datastores with their identities and space, VMs. */
  async centerReport(): Promise<HeartbeatRequest> {
    const datastores = (await this.datastores.list()).map((d) => ({ name: d.name, id: d.id, spaceLeftBytes: d.spaceLeftBytes, totalBytes: d.totalBytes }));
    const vms = this.vms.list().map((v) => ({
      name: v.name, state: v.state, memoryBytes: v.config.memoryBytes, vcpus: v.config.vcpus,
      disk: v.disk === null ? null : { datastore: v.disk.datastore, path: v.disk.path, capacityBytes: v.disk.capacityBytes },
    }));
    return { url: this.url, capacity: { memoryBytes: this.memoryLimitBytes, vcpus: availableParallelism() }, datastores, vms, dataPlane: { drivers: this.paths.drivers() } };
  }

  /**
   * Clean shutdown: migrations are cancelled (their VMs resume here), copies are cancelled (their
   * journals stay for another host to resume), running VMs are paused and saved to the data directory,
   * every thread and socket is closed. Returns what happened per VM.
   */
  /** After the saved VMs are back (they allocate first): the spare fills in the background. */
  private startWarmMemory(): void {
    const bytes = this.options.warmMemoryBytes;
    if (bytes === undefined) return;
    const memory = new WarmMemory(bytes, (line) => { this.log(`host ${this.name}: ${line}`); });
    this.warm = { memory, unregister: registerWarmMemory(memory) };
    void memory.fill();
  }

  async close(): Promise<string[]> {
    if (this.closing) return [];
    this.closing = true;
    this.warm?.unregister();
    this.warm?.memory.close();
    // The center learns of the shutdown by silence: the host's VMs show unknown until it is back.
    await this.centerLink?.close();
    this.vms.closing = true;
    await this.migrations.cancelAll('host shutting down');
    // Before VMs are saved (seconds each): a cancelled copy ends at once, its journal kept, and the source
    // leases it lets go of are free sooner for the host the center hands the copy to.
    await this.copies.cancelAll('host shutting down');
    // A disk operation is not cut off between its steps: it ends (they are bounded) before VMs are saved.
    await this.disks.drain();
    const report = await this.vms.saveAll();
    await this.receiver.close();
    await this.incomingCopies.close();
    await this.paths.close();
    await new Promise<void>((resolve) => { this.server.close(() => { resolve(); }); this.server.closeAllConnections(); });
    return report;
  }
}

/** --warm-memory must name a VM size the host could take at all. */
function checkWarmMemory(bytes: number, limitBytes: number): void {
  try {
    computeLayout(bytes);
  } catch (err) {
    throw new FerryError('INVALID_ARGUMENT', `--warm-memory: ${errorMessage(err)}`, { warmMemoryBytes: bytes });
  }
  if (bytes > limitBytes) {
    throw new FerryError('INVALID_ARGUMENT', `--warm-memory ${formatBytes(bytes)} is more than the host may commit to VMs (${formatBytes(limitBytes)}, --memory-limit): no VM of that size could come`, { warmMemoryBytes: bytes, memoryLimitBytes: limitBytes });
  }
}

/** A fresh random token (for the demo and tests). */
export function randomToken(): string {
  return randomBytes(24).toString('hex');
}
