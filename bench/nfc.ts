/**
 * npm run bench:nfc — the network file copy (docs/design/nfc.md) against `cp` of the same files, and
 * its hand-off gap, in one run.
 *
 * Files: `--bytes` (1 GiB) of random data in three files (1/2, 3/8 and 1/8 of it), and a sparse file of
 * `--sparse` (4 GiB) apparent size holding `--sparse-data` (64 MiB) of random data in 1 MiB pieces spread
 * over it. Everything lives in a temp dir (`--dir`, default the OS temp dir) that is removed at the end.
 * Nothing is dropped from the page cache: the sources are read once before the first round, so both
 * sides copy from a warm cache (the copy's own read-back of what it wrote is warm as well).
 *
 * Parts:
 *   local     `--rounds` rounds, each: `cp --sparse=always` of the three files into an empty
 *             directory (one cp process, timed around it), the same followed by `sync` of the copies
 *             (cp's bytes made durable, as the copy's are), and a local copy (CopyJob + local sink, timed
 *             from taking the source leases to the record); the order rotates per round, and the
 *             figures are medians (MB = 10^6 bytes of the files' size). Every copy's digests are checked
 *             against the digests computed here independently, and its bytes compared with the source.
 *   sparse    one local copy and one `cp --sparse=always` of the sparse file: time, bytes the copy
 *             moved, and blocks the two targets allocate.
 *   handoff   copies of the three files handed between two mounts (hosts `a` and `b`) of the shared
 *             source and target directories every `--segment` (100 MiB) of progress, as the center
 *             does it (stop, wait for the record, start the next host at epoch + 1 from the journal),
 *             until `--handoffs` (20) hand-offs; a copy that completes is verified and the next one
 *             starts. The gap is the time from the last chunk the stopping job's sink acknowledged to
 *             the first chunk the next job's sink acknowledged: no bytes move meanwhile. It holds the
 *             stop (in-flight chunks, the final sync, closing, releasing the leases) and the start (the
 *             source's leases, the copy's lock, the journal read and written under the new epoch, the
 *             first chunk read, hashed and written); it does not hold the center's two RPCs.
 *   remote    the remote form over loopback: a forked child process is the receiving host (a
 *             CopyReceiver over its own mount of the target directory, the real local sink behind it);
 *             this process copies the three files to it with the remote sink over plain TCP, and then
 *             through an isolated path (a portable virtual path pair, one driver in each process: TLS
 *             1.3 PSK tunnels), `--rounds` rounds each, alternately; medians, timed from taking the
 *             source leases to the record, every copy verified like the local ones. No encryption on the
 *             plain TCP part (the path's tunnel encrypts: it is the isolated form's cost).
 *
 * Flags: --bytes=1GiB --sparse=4GiB --sparse-data=64MiB --rounds=3 --handoffs=20 --segment=100MiB
 *   --streams=2 --dir=PATH --only=local,sparse,handoff,remote (comma-separated parts).
 * Progress and tables go to stderr; the last stdout line is one JSON object: localMBps, cpMBps,
 * cpSyncMBps, localVsCp, remoteMBps, remoteViaPathMBps, handoffGapP50Ms, handoffGapP99Ms, handoffs,
 * verified, and the details.
 */
import { execFile, fork, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createPortableDriver } from '../src/dataplane/path/portable-driver.js';
import type { PathDriver } from '../src/dataplane/path/driver.js';
import type { PathEndpoint, PathSpec } from '../src/dataplane/path/spec.js';
import { VirtualPath } from '../src/dataplane/path/virtual-path.js';
import { tcpTransport } from '../src/dataplane/tcp.js';
import type { Transport, TransportAddress } from '../src/dataplane/transport.js';
import { errorMessage } from '../src/lib/errors.js';
import { silentLogger } from '../src/lib/logger.js';
import { CopyReceiver, type CopyTicketInfo } from '../src/nfc/receiver.js';
import { openRemoteSink } from '../src/nfc/remote-sink.js';
import { pathSpecPair } from '../test/helpers/path-specs.js';
import { GiB, MiB, parseSizeBytes } from '../src/lib/units.js';
import { CopyJob } from '../src/nfc/copier.js';
import { openLocalSink } from '../src/nfc/local-sink.js';
import { NFC_CHUNK_BYTES, type CopyJobRecord, type CopyPlan } from '../src/nfc/plan.js';
import type { CopySink } from '../src/nfc/sink.js';
import { openCopySource } from '../src/nfc/source-files.js';
import type { LeaseOwner } from '../src/storage/lease.js';
import { LocalDatastore } from '../src/storage/local-datastore.js';
import { runBench, stopChild, writeStdout } from './process.js';
import { cpuSnapshot, fmtInterference, interference, median, round, summarize, type Interference } from './stats.js';

