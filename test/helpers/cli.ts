/** Runs the real `ferry` CLI as a child process (dist/src/cli/main.js) and captures its output. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const FERRY_BIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Upper bound for any one CLI run in tests: a hung child is killed and the test fails. */
const CLI_TIMEOUT_MS = 60_000;

export interface StartOptions {
  /** Added to this process's environment (e.g. FERRY_CONFIG, so no test reads a person's client config). */
  readonly env?: NodeJS.ProcessEnv;
  /** Killed after this long (default CLI_TIMEOUT_MS). */
  readonly timeoutMs?: number;
}

export function startFerry(args: readonly string[], opts: StartOptions = {}): { child: ChildProcess; done: Promise<CliResult>; stdout: () => string; stderr: () => string } {
  const child = spawn(process.execPath, [FERRY_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(opts.env ?? {}) } });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
  const timer = setTimeout(() => { child.kill('SIGKILL'); }, opts.timeoutMs ?? CLI_TIMEOUT_MS);
  const done = new Promise<CliResult>((resolve) => {
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
  });
  return { child, done, stdout: () => stdout, stderr: () => stderr };
}

export function runFerry(args: readonly string[], opts: StartOptions = {}): Promise<CliResult> {
  return startFerry(args, opts).done;
}

/** Resolves with the center's URL, token file and CA fingerprint once its ready line is out. */
export function centerReady(child: ChildProcess, stdout: () => string): Promise<{ url: string; tokenFile: string; fingerprint: string }> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      const m = /ferry center ready url=(\S+) admin-token-file=(\S+)\n/.exec(stdout());
      const f = /ferry center ca-fingerprint=(\S+)/.exec(stdout());
      if (m !== null && f !== null) { child.stdout?.off('data', check); resolve({ url: m[1] ?? '', tokenFile: m[2] ?? '', fingerprint: f[1] ?? '' }); }
    };
    child.stdout?.on('data', check);
    child.once('exit', () => { reject(new Error(`ferry center exited before it was ready:\n${stdout()}`)); });
    check();
  });
}
