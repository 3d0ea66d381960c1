/**
 * A host's network file copies through its API (src/host/copy-service.ts, copy-incoming.ts), with real
 * in-process agents on 127.0.0.1, real files in temp directories and the real HostClient: the local
 * form; the remote form between two agents; a hand-off (stop on one agent at a boundary, epoch + 1 on
 * another mounting the same source and target directories, which resumes there); the idempotent start,
 * BUSY, unknown datastores, cancel, and a running VM's disk refused. Every copy ends with the target's
 * bytes compared to the source's and the digests compared to ones computed here.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError, type FerryErrorCode } from '../../src/lib/errors.js';
import { MiB } from '../../src/lib/units.js';
import { MIN_RATE_BYTES_PER_SEC } from '../../src/dataplane/rate-limiter.js';
import { COPY_START, MAX_COPY_FILES, MAX_COPY_FILE_BYTES, NFC_CHUNK_BYTES, compareBoundaries, type CopyFile } from '../../src/nfc/plan.js';
import type { StartCopyRequest } from '../../src/api/copy-v1.js';
import { MAX_COPY_BODY_BYTES, MAX_SMALL_BODY_BYTES, routes, type ErrorBody } from '../../src/api/host-v1.js';
import { MAX_DATASTORE_PATH_BYTES } from '../../src/lib/limits.js';
import { startAgent, type TestAgent } from '../helpers/agents.js';
import { vmRequest } from '../helpers/guests.js';
import { sampleValue } from '../helpers/metrics.js';
import { until } from '../helpers/hosts.js';
import { TARGET_VIRTUAL_ADDRESS, pathSpecPair } from '../helpers/path-specs.js';
import type { PathEndpoint } from '../../src/dataplane/path/spec.js';
import {
  COPY_TIMEOUT_MS, assertCompleted, assertSameFiles, newCopyId, noStaging, planEntry, underway, waitCopy, writeSourceFiles, type TestFileSpec,
} from '../helpers/copy-files.js';

/** Two files with holes and a short last chunk, and one without: what a disk chain and an image look like. */
const SPECS: readonly TestFileSpec[] = [
  { path: 'vms/web/disk.vmdk', sizeBytes: 5 * NFC_CHUNK_BYTES + 12_345, holes: [1, 2] },
  { path: 'vms/web/disk-s001.vmdk', sizeBytes: 2 * NFC_CHUNK_BYTES + 7 },
  { path: 'images/base.img', sizeBytes: 3 * NFC_CHUNK_BYTES, holes: [0] },
];
/** A file large enough that a copy paced at MIN_RATE_BYTES_PER_SEC runs for many seconds: it is still running when the test acts on it. */
const SLOW_SPEC: TestFileSpec = { path: 'big.img', sizeBytes: 24 * NFC_CHUNK_BYTES };
/**
 * A paced copy: a one-chunk file first, whose finish is a boundary past the start early on (paced chunks
 * may be acknowledged out of order, so within one file the durable boundary can lag), then SLOW_SPEC.
 */
const SLOW_SPECS: readonly TestFileSpec[] = [{ path: 'first.img', sizeBytes: NFC_CHUNK_BYTES }, SLOW_SPEC];

let base = '';
const agents: TestAgent[] = [];
before(async () => { base = await mkdtemp(join(tmpdir(), 'ferry-copy-service-')); });
afterEach(async () => { for (const a of agents.splice(0)) await a.close(); });
after(async () => { await rm(base, { recursive: true, force: true }); });

async function dir(name: string): Promise<string> { return mkdtemp(join(base, `${name}-`)); }

async function agent(name: string, datastores: Record<string, string>): Promise<TestAgent> {
  const a = await startAgent(name, { datastores: Object.entries(datastores).map(([n, path]) => ({ name: n, path })) });
  agents.push(a);
  return a;
}

function localCopy(copyId: string, files: readonly CopyFile[], rest: Partial<StartCopyRequest> = {}): StartCopyRequest {
  return { copyId, epoch: 1, sourceDatastore: 'src', files: [...files], target: { form: 'local', datastore: 'dst' }, ...rest };
}

async function rejectsWith(p: Promise<unknown>, code: FerryErrorCode): Promise<FerryError> {
  const err = await p.then(() => null, (e: unknown) => e);
  assert.ok(err instanceof FerryError, `a FerryError, not ${String(err)}`);
  assert.equal(err.code, code, err.message);
  assert.equal(err.origin, 'remote');
  return err;
}