const run = promisify(execFile);

const HOST_A: LeaseOwner = { hostName: 'a', hostId: 'aaaaaaaaaaaaaaaa' };
const HOST_B: LeaseOwner = { hostName: 'b', hostId: 'bbbbbbbbbbbbbbbb' };
/** Shares of --bytes of the three random files: unequal, so that one file's verification overlaps the next one's copy. */
const FILE_SHARES = [4, 3, 1] as const;
/** Random data is written in pieces of this size (and hashed here in chunks of the copy's size). */
const WRITE_PIECE_BYTES = 16 * MiB;
/** Data pieces of the sparse file: each this big, spread evenly. */
const SPARSE_PIECE_BYTES = 1 * MiB;

interface Options {
  readonly bytes: number;
  readonly sparseBytes: number;
  readonly sparseDataBytes: number;
  readonly rounds: number;
  readonly handoffs: number;
  readonly segmentBytes: number;
  readonly streams: number;
  readonly dir: string;
  readonly only: ReadonlySet<string>;
}

function parseArgs(argv: readonly string[]): Options {
  const get = (name: string): string | undefined => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const int = (name: string, dflt: number): number => {
    const v = get(name);
    const n = v === undefined ? dflt : Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
    return n;
  };
  const size = (name: string, dflt: number): number => { const v = get(name); return v === undefined ? dflt : parseSizeBytes(v); };
  const only = get('only');
  return {
    bytes: size('bytes', 1 * GiB), sparseBytes: size('sparse', 4 * GiB), sparseDataBytes: size('sparse-data', 64 * MiB),
    rounds: int('rounds', 3), handoffs: int('handoffs', 20), segmentBytes: size('segment', 100 * MiB), streams: int('streams', 2),
    dir: get('dir') ?? os.tmpdir(), only: new Set(only === undefined ? ['local', 'sparse', 'handoff', 'remote'] : only.split(',')),
  };
}

const log = (line: string): void => { process.stderr.write(`${line}\n`); };
const LOOPBACK = '127.0.0.1';
/** The receiving child gets this long to answer a command (a ticket, a path): far more than it takes. */
const CHILD_COMMAND_TIMEOUT_MS = 60_000;
const mbps = (bytes: number, ms: number): number => round(bytes / ms / 1000, 1);

/** Writes `sizeBytes` of random data at `path` and answers its copy digest (SHA-256 over each chunk's SHA-256). */
async function writeRandom(path: string, sizeBytes: number): Promise<string> {
  const fh = await open(path, 'wx');
  const digest = createHash('sha256');
  try {
    for (let off = 0; off < sizeBytes; off += WRITE_PIECE_BYTES) {
      const piece = randomBytes(Math.min(WRITE_PIECE_BYTES, sizeBytes - off));
      for (let c = 0; c < piece.length; c += NFC_CHUNK_BYTES) digest.update(createHash('sha256').update(piece.subarray(c, c + NFC_CHUNK_BYTES)).digest());
      await fh.write(piece, 0, piece.length, off);
    }
  } finally {
    await fh.close();
  }
  return digest.digest('hex');
}

