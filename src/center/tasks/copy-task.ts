/**
 * The `copy` task (docs/design/nfc.md, "The center"): a network file copy carried out by one host at a
 * time — the copier, which mounts the source — and handed to another host mid-flight without losing or
 * repeating work. The center plans (sizes and modification times from a host that mounts the source),
 * chooses the copier and the form, starts each host's part under its epoch, follows it, and records who
 * copied which range; the target's journal is the truth about how far the copy got.
 *
 * A part ends, and the next one starts from the target journal's boundary under the next epoch, when:
 * - the copier is to enter maintenance, or `ferry task move` asks (a hand-off: the copier is asked to
 *   stop, its `stopped` record names a boundary the target acknowledged; if it does not answer within
 *   HANDOFF_STOP_TIMEOUT_MS, the target journal's boundary is used);
 * - the copier stops answering (it died: another host is selected);
 * - the part failed for a reason that may pass (a connection, the receiver that died — waited for, bounded
 *   — or the leases of a dead predecessor not yet expired): started again, at most MAX_PART_RETRIES times
 *   in a row without the boundary moving.
 * The new epoch and host are checkpointed before the new host is asked: a center that dies at any point
 * is succeeded by a worker that asks the recorded host for its part and otherwise continues from the
 * journal with the next epoch. Fencing (the sink refuses writes under an older epoch) makes a late write
 * of a host that was left behind fail, never land.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError, errorMessage, isFerryError, isFerryErrorCode } from '../../lib/errors.js';
import { failpoint } from '../../lib/failpoints.js';
import { formatBytes } from '../../lib/units.js';
import {
  COPY_START, bytesBefore, compareBoundaries, formatBoundary, planBytes,
  type Boundary, type CopiedFile, type CopyJobRecord, type CopyProgress, type CopySegment, type CopyTargetForm,
} from '../../nfc/plan.js';
import type { CopyTarget, StartCopyRequest } from '../../api/copy-v1.js';
import type { HostClient } from '../../api/host-client.js';
import type { HostControl } from '../host-control.js';
import type { CenterStore } from '../store/store.js';
import type { JsonValue, TaskMoveRequest } from '../store/model.js';
import { copyParamsSchema, copySubject, readStored, type CopyParams } from './kinds.js';
import type { TaskContext, TaskHandler } from './workers.js';
import type { MobilityPaths } from './migration-path.js';
import { isolationJson, type IsolationSummary } from './migration-path.js';
import {
  MAX_COPY_SEGMENTS, chooseCopier, chooseReceiver, copierCandidates, copyJournalSchema, formOf, mountOf, resolveCopyDatastores, statPlan,
  type CopierCandidate, type CopyJournal,
} from './copy-plan.js';
import { cancelAndDiscard, clientOf, isTransportError, journalBoundary, stopPart, type PartDeps } from './copy-part.js';
import { routeCopy, type CopyRoute } from './copy-route.js';

/** How often a running copy looks at its copier's state and its task's move requests. */
export const COPY_WATCH_MS = 250;
/**
 * A copier that does not answer for this long is treated as gone and another host is selected. A live
 * host taken for dead costs one hand-off, never a wrong byte: its epoch is fenced.
 */
export const COPIER_UNREACHABLE_MS = 5_000;
/** Between attempts to hand off a copy whose copier is to enter maintenance while no other host can take it. */
export const HANDOFF_RETRY_MS = 2_000;
/** How long a copy waits for a host to take it (or for its receiver to come back) before it fails with the truth. */
export const COPY_HOST_WAIT_MS = 5 * 60_000;
/** Between restarts of a part that failed for a reason that may pass. */
export const PART_RETRY_MS = 1_000;
/**
 * Restarts in a row without the boundary moving, at most: 30 s of retries outlast a dead predecessor's
 * leases (LEASE_DURATION_MS, 10 s) thrice; a cause that does not pass ends the copy with it.
 */
