/**
 * `ferry up` (what `npm start` runs): a whole fleet on loopback — a center (embedded SQLite) and N
 * hosts mounting one shared datastore, each a child process, and a demo VM created through the
 * center. With `--sites N` (2..MAX_UP_SITES) the hosts are spread round-robin over N sites (site-a,
 * site-b, …; one host per site unless --hosts says more), each site with a datastore directory of its
 * own that only its hosts mount (site-a-ds, …), the demo VM with a small disk on the first site's —
 * to show prepare-migration and a migration --to-site (docs/design/orchestration.md). The sites'
 * virtual subnets are left to the center (the lowest free /24 each, at first use); the client config file is written so that later `ferry …` calls need no flags. Runs until
 * Ctrl-C or SIGTERM, then stops the hosts (they save their VMs), then the center, and removes what
 * it made. A child that dies on its own stops everything (exit 1); so does a failed start-up step.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, type WriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FerryError, errorMessage } from '../lib/errors.js';
import { MiB } from '../lib/units.js';
import { CenterClient } from '../api/center-client.js';
import { randomToken } from '../host/agent.js';
import { CENTER_CREDENTIAL_FILE } from '../host/center-link.js';
import { JOIN_TOKEN_ENV, parseListen } from './host-commands.js';
import { DEFAULT_CENTER_LISTEN } from './center-commands.js';
import { spawnHost, type LocalHost } from './local-hosts.js';
import { WRITTEN_BY_UP, clientConfigPath, readClientConfig, removeClientConfig, writeClientConfig } from './client-config.js';

/** At least one host; the default two show a migration. */
export const MIN_UP_HOSTS = 1;
export const DEFAULT_UP_HOSTS = 2;
/** Each host is a Node process of its own (~60 MiB before VMs): 16 is a laptop's worth, and as many names as HOST_NAMES has. */
export const MAX_UP_HOSTS = 16;
const HOST_NAMES = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta', 'iota', 'kappa', 'lambda', 'mu', 'nu', 'xi', 'omicron', 'pi'] as const;
/** The datastore every host mounts (one directory): VMs with disks on it migrate without copying them. */
const SHARED_DATASTORE = 'shared';
/** One site unless asked: every host in the center's default site, on the shared datastore. */
export const DEFAULT_UP_SITES = 1;
/** A handful of sites is what one machine shows well (each needs a host process at least). */
export const MAX_UP_SITES = 4;
const SITE_NAMES = ['site-a', 'site-b', 'site-c', 'site-d'] as const;
/** A site's own datastore: `<site>-ds`, a directory only its hosts mount. */
const siteDatastore = (site: string): string => `${site}-ds`;
/** The demo VM's disk with several sites: small, on the first site's datastore (what prepare-migration seeds elsewhere). */
const DEMO_DISK = { path: 'demo.vmdk', sizeBytes: 16 * MiB } as const;
/** The center's CA certificate, kept in the fleet's directory for `--ca-file`. */
const CA_FILE = 'center-ca.pem';

/** The demo VM: the multi-vCPU dirtier on a small random working set, rate-limited so the machine stays usable. */
const DEMO_VM = { name: 'demo', image: 'dirtier', memoryBytes: 64 * MiB, vcpus: 2, cmdline: 'hot=8MiB pattern=random rate=2000' } as const;

/** Opening the store and listening takes well under this on a loaded 2-core machine. */
const CENTER_READY_TIMEOUT_MS = 30_000;
/** Join and first heartbeat of every host, started together on a loaded machine. */
const HOSTS_CONNECTED_TIMEOUT_MS = 60_000;
/** Placing, creating and booting the demo VM. */
const DEMO_CREATE_TIMEOUT_MS = 60_000;
/** A host saves its running VMs at SIGTERM (a few MiB each here); one that takes longer is killed. */
const CHILD_STOP_TIMEOUT_MS = 30_000;
/** The host list is read again at least this often while waiting, whatever the event stream says. */
const CONNECT_CHECK_SLICE_MS = 1000;
/** What of a child's log is kept in memory to show when it dies. */
const LOG_TAIL_BYTES = 4096;

