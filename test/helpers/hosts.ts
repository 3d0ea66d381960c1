/**
 * Real `ferry host` child processes on 127.0.0.1 for multi-host tests: each gets a fresh data dir,
 * port 0 (or a fixed port to restart on), the shared test token, and optional failpoints.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { vmRequest, type GuestName } from './guests.js';
import { spawnHost, stopHosts, type LocalHost } from '../../src/cli/local-hosts.js';
import type { MigrationOptions } from '../../src/migration/options.js';
import type { MigrationRecord } from '../../src/migration/record.js';

export const TEST_TOKEN = 'test-token-0123456789abcdef';

export interface TestHost extends LocalHost {
  readonly dataDir: string;
}

export async function startHost(name: string, opts: { dataDir?: string; port?: number; failpoints?: string; args?: readonly string[] } = {}): Promise<TestHost> {
  const dataDir = opts.dataDir ?? await mkdtemp(join(tmpdir(), `ferry-host-${name}-`));
  const host = await spawnHost(name, dataDir, TEST_TOKEN, {
    ...(opts.port !== undefined ? { port: opts.port } : {}),
    ...(opts.failpoints !== undefined ? { env: { FERRY_FAILPOINTS: opts.failpoints } } : {}),
    ...(opts.args !== undefined ? { args: opts.args } : {}),
  });
  return { ...host, dataDir };
}

export async function stopHost(h: TestHost, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  await stopHosts([h], signal);
}

export async function removeHostData(h: TestHost): Promise<void> {
  await rm(h.dataDir, { recursive: true, force: true });
}

/**
 * A test's end: every host it started killed and its data removed, then its own directory `base`.
 * Debugging a failure: FERRY_TEST_HOST_LOGS=1 prints what every host of the test printed first.
 */
export async function dropHosts(test: string, hosts: readonly TestHost[], base: string): Promise<void> {
  if (process.env.FERRY_TEST_HOST_LOGS === '1') for (const h of hosts) process.stderr.write(`--- ${test}: host ${h.name}\n${h.log()}\n`);
  for (const h of hosts) { await stopHost(h, 'SIGKILL'); await removeHostData(h); }
  await rm(base, { recursive: true, force: true });
}

export async function createVm(h: TestHost, name: string, guest: GuestName, opts: { memoryBytes: number; vcpus?: number; cmdline?: string; start?: boolean }): Promise<void> {
  await h.client.createVm(await vmRequest(name, guest, { memoryBytes: opts.memoryBytes, vcpus: opts.vcpus ?? 1, cmdline: opts.cmdline ?? '', start: opts.start ?? true }));
}

export async function startMigration(from: TestHost, vm: string, to: TestHost, options: MigrationOptions = {}): Promise<string> {
  return (await from.client.migrate(vm, { to: to.url, options })).migrationId;
}

export async function waitMigration(h: TestHost, id: string, timeoutMs = 60_000): Promise<MigrationRecord> {
  return h.client.waitForMigration(id, { timeoutMs });
}

export async function waitPhase(h: TestHost, id: string, phase: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await h.client.migration(id);
    if (s.phase === phase) return;
    if (s.record !== null) throw new Error(`migration ${id} ended (${s.record.outcome}: ${s.record.error?.code ?? ''} ${s.record.error?.message ?? ''}) before phase ${phase}`);
    if (Date.now() > deadline) throw new Error(`migration ${id} never reached phase ${phase} (at ${s.phase})`);
    await sleep(5);
  }
}

/** Guest steps every vCPU of a running VM must add before guestWorks returns: the guest has really run. */
export const GUEST_WORK_STEPS = 200;

/** Waits until every vCPU of `vm` on `h` has run GUEST_WORK_STEPS more steps (instead of sleeping and hoping). */
export async function guestWorks(h: TestHost, vm: string, steps = GUEST_WORK_STEPS): Promise<void> {
  const start = (await h.client.vm(vm)).vcpus.map((v) => v.steps);
  await until(async () => (await h.client.vm(vm)).vcpus.every((v, i) => v.steps - (start[i] ?? 0) >= steps), `VM ${vm} on ${h.name} to run ${steps} steps per vCPU`);
}

export async function until(cond: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
