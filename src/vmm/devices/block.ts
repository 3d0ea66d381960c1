/**
 * The guest block device (docs/guest-abi.md, "Block device"; design: docs/design/block-device.md).
 *
 *   guest: fills a 32-byte descriptor in its RAM, calls ferry.block_submit(desc) -> 0 (queued) | <0
 *   vCPU worker (BlockSubmitter): checks the descriptor pointer and the queue bound, copies the
 *     descriptor fields, sets the status word to PENDING, returns; after the step the worker posts
 *     the step's copies to the main thread in one message
 *   main thread (BlockService): validates the copy, does the I/O on the BlockBackend asynchronously,
 *     copies read data into guest RAM and fires its write traces, then publishes the completion with
 *     an atomic store (+ notify) to the status word, which the guest polls, and ends the idle sleep
 *     of the vCPUs (Control.wakeIdle: a notify only when one is asleep)
 *
 * The vCPU never waits for file I/O: submit costs a few loads and one CAS; a step that submitted
 * anything costs one postMessage. The
 * queue bound and the pause drain use one shared in-flight counter, incremented by the worker
 * *before* its message is posted and decremented by the service *after* the completion is
 * published, so "counter is 0" means every submitted request has completed and is visible in RAM,
 * even for messages still on their way to the main thread.
 */
import { FerryError, errorMessage } from '../../lib/errors.js';
import { MiB, formatBytes } from '../../lib/units.js';
import { MAX_DISK_CAPACITY_BYTES } from '../../lib/limits.js';
import type { TraceBitmap } from '../trace-bitmap.js';

// ---------------------------------------------------------------------------------------------
// ABI constants (docs/guest-abi.md). Changing any of them changes the guest ABI.

/** Descriptor size; a guest may place descriptors back to back. */
export const BLOCK_DESCRIPTOR_BYTES = 32;
/** Descriptors are 8-aligned so the status word is 4-aligned (Atomics need it) and the u64 offset is natural. */
export const BLOCK_DESCRIPTOR_ALIGN_BYTES = 8;
export const BLOCK_DESC_OP_OFFSET = 0;
export const BLOCK_DESC_STATUS_OFFSET = 4;
export const BLOCK_DESC_DISK_OFFSET_OFFSET = 8;
export const BLOCK_DESC_LENGTH_OFFSET = 16;
export const BLOCK_DESC_BUFFER_OFFSET = 20;
// +24: u64 for the guest's own use (a tag); the host neither reads nor writes it.

/** Disk offsets and lengths are whole sectors: what a disk format (VMDK grains are sector based) can map. */
export const BLOCK_SECTOR_BYTES = 512;
/** Largest read or write: bounds the host buffer per request (64 in flight = 64 MiB at most). */
export const BLOCK_MAX_REQUEST_BYTES = 1 * MiB;
/** Requests in flight per VM (all vCPUs together); block_submit refuses beyond it. */
export const BLOCK_MAX_IN_FLIGHT = 64;

export const BLOCK_OP_READ = 0;
export const BLOCK_OP_WRITE = 1;
export const BLOCK_OP_FLUSH = 2;

/** Status word values. PENDING is stored by block_submit when it accepts a request. */
export const BLOCK_STATUS_PENDING = 0;
export const BLOCK_STATUS_OK = 1;
/** Errors: a completion status, or a block_submit return value (those marked "submit"). */
export const BLOCK_E_BAD_OP = -1;
/** The buffer [buf, buf+len) is not inside guest RAM. */
export const BLOCK_E_RAM_RANGE = -2;
/** [offset, offset+len) is not inside the disk. */
export const BLOCK_E_DISK_RANGE = -3;
/** Length 0 or above BLOCK_MAX_REQUEST_BYTES for read/write, or not 0 for flush. */
export const BLOCK_E_LENGTH = -4;
/** Offset or length not a multiple of BLOCK_SECTOR_BYTES. */
export const BLOCK_E_ALIGN = -5;
/** The backend failed (the host's file I/O); the disk content of the range is unknown. */
export const BLOCK_E_IO = -6;
/** submit: the VM has no disk. */
export const BLOCK_E_NO_DISK = -7;
/** submit: BLOCK_MAX_IN_FLIGHT requests are in flight; retry after a completion. */
export const BLOCK_E_QUEUE_FULL = -8;
/** submit: the descriptor is not 8-aligned or not inside guest RAM. */
export const BLOCK_E_BAD_DESCRIPTOR = -9;

// ---------------------------------------------------------------------------------------------
// Host-side bounds (not ABI).