/** A sparse file of `sizeBytes` with `dataBytes` of random data in SPARSE_PIECE_BYTES pieces spread over it; its copy digest. */
async function writeSparse(path: string, sizeBytes: number, dataBytes: number): Promise<string> {
  const pieces = Math.max(1, Math.floor(dataBytes / SPARSE_PIECE_BYTES));
  const stride = Math.floor(sizeBytes / pieces / NFC_CHUNK_BYTES) * NFC_CHUNK_BYTES;
  const fh = await open(path, 'wx');
  const data = new Map<number, Buffer>();
  try {
    await fh.truncate(sizeBytes);
    for (let k = 0; k < pieces; k++) {
      const piece = randomBytes(SPARSE_PIECE_BYTES);
      data.set(k * stride, piece);
      await fh.write(piece, 0, piece.length, k * stride);
    }
  } finally {
    await fh.close();
  }
  const zeroSum = createHash('sha256').update(Buffer.alloc(NFC_CHUNK_BYTES)).digest();
  const digest = createHash('sha256');
  for (let off = 0; off < sizeBytes; off += NFC_CHUNK_BYTES) {
    const piece = data.get(off);
    digest.update(piece === undefined ? (sizeBytes - off >= NFC_CHUNK_BYTES ? zeroSum : createHash('sha256').update(Buffer.alloc(sizeBytes - off)).digest()) : createHash('sha256').update(piece).digest());
  }
  return digest.digest('hex');
}

async function planOf(ds: LocalDatastore, paths: readonly string[]): Promise<CopyPlan> {
  const files = [];
  for (const path of paths) {
    const st = await ds.stat(path);
    files.push({ path, sizeBytes: st.sizeBytes, modifiedMs: st.modifiedMs });
  }
  return { copyId: randomBytes(16).toString('hex'), files };
}

/** Empties a datastore directory (its identity file kept: the mounts stay valid). */
async function emptyDir(dir: string): Promise<void> {
  for (const name of await readdir(dir)) if (name !== '.ferry-datastore') await rm(join(dir, name), { recursive: true, force: true });
}

interface Env {
  readonly o: Options;
  readonly base: string;
  readonly src: string;
  readonly dst: string;
  readonly cpDir: string;
  readonly srcA: LocalDatastore;
  readonly dstA: LocalDatastore;
  readonly srcB: LocalDatastore;
  readonly dstB: LocalDatastore;
  readonly files: readonly string[];
  /** The copy digest of each file by path, computed when it was written. */
  readonly digests: ReadonlyMap<string, string>;
}

/** Verified: every file's digests are the expected ones and its bytes equal the source's (cmp). */
async function verifyCopy(env: Env, record: CopyJobRecord, dstDir: string): Promise<boolean> {
  if (record.outcome !== 'completed') { log(`  copy ${record.outcome}: ${record.error?.code ?? ''} ${record.error?.message ?? ''}`); return false; }
  let ok = true;
  for (const f of record.files) {
    const want = env.digests.get(f.path);
    if (f.sourceDigest !== want || f.targetDigest !== want) { log(`  ${f.path}: digests ${f.sourceDigest} / ${f.targetDigest}, expected ${want ?? '?'}`); ok = false; }
    if (!await sameFiles(join(env.src, f.path), join(dstDir, f.path))) { log(`  ${f.path}: bytes differ`); ok = false; }
  }
  return ok;
}

async function sameFiles(a: string, b: string): Promise<boolean> {
  try {
    await run('cmp', ['-s', a, b]);
    return true;
  } catch {
    return false;
  }
}

async function localCopy(env: Env, plan: CopyPlan, wrap?: (sink: CopySink) => CopySink, epoch = 1, hosts: 'a' | 'b' = 'a', job?: (j: CopyJob) => void): Promise<CopyJobRecord> {
  const [src, dst] = hosts === 'a' ? [env.srcA, env.dstA] : [env.srcB, env.dstB];
  const source = await openCopySource(src, plan);
  const j = new CopyJob({
    plan, epoch, host: hosts, source, streams: env.o.streams,
    openSink: async () => { const sink = await openLocalSink(dst, { plan, epoch }); return wrap === undefined ? sink : wrap(sink); },
  });
  job?.(j);
  return j.run();
}

