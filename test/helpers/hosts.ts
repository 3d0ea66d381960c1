/**
 * Real `ferry host` child processes on 127.0.0.1 for multi-host tests: each gets a fresh data dir,
 * port 0 (or a fixed port to restart on), the shared test token, and optional failpoints.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestImagePath, type GuestName } from './guests.js';
import { spawnHost, stopHosts, type LocalHost } from '../../src/cli/local-hosts.js';

export const TEST_TOKEN = 'test-token-0123456789abcdef';

export interface TestHost extends LocalHost {
  readonly dataDir: string;
}

export async function startHost(name: string, opts: { dataDir?: string; port?: number; failpoints?: string } = {}): Promise<TestHost> {
  const dataDir = opts.dataDir ?? await mkdtemp(join(tmpdir(), `ferry-host-${name}-`));
  const host = await spawnHost(name, dataDir, TEST_TOKEN, {
    ...(opts.port !== undefined ? { port: opts.port } : {}),
    ...(opts.failpoints !== undefined ? { env: { FERRY_FAILPOINTS: opts.failpoints } } : {}),
  });
  return { ...host, dataDir };
}

export async function stopHost(h: TestHost, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  await stopHosts([h], signal);
}

export async function removeHostData(h: TestHost): Promise<void> {
  await rm(h.dataDir, { recursive: true, force: true });
}

export async function createVm(h: TestHost, name: string, guest: GuestName, opts: { memoryBytes: number; vcpus?: number; cmdline?: string; start?: boolean }): Promise<void> {
  const image = await readFile(guestImagePath(guest));
  await h.client.call('POST', '/v1/vms', {
    name, imageBase64: image.toString('base64'), memoryBytes: opts.memoryBytes, vcpus: opts.vcpus ?? 1,
    cmdline: opts.cmdline ?? '', start: opts.start ?? true,
  });
}

export interface VmView { name: string; state: string; owner: string | null }

export async function listVms(h: TestHost): Promise<VmView[]> {
  return (await h.client.call<{ vms: VmView[] }>('GET', '/v1/vms')).vms;
}

export async function verifyVm(h: TestHost, name: string): Promise<{ selfcheck: number | null; guestMaxClockGapMs: number | null; digest: string; state: string }> {
  return h.client.call('POST', `/v1/vms/${name}/verify`);
}

export interface MigrationView {
  state: string;
  phase: string;
  record: { outcome: string; error: { code: string; message: string } | null; rounds: unknown[]; engineDowntimeMs: number | null; guestDowntimeMs: number | null; maxThrottlePermille: number; verified: boolean } | null;
}

export async function startMigration(from: TestHost, vm: string, to: TestHost, options: Record<string, unknown> = {}): Promise<string> {
  const r = await from.client.call<{ migrationId: string }>('POST', `/v1/vms/${vm}/migrate`, { to: to.url, options });
  return r.migrationId;
}

export async function migrationStatus(h: TestHost, id: string): Promise<MigrationView> {
  return h.client.call<MigrationView>('GET', `/v1/migrations/${id}`);
}

export async function waitMigration(h: TestHost, id: string, timeoutMs = 60_000): Promise<NonNullable<MigrationView['record']>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await migrationStatus(h, id);
    if (s.record !== null) return s.record;
    if (Date.now() > deadline) throw new Error(`migration ${id} did not finish in ${timeoutMs} ms (phase ${s.phase})`);
    await sleep(25);
  }
}

export async function waitPhase(h: TestHost, id: string, phase: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await migrationStatus(h, id);
    if (s.phase === phase) return;
    if (s.record !== null) throw new Error(`migration ${id} ended (${s.record.outcome}: ${s.record.error?.code ?? ''} ${s.record.error?.message ?? ''}) before phase ${phase}`);
    if (Date.now() > deadline) throw new Error(`migration ${id} never reached phase ${phase} (at ${s.phase})`);
    await sleep(5);
  }
}

export async function until(cond: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
