/**
 * In-process centers for tests: a real Center on 127.0.0.1 port 0 (real sockets, HTTPS with the
 * center's own CA, a real store: SQLite in a fresh data directory, or a PostgreSQL URL), short
 * heartbeat and sweep intervals, the admin's CenterClient (trusting the CA); hosts joined the way
 * ferry host joins (its own key and CSR); and waiting on the center's own event stream instead of sleeping.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Center, type CenterOptions } from '../../src/center/center.js';
import { CenterClient } from '../../src/api/center-client.js';
import type { CenterEvent, JoinResult } from '../../src/api/center-v1.js';
import type { TlsClientOptions } from '../../src/api/tls.js';
import { createCsr, generateKeyPair } from '../../src/lib/x509.js';

/** Short enough that a disconnect lands in well under a second, long enough for a loaded 2-core machine. */
export const TEST_HEARTBEAT_MS = 150;
export const TEST_SWEEP_MS = 50;
export const TEST_MISSED_HEARTBEATS = 3;

export interface TestCenter {
  readonly center: Center;
  readonly url: string;
  readonly admin: CenterClient;
  readonly dataDir: string;
  /** The CA's certificate (PEM) and fingerprint. */
  readonly caPem: string;
  readonly caFingerprint: string;
  /** A client of this center trusting its CA, with `secret` as the bearer and an optional client certificate. */
  client(secret: string | null, tls?: Omit<TlsClientOptions, 'caPem'>): CenterClient;
  /** `ferry host` arguments that join this center with `joinToken` (or, without, link with the stored credential). */
  hostArgs(joinToken?: string): string[];
  close(): Promise<void>;
}

/** A host joined in-process: its credential, its key and certificate, and its client presenting them. */
export interface JoinedTestHost {
  readonly name: string;
  readonly joined: JoinResult;
  readonly keyPem: string;
  readonly client: CenterClient;
}

/** Join as `name` with a fresh key and a CSR for `csrName` (default: `name`), as ferry host does. */
export async function joinTestHost(tc: TestCenter, name: string, o: { url?: string; csrName?: string; joinToken?: string } = {}): Promise<JoinedTestHost> {
  const joinToken = o.joinToken ?? (await tc.admin.createJoinToken()).token;
  const key = await generateKeyPair();
  const csr = await createCsr(o.csrName ?? name, key);
  const anon = tc.client(null);
  const joined = await anon.join({ joinToken, name, url: o.url ?? 'http://127.0.0.1:1', csr });
  return { name, joined, keyPem: key.keyPem, client: tc.client(joined.credential, { certPem: joined.certificate, keyPem: key.keyPem }) };
}

export async function startTestCenter(opts: Partial<Omit<CenterOptions, 'listenHost'>> = {}): Promise<TestCenter> {
  const owned = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? await mkdtemp(join(tmpdir(), 'ferry-center-'));
  const center = await Center.start({
    heartbeatIntervalMs: TEST_HEARTBEAT_MS, sweepIntervalMs: TEST_SWEEP_MS, missedHeartbeats: TEST_MISSED_HEARTBEATS, eventPollMs: 100, log: () => {},
    ...opts, dataDir, listenHost: '127.0.0.1', listenPort: opts.listenPort ?? 0,
  });
  const caPem = center.ca.certPem;
  const client = (secret: string | null, tls: Omit<TlsClientOptions, 'caPem'> = {}): CenterClient => new CenterClient(center.url, secret, { caPem, ...tls });
  return {
    center, url: center.url, admin: client(center.adminToken), dataDir, caPem, caFingerprint: center.ca.fingerprint, client,
    hostArgs: (joinToken) => ['--center', center.url, ...(joinToken !== undefined ? ['--join-token', joinToken] : []), '--center-ca-fingerprint', center.ca.fingerprint],
    close: async () => { try { await center.close(); } finally { if (owned) await rm(dataDir, { recursive: true, force: true }); } },
  };
}

/** Follows the center's events after `afterId` until one matches; fails after `timeoutMs`. */
export async function waitForEvent(client: CenterClient, afterId: number, match: (e: CenterEvent) => boolean, timeoutMs = 15_000): Promise<CenterEvent> {
  const ac = new AbortController();
  const timer = setTimeout(() => { ac.abort(); }, timeoutMs);
  try {
    for await (const e of client.events(afterId, ac.signal)) if (match(e)) return e;
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  throw new Error(`no matching center event after id ${afterId} within ${timeoutMs} ms`);
}

/** Every event after `afterId` up to and including `lastId`, read from the stream. */
export async function collectEvents(client: CenterClient, afterId: number, lastId: number, timeoutMs = 15_000): Promise<CenterEvent[]> {
  const seen: CenterEvent[] = [];
  if (lastId <= afterId) return seen;
  await waitForEvent(client, afterId, (e) => { seen.push(e); return e.id >= lastId; }, timeoutMs);
  return seen;
}
