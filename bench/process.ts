/**
 * How a benchmark process runs and ends: every VM it started is stopped on every exit path (a
 * failed run must not leave vCPU threads spinning on a 2-core machine), and the one JSON line is
 * flushed to stdout before the process exits.
 */
import type { ChildProcess } from 'node:child_process';
import { errorMessage } from '../src/lib/errors.js';
import type { Vm } from '../src/vmm/vm.js';

/** VMs a benchmark created and has not stopped yet: add on create, delete after stop. */
export const liveVms = new Set<Vm>();

/** Writes to stdout and resolves once the text is handed to the OS (process.exit would cut it). */
export function writeStdout(text: string): Promise<void> {
  return new Promise((resolve) => { process.stdout.write(text, () => { resolve(); }); });
}

async function stopLiveVms(): Promise<void> {
  await Promise.allSettled([...liveVms].map((vm) => vm.stop()));
  liveVms.clear();
}

/** A forked child that is not gone this long after its IPC channel closed is killed. */
const CHILD_EXIT_GRACE_MS = 5_000;

/** Ends a forked child: closes its IPC channel (it exits on 'disconnect'), SIGKILL if it has not gone after CHILD_EXIT_GRACE_MS. */
export function stopChild(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    proc.once('exit', () => { resolve(); });
    proc.disconnect();
    setTimeout(() => { proc.kill('SIGKILL'); }, CHILD_EXIT_GRACE_MS).unref();
  });
}

/** Runs `main`, stops every live VM, and exits with main's code (1 and the stack on a throw). */
export function runBench(name: string, main: () => Promise<number>): void {
  main().then(
    async (code) => { await stopLiveVms(); process.exit(code); },
    async (err: unknown) => {
      process.stderr.write(`bench:${name} failed: ${err instanceof Error && err.stack !== undefined ? err.stack : errorMessage(err)}\n`);
      await stopLiveVms();
      process.exit(1);
    },
  );
}
