/**
 * `ferry demo` (what `npm start` runs): two host agents as separate processes on loopback, a demo
 * VM (the multi-vCPU dirtier) on the first, live-migrated back and forth with each migration's
 * summary printed, until Ctrl-C — then everything shuts down cleanly and the temp data is removed.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { MiB } from '../lib/units.js';
import { randomToken } from '../host/agent.js';
import { summarize } from './host-commands.js';
import { spawnHost, stopHosts, type LocalHost } from './local-hosts.js';

/** Pause between two migrations of the demo VM. */
const DEMO_DWELL_MS = 2000;

export interface DemoOptions {
  readonly vcpus: number;
  readonly memoryBytes: number;
  readonly cmdline: string;
  /** Stop after this many migrations (default: until Ctrl-C). */
  readonly migrations?: number;
}

export async function runDemo(opts: DemoOptions): Promise<number> {
  const token = randomToken();
  const dirs = [await mkdtemp(join(tmpdir(), 'ferry-demo-a-')), await mkdtemp(join(tmpdir(), 'ferry-demo-b-'))];
  const hosts: LocalHost[] = [];
  let stopping = false;
  const onSigint = (): void => { stopping = true; process.stderr.write('\nferry demo: stopping (the current migration finishes or rolls back first)...\n'); };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  try {
    hosts.push(await spawnHost('alpha', dirs[0] ?? '', token, { echo: true }), await spawnHost('beta', dirs[1] ?? '', token, { echo: true }));
    const [a, b] = hosts as [LocalHost, LocalHost];
    const image = await readFile(fileURLToPath(new URL('../../guests/dirtier.wasm', import.meta.url)));
    await a.client.createVm({
      name: 'demo', imageBase64: image.toString('base64'), memoryBytes: opts.memoryBytes, vcpus: opts.vcpus, cmdline: opts.cmdline, start: true,
    });
    process.stderr.write(`ferry demo: hosts alpha (${a.url}) and beta (${b.url}); VM "demo" = dirtier, ${opts.vcpus} vCPUs, ${opts.memoryBytes / MiB} MiB, "${opts.cmdline}". Ctrl-C to stop.\n`);
    let from = a;
    let to = b;
    for (let n = 1; !stopping && (opts.migrations === undefined || n <= opts.migrations); n++) {
      await sleep(DEMO_DWELL_MS);
      if (stopping) break;
      const { migrationId } = await from.client.migrate('demo', { to: to.url });
      const record = await from.client.waitForMigration(migrationId);
      process.stdout.write(`#${n} ${from.name} -> ${to.name}: ${summarize(record).split('\n').slice(0, 2).join('\n')}\n`);
      if (record.outcome !== 'succeeded') {
        process.stderr.write(`ferry demo: migration failed; the VM stays on ${from.name}\n`);
        continue;
      }
      const check = await to.client.verifyVm('demo');
      process.stdout.write(`   guest self-check on ${to.name}: ${check.selfcheck === 0 ? 'intact' : `${check.selfcheck} violations`}\n`);
      [from, to] = [to, from];
    }
    return 0;
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
    await stopHosts(hosts, 'SIGTERM');
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
    process.stderr.write('ferry demo: hosts stopped, temporary data removed\n');
  }
}
