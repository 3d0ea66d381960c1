/**
 * npm run bench:fleet — the center under a fleet: 1,000 simulated hosts heartbeating and 10,000 VMs in
 * the inventory, against a real `ferry center` child process (its own process: the driver's CPU is not
 * the center's), once on SQLite and once on PostgreSQL (a throwaway real cluster, test/helpers/postgres.ts).
 *
 * The simulated hosts are in-process clients of this driver speaking the real host protocol with the one
 * typed client (CenterClient): each gets a join token from the admin, joins through the join route and
 * heartbeats through the heartbeat route with its capacity, one datastore and 10 VMs. Per backend:
 *   1. registration: every host joins and sends its first heartbeat (10 new VMs each), then keeps
 *      heartbeating at the center's interval (5 s) as a real host does;
 *   2. fleet: the 1,000 hosts heartbeat at that interval (200 heartbeats/s), while one reader measures GET /api/v1/vms?limit=100, GET /api/v1/vms (default page: 1,000),
 *      GET /api/v1/hosts (default page) and GET /api/v1/vms/{name} back to back;
 *   3. saturation: heartbeats as fast as HEARTBEAT_CONCURRENCY in-flight requests get answered, with the
 *      same reader still measuring: the heartbeat throughput the center sustains.
 * Headline list figures are the worst of the three list kinds (p50 and p99 each) in the fleet phase.
 *
 * Flags: --hosts 1000 --vms-per-host 10 --fleet-s 20 --saturation-s 15 --only sqlite|postgres
 * Last stdout line: {"sqlite":{"hosts","vms","listP50Ms","listP99Ms","getP99Ms","heartbeatsPerSec",…},"postgres":{…}}
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CenterClient } from '../src/api/center-client.js';
import { createCsr, generateKeyPair } from '../src/lib/x509.js';
import type { HeartbeatRequest } from '../src/api/center-v1.js';
import { errorMessage } from '../src/lib/errors.js';
import { GiB, MiB } from '../src/lib/units.js';
import { startPostgres, type PostgresCluster } from '../test/helpers/postgres.js';
import { runBench, writeStdout } from './process.js';
import { cpuSnapshot, interference, round, summarize, type Summary } from './stats.js';

const FERRY_BIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
/** The fleet: 1,000 hosts, 10 VMs each. */
const DEFAULT_HOSTS = 1000;
const DEFAULT_VMS_PER_HOST = 10;
/** The center's default heartbeat interval (src/center/center.ts): the fleet phase paces hosts by it. */
const FLEET_HEARTBEAT_INTERVAL_MS = 5000;
/** Joins in flight during registration: enough to keep the center busy, few enough not to time out. */
const REGISTRATION_CONCURRENCY = 16;
/** Heartbeats in flight in the saturation phase: the center is the bottleneck, not the driver's requests. */
const HEARTBEAT_CONCURRENCY = 32;
/** Fleet phase: 20 s at 200 heartbeats/s = 4,000 heartbeats, every host four times. */
const DEFAULT_FLEET_S = 20;
const DEFAULT_SATURATION_S = 15;
/** A center that does not print its ready line by then has failed to start. */
const CENTER_START_TIMEOUT_MS = 30_000;
/** SIGTERM, then SIGKILL after this: the bench always ends what it started. */
const CENTER_STOP_TIMEOUT_MS = 10_000;
/** The whole run stops itself after this, whatever is hung (two backends of ~1 min each, PostgreSQL's start). */
const RUN_DEADLINE_MS = 5 * 60_000;
/** The goal for list calls. */
const LIST_P99_GOAL_MS = 100;
/** USER_HZ on Linux: /proc/<pid>/stat times are in these ticks. */
const CLOCK_TICKS_PER_S = 100;

