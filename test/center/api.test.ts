/**
 * The center's API against a real in-process center (SQLite, 127.0.0.1 port 0) and clients speaking
 * the real host protocol: join once, heartbeat, inventory, disconnect and reconcile, SSE replay,
 * tasks, refusals with stable codes, and the OpenAPI document against what the app answers.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:https';
import type { CenterClient } from '../../src/api/center-client.js';
import { MAX_HEARTBEAT_BODY_BYTES, MAX_HEARTBEAT_VMS, centerRoutes, type HeartbeatRequest } from '../../src/api/center-v1.js';
import { hashSecret } from '../../src/center/auth.js';
import { GiB, MiB } from '../../src/lib/units.js';
import { createCsr, generateKeyPair } from '../../src/lib/x509.js';
import { DATASTORE_SPACE_WRITE_THRESHOLD_BYTES } from '../../src/center/inventory.js';
import { until } from '../helpers/hosts.js';
import { collectEvents, joinTestHost, startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';

const DS1 = 'a'.repeat(32);
const DS2 = 'b'.repeat(32);

type ReportedVm = HeartbeatRequest['vms'][number];
const vm = (name: string, state: ReportedVm['state'] = 'running'): ReportedVm => ({ name, state, memoryBytes: 64 * MiB, vcpus: 1, disk: null });
const report = (vms: ReportedVm[], datastores: HeartbeatRequest['datastores'] = [{ name: 'ds1', id: DS1, spaceLeftBytes: 10 * GiB, totalBytes: 20 * GiB }]): HeartbeatRequest =>
  ({ url: 'http://127.0.0.1:1', capacity: { memoryBytes: 8 * GiB, vcpus: 4 }, datastores, vms });

let tc: TestCenter;
before(async () => { tc = await startTestCenter(); });
after(async () => { await tc.close(); });

/** A host that joined: its own client (bearer = its credential, client certificate = its certificate). */
async function joinHost(name: string): Promise<CenterClient> {
  const j = await joinTestHost(tc, name);
  assert.equal(j.joined.name, name);
  joinedHosts.set(j.client, j);
  return j.client;
}

const joinedHosts = new WeakMap<CenterClient, Awaited<ReturnType<typeof joinTestHost>>>();
/** The credential and TLS identity a host client of joinHost presents. */
function joinedOf(c: CenterClient): Awaited<ReturnType<typeof joinTestHost>> {
  const j = joinedHosts.get(c);
  assert.ok(j !== undefined);
  return j;
}

/**
 * POST a body larger than the server reads: the server answers 413 and closes while the body is still
 * being sent, which fetch reports as a failed request; node:http lets the answer be read anyway.
 */
function postLarge(path: string, host: CenterClient, body: string): Promise<[number, string]> {
  const j = joinedOf(host);
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, tc.url), {
      method: 'POST', headers: { authorization: `Bearer ${j.joined.credential}`, 'content-type': 'application/json' },
      ca: tc.caPem, cert: j.joined.certificate, key: j.keyPem,
    }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => { text += d.toString(); });
      res.on('end', () => { resolve([res.statusCode ?? 0, ((JSON.parse(text) as { error: { code: string } }).error.code)]); });
    });
    let answered = false;
    req.on('response', () => { answered = true; });
    req.on('error', (err) => { if (!answered) reject(err); });
    req.end(body);
  });
}

async function refusal(p: Promise<unknown>): Promise<string> {
  try { await p; } catch (err) { return (err as { code: string }).code; }
  return 'accepted';
}