/** Agent a copies SLOW_SPECS from src to dst at MIN_RATE_BYTES_PER_SEC, and has acknowledged a first boundary. */
async function slowLocalCopy(): Promise<{ srcDir: string; dstDir: string; files: CopyFile[]; a: TestAgent; copyId: string }> {
  const [srcDir, dstDir] = [await dir('src'), await dir('dst')];
  const files = await writeSourceFiles(srcDir, SLOW_SPECS);
  const a = await agent('a', { src: srcDir, dst: dstDir });
  const copyId = newCopyId();
  await a.client.startCopy(localCopy(copyId, files, { rateBytesPerSec: MIN_RATE_BYTES_PER_SEC }));
  await underway(a.client, copyId);
  return { srcDir, dstDir, files, a, copyId };
}

/** Agent a mounts the source directory (SPECS written), agent b the target: the remote form's two hosts. */
async function senderAndReceiver(): Promise<{ srcDir: string; dstDir: string; files: CopyFile[]; a: TestAgent; b: TestAgent; copyId: string }> {
  const [srcDir, dstDir] = [await dir('src'), await dir('dst')];
  const files = await writeSourceFiles(srcDir, SPECS);
  return { srcDir, dstDir, files, a: await agent('a', { src: srcDir }), b: await agent('b', { dst: dstDir }), copyId: newCopyId() };
}

