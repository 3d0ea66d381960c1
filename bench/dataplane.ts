/**
 * npm run bench:dataplane — what the portable virtual path costs against plain TCP, between two real
 * processes on loopback, in one run.
 *
 * Two children are forked: `a` (the source host: dials and sends) and `b` (the target host: listens
 * and counts). The parent drives them over IPC. Parts:
 *   plain     one plain TCP stream, `--bytes` bytes (1 MiB writes);
 *   path      one stream through a portable path (TLS 1.3 PSK to b's tunnel endpoint), `--bytes`;
 *   path2     two streams of one path at once, `--bytes` each (the figure is their sum);
 *   setup     `--ops` times: open the path on b (and listen), open it on a, dial one stream, send 64
 *             bytes and read their echo, close a's end, close b's end. Timed by the parent around
 *             the whole operation, its three IPC round trips to the children included (as a center's
 *             pushes to the two hosts would be, only faster).
 * Throughput is timed by the receiver from its first byte to its last (MB = 10^6 bytes).
 *
 * The three throughput parts run interleaved over `--rounds` rounds in a rotating order; each figure
 * is the median of its rounds (every sample is in the JSON's samplesMBps).
 *
 *   migrate   bench:migrate's workload migrated directly and through a portable path, alternately,
 *             twice each (./path-migration.ts); the medians of their total times.
 *
 * Flags: --bytes=1GiB --ops=100 --rounds=3 --migrate-memory=1GiB (0: no migration part) --hot=64MiB.
 * Progress and the table go to stderr; the last stdout line is one JSON object: plainMBps, pathMBps,
 * path2StreamsMBps, setupRollbackP50Ms, setupRollbackP99Ms, migrateViaPathMs, migrateDirectMs (null
 * without the migration part), migrateViaPathVsDirect.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { createPortableDriver } from '../src/dataplane/path/portable-driver.js';
import type { PathDriver } from '../src/dataplane/path/driver.js';
import type { PathEndpoint, PathSpec } from '../src/dataplane/path/spec.js';
import { VirtualPath } from '../src/dataplane/path/virtual-path.js';
import type { ByteStream } from '../src/dataplane/transport.js';
import { silentLogger } from '../src/lib/logger.js';
import { GiB, MiB, parseSizeBytes } from '../src/lib/units.js';
import { pathSpecPair } from '../test/helpers/path-specs.js';
import { runBench, stopChild, writeStdout } from './process.js';
import { migrateDirectAndViaPath } from './path-migration.js';
import { cpuSnapshot, interference, median, round, summarize } from './stats.js';

const WRITE_BYTES = 1 * MiB;
const ECHO_BYTES = 64;
const DIAL_TIMEOUT_MS = 10_000;
/** A child that does not answer a command by then is broken, not slow. */
const COMMAND_TIMEOUT_MS = 300_000;
const LOOPBACK = '127.0.0.1';

// ---------------------------------------------------------------------------------------------
// The parent ↔ child protocol: one request, one reply, in order.

type Command =
  | { readonly cmd: 'listenPlain'; readonly bytes: number }
  | { readonly cmd: 'sendPlain'; readonly port: number; readonly bytes: number }
  | { readonly cmd: 'startDriver' }
  | { readonly cmd: 'openAndCount'; readonly spec: PathSpec; readonly streams: number; readonly bytes: number }
  | { readonly cmd: 'openAndSend'; readonly spec: PathSpec; readonly streams: number; readonly bytes: number }
  | { readonly cmd: 'openEcho'; readonly spec: PathSpec }
  | { readonly cmd: 'roundTrip'; readonly spec: PathSpec }
  | { readonly cmd: 'closePath'; readonly pathId: string }
  | { readonly cmd: 'waitReceived' }
  | { readonly cmd: 'cpuMs' };

type Reply =
  | { readonly ok: true; readonly port?: number; readonly endpoint?: PathEndpoint; readonly ms?: number; readonly cpuMs?: number }
  | { readonly ok: false; readonly error: string };

// ---------------------------------------------------------------------------------------------
// Child side

