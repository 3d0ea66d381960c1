/**
 * Network file copies between real `ferry host` processes (docs/design/nfc.md): the remote form from
 * one host into another's datastore; a hand-off (stop on A at a boundary, epoch 2 on B, both mounting
 * the shared source and target directories); and the copying host killed (SIGKILL) mid-copy, after
 * which epoch 2 on another host resumes from the boundary the target's journal holds, once the dead
 * host's leases expire (short lease timing, host flags). Each ends with the target's bytes equal to
 * the source's and the digests the records report equal to ones computed here from the bytes.
 */
import { afterEach, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dropHosts, startHost, stopHost, until, type TestHost } from '../helpers/hosts.js';
import {
  assertCompleted, assertSameFiles, newCopyId, noStaging, underway, waitCopy, writeSourceFiles, type TestFileSpec,
} from '../helpers/copy-files.js';
import { isFerryError } from '../../src/lib/errors.js';
import { MIN_RATE_BYTES_PER_SEC } from '../../src/dataplane/rate-limiter.js';
import { COPY_START, NFC_CHUNK_BYTES, compareBoundaries, type Boundary, type CopyFile, type CopyJobRecord } from '../../src/nfc/plan.js';
import type { StartCopyRequest } from '../../src/api/copy-v1.js';
import type { LeaseTiming } from '../../src/storage/lease.js';

/**
 * Short leases: a killed host's leases are broken ~3.5 s after its last heartbeat. A copying host's
 * event loop does little synchronous work (a chunk's SHA-256 is a few ms), so 16 heartbeats per lease
 * leave a wide margin on a loaded machine.
 */
const LEASE: LeaseTiming = { durationMs: 3_000, renewIntervalMs: 200, clockSkewMs: 500 };
const LEASE_ARGS = ['--lease-duration', `${LEASE.durationMs}ms`, '--lease-renew', `${LEASE.renewIntervalMs}ms`, '--lease-clock-skew', `${LEASE.clockSkewMs}ms`];
/** A small file, one with holes and a short last chunk, and a large one: paced at MIN_RATE_BYTES_PER_SEC the copy runs for many seconds. */
const SPECS: readonly TestFileSpec[] = [
  { path: 'chain/base.vmdk', sizeBytes: 3 * NFC_CHUNK_BYTES + 999, holes: [1] },
  { path: 'chain/delta.vmdk', sizeBytes: 2 * NFC_CHUNK_BYTES },
  { path: 'images/big.img', sizeBytes: 24 * NFC_CHUNK_BYTES, holes: [5, 6, 7] },
];
/** Bound on a dead host's leases to be broken (a lease duration, the skew, and a loaded machine's slack). */
const LEASE_WAIT_MS = 30_000;

interface Rig {
  readonly base: string;
  readonly src: string;
  readonly dst: string;
  readonly files: CopyFile[];
  readonly hosts: TestHost[];
}

const rigs = new Map<string, Rig>();
afterEach(async (t) => {
  const r = rigs.get(t.name);
  rigs.delete(t.name);
  if (r !== undefined) await dropHosts(t.name, r.hosts, r.base);
});

/** The source and target directories with the files written, registered for clean-up before any host starts. */
async function rig(t: TestContext): Promise<Rig> {
  const base = await mkdtemp(join(tmpdir(), 'ferry-e2e-copy-'));
  const r: Rig = { base, src: await mkdtemp(join(base, 'src-')), dst: await mkdtemp(join(base, 'dst-')), files: [], hosts: [] };
  rigs.set(t.name, r);
  r.files.push(...await writeSourceFiles(r.src, SPECS));
  return r;
}

async function host(r: Rig, name: string, datastores: Record<string, string>): Promise<TestHost> {
  const args = [...Object.entries(datastores).flatMap(([n, path]) => ['--datastore', `${n}=${path}`]), ...LEASE_ARGS];
  const h = await startHost(name, { args });
  r.hosts.push(h);
  return h;
}

function local(r: Rig, copyId: string, epoch: number, rest: Partial<StartCopyRequest> = {}): StartCopyRequest {
  return { copyId, epoch, sourceDatastore: 'src', files: r.files, target: { form: 'local', datastore: 'dst' }, ...rest };
}

/** Stopped or killed part-way: past the start, before the end. */
function partWay(r: Rig, b: Boundary | null, what: string): Boundary {
  assert.ok(b !== null && compareBoundaries(b, COPY_START) > 0 && b.fileIndex < r.files.length, `${what} part-way (${JSON.stringify(b)})`);
  return b;
}

