/**
 * Wakes the center's event streams when there may be new events. The store's event log is the truth
 * (a stream always reads it: replay and live are the same loop, so nothing falls between them); this
 * only says "look now". The store pokes it (CenterStore.onEventsCommitted, wired in ./center.ts) after
 * each commit of this center's and, on PostgreSQL, of every other center's (LISTEN/NOTIFY); each
 * stream's fallback poll covers what a lost listening connection missed before it is back.
 */
export class EventWakeups {
  #waiters = new Set<() => void>();
  #generation = 0;

  /** Changes at every poke: a stream reads it before reading the store, and waits only if no poke came since. */
  get generation(): number { return this.#generation; }

  /** New events may be in the store: wake every waiting stream. */
  poke(): void {
    this.#generation++;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const w of waiters) w();
  }

  /**
   * Resolves at the next poke after generation `since` (at once if one came already), after
   * `timeoutMs`, or when `signal` aborts, whichever is first.
   */
  wait(since: number, timeoutMs: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (since !== this.#generation || signal.aborted) { resolve(); return; }
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        this.#waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      signal.addEventListener('abort', done, { once: true });
      this.#waiters.add(done);
    });
  }

  get waiting(): number { return this.#waiters.size; }
}
