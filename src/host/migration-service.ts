/**
 * Outgoing migrations of one host: starts a MigrationJob for a VM (which claims the VM in the
 * operations registry for as long as it runs), answers status and event queries, cancels, and
 * when a job ends hands the VM's fate back to the VM service (gone on success, here otherwise).
 */
import { FerryError, isFerryError } from '../lib/errors.js';
import { HostClient } from '../api/host-client.js';
import type { TlsClientOptions } from '../api/tls.js';
import type { MigrationSourceDisk } from '../migration/disk.js';
import type { HostDatastores } from './datastores.js';
import { planDisk, sourceDisk } from './migration-disks.js';
import type { VmDisk } from './vm-disk.js';
import { MigrationJob } from '../migration/source/job.js';
import type { Transport } from '../dataplane/transport.js';
import type { DatastoreView, MigrateRequest, MigrationStatus } from '../api/host-v1.js';
import type { OperationsRegistry } from './operations.js';
import type { VmService } from './vm-service.js';
import { HostApiTargetPeer } from './target-peer.js';
import { lineLog, type Logger } from '../lib/logger.js';
import type { HostMetrics } from './metrics.js';
import type { HostPaths } from './paths.js';
import { BrokeredTargetPeer, type BrokeredOutcome } from './brokered-peer.js';
import type { MigrationTargetPeer } from '../migration/peer.js';

/** Finished migration jobs remembered for status queries; the oldest finished go first. */
export const MAX_FINISHED_JOBS = 100;

export interface MigrationServiceOptions {
  readonly hostName: string;
  readonly token: string;
  readonly vms: VmService;
  readonly operations: OperationsRegistry;
  readonly datastores: HostDatastores;
  readonly transport: Transport;
  /** The host's logger: each migration logs through a child bound to its id and VM. */
  readonly logger: Logger;
  readonly metrics?: HostMetrics;
  /** What this host presents and trusts when it calls a target host (a joined host: its certificate and the center's CA). */
  readonly peerTls?: () => TlsClientOptions;
  /** The host's virtual paths: a migration over one (`isolated`) gets the path as its transport. */
  readonly paths: HostPaths;
  /** How an isolated migration's source asks the center what its target recorded (in doubt). */
  readonly brokeredOutcome: BrokeredOutcome;
}

/** Who the migration talks to and over what: the target's API and the host's transport, or the center's broker and the operation's path. */
interface Route {
  readonly peer: MigrationTargetPeer;
  readonly transport: Transport;
  readonly targetDatastores: () => Promise<DatastoreView[]>;
  /** Called when the job ended (the source's end of the path is removed then). */
  readonly ended: () => Promise<void>;
}

export class MigrationService {
  private readonly jobs = new Map<string, MigrationJob>();

  constructor(private readonly o: MigrationServiceOptions) {}

  job(id: string): MigrationJob {
    const job = this.jobs.get(id);
    if (job === undefined) throw new FerryError('NOT_FOUND', `host ${this.o.hostName} has no migration ${id}`);
    return job;
  }

  status(id: string): MigrationStatus { return this.job(id).status(); }