type Backend = 'sqlite' | 'postgres';
type QueryKind = 'vmsPage100' | 'vmsDefaultPage' | 'hostsDefaultPage' | 'getVm';
const QUERY_KINDS: readonly QueryKind[] = ['vmsPage100', 'vmsDefaultPage', 'hostsDefaultPage', 'getVm'];
const LIST_KINDS: readonly QueryKind[] = ['vmsPage100', 'vmsDefaultPage', 'hostsDefaultPage'];

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}
const log = (s: string): void => { process.stderr.write(`${s}\n`); };

interface RunningCenter {
  readonly child: ChildProcess;
  readonly url: string;
  readonly adminToken: string;
  /** The center's CA certificate: every client of the bench trusts it. */
  readonly caPem: string;
  stderr(): string;
  stop(): Promise<void>;
}

/** Every center child this run started and has not stopped: killed on any exit path. */
const liveCenters = new Set<ChildProcess>();
process.on('exit', () => { for (const c of liveCenters) c.kill('SIGKILL'); });

async function startCenter(dataDir: string, db: string | undefined): Promise<RunningCenter> {
  const args = [FERRY_BIN, 'center', '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...(db !== undefined ? ['--db', db] : [])];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  liveCenters.add(child);
  let out = '';
  let err = '';
  child.stderr?.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-20_000); });
  const ready = await new Promise<{ url: string; tokenFile: string }>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`the center did not start within ${CENTER_START_TIMEOUT_MS} ms:\n${err}`)); }, CENTER_START_TIMEOUT_MS);
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /ferry center ready url=(\S+) admin-token-file=(\S+)/.exec(out);
      if (m?.[1] !== undefined && m[2] !== undefined) { clearTimeout(timer); resolve({ url: m[1], tokenFile: m[2] }); }
    });
    child.once('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`the center exited (${code ?? signal ?? '?'}) before it was ready:\n${err}`)); });
  });
  const adminToken = (await readFile(ready.tokenFile, 'utf8')).trim();
  // The bench runs the center it started: its CA is read from it directly (no fingerprint to compare).
  const caPem = (await CenterClient.readCa(ready.url)).certificate;
  return {
    child, url: ready.url, adminToken, caPem, stderr: () => err,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) { liveCenters.delete(child); return; }
      const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve(); }); });
      child.kill('SIGTERM');
      const timer = setTimeout(() => { child.kill('SIGKILL'); }, CENTER_STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
      liveCenters.delete(child);
    },
  };
}

/** CPU seconds (user + system) a process has used, from /proc (null elsewhere). */
function processCpuS(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    // Fields after the command name (which may hold spaces) start at ") ": utime and stime are the 12th and 13th.
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = text.slice(text.lastIndexOf(') ') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS_PER_S;
  } catch {
    return null;
  }
}

interface SimHost {
  readonly name: string;
  readonly client: CenterClient;
  readonly report: HeartbeatRequest;
}

function heartbeatOf(index: number, vmsPerHost: number): HeartbeatRequest {
  const dsId = index.toString(16).padStart(32, '0');
  return {
    url: `http://127.0.0.1:${10_000 + index}`,
    capacity: { memoryBytes: 64 * GiB, vcpus: 32 },
    datastores: [{ name: 'local', id: dsId, spaceLeftBytes: 500 * GiB, totalBytes: 1000 * GiB }],
    vms: Array.from({ length: vmsPerHost }, (_, v) => ({
      name: vmName(index, v), state: 'running' as const, memoryBytes: 512 * MiB, vcpus: 2,
      disk: { datastore: 'local', path: `vms/${vmName(index, v)}/disk.vmdk`, capacityBytes: 20 * GiB },
    })),
  };
}
const hostName = (i: number): string => `h${String(i).padStart(4, '0')}`;
const vmName = (host: number, v: number): string => `${hostName(host)}-vm${String(v).padStart(2, '0')}`;

/** Runs `work(i)` for i in [0, n) with at most `concurrency` in flight. */
async function bounded(n: number, concurrency: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, async () => {
    while (next < n) await work(next++);
  }));
}

