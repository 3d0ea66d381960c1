/**
 * The network file copy's checksums (docs/design/nfc.md, "Units, boundaries, digests"): each chunk's
 * SHA-256, holes (all-zero chunks), and a file's digest — SHA-256 over its chunks' SHA-256s in order.
 *
 * Chunks are hashed on HASH_THREADS worker threads (./hash-worker.ts): the copier reads, hashes and
 * writes several chunks at once, and the two cores of a small host hash in parallel instead of the
 * event loop hashing one chunk at a time (SHA-256 is ~2 GB/s per core; a copy hashes every byte twice,
 * once read from the source and once read back from the target). Buffers from `chunkBuffer()` live in
 * SharedArrayBuffers, so a chunk goes to its thread without being copied; any other buffer is hashed
 * on the calling thread. (WebCrypto's digest, on libuv's pool, was measured: it copies its input and
 * shares the pool with the file I/O, and cost ~25% more CPU per byte copied.)
 */
import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { FerryError } from '../lib/errors.js';
import { NFC_CHUNK_BYTES } from './plan.js';

/** Hashing threads at most: one per core up to two — the copy's file I/O and the event loop need the rest. */
export const MAX_HASH_THREADS = 2;

/** Bytes of one chunk's checksum (SHA-256). */
export const CHUNK_SHA256_BYTES = 32;

const ZEROS = new Uint8Array(NFC_CHUNK_BYTES);
const zeroSums = new Map<number, Uint8Array>();

interface HashReply {
  readonly id: number;
  readonly digest?: Uint8Array;
  readonly error?: string;
}

interface Waiting {
  readonly resolve: (d: Uint8Array) => void;
  readonly reject: (e: Error) => void;
}

/** One hashing thread and the requests it has not answered (at most the copy's chunks in flight). */
class HashThread {
  readonly waiting = new Map<number, Waiting>();
  private readonly worker: Worker;
  dead = false;

  constructor() {
    this.worker = new Worker(new URL('./hash-worker.js', import.meta.url));
    this.worker.on('message', (m: HashReply) => {
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (this.waiting.size === 0) this.worker.unref();
      if (m.digest !== undefined) w?.resolve(m.digest);
      else w?.reject(new FerryError('INTERNAL', `hashing thread: ${m.error ?? 'no digest'}`));
    });
    const die = (why: string): void => {
      this.dead = true;
      for (const w of this.waiting.values()) w.reject(new FerryError('INTERNAL', `hashing thread ${why}`));
      this.waiting.clear();
    };
    this.worker.on('error', (err) => { die(`failed: ${err.message}`); });
    this.worker.on('exit', (code) => { die(`exited (${code})`); });
    // An idle thread does not keep its process alive; a busy one does (ref'd while it has requests).
    // After the listeners: attaching a 'message' listener refs the thread's port again.
    this.worker.unref();
  }

  hash(id: number, data: Uint8Array & { buffer: SharedArrayBuffer }): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      if (this.waiting.size === 0) this.worker.ref();
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, buffer: data.buffer, byteOffset: data.byteOffset, byteLength: data.byteLength });
    });
  }
}

const threads: HashThread[] = [];
let nextId = 0;

function isShared(data: Uint8Array): data is Uint8Array & { buffer: SharedArrayBuffer } {
  return data.buffer instanceof SharedArrayBuffer;
}

/** A buffer of NFC_CHUNK_BYTES that chunkSha256 hashes on a hashing thread without copying it. */
export function chunkBuffer(): Buffer {
  return Buffer.from(new SharedArrayBuffer(NFC_CHUNK_BYTES));
}

/** SHA-256 of `data`: on the least busy hashing thread when it lives in a chunkBuffer(), else here. */
export function chunkSha256(data: Uint8Array): Promise<Uint8Array> {
  if (!isShared(data)) return Promise.resolve(new Uint8Array(createHash('sha256').update(data).digest()));
  for (let i = threads.length - 1; i >= 0; i--) if (threads[i]?.dead === true) threads.splice(i, 1);
  const count = Math.min(MAX_HASH_THREADS, Math.max(1, availableParallelism()));
  while (threads.length < count) threads.push(new HashThread());
  let best = threads[0];
  for (const t of threads) if (best === undefined || t.waiting.size < best.waiting.size) best = t;
  if (best === undefined) throw new FerryError('INTERNAL', 'no hashing thread');
  nextId = (nextId + 1) % Number.MAX_SAFE_INTEGER;
  return best.hash(nextId, data);
}

/** True if every byte of `data` (at most NFC_CHUNK_BYTES) is zero: a hole. */
export function isZeroChunk(data: Uint8Array): boolean {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).equals(ZEROS.subarray(0, data.byteLength));
}

/** The SHA-256 of a hole of `lengthBytes` (a full chunk, or a file's shorter last one); cached (few distinct lengths). */
export function zeroChunkSha256(lengthBytes: number): Uint8Array {
  let sum = zeroSums.get(lengthBytes);
  if (sum === undefined) {
    sum = new Uint8Array(createHash('sha256').update(ZEROS.subarray(0, lengthBytes)).digest());
    // Bounded: a plan's files have at most MAX_COPY_FILES distinct last-chunk lengths, and the map is a cache only.
    if (zeroSums.size >= 1024) zeroSums.clear();
    zeroSums.set(lengthBytes, sum);
  }
  return sum;
}

/** Chunks of a file of `sizeBytes` (0 for an empty file). */
export function chunkCount(sizeBytes: number): number {
  return Math.ceil(sizeBytes / NFC_CHUNK_BYTES);
}

/** Length of the chunk at `offsetBytes` of a file of `sizeBytes`. */
export function chunkLength(sizeBytes: number, offsetBytes: number): number {
  return Math.min(NFC_CHUNK_BYTES, sizeBytes - offsetBytes);
}

/** A file's digest, built incrementally from its chunks' checksums in order (lowercase hex at the end). */
export class FileDigest {
  private readonly hash = createHash('sha256');
  /** One chunk's checksum, or several in a row. */
  add(sha256: Uint8Array): void { this.hash.update(sha256); }
  hex(): string { return this.hash.digest('hex'); }
}
