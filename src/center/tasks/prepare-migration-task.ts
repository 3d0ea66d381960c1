/**
 * The `vm.prepare-migration` task (docs/design/cross-site.md): ahead of a cross-site migration, snapshot
 * the running VM's disk (its top becomes a read-only base, a new delta takes the writes), copy the bases
 * to a datastore of the target site with a child `copy` task while the VM runs on, and record them as
 * seeds on a host of that site that mounts the datastore. A later `vm.migrate --to-site` sends the disk
 * to that datastore, and the target skips the seeded bases whose content IDs match.
 *
 * Recovery: the task checkpoints the VM's top before it asks for the snapshot (a successor that finds
 * another top knows the snapshot was taken and does not take a second), the snapshot once taken, and the
 * child copy's id before following it (a successor follows the same copy). Cancel cancels the child copy;
 * the snapshot stays (the VM runs on its new delta, the bases are plain read-only levels of its chain), and
 * the task's phase says so, as does a failure's message.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { FerryError, errorMessage, isFerryError, isFerryErrorCode } from '../../lib/errors.js';
import { formatBytes } from '../../lib/units.js';
import type { DiskChainView } from '../../api/disk-v1.js';
import type { HostClient } from '../../api/host-client.js';
import type { PrepareMigrationResult } from '../../api/center-v1.js';
import type { SeedLevel } from '../../storage/seed-manifest.js';
import { copiedFileSchema } from '../../nfc/plan.js';
import type { HostControl } from '../host-control.js';
import type { EventWakeups } from '../events.js';
import type { CenterStore } from '../store/store.js';
import type { JsonValue, Task } from '../store/model.js';
import { prepareMigrationParamsSchema, readStored, vmSubject, type PrepareMigrationParams } from './kinds.js';
import type { TaskContext, TaskHandler } from './workers.js';
import { copyJournalSchema, enqueueCopy } from './copy-plan.js';
import { prepareSource, spaceLeft, targetDatastore, type PrepareSource, type SiteDatastore } from './prepare-plan.js';

/** How often the task looks at its child copy. */
export const PREPARE_FOLLOW_MS = 250;
/** After a cancel, how long the task waits for its child copy to end before it ends itself (the copy's own cancel goes on). */
export const PREPARE_CANCEL_WAIT_MS = 60_000;
/** The task's progress: the snapshot is the first 5 %, the copy up to 95 %, the seeds' record the rest. */
const SNAPSHOT_SHARE = 0.05;
const COPY_SHARE = 0.9;

const checkpointSchema = z.object({
  datastoreId: z.string(),
  /** The VM's top before the snapshot was asked for. */
  topBefore: z.string(),
  /** The snapshot, once taken: the new top and the bases below it (base first). */
  snapshot: z.object({ top: z.string(), bases: z.array(z.string()) }).strict().optional(),
  /** The child copy (null: every base was seeded already), once queued. */
  copyTaskId: z.number().int().positive().nullable().optional(),
}).strict();
type Checkpoint = z.infer<typeof checkpointSchema>;
/** The checkpoint as stored JSON (absent fields left out). */
const asJson = (cp: Checkpoint): JsonValue => JSON.parse(JSON.stringify(cp)) as JsonValue;

const copyResultSchema = z.object({ files: z.array(copiedFileSchema), sentBytes: z.number() }).passthrough();

export interface PrepareMigrationTaskDeps {
  readonly store: CenterStore;
  readonly hosts: HostControl;
  readonly wakeups: EventWakeups;
  readonly event: (kind: string, subject: string, payload: JsonValue) => Promise<void>;
}

/** One base of the chain (base first), as the host's chain route shows it. */
interface Base { readonly path: string; readonly cid: string; readonly parentCid: string }

export function prepareMigrationTask(d: PrepareMigrationTaskDeps): TaskHandler {
  return async (ctx) => {
    const params = readStored(prepareMigrationParamsSchema, ctx.task.params, 'parameters');
    if (ctx.stopReason() === 'cancel') throw new FerryError('CANCELLED', 'cancelled before it started');
    const source = await prepareSource(d.store, params.vm, params.request.toSite);
    const src = d.hosts.client(source.host);
    const stored = checkpointSchema.safeParse(ctx.task.checkpoint);
    let cp: Checkpoint;
    let target: SiteDatastore;
    if (stored.success) {
      cp = stored.data;
      target = await targetDatastore(d.store, params.request.toSite, cp.datastoreId);
    } else {
      target = await targetDatastore(d.store, params.request.toSite, params.request.datastore, spaceLeft(d.hosts));
      cp = { datastoreId: target.datastore.id, topBefore: source.disk.path };
      await ctx.checkpoint(asJson(cp));
    }
    const where = `${params.request.toSite}:${target.datastore.name}`;
    const chain = await snapshotOnce(ctx, src, params.vm, cp);
    cp = { ...cp, snapshot: { top: chain.top, bases: chain.bases.map((b) => b.path) } };
    if (stored.data?.snapshot === undefined) await ctx.checkpoint(asJson(cp));
    await ctx.progress(SNAPSHOT_SHARE, `${params.vm}: snapshot taken (runs on ${chain.top}); ${chain.bases.length} base(s) to seed on ${where}`);
    return await seed(d, ctx, { params, source, target, where, chain, cp });
  };
}

