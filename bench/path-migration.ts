/**
 * bench:dataplane's migration part: bench:migrate's workload (a 1-vCPU dirtier that wrote every page
 * once and dirties a hot set without pause) migrated between two host processes on loopback, directly
 * and through a portable virtual path, alternately in one run: a → b direct, b → a via a path, a → b
 * direct, b → a via a path. The bench plays the center's part for the path: it pushes both ends
 * (PUT /v1/paths), asks the target for a ticket on its virtual address and for its datastores, and asks
 * the source to migrate with `isolated` — exactly what the migrate task does (src/center/tasks/migration-path.ts).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomToken } from '../src/host/agent.js';
import { HOST_NODE_ARGS_ENV, spawnHost, stopHosts, type LocalHost } from '../src/cli/local-hosts.js';
import type { MigrationRecord } from '../src/migration/record.js';
import { MiB } from '../src/lib/units.js';
import { pathSpecPair } from '../test/helpers/path-specs.js';

/** Booting a 1 GiB dirtier with fill=1 (every page written) takes seconds on a slow-faulting day. */
const VM_BOOT_TIMEOUT_MS = 120_000;
/** Migrations of each kind; they alternate, so load drifts hit both alike. */
const MIGRATIONS_PER_KIND = 2;
const VM_NAME = 'bench';

export interface PathMigrationResult {
  readonly directMs: readonly number[];
  readonly viaPathMs: readonly number[];
  readonly directGuestDowntimeMs: readonly (number | null)[];
  readonly viaPathGuestDowntimeMs: readonly (number | null)[];
}

async function direct(from: LocalHost, to: LocalHost): Promise<MigrationRecord> {
  const { migrationId } = await from.client.migrate(VM_NAME, { to: to.url });
  return from.client.waitForMigration(migrationId);
}

async function viaPath(from: LocalHost, to: LocalHost): Promise<MigrationRecord> {
  const [fromDriver, toDriver] = await Promise.all([from.client.listPaths(), to.client.listPaths()]);
  const sourceEndpoint = fromDriver.drivers.find((d) => d.kind === 'portable')?.endpoint;
  const targetEndpoint = toDriver.drivers.find((d) => d.kind === 'portable')?.endpoint;
  if (sourceEndpoint === undefined || targetEndpoint === undefined) throw new Error('a host offers no portable path driver');
  const specs = pathSpecPair({ sourceEndpoint, targetEndpoint });
  await to.client.putPath(specs.target);
  await from.client.putPath(specs.source);
  try {
    const ticket = await to.client.createTicket(undefined, { pathId: specs.target.pathId });
    const targetDatastores = await to.client.listDatastores();
    const { migrationId } = await from.client.migrate(VM_NAME, { isolated: { pathId: specs.source.pathId, target: to.name, ticket, targetDatastores } });
    return await from.client.waitForMigration(migrationId);
  } finally {
    await Promise.all([to.client.deletePath(specs.target.pathId), from.client.deletePath(specs.source.pathId)]);
  }
}

export async function migrateDirectAndViaPath(memoryBytes: number, hot: string, log: (s: string) => void): Promise<PathMigrationResult> {
  const token = randomToken();
  const dirs = [await mkdtemp(join(tmpdir(), 'ferry-bench-dp-a-')), await mkdtemp(join(tmpdir(), 'ferry-bench-dp-b-'))];
  const hosts: LocalHost[] = [];
  try {
    hosts.push(await spawnHost('a', dirs[0] ?? '', token), await spawnHost('b', dirs[1] ?? '', token));
    const [a, b] = hosts as [LocalHost, LocalHost];
    const image = await readFile(fileURLToPath(new URL('../guests/dirtier.wasm', import.meta.url)));
    const cmdline = `hot=${hot} pattern=seq fill=1 claim=all check=0 rate=0`;
    log(`migration part: dirtier, 1 vCPU, ${memoryBytes / MiB} MiB, "${cmdline}"; filling memory...`);
    await a.client.createVm({ name: VM_NAME, imageBase64: image.toString('base64'), memoryBytes, vcpus: 1, cmdline, start: true });
    await a.client.waitForConsole(VM_NAME, 'dirtier:', VM_BOOT_TIMEOUT_MS);
    await sleep(1000); // the hot set is being dirtied continuously now
    const out = { directMs: [] as number[], viaPathMs: [] as number[], directGuestDowntimeMs: [] as (number | null)[], viaPathGuestDowntimeMs: [] as (number | null)[] };
    for (let i = 0; i < MIGRATIONS_PER_KIND; i++) {
      const d = await direct(a, b);
      if (d.outcome !== 'succeeded') throw new Error(`direct migration ${d.outcome}: ${d.error?.message ?? ''}`);
      out.directMs.push(Math.round(d.totalMs));
      out.directGuestDowntimeMs.push(d.guestDowntimeMs);
      log(`  direct   a -> b: ${d.totalMs.toFixed(0)} ms, ${(d.transferredBytes / MiB).toFixed(0)} MiB in ${d.rounds.length} rounds, guest downtime ${d.guestDowntimeMs ?? '?'} ms`);
      const p = await viaPath(b, a);
      if (p.outcome !== 'succeeded') throw new Error(`migration via a path ${p.outcome}: ${p.error?.message ?? ''}`);
      out.viaPathMs.push(Math.round(p.totalMs));
      out.viaPathGuestDowntimeMs.push(p.guestDowntimeMs);
      log(`  via path b -> a: ${p.totalMs.toFixed(0)} ms, ${(p.transferredBytes / MiB).toFixed(0)} MiB in ${p.rounds.length} rounds, guest downtime ${p.guestDowntimeMs ?? '?'} ms`);
    }
    return out;
  } finally {
    // Profiled hosts (FERRY_HOST_NODE_ARGS, as bench:migrate) must exit cleanly to write their profiles.
    await stopHosts(hosts, process.env[HOST_NODE_ARGS_ENV] !== undefined ? 'SIGTERM' : 'SIGKILL');
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }
}
