/**
 * The center's TLS (docs/design/center-tls.md) over real sockets: the CA and the certificates it
 * issues, mutual TLS on heartbeats (another host's certificate, none, another CA's, a revoked one after
 * a re-join: all refused), a client that does not trust the CA (TLS_UNTRUSTED), a CSR for another
 * name (refused, token kept), and `ferry login` by fingerprint with the client config it writes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CenterClient } from '../../src/api/center-client.js';
import type { HeartbeatRequest } from '../../src/api/center-v1.js';
import { GiB } from '../../src/lib/units.js';
import { createCsr, generateKeyPair } from '../../src/lib/x509.js';
import { joinTestHost, startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';
import { AGENT_TOKEN, startAgent } from '../helpers/agents.js';
import { HostClient } from '../../src/api/host-client.js';
import { vmRequest } from '../helpers/guests.js';
import { MiB } from '../../src/lib/units.js';
import { runFerry } from '../helpers/cli.js';

const report: HeartbeatRequest = { url: 'http://127.0.0.1:1', capacity: { memoryBytes: GiB, vcpus: 1 }, datastores: [], vms: [] };

async function refusal(p: Promise<unknown>): Promise<string> {
  try { await p; } catch (err) { return (err as { code: string }).code; }
  return 'accepted';
}

describe('center TLS', () => {
  let tc: TestCenter;
  let other: TestCenter;
  const dirs: string[] = [];
  before(async () => { tc = await startTestCenter(); other = await startTestCenter(); });
  after(async () => {
    await tc.close();
    await other.close();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('the CA is the store\'s; the center\'s and a host\'s certificates are signed by it; a restart keeps it', async () => {
    const ca = new X509Certificate(tc.caPem);
    assert.ok(ca.ca, 'a CA certificate');
    assert.equal(ca.fingerprint256, tc.caFingerprint);
    assert.notEqual(other.caFingerprint, tc.caFingerprint, 'each fleet its own CA');
    const h = await joinTestHost(tc, 'signed', { url: 'https://10.1.2.3:7000' });
    const cert = new X509Certificate(h.joined.certificate);
    assert.ok(cert.verify(ca.publicKey), 'signed by the CA');
    assert.equal(cert.subject, 'CN=signed');
    assert.match(cert.subjectAltName ?? '', /DNS:signed/);
    assert.match(cert.subjectAltName ?? '', /IP Address:10\.1\.2\.3/);
    assert.equal(h.joined.caCertificate, tc.caPem);
    assert.equal((await tc.center.store.findHostCertificate(cert.fingerprint256))?.host, 'signed');

    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-center-tls-'));
    dirs.push(dataDir);
    const a = await startTestCenter({ dataDir });
    const fp = a.caFingerprint;
    await a.close();
    const b = await startTestCenter({ dataDir });
    try { assert.equal(b.caFingerprint, fp, 'the same store, the same CA'); } finally { await b.close(); }
  });

  it('a client that does not trust the center\'s CA is refused with TLS_UNTRUSTED', async () => {
    await assert.rejects(new CenterClient(tc.url, null).health(), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'TLS_UNTRUSTED');
      assert.match(err.message, /does not trust/);
      return true;
    });
    assert.equal(await refusal(new CenterClient(tc.url, tc.center.adminToken, { caPem: other.caPem }).listHosts()), 'TLS_UNTRUSTED', 'another fleet\'s CA');
    assert.equal(await refusal(CenterClient.readCa(tc.url, other.caFingerprint)), 'TLS_UNTRUSTED', 'a CA read by fingerprint: the wrong one is refused');
    assert.equal((await CenterClient.readCa(tc.url, tc.caFingerprint.replace(/:/g, '').toLowerCase())).certificate, tc.caPem);
  });

  it('heartbeats need the host\'s own certificate: another host\'s, none, or another CA\'s are refused', async () => {
    const a = await joinTestHost(tc, 'mtls-a');
    const b = await joinTestHost(tc, 'mtls-b');
    assert.equal((await a.client.heartbeat('mtls-a', report)).state, 'connected');
    const withCert = (credential: string, certPem: string, keyPem: string): CenterClient => tc.client(credential, { certPem, keyPem });
    assert.equal(await refusal(withCert(a.joined.credential, b.joined.certificate, b.keyPem).heartbeat('mtls-a', report)), 'UNAUTHORIZED', 'b\'s certificate with a\'s credential');
    assert.equal(await refusal(tc.client(a.joined.credential).heartbeat('mtls-a', report)), 'UNAUTHORIZED', 'no client certificate');
    // A certificate for CN=mtls-a from another CA (another center's join): TLS admits it, the route does not.
    const forged = await joinTestHost(other, 'mtls-a');
    assert.equal(await refusal(withCert(a.joined.credential, forged.joined.certificate, forged.keyPem).heartbeat('mtls-a', report)), 'UNAUTHORIZED', 'another CA\'s certificate');
    // API routes need no client certificate, and a host certificate is no API token.
    assert.ok((await tc.admin.listHosts()).hosts.length > 0);
    assert.equal(await refusal(a.client.listHosts()), 'UNAUTHORIZED');
  });

  it('after a re-join the old certificate is refused, even with the new credential', async () => {
    const first = await joinTestHost(tc, 'rejoin');
    assert.equal((await first.client.heartbeat('rejoin', report)).state, 'connected');
    const second = await joinTestHost(tc, 'rejoin');
    assert.equal(await refusal(first.client.heartbeat('rejoin', report)), 'UNAUTHORIZED', 'old credential, old certificate');
    const mixed = tc.client(second.joined.credential, { certPem: first.joined.certificate, keyPem: first.keyPem });
    await assert.rejects(mixed.heartbeat('rejoin', report), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'UNAUTHORIZED');
      assert.match(err.message, /earlier credential/);
      return true;
    });
    assert.equal((await second.client.heartbeat('rejoin', report)).state, 'connected');
  });

  it('a CSR for another name is refused before the join token is spent', async () => {
    const { token } = await tc.admin.createJoinToken();
    await assert.rejects(joinTestHost(tc, 'named', { joinToken: token, csrName: 'someone-else' }), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'BAD_REQUEST');
      assert.match(err.message, /"someone-else", not for the joining host named/);
      return true;
    });
    const garbage = await tc.client(null).raw('POST', '/api/v1/hosts/join', { body: JSON.stringify({ joinToken: token, name: 'named', url: 'http://a', csr: 'not a csr' }) });
    assert.equal(garbage.status, 400);
    // A tampered CSR: it no longer parses or its own signature no longer verifies.
    const csr = await createCsr('named', await generateKeyPair());
    const tampered = csr.replace(/\n(.{10})/, (_m, s: string) => `\n${s.split('').reverse().join('')}`);
    assert.equal((await tc.client(null).raw('POST', '/api/v1/hosts/join', { body: JSON.stringify({ joinToken: token, name: 'named', url: 'http://a', csr: tampered }) })).status, 400);
    const ok = await joinTestHost(tc, 'named', { joinToken: token });
    assert.equal(ok.joined.name, 'named', 'the token was not spent by the refused joins');
  });

  it('ferry login: a wrong fingerprint, or none without a terminal, writes nothing; the right one writes the config and host list needs no flags', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-login-'));
    dirs.push(dir);
    const config = join(dir, 'ferry', 'config.json');
    const env = { FERRY_CONFIG: config, FERRY_CENTER_TOKEN: '' };
    const tokenFile = join(tc.dataDir, 'admin.token');

    const wrong = await runFerry(['login', '--center', tc.url, '--token-file', tokenFile, '--ca-fingerprint', other.caFingerprint], { env });
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /\[TLS_UNTRUSTED\].*not the given/);
    await assert.rejects(stat(config), { code: 'ENOENT' });
    const blind = await runFerry(['login', '--center', tc.url, '--token-file', tokenFile], { env });
    assert.equal(blind.code, 1);
    assert.ok(blind.stderr.includes(`pass --ca-fingerprint ${tc.caFingerprint}`), blind.stderr);
    await assert.rejects(stat(config), { code: 'ENOENT' });
    const noFlags = await runFerry(['host', 'list', '--json'], { env });
    assert.equal(noFlags.code, 1);
    assert.match(noFlags.stderr, /ferry login/);

    const right = await runFerry(['login', '--center', tc.url, '--token-file', tokenFile, '--ca-fingerprint', tc.caFingerprint], { env });
    assert.equal(right.code, 0, right.stderr);
    assert.ok(right.stderr.includes(tc.caFingerprint), 'the fingerprint is shown');
    assert.equal((await stat(config)).mode & 0o777, 0o600, 'the config holds a token: private');
    const kept = JSON.parse(await readFile(config, 'utf8')) as { center: string; token: string; caPem: string };
    assert.deepEqual([kept.center, kept.token, kept.caPem], [tc.url, tc.center.adminToken, tc.caPem]);

    await joinTestHost(tc, 'listed');
    const list = await runFerry(['host', 'list', '--json'], { env });
    assert.equal(list.code, 0, list.stderr);
    assert.ok((JSON.parse(list.stdout) as { name: string }[]).some((h) => h.name === 'listed'));
    // A flag overrides the config: another center gets neither the config's token nor its CA's trust.
    const elsewhere = await runFerry(['host', 'list', '--center', other.url], { env });
    assert.equal(elsewhere.code, 1);
    assert.match(elsewhere.stderr, /\[UNAUTHORIZED\]/, 'the token is only for its own center');
    const untrusted = await runFerry(['host', 'list', '--center', other.url, '--token-file', tokenFile], { env });
    assert.equal(untrusted.code, 1);
    assert.match(untrusted.stderr, /\[TLS_UNTRUSTED\]/);
  });
});

describe('a joined host serving HTTPS (--tls)', () => {
  it('serves its control API with the center-signed certificate, reports an https URL, and refuses a client without the CA', async () => {
    const tc = await startTestCenter();
    const dataDir = await mkdtemp(join(tmpdir(), 'ferry-tls-host-'));
    try {
      const { token } = await tc.admin.createJoinToken();
      const from = await tc.center.store.latestEventId();
      const agent = await startAgent('tls1', { tls: true, dataDir, center: { centerUrl: tc.url, joinToken: token, caFingerprint: tc.caFingerprint } });
      try {
        await waitForEvent(tc.admin, from, (e) => e.kind === 'host.connected' && e.subject === 'host:tls1');
        assert.match(agent.agent.url, /^https:\/\//);
        assert.equal((await tc.admin.host('tls1')).url, agent.agent.url, 'the center reaches it over https');
        const trusting = new HostClient(agent.agent.url, AGENT_TOKEN, { caPem: tc.caPem });
        assert.equal((await trusting.host()).name, 'tls1');
        await trusting.close();
        assert.equal(await refusal(new HostClient(agent.agent.url, AGENT_TOKEN).host()), 'TLS_UNTRUSTED');
        // The bearer token is still required over TLS.
        assert.equal(await refusal(new HostClient(agent.agent.url, 'wrong-token-0123456789', { caPem: tc.caPem }).host()), 'UNAUTHORIZED');
      } finally {
        await agent.close();
      }
      // Restarted, it serves HTTPS from its stored certificate before it talks to the center.
      const again = await startAgent('tls1', { tls: true, dataDir, center: { centerUrl: tc.url } });
      try {
        const c = new HostClient(again.agent.url, AGENT_TOKEN, { caPem: tc.caPem });
        assert.equal((await c.host()).name, 'tls1');
        await c.close();
      } finally {
        await again.close();
      }
    } finally {
      await tc.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('two joined hosts serving HTTPS', () => {
  it('live-migrate a VM: the source reaches the target over TLS with the center\'s CA', async () => {
    const tc = await startTestCenter();
    const agents: Awaited<ReturnType<typeof startAgent>>[] = [];
    const clients: HostClient[] = [];
    try {
      for (const name of ['tls-src', 'tls-dst']) {
        const { token } = await tc.admin.createJoinToken();
        const from = await tc.center.store.latestEventId();
        agents.push(await startAgent(name, { tls: true, center: { centerUrl: tc.url, joinToken: token, caFingerprint: tc.caFingerprint } }));
        await waitForEvent(tc.admin, from, (e) => e.kind === 'host.connected' && e.subject === `host:${name}`);
      }
      const [src, dst] = agents;
      assert.ok(src !== undefined && dst !== undefined);
      const a = new HostClient(src.agent.url, AGENT_TOKEN, { caPem: tc.caPem });
      const b = new HostClient(dst.agent.url, AGENT_TOKEN, { caPem: tc.caPem });
      clients.push(a, b);
      await a.createVm(await vmRequest('tls-mover', 'dirtier', { memoryBytes: 16 * MiB, vcpus: 1, cmdline: 'hot=1MiB rate=200', start: true }));
      const { migrationId } = await a.migrate('tls-mover', { to: dst.agent.url });
      const record = await a.waitForMigration(migrationId, { timeoutMs: 60_000 });
      assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
      assert.equal((await b.vm('tls-mover')).state, 'running');
    } finally {
      for (const c of clients) await c.close();
      for (const x of agents) await x.close();
      await tc.close();
    }
  });
});