interface LocalResult {
  readonly localMBps: number;
  /** CPU time per GiB copied: this process's (event loop, hashing threads, libuv's pool) and cp's (user + system). */
  readonly localCpuMsPerGiB: number;
  readonly cpCpuMsPerGiB: number;
  readonly cpMBps: number;
  readonly cpSyncMBps: number;
  readonly localVsCp: number;
  readonly localVsCpSync: number;
  readonly samples: { local: number[]; cp: number[]; cpSync: number[] };
  readonly interference: Interference;
  readonly verified: boolean;
}

async function localPart(env: Env): Promise<LocalResult> {
  const total = env.files.reduce((s, _, i) => s + fileBytes(env.o, i), 0);
  const samples = { local: [] as number[], cp: [] as number[], cpSync: [] as number[] };
  const cpuMs = { local: [] as number[], cp: [] as number[] };
  const ratios: number[] = [];
  const syncRatios: number[] = [];
  let verified = true;
  const before = cpuSnapshot();
  const kinds = ['cp', 'cpSync', 'local'] as const;
  for (let r = 0; r < env.o.rounds; r++) {
    const got: Partial<Record<(typeof kinds)[number], number>> = {};
    for (let k = 0; k < kinds.length; k++) {
      const kind = kinds[(k + r) % kinds.length] ?? 'local';
      if (kind === 'local') {
        const plan = await planOf(env.srcA, env.files);
        const t0 = performance.now();
        const cpu0 = process.cpuUsage();
        const record = await localCopy(env, plan);
        const ms = performance.now() - t0;
        const cpu = process.cpuUsage(cpu0);
        cpuMs.local.push((cpu.user + cpu.system) / 1000);
        verified = (await verifyCopy(env, record, env.dst)) && verified;
        got.local = ms;
        await emptyDir(env.dst);
      } else {
        await mkdir(env.cpDir, { recursive: true });
        const t0 = performance.now();
        // Under /usr/bin/time for cp's own CPU time (user and system seconds on stderr's last line).
        const { stderr } = await run('/usr/bin/time', ['-f', '%U %S', 'cp', '--sparse=always', ...env.files.map((f) => join(env.src, f)), env.cpDir]);
        if (kind === 'cpSync') await run('sync', env.files.map((f) => join(env.cpDir, f)));
        got[kind] = performance.now() - t0;
        const [user, system] = (stderr.trim().split('\n').at(-1) ?? '').split(' ').map(Number);
        if (kind === 'cp') cpuMs.cp.push(((user ?? NaN) + (system ?? NaN)) * 1000);
        await rm(env.cpDir, { recursive: true, force: true });
      }
    }
    const [l, c, cs] = [got.local ?? NaN, got.cp ?? NaN, got.cpSync ?? NaN];
    samples.local.push(mbps(total, l));
    samples.cp.push(mbps(total, c));
    samples.cpSync.push(mbps(total, cs));
    ratios.push(c / l);
    syncRatios.push(cs / l);
    log(`  round ${r + 1}: local ${mbps(total, l)} MB/s, cp ${mbps(total, c)} MB/s, cp+sync ${mbps(total, cs)} MB/s`);
  }
  return {
    localMBps: round(median(samples.local), 1), cpMBps: round(median(samples.cp), 1), cpSyncMBps: round(median(samples.cpSync), 1),
    localCpuMsPerGiB: round(median(cpuMs.local) / (total / GiB), 0), cpCpuMsPerGiB: round(median(cpuMs.cp) / (total / GiB), 0),
    localVsCp: round(median(ratios), 3), localVsCpSync: round(median(syncRatios), 3), samples,
    interference: interference(before, cpuSnapshot()), verified,
  };
}

interface SparseResult {
  readonly apparentBytes: number;
  readonly dataBytes: number;
  readonly localMs: number;
  readonly cpMs: number;
  readonly sentBytes: number;
  readonly localAllocatedBytes: number;
  readonly cpAllocatedBytes: number;
  readonly verified: boolean;
}

