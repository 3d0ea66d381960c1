/**
 * A center's task workers: claim admitted tasks from the store (any center's — the store hands each to
 * exactly one claimer), run each with its kind's handler, renew the claim while it runs, and finish it
 * with the truth. Bounded: at most `concurrency` tasks at once per center.
 *
 * A handler's signal aborts when the task is to stop: cancel asked (its handler stops the operation and
 * the task ends `cancelled` — or with what really happened, if it was too late), the claim lost (another
 * center took the task over: this one stops without finishing it), or the center shutting down (the
 * claim is left to expire, so another center — or this one restarted — takes over and reconciles).
 */
import { randomBytes } from 'node:crypto';
import { FerryError, errorMessage, isFerryError } from '../../lib/errors.js';
import { MAX_LEASE_MS, type JsonValue, type Task, type TaskMoveRequest } from '../store/model.js';
import type { CenterStore } from '../store/store.js';
import type { EventWakeups } from '../events.js';
import type { Logger } from '../../lib/logger.js';

/** Tasks one center runs at once: each holds a few connections and, for a migration, a host's attention. */
export const DEFAULT_TASK_CONCURRENCY = 16;
/** A claim lasts this long unless renewed: a dead center's task is taken over after about this long. */
export const DEFAULT_TASK_LEASE_MS = 10_000;
/** Shorter, and a store round trip on a loaded machine outlasts a renewal interval: claims would be lost while healthy. */
export const MIN_TASK_LEASE_MS = 300;
/** Renewals per lease: two may be lost before the claim expires. */
const RENEWALS_PER_LEASE = 3;
/** An idle worker looks for tasks enqueued by other centers this often (a local enqueue wakes it at once). */
export const DEFAULT_TASK_POLL_MS = 500;

export type StopReason = 'cancel' | 'lost' | 'shutdown';

export interface TaskContext {
  readonly task: Task;
  /** Aborts when the task is to stop; `stopReason` says why. */
  readonly signal: AbortSignal;
  stopReason(): StopReason | null;
  /** Report progress (0..1, never lowered) and phase; also renews the claim. */
  progress(progress: number, phase: string): Promise<void>;
  /**
   * The latest request to move the task's work to another host (the store's move directive), as its last
   * claim renewal read it — or null: never asked. A handler compares its seq with the last it acted on.
   */
  moveRequest(): TaskMoveRequest | null;
  /** Durably note what a successor needs to reconcile (before an irreversible step). */
  checkpoint(value: JsonValue): Promise<void>;
  log(line: string): void;
}

/** What a handler answers: the task's result. Throwing fails the task with the error's code. */
export type TaskHandler = (ctx: TaskContext) => Promise<JsonValue>;

export interface TaskWorkersOptions {
  readonly store: CenterStore;
  readonly wakeups: EventWakeups;
  readonly centerId: string;
  readonly handlers: ReadonlyMap<string, TaskHandler>;
  readonly concurrency?: number;
  readonly leaseMs?: number;
  readonly pollMs?: number;
  /** Every line of a task carries its id, kind and subject (and the center's id, from this logger's bindings). */
  readonly logger: Logger;
  /** Called when a task is claimed: how long it waited, and why in a word (`admission`, `queue`, `takeover`). */
  readonly observeWait?: (kind: string, reason: string, seconds: number) => void;
}

export class TaskWorkers {
  readonly workerId: string;
  readonly #running = new Map<number, Promise<void>>();
  readonly #shutdown = new AbortController();
  #loop: Promise<void> = Promise.resolve();
  readonly #concurrency: number;
  readonly #leaseMs: number;
  readonly #pollMs: number;

