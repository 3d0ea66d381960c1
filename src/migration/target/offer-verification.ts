/**
 * The after-the-fact check of an instrumented module a target adopted from its source (src/vmm/
 * instrument-offer.ts): once the migration has ended, the target instruments the image itself — the
 * result goes into its instrument cache — and compares the bytes with the module the VM runs.
 *
 * That instrumentation costs what it would have cost at PREPARE (0.15–0.3 s of this thread for the
 * dirtier), so it runs later and bounded: each one OFFER_VERIFY_DELAY_MS after its migration ended
 * (past the commit's reply and the resumed guest's first steps) and while no migration is in progress
 * in this process (src/migration/in-progress.ts), at most MAX_PENDING_OFFER_VERIFICATIONS
 * waiting (more are skipped, logged), on unref'd timers (they never keep a process alive), and
 * cancelled by the task's own signal or by close() (host shutdown).
 */
import { errorMessage } from '../../lib/errors.js';
import { migrationsInProgress } from '../in-progress.js';

/** How long after its migration ended an adopted module is verified. */
export const OFFER_VERIFY_DELAY_MS = 1_000;
/** Verifications waiting at most; beyond that a verification is skipped (the VM keeps its module; the next migration of the image offers again). */
export const MAX_PENDING_OFFER_VERIFICATIONS = 8;
/** Waits a verification makes at most while migrations keep the process busy (~1 min). */
export const MAX_OFFER_VERIFY_POSTPONEMENTS = 60;

export interface OfferVerificationTask {
  /** What is verified, for the log ("VM bench's instrumented module"). */
  readonly what: string;
  /** The verification itself (synchronous: an instrumentation and a byte comparison); it logs its result. */
  readonly run: () => void;
  readonly log: (line: string) => void;
  /** Aborted: the verification is no longer wanted (its VM stopped). */
  readonly signal?: AbortSignal;
}

export class OfferVerifier {
  private readonly pending = new Map<NodeJS.Timeout, () => void>();
  private closed = false;

  /** `busy`: migrations in progress now (a verification waits while there are any); the wait and the postponements: their constants (tests shorten them). */
  constructor(
    private readonly busy: () => number = migrationsInProgress,
    private readonly delayMs: number = OFFER_VERIFY_DELAY_MS,
    private readonly maxPostponements: number = MAX_OFFER_VERIFY_POSTPONEMENTS,
  ) {}

  /** Number of verifications waiting (tests). */
  get waiting(): number { return this.pending.size; }

  /** Schedules the task; false (and a log line) when it is skipped. */
  schedule(task: OfferVerificationTask): boolean {
    if (this.closed || task.signal?.aborted === true) return false;
    if (this.pending.size >= MAX_PENDING_OFFER_VERIFICATIONS) {
      task.log(`verification of ${task.what} skipped: ${MAX_PENDING_OFFER_VERIFICATIONS} verifications are waiting already`);
      return false;
    }
    this.arm(task, 0);
    return true;
  }

  /**
   * One wait of OFFER_VERIFY_DELAY_MS; the verification runs at its end unless a migration is in
   * progress in this process (it would stall that migration's main thread, maybe in its switch-over):
   * then it waits again, at most MAX_OFFER_VERIFY_POSTPONEMENTS times (then it is skipped, logged).
   */
  private arm(task: OfferVerificationTask, postponed: number): void {
    const cancel = (): void => { clearTimeout(timer); this.pending.delete(timer); };
    const timer = setTimeout(() => {
      this.pending.delete(timer);
      task.signal?.removeEventListener('abort', cancel);
      if (this.closed || task.signal?.aborted === true) return;
      if (this.busy() > 0) {
        if (postponed < this.maxPostponements) { this.arm(task, postponed + 1); return; }
        this.safeLog(task, `verification of ${task.what} skipped: migrations kept this host busy for ${this.maxPostponements} waits of ${this.delayMs} ms`);
        return;
      }
      try {
        task.run();
      } catch (err) {
        this.safeLog(task, `verification of ${task.what} failed: ${errorMessage(err)}`);
      }
    }, this.delayMs);
    timer.unref();
    this.pending.set(timer, cancel);
    task.signal?.addEventListener('abort', cancel, { once: true });
  }

  /** On a timer: nothing may escape (an uncaught exception would end the host), not even from a log already closed. */
  private safeLog(task: OfferVerificationTask, line: string): void {
    try { task.log(line); } catch { /* no log left to tell */ }
  }

  /** Cancels every waiting verification and takes no more (host shutdown). */
  close(): void {
    this.closed = true;
    for (const cancel of [...this.pending.values()]) cancel();
  }
}

/** The host process's verifier (like the instrument cache, one per process). */
export const offerVerifier = new OfferVerifier();
