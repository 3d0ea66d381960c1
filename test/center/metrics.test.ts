/**
 * The center's observability: a real center (SQLite, real sockets) with a real in-process host agent
 * joined and heartbeating; the center's /metrics (heartbeat age, store latency, task queue, task waits,
 * HTTP requests) and its log lines.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CENTER_CREDENTIAL_FILE } from '../../src/host/center-link.js';
import { startAgent, type TestAgent } from '../helpers/agents.js';
import { startTestCenter, waitForEvent, type TestCenter } from '../helpers/center.js';
import { sampleValue } from '../helpers/metrics.js';
import { centerRoutes } from '../../src/api/center-v1.js';
import { MAX_TASK_WAIT_LABEL_VALUES, OTHER_LABEL } from '../../src/center/metrics.js';
import { createLogger } from '../../src/lib/logger.js';

const lines: Record<string, unknown>[] = [];
let tc: TestCenter;
let host: TestAgent;

/** Polls the center's metrics (every 20 ms, up to 10 s) until `cond` holds of them. */
async function untilMetrics(cond: (text: string) => boolean, what: string): Promise<string> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const text = await tc.admin.metrics();
    if (cond(text)) return text;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}:\n${text}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

before(async () => {
  tc = await startTestCenter({ logger: createLogger({ format: 'json', destination: { write: (s) => { lines.push(JSON.parse(s) as Record<string, unknown>); } } }) });
  const { token } = await tc.admin.createJoinToken();
  const from = await tc.center.store.latestEventId();
  host = await startAgent('mh1', { center: { centerUrl: tc.url, joinToken: token, caFingerprint: tc.caFingerprint } });
  await waitForEvent(tc.admin, from, (e) => e.kind === 'host.connected' && e.subject === 'host:mh1');
});
after(async () => {
  await host?.close();
  await tc?.close();
});

describe('center metrics', () => {
  it('GET /metrics needs an API token (401 without, and a host credential is not one); with it, the text format', async () => {
    const anon = await tc.admin.raw('GET', centerRoutes.metrics.path, { token: null });
    assert.equal(anon.status, 401);
    assert.equal(((await anon.json()) as { error: { code: string } }).error.code, 'UNAUTHORIZED');
    const credential = (await readFile(join(host.dataDir, CENTER_CREDENTIAL_FILE), 'utf8')).trim();
    assert.equal((await tc.admin.raw('GET', centerRoutes.metrics.path, { token: credential })).status, 401);
    const ok = await tc.admin.raw('GET', centerRoutes.metrics.path);
    assert.equal(ok.status, 200);
    assert.match(ok.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await tc.admin.metrics();
    assert.ok((sampleValue(text, 'ferry_center_http_requests_total', { method: 'GET', route: centerRoutes.metrics.path, status: '401' }) ?? 0) >= 1);
    assert.ok((sampleValue(text, 'process_resident_memory_bytes') ?? 0) > 0);
  });

  it('each heartbeating host has its heartbeat age; heartbeats are counted by declared route', async () => {
    const text = await untilMetrics((t) => sampleValue(t, 'ferry_center_host_heartbeat_age_seconds', { host: 'mh1' }) !== undefined, 'the heartbeat age of mh1');
    const age = sampleValue(text, 'ferry_center_host_heartbeat_age_seconds', { host: 'mh1' }) ?? -1;
    // Heartbeats every 150 ms in tests: the age is well under the disconnect threshold of a loaded machine.
    assert.ok(age >= 0 && age < 5, `age ${age}`);
    assert.ok((sampleValue(text, 'ferry_center_http_requests_total', { method: 'POST', route: centerRoutes.heartbeat.path, status: '200' }) ?? 0) >= 1);
  });

  it('store operations are timed by operation, and the counts grow as the host heartbeats', async () => {
    // A host's first heartbeat is written at once, steady ones in batches.
    const count = (t: string): number => (sampleValue(t, 'ferry_center_store_op_seconds_count', { op: 'recordHostHeartbeat' }) ?? 0)
      + (sampleValue(t, 'ferry_center_store_op_seconds_count', { op: 'recordHostHeartbeats' }) ?? 0);
    const first = count(await tc.admin.metrics());
    assert.ok(first >= 1, `recordHostHeartbeat observed ${first} times`);
    await untilMetrics((t) => count(t) > first, 'another heartbeat to be stored');
    const text = await tc.admin.metrics();
    // What the scrape itself reads is timed too (through the same store).
    assert.ok((sampleValue(text, 'ferry_center_store_op_seconds_count', { op: 'countTasksByState' }) ?? 0) >= 1);
    assert.ok((sampleValue(text, 'ferry_center_store_op_seconds_sum', { op: 'recordHostHeartbeats' }) ?? -1) >= 0);
  });

  it('unfinished tasks by state and kind (the queue depth); task waits by kind and reason, with bounded labels', async () => {
    const store = tc.center.store;
    // Kinds no worker of the center runs (its own workers would run vm.* tasks at once).
    for (const kind of ['test.wait', 'test.wait', 'test.run']) await store.enqueueTask({ kind, target: 'vm:x', requestedBy: 'test' });
    await store.claimNextTask('w1', ['test.run'], 60_000);
    const text = await tc.admin.metrics();
    assert.equal(sampleValue(text, 'ferry_center_tasks', { state: 'queued', kind: 'test.wait' }), 2);
    assert.equal(sampleValue(text, 'ferry_center_tasks', { state: 'running', kind: 'test.run' }), 1);
    assert.equal(sampleValue(text, 'ferry_center_tasks', { state: 'queued', kind: 'test.run' }), undefined, 'none queued: no series');

    const observe = tc.center.metrics.observeTaskWait;
    observe('vm.migrate', 'capacity', 1.5);
    observe('vm.migrate', 'none', 0.01);
    for (let i = 0; i < MAX_TASK_WAIT_LABEL_VALUES + 8; i++) observe('vm.start', `free text reason ${i}`, 0.2);
    const after = await tc.admin.metrics();
    assert.equal(sampleValue(after, 'ferry_center_task_wait_seconds_count', { kind: 'vm.migrate', reason: 'capacity' }), 1);
    assert.equal(sampleValue(after, 'ferry_center_task_wait_seconds_sum', { kind: 'vm.migrate', reason: 'capacity' }), 1.5);
    const reasons = new Set([...after.matchAll(/^ferry_center_task_wait_seconds_count\{[^}]*reason="([^"]*)"/gm)].map((m) => m[1]));
    assert.equal(reasons.size, MAX_TASK_WAIT_LABEL_VALUES + 1, 'the bound, and other');
    assert.ok(reasons.has(OTHER_LABEL));
    assert.equal(sampleValue(after, 'ferry_center_task_wait_seconds_count', { kind: 'vm.start', reason: OTHER_LABEL }), 10);
  });

  it('its log lines are JSON bound to the center id', () => {
    const started = lines.find((l) => String(l.msg).includes(': API on '));
    assert.ok(started !== undefined, 'the start line');
    assert.equal(started.center, tc.center.id);
    assert.equal(started.level, 'info');
  });
});
