/**
 * A host's outgoing part of network file copies (docs/design/nfc.md, "The host"): POST /v1/copies
 * starts one — this host reads the plan's files from one of its datastores (holding their write
 * leases) and writes them into another it mounts (local form) or streams them to the receiving host
 * (remote form) — from the boundary the target's journal holds. Answers status and event queries,
 * stops a copy at a boundary for a hand-off, cancels, remembers finished copies (bounded), and at host
 * shutdown cancels the running ones (their journals stay: another host resumes them).
 *
 * One run per copy id: a host's part of a copy runs under one epoch at a time. Asking again with the
 * same copy id and epoch answers that run's status (a center that retried, or took the task over);
 * another epoch while the run is alive is BUSY — the center stops a host before it hands on, and an
 * epoch that overtook a live run here would be fenced by its own successor.
 */
import { EventEmitter } from 'node:events';
import { FerryError, errorMessage } from '../lib/errors.js';
import { lineLog, type Logger } from '../lib/logger.js';
import type { Transport } from '../dataplane/transport.js';
import { shortPathId } from '../dataplane/path/spec.js';
import { CopyJob } from '../nfc/copier.js';
import { openCopySource } from '../nfc/source-files.js';
import { openLocalSink } from '../nfc/local-sink.js';
import { openRemoteSink } from '../nfc/remote-sink.js';
import {
  DEFAULT_COPY_STREAMS, copyPlanSchema, type CopyJobRecord, type CopyJobStatus, type CopyPlan, type CopyProgress,
} from '../nfc/plan.js';
import type { CopySink } from '../nfc/sink.js';
import type { StartCopyRequest } from '../api/copy-v1.js';
import type { HostDatastores } from './datastores.js';
import type { HostPaths } from './paths.js';
import type { HostMetrics } from './metrics.js';

/** Finished copies remembered for status queries; the oldest finished go first. */
export const MAX_FINISHED_COPIES = 100;
/**
 * Copies one host runs at once, at most: each holds its files' leases, a reader per stream and up to
 * MAX_COPY_INFLIGHT_BYTES of buffers; a host's disks and network are saturated by a few long before.
 */
export const MAX_RUNNING_COPIES = 16;

/** What the events route follows: one run's progress, then its record. */
export type CopyRunEvents = { progress: [CopyProgress]; done: [CopyJobRecord] };

/**
 * One host's part of one copy under one epoch. Its `done` comes after the job's end (which released the
 * source leases and closed the sink) *and* after this host removed the copy's path: a center that reads
 * the record and starts the next host finds everything free.
 */
export class CopyRun extends EventEmitter<CopyRunEvents> {
  private job: CopyJob | null = null;
  private record: CopyJobRecord | null = null;
  /** What the operator asked before the job existed (the source was being opened): applied once it does. */
  private asked: { readonly kind: 'stop' } | { readonly kind: 'cancel'; readonly reason: string } | null = null;
  /** Settles when the run has started (the job runs) or failed to (the error the start answered). */
  opened: Promise<void> = Promise.resolve();
  private readonly ended: Promise<CopyJobRecord>;
  private endedWith: (r: CopyJobRecord) => void = () => undefined;

  constructor(readonly copyId: string, readonly epoch: number) {
    super();
    this.ended = new Promise((resolve) => { this.endedWith = resolve; });
  }

  get finished(): boolean { return this.record !== null; }
  /** Resolves with the record once the run has ended and let go of everything. */
  get done(): Promise<CopyJobRecord> { return this.ended; }

  status(): CopyJobStatus {
    if (this.job === null) return { copyId: this.copyId, epoch: this.epoch, phase: 'opening', progress: null, record: null };
    const s = this.job.status();
    // The job ended, its path is still being removed: not yet a record to hand on from.
    if (this.record === null && s.phase === 'ended') return { ...s, phase: 'stopping', record: null };
    return s;
  }

  stop(): void {
    if (this.job !== null) this.job.stop();
    else this.asked ??= { kind: 'stop' };
  }

  cancel(reason: string): void {
    if (this.job !== null) this.job.cancel(reason);
    else this.asked = { kind: 'cancel', reason };
  }