export interface UpOptions {
  /** Default: DEFAULT_UP_HOSTS with one site, else one per site. */
  readonly hosts?: number;
  /** Default DEFAULT_UP_SITES. */
  readonly sites?: number;
  /** Kept at exit, and a later `ferry up` on it resumes the fleet; default: a temporary directory removed at exit. */
  readonly dataDir?: string;
  /** The center's address; default 127.0.0.1:7100, or any free port if that one is taken. */
  readonly listen?: string;
  readonly demo: boolean;
}

/** A child process of the fleet: the center or a host. */
interface FleetChild {
  readonly name: string;
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly tail: () => string;
}

const progress = (text: string): void => { process.stderr.write(`ferry up: ${text}\n`); };

/** Keeps the last LOG_TAIL_BYTES of a child's output and appends it all to its log file. */
function logSink(file: string): { write: (text: string) => void; tail: () => string; close: () => Promise<void> } {
  const stream: WriteStream = createWriteStream(file, { flags: 'a' });
  stream.on('error', () => { /* a full disk loses log lines, never the fleet */ });
  let tail = '';
  return {
    write: (text) => { stream.write(text); tail = (tail + text).slice(-LOG_TAIL_BYTES); },
    tail: () => tail,
    close: () => new Promise((done) => { stream.end(done); }),
  };
}

/** True if nothing listens on host:port now (the center may still lose a race for it; then start-up fails clearly). */
function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((done) => {
    const server = createServer();
    server.once('error', () => { done(false); });
    server.listen({ host, port, exclusive: true }, () => { server.close(() => { done(true); }); });
  });
}

function exitedOf(child: ChildProcess): Promise<number | null> {
  return new Promise((done) => {
    if (child.exitCode !== null || child.signalCode !== null) { done(child.exitCode); return; }
    child.once('exit', (code) => { done(code); });
  });
}

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

