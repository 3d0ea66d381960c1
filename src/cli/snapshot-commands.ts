/**
 * Disk snapshot verbs of a VM on a host agent (`--host URL`, like the other `ferry vm` verbs):
 * `ferry vm snapshot`, `ferry vm revert [--to]`, `ferry vm consolidate` (with a progress bar) and
 * `ferry disk chain` — the one `ferry disk` command that asks a host, because a VM's chain is
 * named by the VM, and its top is open on that host.
 */
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { formatBytes } from '../lib/units.js';
import type { HostClient } from '../api/host-client.js';
import type { DiskChainView } from '../api/disk-v1.js';
import { type ClientOpts, client, print, withClientOptions } from './host-commands.js';

/** How often the consolidate progress bar asks the host for the operation's progress. */
const PROGRESS_POLL_MS = 200;

export function addSnapshotCommands(vm: Command, disk: Command): void {
  withClientOptions(vm.command('snapshot')
    .description('snapshot a VM\'s disk: the current top becomes a read-only base and a new delta takes the writes (a running VM pauses briefly)')
    .argument('<name>', 'VM name')
    .option('--json', 'print the result as JSON', false))
    .action(async (name: string, o: ClientOpts & { json: boolean }) => {
      const r = await (await client(o)).snapshotVm(name);
      if (o.json) { print(r); return; }
      process.stdout.write(`snapshot ${r.snapshot.path} (CID ${r.snapshot.cid}) of VM ${name}; writes now go to ${r.top.path} (CID ${r.top.cid})` +
        `${r.pauseMs !== null ? `; guest paused ${r.pauseMs.toFixed(1)} ms` : ''}\n`);
    });

  withClientOptions(vm.command('revert')
    .description('go back to a snapshot of a VM\'s disk (default: the newest); newer levels are removed, a running VM boots again on it')
    .argument('<name>', 'VM name')
    .option('--to <snapshot>', 'the snapshot: a chain level\'s path, as `ferry disk chain` shows it')
    .option('--json', 'print the result as JSON', false))
    .action(async (name: string, o: ClientOpts & { to?: string; json: boolean }) => {
      const r = await (await client(o)).revertVm(name, o.to);
      if (o.json) { print(r); return; }
      process.stdout.write(`VM ${name} reverted to ${r.revertedTo.path} (CID ${r.revertedTo.cid}); new top ${r.top.path}; removed ${r.discarded.join(', ')}` +
        `${r.restarted ? '; the VM was restarted on it' : ''}\n`);
    });

  withClientOptions(vm.command('consolidate')
    .description('merge the top delta of a VM\'s disk into its parent (live if the VM runs), with a progress bar')
    .argument('<name>', 'VM name')
    .option('--json', 'print the result as JSON', false))
    .action(async (name: string, o: ClientOpts & { json: boolean }) => {
      const c = await client(o);
      const stopBar = followProgress(c, name, o.json);
      try {
        const r = await c.consolidateVm(name);
        stopBar();
        if (o.json) { print(r); return; }
        process.stdout.write(`VM ${name}: ${r.merged} merged into ${r.top.path} (now CID ${r.top.cid}): ${formatBytes(r.copiedBytes)} in ${r.rounds} round(s), ` +
          `${(r.totalMs / 1000).toFixed(2)} s${r.pauseMs !== null ? `, guest paused ${r.pauseMs.toFixed(1)} ms` : ''}\n`);
      } finally {
        stopBar();
      }
    });

  withClientOptions(disk.command('chain')
    .description('a VM\'s disk chain on its host, top first: each level\'s path, CID, parent CID and allocated bytes')
    .argument('<vm>', 'VM name')
    .option('--json', 'print as JSON', false))
    .action(async (name: string, o: ClientOpts & { json: boolean }) => {
      const chain = await (await client(o)).diskChain(name);
      if (o.json) { print(chain); return; }
      process.stdout.write(formatChain(chain));
    });
}

export function formatChain(c: DiskChainView): string {
  const rows = c.chain.map((l, i) => `  ${i}  ${l.role.padEnd(8)}  ${l.path}  CID ${l.cid}  parent ${l.parentCid}  ${formatBytes(l.allocatedBytes)} allocated`);
  const op = c.operation === null ? [] : [`  (${c.operation.kind} running: ${c.operation.phase}, ${formatBytes(c.operation.doneBytes)} of ${formatBytes(c.operation.totalBytes)})`];
  return [`VM ${c.vm}: ${formatBytes(c.capacityBytes)} disk on datastore ${c.datastore}, ${c.chain.length} level(s)`, ...rows, ...op].join('\n') + '\n';
}

/** A progress bar on stderr (a terminal only) fed by polling the chain's operation; returns its stop. */
function followProgress(c: HostClient, name: string, quiet: boolean): () => void {
  if (quiet || process.stderr.isTTY !== true) return () => undefined;
  const bar = new cliProgress.SingleBar({
    format: 'consolidate [{bar}] {percentage}% | {done} of {total_size} | {phase}', stream: process.stderr, hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  bar.start(1, 0, { done: '0 B', total_size: '?', phase: 'starting' });
  let stopped = false;
  const timer = setInterval(() => {
    void c.diskChain(name).then((chain) => {
      const op = chain.operation;
      if (stopped || op === null) return;
      bar.setTotal(Math.max(1, op.totalBytes));
      bar.update(op.doneBytes, { done: formatBytes(op.doneBytes), total_size: formatBytes(op.totalBytes), phase: op.phase });
    }, () => undefined);
  }, PROGRESS_POLL_MS);
  return () => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    bar.stop();
  };
}
