/**
 * The host API v1 in-process, on real sockets: a HostAgent on 127.0.0.1 port 0 and the real
 * HostClient (client.raw for what the client would never send). For every route of
 * src/api/host-v1.ts: success (status and body as declared), 400, 401, 404, and 409 where the
 * route can conflict; 413 for a body over the small-route limit; the datastores a host mounts. Decisions are made on codes and
 * statuses only, never on message text.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdir, mkdtemp, realpath, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { z } from 'zod';
import { FerryError, type FerryErrorCode } from '../../src/lib/errors.js';
import { MiB } from '../../src/lib/units.js';
import { HostClient, pathOf } from '../../src/api/host-client.js';
import { MAX_SMALL_BODY_BYTES, OPENAPI_PATH, errorBodySchema, routes, type ErrorBody } from '../../src/api/host-v1.js';
import { httpStatusFor } from '../../src/api/http-status.js';
import { MAX_OPEN_TICKETS } from '../../src/migration/target/receiver.js';
import { tcpTransport } from '../../src/dataplane/tcp.js';
import { buildHostApp } from '../../src/host/app.js';
import { MigrationService } from '../../src/host/migration-service.js';
import { HostMetrics } from '../../src/host/metrics.js';
import { silentLogger } from '../../src/lib/logger.js';
import { AGENT_TOKEN, startAgent, type TestAgent } from '../helpers/agents.js';
import { vmRequest } from '../helpers/guests.js';

type RouteKey = keyof typeof routes;
type Route = (typeof routes)[RouteKey];

const ROUTE_KEYS = Object.keys(routes) as RouteKey[];
const WRONG_TOKEN = AGENT_TOKEN.replace(/.$/, (c) => (c === '0' ? '1' : '0'));
const NO_VM = 'no-such-vm';
const NO_MIGRATION = 'f'.repeat(32);
/** A body each route accepts (so that what is tested is the path, the token or the state). */
const VALID_BODY: Partial<Record<RouteKey, unknown>> = {
  createVm: { name: 'unused', imageBase64: 'AGFzbQEAAAA=', memoryBytes: MiB },
  migrateVm: { to: 'http://127.0.0.1:9' },
  createTicket: {},
  revertVm: {},
  putSeeds: { levels: [{ path: 'a.vmdk', cid: '00000001', parentCid: 'ffffffff', capacityBytes: MiB, fileBytes: 0, digest: '0'.repeat(64), source: { datastoreId: '0'.repeat(32), path: 'a.vmdk' } }], taskId: null },
};
/** A query each route needs (a copy's journal is asked of one datastore; this host mounts none, so it is not found). */
const VALID_QUERY: Partial<Record<RouteKey, string>> = {
  getCopyJournal: '?datastore=no-such-datastore',
  discardCopyJournal: '?datastore=no-such-datastore',
};

function pathParams(route: Route): string[] {
  return [...route.path.matchAll(/\{(\w+)\}/g)].map((m) => m[1] ?? '');
}

/** The one success status a route declares, and its JSON body schema (null for text and event streams). */
function success(route: Route): { status: number; schema: z.ZodType | null } {
  const entries = Object.entries(route.responses as Record<string, { content?: Record<string, { schema: z.ZodType }> }>);
  const ok = entries.filter(([s]) => Number(s) >= 200 && Number(s) < 300);
  assert.equal(ok.length, 1, `${route.path} declares one success status`);
  const [status, r] = ok[0] ?? ['0', {}];
  return { status: Number(status), schema: r.content?.['application/json']?.schema ?? null };
}

function send(client: HostClient, key: RouteKey, params: Record<string, string>, init: { body?: string; token?: string | null; headers?: Record<string, string> } = {}): Promise<Response> {
  const route = routes[key];
  const body = init.body ?? (VALID_BODY[key] !== undefined ? JSON.stringify(VALID_BODY[key]) : undefined);
  return client.raw(route.method.toUpperCase(), `${pathOf(route, params)}${VALID_QUERY[key] ?? ''}`, { ...init, ...(body !== undefined ? { body } : {}) });
}

/** The answer is a Ferry error body with this code, and the status of that code. */
async function expectError(res: Response, code: FerryErrorCode): Promise<ErrorBody['error']> {
  const text = await res.text();
  const parsed = errorBodySchema.safeParse(JSON.parse(text));
  assert.ok(parsed.success, `a Ferry error body: ${text.slice(0, 200)}`);
  assert.equal(parsed.data.error.code, code, text.slice(0, 300));
  assert.equal(res.status, httpStatusFor(code));
  return parsed.data.error;
}

/** The answer has the route's declared success status and a body its declared schema accepts. */
async function expectOk(res: Response, key: RouteKey): Promise<unknown> {
  const { status, schema } = success(routes[key]);
  const text = await res.text();
  assert.equal(res.status, status, `${key}: ${text.slice(0, 300)}`);
  if (schema === null) return text;
  const parsed = schema.safeParse(JSON.parse(text));
  assert.ok(parsed.success, `${key}: body matches its declared schema: ${text.slice(0, 300)}`);
  return parsed.data;
}