async function sparsePart(env: Env, path: string): Promise<SparseResult> {
  const plan = await planOf(env.srcA, [path]);
  const t0 = performance.now();
  const record = await localCopy(env, plan);
  const localMs = performance.now() - t0;
  const verified = await verifyCopy(env, record, env.dst);
  const localAllocatedBytes = (await stat(join(env.dst, path))).blocks * 512;
  await emptyDir(env.dst);
  await mkdir(env.cpDir, { recursive: true });
  const t1 = performance.now();
  await run('cp', ['--sparse=always', join(env.src, path), env.cpDir]);
  const cpMs = performance.now() - t1;
  const cpAllocatedBytes = (await stat(join(env.cpDir, path))).blocks * 512;
  await rm(env.cpDir, { recursive: true, force: true });
  return {
    apparentBytes: env.o.sparseBytes, dataBytes: env.o.sparseDataBytes, localMs: round(localMs, 1), cpMs: round(cpMs, 1),
    sentBytes: record.sentBytes, localAllocatedBytes, cpAllocatedBytes, verified,
  };
}

interface HandoffResult {
  readonly gapsMs: number[];
  readonly copies: number;
  readonly verified: boolean;
}

/** The hand-off part: copies handed between hosts a and b every --segment bytes until --handoffs gaps are measured. */
async function handoffPart(env: Env): Promise<HandoffResult> {
  const gapsMs: number[] = [];
  let verified = true;
  let copies = 0;
  while (gapsMs.length < env.o.handoffs) {
    const plan = await planOf(env.srcA, env.files);
    copies++;
    let epoch = 1;
    let lastAckAt: number | null = null;
    for (;;) {
      const hosts = epoch % 2 === 1 ? 'a' : 'b';
      let job: CopyJob | null = null;
      let moved = 0;
      let first = true;
      const record = await localCopy(env, plan, (sink) => ({
        get resumeAt() { return sink.resumeAt; },
        write: async (i, off, data, sha) => { await sink.write(i, off, data, sha); acked(data.length); },
        hole: async (i, off, len) => { await sink.hole(i, off, len); acked(len); },
        sync: () => sink.sync(), finishFile: (i) => sink.finishFile(i), complete: () => sink.complete(),
        close: () => sink.close(), discard: () => sink.discard(),
      }), epoch, hosts, (j) => { job = j; });
      // (acked is hoisted: it is called by the sink wrapper above while the job runs)
      function acked(bytes: number): void {
        const now = performance.now();
        if (first && lastAckAt !== null && gapsMs.length < env.o.handoffs) gapsMs.push(round(now - lastAckAt, 2));
        first = false;
        lastAckAt = now;
        moved += bytes;
        if (moved >= env.o.segmentBytes && gapsMs.length < env.o.handoffs) job?.stop();
      }
      if (record.outcome === 'completed') { verified = (await verifyCopy(env, record, env.dst)) && verified; break; }
      if (record.outcome !== 'stopped') { log(`  hand-off copy ${record.outcome}: ${record.error?.code ?? ''} ${record.error?.message ?? ''}`); verified = false; break; }
      epoch++;
    }
    log(`  copy ${copies}: ${epoch - 1} hand-offs (${gapsMs.length} gaps so far)`);
    await emptyDir(env.dst);
  }
  return { gapsMs, copies, verified };
}

// ---------------------------------------------------------------------------------------------
// The remote form: the receiving host is a child process (this file with --receiver <dstRoot>).

type ReceiverCommand =
  | { readonly cmd: 'ticket'; readonly plan: CopyPlan; readonly spec?: PathSpec }
  | { readonly cmd: 'closePath' }
  | { readonly cmd: 'cpuMs' };
type ReceiverReply =
  | { readonly ok: true; readonly port?: number; readonly endpoint?: PathEndpoint; readonly ticket?: CopyTicketInfo; readonly cpuMs?: number }
  | { readonly ok: false; readonly error: string };