interface ChildState {
  driver: PathDriver | null;
  readonly paths: Map<string, VirtualPath>;
  /** Resolves with the receive time (first byte to last) of the current transfer. */
  received: Promise<number> | null;
}

/** Counts `streams` streams of `bytes` each; resolves with the ms from the first byte of any to the last of all. */
function counter(streams: number, bytes: number): { onStream: (s: ByteStream) => void; done: Promise<number> } {
  let first = 0;
  let finished = 0;
  let resolve: (ms: number) => void = () => undefined;
  const done = new Promise<number>((r) => { resolve = r; });
  const onStream = (s: ByteStream): void => {
    let got = 0;
    s.on('data', (chunk: Buffer) => {
      if (first === 0) first = performance.now();
      got += chunk.length;
      if (got >= bytes) { s.destroy(); if (++finished === streams) resolve(performance.now() - first); }
    });
    s.on('error', () => undefined);
  };
  return { onStream, done };
}

async function send(stream: ByteStream, bytes: number): Promise<void> {
  const chunk = randomBytes(WRITE_BYTES);
  for (let sent = 0; sent < bytes; sent += WRITE_BYTES) {
    if (!stream.write(chunk.subarray(0, Math.min(WRITE_BYTES, bytes - sent)))) await new Promise((r) => stream.once('drain', r));
  }
}

async function openPath(state: ChildState, spec: PathSpec): Promise<VirtualPath> {
  if (state.driver === null) state.driver = await createPortableDriver({ listen: { host: LOOPBACK, port: 0 } });
  const path = new VirtualPath(spec, await state.driver.open(spec, silentLogger()));
  state.paths.set(spec.pathId, path);
  return path;
}

async function closePath(state: ChildState, pathId: string): Promise<void> {
  await state.paths.get(pathId)?.close();
  state.paths.delete(pathId);
}

async function listenPlain(state: ChildState, bytes: number): Promise<number> {
  const c = counter(1, bytes);
  const sockets = new Set<Socket>();
  const server = createServer((s) => { sockets.add(s); c.onStream(s); });
  await new Promise<void>((r) => { server.listen(0, LOOPBACK, r); });
  state.received = c.done.finally(() => { for (const s of sockets) s.destroy(); server.close(); });
  return (server.address() as AddressInfo).port;
}

async function sendPlain(port: number, bytes: number): Promise<void> {
  const socket = connect({ host: LOOPBACK, port, noDelay: true });
  await new Promise((r) => socket.once('connect', r));
  await send(socket, bytes);
  socket.end();
}

async function openAndSend(state: ChildState, spec: PathSpec, streams: number, bytes: number): Promise<void> {
  const path = await openPath(state, spec);
  const dialled = await Promise.all(Array.from({ length: streams }, (_, i) => path.dial({ host: spec.peerAddress, port: spec.firstPort + i }, { timeoutMs: DIAL_TIMEOUT_MS })));
  await Promise.all(dialled.map((s) => send(s, bytes)));
  // The receiver closes each stream once it has counted everything; then the path goes.
  await Promise.all(dialled.map((s) => new Promise((r) => { s.on('error', () => undefined); if (s.closed) r(null); else s.once('close', r); })));
  await closePath(state, spec.pathId);
}

async function openAndCount(state: ChildState, spec: PathSpec, streams: number, bytes: number): Promise<void> {
  const path = await openPath(state, spec);
  const c = counter(streams, bytes);
  for (let i = 0; i < streams; i++) await path.listen({ host: spec.localAddress, port: spec.firstPort + i }, c.onStream);
  state.received = c.done.finally(() => closePath(state, spec.pathId));
}

async function openEcho(state: ChildState, spec: PathSpec): Promise<void> {
  const path = await openPath(state, spec);
  await path.listen({ host: spec.localAddress, port: spec.firstPort }, (s) => { s.on('error', () => undefined); s.on('data', (d: Buffer) => { s.write(d); }); });
}