/** The client rejects with a remote FerryError of this code and the host's status. */
async function rejectsWith(p: Promise<unknown>, code: FerryErrorCode): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof FerryError, `a FerryError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.equal(err.origin, 'remote');
    assert.equal(err.details.status, httpStatusFor(code));
    return err;
  }
  assert.fail(`expected ${code}`);
}

describe('host API v1 on a real socket', () => {
  let h: TestAgent | undefined;
  const A = (): TestAgent => { assert.ok(h !== undefined); return h; };
  before(async () => { h = await startAgent('api'); });
  after(async () => { await h?.close(); });

  it('every route but the OpenAPI document refuses a missing or wrong token: 401 UNAUTHORIZED, before the body is read', async () => {
    const { client } = A();
    for (const key of ROUTE_KEYS) {
      for (const token of [null, WRONG_TOKEN, '']) {
        await expectError(await send(client, key, { name: NO_VM, id: NO_MIGRATION, vm: NO_VM }, { token }), 'UNAUTHORIZED');
      }
      // A lower-case scheme or a token without the scheme is no token either.
      await expectError(await send(client, key, { name: NO_VM, id: NO_MIGRATION, vm: NO_VM }, { token: null, headers: { authorization: `bearer ${AGENT_TOKEN}` } }), 'UNAUTHORIZED');
      await expectError(await send(client, key, { name: NO_VM, id: NO_MIGRATION, vm: NO_VM }, { token: null, headers: { authorization: AGENT_TOKEN } }), 'UNAUTHORIZED');
    }
    // The token is checked first: an oversized body without it is a 401, not a 413.
    await expectError(await client.raw('POST', routes.createTicket.path, { token: null, body: 'x'.repeat(4 * MAX_SMALL_BODY_BYTES) }), 'UNAUTHORIZED');
    // Unknown routes too: nothing about the API is told without the token, except its document.
    await expectError(await client.raw('GET', '/v1/nope', { token: null }), 'UNAUTHORIZED');
    const doc = await client.raw('GET', OPENAPI_PATH, { token: null });
    assert.equal(doc.status, 200);
    await doc.body?.cancel();
  });

  it('a refused request changes nothing: no VM created, stopped, paused, deleted or migrated', async () => {
    const { client } = A();
    await client.createVm(await vmRequest('guarded', 'dirtier', { memoryBytes: 4 * MiB, cmdline: 'hot=256KiB rate=200', start: true }));
    try {
      const before = await client.listVms();
      const intruder = new HostClient(client.baseUrl, WRONG_TOKEN);
      await rejectsWith(intruder.createVm(await vmRequest('intruder', 'compute', { memoryBytes: MiB })), 'UNAUTHORIZED');
      await rejectsWith(intruder.stopVm('guarded'), 'UNAUTHORIZED');
      await rejectsWith(intruder.pauseVm('guarded'), 'UNAUTHORIZED');
      await rejectsWith(intruder.deleteVm('guarded'), 'UNAUTHORIZED');
      await rejectsWith(intruder.migrate('guarded', { to: 'http://127.0.0.1:9' }), 'UNAUTHORIZED');
      for (const token of [null, WRONG_TOKEN]) {
        await expectError(await send(client, 'stopVm', { name: 'guarded' }, { token }), 'UNAUTHORIZED');
        await expectError(await send(client, 'deleteVm', { name: 'guarded' }, { token }), 'UNAUTHORIZED');
        await expectError(await send(client, 'createVm', {}, { token, body: JSON.stringify(await vmRequest('intruder', 'compute', { memoryBytes: MiB })) }), 'UNAUTHORIZED');
      }
      const after = await client.listVms();
      assert.deepEqual(after.map((v) => [v.name, v.state, v.owner]), [['guarded', 'running', null]]);
      assert.deepEqual(before.map((v) => [v.name, v.state, v.owner]), [['guarded', 'running', null]]);
      assert.equal((await client.host()).vms, 1);
    } finally {
      await client.stopVm('guarded');
      await client.deleteVm('guarded');
    }
  });

  it('every route with a path parameter answers 400 BAD_REQUEST for a malformed one, naming the field', async () => {
    const { client } = A();
    const bad = { name: ['a b', 'x'.repeat(65), 'a/b', 'é'], vm: ['a b', 'x'.repeat(65), 'a/b', 'é'], id: ['xyz', 'F'.repeat(32), 'f'.repeat(31), `${'f'.repeat(32)}0`] };
    let checked = 0;
    for (const key of ROUTE_KEYS) {
      for (const param of pathParams(routes[key])) {
        assert.ok(param === 'name' || param === 'id' || param === 'vm', `${key}: a parameter this test knows (${param})`);
        for (const value of bad[param]) {
          const params = { name: NO_VM, id: NO_MIGRATION, vm: NO_VM, [param]: value };
          const err = await expectError(await send(client, key, params), 'BAD_REQUEST');
          const issues = err.details?.issues as { path: string }[] | undefined;
          assert.ok(issues?.some((i) => i.path === param), `${key} ${param}=${value}: the issue names ${param}`);
          checked++;
        }
      }
    }
    assert.ok(checked >= 4 * 13, `every parameterised route checked (${checked})`);
    // The client passes the host's answer on with its code.
    await rejectsWith(client.vm('a b'), 'BAD_REQUEST');
    await rejectsWith(client.migration('not-hex'), 'BAD_REQUEST');
    await rejectsWith(client.incoming('F'.repeat(32)), 'BAD_REQUEST');
  });

  it('the client refuses "." and ".." as path parameters (a URL would read them as path steps): local INVALID_ARGUMENT, not a 404', async () => {
    const { client } = A();
    const calls: (() => Promise<unknown>)[] = [
      () => client.vm('.'), () => client.vm('..'), () => client.deleteVm('..'), () => client.stopVm('..'),
      () => client.migration('..'), () => client.cancelMigration('.'), () => client.incoming('..'),
    ];
    for (const call of calls) {
      const err = await call().then(() => null, (e: unknown) => e);
      assert.ok(err instanceof FerryError, String(err));
      assert.deepEqual([err.code, err.origin], ['INVALID_ARGUMENT', 'local']);
    }
    // Other values are sent as they are (encoded) and judged by the host.
    await rejectsWith(client.vm('...'), 'NOT_FOUND');
    await rejectsWith(client.vm('%2e%2e'), 'BAD_REQUEST');
  });

  it('every route naming a VM or migration answers 404 NOT_FOUND for an unknown one; incoming answers "unknown"', async () => {
    const { client } = A();
    for (const key of ROUTE_KEYS) {
      if (pathParams(routes[key]).length === 0) continue;
      const res = await send(client, key, { name: NO_VM, id: NO_MIGRATION, vm: NO_VM });
      if (key === 'getIncoming') {
        assert.deepEqual(await expectOk(res, key), { migrationId: NO_MIGRATION, outcome: { state: 'unknown' } });
        continue;
      }
      // Paths are the center's to push and remove: removing an unknown one is fine (idempotent); a push needs its spec (tests/host/paths, center/isolation).
      if (key === 'deletePath') { assert.deepEqual(await expectOk(res, key), { pathId: NO_MIGRATION, removed: false }); continue; }
      if (key === 'putPath') { await expectError(res, 'BAD_REQUEST'); continue; }
      // A stat needs its paths: with them, an unknown datastore is NOT_FOUND like an unknown VM.
      if (key === 'statDatastoreFiles') { await expectError(await send(client, key, { name: NO_VM }, { body: JSON.stringify({ paths: ['a.img'] }) }), 'NOT_FOUND'); continue; }
      const err = await expectError(res, 'NOT_FOUND');
      assert.equal(err.details?.route, undefined, `${key}: no such VM or migration, not "no route"`);
    }
    await rejectsWith(client.vm(NO_VM), 'NOT_FOUND');
    await rejectsWith(client.startVm(NO_VM), 'NOT_FOUND');
    await rejectsWith(client.migration(NO_MIGRATION), 'NOT_FOUND');
    await rejectsWith(client.cancelMigration(NO_MIGRATION), 'NOT_FOUND');
    await rejectsWith(client.waitForMigration(NO_MIGRATION, { timeoutMs: 5000 }), 'NOT_FOUND');
    await rejectsWith(client.console(NO_VM), 'NOT_FOUND');
    await rejectsWith(client.copy(NO_MIGRATION), 'NOT_FOUND');
    await rejectsWith(client.stopCopy(NO_MIGRATION), 'NOT_FOUND');
    await rejectsWith(client.copyJournal(NO_MIGRATION, 'no-such-datastore'), 'NOT_FOUND');
    // Without ?datastore= the request is incomplete.
    await expectError(await client.raw('GET', pathOf(routes.getCopyJournal, { id: NO_MIGRATION })), 'BAD_REQUEST');
  });

  it('unknown routes answer 404 NOT_FOUND: inside and outside /v1, a wrong method, a trailing slash', async () => {
    const { client } = A();
    for (const [method, path] of [
      ['GET', '/v1/nope'], ['GET', '/nope'], ['GET', '/'], ['GET', '/v2/host'], ['PUT', '/v1/vms'], ['PATCH', '/v1/vms/x'],
      ['POST', '/v1/vms/x/nope'], ['GET', '/v1/host/'], ['POST', '/v1/host'], ['GET', '/V1/HOST'],
    ] as const) {
      const err = await expectError(await client.raw(method, path), 'NOT_FOUND');
      assert.equal(err.details?.route, false, `${method} ${path}: "no route"`);
    }
  });

  it('bad bodies answer 400: malformed JSON, no or another content type, wrong fields, unknown keys, not an object', async () => {
    const { client } = A();
    const image = await vmRequest('bodies', 'compute', { memoryBytes: MiB });
    const cases: [RouteKey, string, Record<string, string>, FerryErrorCode, string | null][] = [
      ['createVm', '{"name": "bodies",', {}, 'BAD_REQUEST', null],
      ['createVm', JSON.stringify(image), { 'content-type': '' }, 'BAD_REQUEST', null],
      ['createVm', JSON.stringify(image), { 'content-type': 'text/plain' }, 'BAD_REQUEST', null],
      ['createVm', JSON.stringify({ ...image, memoryBytes: -1 }), {}, 'BAD_REQUEST', 'memoryBytes'],
      ['createVm', JSON.stringify({ ...image, name: 'a b' }), {}, 'BAD_REQUEST', 'name'],
      ['createVm', JSON.stringify({ ...image, vcpus: 0 }), {}, 'BAD_REQUEST', 'vcpus'],
      ['createVm', JSON.stringify({ ...image, granularityBytes: 5000 }), {}, 'BAD_REQUEST', 'granularityBytes'],
      ['createVm', JSON.stringify({ ...image, cmdline: 'x'.repeat(5000) }), {}, 'BAD_REQUEST', 'cmdline'],
      ['createVm', JSON.stringify({ ...image, extra: 1 }), {}, 'BAD_REQUEST', ''],
      ['createVm', JSON.stringify({ name: 'bodies', memoryBytes: MiB }), {}, 'BAD_REQUEST', 'imageBase64'],
      ['createVm', '[]', {}, 'BAD_REQUEST', ''],
      // Valid JSON, refused by the runtime: its own codes.
      ['createVm', JSON.stringify({ ...image, imageBase64: Buffer.from('not a wasm module').toString('base64') }), {}, 'IMAGE_NOT_WASM', null],
      ['createVm', JSON.stringify({ ...image, memoryBytes: 1000 }), {}, 'VM_CONFIG_INVALID', null],
      ['migrateVm', '{', {}, 'BAD_REQUEST', null],
      ['migrateVm', JSON.stringify({ to: 'not a url' }), {}, 'BAD_REQUEST', 'to'],
      ['migrateVm', JSON.stringify({ to: 'http://127.0.0.1:9', options: { dataChannels: 99 } }), {}, 'BAD_REQUEST', 'options.dataChannels'],
      ['migrateVm', JSON.stringify({ to: 'http://127.0.0.1:9', options: { nope: true } }), {}, 'BAD_REQUEST', 'options'],
      ['migrateVm', JSON.stringify({ to: 'http://127.0.0.1:9' }), { 'content-type': 'text/plain' }, 'BAD_REQUEST', null],
      ['migrateVm', '', { 'content-type': '' }, 'BAD_REQUEST', 'to'],
      ['createTicket', '{"a":', {}, 'BAD_REQUEST', null],
      ['createTicket', JSON.stringify({ a: 1 }), {}, 'BAD_REQUEST', ''],
      ['createTicket', 'null', {}, 'BAD_REQUEST', ''],
      ['createTicket', '{}', { 'content-type': 'text/plain' }, 'BAD_REQUEST', null],
    ];
    for (const [key, body, headers, code, field] of cases) {
      const err = await expectError(await send(client, key, { name: NO_VM }, { body, headers }), code);
      if (field !== null) {
        const issues = err.details?.issues as { path: string }[] | undefined;
        assert.ok(issues?.some((i) => i.path === field), `${key} ${body.slice(0, 60)}: an issue at "${field}": ${JSON.stringify(issues)}`);
      }
    }
    assert.deepEqual(await client.listVms(), [], 'no refused body defined a VM');
  });

  it('a body over MAX_SMALL_BODY_BYTES to a small route answers 413 REQUEST_TOO_LARGE; one at the limit is read', async () => {
    const { client } = A();
    const over = JSON.stringify({ a: 'x'.repeat(MAX_SMALL_BODY_BYTES) });
    await expectError(await send(client, 'createTicket', {}, { body: over }), 'REQUEST_TOO_LARGE');
    await expectError(await send(client, 'migrateVm', { name: NO_VM }, { body: over }), 'REQUEST_TOO_LARGE');
    await expectError(await send(client, 'startVm', { name: NO_VM }, { body: over }), 'REQUEST_TOO_LARGE');
    const atLimit = JSON.stringify({ a: 'x'.repeat(MAX_SMALL_BODY_BYTES - '{"a":""}'.length) });
    assert.equal(Buffer.byteLength(atLimit), MAX_SMALL_BODY_BYTES);
    await expectError(await send(client, 'createTicket', {}, { body: atLimit }), 'BAD_REQUEST');
  });

  it('every VM route on its success path: declared status and a body of the declared schema', async () => {
    const { client, agent } = A();
    const req = await vmRequest('life', 'dirtier', { memoryBytes: 8 * MiB, vcpus: 2, cmdline: 'hot=512KiB rate=500 check=1' });
    const created = await expectOk(await send(client, 'createVm', {}, { body: JSON.stringify(req) }), 'createVm') as { name: string; state: string; config: { memoryBytes: number; vcpus: number } };
    assert.equal(created.name, 'life');
    assert.equal(created.state, 'defined');
    assert.deepEqual([created.config.memoryBytes, created.config.vcpus], [8 * MiB, 2]);
    try {
      const host = await expectOk(await send(client, 'getHost', {}), 'getHost') as { name: string; vms: number; memoryCommittedBytes: number; migrationPort: number };
      assert.deepEqual([host.name, host.vms, host.memoryCommittedBytes, host.migrationPort], ['api', 1, 8 * MiB, agent.migrationPort]);
      const list = await expectOk(await send(client, 'listVms', {}), 'listVms') as { vms: { name: string }[] };
      assert.deepEqual(list.vms.map((v) => v.name), ['life']);
      assert.equal((await expectOk(await send(client, 'getVm', { name: 'life' }), 'getVm') as { state: string }).state, 'defined');
      const started = await expectOk(await send(client, 'startVm', { name: 'life' }), 'startVm') as { state: string; vcpus: unknown[] };
      assert.equal(started.state, 'running');
      assert.equal(started.vcpus.length, 2);
      await client.waitForConsole('life', 'dirtier: vcpus=2', 10_000);
      const text = await expectOk(await send(client, 'vmConsole', { name: 'life' }), 'vmConsole') as string;
      assert.ok(text.startsWith('dirtier: vcpus=2'), 'the guest\'s boot line');
      const paused = await expectOk(await send(client, 'pauseVm', { name: 'life' }), 'pauseVm') as { state: string; pauseLatencyMs: number };
      assert.equal(paused.state, 'paused');
      assert.ok(paused.pauseLatencyMs >= 0);
      const check = await expectOk(await send(client, 'verifyVm', { name: 'life' }), 'verifyVm') as { state: string; selfcheck: number | null; digest: string };
      assert.deepEqual([check.state, check.selfcheck], ['paused', 0]);
      const again = await client.verifyVm('life');
      assert.equal(again.digest, check.digest, 'a paused VM\'s RAM does not change');
      assert.equal((await expectOk(await send(client, 'resumeVm', { name: 'life' }), 'resumeVm') as { state: string }).state, 'running');
      const running = await client.verifyVm('life');
      assert.deepEqual([running.state, running.selfcheck], ['running', 0]);
      assert.equal((await expectOk(await send(client, 'stopVm', { name: 'life' }), 'stopVm') as { state: string }).state, 'defined');
      assert.equal((await client.stopVm('life')).state, 'defined', 'stopping a stopped VM is not an error');
    } finally {
      assert.deepEqual(await expectOk(await send(client, 'deleteVm', { name: 'life' }), 'deleteVm'), { name: 'life', deleted: true });
    }
    await rejectsWith(client.vm('life'), 'NOT_FOUND');
    assert.equal((await client.host()).memoryCommittedBytes, 0);
  });

  it('409 where the state conflicts: VM_STATE for start, delete, pause, resume, verify, migrate; ALREADY_EXISTS for a second create', async () => {
    const { client } = A();
    const req = await vmRequest('conflict', 'dirtier', { memoryBytes: 4 * MiB, cmdline: 'hot=256KiB rate=200' });
    await client.createVm(req);
    try {
      // Defined, never started.
      await rejectsWith(client.pauseVm('conflict'), 'VM_STATE');
      await rejectsWith(client.resumeVm('conflict'), 'VM_STATE');
      await rejectsWith(client.verifyVm('conflict'), 'VM_STATE');
      await rejectsWith(client.migrate('conflict', { to: 'http://127.0.0.1:9' }), 'VM_STATE');
      await expectError(await send(client, 'createVm', {}, { body: JSON.stringify({ ...req, start: true }) }), 'ALREADY_EXISTS');
      await rejectsWith(client.createVm({ ...req, memoryBytes: 2 * MiB }), 'ALREADY_EXISTS');
      const defined = await client.vm('conflict');
      assert.deepEqual([defined.state, defined.config.memoryBytes], ['defined', 4 * MiB], 'the second create changed nothing');
      // Running.
      await client.startVm('conflict');
      await expectError(await send(client, 'startVm', { name: 'conflict' }), 'VM_STATE');
      await expectError(await send(client, 'deleteVm', { name: 'conflict' }), 'VM_STATE');
      await expectError(await send(client, 'resumeVm', { name: 'conflict' }), 'VM_STATE');
      await rejectsWith(client.startVm('conflict'), 'VM_STATE');
      await rejectsWith(client.deleteVm('conflict'), 'VM_STATE');
      assert.equal((await client.vm('conflict')).state, 'running', 'the refused verbs changed nothing');
      // Paused: start and delete still conflict.
      await client.pauseVm('conflict');
      await rejectsWith(client.startVm('conflict'), 'VM_STATE');
      await rejectsWith(client.deleteVm('conflict'), 'VM_STATE');
      // Stopped: nothing to pause, resume or verify.
      await client.stopVm('conflict');
      await expectError(await send(client, 'pauseVm', { name: 'conflict' }), 'VM_STATE');
      await rejectsWith(client.resumeVm('conflict'), 'VM_STATE');
      await rejectsWith(client.verifyVm('conflict'), 'VM_STATE');
    } finally {
      await client.stopVm('conflict');
      await client.deleteVm('conflict');
    }
  });

  it('the client rethrows the host\'s own code for every error it is sent; an unknown code or a foreign body is HOST_ERROR', async () => {
    const { client } = A();
    // Same code, origin and details as the raw answer, for several codes.
    const pairs: [() => Promise<unknown>, () => Promise<Response>, FerryErrorCode][] = [
      [() => new HostClient(client.baseUrl, WRONG_TOKEN).host(), () => send(client, 'getHost', {}, { token: WRONG_TOKEN }), 'UNAUTHORIZED'],
      [() => client.vm('a b'), () => send(client, 'getVm', { name: 'a b' }), 'BAD_REQUEST'],
      [() => client.stopVm(NO_VM), () => send(client, 'stopVm', { name: NO_VM }), 'NOT_FOUND'],
      [() => client.createVm({ name: 'x', imageBase64: Buffer.from('not wasm').toString('base64'), memoryBytes: MiB }),
        () => send(client, 'createVm', {}, { body: JSON.stringify({ name: 'x', imageBase64: Buffer.from('not wasm').toString('base64'), memoryBytes: MiB }) }), 'IMAGE_NOT_WASM'],
    ];
    for (const [viaClient, viaRaw, code] of pairs) {
      const err = await rejectsWith(viaClient(), code);
      const raw = await expectError(await viaRaw(), code);
      assert.deepEqual({ ...err.details }, { ...(raw.details ?? {}), status: httpStatusFor(code) });
    }
    // A server that is not a Ferry host of this build.
    const foreign = createServer((req, res) => {
      const unknownCode = req.url === '/v1/host';
      res.writeHead(unknownCode ? 418 : 500, { 'content-type': 'application/json' });
      res.end(unknownCode ? JSON.stringify({ error: { code: 'TEAPOT', message: 'short and stout' } }) : '{"oops": true}');
    });
    await new Promise<void>((resolve) => { foreign.listen(0, '127.0.0.1', resolve); });
    try {
      const other = new HostClient(`http://127.0.0.1:${(foreign.address() as AddressInfo).port}`, AGENT_TOKEN);
      const teapot = await other.host().then(() => null, (e: unknown) => e);
      assert.ok(teapot instanceof FerryError);
      assert.deepEqual([teapot.code, teapot.origin, teapot.details.remoteCode, teapot.details.status], ['HOST_ERROR', 'remote', 'TEAPOT', 418]);
      const garbled = await other.listVms().then(() => null, (e: unknown) => e);
      assert.ok(garbled instanceof FerryError);
      assert.deepEqual([garbled.code, garbled.origin, garbled.details.status], ['HOST_ERROR', 'remote', 500]);
    } finally {
      await new Promise<void>((resolve) => { foreign.close(() => { resolve(); }); });
    }
    // A host that cannot be reached is a local HOST_UNREACHABLE.
    const gone = await new HostClient('http://127.0.0.1:9', AGENT_TOKEN).host().then(() => null, (e: unknown) => e);
    assert.ok(gone instanceof FerryError);
    assert.deepEqual([gone.code, gone.origin], ['HOST_UNREACHABLE', 'local']);
  });

  it('tickets: 201 with a ticket for this host\'s migration port, its outcome pending', async () => {
    const { client, agent } = A();
    const t = await expectOk(await send(client, 'createTicket', {}), 'createTicket') as { migrationId: string; port: number };
    assert.equal(t.port, agent.migrationPort);
    assert.deepEqual(await expectOk(await send(client, 'getIncoming', { id: t.migrationId }), 'getIncoming'), { migrationId: t.migrationId, outcome: { state: 'pending' } });
    // No body and no content type is an empty body, which is what the route takes.
    await expectOk(await client.raw('POST', routes.createTicket.path, { headers: { 'content-type': '' } }), 'createTicket');
  });
});

