/**
 * The order a VmdkDisk runs its operations in: concurrently, except where one issued earlier must
 * finish first. An operation waits only for the operations issued before it that it conflicts
 * with, so the waits form no cycle:
 *
 *   read       after a write to an overlapping byte range (it sees that write)
 *   write      after a read or write of an overlapping byte range (it lands after both)
 *   flush      after every write and every flush (what was issued before it is durable when it resolves)
 *   exclusive  after everything, and everything issued later waits for it (walks of every table,
 *              and whatever else must see the disk standing still)
 *
 * So for each byte the operations run in the order they were issued (reads among themselves
 * excepted: they commute), which is the contract of src/storage/changed-blocks.ts — a copier's
 * read issued after a write to the same block sees it. Operations on disjoint ranges run in any
 * order, as on a disk's queue — also within one grain (sequential 4 KiB writes share a 64 KiB
 * grain): two writes into one grain the disk does not hold yet are kept apart by the extent, which
 * lets one allocate the grain and the other then write into it (./sparse-extent.ts).
 */

export type IoKind = 'read' | 'write' | 'flush' | 'exclusive';

interface Issued {
  readonly kind: IoKind;
  /** The byte range [lo, hi) of a read or write; unused for flush and exclusive. */
  readonly lo: number;
  readonly hi: number;
  /** Settles (never rejects) when the operation has finished, whatever its outcome. */
  readonly settled: Promise<void>;
}

function conflicts(earlier: Issued, kind: IoKind, lo: number, hi: number): boolean {
  if (kind === 'exclusive' || earlier.kind === 'exclusive') return true;
  if (kind === 'flush') return earlier.kind === 'write' || earlier.kind === 'flush';
  if (earlier.kind === 'flush') return false;
  if (kind === 'read' && earlier.kind === 'read') return false;
  return lo < earlier.hi && earlier.lo < hi;
}

const ignore = (): void => undefined;

export class IoOrder {
  /** Operations issued and not yet finished, in issue order (a Set keeps insertion order). */
  private readonly inFlight = new Set<Issued>();

  /** Operations not yet finished. */
  get size(): number { return this.inFlight.size; }

  /**
   * Runs `op` once every earlier operation it conflicts with has finished (at once when there is
   * none: no extra turn of the event loop on the common path). [lo, hi) is the byte range of a
   * read or write.
   */
  run<T>(kind: IoKind, lo: number, hi: number, op: () => Promise<T>): Promise<T> {
    const before: Promise<void>[] = [];
    for (const e of this.inFlight) if (conflicts(e, kind, lo, hi)) before.push(e.settled);
    // The async wrapper turns a throw before op's first await into a rejection.
    const result = before.length === 0 ? (async () => op())() : Promise.all(before).then(op);
    const issued: Issued = { kind, lo, hi, settled: result.then(ignore, ignore) };
    this.inFlight.add(issued);
    void issued.settled.then(() => { this.inFlight.delete(issued); });
    return result;
  }

  /** Resolves when every operation issued so far has finished. */
  async idle(): Promise<void> {
    await Promise.all([...this.inFlight].map((e) => e.settled));
  }
}