/** The operation's side of a set-up: open, dial, 64 bytes there and back, close. */
async function roundTrip(state: ChildState, spec: PathSpec): Promise<void> {
  const path = await openPath(state, spec);
  try {
    const s = await path.dial({ host: spec.peerAddress, port: spec.firstPort }, { timeoutMs: DIAL_TIMEOUT_MS });
    const echoed = new Promise<void>((resolve, reject) => {
      let got = 0;
      s.on('data', (d: Buffer) => { got += d.length; if (got >= ECHO_BYTES) resolve(); });
      s.once('error', reject);
    });
    s.write(Buffer.alloc(ECHO_BYTES, 0x5a));
    await echoed;
  } finally { await closePath(state, spec.pathId); }
}

async function handle(state: ChildState, c: Command): Promise<Reply> {
  switch (c.cmd) {
    case 'listenPlain': return { ok: true, port: await listenPlain(state, c.bytes) };
    case 'sendPlain': await sendPlain(c.port, c.bytes); return { ok: true };
    case 'startDriver': {
      state.driver ??= await createPortableDriver({ listen: { host: LOOPBACK, port: 0 } });
      return { ok: true, endpoint: state.driver.endpoint };
    }
    case 'openAndCount': await openAndCount(state, c.spec, c.streams, c.bytes); return { ok: true };
    case 'openAndSend': await openAndSend(state, c.spec, c.streams, c.bytes); return { ok: true };
    case 'openEcho': await openEcho(state, c.spec); return { ok: true };
    case 'roundTrip': await roundTrip(state, c.spec); return { ok: true };
    case 'closePath': await closePath(state, c.pathId); return { ok: true };
    case 'cpuMs': { const u = process.cpuUsage(); return { ok: true, cpuMs: (u.user + u.system) / 1000 }; }
    case 'waitReceived': {
      const ms = await (state.received ?? Promise.reject(new Error('nothing is being received')));
      state.received = null;
      return { ok: true, ms };
    }
  }
}

function childMain(): void {
  const state: ChildState = { driver: null, paths: new Map(), received: null };
  let queue = Promise.resolve();
  process.on('message', (c: Command) => {
    queue = queue.then(async () => {
      const reply = await handle(state, c).catch((err: unknown): Reply => ({ ok: false, error: err instanceof Error ? err.stack ?? err.message : String(err) }));
      process.send?.(reply);
    });
  });
  process.on('disconnect', () => { void state.driver?.close().finally(() => process.exit(0)); if (state.driver === null) process.exit(0); });
}

// ---------------------------------------------------------------------------------------------
// Parent side

class Child {
  private readonly proc: ChildProcess;
  private waiting: ((r: Reply) => void) | null = null;
  /** Commands are sent one at a time: a reply is the previous command's. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly name: string) {
    this.proc = fork(fileURLToPath(import.meta.url), ['--child', name], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.proc.on('message', (r: Reply) => { const w = this.waiting; this.waiting = null; w?.(r); });
  }

  ask(c: Command): Promise<Reply & { ok: true }> {
    const next = this.queue.then(() => new Promise<Reply & { ok: true }>((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`child ${this.name}: no answer to ${c.cmd} within ${COMMAND_TIMEOUT_MS} ms`)); }, COMMAND_TIMEOUT_MS);
      this.waiting = (r) => { clearTimeout(timer); if (r.ok) resolve(r); else reject(new Error(`child ${this.name}: ${c.cmd} failed: ${r.error}`)); };
      this.proc.send(c);
    }));
    this.queue = next.catch(() => undefined);
    return next;
  }

  stop(): Promise<void> {
    return stopChild(this.proc);
  }
}

/** What a part cost: the two host processes' cores, and what the rest of the machine used meanwhile. */
interface PartCpu { readonly sourceCores: number; readonly targetCores: number; readonly otherCores: number | null }

interface Options { readonly bytes: number; readonly ops: number; readonly rounds: number; readonly migrateMemoryBytes: number; readonly hot: string }

const THROUGHPUT_PARTS = ['plain', 'path', 'path2'] as const;
type ThroughputPart = (typeof THROUGHPUT_PARTS)[number];

function positiveInt(arg: string, value: string | undefined): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`bad option "${arg}": expected a positive integer`);
  return n;
}