describe('host API v1: limits of a host', () => {
  let h: TestAgent | undefined;
  before(async () => { h = await startAgent('limits', { memoryLimitBytes: 8 * MiB }); });
  after(async () => { await h?.close(); });

  it(`answers 409 BUSY to a ticket beyond MAX_OPEN_TICKETS (${MAX_OPEN_TICKETS}) unused ones, and 507 CAPACITY beyond its memory`, async () => {
    assert.ok(h !== undefined);
    const { client } = h;
    for (let i = 0; i < MAX_OPEN_TICKETS; i++) await client.createTicket();
    await expectError(await send(client, 'createTicket', {}), 'BUSY');
    await rejectsWith(client.createTicket(), 'BUSY');
    await rejectsWith(client.createVm(await vmRequest('big', 'compute', { memoryBytes: 16 * MiB })), 'CAPACITY');
    await client.createVm(await vmRequest('fits', 'compute', { memoryBytes: 8 * MiB }));
    await rejectsWith(client.createVm(await vmRequest('one-more', 'compute', { memoryBytes: 64 * 1024 })), 'CAPACITY');
    assert.deepEqual((await client.listVms()).map((v) => v.name), ['fits']);
  });
});

describe('host API v1: a VM owned by a running migration', () => {
  let src: TestAgent | undefined;
  let dst: TestAgent | undefined;
  before(async () => { [src, dst] = await Promise.all([startAgent('src'), startAgent('dst')]); });
  after(async () => { await Promise.all([src?.close(), dst?.close()]); });

  it('answers 409 BUSY with the owner to every verb while it runs; cancel rolls back and frees the VM', async () => {
    assert.ok(src !== undefined && dst !== undefined);
    const a = src.client;
    const b = dst.client;
    const dstUrl = dst.agent.url;
    await a.createVm(await vmRequest('mover', 'dirtier', { memoryBytes: 32 * MiB, cmdline: 'hot=1MiB rate=200 fill=1 claim=all', start: true }));
    // 32 MiB of non-zero RAM at 2 MiB/s: pre-copy lasts far longer than this test needs. One data
    // channel, so that the bandwidth cap's wait for the frame in flight when it is cancelled (the
    // limiter's sleep is not cancelled with the job) keeps this process alive no more than ~2 s.
    const options = { bandwidthBytesPerSec: 2 * MiB, dataChannels: 1 };
    const started = await expectOk(await send(a, 'migrateVm', { name: 'mover' }, { body: JSON.stringify({ to: dstUrl, options }) }), 'migrateVm') as { migrationId: string; state: string };
    assert.equal(started.state, 'running');
    const id = started.migrationId;
    try {
      // Wait for pre-copy on the event stream: the first status, then the first progress in pre-copy.
      const events = a.migrationEvents(id);
      let first: string | null = null;
      for await (const e of events) {
        first ??= e.event;
        if (e.event === 'progress' && e.data.phase === 'precopy') break;
        assert.notEqual(e.event, 'done', 'the migration must not end on its own');
      }
      assert.equal(first, 'status');
      const status = await expectOk(await send(a, 'getMigration', { id }), 'getMigration') as { state: string; phase: string; vm: string };
      assert.deepEqual([status.state, status.phase, status.vm], ['running', 'precopy', 'mover']);
      const owner = (await a.vm('mover')).owner;
      assert.ok(owner !== null && owner.includes(id), `the VM view names its owner (${owner ?? 'null'})`);
      const verbs: [string, () => Promise<unknown>][] = [
        ['stop', () => a.stopVm('mover')], ['pause', () => a.pauseVm('mover')], ['resume', () => a.resumeVm('mover')],
        ['start', () => a.startVm('mover')], ['delete', () => a.deleteVm('mover')], ['verify', () => a.verifyVm('mover')],
        ['migrate', () => a.migrate('mover', { to: dstUrl })],
      ];
      for (const [verb, call] of verbs) {
        const err = await rejectsWith(call(), 'BUSY');
        assert.equal(err.details.owner, owner, `${verb}: details.owner`);
      }
      const raw = await expectError(await send(a, 'stopVm', { name: 'mover' }), 'BUSY');
      assert.equal(raw.details?.owner, owner);
      assert.deepEqual(((await a.vm('mover'))).state, 'running', 'nothing was done to the VM');
      const cancelling = await expectOk(await send(a, 'cancelMigration', { id }), 'cancelMigration') as { migrationId: string };
      assert.equal(cancelling.migrationId, id);
    } finally {
      await a.cancelMigration(id).catch(() => undefined);
    }
    const record = await a.waitForMigration(id, { timeoutMs: 30_000 });
    assert.equal(record.outcome, 'cancelled');
    assert.equal(record.error?.code, 'MIGRATION_CANCELLED');
    const view = await a.vm('mover');
    assert.deepEqual([view.state, view.owner, view.lastMigration?.migrationId], ['running', null, id]);
    assert.deepEqual(await b.listVms(), [], 'the target kept nothing');
    // Freed: verbs work again; the ended migration still answers, its stream at once with its record.
    assert.equal((await a.pauseVm('mover')).state, 'paused');
    assert.equal((await a.resumeVm('mover')).state, 'running');
    const ended = await a.migration(id);
    assert.deepEqual([ended.state, ended.record?.outcome], ['cancelled', 'cancelled']);
    const after: string[] = [];
    for await (const e of a.migrationEvents(id)) after.push(e.event === 'status' ? `status:${e.data.state}` : e.event);
    assert.deepEqual(after, ['status:cancelled']);
    assert.equal((await a.cancelMigration(id)).state, 'cancelled', 'cancelling an ended migration changes nothing');
  });

  it('a migration at full speed succeeds: the VM leaves the source and runs on the target', async () => {
    assert.ok(src !== undefined && dst !== undefined);
    const a = src.client;
    const b = dst.client;
    await a.createVm(await vmRequest('quick', 'dirtier', { memoryBytes: 4 * MiB, cmdline: 'hot=256KiB rate=200 check=1', start: true }));
    const { migrationId } = await a.migrate('quick', { to: dst.agent.url, token: AGENT_TOKEN });
    const record = await a.waitForMigration(migrationId, { timeoutMs: 30_000 });
    assert.equal(record.outcome, 'succeeded', JSON.stringify(record.error));
    assert.equal(record.verified, true);
    await rejectsWith(a.vm('quick'), 'NOT_FOUND');
    assert.equal((await b.vm('quick')).state, 'running');
    assert.equal((await b.verifyVm('quick')).selfcheck, 0);
    await b.stopVm('quick');
    await b.deleteVm('quick');
    await a.stopVm('mover');
    await a.deleteVm('mover');
  });
});