export const MAX_PART_RETRIES = 30;
/** Progress is reported (claim renewal, `copy.progress` event) at most this often per copy. */
export const COPY_PROGRESS_EVENT_MS = 250;
/** Between two looks at a host the copy waits for. */
const HOST_WAIT_POLL_MS = 500;
/** Failures a restart cannot mend: the copy's own truth, reported as it is. */
const FATAL_CODES: ReadonlySet<string> = new Set([
  'SOURCE_CHANGED', 'COPY_VERIFY_FAILED', 'COPY_CONFLICT', 'DATASTORE_INVALID', 'DATASTORE_PATH_INVALID', 'INVALID_ARGUMENT', 'BAD_REQUEST', 'CAPACITY', 'NOT_FOUND', 'DISK_READ_ONLY',
  // A target file that exists already: a copy never overwrites one.
  'ALREADY_EXISTS',
]);

export interface CopyTaskDeps {
  readonly store: CenterStore;
  readonly hosts: HostControl;
  readonly event: (kind: string, subject: string, payload: JsonValue) => Promise<void>;
  readonly paths: MobilityPaths;
  readonly pathTtlMs: number;
}

export function copyTask(d: CopyTaskDeps): TaskHandler {
  return async (ctx) => {
    const params = readStored(copyParamsSchema, ctx.task.params, 'parameters');
    if (ctx.stopReason() === 'cancel') throw new FerryError('CANCELLED', 'cancelled before it started');
    const { source, target } = await resolveCopyDatastores(d.store, params.request.from, params.request.to);
    const stored = copyJournalSchema.safeParse(ctx.task.checkpoint);
    const run = new CopyRun(d, ctx, params, stored.success ? stored.data : await plan(d, ctx, params, source.id, target.id, source.name), source.name, target.name);
    try {
      return await run.run(stored.success);
    } finally {
      await run.closeRoute('the copy task ended');
    }
  };
}

/** The first part: a copier chosen, the files stated on it, the journal checkpointed before anything starts. */
async function plan(d: CopyTaskDeps, ctx: TaskContext, params: CopyParams, sourceId: string, targetId: string, sourceName: string): Promise<CopyJournal> {
  const choice = chooseCopier(await copierCandidates(d.store, sourceId, targetId, new Set()), params.request.via ?? null, sourceName);
  if ('refused' in choice) throw new FerryError('NO_COMPATIBLE_HOST', `copy ${params.copyId.slice(0, 8)}: ${choice.refused}`);
  const files = await statPlan(d.hosts, choice.chosen, params.request.files);
  const form = formOf(choice.chosen);
  const receiver = form === 'remote' ? (await chooseReceiver(d.store, targetId, choice.chosen.host.name, null, params.request.to)).host : null;
  const j: CopyJournal = {
    copyId: params.copyId, sourceId, targetId, files, epoch: 1, host: choice.chosen.host.name, form, receiver, from: COPY_START,
    segments: [], handoffs: 0, movesHandled: ctx.moveRequest()?.seq ?? 0, pathId: null, blocked: null,
  };
  await ctx.checkpoint(j);
  return j;
}

/** How following a part ended. */
type FollowEnd =
  | { readonly kind: 'record'; readonly record: CopyJobRecord }
  | { readonly kind: 'handoff'; readonly why: 'move'; readonly move: TaskMoveRequest }
  | { readonly kind: 'handoff'; readonly why: 'maintenance'; readonly state: string }
  | { readonly kind: 'lost'; readonly reason: string }
  | { readonly kind: 'stop' };

class CopyRun {
  #j: CopyJournal;
  /** The current part has been asked to start (or was found running after a takeover). */
  #running = false;
  #route: CopyRoute | null = null;
  #isolation: IsolationSummary | null = null;
  /** Files verified so far, by path, from every part's record. */
  readonly #files = new Map<string, CopiedFile>();
  readonly #totalBytes: number;
  #doneBytes = 0;
  #lastReportMs = 0;
  #lastProgress: CopyProgress | null = null;
  /** Restarts in a row without the boundary moving, and the boundary they started from. */
  #retries = 0;
  #retryFrom: Boundary | null = null;
  #blockedAtMs = 0;
  readonly #part: PartDeps;

  constructor(private readonly d: CopyTaskDeps, private readonly ctx: TaskContext, private readonly params: CopyParams, j: CopyJournal, private readonly sourceName: string, private readonly targetName: string) {
    this.#j = j;
    this.#totalBytes = planBytes(j);
    this.#doneBytes = bytesBefore(j, j.from);
    this.#part = { store: d.store, hosts: d.hosts, log: (l) => { ctx.log(l); } };
  }