/**
 * A and B both mount the shared source and target directories; A copies (paced, so that it runs for many
 * seconds) and has acknowledged a first boundary when this returns.
 */
async function copyingOnA(t: TestContext): Promise<{ r: Rig; a: TestHost; b: TestHost; copyId: string }> {
  const r = await rig(t);
  const [a, b] = await Promise.all([host(r, 'a', { src: r.src, dst: r.dst }), host(r, 'b', { src: r.src, dst: r.dst })]);
  const copyId = newCopyId();
  await a.client.startCopy(local(r, copyId, 1, { rateBytesPerSec: 2 * MIN_RATE_BYTES_PER_SEC }));
  await underway(a.client, copyId);
  return { r, a, b, copyId };
}

async function assertDone(r: Rig, record: CopyJobRecord, before: readonly CopyJobRecord[] = []): Promise<void> {
  const digests = await assertSameFiles(r.src, r.dst, r.files);
  assertCompleted(record, digests, r.files, before);
  await noStaging(r.dst);
}

describe('e2e: network file copies between host processes', () => {
  it('remote form: A sends its files into B\'s datastore with B\'s ticket; byte-equal, digests equal', async (t) => {
    const r = await rig(t);
    const [a, b] = await Promise.all([host(r, 'a', { src: r.src }), host(r, 'b', { dst: r.dst })]);
    const copyId = newCopyId();
    const ticket = await b.client.createCopyTicket({ copyId, epoch: 1, datastore: 'dst', files: r.files });
    assert.match(b.log(), new RegExp(`copy-port=${ticket.port}\\b`));
    await a.client.startCopy({ ...local(r, copyId, 1), target: { form: 'remote', host: 'b', address: { host: '127.0.0.1', port: ticket.port }, ticket } });
    await assertDone(r, await waitCopy(a.client, copyId));
    assert.equal((await b.client.copyJournal(copyId, 'dst')).complete, true);
  });

  it('hand-off: stop on A ends "stopped" at a boundary the target holds; epoch 2 on B resumes there; byte-equal, digests equal', async (t) => {
    const { r, a, b, copyId } = await copyingOnA(t);
    await a.client.stopCopy(copyId);
    const first = await waitCopy(a.client, copyId);
    assert.equal(first.outcome, 'stopped', JSON.stringify(first.error));
    const at = partWay(r, first.to, 'A stopped');
    assert.deepEqual((await b.client.copyJournal(copyId, 'dst')).boundary, at);
    // A let go of the source's leases before its record said stopped: B's start is not refused.
    await b.client.startCopy(local(r, copyId, 2));
    const second = await waitCopy(b.client, copyId);
    assert.deepEqual(second.from, at, 'B resumed where A stopped');
    await assertDone(r, second, [first]);
  });

  it('the copying host killed mid-copy: epoch 2 on another host resumes from the target journal\'s boundary once the dead host\'s leases expire', async (t) => {
    const { r, a, b, copyId } = await copyingOnA(t);
    await stopHost(a, 'SIGKILL');
    const journal = await b.client.copyJournal(copyId, 'dst');
    const at = partWay(r, journal.boundary, 'the journal');
    assert.deepEqual([journal.epoch, journal.complete], [1, false]);
    // A's leases (the source files', the staging files') outlive it by a lease duration: until then B's
    // start is refused (DISK_LOCKED), or its run fails opening the sink — and the next try is a new epoch,
    // as the center's would be.
    let epoch = 2;
    let record: CopyJobRecord | null = null;
    await until(async () => {
      try {
        await b.client.startCopy(local(r, copyId, epoch));
      } catch (err) {
        if (isFerryError(err, 'DISK_LOCKED')) return false;
        throw err;
      }
      const ended = await waitCopy(b.client, copyId);
      if (ended.outcome === 'failed' && ended.error?.code === 'DISK_LOCKED') { epoch++; return false; }
      record = ended;
      return true;
    }, 'B to take the dead host\'s copy over', LEASE_WAIT_MS);
    assert.ok(record !== null);
    const done: CopyJobRecord = record;
    assert.deepEqual(done.from, at, 'B resumed at the journal\'s boundary');
    assert.equal((await b.client.copyJournal(copyId, 'dst')).epoch, epoch);
    await assertDone(r, done);
  });
});