describe('host API v1: datastores', () => {
  let h: TestAgent | undefined;
  let base = '';
  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'ferry-api-ds-'));
    await Promise.all([mkdir(join(base, 'one')), mkdir(join(base, 'two'))]);
    h = await startAgent('ds', { datastores: [{ name: 'one', path: join(base, 'one') }, { name: 'two', path: join(base, 'two') }] });
  });
  after(async () => { await h?.close(); await rm(base, { recursive: true, force: true }); });

  it('GET /v1/datastores: each mounted datastore in mount order with its real path and space (statfs); 401 without the token', async () => {
    assert.ok(h !== undefined);
    const body = await expectOk(await send(h.client, 'listDatastores', {}), 'listDatastores') as { datastores: { name: string; path: string; spaceLeftBytes: number; totalBytes: number }[] };
    assert.deepEqual(body.datastores.map((d) => [d.name, d.path]), [['one', join(await realpath(base), 'one')], ['two', join(await realpath(base), 'two')]]);
    const fs = await statfs(base);
    for (const d of body.datastores) {
      assert.equal(d.totalBytes, fs.blocks * fs.bsize);
      assert.ok(d.spaceLeftBytes > 0 && d.spaceLeftBytes <= d.totalBytes);
    }
    assert.deepEqual((await h.client.listDatastores()).map((d) => d.name), ['one', 'two']);
    await expectError(await send(h.client, 'listDatastores', {}, { token: null }), 'UNAUTHORIZED');
    await rejectsWith(new HostClient(h.client.baseUrl, WRONG_TOKEN).listDatastores(), 'UNAUTHORIZED');
    assert.equal((await h.client.host()).hostId, h.agent.hostId);
  });

  it('POST /v1/datastores/{name}/stat: size and modification time of each path, in the order asked; NOT_FOUND for a missing file or datastore, refused outside it', async () => {
    assert.ok(h !== undefined);
    await writeFile(join(base, 'one', 'a.img'), Buffer.alloc(3000, 1));
    await mkdir(join(base, 'one', 'sub'), { recursive: true });
    const st = await stat(join(base, 'one', 'a.img'));
    const files = await h.client.statDatastoreFiles('one', ['a.img', 'sub']);
    assert.deepEqual(files, [{ path: 'a.img', kind: 'file', sizeBytes: 3000, modifiedMs: st.mtimeMs }, { path: 'sub', kind: 'directory', sizeBytes: files[1]?.sizeBytes ?? -1, modifiedMs: files[1]?.modifiedMs ?? -1 }]);
    await rejectsWith(h.client.statDatastoreFiles('one', ['nope.img']), 'NOT_FOUND');
    await rejectsWith(h.client.statDatastoreFiles('three', ['a.img']), 'NOT_FOUND');
    await rejectsWith(h.client.statDatastoreFiles('one', ['../two']), 'DATASTORE_PATH_INVALID');
    await rejectsWith(h.client.statDatastoreFiles('one', []), 'BAD_REQUEST');
  });

  it('a host with a bad datastore does not start: DATASTORE_INVALID for a duplicate name, a bad name, a missing path, a file', async () => {
    await writeFile(join(base, 'file'), '');
    const cases: [{ name: string; path: string }[], string][] = [
      [[{ name: 'x', path: join(base, 'one') }, { name: 'x', path: join(base, 'two') }], 'duplicate'],
      [[{ name: 'a b', path: join(base, 'one') }], 'name'],
      [[{ name: 'x', path: join(base, 'missing') }], 'missing'],
      [[{ name: 'x', path: join(base, 'file') }], 'not-directory'],
    ];
    for (const [datastores, reason] of cases) {
      const err = await startAgent('bad', { datastores }).then(async (a) => { await a.close(); return null; }, (e: unknown) => e);
      assert.ok(err instanceof FerryError, String(err));
      assert.deepEqual([err.code, err.details.reason], ['DATASTORE_INVALID', reason]);
    }
  });
});

