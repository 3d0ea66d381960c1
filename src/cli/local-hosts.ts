/**
 * `ferry host` processes on this machine (127.0.0.1): started for the demo, the benchmarks and the
 * multi-host tests, each waited for until it prints its ready line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FerryError } from '../lib/errors.js';
import { HostClient } from '../api/host-client.js';

/**
 * Starting a host (load, warm-up, listen) takes about a second; on a 2-core machine at load 13–14 (CI
 * beside other work) a host printed nothing for over 20 s. Only a bound for a host that never comes up.
 */
export const HOST_READY_TIMEOUT_MS = 60_000;

export interface LocalHost {
  readonly name: string;
  readonly child: ChildProcess;
  readonly client: HostClient;
  readonly url: string;
  readonly port: number;
  /** Everything the host printed so far. */
  readonly log: () => string;
  /** Resolves with the exit code when the process ends. */
  readonly exited: Promise<number | null>;
  /** Resolves when the host has printed `text` (now or later); rejects if it exits first or after `timeoutMs`. */
  readonly waitForLog: (text: string, timeoutMs?: number) => Promise<void>;
}

/** How long waitForLog waits by default. */
const LOG_WAIT_TIMEOUT_MS = 30_000;

export interface SpawnOptions {
  /** Echo the host's stderr, prefixed with its name (its log then in the human-readable form, unless `args` choose). */
  readonly echo?: boolean;
  /** Control API port (0: any free port). */
  readonly port?: number;
  /** Extra environment (e.g. FERRY_FAILPOINTS). */
  readonly env?: Readonly<Record<string, string>>;
  /** Extra `ferry host` arguments (e.g. --datastore name=path). */
  readonly args?: readonly string[];
  /** Every chunk the host writes (stdout and stderr), as it comes (e.g. to a log file). */
  readonly onOutput?: (text: string) => void;
  /** In a process group of its own: a terminal's Ctrl-C reaches only the parent, which stops it in order. */
  readonly detached?: boolean;
}

/**
 * Node options for the host processes, from $FERRY_HOST_NODE_ARGS (space-separated), e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile both hosts of a benchmark: Node refuses --cpu-prof
 * in NODE_OPTIONS, and a benchmark's hosts are its children.
 */
export const HOST_NODE_ARGS_ENV = 'FERRY_HOST_NODE_ARGS';
/** Options a host may be started with this way: profiling and diagnostics only, never the program's own arguments. */
const ALLOWED_HOST_NODE_ARG = /^--(cpu-prof|cpu-prof-dir=[^\s]+|cpu-prof-interval=\d+|heap-prof|heap-prof-dir=[^\s]+|trace-gc|max-old-space-size=\d+)$/;

export function hostNodeArgs(env: NodeJS.ProcessEnv = process.env): string[] {
  const text = env[HOST_NODE_ARGS_ENV]?.trim() ?? '';
  if (text === '') return [];
  const args = text.split(/\s+/);
  const bad = args.find((a) => !ALLOWED_HOST_NODE_ARG.test(a));
  if (bad !== undefined) throw new FerryError('INVALID_ARGUMENT', `$${HOST_NODE_ARGS_ENV}: "${bad}" is not a profiling or diagnostics option (--cpu-prof, --cpu-prof-dir=…, --heap-prof, --trace-gc, …)`);
  return args;
}

/** Spawns `ferry host` on 127.0.0.1 and waits for its ready line. */
export async function spawnHost(name: string, dataDir: string, token: string, opts: SpawnOptions = {}): Promise<LocalHost> {
  const cli = fileURLToPath(new URL('./main.js', import.meta.url));
  const args = opts.args ?? [];
  const format = opts.echo === true && !args.includes('--log-format') ? ['--log-format', 'pretty'] : [];
  const child = spawn(process.execPath, [...hostNodeArgs(), cli, 'host', '--name', name, '--data-dir', dataDir, '--listen', `127.0.0.1:${opts.port ?? 0}`, ...format, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FERRY_TOKEN: token, ...(opts.env ?? {}) }, detached: opts.detached === true,
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); opts.onOutput?.(d.toString()); });
  child.stderr?.on('data', (d: Buffer) => {
    out += d.toString();
    opts.onOutput?.(d.toString());
    if (opts.echo === true) process.stderr.write(`  [${name}] ${d.toString().trimEnd().replace(/\n/g, `\n  [${name}] `)}\n`);
  });
  const exited = new Promise<number | null>((resolve) => { child.on('exit', (code) => { resolve(code); }); });
  const waitForLog = (text: string, timeoutMs = LOG_WAIT_TIMEOUT_MS): Promise<void> => new Promise((resolve, reject) => {
    if (out.includes(text)) { resolve(); return; }
    if (child.exitCode !== null || child.signalCode !== null) { reject(new FerryError('HOST_ERROR', `host ${name} exited before printing "${text}"`)); return; }
    const done = (err?: Error): void => {
      clearTimeout(timer);
      child.stderr?.off('data', onData);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
      if (err === undefined) resolve(); else reject(err);
    };
    // Listeners run after the collector above (registered first), so `out` already holds the chunk.
    const onData = (): void => { if (out.includes(text)) done(); };
    const onExit = (): void => { if (out.includes(text)) done(); else done(new FerryError('HOST_ERROR', `host ${name} exited before printing "${text}"`)); };
    const timer = setTimeout(() => { done(new FerryError('HOST_ERROR', `host ${name} did not print "${text}" within ${timeoutMs} ms`)); }, timeoutMs);
    child.stderr?.on('data', onData);
    child.stdout?.on('data', onData);
    child.on('exit', onExit);
  });
  // The ready line is "ferry host <name> ready url=<url> migration-port=<port>": waiting for the
  // field after the URL means the URL has arrived whole.
  await waitForLog(' migration-port=', HOST_READY_TIMEOUT_MS).catch(async () => {
    // Never left running unseen: the caller gets no handle to stop it with.
    if (child.exitCode === null && child.signalCode === null) { child.kill('SIGKILL'); await exited; }
    throw new FerryError('HOST_ERROR', `host ${name} did not start within ${HOST_READY_TIMEOUT_MS} ms:\n${out}`);
  });
  const url = /ready url=(\S+)/.exec(out)?.[1] ?? '';
  return { name, child, url, port: Number(new URL(url).port), client: new HostClient(url, token), log: () => out, exited, waitForLog };
}

/** Signals every host and resolves once all have exited. */
export async function stopHosts(hosts: readonly LocalHost[], signal: NodeJS.Signals): Promise<void> {
  const running = (h: LocalHost): boolean => h.child.exitCode === null && h.child.signalCode === null;
  for (const h of hosts) if (running(h)) h.child.kill(signal);
  await Promise.all(hosts.map((h) => h.exited));
}
