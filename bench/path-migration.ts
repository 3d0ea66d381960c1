/**
 * bench:dataplane's migration part: bench:migrate's workload (a 1-vCPU dirtier that wrote every page
 * once and dirties a hot set without pause) migrated through a real center between two host processes
 * on loopback — directly (`isolation: false`) and over the migration's own portable virtual path (the
 * default), alternately in one run: a → b direct, b → a via a path, a → b direct, b → a via a path.
 * Through the center both ways, so the path is set up, brokered (the guest's downtime comes back through
 * the center) and released exactly as in production; the figure is the engine's total time of each
 * migration (its record), the task's own overhead (placement, pushes) reported beside it.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HOST_NODE_ARGS_ENV, spawnHost, stopHosts, type LocalHost } from '../src/cli/local-hosts.js';
import type { CenterTaskView } from '../src/api/center-v1.js';
import { MiB } from '../src/lib/units.js';
import { startTestCenter, waitForEvent } from '../test/helpers/center.js';
import { TEST_TOKEN } from '../test/helpers/hosts.js';

/** Booting a 1 GiB dirtier with fill=1 (every page written) takes seconds on a slow-faulting day. */
const VM_BOOT_TIMEOUT_MS = 120_000;
const TASK_TIMEOUT_MS = 300_000;
/** Migrations of each kind; they alternate, so load drifts hit both alike. */
const MIGRATIONS_PER_KIND = 2;
const VM_NAME = 'bench';

export interface PathMigrationResult {
  readonly directMs: readonly number[];
  readonly viaPathMs: readonly number[];
  readonly directGuestDowntimeMs: readonly (number | null)[];
  readonly viaPathGuestDowntimeMs: readonly (number | null)[];
  /** Task time (queued to succeeded) minus the engine's total: what the center adds (pushes, ticket, polling). */
  readonly directTaskOverheadMs: readonly number[];
  readonly viaPathTaskOverheadMs: readonly number[];
}

interface MigrateSummary { readonly totalMs: number; readonly guestDowntimeMs: number | null; readonly isolation: { readonly mode: string } }

export async function migrateDirectAndViaPath(memoryBytes: number, hot: string, log: (s: string) => void): Promise<PathMigrationResult> {
  // Hosts busy booting a 1 GiB guest may be silent for seconds: 10 s before one counts as disconnected.
  const tc = await startTestCenter({ heartbeatIntervalMs: 500, missedHeartbeats: 20, taskLeaseMs: 10_000 });
  const hosts: LocalHost[] = [];
  try {
    for (const name of ['a', 'b']) {
      const { token } = await tc.admin.createJoinToken();
      const from = await tc.center.store.latestEventId();
      hosts.push(await spawnHost(name, join(tc.dataDir, `host-${name}`), TEST_TOKEN, { args: tc.hostArgs(token) }));
      await waitForEvent(tc.admin, from, (e) => e.kind === 'host.connected' && e.subject === `host:${name}`, 60_000);
    }
    const [a] = hosts as [LocalHost, LocalHost];
    const cmdline = `hot=${hot} pattern=seq fill=1 claim=all check=0 rate=0`;
    log(`migration part (through a center): dirtier, 1 vCPU, ${memoryBytes / MiB} MiB, "${cmdline}"; filling memory...`);
    const image = (await readFile(new URL('../guests/dirtier.wasm', import.meta.url))).toString('base64');
    await done(tc.admin.waitForTask((await tc.admin.createVm({ name: VM_NAME, host: 'a', imageBase64: image, memoryBytes, vcpus: 1, cmdline, start: true })).id, { timeoutMs: TASK_TIMEOUT_MS }));
    await a.client.waitForConsole(VM_NAME, 'dirtier:', VM_BOOT_TIMEOUT_MS);
    await sleep(1000); // the hot set is being dirtied continuously now
    const out = { directMs: [] as number[], viaPathMs: [] as number[], directGuestDowntimeMs: [] as (number | null)[], viaPathGuestDowntimeMs: [] as (number | null)[], directTaskOverheadMs: [] as number[], viaPathTaskOverheadMs: [] as number[] };
    for (let i = 0; i < MIGRATIONS_PER_KIND; i++) {
      for (const [to, isolated] of [['b', false], ['a', true]] as const) {
        const t0 = performance.now();
        const task = await done(tc.admin.waitForTask((await tc.admin.migrateVm(VM_NAME, { to, ...(isolated ? {} : { isolation: false }) })).id, { timeoutMs: TASK_TIMEOUT_MS }));
        const taskMs = performance.now() - t0;
        const r = task.result as MigrateSummary;
        if ((r.isolation.mode === 'path') !== isolated) throw new Error(`asked ${isolated ? 'a path' : 'a direct migration'}, got ${r.isolation.mode}`);
        (isolated ? out.viaPathMs : out.directMs).push(Math.round(r.totalMs));
        (isolated ? out.viaPathGuestDowntimeMs : out.directGuestDowntimeMs).push(r.guestDowntimeMs);
        (isolated ? out.viaPathTaskOverheadMs : out.directTaskOverheadMs).push(Math.round(taskMs - r.totalMs));
        log(`  ${isolated ? 'via path' : 'direct  '} -> ${to}: ${r.totalMs.toFixed(0)} ms (task ${taskMs.toFixed(0)} ms), guest downtime ${r.guestDowntimeMs?.toFixed(1) ?? '?'} ms`);
      }
    }
    return out;
  } finally {
    // Profiled hosts (FERRY_HOST_NODE_ARGS, as bench:migrate) must exit cleanly to write their profiles.
    await stopHosts(hosts, process.env[HOST_NODE_ARGS_ENV] !== undefined ? 'SIGTERM' : 'SIGKILL');
    await tc.close();
  }
}

async function done(task: Promise<CenterTaskView>): Promise<CenterTaskView> {
  const t = await task;
  if (t.state !== 'succeeded') throw new Error(`task ${t.id} ${t.kind}: ${t.state} ${JSON.stringify(t.error)}`);
  return t;
}