async function receiverMain(dstRoot: string): Promise<void> {
  const dst = await LocalDatastore.mount('dst', dstRoot, { owner: HOST_B });
  const receiver = new CopyReceiver({ openSink: (_name, how) => openLocalSink(dst, how) }, tcpTransport, { host: LOOPBACK, port: 0 });
  await receiver.listen();
  const driver: PathDriver = await createPortableDriver({ listen: { host: LOOPBACK, port: 0 } });
  let path: VirtualPath | null = null;
  const send = (r: ReceiverReply): void => { process.send?.(r); };
  process.on('message', (c: ReceiverCommand) => {
    void (async (): Promise<ReceiverReply> => {
      if (c.cmd === 'cpuMs') { const u = process.cpuUsage(); return { ok: true, cpuMs: (u.user + u.system) / 1000 }; }
      if (c.cmd === 'closePath') { await path?.close(); path = null; return { ok: true }; }
      const req = { copyId: c.plan.copyId, epoch: 1, datastore: 'dst', plan: c.plan };
      if (c.spec === undefined) return { ok: true, ticket: await receiver.issueTicket(req) };
      path = new VirtualPath(c.spec, await driver.open(c.spec, silentLogger()));
      return { ok: true, ticket: await receiver.issueTicket(req, { transport: path, at: { host: c.spec.localAddress, port: c.spec.firstPort } }) };
    })().then(send, (err: unknown) => { send({ ok: false, error: errorMessage(err) }); });
  });
  process.on('disconnect', () => { void Promise.allSettled([path?.close(), driver.close()]).finally(() => process.exit(0)); });
  send({ ok: true, port: receiver.port, endpoint: driver.endpoint });
}

class ReceiverChild {
  private readonly proc: ChildProcess;
  private waiting: ((r: ReceiverReply) => void) | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  readonly ready: Promise<ReceiverReply & { ok: true }>;

  constructor(dstRoot: string) {
    this.proc = fork(fileURLToPath(import.meta.url), ['--receiver', dstRoot], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.ready = this.next('start');
    this.proc.on('message', (r: ReceiverReply) => { const w = this.waiting; this.waiting = null; w?.(r); });
  }

  private next(what: string): Promise<ReceiverReply & { ok: true }> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`the receiver did not answer ${what} within ${CHILD_COMMAND_TIMEOUT_MS} ms`)); }, CHILD_COMMAND_TIMEOUT_MS);
      this.waiting = (r) => { clearTimeout(timer); if (r.ok) resolve(r); else reject(new Error(`the receiver failed ${what}: ${r.error}`)); };
    });
  }

  ask(c: ReceiverCommand): Promise<ReceiverReply & { ok: true }> {
    const run = this.queue.then(async () => { await this.ready; const reply = this.next(c.cmd); this.proc.send(c); return reply; });
    this.queue = run.catch(() => undefined);
    return run;
  }

  stop(): Promise<void> {
    return stopChild(this.proc);
  }
}

interface RemoteResult {
  readonly remoteMBps: number;
  readonly remoteViaPathMBps: number;
  readonly samples: { tcp: number[]; path: number[] };
  readonly receiverCores: { tcp: number[]; path: number[] };
  readonly verified: boolean;
}

/** One remote copy of the three files to the child, over `transport` to `address` with `ticket`: its time, verified. */
async function remoteCopy(env: Env, plan: CopyPlan, transport: Transport, address: TransportAddress, ticket: CopyTicketInfo): Promise<{ ms: number; verified: boolean }> {
  const t0 = performance.now();
  const source = await openCopySource(env.srcA, plan);
  const job = new CopyJob({
    plan, epoch: 1, host: 'a', source, streams: env.o.streams,
    openSink: (signal) => openRemoteSink({ transport, address: { host: address.host, port: ticket.port }, ticket: ticket.ticket, plan, epoch: 1, streams: env.o.streams, signal }),
  });
  const record = await job.run();
  const ms = performance.now() - t0;
  const verified = await verifyCopy(env, record, env.dst);
  await emptyDir(env.dst);
  return { ms, verified };
}