describe('center API', () => {
  it('health needs no token; everything else does', async () => {
    assert.deepEqual(await tc.client(null).health(), { ok: true, api: 'v1' });
    assert.equal((await tc.client(null).ca()).fingerprint, tc.caFingerprint, 'the CA needs no token either');
    assert.equal(await refusal(tc.client(null).listHosts()), 'UNAUTHORIZED');
  });

  it('a host joins with a one-time token (a second use is refused), heartbeats, and appears with its datastores and VMs', async () => {
    const { token } = await tc.admin.createJoinToken();
    const first = await joinTestHost(tc, 'j1', { joinToken: token, url: 'http://127.0.0.1:7001' });
    assert.match(first.joined.credential, /^ferry-host-/);
    assert.equal(await refusal(joinTestHost(tc, 'j1', { joinToken: token, url: 'http://127.0.0.1:7001' })), 'UNAUTHORIZED', 'the token is spent');
    assert.equal(await refusal(joinTestHost(tc, 'other', { joinToken: token, url: 'http://127.0.0.1:7001' })), 'UNAUTHORIZED', 'also for another host');
    assert.equal((await tc.admin.host('j1')).state, 'joining');

    const j1 = first.client;
    const answer = await j1.heartbeat('j1', report([vm('j1-web'), vm('j1-db', 'paused')]));
    assert.equal(answer.state, 'connected');
    const h = await tc.admin.host('j1');
    assert.equal(h.state, 'connected');
    assert.deepEqual(h.capacity, { memoryBytes: 8 * GiB, vcpus: 4 });
    assert.deepEqual(h.datastores.map(({ spaceAtMs: _, ...rest }) => rest), [{ id: DS1, mountName: 'ds1', shared: false, capacityBytes: 20 * GiB, freeBytes: 10 * GiB }]);
    assert.ok(h.lastHeartbeatAtMs !== null);
    const vms = (await tc.admin.listVms({ host: 'j1' })).vms;
    assert.deepEqual(vms.map((v) => [v.name, v.host, v.state]), [['j1-db', 'j1', 'paused'], ['j1-web', 'j1', 'running']]);
    assert.deepEqual((await tc.admin.vm('j1-web')).config, { memoryBytes: 64 * MiB, vcpus: 1 });

    // A second host mounting the same datastore identity makes it shared.
    const j2 = await joinHost('j2');
    await j2.heartbeat('j2', report([], [{ name: 'shared', id: DS1, spaceLeftBytes: 1, totalBytes: 2 }, { name: 'local', id: DS2, spaceLeftBytes: 1, totalBytes: 2 }]));
    assert.deepEqual((await tc.admin.host('j2')).datastores.map((d) => [d.id, d.mountName, d.shared]), [[DS2, 'local', false], [DS1, 'shared', true]]);

    // A host credential is for its host's heartbeats only.
    assert.equal(await refusal(j1.heartbeat('j2', report([]))), 'UNAUTHORIZED');
    assert.equal(await refusal(j1.listHosts()), 'UNAUTHORIZED');
    assert.equal(await refusal(tc.admin.heartbeat('j1', report([]))), 'UNAUTHORIZED', 'an API token is no host credential');
    // Re-joining with a new token replaces the host's credential: the old one is refused.
    const { token: again } = await tc.admin.createJoinToken();
    const rejoined = await joinTestHost(tc, 'j1', { joinToken: again, url: 'http://127.0.0.1:7001' });
    assert.equal(await refusal(j1.heartbeat('j1', report([]))), 'UNAUTHORIZED');
    assert.equal((await rejoined.client.heartbeat('j1', report([vm('j1-web'), vm('j1-db', 'paused')]))).state, 'connected');
  });

  it('datastore space: kept per mount from heartbeats, written only when it moved by more than the threshold (steady heartbeats write nothing)', async () => {
    const h = await joinHost('space');
    const ds = (free: number, total = 100 * GiB): HeartbeatRequest['datastores'] => [{ name: 'ds1', id: DS1, spaceLeftBytes: free, totalBytes: total }];
    await h.heartbeat('space', report([], ds(50 * GiB)));
    const first = (await tc.admin.host('space')).datastores[0];
    assert.deepEqual([first?.capacityBytes, first?.freeBytes], [100 * GiB, 50 * GiB]);
    const keptAt = first?.spaceAtMs ?? null;
    assert.ok(keptAt !== null);
    // Within the threshold (the guest wrote a little): nothing written, the kept value and its time stay.
    await until(() => Promise.resolve(Date.now() > keptAt), 'the clock to move past the first report');
    const from = await tc.center.store.latestEventId();
    await h.heartbeat('space', report([], ds(50 * GiB - DATASTORE_SPACE_WRITE_THRESHOLD_BYTES)));
    const steady = (await tc.admin.host('space')).datastores[0];
    assert.deepEqual([steady?.freeBytes, steady?.spaceAtMs], [50 * GiB, keptAt], 'a move of exactly the threshold is not written');
    // Beyond it: written, and no event (space is read, not streamed: it changes all the time).
    await h.heartbeat('space', report([], ds(50 * GiB - DATASTORE_SPACE_WRITE_THRESHOLD_BYTES - 1)));
    const moved = (await tc.admin.host('space')).datastores[0];
    assert.equal(moved?.freeBytes, 50 * GiB - DATASTORE_SPACE_WRITE_THRESHOLD_BYTES - 1);
    assert.ok((moved?.spaceAtMs ?? 0) > keptAt);
    await h.heartbeat('space', report([], ds(40 * GiB, 200 * GiB)));
    assert.deepEqual((await tc.admin.host('space')).datastores.map((d) => [d.capacityBytes, d.freeBytes]), [[200 * GiB, 40 * GiB]], 'a grown capacity too');
    const events = await collectEvents(tc.admin, from, await tc.center.store.latestEventId());
    assert.deepEqual(events.filter((e) => e.subject === 'host:space').map((e) => e.kind), []);
  });

  it('a host that stops heartbeating becomes disconnected and its VMs unknown (kept); coming back reconciles', async () => {
    const h = await joinHost('silent');
    const from = await tc.center.store.latestEventId();
    await h.heartbeat('silent', report([vm('s-web'), vm('s-db')]));
    const down = await waitForEvent(tc.admin, from, (e) => e.kind === 'host.disconnected' && e.subject === 'host:silent');
    assert.deepEqual((down.payload as { vmsUnknown: number }).vmsUnknown, 2);
    assert.equal((await tc.admin.host('silent')).state, 'disconnected');
    assert.deepEqual((await tc.admin.listVms({ host: 'silent' })).vms.map((v) => [v.name, v.state]), [['s-db', 'unknown'], ['s-web', 'unknown']]);

    // Back, now running only s-web: s-web is running again, s-db stays recorded as unknown (not deleted).
    assert.equal((await h.heartbeat('silent', report([vm('s-web')]))).state, 'connected');
    assert.equal((await tc.admin.host('silent')).state, 'connected');
    assert.deepEqual((await tc.admin.listVms({ host: 'silent' })).vms.map((v) => [v.name, v.state]), [['s-db', 'unknown'], ['s-web', 'running']]);
  });

  it('a VM reported by two hosts stays where it is recorded until that host stops reporting it: one place, never flipping back', async () => {
    const a = await joinHost('move-a');
    const b = await joinHost('move-b');
    await a.heartbeat('move-a', report([vm('mover')]));
    await b.heartbeat('move-b', report([vm('mover')]));
    assert.equal((await tc.admin.vm('mover')).host, 'move-a', 'a second report (stale, or mid-migration) does not move it');
    await a.heartbeat('move-a', report([]));
    const lost = await tc.admin.vm('mover');
    assert.deepEqual([lost.host, lost.state], ['move-a', 'unknown'], 'its host lost it');
    await b.heartbeat('move-b', report([vm('mover')]));
    const v = await tc.admin.vm('mover');
    assert.deepEqual([v.host, v.state], ['move-b', 'running'], 'the host that reports it now has it');
    await a.heartbeat('move-a', report([vm('mover')]));
    assert.equal((await tc.admin.vm('mover')).host, 'move-b', 'and a late report of the old host does not take it back');
  });

  it('SSE: a client that reconnects with Last-Event-ID misses nothing, then gets live events', async () => {
    const start = await tc.center.store.latestEventId();
    for (let i = 0; i < 25; i++) await tc.center.store.appendEvent({ kind: 'test.tick', subject: `n:${i}`, payload: { i } });
    const last = await tc.center.store.latestEventId();
    const all = await collectEvents(tc.admin, start, last);
    assert.deepEqual(all.map((e) => e.id), Array.from({ length: last - start }, (_, i) => start + 1 + i), 'every id, once, in order');
    const mid = all[9]?.id ?? 0;
    const resumed = await collectEvents(tc.admin, mid, last);
    assert.deepEqual(resumed.map((e) => e.id), all.filter((e) => e.id > mid).map((e) => e.id));
    // Live: an event written after the stream opened (by the store directly: found by the fallback poll).
    const live = waitForEvent(tc.admin, last, (e) => e.kind === 'test.live');
    await tc.center.store.appendEvent({ kind: 'test.live', subject: 'x' });
    assert.ok((await live).id > last);
    // The header, raw: a malformed Last-Event-ID is refused.
    const res = await tc.admin.raw('GET', centerRoutes.events.path, { headers: { 'last-event-id': 'abc' } });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'BAD_REQUEST');
  });

  it('tasks: list, get, cancel; unknown and malformed ids are refused', async () => {
    // A kind no worker of the center runs: it stays queued until cancelled.
    const t = await tc.center.store.enqueueTask({ kind: 'test.wait', target: 'vm:x', requestedBy: 'test' });
    assert.ok((await tc.admin.listTasks()).tasks.some((x) => x.id === t.id));
    assert.equal((await tc.admin.task(t.id)).state, 'queued');
    const cancelled = await tc.admin.cancelTask(t.id);
    assert.equal(cancelled.state, 'cancelled');
    assert.equal(cancelled.error?.code, 'CANCELLED');
    assert.equal(await refusal(tc.admin.task(999_999)), 'NOT_FOUND');
    const res = await tc.admin.raw('GET', `${centerRoutes.listTasks.path}/abc`);
    assert.equal(res.status, 400);
  });

  it('refuses unauthenticated, wrong, revoked, malformed and oversized requests with stable codes', async () => {
    const codeOf = async (res: Response): Promise<[number, string]> => [res.status, ((await res.json()) as { error: { code: string } }).error.code];
    const hosts = centerRoutes.listHosts.path;
    assert.deepEqual(await codeOf(await tc.admin.raw('GET', hosts, { token: null })), [401, 'UNAUTHORIZED']);
    assert.deepEqual(await codeOf(await tc.admin.raw('GET', hosts, { token: 'not-a-token' })), [401, 'UNAUTHORIZED']);
    assert.deepEqual(await codeOf(await tc.admin.raw('GET', hosts, { token: `ferry-api-${'A'.repeat(43)}` })), [401, 'UNAUTHORIZED'], 'well-formed, unknown');

    // A revoked API token.
    const extra = `ferry-api-${'B'.repeat(43)}`;
    const c = await tc.center.store.createCredential({ id: '00000000000000aa', kind: 'api', subject: 'ops', secretHash: hashSecret(extra) });
    assert.equal((await tc.client(extra).listHosts()).hosts.length > 0, true);
    await tc.center.store.revokeCredential(c.id);
    assert.equal(await refusal(tc.client(extra).listHosts()), 'UNAUTHORIZED');

    const jt = centerRoutes.createJoinToken.path;
    assert.deepEqual(await codeOf(await tc.admin.raw('POST', jt, { body: '{not json' })), [400, 'BAD_REQUEST']);
    assert.deepEqual(await codeOf(await tc.admin.raw('POST', jt, { body: '{"ttlMs": 1, "extra": true}' })), [400, 'BAD_REQUEST']);
    assert.deepEqual(await codeOf(await tc.admin.raw('POST', jt, { body: JSON.stringify({ pad: 'x'.repeat(70 * 1024) }) })), [413, 'REQUEST_TOO_LARGE']);
    assert.deepEqual(await codeOf(await tc.admin.raw('GET', `${hosts}?limit=0`)), [400, 'BAD_REQUEST']);
    assert.deepEqual(await codeOf(await tc.admin.raw('GET', `${hosts}?limit=100000`)), [400, 'BAD_REQUEST']);
    assert.deepEqual(await codeOf(await tc.admin.raw('GET', `${hosts}?state=exploded`)), [400, 'BAD_REQUEST']);
    assert.deepEqual(await codeOf(await tc.admin.raw('GET', `${hosts}/${encodeURIComponent('../etc')}`)), [400, 'BAD_REQUEST']);
    const nope = await tc.admin.raw('GET', '/api/v1/nope');
    assert.equal(nope.status, 404);
    assert.equal(((await nope.json()) as { error: { details: { route: boolean } } }).error.details.route, false);

    // Join: a malformed token is BAD_REQUEST, a well-formed unknown one UNAUTHORIZED.
    const join = centerRoutes.joinHost.path;
    assert.deepEqual(await codeOf(await tc.admin.raw('POST', join, { token: null, body: JSON.stringify({ joinToken: 'x', name: 'h', url: 'http://a' }) })), [400, 'BAD_REQUEST']);
    const csr = await createCsr('h', await generateKeyPair());
    assert.deepEqual(await codeOf(await tc.admin.raw('POST', join, { token: null, body: JSON.stringify({ joinToken: `ferry-join-${'C'.repeat(43)}`, name: 'h', url: 'http://a', csr }) })), [401, 'UNAUTHORIZED']);
    assert.deepEqual(await codeOf(await tc.admin.raw('POST', join, { token: null, body: JSON.stringify({ joinToken: `ferry-join-${'C'.repeat(43)}`, name: 'h', url: 'ftp://user:pw@a' }) })), [400, 'BAD_REQUEST']);

    // Heartbeats: refused before the body is read without the host's credential; bounded when with it.
    const h = await joinHost('bounds');
    const hb = centerRoutes.heartbeat.path.replace('{name}', 'bounds');
    const huge = JSON.stringify({ ...report([]), pad: 'x'.repeat(MAX_HEARTBEAT_BODY_BYTES) });
    // (A malformed body: were it read before the credential is checked, the answer would be BAD_REQUEST.)
    assert.deepEqual(await codeOf(await tc.admin.raw('POST', hb, { token: null, body: '{not json' })), [401, 'UNAUTHORIZED']);
    assert.deepEqual(await postLarge(hb, h, huge), [413, 'REQUEST_TOO_LARGE']);
    const tooMany = report(Array.from({ length: MAX_HEARTBEAT_VMS + 1 }, (_, i) => vm(`v${i}`)));
    assert.deepEqual(await codeOf(await h.raw('POST', hb, { body: JSON.stringify(tooMany) })), [400, 'BAD_REQUEST']);
    assert.deepEqual(await codeOf(await h.raw('POST', hb, { body: JSON.stringify(report([vm('twice'), vm('twice')])) })), [400, 'BAD_REQUEST']);
    assert.deepEqual(await codeOf(await h.raw('POST', hb, { body: JSON.stringify({ ...report([]), capacity: { memoryBytes: -1, vcpus: 1 } }) })), [400, 'BAD_REQUEST']);
  });

  it('the OpenAPI document lists exactly the routes the app answers', async () => {
    const doc = await tc.admin.openApi() as { paths: Record<string, Record<string, unknown>> };
    const documented = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)).sort();
    const declared = Object.values(centerRoutes).map((r) => `${r.method.toUpperCase()} ${r.path}`).sort();
    assert.deepEqual(documented, declared);
    // Every declared route is answered (whatever the answer, never "no such route").
    for (const r of Object.values(centerRoutes)) {
      const path = r.path.replace('{name}', 'probe').replace('{id}', '1');
      const ac = new AbortController();
      const res = await tc.admin.raw(r.method.toUpperCase(), path, { ...(r.method === 'post' ? { body: '{}' } : {}), signal: ac.signal });
      if (res.status === 404) assert.notEqual(((await res.json()) as { error: { details?: { route?: boolean } } }).error.details?.route, false, `${r.method} ${r.path} is answered`);
      ac.abort();
    }
    // And what is not declared is not answered.
    assert.equal((await tc.admin.raw('DELETE', centerRoutes.listHosts.path)).status, 404);
  });
});