  /** The job runs: progress is passed on, and whatever was asked while opening applies now. */
  attach(job: CopyJob): void {
    this.job = job;
    job.on('progress', (p) => { this.emit('progress', p); });
    const asked = this.asked;
    if (asked?.kind === 'stop') job.stop();
    else if (asked?.kind === 'cancel') job.cancel(asked.reason);
  }

  finish(record: CopyJobRecord): void {
    this.record = record;
    this.endedWith(record);
    this.emit('done', record);
  }
}

export interface CopyServiceOptions {
  readonly hostName: string;
  readonly datastores: HostDatastores;
  /** What carries a remote copy's streams when it has no virtual path (the host's transport). */
  readonly transport: Transport;
  /** The host's virtual paths: a remote copy over one (`target.pathId`) gets the path's source end as its transport. */
  readonly paths: HostPaths;
  /** The host's logger: each copy logs through a child bound to its id and epoch. */
  readonly logger: Logger;
  readonly metrics?: HostMetrics;
}

/** Where one run's bytes go, and what to let go of when it ends. */
interface CopyRoute {
  readonly openSink: (signal: AbortSignal) => Promise<CopySink>;
  readonly describe: string;
  readonly ended: () => Promise<void>;
}

export class CopyService {
  private readonly runs = new Map<string, CopyRun>();
  private closing = false;

  constructor(private readonly o: CopyServiceOptions) {}

  /** The run of copy `id` on this host (the latest epoch it ran), or NOT_FOUND. */
  run(id: string): CopyRun {
    const run = this.runs.get(id);
    if (run === undefined) throw new FerryError('NOT_FOUND', `host ${this.o.hostName} has no copy ${id}`, { copyId: id });
    return run;
  }

  status(id: string): CopyJobStatus { return this.run(id).status(); }

  /** Copies running (or opening) now. */
  get running(): number { return [...this.runs.values()].filter((r) => !r.finished).length; }

  /**
   * Starts this host's part of a copy under `req.epoch` and answers at once (the copy runs in the
   * background). Refused before anything is held: an unknown datastore (NOT_FOUND), a source file in
   * use by a running VM (DISK_LOCKED) or changed since it was planned (SOURCE_CHANGED), another epoch
   * of this copy running here (BUSY).
   */
  async start(req: StartCopyRequest): Promise<CopyJobStatus> {
    const known = this.runs.get(req.copyId);
    if (known !== undefined && known.epoch === req.epoch) {
      // The same start again (possibly while the first is still opening the source): its status, or its refusal.
      await known.opened;
      return known.status();
    }
    if (this.closing) throw new FerryError('BUSY', `host ${this.o.hostName} is shutting down; it starts no copy`);
    if (known !== undefined && !known.finished) {
      throw new FerryError('BUSY', `host ${this.o.hostName} runs copy ${req.copyId} under epoch ${known.epoch}; stop it (and wait for its record) before starting epoch ${req.epoch}`, { copyId: req.copyId, epoch: known.epoch });
    }
    if (this.running >= MAX_RUNNING_COPIES) throw new FerryError('BUSY', `host ${this.o.hostName} runs ${MAX_RUNNING_COPIES} copies; try again when one ends`);
    const plan = parsePlan(req);
    const source = this.o.datastores.get(req.sourceDatastore);
    const log = lineLog(this.o.logger.child({ copyId: req.copyId, epoch: req.epoch, component: 'copy' }));
    const route = this.routeFor(req, plan, log);

    const run = new CopyRun(req.copyId, req.epoch);
    // Registered before the first await: a second start of this epoch meanwhile waits for this one.
    this.runs.set(req.copyId, run);
    run.opened = (async () => {
      try {
        const files = await openCopySource(source, plan);
        let job: CopyJob;
        try {
          job = new CopyJob({
            plan, epoch: req.epoch, host: this.o.hostName, source: files, openSink: route.openSink, log,
            ...(req.streams !== undefined ? { streams: req.streams } : {}),
            ...(req.rateBytesPerSec !== undefined ? { rateBytesPerSec: req.rateBytesPerSec } : {}),
          });
        } catch (err) {
          await files.close().catch(() => undefined);
          throw err;
        }
        run.attach(job);
        this.o.metrics?.copyStarted();
        log(`copy ${req.copyId} epoch ${req.epoch}: ${plan.files.length} file(s) from datastore ${req.sourceDatastore} to ${route.describe}`);
        // The job closes the source (its leases) and the sink before it ends; the path goes before the
        // record is told here too: whoever reads it may start the next host at once.
        void job.run().then(async (record) => {
          await route.ended().catch((err: unknown) => { log(`copy ${req.copyId}: cannot remove its path: ${errorMessage(err)}`); });
          this.o.metrics?.copyEnded(record);
          run.finish(record);
        });
      } catch (err) {
        // Nothing was started: the run is forgotten (a finished run of an earlier epoch is not brought back).
        // The copy's path stays: the center may start it again over it (it removes the path, or it expires).
        if (this.runs.get(req.copyId) === run) this.runs.delete(req.copyId);
        throw err;
      }
    })();
    await run.opened;
    this.trim();
    return run.status();
  }