  constructor(private readonly o: TaskWorkersOptions) {
    this.workerId = `${o.centerId}/w-${randomBytes(3).toString('hex')}`;
    this.#concurrency = o.concurrency ?? DEFAULT_TASK_CONCURRENCY;
    this.#leaseMs = o.leaseMs ?? DEFAULT_TASK_LEASE_MS;
    this.#pollMs = o.pollMs ?? DEFAULT_TASK_POLL_MS;
    if (!Number.isInteger(this.#concurrency) || this.#concurrency < 1) throw new FerryError('INVALID_ARGUMENT', 'task concurrency must be a positive integer');
    if (!Number.isInteger(this.#leaseMs) || this.#leaseMs < MIN_TASK_LEASE_MS || this.#leaseMs > MAX_LEASE_MS) {
      throw new FerryError('INVALID_ARGUMENT', `a task lease must be ${MIN_TASK_LEASE_MS} ms to ${MAX_LEASE_MS / 60_000} min`);
    }
  }

  get running(): number { return this.#running.size; }

  start(): void {
    this.#loop = this.loop();
  }

  private async loop(): Promise<void> {
    const kinds = [...this.o.handlers.keys()];
    const signal = this.#shutdown.signal;
    while (!signal.aborted) {
      const generation = this.o.wakeups.generation;
      let claimed = false;
      if (this.#running.size < this.#concurrency) {
        try {
          const task = await this.o.store.claimNextTask(this.workerId, kinds, this.#leaseMs);
          if (task !== null && !signal.aborted) { claimed = true; this.launch(task); }
        } catch (err) {
          if (!signal.aborted) this.o.logger.warn(`center ${this.o.centerId}: cannot claim tasks (retrying): ${errorMessage(err)}`);
        }
      }
      // Claim again at once after a claim (more may be queued); else wait for a poke, a slot, or the poll.
      if (!claimed) await this.o.wakeups.wait(generation, this.#pollMs, signal);
    }
  }

  private launch(task: Task): void {
    const run = this.execute(task).finally(() => {
      this.#running.delete(task.id);
      // A slot is free: the loop may be waiting for one.
      this.o.wakeups.poke();
    });
    this.#running.set(task.id, run);
  }

  private async execute(task: Task): Promise<void> {
    const handler = this.o.handlers.get(task.kind);
    const stop = new AbortController();
    let reason: StopReason | null = null;
    let move: TaskMoveRequest | null = task.moveRequest;
    const stopFor = (r: StopReason): void => { if (reason === null) { reason = r; stop.abort(new FerryError('CANCELLED', `task ${task.id}: ${r}`)); } };
    const onShutdown = (): void => { stopFor('shutdown'); };
    this.#shutdown.signal.addEventListener('abort', onShutdown, { once: true });
    const logger = this.o.logger.child({ taskId: task.id, ...(task.target.startsWith('vm:') ? { vm: task.target.slice(3) } : {}) });
    const log = (line: string): void => { logger.info(`task ${task.id} (${task.kind} ${task.target}): ${line}`); };
    const waited = task.attempts > 1 ? 'takeover' : task.plan !== null ? 'admission' : 'queue';
    this.o.observeWait?.(task.kind, waited, Math.max(0, ((task.startedAtMs ?? task.createdAtMs) - task.createdAtMs) / 1000));
    const renew = async (hb: { progress?: number; phase?: string } = {}): Promise<void> => {
      if (reason === 'lost') return;
      try {
        const t = await this.o.store.heartbeatTask(task.id, this.workerId, { leaseMs: this.#leaseMs, ...hb });
        if (t.cancelRequested) stopFor('cancel');
        move = t.moveRequest;
      } catch (err) {
        if (isFerryError(err) && (err.code === 'TASK_NOT_CLAIMED' || err.code === 'NOT_FOUND')) { stopFor('lost'); return; }
        // The store is away: keep working; the claim lives until its lease ends, and renewal is retried.
        log(`cannot renew the claim: ${errorMessage(err)}`);
      }
    };
    const timer = setInterval(() => { void renew(); }, Math.max(1, Math.floor(this.#leaseMs / RENEWALS_PER_LEASE)));
    const ctx: TaskContext = {
      task, signal: stop.signal, stopReason: () => reason, log, moveRequest: () => move,
      progress: (progress, phase) => renew({ progress: Math.min(1, Math.max(0, progress)), phase: phase.slice(0, 500) }),
      checkpoint: async (value) => { await this.o.store.checkpointTask(task.id, this.workerId, value); },
    };
    try {
      if (task.cancelRequested) stopFor('cancel');
      if (handler === undefined) throw new FerryError('INVALID_ARGUMENT', `this center has no handler for tasks of kind ${task.kind}`);
      const result = await handler(ctx);
      await this.finish(task, { state: 'succeeded', result }, log);
    } catch (err) {
      const r = ctx.stopReason();
      if (r === 'lost' || r === 'shutdown') {
        log(r === 'lost' ? 'claim lost: another worker has the task now' : 'center stopping: the task is left for a successor to reconcile');
        return;
      }
      if (r === 'cancel' && isFerryError(err) && err.code === 'CANCELLED') {
        await this.finish(task, { state: 'cancelled' }, log);
        return;
      }
      const code = isFerryError(err) ? err.code : 'INTERNAL';
      await this.finish(task, { state: 'failed', error: { code, message: errorMessage(err).slice(0, 2000) } }, log);
    } finally {
      clearInterval(timer);
      this.#shutdown.signal.removeEventListener('abort', onShutdown);
    }
  }

  private async finish(task: Task, outcome: Parameters<CenterStore['finishTask']>[2], log: (line: string) => void): Promise<void> {
    try {
      await this.o.store.finishTask(task.id, this.workerId, outcome);
      this.o.wakeups.poke();
      log(outcome.state === 'failed' ? `failed: [${outcome.error.code}] ${outcome.error.message}` : outcome.state);
    } catch (err) {
      // Lost the claim at the last moment (or the store is away): the successor reconciles and finishes it.
      log(`cannot record the outcome ${outcome.state}: ${errorMessage(err)}`);
    }
  }

  /** Stops claiming, stops running handlers (their claims are left to expire) and waits for them. */
  async close(): Promise<void> {
    this.#shutdown.abort();
    await this.#loop;
    await Promise.all(this.#running.values());
  }
}