export { MAX_DISK_CAPACITY_BYTES };
/** Smallest disk: one sector, so a capacity of 0 always means "no disk". */
export const MIN_DISK_CAPACITY_BYTES = BLOCK_SECTOR_BYTES;
/**
 * How long a pause (and so a save or a migration switch-over) waits for in-flight block requests.
 * It is separate from the vCPU hang timeout: a slow fsync on a busy disk is not a guest hang.
 */
export const BLOCK_DRAIN_TIMEOUT_MS = 10_000;

/** Words of the device's shared counters (BlockShared.words). */
const W_IN_FLIGHT = 0;
const W_SUBMITTED = 1;
const W_COMPLETED = 2;
const W_FAILED = 3;
/** Accepted by a submitter and not yet posted (they are posted when the step ends). */
const W_UNPOSTED = 4;
const SHARED_WORDS = 5;

/**
 * What the device reads and writes: a disk of a fixed size. A src/storage BlockFile (positional
 * read/write, flush) plus the disk's capacity satisfies it (see `blockBackend`); src/vmm never
 * imports src/storage.
 */
export interface BlockBackend {
  readonly capacityBytes: number;
  /** Reads exactly buf.length bytes at position (bytes never written read as zero). */
  read(position: number, buf: Uint8Array): Promise<void>;
  write(position: number, data: Uint8Array): Promise<void>;
  /** Every write that resolved before this call is durable when it resolves. */
  flush(): Promise<void>;
}

/** The I/O half of a BlockBackend: what a BlockFile already is. */
export type BlockIo = Pick<BlockBackend, 'read' | 'write' | 'flush'>;

/** A backend over a file-like object (e.g. a BlockFile) with a fixed capacity. */
export function blockBackend(io: BlockIo, capacityBytes: number): BlockBackend {
  checkDiskCapacity(capacityBytes);
  return {
    capacityBytes,
    read: (position, buf) => io.read(position, buf),
    write: (position, data) => io.write(position, data),
    flush: () => io.flush(),
  };
}

export function checkDiskCapacity(capacityBytes: number): void {
  if (!Number.isInteger(capacityBytes) || capacityBytes < MIN_DISK_CAPACITY_BYTES || capacityBytes > MAX_DISK_CAPACITY_BYTES
    || capacityBytes % BLOCK_SECTOR_BYTES !== 0) {
    throw new FerryError('VM_CONFIG_INVALID',
      `disk capacity ${capacityBytes} B is not valid: it must be a multiple of ${BLOCK_SECTOR_BYTES} B from ${formatBytes(MIN_DISK_CAPACITY_BYTES)} to ${formatBytes(MAX_DISK_CAPACITY_BYTES)}`,
      { capacityBytes });
  }
}

/** What a vCPU worker is handed about the disk (null: the VM has none). */
export interface BlockWorkerData {
  readonly capacityBytes: number;
  /** BlockShared.words: in-flight count and statistics, shared by every vCPU and the service. */
  readonly shared: SharedArrayBuffer;
}

export function createBlockShared(): SharedArrayBuffer {
  return new SharedArrayBuffer(SHARED_WORDS * 4);
}

/** A request as block_submit copied it out of the descriptor (later guest changes to it do not count). */
export interface BlockRequest {
  readonly descPtr: number;
  readonly op: number;
  readonly diskOffset: bigint;
  readonly lengthBytes: number;
  readonly bufferPtr: number;
}

/** The error status a request completes with, or BLOCK_STATUS_OK if it is well-formed. */
export function validateBlockRequest(req: BlockRequest, ramBytes: number, capacityBytes: number): number {
  const { op, diskOffset, lengthBytes, bufferPtr } = req;
  if (op === BLOCK_OP_FLUSH) return lengthBytes === 0 ? BLOCK_STATUS_OK : BLOCK_E_LENGTH;
  if (op !== BLOCK_OP_READ && op !== BLOCK_OP_WRITE) return BLOCK_E_BAD_OP;
  if (lengthBytes === 0 || lengthBytes > BLOCK_MAX_REQUEST_BYTES) return BLOCK_E_LENGTH;
  if (diskOffset % BigInt(BLOCK_SECTOR_BYTES) !== 0n || lengthBytes % BLOCK_SECTOR_BYTES !== 0) return BLOCK_E_ALIGN;
  if (bufferPtr + lengthBytes > ramBytes) return BLOCK_E_RAM_RANGE;
  // bigint: a u64 offset near 2^64 must not wrap or lose precision before the comparison.
  if (diskOffset + BigInt(lengthBytes) > BigInt(capacityBytes)) return BLOCK_E_DISK_RANGE;
  return BLOCK_STATUS_OK;
}

// ---------------------------------------------------------------------------------------------
// Worker side: ferry.block_submit and ferry.block_capacity.