/** The chain after the snapshot: taken now, or found taken (a successor), never twice. */
async function snapshotOnce(ctx: TaskContext, src: HostClient, vm: string, cp: Checkpoint): Promise<{ top: string; bases: Base[]; capacityBytes: number }> {
  if (cp.snapshot === undefined) {
    const before = await src.diskChain(vm);
    // A successor that finds another top than the one checkpointed: the first worker's snapshot was taken.
    if (before.chain[0]?.path === cp.topBefore) {
      await ctx.progress(0.01, `${vm}: taking a snapshot of the disk (the top becomes a read-only base)`);
      await src.snapshotVm(vm);
    }
  }
  return chainOf(await src.diskChain(vm), vm);
}

function chainOf(view: DiskChainView, vm: string): { top: string; bases: Base[]; capacityBytes: number } {
  const top = view.chain[0];
  if (top === undefined || view.chain.length < 2) throw new FerryError('INTERNAL', `VM ${vm}'s disk chain has no base below its top after the snapshot`);
  // Every level below the top: read-only, their CIDs fixed. Base first.
  const bases = view.chain.slice(1).reverse().map((l) => ({ path: l.path, cid: l.cid, parentCid: l.parentCid }));
  return { top: top.path, bases, capacityBytes: view.capacityBytes };
}

interface SeedRun {
  readonly params: PrepareMigrationParams;
  readonly source: PrepareSource;
  readonly target: SiteDatastore;
  readonly where: string;
  readonly chain: { readonly top: string; readonly bases: readonly Base[]; readonly capacityBytes: number };
  readonly cp: Checkpoint;
}

/** Copy the bases not seeded yet, then record all of them as seeds. */
async function seed(d: PrepareMigrationTaskDeps, ctx: TaskContext, run: SeedRun): Promise<JsonValue> {
  const { params, source, target, chain } = run;
  const recorder = target.mounts[0];
  if (recorder === undefined) throw new FerryError('HOST_STATE', `no host of site ${params.request.toSite} that mounts ${target.datastore.name} is in service`);
  const seeder = d.hosts.client(recorder.host);
  const already = await seededLevels(seeder, recorder.mountName, params.vm, source.datastoreId);
  const toCopy = chain.bases.filter((b) => already.get(b.path)?.cid !== b.cid);
  let copyTaskId = run.cp.copyTaskId;
  if (copyTaskId === undefined) {
    copyTaskId = toCopy.length === 0 ? null : (await enqueueCopy(d.store, { files: toCopy.map((b) => b.path), from: source.datastoreId, to: target.datastore.id }, `task:${ctx.task.id}`)).id;
    d.wakeups.poke();
    await ctx.checkpoint(asJson({ ...run.cp, copyTaskId }));
  }
  const copied = copyTaskId === null ? null : await followCopy(d, ctx, copyTaskId, run, toCopy.length);
  const files = new Map((copied?.files ?? []).map((f) => [f.path, f]));
  const levels: SeedLevel[] = chain.bases.map((b) => {
    const f = files.get(b.path);
    const kept = already.get(b.path);
    if (f !== undefined) return { path: b.path, cid: b.cid, parentCid: b.parentCid, capacityBytes: chain.capacityBytes, fileBytes: f.sizeBytes, digest: f.sourceDigest, source: { datastoreId: source.datastoreId, path: b.path } };
    if (kept !== undefined && kept.cid === b.cid) return kept;
    throw new FerryError('INTERNAL', `base ${b.path} was neither copied nor seeded before`);
  });
  await ctx.progress(SNAPSHOT_SHARE + COPY_SHARE, `${params.vm}: recording ${levels.length} seed(s) on ${recorder.host.name}:${recorder.mountName}`);
  try {
    await seeder.putSeeds(recorder.mountName, params.vm, { levels, taskId: ctx.task.id });
  } catch (err) {
    throw new FerryError(isFerryError(err) ? err.code : 'HOST_ERROR', `the bases were copied to ${run.where}, but host ${recorder.host.name} did not record them as seeds: ${errorMessage(err)}; ${snapshotStays(run)}`);
  }
  const result: PrepareMigrationResult = {
    vm: params.vm, toSite: params.request.toSite, datastore: target.datastore.name, datastoreId: target.datastore.id,
    snapshot: { top: chain.top, bases: chain.bases.map((b) => b.path) },
    seeds: levels.map((l) => ({ path: l.path, cid: l.cid, digest: l.digest, fileBytes: l.fileBytes })),
    copyTaskId, copiedBytes: copied?.sentBytes ?? 0,
  };
  await d.event('vm.prepared', vmSubject(params.vm), { vm: params.vm, toSite: result.toSite, datastoreId: result.datastoreId, host: recorder.host.name, seeds: levels.length, taskId: ctx.task.id });
  return result;
}

