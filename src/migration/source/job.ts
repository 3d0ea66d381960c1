/**
 * The source side of a live migration (docs/migration-protocol.md): prepare the target, pre-copy
 * memory in rounds while the guest runs (write traces say what to re-send), converge (auto-converge
 * throttling if the guest outruns the link), switch over (stun, last dirty pages, vCPU state,
 * digest, commit), and release — or roll back so the VM keeps running here.
 *
 * A MigrationJob *owns* its VM while it runs. `run()` never throws: the outcome is in the record.
 * This file is the orchestration only; each phase is its own file, sharing a JobContext.
 */
import { migrationBegins } from '../in-progress.js';
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { FerryError, errorMessage, isFerryError } from '../../lib/errors.js';
import type { Transport } from '../../dataplane/transport.js';
import type { Vm } from '../../vmm/vm.js';
import type { MigrationOptions } from '../options.js';
import type { MigrationTargetPeer } from '../peer.js';
import type { MigrationJobStatus, MigrationOutcome, MigrationPhase, MigrationProgress, MigrationRecord } from '../record.js';
import { tag, type JobContext } from './context.js';
import { resolveInDoubt } from './in-doubt.js';
import { PreCopy, tracePlan } from './precopy.js';
import { ProgressReporter } from './progress.js';
import { RecordBuilder } from './record.js';
import { rollback, type VmBefore } from './rollback.js';
import { PageSender } from './sender.js';
import { DiskSender } from './disk-sender.js';
import type { MigrationSourceDisk } from '../disk.js';
import { REQUEST_TIMEOUT_MS, Session } from './session.js';
import { switchover } from './switchover.js';

interface JobEvents {
  progress: [MigrationProgress];
  done: [MigrationRecord];
}

export class MigrationJob extends EventEmitter<JobEvents> {
  readonly id: string;
  readonly done: Promise<MigrationRecord>;
  private resolveDone: (r: MigrationRecord) => void = () => undefined;
  private readonly abort = new AbortController();
  private readonly ctx: JobContext;
  private readonly session: Session;
  private readonly tracingBefore: Omit<VmBefore, 'wasRunning'>;
  private wasRunning = false;
  private record: MigrationRecord | null = null;
  private diskSender: DiskSender | null = null;

  constructor(
    vm: Vm,
    imageBytes: Uint8Array,
    target: MigrationTargetPeer,
    transport: Transport,
    options: MigrationOptions,
    disk: MigrationSourceDisk | null,
    log: (line: string) => void = () => undefined,
    /** The caller's id for it (a center that must find it again after a restart), else a random one. */
    id: string = randomBytes(16).toString('hex'),
  ) {
    super();
    this.id = id;
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
    const record = new RecordBuilder(tracePlan(options, vm.granularityBytes));
    if (disk !== null) record.disk = { mode: disk.plan.mode, capacityBytes: disk.plan.capacityBytes, sentBytes: 0, digest: null, releaseMs: null };
    this.ctx = {
      id: this.id, vm, disk, preparedDisk: null, target, options, requestTimeoutMs: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS, record,
      progress: new ProgressReporter(this.id, record, (p) => { this.emit('progress', p); }), signal: this.abort.signal, log,
    };
    this.session = new Session(this.ctx, transport, imageBytes);
    this.tracingBefore = { granularityBytes: vm.granularityBytes, strategy: vm.tracker.strategy };
  }

  get finished(): boolean { return this.record !== null; }

  status(): MigrationJobStatus {
    return {
      migrationId: this.id, vm: this.ctx.vm.config.name, to: this.ctx.target.label,
      state: this.record === null ? 'running' : this.record.outcome, phase: this.ctx.record.phase,
      progress: this.ctx.progress.last, record: this.record,
    };
  }

  /** Cancels the migration: before the commit it rolls back (the VM keeps running here). */
  cancel(reason: string): void {
    if (this.record !== null) return;
    this.abort.abort(new FerryError('MIGRATION_CANCELLED', reason));
    // Fail in-flight requests now so the job unwinds promptly.
    if (this.ctx.record.phase !== 'switchover' || !this.session.commitSent) this.session.fail(new FerryError('MIGRATION_CANCELLED', reason));
  }

  async run(): Promise<MigrationRecord> {
    let error: FerryError | null = null;
    let outcome: MigrationOutcome = 'succeeded';
    this.wasRunning = this.ctx.vm.state === 'running';
    const ended = migrationBegins(this);
    try {
      await this.migrate();
    } catch (err) {
      error = isFerryError(err) ? err : new FerryError('MIGRATION_FAILED', errorMessage(err));
      outcome = await this.recover(error);
    } finally {
      this.diskSender?.stop();
      this.session.close();
      ended();
    }
    if (outcome === 'succeeded' && error === null) {
      this.enter('release');
      await this.ctx.vm.stop();
    }
    return this.finish(outcome, error);
  }

  private async migrate(): Promise<void> {
    this.enter('prepare');
    await this.session.open();
    const sender = new PageSender(this.ctx, this.session.data);
    const disk = this.ctx.disk;
    this.diskSender = disk !== null && disk.plan.mode === 'copy' ? new DiskSender(this.ctx, this.session.data, disk) : null;
    this.enter('precopy');
    const finalDirty = await new PreCopy(this.ctx, this.session, sender, this.diskSender).run();
    this.enter('switchover');
    await switchover(this.ctx, this.session, sender, this.diskSender, finalDirty);
  }

  /** After a failure: roll back, unless COMMIT was sent and its reply lost (then ask the target). */
  private async recover(error: FerryError): Promise<MigrationOutcome> {
    // An ERROR *reply* to COMMIT is a definite "not committed"; only a lost reply is in doubt.
    const refusedByTarget = error.origin === 'remote';
    if (this.session.commitSent && !refusedByTarget) {
      this.enter('resolve');
      return resolveInDoubt(this.ctx, this.session.remoteId, () => this.rollback(error));
    }
    await this.rollback(error);
    return error.code === 'MIGRATION_CANCELLED' ? 'cancelled' : 'failed';
  }

  /** Before COMMIT was sent (or the target said it did not commit): the VM continues here. */
  private async rollback(error: FerryError): Promise<void> {
    this.enter('rollback');
    try {
      await rollback(this.ctx.vm, this.session, error, { ...this.tracingBefore, wasRunning: this.wasRunning }, this.ctx.disk);
    } catch (err) {
      // The VM stays paused (it has no disk to run on); the record keeps the migration's own error.
      this.ctx.log(`${tag(this.ctx)}: ${errorMessage(err)}`);
    }
  }

  private enter(phase: MigrationPhase): void {
    this.ctx.record.enter(phase);
    this.ctx.log(`${tag(this.ctx)} (${this.ctx.vm.config.name} -> ${this.ctx.target.label}): ${phase}`);
  }

  private finish(outcome: MigrationOutcome, error: FerryError | null): MigrationRecord {
    const { vm, target, options } = this.ctx;
    const record = this.ctx.record.build({ migrationId: this.id, vm: vm.config.name, to: target.label, options }, outcome, error);
    this.record = record;
    this.ctx.log(`${tag(this.ctx)}: ${outcome}${record.error ? ` (${record.error.code}: ${record.error.message})` : ''}`);
    this.emit('done', record);
    this.resolveDone(record);
    return record;
  }
}