describe('copy service: the local form', () => {
  it('copies every file into the target datastore, byte-equal, with the digests of their bytes; the journal says complete; the same start again answers its status', async () => {
    const [srcDir, dstDir] = [await dir('src'), await dir('dst')];
    const files = await writeSourceFiles(srcDir, SPECS);
    const a = await agent('a', { src: srcDir, dst: dstDir });
    const copyId = newCopyId();
    const started = await a.client.startCopy(localCopy(copyId, files));
    assert.deepEqual([started.copyId, started.epoch], [copyId, 1]);
    const record = await waitCopy(a.client, copyId);
    assertCompleted(record, await assertSameFiles(srcDir, dstDir, files), files);
    assert.deepEqual([record.epoch, record.from, record.to], [1, COPY_START, { fileIndex: files.length, offsetBytes: 0 }]);
    await noStaging(dstDir);
    assert.deepEqual(await a.client.copyJournal(copyId, 'dst'), { copyId, boundary: { fileIndex: files.length, offsetBytes: 0 }, epoch: 1, complete: true });
    // Idempotent: the same copy id and epoch answers the run's status (the record), starting nothing.
    const again = await a.client.startCopy(localCopy(copyId, files));
    assert.deepEqual(again.record, record);
    assert.deepEqual((await a.client.copy(copyId)).record, record);
    const metrics = await a.client.metrics();
    assert.deepEqual([sampleValue(metrics, 'ferry_copies_running'), sampleValue(metrics, 'ferry_copies_total', { outcome: 'completed' }), sampleValue(metrics, 'ferry_copy_bytes_total')], [0, 1, record.sentBytes]);
  });

  it('refuses unknown datastores (NOT_FOUND naming the mounted ones), a plan listing a file twice, and the same store as source and target; nothing is written', async () => {
    const [srcDir, dstDir] = [await dir('src'), await dir('dst')];
    const files = await writeSourceFiles(srcDir, SPECS.slice(0, 1));
    const a = await agent('a', { src: srcDir, dst: dstDir, again: srcDir });
    const copyId = newCopyId();
    const err = await rejectsWith(a.client.startCopy(localCopy(copyId, files, { sourceDatastore: 'nope' })), 'NOT_FOUND');
    assert.match(err.message, /src, dst, again/);
    await rejectsWith(a.client.startCopy(localCopy(copyId, files, { target: { form: 'local', datastore: 'nope' } })), 'NOT_FOUND');
    await rejectsWith(a.client.startCopy(localCopy(copyId, [...files, ...files])), 'INVALID_ARGUMENT');
    await rejectsWith(a.client.startCopy(localCopy(copyId, files, { target: { form: 'local', datastore: 'again' } })), 'INVALID_ARGUMENT');
    await rejectsWith(a.client.createCopyTicket({ copyId, epoch: 1, datastore: 'nope', files }), 'NOT_FOUND');
    await rejectsWith(a.client.copyJournal(copyId, 'nope'), 'NOT_FOUND');
    // A refused start left no run behind and wrote nothing.
    await rejectsWith(a.client.copy(copyId), 'NOT_FOUND');
    assert.deepEqual((await readdir(dstDir)).filter((n) => !n.startsWith('.ferry-datastore')), []);
  });

  it('a plan of MAX_COPY_FILES files with the longest paths is read (a body far over MAX_SMALL_BODY_BYTES); a body over MAX_COPY_BODY_BYTES is 413', async () => {
    const a = await agent('a', {});
    const files = Array.from({ length: MAX_COPY_FILES }, (_, i) => ({ path: `${String(i).padStart(4, '0')}${'p'.repeat(MAX_DATASTORE_PATH_BYTES - 4)}`, sizeBytes: MAX_COPY_FILE_BYTES, modifiedMs: Date.now() }));
    const req = localCopy(newCopyId(), files);
    const body = JSON.stringify(req);
    assert.ok(Buffer.byteLength(body) > 10 * MAX_SMALL_BODY_BYTES && Buffer.byteLength(body) <= MAX_COPY_BODY_BYTES, `${Buffer.byteLength(body)} bytes`);
    // Read and validated: refused for what it names (this host mounts no datastore), not for its size.
    await rejectsWith(a.client.startCopy(req), 'NOT_FOUND');
    await rejectsWith(a.client.createCopyTicket({ copyId: req.copyId, epoch: 1, datastore: 'dst', files }), 'NOT_FOUND');
    const over = await a.client.raw('POST', routes.startCopy.path, { body: JSON.stringify({ ...req, pad: 'x'.repeat(MAX_COPY_BODY_BYTES) }) });
    assert.deepEqual([over.status, ((await over.json()) as ErrorBody).error.code], [413, 'REQUEST_TOO_LARGE']);
  });

  it('another epoch while one runs is BUSY; cancel ends it (cancelled, the journal kept at its boundary); then the next epoch resumes there and completes', async () => {
    const { srcDir, dstDir, files, a, copyId } = await slowLocalCopy();
    const busy = await rejectsWith(a.client.startCopy(localCopy(copyId, files, { epoch: 2 })), 'BUSY');
    assert.equal(busy.details['epoch'], 1);
    assert.equal((await a.client.cancelCopy(copyId)).epoch, 1);
    const cancelled = await waitCopy(a.client, copyId);
    assert.equal(cancelled.outcome, 'cancelled');
    assert.ok(compareBoundaries(cancelled.to, COPY_START) > 0, 'it had got somewhere');
    const journal = await a.client.copyJournal(copyId, 'dst');
    assert.deepEqual([journal.complete, journal.epoch], [false, 1]);
    assert.ok(journal.boundary !== null && compareBoundaries(journal.boundary, cancelled.to) >= 0, 'the journal holds at least the boundary the record names');
    // The run ended: the next epoch starts, from the journal's boundary.
    await a.client.startCopy(localCopy(copyId, files, { epoch: 2 }));
    const done = await waitCopy(a.client, copyId);
    assert.deepEqual(done.from, journal.boundary);
    assertCompleted(done, await assertSameFiles(srcDir, dstDir, files), files);
  });

  it('host shutdown cancels its running copies (cancelled, the target journal kept for another host to resume)', async () => {
    const { srcDir, dstDir, a, copyId } = await slowLocalCopy();
    const run = a.agent.copies.run(copyId);
    await a.agent.close();
    const record = await run.done;
    assert.deepEqual([record.outcome, record.error?.code], ['cancelled', 'CANCELLED']);
    const b = await agent('b', { src: srcDir, dst: dstDir });
    const journal = await b.client.copyJournal(copyId, 'dst');
    assert.deepEqual([journal.boundary, journal.complete], [record.to, false]);
  });

  it('refuses to copy the disk a running VM writes (DISK_LOCKED)', async () => {
    const [srcDir, dstDir] = [await dir('src'), await dir('dst')];
    const a = await agent('a', { src: srcDir, dst: dstDir });
    await a.client.createVm(await vmRequest('writer', 'compute', { memoryBytes: 2 * MiB, start: true, disk: { datastore: 'src', path: 'writer.vmdk', sizeBytes: 8 * MiB } }));
    try {
      await rejectsWith(a.client.startCopy(localCopy(newCopyId(), [await planEntry(srcDir, 'writer.vmdk')])), 'DISK_LOCKED');
    } finally {
      await a.client.stopVm('writer');
      await a.client.deleteVm('writer');
    }
  });
});

describe('copy service: the remote form', () => {
  it('one agent sends, another receives into its datastore (a ticket from POST /v1/copies/incoming, on its copy port): byte-equal, digests equal', async () => {
    const { srcDir, dstDir, files, a, b, copyId } = await senderAndReceiver();
    const ticket = await b.client.createCopyTicket({ copyId, epoch: 1, datastore: 'dst', files });
    assert.equal(ticket.port, (await b.client.host()).copyPort);
    await a.client.startCopy({
      copyId, epoch: 1, sourceDatastore: 'src', files, streams: 3,
      target: { form: 'remote', host: 'b', address: { host: '127.0.0.1', port: ticket.port }, ticket },
    });
    const record = await waitCopy(a.client, copyId);
    assertCompleted(record, await assertSameFiles(srcDir, dstDir, files), files);
    await noStaging(dstDir);
    assert.equal((await b.client.copyJournal(copyId, 'dst')).complete, true);
  });
});