function parseOptions(argv: readonly string[]): Options {
  let bytes = 1 * GiB, ops = 100, rounds = 3, migrateMemoryBytes = 1 * GiB, hot = '64MiB';
  for (const arg of argv) {
    const [key, value] = arg.split('=', 2);
    if (key === '--bytes' && value !== undefined) bytes = parseSizeBytes(value, '--bytes');
    else if (key === '--ops') ops = positiveInt(arg, value);
    else if (key === '--rounds') rounds = positiveInt(arg, value);
    else if (key === '--migrate-memory' && value !== undefined) migrateMemoryBytes = value === '0' ? 0 : parseSizeBytes(value, '--migrate-memory');
    else if (key === '--hot' && value !== undefined) hot = value;
    else throw new Error(`bad option "${arg}"; options: --bytes=SIZE (1GiB) --ops=N (100) --rounds=N (3) --migrate-memory=SIZE (1GiB; 0: none) --hot=SIZE (64MiB)`);
  }
  return { bytes, ops, rounds, migrateMemoryBytes, hot };
}

const mbps = (bytes: number, ms: number): number => round(bytes / 1e6 / (ms / 1000), 0);

async function throughput(a: Child, b: Child, bEndpoint: PathEndpoint, aEndpoint: PathEndpoint, streams: number, bytes: number): Promise<number> {
  const { source, target } = pathSpecPair({ sourceEndpoint: aEndpoint, targetEndpoint: bEndpoint, portCount: Math.max(1, streams) });
  await b.ask({ cmd: 'openAndCount', spec: target, streams, bytes });
  await a.ask({ cmd: 'openAndSend', spec: source, streams, bytes });
  const { ms } = await b.ask({ cmd: 'waitReceived' });
  return mbps(bytes * streams, ms ?? NaN);
}

async function setupRollback(a: Child, b: Child, aEndpoint: PathEndpoint, bEndpoint: PathEndpoint, ops: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < ops; i++) {
    const { source, target } = pathSpecPair({ sourceEndpoint: aEndpoint, targetEndpoint: bEndpoint });
    const t0 = performance.now();
    await b.ask({ cmd: 'openEcho', spec: target });
    await a.ask({ cmd: 'roundTrip', spec: source });
    await b.ask({ cmd: 'closePath', pathId: target.pathId });
    times.push(performance.now() - t0);
  }
  return times;
}

