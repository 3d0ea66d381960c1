/**
 * The CLI's side of center tasks: follow one to its end with a progress bar (phase, progress, the
 * reason it waits), Ctrl-C cancels it (or, with `detachOnSigint`, just stops following), and print
 * what it ended as. Every center verb that starts a task ends here, so they all behave alike.
 */
import cliProgress from 'cli-progress';
import type { CenterClient } from '../api/center-client.js';
import type { CenterTaskView } from '../api/center-v1.js';

export interface FollowTaskOptions {
  /** No progress bar; the caller prints JSON. */
  readonly quiet: boolean;
  /** Ctrl-C stops following and leaves the task running (default: Ctrl-C cancels it). */
  readonly detachOnSigint?: boolean;
}

/** A one-line account of a finished (or running) task. */
export function describeTask(t: CenterTaskView): string {
  const detail = t.error !== null ? `[${t.error.code}] ${t.error.message}` : t.state === 'queued' ? (t.waitingReason ?? 'queued') : t.phase;
  return `task ${t.id} ${t.kind} ${t.target}: ${t.state.toUpperCase()}${detail !== '' ? ` — ${detail}` : ''}`;
}

export async function followTask(client: CenterClient, task: CenterTaskView, o: FollowTaskOptions): Promise<CenterTaskView> {
  const tty = process.stderr.isTTY && !o.quiet;
  const bar = tty ? new cliProgress.SingleBar({
    format: `task ${task.id} ${task.kind} [{bar}] {percentage}% {state} | {detail}`, stream: process.stderr, hideCursor: true,
  }, cliProgress.Presets.shades_classic) : null;
  bar?.start(100, 0, { state: task.state, detail: '' });
  const ac = new AbortController();
  const onSigint = (): void => {
    if (o.detachOnSigint === true) {
      process.stderr.write(`\nstopped following; task ${task.id} goes on (ferry task watch ${task.id})\n`);
      ac.abort();
      return;
    }
    process.stderr.write(`\ncancelling task ${task.id}...\n`);
    void client.cancelTask(task.id).catch(() => undefined);
  };
  process.on('SIGINT', onSigint);
  let last = task;
  try {
    last = await client.waitForTask(task.id, {
      signal: ac.signal,
      onChange: (t) => {
        last = t;
        bar?.update(Math.round(t.progress * 100), { state: t.state, detail: t.state === 'queued' ? (t.waitingReason ?? '') : t.phase });
      },
    });
    return last;
  } catch (err) {
    if (ac.signal.aborted) return last;
    throw err;
  } finally {
    bar?.stop();
    process.off('SIGINT', onSigint);
  }
}

/** Exit code of a finished task: 0 succeeded, 1 otherwise. */
export function taskExitCode(t: CenterTaskView): number {
  return t.state === 'succeeded' ? 0 : 1;
}