  private get subject(): string { return copySubject(this.#j.copyId); }
  private get short(): string { return this.#j.copyId.slice(0, 8); }

  async run(takenOver: boolean): Promise<JsonValue> {
    try {
      return await this.loop(takenOver);
    } catch (err) {
      // A cancel that landed while waiting (for a host, a restart) gives the copy up like one that landed while following.
      if (this.ctx.stopReason() !== null && isFerryError(err, 'CANCELLED')) return await this.stopped();
      throw err;
    }
  }

  private async loop(takenOver: boolean): Promise<JsonValue> {
    let finished: CopyJobRecord | null = takenOver ? await this.reconcile() : null;
    while (finished === null) {
      if (!this.#running) await this.startPart();
      if (!this.#running) continue;
      const end = await this.follow();
      switch (end.kind) {
        case 'stop': return this.stopped();
        case 'record':
          if (end.record.outcome === 'completed') { finished = end.record; break; }
          await this.partEnded(end.record, `part ${end.record.epoch} on ${this.#j.host} ended ${end.record.outcome}${end.record.error !== null ? `: [${end.record.error.code}] ${end.record.error.message}` : ''}`);
          break;
        case 'lost': await this.restart(null, end.reason, true); break;
        case 'handoff': finished = await this.handOff(end); break;
      }
    }
    return this.finish(finished);
  }

  /** A worker that took the task over: what became of the part the journal names? */
  private async reconcile(): Promise<CopyJobRecord | null> {
    const j = this.#j;
    await this.releaseStalePaths();
    await this.ctx.progress(this.#doneBytes / Math.max(1, this.#totalBytes), `taken over: asking ${j.host} about part ${j.epoch} of copy ${this.short}`);
    let status = null;
    try { status = await (await clientOf(this.#part, j.host)).copy(j.copyId); } catch (err) { this.ctx.log(`taken over: ${j.host} cannot tell about copy ${this.short}: ${errorMessage(err)}`); }
    if (status?.epoch === j.epoch && status.record === null) {
      this.ctx.log(`taken over: part ${j.epoch} still runs on ${j.host}; following it`);
      // Its path (if it has one) is kept and renewed: a new one would leave it to expire under the part.
      if (j.form === 'remote' && j.pathId !== null) await this.openRoute(j.pathId);
      this.#running = true;
      return null;
    }
    if (status?.epoch === j.epoch && status.record !== null) {
      if (status.record.outcome === 'completed') return status.record;
      await this.partEnded(status.record, `taken over: part ${j.epoch} on ${j.host} had ended ${status.record.outcome}`);
      return null;
    }
    await this.restart(null, `taken over: ${j.host} does not know part ${j.epoch} (never started, or the host restarted)`, false);
    return null;
  }

  /** Asks the copier to start the current part (its receiver's ticket first, in the remote form). */
  private async startPart(): Promise<void> {
    const j = this.#j;
    let copier: HostClient;
    try {
      const host = await this.d.store.getHost(j.host);
      copier = this.d.hosts.client(host);
      const target = await this.targetFor(j);
      const request: StartCopyRequest = {
        copyId: j.copyId, epoch: j.epoch, sourceDatastore: await mountOf(this.d.store, j.host, j.sourceId), files: j.files, target,
        ...(this.params.request.streams !== undefined ? { streams: this.params.request.streams } : {}),
        ...(this.params.request.rateBytesPerSec !== undefined ? { rateBytesPerSec: this.params.request.rateBytesPerSec } : {}),
      };
      await copier.startCopy(request);
    } catch (err) {
      if (this.ctx.signal.aborted) return;
      if (isFerryError(err) && FATAL_CODES.has(err.code) && err.code !== 'NOT_FOUND') {
        const why = `copy ${this.short} cannot start on ${j.host}: ${err.message}`;
        await this.giveUp(why);
        return this.fail(err.code, `${why}; its staging files are removed`);
      }
      await this.restart(null, `part ${j.epoch} cannot start on ${j.host}: ${errorMessage(err)}`, isTransportError(err));
      return;
    }
    this.#running = true;
    await this.d.event('copy.started', this.subject, {
      copyId: j.copyId, taskId: this.ctx.task.id, host: j.host, epoch: j.epoch, form: j.form, receiver: j.receiver, from: { ...j.from },
      ...(this.#isolation !== null && j.form === 'remote' ? { isolation: isolationJson(this.#isolation) } : {}),
    });
    await this.report(true);
  }

  /** Where the copier writes: its own mount of the target, or the receiver behind a fresh ticket. */
  private async targetFor(j: CopyJournal): Promise<CopyTarget> {
    if (j.form === 'local') return { form: 'local', datastore: await mountOf(this.d.store, j.host, j.targetId) };
    const receiver = j.receiver;
    if (receiver === null) throw new FerryError('INTERNAL', 'a remote part without a receiver');
    const route = await this.openRoute(null);
    const rx = await clientOf(this.#part, receiver);
    const ticket = await rx.createCopyTicket({
      copyId: j.copyId, epoch: j.epoch, datastore: await mountOf(this.d.store, receiver, j.targetId), files: j.files, ...(route.pathId !== null ? { pathId: route.pathId } : {}),
    });
    return { form: 'remote', host: receiver, address: { host: route.address, port: ticket.port }, ticket, ...(route.pathId !== null ? { pathId: route.pathId } : {}) };
  }

  private async openRoute(reuse: string | null): Promise<CopyRoute> {
    const j = this.#j;
    if (this.#route !== null) return this.#route;
    if (j.receiver === null) throw new FerryError('INTERNAL', 'a remote part without a receiver');
    const [copier, receiver] = await Promise.all([this.d.store.getHost(j.host), this.d.store.getHost(j.receiver)]);
    const route = await routeCopy({ paths: this.d.paths, ttlMs: this.d.pathTtlMs }, this.ctx, this.params.request.isolation !== false, copier, receiver,
      this.d.hosts.client(copier), this.d.hosts.client(receiver), reuse);
    this.#route = route;
    this.#isolation = route.isolation;
    if (route.pathId !== j.pathId) await this.checkpoint({ ...j, pathId: route.pathId });
    return route;
  }

  async closeRoute(reason: string): Promise<void> {
    const r = this.#route;
    this.#route = null;
    if (r !== null) await r.close(reason);
  }

  /** Paths of this task a worker before this one left live, other than the current part's. */
  private async releaseStalePaths(): Promise<void> {
    for (const p of await this.d.store.pathsOfTask(this.ctx.task.id)) {
      if (p.state !== 'live' || p.pathId === this.#j.pathId) continue;
      await this.d.paths.release(p.pathId, 'left by a worker before this one').catch(() => undefined);
    }
  }

  /** Follows the current part until it ends, a hand-off is due, its host is gone, or the task is to stop. */
  private async follow(): Promise<FollowEnd> {
    const j = this.#j;
    let unreachableSinceMs: number | null = null;
    for (;;) {
      const ac = new AbortController();
      let why: FollowEnd | null = null;
      const watcher = this.watch(ac, (w) => { why = w; });
      try {
        const client = await clientOf(this.#part, j.host);
        const record = await client.waitForCopy(j.copyId, { signal: ac.signal, onProgress: (p) => { if (p.epoch === j.epoch) { unreachableSinceMs = null; this.progressed(p); } } });
        if (record.epoch !== j.epoch) return { kind: 'lost', reason: `${j.host} answers part ${record.epoch} of copy ${this.short}, not ${j.epoch} (it restarted?)` };
        return { kind: 'record', record };
      } catch (err) {
        const w: FollowEnd | null = why;
        if (w !== null) return w;
        if (this.ctx.signal.aborted) return { kind: 'stop' };
        if (isFerryError(err, 'NOT_FOUND')) return { kind: 'lost', reason: `${j.host} no longer knows copy ${this.short} (it restarted)` };
        if (!isTransportError(err)) throw err;
        unreachableSinceMs ??= performance.now();
        if (performance.now() - unreachableSinceMs >= COPIER_UNREACHABLE_MS) return { kind: 'lost', reason: `${j.host} did not answer for ${COPIER_UNREACHABLE_MS} ms: ${errorMessage(err)}` };
        await this.ctx.progress(this.#doneBytes / Math.max(1, this.#totalBytes), `copy ${this.short}: ${j.host} does not answer (${errorMessage(err)}); retrying`);
        await sleep(HOST_WAIT_POLL_MS);
      } finally {
        ac.abort();
        await watcher;
      }
    }
  }

  /** Until `ac` aborts: ends the follow when the task is to stop, a move is asked, or the copier is to enter maintenance. */
  private async watch(ac: AbortController, end: (why: FollowEnd) => void): Promise<void> {
    const j = this.#j;
    const stop = (why: FollowEnd): void => { end(why); ac.abort(); };
    const onAbort = (): void => { stop({ kind: 'stop' }); };
    this.ctx.signal.addEventListener('abort', onAbort, { once: true });
    try {
      while (!ac.signal.aborted) {
        if (this.ctx.signal.aborted) { stop({ kind: 'stop' }); return; }
        const move = this.ctx.moveRequest();
        if (move !== null && move.seq > this.#j.movesHandled) { stop({ kind: 'handoff', why: 'move', move }); return; }
        try {
          const host = await this.d.store.getHost(j.host);
          const draining = host.state === 'entering-maintenance' || host.state === 'in-maintenance';
          if (draining && (this.#j.blocked === null || performance.now() - this.#blockedAtMs >= HANDOFF_RETRY_MS)) { stop({ kind: 'handoff', why: 'maintenance', state: host.state }); return; }
          // Back in service: a hand-off it could not make is no longer due.
          if (!draining && this.#j.blocked !== null) await this.checkpoint({ ...this.#j, blocked: null });
        } catch (err) {
          this.ctx.log(`copy ${this.short}: cannot read host ${j.host}: ${errorMessage(err)}`);
        }
        await sleep(COPY_WATCH_MS, undefined, { signal: ac.signal }).catch(() => undefined);
      }
    } finally {
      this.ctx.signal.removeEventListener('abort', onAbort);
    }
  }

  /**
   * A hand-off: another host is selected (the move's `to`, or any in service that mounts the source),
   * the copier is asked to stop and its boundary is taken (or the journal's), and the next part is
   * checkpointed. No other host: a move is refused (recorded), a maintenance hand-off is noted as
   * blocked (the evacuation reports it) and tried again later; the copy goes on where it is.
   * Answers the copier's record if it completed before it could stop.
   */
  private async handOff(end: Extract<FollowEnd, { kind: 'handoff' }>): Promise<CopyJobRecord | null> {
    const j = this.#j;
    const to = end.why === 'move' ? end.move.to : null;
    const choice = chooseCopier(await copierCandidates(this.d.store, j.sourceId, j.targetId, new Set([j.host])), to, this.sourceName);
    const movesHandled = end.why === 'move' ? end.move.seq : j.movesHandled;
    if ('refused' in choice) {
      if (end.why === 'move') {
        const why = `move of copy ${this.short} off ${j.host} refused: ${choice.refused}`;
        this.ctx.log(why);
        await this.checkpoint({ ...j, movesHandled });
        await this.d.event('copy.move-refused', this.subject, { copyId: j.copyId, taskId: this.ctx.task.id, host: j.host, to, reason: choice.refused });
      } else {
        const blocked = `host ${j.host} is ${end.state}, but no other host can take copy task ${this.ctx.task.id}: ${choice.refused}`;
        this.#blockedAtMs = performance.now();
        if (j.blocked !== blocked) {
          this.ctx.log(blocked);
          await this.checkpoint({ ...j, blocked });
        }
      }
      return null;
    }
    const why = end.why === 'move' ? `moved by ${end.move.by}` : `host ${j.host} is ${end.state}`;
    await this.ctx.progress(this.#doneBytes / Math.max(1, this.#totalBytes), `copy ${this.short}: handing off from ${j.host} to ${choice.chosen.host.name} (${why}): stopping ${j.host}`);
    const record = await stopPart(this.#part, j, this.ctx.signal);
    if (record?.outcome === 'completed') return record;
    const ended = await this.closePart(record, [choice.chosen.host.name]);
    // The old part is over and the next not yet recorded: a center killed here is succeeded from the journal.
    await failpoint('center.copy.handoff');
    await this.nextPart(choice.chosen, ended, movesHandled, true);
    await this.d.event('copy.handoff', this.subject, {
      copyId: j.copyId, taskId: this.ctx.task.id, from: j.host, to: this.#j.host, epoch: this.#j.epoch, boundary: { ...ended.boundary }, reason: why,
      stopped: record?.outcome === 'stopped', boundaryFrom: record?.outcome === 'stopped' ? 'stopped record' : 'target journal',
    });
    return null;
  }

  /**
   * The current part is over (its record, or null: unknown): its boundary (the record's when it stopped,
   * else the target journal's) and its segment recorded. Answers the boundary and the highest epoch known.
   */
  private async closePart(record: CopyJobRecord | null, prefer: readonly string[]): Promise<{ boundary: Boundary; epoch: number }> {
    const j = this.#j;
    for (const f of record?.files ?? []) this.#files.set(f.path, f);
    let boundary: Boundary;
    let epoch = j.epoch;
    if (record?.outcome === 'stopped') boundary = record.to;
    else {
      const view = await journalBoundary(this.#part, j, prefer);
      boundary = view.boundary;
      epoch = Math.max(epoch, view.epoch);
      this.ctx.log(`copy ${this.short}: part ${j.epoch} on ${j.host} ended at ${formatBoundary(boundary)} (${view.from !== null ? `the target journal on ${view.from}` : 'no host answered for the target: the part\'s start'})`);
    }
    const from = record?.from ?? j.from;
    const sentBytes = record?.sentBytes ?? (this.#lastProgress?.epoch === j.epoch ? this.#lastProgress.sentBytes : 0);
    if (compareBoundaries(boundary, from) > 0 || sentBytes > 0) {
      const segment: CopySegment = { host: j.host, epoch: j.epoch, from, to: boundary, sentBytes };
      if (j.segments.length >= MAX_COPY_SEGMENTS) return this.fail('INTERNAL', `copy ${this.short} was handed on ${MAX_COPY_SEGMENTS} times: stuck in a loop; it stops at ${formatBoundary(boundary)}`);
      this.#j = { ...j, segments: [...j.segments, segment] };
    }
    this.#doneBytes = Math.max(this.#doneBytes, bytesBefore(j, boundary));
    return { boundary, epoch };
  }

  /** The next part, checkpointed before it is started: on `copier`, the epoch after the highest known, from the boundary the last part ended at. */
  private async nextPart(copier: CopierCandidate, ended: { boundary: Boundary; epoch: number }, movesHandled: number, handoff: boolean): Promise<void> {
    const j = this.#j;
    await this.closeRoute(`part ${j.epoch} ended`);
    const form: CopyTargetForm = formOf(copier);
    const receiver = form === 'remote' ? (await chooseReceiver(this.d.store, j.targetId, copier.host.name, j.receiver, this.targetName)).host : null;
    this.#j = {
      ...j, epoch: ended.epoch + 1, host: copier.host.name, form, receiver, from: compareBoundaries(ended.boundary, j.from) > 0 ? ended.boundary : j.from,
      handoffs: j.handoffs + (handoff ? 1 : 0), movesHandled, pathId: null, blocked: null,
    };
    this.#running = false;
    await this.checkpoint(this.#j);
  }

  /** A part that ended without being asked (failed, stopped or cancelled by its host). */
  private async partEnded(record: CopyJobRecord, why: string): Promise<void> {
    const code = record.error?.code;
    if (record.outcome === 'failed' && code !== undefined && FATAL_CODES.has(code)) {
      await this.closePart(record, []);
      await this.giveUp(why);
      return this.fail(isFerryErrorCode(code) ? code : 'INTERNAL', `${why}; the copy stops at ${formatBoundary(this.#j.from)} and its staging files are removed`);
    }
    await this.restart(record, why, false);
  }

  /**
   * Starts the copy again after a part ended or was lost: on the same host if it is still eligible and
   * no move is pending, else on another (waiting, bounded, for one); the remote form waits, bounded, for
   * its receiver to answer again.
   */
  private async restart(record: CopyJobRecord | null, why: string, hostGone: boolean): Promise<void> {
    const j = this.#j;
    this.ctx.log(why);
    const ended = await this.closePart(record, []);
    if (this.#retryFrom !== null && compareBoundaries(ended.boundary, this.#retryFrom) <= 0) {
      if (++this.#retries > MAX_PART_RETRIES) return this.fail('HOST_ERROR', `copy ${this.short} could not go on from ${formatBoundary(ended.boundary)} after ${MAX_PART_RETRIES} attempts; the last: ${why}`);
    } else this.#retries = 1;
    this.#retryFrom = ended.boundary;
    const move = this.ctx.moveRequest();
    const pending = move !== null && move.seq > j.movesHandled ? move : null;
    const exclude = new Set(hostGone || pending !== null ? [j.host] : []);
    const copier = await this.waitFor(`copy ${this.short} waits for a host to go on (${why})`, async () => {
      const choice = chooseCopier(await copierCandidates(this.d.store, j.sourceId, j.targetId, exclude), pending?.to ?? null, this.sourceName);
      if ('refused' in choice && pending?.to !== null && pending !== null) {
        // The host the move asked for cannot take it: any other may.
        const any = chooseCopier(await copierCandidates(this.d.store, j.sourceId, j.targetId, exclude), null, this.sourceName);
        return 'refused' in any ? { wait: any.refused } : { ok: any.chosen };
      }
      return 'refused' in choice ? { wait: choice.refused } : { ok: choice.chosen };
    });
    if (formOf(copier) === 'remote') await this.waitForReceiver(copier.host.name, why);
    if (!hostGone) await sleep(PART_RETRY_MS, undefined, { signal: this.ctx.signal }).catch(() => undefined);
    await this.nextPart(copier, ended, pending?.seq ?? j.movesHandled, pending !== null || hostGone);
  }

  /** The remote form: some host that mounts the target (the current receiver first) answers again. */
  private async waitForReceiver(copier: string, why: string): Promise<void> {
    const j = this.#j;
    await this.waitFor(`copy ${this.short}: waiting for a receiving host to answer again (${why})`, async () => {
      const mounts = (await this.d.store.listDatastoreHosts(j.targetId)).filter((m) => m.host !== copier);
      mounts.sort((a, b) => Number(b.host === j.receiver) - Number(a.host === j.receiver));
      for (const m of mounts) {
        // In service (a restarted host is connected again after its first heartbeat) and answering.
        if ((await this.d.store.getHost(m.host)).state !== 'connected') continue;
        try {
          await (await clientOf(this.#part, m.host)).copyJournal(j.copyId, m.mountName);
          return { ok: m.host };
        } catch (err) {
          if (!isTransportError(err)) return { ok: m.host };
        }
      }
      return { wait: `no host in service that mounts ${this.targetName} answers` };
    });
  }

  /** Polls `probe` until it answers ok, with progress saying why; fails with the truth after COPY_HOST_WAIT_MS. */
  private async waitFor<T>(what: string, probe: () => Promise<{ ok: T } | { wait: string }>): Promise<T> {
    const deadline = performance.now() + COPY_HOST_WAIT_MS;
    for (;;) {
      const r = await probe();
      if ('ok' in r) return r.ok;
      if (this.ctx.signal.aborted) throw new FerryError('CANCELLED', `${what}: stopped`);
      if (performance.now() > deadline) {
        return this.fail('NO_COMPATIBLE_HOST', `${what}: ${r.wait} for ${COPY_HOST_WAIT_MS / 1000} s; the copy stops at ${formatBoundary(this.#j.from)} (the target journal keeps it)`);
      }
      await this.ctx.progress(this.#doneBytes / Math.max(1, this.#totalBytes), `${what}: ${r.wait}`);
      await sleep(HOST_WAIT_POLL_MS, undefined, { signal: this.ctx.signal }).catch(() => undefined);
    }
  }

  /** The task is to stop: a cancel cancels the part and gives the copy up on the target; else the part is left to a successor. */
  private async stopped(): Promise<never> {
    if (this.ctx.stopReason() === 'cancel') {
      const discarded = await cancelAndDiscard(this.#part, this.#j);
      await this.d.event('copy.finished', this.subject, { copyId: this.#j.copyId, taskId: this.ctx.task.id, outcome: 'cancelled', discarded });
      throw new FerryError('CANCELLED', `copy ${this.short} was cancelled${discarded ? '; its staging files and journal are removed from the target' : '; the target could not be reached to remove its staging files'}`);
    }
    throw new FerryError('CANCELLED', 'stopped');
  }

  /** A failure no restart mends: the copy is given up on the target so that nothing half-made stays. */
  private async giveUp(why: string): Promise<void> {
    const discarded = await cancelAndDiscard(this.#part, this.#j);
    await this.d.event('copy.finished', this.subject, { copyId: this.#j.copyId, taskId: this.ctx.task.id, outcome: 'failed', reason: why, discarded });
  }

  private fail(code: string, message: string): never {
    throw new FerryError(isFerryErrorCode(code) ? code : 'INTERNAL', message);
  }

  private async finish(record: CopyJobRecord): Promise<JsonValue> {
    const j = this.#j;
    for (const f of record.files) this.#files.set(f.path, f);
    const segments = [...j.segments, { host: j.host, epoch: record.epoch, from: record.from, to: record.to, sentBytes: record.sentBytes }];
    const files = j.files.map((f) => this.#files.get(f.path) ?? null);
    const verified = files.every((f) => f !== null && f.sourceDigest === f.targetDigest);
    this.#doneBytes = this.#totalBytes;
    await this.report(true);
    const result = {
      copyId: j.copyId, form: j.form, from: this.sourceName, to: this.targetName, totalBytes: this.#totalBytes,
      sentBytes: segments.reduce((s, x) => s + x.sentBytes, 0), files: files.filter((f): f is CopiedFile => f !== null).map((f) => ({ ...f })),
      segments: segments.map((s) => ({ ...s, from: { ...s.from }, to: { ...s.to } })), handoffs: j.handoffs, verified,
      ...(this.#isolation !== null ? { isolation: isolationJson(this.#isolation) } : {}),
    };
    await this.d.event('copy.finished', this.subject, { copyId: j.copyId, taskId: this.ctx.task.id, outcome: 'completed', verified, handoffs: j.handoffs, hosts: [...new Set(segments.map((s) => s.host))] });
    if (!verified) {
      const bad = j.files.filter((_, i) => files[i] === null || files[i]?.sourceDigest !== files[i]?.targetDigest).map((f) => f.path);
      throw new FerryError('COPY_VERIFY_FAILED', `copy ${this.short} completed, but ${bad.length} file(s) have no matching source and target digests: ${bad.slice(0, 5).join(', ')}`);
    }
    return result;
  }

  private async checkpoint(j: CopyJournal): Promise<void> {
    this.#j = j;
    await this.ctx.checkpoint(j);
  }

  private progressed(p: CopyProgress): void {
    this.#lastProgress = p;
    this.#doneBytes = Math.max(this.#doneBytes, p.doneBytes, bytesBefore(this.#j, p.boundary));
    void this.report(false).catch(() => undefined);
  }

  /** One continuous progress line across parts: never lowered, at most every COPY_PROGRESS_EVENT_MS. */
  private async report(force: boolean): Promise<void> {
    const now = performance.now();
    if (!force && now - this.#lastReportMs < COPY_PROGRESS_EVENT_MS) return;
    this.#lastReportMs = now;
    const j = this.#j;
    const p = this.#lastProgress?.epoch === j.epoch ? this.#lastProgress : null;
    const rate = p !== null && p.rateBytesPerSec > 0 ? `, ${formatBytes(p.rateBytesPerSec)}/s` : '';
    const eta = p?.etaMs !== null && p?.etaMs !== undefined ? `, ~${Math.ceil(p.etaMs / 1000)} s left` : '';
    await this.ctx.progress(this.#totalBytes === 0 ? 0 : this.#doneBytes / this.#totalBytes,
      `copying on ${j.host} (${j.form}, part ${j.epoch}): ${formatBytes(this.#doneBytes)} of ${formatBytes(this.#totalBytes)}${rate}${eta}`);
    await this.d.event('copy.progress', this.subject, {
      copyId: j.copyId, taskId: this.ctx.task.id, host: j.host, epoch: j.epoch, doneBytes: this.#doneBytes, totalBytes: this.#totalBytes,
      rateBytesPerSec: p?.rateBytesPerSec ?? 0, etaMs: p?.etaMs ?? null, sentBytes: p?.sentBytes ?? 0,
      // The part's durable boundary: what a hand-off now would go on from.
      boundary: { ...(p?.boundary ?? j.from) },
    });
  }
}
