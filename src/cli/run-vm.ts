/**
 * One interactive VM session for `ferry vm run`, `ferry vm restore` and `ferry demo`: start the VM,
 * stream its console to stdout, show a live status line on stderr, and on Ctrl-C / SIGTERM /
 * `--for` / halt / crash pause it, print a one-line summary, optionally save a snapshot, and stop.
 */
import cliProgress from 'cli-progress';
import { FerryError } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { saveVm } from '../vmm/persist.js';
import type { Vm } from '../vmm/vm.js';
import { StatusSampler, compact } from './status.js';

/** Status line refresh period. */
const STATUS_INTERVAL_MS = 500;
/** When stderr is not a terminal, print a status line this often instead of redrawing one. */
const STATUS_LOG_INTERVAL_MS = 5000;

export interface SessionOptions {
  readonly forMs?: number;
  readonly savePath?: string;
  readonly status: boolean;
  readonly trackDirty: boolean;
  readonly quiet: boolean;
}

export interface SessionResult {
  readonly exitCode: number;
  readonly summary: string;
}

export async function runSession(vm: Vm, opts: SessionOptions): Promise<SessionResult> {
  const err = process.stderr;
  const tty = err.isTTY;
  let statusShown = false;
  const clearStatus = (): void => {
    if (statusShown && tty) { err.write('\r\x1b[2K'); statusShown = false; }
  };
  vm.on('console', (text) => {
    if (opts.quiet) return;
    clearStatus();
    process.stdout.write(text);
  });

  let stopReason = '';
  let wake: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => { wake = resolve; });
  const finish = (reason: string): void => { if (stopReason === '') { stopReason = reason; wake(); } };
  const onSigint = (): void => { finish('interrupted'); };
  const onSigterm = (): void => { finish('terminated'); };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);
  vm.on('state', (s) => { if (s === 'halted') finish('halted'); else if (s === 'crashed') finish('crashed'); });

  const timers: NodeJS.Timeout[] = [];
  const startedAt = performance.now();
  try {
    await vm.start();
    if (opts.forMs !== undefined) timers.push(setTimeout(() => { finish(`ran for ${(opts.forMs ?? 0) / 1000} s`); }, opts.forMs));
    if (opts.status) {
      const sampler = new StatusSampler(vm, opts.trackDirty);
      await sampler.begin();
      let lastLog = 0;
      let busy = false;
      timers.push(setInterval(() => {
        if (busy || vm.state !== 'running') return;
        busy = true;
        void sampler.sample().then((s) => {
          const line = sampler.format(s);
          if (tty) { err.write(`\r\x1b[2K${line}`); statusShown = true; }
          else if (performance.now() - lastLog >= STATUS_LOG_INTERVAL_MS) { err.write(`${line}\n`); lastLog = performance.now(); }
        }).catch(() => undefined).finally(() => { busy = false; });
      }, STATUS_INTERVAL_MS));
    }
    await finished;
  } catch (e) {
    if (!(e instanceof FerryError) || vm.state !== 'crashed') throw e;
  } finally {
    for (const t of timers) clearTimeout(t);
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
    clearStatus();
  }

  const ranMs = performance.now() - startedAt;
  let exitCode = 0;
  let summary: string;
  if (vm.state === 'crashed') {
    const c = vm.crash;
    summary = `vm ${vm.config.name} crashed after ${(ranMs / 1000).toFixed(2)} s (${c?.reason ?? 'unknown'} on vCPU ${c?.vcpu ?? '?'}): ${c?.message ?? ''}`;
    exitCode = 3;
  } else {
    const pause = vm.state === 'running' ? await vm.pause() : { latencyMs: 0 };
    const stats = vm.vcpuStats();
    const steps = stats.reduce((a, s) => a + s.steps, 0);
    const units = stats.reduce((a, s) => a + s.units, 0);
    const secs = ranMs / 1000;
    summary = `vm ${vm.config.name} ${vm.state} (${stopReason}) after ${secs.toFixed(2)} s: ${vm.config.vcpus} vCPU(s), `
      + `${formatBytes(vm.config.memoryBytes)}, ${compact(steps)} steps (${compact(steps / secs)}/s), ${compact(units)} units (${compact(units / secs)}/s), `
      + `pause ${pause.latencyMs.toFixed(2)} ms`;
    if (opts.savePath !== undefined) {
      const bar = tty ? new cliProgress.SingleBar({ format: 'saving [{bar}] {percentage}% {value}/{total} MiB', stream: err }, cliProgress.Presets.shades_classic) : null;
      bar?.start(Math.ceil(vm.config.memoryBytes / 2 ** 20), 0);
      const res = await saveVm(vm, opts.savePath, (p) => bar?.update(Math.floor(p.doneBytes / 2 ** 20)));
      bar?.stop();
      summary += `; saved to ${opts.savePath} (${formatBytes(res.sizeBytes)}, ${res.zeroChunksSkipped} zero chunks skipped)`;
    }
  }
  await vm.stop();
  return { exitCode, summary };
}
