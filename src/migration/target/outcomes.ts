/**
 * The outcomes of incoming migrations a target keeps in memory for the sources that ask, bounded:
 * beyond MAX_REMEMBERED_OUTCOMES the oldest *durable* ones are forgotten (the data directory still
 * answers for them); one that only memory holds is never dropped.
 */
import type { IncomingOutcome } from '../peer.js';

/** Outcomes kept in memory at most (see above). */
export const MAX_REMEMBERED_OUTCOMES = 1024;

/** An outcome as remembered here; `durable`: the data directory holds it too (or nothing needs it). */
interface Remembered {
  outcome: IncomingOutcome;
  durable: boolean;
}

export class RememberedOutcomes {
  /** In insertion order, so the oldest durable ones are evicted first. */
  private readonly outcomes = new Map<string, Remembered>();

  get size(): number { return this.outcomes.size; }

  /** True when no room can be made: every remembered outcome is one only memory holds. */
  get full(): boolean {
    this.evict();
    return this.outcomes.size >= MAX_REMEMBERED_OUTCOMES;
  }

  get(id: string): IncomingOutcome | undefined { return this.outcomes.get(id)?.outcome; }

  /** A migration just announced (a ticket issued): pending, held by memory only. */
  addPending(id: string): void {
    this.outcomes.set(id, { outcome: { state: 'pending' }, durable: false });
  }

  remember(id: string, outcome: IncomingOutcome, durable: boolean): void {
    this.outcomes.delete(id); // re-insert: the newest go last
    this.outcomes.set(id, { outcome, durable });
    this.evict();
  }

  /** Forgets the oldest durable outcomes beyond the bound; never one that only memory holds. */
  private evict(): void {
    if (this.outcomes.size < MAX_REMEMBERED_OUTCOMES) return;
    for (const [id, r] of this.outcomes) {
      if (this.outcomes.size < MAX_REMEMBERED_OUTCOMES) return;
      if (r.durable) this.outcomes.delete(id);
    }
  }
}