async function spawnCenter(dataDir: string, listen: string, log: ReturnType<typeof logSink>): Promise<FleetChild & { url: string; tokenFile: string; fingerprint: string }> {
  const cli = fileURLToPath(new URL('./main.js', import.meta.url));
  const child = spawn(process.execPath, [cli, 'center', '--data-dir', dataDir, '--listen', listen], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const exited = exitedOf(child);
  let stdout = '';
  child.stderr?.on('data', (d: Buffer) => { log.write(d.toString()); });
  const fc = { name: 'center', child, exited, tail: log.tail };
  let timedOut = false;
  const ready = await new Promise<{ url: string; tokenFile: string; fingerprint: string } | null>((done) => {
    const timer = setTimeout(() => { timedOut = true; done(null); }, CENTER_READY_TIMEOUT_MS);
    const check = (): void => {
      const m = /ferry center ready url=(\S+) admin-token-file=(\S+)\n/.exec(stdout);
      // The CA's fingerprint, as the center itself printed it: what the hosts and this client check it by.
      const f = /ferry center ca-fingerprint=(\S+)/.exec(stdout);
      if (m !== null && f !== null) { clearTimeout(timer); done({ url: m[1] ?? '', tokenFile: m[2] ?? '', fingerprint: f[1] ?? '' }); }
    };
    // The token line is not logged: it holds the admin token, and the file has it.
    child.stdout?.on('data', (d: Buffer) => { stdout += d.toString(); check(); });
    void exited.then(() => { clearTimeout(timer); done(null); });
  });
  if (ready === null) {
    if (running(child)) { child.kill('SIGKILL'); await exited; }
    const how = timedOut ? `was not ready within ${CENTER_READY_TIMEOUT_MS} ms` : `exited before it was ready (exit code ${child.exitCode ?? `signal ${child.signalCode ?? '?'}`})`;
    throw new FerryError('CENTER_ERROR', `the center ${how}; its last log lines:\n${log.tail().trimEnd()}`);
  }
  return { ...fc, ...ready };
}

type HostRow = Awaited<ReturnType<CenterClient['listHosts']>>['hosts'][number];

/** Waits until every named host is connected with a heartbeat at or after `sinceMs` (a resumed fleet's old rows do not count). */
async function waitHostsConnected(client: CenterClient, names: readonly string[], sinceMs: number, abort: AbortSignal): Promise<HostRow[]> {
  const deadline = performance.now() + HOSTS_CONNECTED_TIMEOUT_MS;
  const announced = new Set<string>();
  for (;;) {
    const hosts = (await client.listHosts({ limit: MAX_UP_HOSTS * 4 })).hosts.filter((h) => names.includes(h.name));
    const live = hosts.filter((h) => h.state === 'connected' && (h.lastHeartbeatAtMs ?? 0) >= sinceMs);
    for (const h of live) if (!announced.has(h.name)) { announced.add(h.name); progress(`host ${h.name} joined (${h.url})`); }
    if (live.length === names.length) return names.map((n) => live.find((h) => h.name === n)).filter((h): h is HostRow => h !== undefined);
    if (performance.now() > deadline) {
      const missing = names.filter((n) => !announced.has(n));
      throw new FerryError('HOST_ERROR', `host(s) ${missing.join(', ')} did not connect to the center within ${HOSTS_CONNECTED_TIMEOUT_MS} ms`);
    }
    if (abort.aborted) throw new FerryError('CANCELLED', 'start-up interrupted');
    const slice = AbortSignal.any([abort, AbortSignal.timeout(CONNECT_CHECK_SLICE_MS)]);
    try {
      // An event about a host ends the slice early; the list is read again either way.
      for await (const e of client.events(null, slice)) if (e.subject.startsWith('host:')) break;
    } catch {
      // The slice ended (or the stream broke): read again at the top.
    }
  }
}

/** SIGTERM, then SIGKILL if it has not exited after CHILD_STOP_TIMEOUT_MS; false if it had to be killed. */
async function stopChild(c: FleetChild): Promise<boolean> {
  if (!running(c.child)) return true;
  c.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const inTime = await Promise.race([c.exited.then(() => true), new Promise<boolean>((done) => { timer = setTimeout(() => { done(false); }, CHILD_STOP_TIMEOUT_MS); })]);
  clearTimeout(timer);
  if (inTime) return true;
  progress(`${c.name} did not stop within ${CHILD_STOP_TIMEOUT_MS} ms: killed`);
  c.child.kill('SIGKILL');
  await c.exited;
  return false;
}

/** How to run `ferry` as printed: ./ferry in this checkout, its full path elsewhere, `ferry` if installed without it. */
function ferryCommand(): string {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const script = join(root, 'ferry');
  if (!existsSync(script)) return 'ferry';
  return resolve(process.cwd()) === resolve(root) ? './ferry' : script;
}

/** A directory `ferry up --data-dir` may use: new, empty, or one it used before. */
async function checkDataDir(dir: string): Promise<void> {
  let entries: string[];
  try { entries = await readdir(dir); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new FerryError('INVALID_ARGUMENT', `--data-dir ${dir}: ${errorMessage(err)}`);
  }
  if (entries.length > 0 && !entries.includes('center')) throw new FerryError('INVALID_ARGUMENT', `--data-dir ${dir} is not empty and not a ferry up data directory (no center/ in it)`);
}

/** Host i's site and datastore: round-robin over the sites; with one site, the default site and the shared datastore. */
interface HostPlace { readonly site: string | null; readonly datastore: string }
function placeOf(i: number, sites: number): HostPlace {
  if (sites <= 1) return { site: null, datastore: SHARED_DATASTORE };
  const site = SITE_NAMES[i % sites] ?? SITE_NAMES[0];
  return { site, datastore: siteDatastore(site) };
}

export async function runUp(given: UpOptions): Promise<number> {
  const sites = given.sites ?? DEFAULT_UP_SITES;
  if (!Number.isInteger(sites) || sites < 1 || sites > MAX_UP_SITES) throw new FerryError('INVALID_ARGUMENT', `--sites must be 1..${MAX_UP_SITES}`);
  const o = { ...given, hosts: given.hosts ?? (sites > 1 ? sites : DEFAULT_UP_HOSTS) };
  if (!Number.isInteger(o.hosts) || o.hosts < MIN_UP_HOSTS || o.hosts > MAX_UP_HOSTS) throw new FerryError('INVALID_ARGUMENT', `--hosts must be ${MIN_UP_HOSTS}..${MAX_UP_HOSTS}`);
  if (o.hosts < sites) throw new FerryError('INVALID_ARGUMENT', `--hosts ${o.hosts} is fewer than --sites ${sites}: every site needs a host`);
  const listenText = o.listen ?? DEFAULT_CENTER_LISTEN;
  const listen = parseListen(listenText);
  if (o.dataDir !== undefined) await checkDataDir(o.dataDir);

  const temporary = o.dataDir === undefined;
  const dir = o.dataDir !== undefined ? resolve(o.dataDir) : await mkdtemp(join(tmpdir(), 'ferry-up-'));
  const children: FleetChild[] = [];
  const sinks: ReturnType<typeof logSink>[] = [];
  const configPath = clientConfigPath();
  let wroteConfig = false;
  let centerUrl = '';

  // Stop requests and unexpected deaths, during start-up as while running.
  const stop = new AbortController();
  const ended: { why: { signal: string } | { died: FleetChild; code: number | null } | null } = { why: null };
  const onSignal = (signal: string): void => {
    if (ended.why === null) { ended.why = { signal }; progress(`${signal}: stopping the hosts (they save their VMs), then the center...`); } else progress(`${signal}: already stopping`);
    stop.abort();
  };
  const onSigint = (): void => { onSignal('SIGINT'); };
  const onSigterm = (): void => { onSignal('SIGTERM'); };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);
  // If this process dies anyway, never leave the fleet running behind it.
  const onExit = (): void => { for (const c of children) if (running(c.child)) c.child.kill('SIGKILL'); };
  process.on('exit', onExit);
  const watch = (c: FleetChild): void => {
    children.push(c);
    void c.exited.then((code) => {
      if (ended.why !== null) return;
      ended.why = { died: c, code };
      progress(`${c.name} exited unexpectedly (${code !== null ? `exit code ${code}` : `signal ${c.child.signalCode ?? '?'}`}); its last log lines:\n${c.tail().trimEnd()}`);
      stop.abort();
    });
  };
  /** A start-up step, abandoned when a stop is asked for or a child dies. */
  const step = <T>(p: Promise<T>): Promise<T> => Promise.race([p, new Promise<never>((_, reject) => {
    const fail = (): void => { reject(new FerryError('CANCELLED', 'start-up interrupted')); };
    if (stop.signal.aborted) fail(); else stop.signal.addEventListener('abort', fail, { once: true });
  })]);

  let exitCode = 0;
  try {
    await mkdir(join(dir, 'logs'), { recursive: true });
    const datastoreDirs = new Map<string, string>();
    for (let i = 0; i < Math.max(1, sites); i++) {
      const ds = placeOf(i, sites).datastore;
      datastoreDirs.set(ds, join(dir, ds));
      await mkdir(join(dir, ds), { recursive: true });
    }

    let centerListen = listenText;
    if (o.listen === undefined && listen.port !== 0 && !(await portFree(listen.host, listen.port))) {
      centerListen = `${listen.host}:0`;
      progress(`port ${listen.port} is taken: the center listens on a free port instead`);
    }
    const centerLog = logSink(join(dir, 'logs', 'center.log'));
    sinks.push(centerLog);
    // Not abandoned half-way (it times out on its own): a center that came up later would be left running.
    const center = await spawnCenter(join(dir, 'center'), centerListen, centerLog);
    watch(center);
    if (stop.signal.aborted) throw new FerryError('CANCELLED', 'start-up interrupted');
    centerUrl = center.url;
    const token = (await readFile(center.tokenFile, 'utf8')).trim();
    // The CA is taken only with the fingerprint the center printed on its own stdout (a pipe to this process).
    const ca = await step(CenterClient.readCa(center.url, center.fingerprint));
    const admin = new CenterClient(center.url, token, { caPem: ca.certificate });
    // For commands printed with flags (someone else's config file is left alone): the CA to trust.
    const caFile = join(dir, CA_FILE);
    await writeFile(caFile, ca.certificate, { mode: 0o644 });
    progress(`center started at ${center.url}`);

    const names: readonly string[] = HOST_NAMES.slice(0, o.hosts);
    const hostToken = randomToken();
    const sinceMs = Date.now();
    // Awaited whole, as the center is: each host start times out on its own.
    const started = await Promise.allSettled(names.map(async (name, i) => {
      const place = placeOf(i, sites);
      const hostDir = join(dir, 'hosts', name);
      await mkdir(hostDir, { recursive: true });
      // A host that joined before (a resumed fleet) has its credential; a new one joins with a one-time token, passed in the environment (a command line shows in ps).
      const joinEnv = existsSync(join(hostDir, CENTER_CREDENTIAL_FILE)) ? {} : { [JOIN_TOKEN_ENV]: (await admin.createJoinToken()).token };
      const log = logSink(join(dir, 'logs', `${name}.log`));
      sinks.push(log);
      const h: LocalHost = await spawnHost(name, hostDir, hostToken, {
        detached: true, onOutput: log.write, env: joinEnv,
        args: ['--center', center.url, '--center-ca-fingerprint', ca.fingerprint, '--datastore', `${place.datastore}=${datastoreDirs.get(place.datastore) ?? ''}`, ...(place.site !== null ? ['--site', place.site] : [])],
      });
      watch({ name: `host ${name}`, child: h.child, exited: h.exited, tail: log.tail });
      return h;
    }));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    if (stop.signal.aborted) throw new FerryError('CANCELLED', 'start-up interrupted');
    const hosts = await step(waitHostsConnected(admin, names, sinceMs, stop.signal));

    let demoWhere = '';
    // Maintenance is shown on the demo VM's host: entering it moves the VM away.
    let demoHost: string | null = null;
    if (o.demo) {
      const existing = await step(admin.vm(DEMO_VM.name).catch((err: unknown) => { if (err instanceof FerryError && err.code === 'NOT_FOUND') return null; throw err; }));
      if (existing !== null) {
        demoWhere = `${existing.state} on ${existing.host ?? '(no host)'}`;
        demoHost = existing.host;
        progress(`demo VM exists already (${demoWhere})`);
      } else {
        // With sites: on the first site's first host, with a small disk on that site's own datastore.
        const place = placeOf(0, sites);
        const withDisk = sites > 1 ? { host: names[0] ?? '', disk: { datastore: place.datastore, ...DEMO_DISK } } : {};
        const task = await step(admin.createVm({ ...DEMO_VM, ...withDisk, start: true }));
        const done = await step(admin.waitForTask(task.id, { timeoutMs: DEMO_CREATE_TIMEOUT_MS, signal: stop.signal }));
        if (done.state !== 'succeeded') throw FerryError.fromRemote(done.error?.code, `the demo VM was not created: ${done.error?.message ?? done.state}`, 'CENTER_ERROR');
        const vm = await step(admin.vm(DEMO_VM.name));
        demoWhere = `running on ${vm.host ?? '?'}`;
        demoHost = vm.host;
        progress(`demo VM running on ${vm.host ?? '?'}`);
      }
    }

    // The config file: written when there is none or `ferry up` wrote it; anyone else's is left alone.
    let configNote: string;
    let mine = false;
    try {
      const existing = await readClientConfig(configPath);
      mine = existing === null || existing.writtenBy === WRITTEN_BY_UP;
      configNote = mine ? '' : `${configPath} is someone else's (writtenBy ${existing?.writtenBy ?? 'unknown'}): left alone`;
    } catch (err) {
      configNote = `${configPath} left alone: ${errorMessage(err)}`;
    }
    if (mine) {
      await writeClientConfig({ center: center.url, token, caPem: ca.certificate, caFingerprint: ca.fingerprint, writtenBy: WRITTEN_BY_UP }, configPath);
      wroteConfig = true;
      configNote = `wrote ${configPath} (ferry commands need no --center${temporary ? '; removed at exit' : ''})`;
    }

    const ferry = ferryCommand();
    const flags = wroteConfig ? '' : ` --center ${center.url} --token-file ${center.tokenFile} --ca-file ${caFile}`;
    const first = demoHost !== null && names.includes(demoHost) ? demoHost : (names[0] ?? '');
    const tries = [
      `${ferry} vm list${flags}`,
      `${ferry} host list${flags}`,
      ...(o.demo ? [`${ferry} vm console demo --follow${flags}`] : []),
      ...(sites > 1 ? [`${ferry} site list${flags}`] : []),
      ...(o.demo && sites > 1 ? [`${ferry} vm prepare-migration demo --to-site ${placeOf(1, sites).site ?? ''} --wait${flags}`, `${ferry} vm migrate demo --to-site ${placeOf(1, sites).site ?? ''}${flags}`] : []),
      ...(o.demo && o.hosts > 1 && sites === 1 ? [`${ferry} vm migrate demo${flags}`] : []),
      // Maintenance needs another host the VM can go to: one in the same site.
      ...(o.hosts > sites ? [`${ferry} host maintenance enter ${first}${flags}`, `${ferry} host maintenance exit ${first}${flags}`] : []),
      `${ferry} task list${flags}`,
    ];
    const width = Math.max(...hosts.map((h) => h.name.length));
    process.stdout.write([
      '',
      `Ferry is up: a center and ${o.hosts} host${o.hosts > 1 ? 's' : ''} on loopback, ${sites > 1 ? `${sites} sites, each with its own datastore` : 'one shared datastore'} (data: ${dir}${temporary ? ', removed at exit' : ', kept'})`,
      '',
      `  center   ${center.url}`,
      `  web UI   ${center.url}/  (log in with the token below)`,
      `  token    ${token}`,
      `           (in ${center.tokenFile})`,
      ...hosts.map((h, i) => `  ${i === 0 ? 'hosts' : '     '}    ${h.name.padEnd(width)}  ${h.url}${sites > 1 ? `  (${placeOf(i, sites).site ?? ''}, ${placeOf(i, sites).datastore})` : ''}`),
      ...(o.demo ? [`  demo VM  ${DEMO_VM.name}: ${DEMO_VM.image}, ${DEMO_VM.vcpus} vCPUs, ${DEMO_VM.memoryBytes / MiB} MiB, "${DEMO_VM.cmdline}" — ${demoWhere}`] : []),
      `  config   ${configNote}`,
      `  logs     ${join(dir, 'logs')}`,
      '',
      'Try, in another terminal:',
      ...tries.map((t) => `  $ ${t}`),
      '',
      'Ctrl-C stops everything.',
      // One machine-readable line for scripts and tests.
      `ferry up ready url=${center.url} token-file=${center.tokenFile} config=${wroteConfig ? configPath : '-'} data-dir=${dir}`,
      '',
    ].join('\n'));

    await new Promise<void>((done) => { if (stop.signal.aborted) done(); else stop.signal.addEventListener('abort', () => { done(); }, { once: true }); });
  } catch (err) {
    // Interrupted start-up: the reason (a signal, a dead child) was said already.
    if (!(err instanceof FerryError && err.code === 'CANCELLED' && ended.why !== null)) {
      process.stderr.write(`ferry up: start-up failed: ${err instanceof FerryError ? `[${err.code}] ` : ''}${errorMessage(err)}\n`);
      exitCode = 1;
    }
    ended.why ??= { signal: 'start-up failure' };
  } finally {
    // The signal handlers stay until everything stopped: a second Ctrl-C must not kill this process
    // half-way and leave children running.
    if (ended.why !== null && 'died' in ended.why) exitCode = 1;
    // Hosts first (they save their VMs and may still report to the center), then the center.
    const hostsStopped = await Promise.all(children.filter((c) => c.name !== 'center').map(stopChild));
    const centerStopped = await Promise.all(children.filter((c) => c.name === 'center').map(stopChild));
    if ([...hostsStopped, ...centerStopped].includes(false)) exitCode = 1;
    process.off('exit', onExit);
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
    await Promise.all(sinks.map((s) => s.close()));
    if (wroteConfig && temporary) {
      // Only the file this run wrote: another `ferry up` or a `ferry login` may have replaced it since.
      const now = await readClientConfig(configPath).catch(() => null);
      if (now !== null && now.writtenBy === WRITTEN_BY_UP && now.center === centerUrl) {
        await removeClientConfig(configPath);
        progress(`removed ${configPath}`);
      }
    }
    if (temporary) await rm(dir, { recursive: true, force: true });
    progress(`stopped${temporary ? ', temporary data removed' : `; the fleet is kept in ${dir} (ferry up --data-dir ${dir} resumes it)`}`);
  }
  return exitCode;
}