/** What a submitter needs from its vCPU worker. */
export interface BlockSubmitterHost {
  readonly memory: WebAssembly.Memory;
  readonly ramBytes: number;
  readonly bitmap: TraceBitmap;
  /** Sends requests to the main thread's BlockService (one postMessage). */
  post(reqs: readonly BlockRequest[]): void;
}

/** The guest-facing half of the device, one per vCPU worker. */
export class BlockSubmitter {
  private readonly words: Int32Array | null;
  private readonly view: DataView;
  private readonly i32: Int32Array;
  /** Accepted in the current step, not yet posted. */
  private accepted: BlockRequest[] = [];

  constructor(private readonly disk: BlockWorkerData | null, private readonly host: BlockSubmitterHost) {
    this.words = disk === null ? null : new Int32Array(disk.shared);
    this.view = new DataView(host.memory.buffer);
    this.i32 = new Int32Array(host.memory.buffer);
  }

  capacity(): bigint {
    return BigInt(this.disk?.capacityBytes ?? 0);
  }

  /** ferry.block_submit: 0 when queued, a negative BLOCK_E_* when refused (nothing queued then). */
  submit(descPtrArg: number): number {
    const words = this.words;
    if (words === null) return BLOCK_E_NO_DISK;
    const descPtr = descPtrArg >>> 0;
    if (descPtr % BLOCK_DESCRIPTOR_ALIGN_BYTES !== 0 || descPtr + BLOCK_DESCRIPTOR_BYTES > this.host.ramBytes) return BLOCK_E_BAD_DESCRIPTOR;
    // Reserve a slot: CAS so that concurrent submits from several vCPUs never exceed the bound.
    for (;;) {
      const n = Atomics.load(words, W_IN_FLIGHT);
      if (n >= BLOCK_MAX_IN_FLIGHT) return BLOCK_E_QUEUE_FULL;
      if (Atomics.compareExchange(words, W_IN_FLIGHT, n, n + 1) === n) break;
    }
    Atomics.add(words, W_SUBMITTED, 1);
    Atomics.add(words, W_UNPOSTED, 1);
    const v = this.view;
    const req: BlockRequest = {
      descPtr,
      op: v.getUint32(descPtr + BLOCK_DESC_OP_OFFSET, true),
      diskOffset: v.getBigUint64(descPtr + BLOCK_DESC_DISK_OFFSET_OFFSET, true),
      lengthBytes: v.getUint32(descPtr + BLOCK_DESC_LENGTH_OFFSET, true),
      bufferPtr: v.getUint32(descPtr + BLOCK_DESC_BUFFER_OFFSET, true),
    };
    // PENDING is a device write into guest RAM: it fires the trace like a guest store would.
    const statusPtr = descPtr + BLOCK_DESC_STATUS_OFFSET;
    Atomics.store(this.i32, statusPtr >>> 2, BLOCK_STATUS_PENDING);
    this.host.bitmap.markRange(statusPtr, 4);
    this.accepted.push(req);
    return 0;
  }

  /**
   * Posts the requests accepted since the last call, in one message. The worker calls it after
   * every step (also one that trapped): a guest that queues 32 requests in a step costs one
   * postMessage and one main-thread message event, not 32. The guest polls its status words in
   * later steps anyway, so holding them until the step ends delays nothing it can observe.
   */
  postAccepted(): void {
    if (this.accepted.length === 0 || this.words === null) return;
    this.host.post(this.accepted);
    Atomics.sub(this.words, W_UNPOSTED, this.accepted.length);
    this.accepted = [];
  }
}

// ---------------------------------------------------------------------------------------------
// Main-thread side: the block service.

export interface BlockServiceStats {
  readonly submitted: number;
  readonly completed: number;
  /** Completed with an error status (validation or I/O). */
  readonly failed: number;
  readonly inFlight: number;
  /** The last backend error, for diagnostics. */
  readonly lastIoError: string | null;
}

export interface BlockServiceOptions {
  readonly backend: BlockBackend;
  readonly memory: WebAssembly.Memory;
  readonly ramBytes: number;
  readonly bitmap: TraceBitmap;
  readonly shared: SharedArrayBuffer;
  /**
   * Called after each completion is published: ends the idle sleep of the vCPUs (Control.wakeIdle)
   * so a guest waiting for this completion runs again now rather than at its next idle tick.
   */
  readonly wakeIdle?: () => void;
}

/** Performs a VM's block requests on its backend, asynchronously, and publishes their completions. */
export class BlockService {
  private readonly words: Int32Array;
  private readonly i32: Int32Array;
  private readonly ram: Uint8Array;
  /** Writes started and not yet finished: a flush waits for exactly these. */
  private readonly writesInFlight = new Set<Promise<void>>();
  private drainWaiters: (() => void)[] = [];
  private lastIoError: string | null = null;