describe('copy service: the remote form over the copy\'s virtual path', () => {
  it('the ticket listens on the receiver\'s virtual address; the sender dials it over the path; both ends of the path go when the copy ends', async () => {
    const { srcDir, dstDir, files, a, b, copyId } = await senderAndReceiver();
    const endpoint = async (h: TestAgent): Promise<PathEndpoint> => {
      const e = (await h.client.listPaths()).drivers[0]?.endpoint;
      assert.ok(e !== undefined, `${h.agent.name} offers a path driver`);
      return e;
    };
    const spec = pathSpecPair({ sourceEndpoint: await endpoint(a), targetEndpoint: await endpoint(b) });
    await a.client.putPath(spec.source);
    await b.client.putPath(spec.target);
    const pathId = spec.source.pathId;
    const ticket = await b.client.createCopyTicket({ copyId, epoch: 1, datastore: 'dst', files, pathId });
    // Asked again (a center that retried): the same ticket, and the path is not held twice for it.
    assert.deepEqual((await b.client.createCopyTicket({ copyId, epoch: 1, datastore: 'dst', files, pathId })).ticket, ticket.ticket);
    assert.ok(ticket.port >= spec.target.firstPort && ticket.port < spec.target.firstPort + spec.target.portCount, `a port of the path's grant (${ticket.port})`);
    await a.client.startCopy({
      copyId, epoch: 1, sourceDatastore: 'src', files,
      target: { form: 'remote', host: 'b', address: { host: TARGET_VIRTUAL_ADDRESS, port: ticket.port }, ticket, pathId },
    });
    const record = await waitCopy(a.client, copyId);
    assertCompleted(record, await assertSameFiles(srcDir, dstDir, files), files);
    // The source's end goes with the run (before its record is told); the receiver's once the copy's sessions ended.
    assert.deepEqual((await a.client.listPaths()).paths, []);
    await until(async () => (await b.client.listPaths()).paths.length === 0, 'the receiver\'s end of the path to go', COPY_TIMEOUT_MS);
  });
});

describe('copy service: a hand-off between two agents on shared datastores', () => {
  it('stop on A ends "stopped" at a boundary; epoch 2 on B resumes there and completes: byte-equal, digests equal, the two ranges adjoin', async () => {
    const [srcDir, dstDir] = [await dir('src'), await dir('dst')];
    const files = await writeSourceFiles(srcDir, [...SPECS, SLOW_SPEC]);
    const a = await agent('a', { src: srcDir, dst: dstDir });
    // B's own names for the same two stores: the center tells each host its names.
    const b = await agent('b', { shared: srcDir, out: dstDir });
    const copyId = newCopyId();
    await a.client.startCopy(localCopy(copyId, files, { rateBytesPerSec: 4 * MIN_RATE_BYTES_PER_SEC }));
    await underway(a.client, copyId);
    assert.equal((await a.client.stopCopy(copyId)).epoch, 1);
    const first = await waitCopy(a.client, copyId);
    assert.equal(first.outcome, 'stopped', JSON.stringify(first.error));
    assert.ok(compareBoundaries(first.to, COPY_START) > 0 && first.to.fileIndex < files.length, `stopped part-way (${JSON.stringify(first.to)})`);
    assert.deepEqual((await b.client.copyJournal(copyId, 'out')).boundary, first.to, 'the target journal holds the boundary A stopped at');
    await b.client.startCopy({ copyId, epoch: 2, sourceDatastore: 'shared', files, target: { form: 'local', datastore: 'out' } });
    const second = await waitCopy(b.client, copyId);
    assert.deepEqual(second.from, first.to, 'B resumed where A stopped');
    const digests = await assertSameFiles(srcDir, dstDir, files);
    // B's record names every file (those A finished from the journal); A's, those A finished: all with the digests of their bytes.
    assertCompleted(second, digests, files, [first]);
    await noStaging(dstDir);
    // A stale start of epoch 1 on A again is answered from A's record; epoch 1 elsewhere would be fenced by the journal.
    assert.equal((await a.client.startCopy(localCopy(copyId, files))).record?.outcome, 'stopped');
  });
});