  /** Hand-off: no new chunk, the ones in flight acknowledged, a last sync; the record says at which boundary it stopped. */
  stop(id: string): CopyJobStatus {
    const run = this.run(id);
    run.stop();
    return run.status();
  }

  /** Stops at once; the target keeps its journal (the copy can resume from its last durable boundary). */
  cancel(id: string, reason = 'cancelled by the operator'): CopyJobStatus {
    const run = this.run(id);
    run.cancel(reason);
    return run.status();
  }

  /** At host shutdown: every running copy cancelled (its journal stays for another host), and waited for. */
  async cancelAll(reason: string): Promise<void> {
    this.closing = true;
    const runs = [...this.runs.values()];
    for (const run of runs) if (!run.finished) run.cancel(reason);
    // A run still opening ends either way: started (then cancelled at once) or refused.
    await Promise.all(runs.map(async (run) => {
      if (await run.opened.then(() => true, () => false)) await run.done;
    }));
  }

  /** The local form writes a datastore of this host; the remote form dials the receiver, over the copy's path if it has one. */
  private routeFor(req: StartCopyRequest, plan: CopyPlan, log: (line: string) => void): CopyRoute {
    const open = { plan, epoch: req.epoch };
    const target = req.target;
    if (target.form === 'local') {
      const into = this.o.datastores.get(target.datastore);
      const from = this.o.datastores.get(req.sourceDatastore);
      // The same store under two names included: each file would be staged beside itself and renamed onto it.
      if (into.id === from.id) throw new FerryError('INVALID_ARGUMENT', `datastores ${req.sourceDatastore} and ${target.datastore} are the same store (id ${from.id}): a copy goes to another datastore`);
      return { openSink: () => openLocalSink(into, open), describe: `datastore ${target.datastore}`, ended: () => Promise.resolve() };
    }
    const pathId = target.pathId;
    const transport = pathId !== undefined ? this.o.paths.transport(pathId, 'source') : this.o.transport;
    return {
      openSink: (signal) => openRemoteSink({
        transport, address: target.address, ticket: target.ticket.ticket, plan, epoch: req.epoch, streams: req.streams ?? DEFAULT_COPY_STREAMS, signal, log,
      }),
      describe: `host ${target.host} (${target.address.host}:${target.address.port}${pathId !== undefined ? ` over path ${shortPathId(pathId)}` : ''})`,
      ended: pathId !== undefined ? async () => { await this.o.paths.remove(pathId, 'the copy ended on its source'); } : () => Promise.resolve(),
    };
  }

  private trim(): void {
    const finished = [...this.runs.values()].filter((r) => r.finished);
    for (const r of finished.slice(0, Math.max(0, finished.length - MAX_FINISHED_COPIES))) this.runs.delete(r.copyId);
  }
}

/** The plan the request names, checked as one (a file listed twice is refused, not copied twice). */
export function parsePlan(req: Pick<StartCopyRequest, 'copyId' | 'files'>): CopyPlan {
  const parsed = copyPlanSchema.safeParse({ copyId: req.copyId, files: req.files });
  if (!parsed.success) throw new FerryError('INVALID_ARGUMENT', `copy ${req.copyId}: ${parsed.error.issues[0]?.message ?? 'not a valid plan'}`);
  return parsed.data;
}

