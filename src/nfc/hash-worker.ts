/**
 * A hashing thread of the network file copy (./chunk-hash.ts): SHA-256 of a chunk that lives in a
 * SharedArrayBuffer the copy reads into — the bytes are not copied to get here, only their place.
 * Messages: { id, buffer, byteOffset, byteLength } in, { id, digest } (32 bytes) or { id, error } out.
 */
import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

interface HashRequest {
  readonly id: number;
  readonly buffer: SharedArrayBuffer;
  readonly byteOffset: number;
  readonly byteLength: number;
}

const port = parentPort;
if (port === null) throw new Error('hash-worker.js runs as a worker thread');
port.on('message', (m: HashRequest) => {
  try {
    const digest = createHash('sha256').update(new Uint8Array(m.buffer, m.byteOffset, m.byteLength)).digest();
    port.postMessage({ id: m.id, digest: new Uint8Array(digest) });
  } catch (err) {
    port.postMessage({ id: m.id, error: err instanceof Error ? err.message : String(err) });
  }
});
