/**
 * The physical limit a migration benchmark compares against: `size` bytes over one loopback TCP
 * connection (1 MiB writes) into freshly allocated memory in another process — what a fresh
 * target could receive at best. Used by bench:migrate and bench:disk.
 *
 * Run as a script (`node raw-socket.js --raw-receiver <bytes> --into buffer|wasm`) it is the
 * receiving child.
 */
import { spawn } from 'node:child_process';
import { createServer, connect, type AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { MiB } from '../src/lib/units.js';

const RAW_WRITE_BYTES = 1 * MiB;
/** The receiver must report within this long, or the baseline is broken (not slow). */
const RAW_TIMEOUT_MS = 120_000;

/** Child mode: receive `size` bytes into fresh memory; print the elapsed ms of the transfer. */
async function rawReceiver(size: number, into: string): Promise<void> {
  const server = createServer((socket) => {
    // Fresh memory: first-touch page faults. 'buffer' = a Node Buffer; 'wasm' = a fresh shared
    // WebAssembly.Memory, the kind of memory a target VM really has (it faults in several times
    // slower here: no transparent huge pages for wasm reservations).
    const dest = into === 'wasm'
      ? new Uint8Array(new WebAssembly.Memory({ initial: size / 65536, maximum: size / 65536, shared: true }).buffer, 0, size)
      : Buffer.alloc(size);
    let at = 0;
    let t0 = 0;
    socket.on('data', (chunk: Buffer) => {
      if (at === 0) t0 = performance.now();
      dest.set(chunk.subarray(0, Math.min(chunk.length, size - at)), at);
      at += chunk.length;
      if (at >= size) {
        process.stdout.write(`done ${(performance.now() - t0).toFixed(3)}\n`);
        socket.end();
        server.close();
      }
    });
  });
  server.listen(0, '127.0.0.1', () => { process.stdout.write(`port ${(server.address() as AddressInfo).port}\n`); });
  await new Promise((resolve) => server.on('close', resolve));
}

/** Resolves when `pattern` appears in what `read()` returns, as `out` grows. */
function waitFor(pattern: RegExp, read: () => string, onData: (fn: () => void) => () => void): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`raw baseline: no "${pattern.source}" within ${RAW_TIMEOUT_MS} ms`)); }, RAW_TIMEOUT_MS);
    const check = (): void => {
      const m = pattern.exec(read());
      if (m !== null) { clearTimeout(timer); off(); resolve(m); }
    };
    const off = onData(check);
    check();
  });
}

/** Milliseconds to move `size` bytes (a multiple of 64 KiB for 'wasm') over loopback into fresh memory. */
export async function rawBaseline(size: number, into: 'buffer' | 'wasm'): Promise<number> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--raw-receiver', String(size), '--into', into], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const onData = (fn: () => void): (() => void) => { child.stdout.on('data', fn); return () => { child.stdout.off('data', fn); }; };
  try {
    const port = Number((await waitFor(/port (\d+)/, () => out, onData))[1]);
    const chunk = Buffer.alloc(RAW_WRITE_BYTES, 0xa5);
    const socket = connect({ host: '127.0.0.1', port, noDelay: true });
    await new Promise((resolve) => socket.once('connect', resolve));
    for (let sent = 0; sent < size; sent += RAW_WRITE_BYTES) {
      if (!socket.write(chunk.subarray(0, Math.min(RAW_WRITE_BYTES, size - sent)))) await new Promise((resolve) => socket.once('drain', resolve));
    }
    const ms = Number((await waitFor(/done ([\d.]+)/, () => out, onData))[1]);
    socket.destroy();
    return ms;
  } finally {
    if (child.exitCode === null) await new Promise((resolve) => { child.once('exit', resolve); setTimeout(() => { child.kill('SIGKILL'); }, 5_000).unref(); });
  }
}

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? '') : '';
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv.includes('--raw-receiver')) {
  void rawReceiver(Number(arg('raw-receiver')), arg('into'));
}