  constructor(private readonly opts: BlockServiceOptions) {
    this.words = new Int32Array(opts.shared);
    this.i32 = new Int32Array(opts.memory.buffer);
    this.ram = new Uint8Array(opts.memory.buffer, 0, opts.ramBytes);
  }

  get capacityBytes(): number { return this.opts.backend.capacityBytes; }

  /** Requests submitted and not yet completed (including those whose message has not arrived). */
  get inFlight(): number { return Atomics.load(this.words, W_IN_FLIGHT); }

  stats(): BlockServiceStats {
    return {
      submitted: Atomics.load(this.words, W_SUBMITTED), completed: Atomics.load(this.words, W_COMPLETED),
      failed: Atomics.load(this.words, W_FAILED), inFlight: this.inFlight, lastIoError: this.lastIoError,
    };
  }

  /** A request posted by a vCPU's BlockSubmitter. Never throws: every outcome is a completion status. */
  handle(req: BlockRequest): void {
    const status = validateBlockRequest(req, this.opts.ramBytes, this.capacityBytes);
    if (status !== BLOCK_STATUS_OK) { this.complete(req, status); return; }
    void this.perform(req).then((s) => { this.complete(req, s); });
  }

  /**
   * Resolves true once no request is in flight, false if `timeoutMs` passes first. With every vCPU
   * parked no new request can be submitted, so true means "quiescent" (Vm.pause relies on it).
   */
  drain(timeoutMs: number): Promise<boolean> {
    if (this.inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.drainWaiters = this.drainWaiters.filter((w) => w !== done); resolve(false); }, timeoutMs);
      const done = (): void => { clearTimeout(timer); resolve(true); };
      this.drainWaiters.push(done);
    });
  }

  /**
   * Once every vCPU thread has ended: the requests accepted in a step that never finished (its
   * thread was terminated, e.g. a hung guest) were never posted and never will be. They leave the
   * in-flight count so a drain (Vm.stop) does not wait for them, and count as failed.
   */
  abandonUnposted(): void {
    const n = Atomics.exchange(this.words, W_UNPOSTED, 0);
    if (n === 0) return;
    Atomics.add(this.words, W_FAILED, n);
    if (Atomics.sub(this.words, W_IN_FLIGHT, n) === n) this.drained();
  }

  private drained(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }

  private async perform(req: BlockRequest): Promise<number> {
    const { backend } = this.opts;
    const position = Number(req.diskOffset); // validated: below MAX_DISK_CAPACITY_BYTES, exact
    try {
      if (req.op === BLOCK_OP_READ) {
        // Read into a host buffer, then copy: the backend may fill it piecewise over several
        // callbacks, and the guest must never see a half-done read under a completed status.
        const buf = new Uint8Array(req.lengthBytes);
        await backend.read(position, buf);
        this.ram.set(buf, req.bufferPtr);
        this.opts.bitmap.markRange(req.bufferPtr, req.lengthBytes); // a device write fires traces like a guest store
      } else if (req.op === BLOCK_OP_WRITE) {
        // Copy out of the shared RAM first: the backend writes asynchronously and must see the
        // bytes as they were at the start of the request.
        const data = this.ram.slice(req.bufferPtr, req.bufferPtr + req.lengthBytes);
        const write = backend.write(position, data);
        this.writesInFlight.add(write);
        try { await write; } finally { this.writesInFlight.delete(write); }
      } else {
        // Every write that completed before the flush was submitted is among those finished or in
        // flight now; wait for those in flight (their outcome is theirs to report), then flush.
        await Promise.allSettled([...this.writesInFlight]);
        await backend.flush();
      }
      return BLOCK_STATUS_OK;
    } catch (err) {
      this.lastIoError = errorMessage(err);
      return BLOCK_E_IO;
    }
  }

  /** Publishes a completion: status store (seq-cst, after any data copy) + notify, then the counters. */
  private complete(req: BlockRequest, status: number): void {
    const statusPtr = req.descPtr + BLOCK_DESC_STATUS_OFFSET;
    Atomics.store(this.i32, statusPtr >>> 2, status);
    this.opts.bitmap.markRange(statusPtr, 4);
    Atomics.notify(this.i32, statusPtr >>> 2);
    if (status !== BLOCK_STATUS_OK) Atomics.add(this.words, W_FAILED, 1);
    Atomics.add(this.words, W_COMPLETED, 1);
    // After the status store: a vCPU woken by this sees the completion in its next step.
    this.opts.wakeIdle?.();
    // Decremented last: a drain that sees 0 sees every completion published.
    if (Atomics.sub(this.words, W_IN_FLIGHT, 1) === 1) this.drained();
  }
}