/** Methods an OpenAPI path item may hold. */
const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

describe('OpenAPI document: every route the app answers is documented, every documented route is answered', () => {
  let h: TestAgent | undefined;
  before(async () => { h = await startAgent('doc'); });
  after(async () => { await h?.close(); });

  /** The app's generic "no route" answer (app.notFound), told apart from "no such VM" by its details, not its text. */
  async function isNoRoute(res: Response): Promise<boolean> {
    if (res.status !== 404) { await res.body?.cancel(); return false; }
    const body = errorBodySchema.parse(await res.json());
    assert.equal(body.error.code, 'NOT_FOUND');
    return body.error.details?.route === false;
  }

  it('is OpenAPI 3.x, served without a token, and lists exactly the routes the app serves and the client declares', async () => {
    assert.ok(h !== undefined);
    const res = await h.client.raw('GET', OPENAPI_PATH, { token: null });
    assert.equal(res.status, 200);
    const doc = await res.json() as { openapi: string; paths: Record<string, Record<string, unknown>> };
    assert.match(doc.openapi, /^3\.\d+\.\d+$/);
    assert.deepEqual(await h.client.openApi(), doc, 'the client reads the same document');
    const documented = Object.entries(doc.paths).flatMap(([path, item]) =>
      Object.keys(item).filter((m) => HTTP_METHODS.includes(m)).map((m) => `${m.toUpperCase()} ${path}`)).sort();

    // What the app answers, from the app itself: hono lists a route once per handler and
    // middleware; app.use entries have method ALL. The document does not list itself.
    const agent = h.agent;
    const app = buildHostApp({
      token: AGENT_TOKEN, vms: agent.vms, hostInfo: () => agent.hostInfo(), listDatastores: () => agent.datastores.list(),
      statDatastoreFiles: (name, paths) => agent.datastores.stat(name, paths),
      migrations: new MigrationService({
        hostName: 'doc', token: AGENT_TOKEN, vms: agent.vms, operations: agent.operations, datastores: agent.datastores, transport: tcpTransport, logger: silentLogger(),
        paths: agent.paths, brokeredOutcome: () => Promise.reject(new FerryError('INTERNAL', 'not called')),
      }),
      disks: agent.disks,
      issueTicket: () => Promise.reject(new FerryError('INTERNAL', 'not called')),
      paths: agent.paths,
      incomingOutcome: () => Promise.reject(new FerryError('INTERNAL', 'not called')),
      metrics: new HostMetrics(() => []),
      copies: agent.copies, incomingCopies: agent.incomingCopies, seeds: agent.seeds,
    });
    const answered = [...new Set(app.routes
      .filter((r) => r.method !== 'ALL')
      .map((r) => `${r.method} ${r.path.replace(/:(\w+)/g, '{$1}')}`))]
      .filter((r) => r !== `GET ${OPENAPI_PATH}`)
      .sort();
    assert.deepEqual(answered, documented, 'routes the app answers = routes the document lists');
    const declared = Object.values(routes).map((r) => `${r.method.toUpperCase()} ${r.path}`).sort();
    assert.deepEqual(declared, documented, 'routes of src/api/host-v1.ts = routes the document lists');
  });

  it('every documented route is answered by its handler on the real socket, never by "no route"', async () => {
    assert.ok(h !== undefined);
    const { client } = h;
    const doc = await client.openApi() as { paths: Record<string, Record<string, unknown>> };
    let checked = 0;
    for (const [template, item] of Object.entries(doc.paths)) {
      const path = template.replace('{name}', NO_VM).replace('{id}', NO_MIGRATION);
      for (const method of Object.keys(item).filter((m) => HTTP_METHODS.includes(m))) {
        const res = await client.raw(method.toUpperCase(), path, method === 'get' ? {} : { body: '{}' });
        assert.equal(await isNoRoute(res), false, `${method.toUpperCase()} ${template} is answered`);
        checked++;
      }
      // The marker is real: a method no route uses, on this path, is "no route". (Not any unlisted
      // method: GET /v1/migrations/incoming is GET /v1/migrations/{id} with a malformed id.)
      assert.ok(!('patch' in item));
      assert.equal(await isNoRoute(await client.raw('PATCH', path)), true, `PATCH ${template} is not a route`);
    }
    assert.equal(checked, Object.keys(routes).length);
    for (const path of ['/v1/nope', '/nope', `${routes.getVm.path.replace('{name}', NO_VM)}/nope`]) {
      assert.equal(await isNoRoute(await client.raw('GET', path)), true, `GET ${path} is not a route`);
    }
  });
});