/** What the datastore seeds already for this VM (from this source datastore), by path; none if it has no manifest. */
async function seededLevels(client: HostClient, datastore: string, vm: string, sourceId: string): Promise<Map<string, SeedLevel>> {
  try {
    const view = await client.seeds(datastore, vm);
    return new Map(view.manifest.levels.filter((l) => l.source.datastoreId === sourceId).map((l) => [l.path, l]));
  } catch (err) {
    if (isFerryError(err, 'NOT_FOUND')) return new Map();
    throw err;
  }
}

const snapshotStays = (run: SeedRun): string => `the snapshot stays: VM ${run.params.vm} runs on ${run.chain.top} over its read-only base(s) ${run.chain.bases.map((b) => b.path).join(', ')}`;

/** Follow the child copy to its end, mirroring its progress; cancel cancels it. Answers its result. */
async function followCopy(d: PrepareMigrationTaskDeps, ctx: TaskContext, copyTaskId: number, run: SeedRun, count: number): Promise<z.infer<typeof copyResultSchema>> {
  let cancelledAtMs: number | null = null;
  for (;;) {
    const t = await d.store.getTask(copyTaskId);
    if (t.state === 'succeeded') {
      const r = copyResultSchema.safeParse(t.result);
      if (!r.success) throw new FerryError('STORE_IO', `copy task ${copyTaskId} succeeded with a result this center does not understand`);
      return r.data;
    }
    const ended = t.state === 'failed' || t.state === 'cancelled';
    // A cancel ends the task once the copy ended — or, bounded, while the copy's own cancel goes on.
    if (cancelledAtMs !== null && (ended || performance.now() - cancelledAtMs >= PREPARE_CANCEL_WAIT_MS)) {
      const how = ended ? t.state : 'still stopping';
      await ctx.progress(0, `cancelled: copy task ${copyTaskId} ${how}; ${snapshotStays(run)}`);
      throw new FerryError('CANCELLED', `cancelled (copy task ${copyTaskId} ${how}); ${snapshotStays(run)}`);
    }
    if (ended) {
      const code = t.state === 'cancelled' ? 'CANCELLED' : t.error !== null && isFerryErrorCode(t.error.code) ? t.error.code : 'INTERNAL';
      throw new FerryError(code, `copy task ${copyTaskId} of the bases ${t.state}${t.error !== null ? `: ${t.error.message}` : ''}; ${snapshotStays(run)}`);
    }
    const stop = ctx.stopReason();
    if (stop === 'lost' || stop === 'shutdown') throw new FerryError('CANCELLED', `stopped following copy task ${copyTaskId} (${stop}): a successor follows it`);
    if (stop === 'cancel' && cancelledAtMs === null) {
      cancelledAtMs = performance.now();
      await d.store.cancelTask(copyTaskId, `task:${ctx.task.id}`);
      d.wakeups.poke();
    }
    await ctx.progress(SNAPSHOT_SHARE + COPY_SHARE * t.progress, copyLine(t, run, count));
    await sleep(PREPARE_FOLLOW_MS);
  }
}

/** "copying 2 bases to site-b:ds, 1.2 of 3.8 GiB via host x" (the child's plan gives sizes and copier once it has one). */
function copyLine(t: Task, run: SeedRun, count: number): string {
  const j = copyJournalSchema.safeParse(t.checkpoint);
  const what = `copying ${count} base${count === 1 ? '' : 's'} to ${run.where}`;
  if (!j.success) return `${what} (copy task ${t.id} ${t.state}${t.waitingReason !== null ? `: ${t.waitingReason}` : ''})`;
  const total = j.data.files.reduce((s, f) => s + f.sizeBytes, 0);
  return `${what}, ${formatBytes(Math.floor(total * t.progress))} of ${formatBytes(total)} via host ${j.data.host} (copy task ${t.id})`;
}
