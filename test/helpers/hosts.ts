/**
 * Real `ferry host` child processes on 127.0.0.1 for multi-host tests: each gets a fresh data dir,
 * port 0 (or a fixed port to restart on), the shared test token, and optional failpoints.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { FERRY_BIN } from './cli.js';
import { guestImagePath, type GuestName } from './guests.js';
import { HostClient } from '../../src/cli/host-client.js';

export const TEST_TOKEN = 'test-token-0123456789abcdef';
const READY_TIMEOUT_MS = 20_000;

export interface TestHost {
  readonly name: string;
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  readonly child: ChildProcess;
  readonly client: HostClient;
  readonly log: () => string;
  readonly exited: Promise<number | null>;
}

export async function startHost(name: string, opts: { dataDir?: string; port?: number; failpoints?: string } = {}): Promise<TestHost> {
  const dataDir = opts.dataDir ?? await mkdtemp(join(tmpdir(), `ferry-host-${name}-`));
  const child = spawn(process.execPath, [FERRY_BIN, 'host', '--name', name, '--data-dir', dataDir, '--listen', `127.0.0.1:${opts.port ?? 0}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, FERRY_TOKEN: TEST_TOKEN, ...(opts.failpoints !== undefined ? { FERRY_FAILPOINTS: opts.failpoints } : {}) },
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | null>((resolve) => { child.on('exit', (code) => { resolve(code); }); });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let match: RegExpExecArray | null = null;
  while ((match = /ready url=(\S+)/.exec(out)) === null) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`host ${name} did not start:\n${out}`);
    await sleep(20);
  }
  const url = match[1] ?? '';
  return { name, url, port: Number(new URL(url).port), dataDir, child, client: new HostClient(url, TEST_TOKEN), log: () => out, exited };
}

export async function stopHost(h: TestHost, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill(signal);
  await h.exited;
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

export async function verifyVm(h: TestHost, name: string): Promise<{ selfcheck: number | null; digest: string; state: string }> {
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
    if (s.record !== null) throw new Error(`migration ${id} ended (${s.record.outcome}) before phase ${phase}`);
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