/** The reader: the four queries back to back until `until`, each latency recorded (ms). */
async function measureQueries(admin: CenterClient, hosts: number, vmsPerHost: number, stop: AbortSignal): Promise<Record<QueryKind, number[]>> {
  const samples: Record<QueryKind, number[]> = { vmsPage100: [], vmsDefaultPage: [], hostsDefaultPage: [], getVm: [] };
  const paths: Record<QueryKind, () => string> = {
    // A page somewhere in the middle of the inventory (keyset: after a random VM name).
    vmsPage100: () => `/api/v1/vms?limit=100&after=${vmName(Math.floor(Math.random() * hosts), 0)}`,
    vmsDefaultPage: () => '/api/v1/vms',
    hostsDefaultPage: () => '/api/v1/hosts',
    getVm: () => `/api/v1/vms/${vmName(Math.floor(Math.random() * hosts), Math.floor(Math.random() * vmsPerHost))}`,
  };
  while (!stop.aborted) {
    for (const kind of QUERY_KINDS) {
      const t0 = performance.now();
      const res = await admin.raw('GET', paths[kind]());
      // The whole body, parsed: what a client has in hand.
      const body: unknown = await res.json();
      const ms = performance.now() - t0;
      if (!res.ok) throw new Error(`GET ${paths[kind]()} answered ${res.status}: ${JSON.stringify(body).slice(0, 300)}`);
      samples[kind].push(ms);
    }
  }
  return samples;
}

interface PhaseResult {
  readonly seconds: number;
  readonly heartbeats: number;
  readonly heartbeatsPerSec: number;
  readonly heartbeatMs: Summary;
  readonly queries: Record<QueryKind, Summary>;
  readonly centerCores: number | null;
  readonly otherCores: number | null;
}

/**
 * The fleet's own rhythm, as real hosts keep it: every registered host heartbeats once per interval,
 * its first beat at a random point of the first interval (so 1,000 hosts spread evenly, ~200/s).
 * Runs from a host's registration on, during registration of the others and the fleet phase; the
 * latencies go to whichever array `sink` holds at the time.
 */
class Pacer {
  readonly #stop = new AbortController();
  readonly #loops: Promise<void>[] = [];
  sink: number[] = [];
  failure: unknown = null;

  constructor() {
    // Every host's loop sleeps on this one signal: 1,000 listeners are the design, not a leak.
    setMaxListeners(0, this.#stop.signal);
  }

  add(h: SimHost): void {
    const signal = this.#stop.signal;
    const sleep = (ms: number): Promise<void> => new Promise((resolve) => {
      const done = (): void => { clearTimeout(t); signal.removeEventListener('abort', done); resolve(); };
      const t = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
    });
    this.#loops.push((async () => {
      await sleep(Math.random() * FLEET_HEARTBEAT_INTERVAL_MS);
      while (!signal.aborted) {
        const due = performance.now() + FLEET_HEARTBEAT_INTERVAL_MS;
        const s = performance.now();
        try {
          await beat(h);
        } catch (err) {
          this.failure ??= err;
          return;
        }
        this.sink.push(performance.now() - s);
        await sleep(due - performance.now());
      }
    })());
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await Promise.all(this.#loops);
    if (this.failure !== null) throw this.failure instanceof Error ? this.failure : new Error(errorMessage(this.failure));
  }
}

async function beat(h: SimHost): Promise<void> {
  const r = await h.client.heartbeat(h.name, h.report);
  // A host the sweeper marked disconnected would re-register its VMs: the run would not measure a steady fleet.
  if (r.state !== 'connected') throw new Error(`host ${h.name} is ${r.state} after its heartbeat`);
}

/**
 * `seconds` of load with the reader measuring meanwhile: the pacer's fleet rhythm (`paced`), or
 * heartbeats as fast as HEARTBEAT_CONCURRENCY in-flight requests are answered (`saturate`).
 */
