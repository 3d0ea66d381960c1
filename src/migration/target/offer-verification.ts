/**
 * The after-the-fact check of an instrumented module a target adopted from its source (src/vmm/
 * instrument-offer.ts): once the migration has ended, the target instruments the image itself — the
 * result goes into its instrument cache — and compares the bytes with the module the VM runs.
 *
 * That instrumentation costs what it would have cost at PREPARE (0.15–0.3 s of this thread for the
 * dirtier), so it runs later and bounded: each one OFFER_VERIFY_DELAY_MS after its migration ended
 * (past the commit's reply and the resumed guest's first steps), at most MAX_PENDING_OFFER_VERIFICATIONS
 * waiting (more are skipped, logged), on unref'd timers (they never keep a process alive), and
 * cancelled by the task's own signal or by close() (host shutdown).
 */
import { errorMessage } from '../../lib/errors.js';

/** How long after its migration ended an adopted module is verified. */
export const OFFER_VERIFY_DELAY_MS = 1_000;
/** Verifications waiting at most; beyond that a verification is skipped (the VM keeps its module; the next migration of the image offers again). */
export const MAX_PENDING_OFFER_VERIFICATIONS = 8;

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

  /** Number of verifications waiting (tests). */
  get waiting(): number { return this.pending.size; }

  /** Schedules the task; false (and a log line) when it is skipped. */
  schedule(task: OfferVerificationTask): boolean {
    if (this.closed || task.signal?.aborted === true) return false;
    if (this.pending.size >= MAX_PENDING_OFFER_VERIFICATIONS) {
      task.log(`verification of ${task.what} skipped: ${MAX_PENDING_OFFER_VERIFICATIONS} verifications are waiting already`);
      return false;
    }
    const cancel = (): void => { clearTimeout(timer); this.pending.delete(timer); };
    const timer = setTimeout(() => {
      this.pending.delete(timer);
      task.signal?.removeEventListener('abort', cancel);
      try {
        task.run();
      } catch (err) {
        // On a timer: nothing may escape (an uncaught exception would end the host), not even from a log already closed.
        try { task.log(`verification of ${task.what} failed: ${errorMessage(err)}`); } catch { /* no log left to tell */ }
      }
    }, OFFER_VERIFY_DELAY_MS);
    timer.unref();
    this.pending.set(timer, cancel);
    task.signal?.addEventListener('abort', cancel, { once: true });
    return true;
  }

  /** Cancels every waiting verification and takes no more (host shutdown). */
  close(): void {
    this.closed = true;
    for (const cancel of [...this.pending.values()]) cancel();
  }
}

/** The host process's verifier (like the instrument cache, one per process). */
export const offerVerifier = new OfferVerifier();