async function remotePart(env: Env): Promise<RemoteResult> {
  const total = env.files.reduce((s, _, i) => s + fileBytes(env.o, i), 0);
  const child = new ReceiverChild(env.dst);
  const driver = await createPortableDriver({ listen: { host: LOOPBACK, port: 0 } });
  try {
    const ready = await child.ready;
    if (ready.port === undefined || ready.endpoint === undefined) throw new Error('the receiver did not say its port and path endpoint');
    const samples = { tcp: [] as number[], path: [] as number[] };
    const receiverCores = { tcp: [] as number[], path: [] as number[] };
    let verified = true;
    const kinds = ['tcp', 'path'] as const;
    for (let r = 0; r < env.o.rounds; r++) {
      for (let k = 0; k < kinds.length; k++) {
        const kind = kinds[(k + r) % kinds.length] ?? 'tcp';
        const plan = await planOf(env.srcA, env.files);
        const cpu0 = (await child.ask({ cmd: 'cpuMs' })).cpuMs ?? NaN;
        let out: { ms: number; verified: boolean };
        if (kind === 'tcp') {
          const { ticket } = await child.ask({ cmd: 'ticket', plan });
          if (ticket === undefined) throw new Error('no ticket');
          out = await remoteCopy(env, plan, tcpTransport, { host: LOOPBACK, port: ready.port }, ticket);
        } else {
          const specs = pathSpecPair({ sourceEndpoint: driver.endpoint, targetEndpoint: ready.endpoint, portCount: 1 });
          const { ticket } = await child.ask({ cmd: 'ticket', plan, spec: specs.target });
          if (ticket === undefined) throw new Error('no ticket');
          const path = new VirtualPath(specs.source, await driver.open(specs.source, silentLogger()));
          try {
            out = await remoteCopy(env, plan, path, { host: specs.source.peerAddress, port: ticket.port }, ticket);
          } finally {
            await path.close();
            await child.ask({ cmd: 'closePath' });
          }
        }
        const cpu1 = (await child.ask({ cmd: 'cpuMs' })).cpuMs ?? NaN;
        samples[kind].push(mbps(total, out.ms));
        receiverCores[kind].push(round((cpu1 - cpu0) / out.ms, 2));
        verified = out.verified && verified;
        log(`  round ${r + 1} ${kind}: ${mbps(total, out.ms)} MB/s (the receiver used ${round((cpu1 - cpu0) / out.ms, 2)} cores)`);
      }
    }
    return { remoteMBps: round(median(samples.tcp), 1), remoteViaPathMBps: round(median(samples.path), 1), samples, receiverCores, verified };
  } finally {
    await driver.close();
    await child.stop();
  }
}