async function loadPhase(center: RunningCenter, admin: CenterClient, sims: readonly SimHost[], vmsPerHost: number, seconds: number, mode: { pacer: Pacer } | 'saturate'): Promise<PhaseResult> {
  const stop = new AbortController();
  const latencies: number[] = [];
  const cpu0 = processCpuS(center.child.pid);
  const snap0 = cpuSnapshot();
  const t0 = performance.now();
  const endAt = t0 + seconds * 1000;
  const reader = measureQueries(admin, sims.length, vmsPerHost, stop.signal);
  if (mode === 'saturate') {
    let next = 0;
    await Promise.all(Array.from({ length: HEARTBEAT_CONCURRENCY }, async () => {
      while (performance.now() < endAt) {
        const s = performance.now();
        await beat(sims[next++ % sims.length] as SimHost);
        latencies.push(performance.now() - s);
      }
    }));
  } else {
    mode.pacer.sink = latencies;
    await new Promise((r) => setTimeout(r, seconds * 1000));
    mode.pacer.sink = [];
  }
  const elapsedS = (performance.now() - t0) / 1000;
  stop.abort();
  const samples = await reader;
  const cpu1 = processCpuS(center.child.pid);
  const noise = interference(snap0, cpuSnapshot());
  return {
    seconds: round(elapsedS, 2), heartbeats: latencies.length, heartbeatsPerSec: round(latencies.length / elapsedS, 1),
    heartbeatMs: summarize(latencies),
    queries: Object.fromEntries(QUERY_KINDS.map((k) => [k, summarize(samples[k])])) as Record<QueryKind, Summary>,
    centerCores: cpu0 === null || cpu1 === null ? null : round((cpu1 - cpu0) / elapsedS, 2),
    // "Other" here is everything but this driver: the center process and PostgreSQL included.
    otherCores: noise.otherCores,
  };
}