  async start(name: string, req: MigrateRequest): Promise<MigrationStatus> {
    if (req.migrationId !== undefined) {
      const known = this.jobs.get(req.migrationId);
      if (known !== undefined) {
        if (known.status().vm !== name) throw new FerryError('ALREADY_EXISTS', `migration ${req.migrationId} on host ${this.o.hostName} is of VM ${known.status().vm}, not ${name}`);
        return known.status();
      }
    }
    const slot = this.o.vms.slot(name);
    this.o.operations.requireFree(name, 'migrate');
    const vm = slot.requireVm('migrate');
    if (vm.state !== 'running' && vm.state !== 'paused') {
      const why = vm.crash !== null ? ` (${vm.crash.reason} on vCPU ${vm.crash.vcpu}: ${vm.crash.message})` : '';
      throw new FerryError('VM_STATE', `VM ${name} is ${vm.state}${why}; only a running or paused VM can be migrated`, vm.crash !== null ? { crash: vm.crash } : {});
    }
    const route = this.routeFor(req);
    const disk = slot.disk !== null ? await this.diskFor(slot.disk, req, route) : null;
    // Asked again: the VM may have been claimed while the target was being asked about datastores.
    this.o.operations.requireFree(name, 'migrate');
    // The job makes its id; its lines are bound to it from the first (the constructor logs nothing).
    let log = lineLog(this.o.logger);
    const job = new MigrationJob(vm, slot.imageBytes, route.peer, route.transport, req.options ?? {}, disk, (line) => { log(line); }, ...(req.migrationId !== undefined ? [req.migrationId] : []));
    log = lineLog(this.o.logger.child({ migrationId: job.id, role: 'source', vm: name }));
    const claim = this.o.operations.claim(name, `migration ${job.id}`, 'migrate');
    this.jobs.set(job.id, job);
    this.trim();
    this.o.metrics?.outgoingStarted();
    void job.run().then(async (record) => {
      this.o.metrics?.outgoingEnded(record);
      claim.release();
      await route.ended().catch(() => undefined);
      slot.lastMigration = record;
      if (record.outcome === 'succeeded') await this.o.vms.departed(name);
    });
    return job.status();
  }

  /** A direct migration talks to the target's API over the host's transport; an isolated one only to the center and over its path. */
  private routeFor(req: MigrateRequest): Route {
    const iso = req.isolated;
    if (iso !== undefined) {
      const path = this.o.paths.transport(iso.pathId, 'source');
      return {
        peer: new BrokeredTargetPeer(iso.target, iso.pathId, iso.ticket, path.spec.peerAddress, this.o.brokeredOutcome),
        transport: path,
        targetDatastores: () => Promise.resolve(iso.targetDatastores),
        ended: async () => { await this.o.paths.remove(iso.pathId, 'the migration ended on its source'); },
      };
    }
    const to = req.to;
    if (to === undefined) throw new FerryError('INVALID_ARGUMENT', 'a migration needs "to" (the target host\'s URL) or "isolated" (a virtual path from the center)');
    const token = req.token ?? this.o.token;
    return {
      peer: new HostApiTargetPeer(to, token, this.o.peerTls?.() ?? {}),
      transport: this.o.transport,
      targetDatastores: () => this.listTargetDatastores(to, token),
      ended: () => Promise.resolve(),
    };
  }

  private async listTargetDatastores(to: string, token: string): Promise<DatastoreView[]> {
    try {
      const client = new HostClient(to, token, this.o.peerTls?.() ?? {});
      try { return await client.listDatastores(); } finally { await client.close(); }
    } catch (err) {
      if (isFerryError(err) && err.origin === 'remote') throw new FerryError('MIGRATION_REFUSED', `target ${to} would not list its datastores: ${err.message}`, { remoteCode: err.code });
      throw err;
    }
  }

  /** How the VM's disk moves, decided from what the target mounts (and the request's disk destination). */
  private async diskFor(disk: VmDisk, req: MigrateRequest, route: Route): Promise<MigrationSourceDisk> {
    if (!disk.attached) throw new FerryError('VM_STATE', `the VM's disk ${disk.spec.datastore}:${disk.spec.path} is not attached here`);
    return sourceDisk(disk, await planDisk(disk, this.o.datastores, await route.targetDatastores(), req.disk));
  }

  cancel(id: string): MigrationStatus {
    const job = this.job(id);
    job.cancel('cancelled by the operator');
    return job.status();
  }

  /** Cancels every running migration (their VMs stay here) and waits for all to end. */
  async cancelAll(reason: string): Promise<void> {
    for (const job of this.jobs.values()) if (!job.finished) job.cancel(reason);
    for (const job of this.jobs.values()) await job.done;
  }

  private trim(): void {
    const finished = [...this.jobs.values()].filter((j) => j.finished);
    for (const j of finished.slice(0, Math.max(0, finished.length - MAX_FINISHED_JOBS))) this.jobs.delete(j.id);
  }
}