function fileBytes(o: Options, i: number): number {
  const sum = FILE_SHARES.reduce((s, x) => s + x, 0);
  return Math.floor((o.bytes * (FILE_SHARES[i] ?? 0)) / sum / NFC_CHUNK_BYTES) * NFC_CHUNK_BYTES + (i === 0 ? 12_345 : 0);
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const base = await mkdtemp(join(o.dir, 'ferry-bench-nfc-'));
  try {
    const src = join(base, 'src');
    const dst = join(base, 'dst');
    await mkdir(src);
    await mkdir(dst);
    const files = FILE_SHARES.map((_, i) => `disk-${i}.raw`);
    const digests = new Map<string, string>();
    log(`writing ${files.length} files of random data (${(o.bytes / MiB).toFixed(0)} MiB)${o.only.has('sparse') ? ' and a sparse file' : ''} in ${base}`);
    for (const [i, f] of files.entries()) digests.set(f, await writeRandom(join(src, f), fileBytes(o, i)));
    const sparsePath = 'sparse.raw';
    if (o.only.has('sparse')) digests.set(sparsePath, await writeSparse(join(src, sparsePath), o.sparseBytes, o.sparseDataBytes));
    // Warm: both sides copy from the page cache.
    await run('sh', ['-c', `cat ${files.map((f) => `'${join(src, f)}'`).join(' ')} > /dev/null`]);
    const env: Env = {
      o, base, src, dst, cpDir: join(base, 'cp'), files, digests,
      srcA: await LocalDatastore.mount('src', src, { owner: HOST_A }), dstA: await LocalDatastore.mount('dst', dst, { owner: HOST_A }),
      srcB: await LocalDatastore.mount('src', src, { owner: HOST_B }), dstB: await LocalDatastore.mount('dst', dst, { owner: HOST_B }),
    };
    let verified = true;
    let local: LocalResult | null = null;
    if (o.only.has('local')) {
      log(`local: ${o.rounds} rounds of cp, cp + sync and the local copy (${o.streams} streams)`);
      local = await localPart(env);
      verified &&= local.verified;
      log(`local ${local.localMBps} MB/s, cp ${local.cpMBps} MB/s, cp+sync ${local.cpSyncMBps} MB/s: local/cp ${local.localVsCp}, local/(cp+sync) ${local.localVsCpSync}; CPU per GiB: local ${local.localCpuMsPerGiB} ms, cp ${local.cpCpuMsPerGiB} ms; ${fmtInterference(local.interference)}`);
    }
    let sparse: SparseResult | null = null;
    if (o.only.has('sparse')) {
      log(`sparse: ${(o.sparseBytes / MiB).toFixed(0)} MiB apparent, ${(o.sparseDataBytes / MiB).toFixed(0)} MiB of data`);
      sparse = await sparsePart(env, sparsePath);
      verified &&= sparse.verified;
      log(`sparse: local ${sparse.localMs} ms moving ${(sparse.sentBytes / MiB).toFixed(1)} MiB, allocating ${(sparse.localAllocatedBytes / MiB).toFixed(1)} MiB; cp ${sparse.cpMs} ms, allocating ${(sparse.cpAllocatedBytes / MiB).toFixed(1)} MiB`);
    }
    let remote: RemoteResult | null = null;
    if (o.only.has('remote')) {
      log(`remote: ${o.rounds} rounds of the remote form over TCP and through a portable virtual path (${o.streams} streams) to a receiving child process`);
      remote = await remotePart(env);
      verified &&= remote.verified;
      log(`remote ${remote.remoteMBps} MB/s over TCP, ${remote.remoteViaPathMBps} MB/s through the path`);
    }
    let handoff: HandoffResult | null = null;
    if (o.only.has('handoff')) {
      log(`handoff: ${o.handoffs} hand-offs between hosts a and b every ${(o.segmentBytes / MiB).toFixed(0)} MiB`);
      handoff = await handoffPart(env);
      verified &&= handoff.verified;
      const s = summarize(handoff.gapsMs);
      log(`handoff gap: p50 ${s.p50} ms, p99 ${s.p99} ms, max ${s.max} ms over ${s.n} hand-offs in ${handoff.copies} copies`);
    }
    const gaps = handoff === null ? null : summarize(handoff.gapsMs);
    const result = {
      localMBps: local?.localMBps ?? null, cpMBps: local?.cpMBps ?? null, cpSyncMBps: local?.cpSyncMBps ?? null,
      localVsCp: local?.localVsCp ?? null, localVsCpSync: local?.localVsCpSync ?? null,
      localCpuMsPerGiB: local?.localCpuMsPerGiB ?? null, cpCpuMsPerGiB: local?.cpCpuMsPerGiB ?? null,
      remoteMBps: remote?.remoteMBps ?? null, remoteViaPathMBps: remote?.remoteViaPathMBps ?? null,
      handoffGapP50Ms: gaps?.p50 ?? null, handoffGapP99Ms: gaps?.p99 ?? null, handoffs: handoff?.gapsMs.length ?? 0,
      verified,
      targets: { localVsCp: 0.9, remoteMBps: 1000, handoffGapP99Ms: 100 },
      details: {
        bytes: o.bytes, files: files.map((f, i) => ({ path: f, sizeBytes: fileBytes(o, i) })), streams: o.streams, rounds: o.rounds,
        samplesMBps: local?.samples ?? null, interference: local?.interference ?? null, sparse, handoffGapsMs: handoff?.gapsMs ?? null,
        handoffCopies: handoff?.copies ?? 0, remoteSamplesMBps: remote?.samples ?? null, remoteReceiverCores: remote?.receiverCores ?? null, cpus: os.cpus().length,
      },
    };
    await writeStdout(`${JSON.stringify(result)}\n`);
    return verified ? 0 : 1;
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--receiver') {
  const root = process.argv[3];
  if (root === undefined) throw new Error('usage: nfc.js --receiver <dstRoot>');
  void receiverMain(root);
} else {
  runBench('nfc', main);
}