async function runBackend(backend: Backend, db: string | undefined, hosts: number, vmsPerHost: number, fleetS: number, saturationS: number) {
  const dataDir = await mkdtemp(join(tmpdir(), `ferry-bench-fleet-${backend}-`));
  let center: RunningCenter | undefined;
  try {
    center = await startCenter(dataDir, db);
    log(`[${backend}] center ${center.url} (pid ${center.child.pid ?? '?'})`);
    const admin = new CenterClient(center.url, center.adminToken, { caPem: center.caPem });
    const anonymous = new CenterClient(center.url, null, { caPem: center.caPem });
    const sims: SimHost[] = [];
    const pacer = new Pacer();
    const tReg = performance.now();
    await bounded(hosts, REGISTRATION_CONCURRENCY, async (i) => {
      const name = hostName(i);
      const { token } = await admin.createJoinToken();
      const report = heartbeatOf(i, vmsPerHost);
      // Each simulated host is a real one to the center: its own key, a CSR, and mutual TLS on every heartbeat.
      const key = await generateKeyPair();
      const joined = await anonymous.join({ joinToken: token, name, url: report.url, csr: await createCsr(name, key) });
      const sim = { name, client: new CenterClient(center?.url ?? '', joined.credential, { caPem: center?.caPem ?? '', certPem: joined.certificate, keyPem: key.keyPem }), report };
      await sim.client.heartbeat(name, report);
      sims[i] = sim;
      pacer.add(sim);
    }).catch(async (err: unknown) => { await pacer.stop().catch(() => undefined); throw err; });
    const registrationS = (performance.now() - tReg) / 1000;
    const listed = await admin.listVms({ limit: 1 });
    if (listed.vms.length !== 1) throw new Error('no VMs in the inventory after registration');
    log(`[${backend}] registration: ${hosts} hosts joined and reported ${hosts * vmsPerHost} VMs in ${registrationS.toFixed(1)} s (${(hosts / registrationS).toFixed(0)} hosts/s)`);

    let fleet: PhaseResult;
    try {
      fleet = await loadPhase(center, admin, sims, vmsPerHost, fleetS, { pacer });
    } finally {
      await pacer.stop();
    }
    log(`[${backend}] fleet (${fleet.heartbeatsPerSec} heartbeats/s offered at the ${FLEET_HEARTBEAT_INTERVAL_MS} ms interval): ${fmtPhase(fleet)}`);
    const saturation = await loadPhase(center, admin, sims, vmsPerHost, saturationS, 'saturate');
    log(`[${backend}] saturation (${HEARTBEAT_CONCURRENCY} in flight): ${saturation.heartbeatsPerSec} heartbeats/s; ${fmtPhase(saturation)}`);

    // Every VM is there and on its host: the run measured a complete inventory.
    let vms = 0;
    for (let after: string | undefined; ;) {
      const page = await admin.listVms({ limit: 1000, ...(after !== undefined ? { after } : {}) });
      vms += page.vms.length;
      if (page.next === null) break;
      after = page.next;
    }
    const hostsListed = (await admin.listHosts({ state: 'connected' })).hosts.length;
    const worst = (p: 'p50' | 'p99'): number => Math.max(...LIST_KINDS.map((k) => fleet.queries[k][p]));
    return {
      hosts: hostsListed, vms,
      listP50Ms: round(worst('p50'), 2), listP99Ms: round(worst('p99'), 2), getP99Ms: round(fleet.queries.getVm.p99, 2),
      heartbeatsPerSec: saturation.heartbeatsPerSec,
      listP99GoalMet: worst('p99') <= LIST_P99_GOAL_MS,
      registrationS: round(registrationS, 1), fleet, saturation,
    };
  } catch (err) {
    if (center !== undefined) log(`[${backend}] center stderr (tail):\n${center.stderr().slice(-4000)}`);
    throw err;
  } finally {
    await center?.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

function fmtPhase(p: PhaseResult): string {
  const q = (k: QueryKind): string => `${k} p50 ${p.queries[k].p50.toFixed(1)} / p99 ${p.queries[k].p99.toFixed(1)} ms (n=${p.queries[k].n})`;
  return `heartbeat p50 ${p.heartbeatMs.p50.toFixed(1)} / p99 ${p.heartbeatMs.p99.toFixed(1)} ms; ${QUERY_KINDS.map(q).join('; ')}; center ${p.centerCores ?? '?'} cores, non-driver ${p.otherCores ?? '?'} cores`;
}

async function main(): Promise<void> {
  const hosts = Number(arg('hosts', String(DEFAULT_HOSTS)));
  const vmsPerHost = Number(arg('vms-per-host', String(DEFAULT_VMS_PER_HOST)));
  const fleetS = Number(arg('fleet-s', String(DEFAULT_FLEET_S)));
  const saturationS = Number(arg('saturation-s', String(DEFAULT_SATURATION_S)));
  const only = arg('only', '');
  const deadline = setTimeout(() => { log(`bench:fleet: still running after ${RUN_DEADLINE_MS / 1000} s: giving up`); process.exit(1); }, RUN_DEADLINE_MS);
  deadline.unref();
  log(`bench:fleet: ${hosts} hosts × ${vmsPerHost} VMs; ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), node ${process.version}`);
  const result: Record<string, unknown> = {};
  if (only === '' || only === 'sqlite') result.sqlite = await runBackend('sqlite', undefined, hosts, vmsPerHost, fleetS, saturationS);
  if (only === '' || only === 'postgres') {
    let cluster: PostgresCluster | undefined;
    try {
      cluster = await startPostgres();
      result.postgres = await runBackend('postgres', await cluster.createDatabase(), hosts, vmsPerHost, fleetS, saturationS);
    } finally {
      await cluster?.stop();
    }
  }
  await writeStdout(`${JSON.stringify(result)}\n`);
}

runBench('fleet', async () => { await main(); return 0; });
