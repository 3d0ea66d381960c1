/**
 * A host's observability, end to end: a real live migration between two in-process host agents (real
 * sockets on loopback, real vCPU worker threads), then both hosts' /metrics and both hosts' log lines.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startAgent, type TestAgent } from '../helpers/agents.js';
import { vmRequest } from '../helpers/guests.js';
import { sampleValue } from '../helpers/metrics.js';
import { createLogger } from '../../src/lib/logger.js';
import { routes } from '../../src/api/host-v1.js';
import { MiB } from '../../src/lib/units.js';
import type { MigrationRecord } from '../../src/migration/record.js';

/** A host's log as parsed JSON lines. */
function capture(): { lines: Record<string, unknown>[]; logger: ReturnType<typeof createLogger> } {
  const lines: Record<string, unknown>[] = [];
  return { lines, logger: createLogger({ format: 'json', destination: { write: (s) => { lines.push(JSON.parse(s) as Record<string, unknown>); } } }) };
}

const logA = capture();
const logB = capture();
let a: TestAgent;
let b: TestAgent;
let record: MigrationRecord;

before(async () => {
  a = await startAgent('a', { logger: logA.logger });
  b = await startAgent('b', { logger: logB.logger });
  await a.client.createVm(await vmRequest('m', 'dirtier', { memoryBytes: 32 * MiB, vcpus: 2, cmdline: 'hot=4MiB pattern=random', start: true }));
  await a.client.waitForConsole('m', 'dirtier');
  record = await a.client.waitForMigration((await a.client.migrate('m', { to: b.client.baseUrl })).migrationId);
});
after(async () => {
  await a?.close();
  await b?.close();
});

describe('host metrics and logs of a migration', () => {
  it('the migration succeeded (what the rest looks at)', () => {
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
  });

  it('GET /metrics on the source: one succeeded, bytes moved, one downtime, nothing in flight, VMs by state', async () => {
    const text = await a.client.metrics();
    assert.equal(sampleValue(text, 'ferry_migrations_total', { role: 'source', outcome: 'succeeded' }), 1);
    const bytes = sampleValue(text, 'ferry_migration_bytes_total', { role: 'source', kind: 'memory' }) ?? 0;
    assert.ok(bytes > 0, `memory bytes sent: ${bytes}`);
    assert.equal(bytes, record.transferredBytes);
    assert.equal(sampleValue(text, 'ferry_migration_downtime_seconds_count'), 1);
    assert.ok(Math.abs((sampleValue(text, 'ferry_migration_downtime_seconds_sum') ?? -1) - (record.engineDowntimeMs ?? 0) / 1000) < 1e-6);
    assert.equal(sampleValue(text, 'ferry_migration_duration_seconds_count', { role: 'source', outcome: 'succeeded' }), 1);
    assert.equal(sampleValue(text, 'ferry_migrations_in_flight', { role: 'source' }), 0);
    // The VM left: none runs here any more.
    assert.equal(sampleValue(text, 'ferry_vms', { state: 'running' }), 0);
    // The process's own metrics, and the HTTP requests by declared route (the template, never the raw path).
    assert.ok((sampleValue(text, 'process_cpu_user_seconds_total') ?? -1) >= 0);
    assert.ok((sampleValue(text, 'ferry_http_requests_total', { method: 'POST', route: routes.migrateVm.path, status: '202' }) ?? 0) >= 1);
  });

  it('GET /metrics on the target: one succeeded, bytes applied, the VM running', async () => {
    const text = await b.client.metrics();
    assert.equal(sampleValue(text, 'ferry_migrations_total', { role: 'target', outcome: 'succeeded' }), 1);
    assert.ok((sampleValue(text, 'ferry_migration_bytes_total', { role: 'target', kind: 'memory' }) ?? 0) > 0);
    assert.equal(sampleValue(text, 'ferry_migrations_in_flight', { role: 'target' }), 0);
    assert.equal(sampleValue(text, 'ferry_vms', { state: 'running' }), 1);
    assert.ok((sampleValue(text, 'ferry_http_requests_total', { method: 'POST', route: routes.createTicket.path, status: '201' }) ?? 0) >= 1);
  });

  it('GET /metrics needs the token, and answers the text exposition format', async () => {
    const anon = await a.client.raw('GET', routes.metrics.path, { token: null });
    assert.equal(anon.status, 401);
    const ok = await a.client.raw('GET', routes.metrics.path);
    assert.equal(ok.status, 200);
    assert.match(ok.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.ok((sampleValue(await a.client.metrics(), 'ferry_http_requests_total', { method: 'GET', route: routes.metrics.path, status: '401' }) ?? 0) >= 1);
  });

  it('every log line of the migration carries its id, on the source and on the target', () => {
    const id = record.migrationId;
    const short = id.slice(0, 8);
    const onA = logA.lines.filter((l) => String(l.msg).startsWith(`migration ${short}`));
    const onB = logB.lines.filter((l) => String(l.msg).startsWith('incoming migration '));
    assert.ok(onA.length >= 4, `source lines: ${onA.length}`);
    assert.ok(onB.length >= 2, `target lines: ${onB.length}`);
    for (const l of onA) assert.deepEqual([l.migrationId, l.role, l.vm, l.host], [id, 'source', 'm', 'a'], JSON.stringify(l));
    for (const l of onB) {
      assert.deepEqual([l.migrationId, l.role, l.host, l.vm], [id, 'target', 'b', 'm'], JSON.stringify(l));
      assert.match(String(l.incomingId), /^[0-9a-f]{32}$/);
    }
    assert.ok(onA.some((l) => String(l.msg).endsWith(': succeeded')));
    assert.ok(onB.some((l) => String(l.msg).includes('committed; VM m runs here')));
    // One grep follows the migration across both processes.
    assert.ok([...logA.lines, ...logB.lines].filter((l) => l.migrationId === id).length === onA.length + onB.length);
  });
});