async function parentMain(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  const t0 = performance.now();
  const log = (s: string): void => { process.stderr.write(`${s}\n`); };
  const a = new Child('a');
  const b = new Child('b');
  try {
    const aEndpoint = (await a.ask({ cmd: 'startDriver' })).endpoint;
    const bEndpoint = (await b.ask({ cmd: 'startDriver' })).endpoint;
    if (aEndpoint === undefined || bEndpoint === undefined) throw new Error('a child did not say its endpoint');
    const cpu: Record<string, PartCpu> = {};
    const childCpuMs = async (): Promise<[number, number]> => [(await a.ask({ cmd: 'cpuMs' })).cpuMs ?? NaN, (await b.ask({ cmd: 'cpuMs' })).cpuMs ?? NaN];
    const timed = async <T>(name: string, part: () => Promise<T>): Promise<T> => {
      const [aBefore, bBefore] = await childCpuMs();
      const before = cpuSnapshot();
      const out = await part();
      const after = cpuSnapshot();
      const [aAfter, bAfter] = await childCpuMs();
      const wallMs = after.wallMs - before.wallMs;
      // The machine's other load: busy time less the children's and this process's own.
      const machine = interference(before, after);
      const children = (aAfter - aBefore + bAfter - bBefore) / wallMs;
      cpu[name] = {
        sourceCores: round((aAfter - aBefore) / wallMs, 2), targetCores: round((bAfter - bBefore) / wallMs, 2),
        otherCores: machine.otherCores === null ? null : round(Math.max(0, machine.otherCores - children), 2),
      };
      return out;
    };

    // The three throughput parts run interleaved, in an order that rotates every round, and each
    // figure is the median over rounds: a shared machine's drift hits all three alike.
    const parts: Record<ThroughputPart, () => Promise<number>> = {
      plain: async () => {
        const { port } = await b.ask({ cmd: 'listenPlain', bytes: opts.bytes });
        await a.ask({ cmd: 'sendPlain', port: port ?? 0, bytes: opts.bytes });
        return mbps(opts.bytes, (await b.ask({ cmd: 'waitReceived' })).ms ?? NaN);
      },
      path: () => throughput(a, b, bEndpoint, aEndpoint, 1, opts.bytes),
      path2: () => throughput(a, b, bEndpoint, aEndpoint, 2, opts.bytes),
    };
    const samples: Record<ThroughputPart, number[]> = { plain: [], path: [], path2: [] };
    for (let r = 0; r < opts.rounds; r++) {
      for (let k = 0; k < THROUGHPUT_PARTS.length; k++) {
        const part = THROUGHPUT_PARTS[(r + k) % THROUGHPUT_PARTS.length] ?? 'plain';
        const value = await timed(`${part}#${r + 1}`, parts[part]);
        samples[part].push(value);
        log(`round ${r + 1}: ${part} ${value} MB/s`);
      }
    }
    const plainMBps = median(samples.plain);
    const pathMBps = median(samples.path);
    const path2StreamsMBps = median(samples.path2);
    log(`path set-up + rollback, ${opts.ops} operations...`);
    const setup = summarize(await timed('setup', () => setupRollback(a, b, aEndpoint, bEndpoint, opts.ops)));
    const migration = opts.migrateMemoryBytes > 0 ? await migrateDirectAndViaPath(opts.migrateMemoryBytes, opts.hot, log) : null;
    const migrateDirectMs = migration !== null ? median(migration.directMs) : null;
    const migrateViaPathMs = migration !== null ? median(migration.viaPathMs) : null;

    log('');
    log(`part                          result (throughput: median of ${opts.rounds} rounds)`);
    log(`plain TCP, 1 stream           ${plainMBps} MB/s`);
    log(`portable path, 1 stream       ${pathMBps} MB/s (${round(pathMBps / plainMBps, 2)} x plain)`);
    log(`portable path, 2 streams      ${path2StreamsMBps} MB/s summed`);
    log(`set-up + rollback             p50 ${round(setup.p50, 2)} ms, p99 ${round(setup.p99, 2)} ms (n=${setup.n}, max ${round(setup.max, 2)} ms)`);
    if (migrateDirectMs !== null && migrateViaPathMs !== null) {
      log(`migration (median of ${migration?.directMs.length ?? 0}) direct ${migrateDirectMs} ms, via path ${migrateViaPathMs} ms (${round(migrateViaPathMs / migrateDirectMs, 2)} x direct)`);
    }
    log('CPU per part, in cores (the part\'s CPU time over its wall time; "other" is the rest of the machine):');
    for (const [name, c] of Object.entries(cpu)) log(`  ${name}: source ${c.sourceCores}, target ${c.targetCores}, other ${c.otherCores ?? '?'}`);

    const result = {
      plainMBps, pathMBps, path2StreamsMBps,
      setupRollbackP50Ms: round(setup.p50, 3), setupRollbackP99Ms: round(setup.p99, 3),
      migrateViaPathMs, migrateDirectMs,
      migrateViaPathVsDirect: migrateViaPathMs !== null && migrateDirectMs !== null ? round(migrateViaPathMs / migrateDirectMs, 3) : null,
      migration,
      setupRollback: setup,
      samplesMBps: samples,
      interference: cpu,
      config: { bytes: opts.bytes, ops: opts.ops, rounds: opts.rounds, echoBytes: ECHO_BYTES, writeBytes: WRITE_BYTES, migrateMemoryBytes: opts.migrateMemoryBytes, hot: opts.hot },
      machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version },
      benchMs: Math.round(performance.now() - t0),
    };
    await writeStdout(`${JSON.stringify(result)}\n`);
    return 0;
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
}

if (process.argv[2] === '--child') childMain();
else runBench('dataplane', parentMain);
