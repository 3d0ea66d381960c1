/**
 * The `vm.migrate` task: a live migration between the hosts the scheduler planned, carried out by the
 * source host (its engine does the work; the center asks, follows and records).
 *
 * Recovery: before asking the source, the worker checkpoints the migration id it chose; the source
 * treats a second request with that id as "what became of it". A worker that takes the task over (the
 * first center died) asks again with the same id: a migration still running is followed, a finished one
 * is answered, and one the source no longer remembers (it restarted) is settled by where the VM really
 * is — running on the target: succeeded; on the source: started again (the first never ran, or rolled
 * back). The VM's row moves only after the truth is known, so the inventory never shows it in two places.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { FerryError, errorMessage, isFerryError, isFerryErrorCode } from '../../lib/errors.js';
import type { MigrationProgress, MigrationRecord } from '../../migration/record.js';
import type { HostClient } from '../../api/host-client.js';
import type { VmView } from '../../api/host-v1.js';
import type { HostControl } from '../host-control.js';
import type { CenterStore } from '../store/store.js';
import type { JsonValue } from '../store/model.js';
import { migrateParamsSchema, migratePlanSchema, readStored, type MigrateDisk } from './kinds.js';
import type { TaskContext, TaskHandler } from './workers.js';
import { isolationJson, routeMigration, type MigrationRoute, type MobilityPaths } from './migration-path.js';

const checkpointSchema = z.object({ migrationId: z.string().regex(/^[0-9a-f]{32}$/) }).strict();
/** Between two attempts to reach a host that does not answer. */
const HOST_RETRY_MS = 1000;
/** Attempts to reach the source before the task fails with what is known (the VM stays where its hosts say). */
const MAX_HOST_RETRIES = 30;
/** Round events are appended to the center's log at most this often per migration (progress ticks are many). */
const PROGRESS_EVENT_MS = 250;

export interface MigrateTaskDeps {
  readonly store: CenterStore;
  readonly hosts: HostControl;
  readonly event: (kind: string, subject: string, payload: JsonValue) => Promise<void>;
  /** The mobility manager: each migration's own virtual path. */
  readonly paths: MobilityPaths;
  readonly pathTtlMs: number;
}

/** 0..1 for the task from the engine's progress: round 1 is most of a migration's bytes. */
function fraction(p: MigrationProgress): number {
  if (p.phase === 'switchover' || p.phase === 'release') return 0.95;
  const inRound = p.roundTotalBytes > 0 ? Math.min(1, p.roundSentBytes / p.roundTotalBytes) : 0;
  return p.round <= 1 ? 0.05 + 0.75 * inRound : Math.min(0.94, 0.8 + 0.02 * (p.round - 1) + 0.02 * inRound);
}

export function migrateTask(d: MigrateTaskDeps): TaskHandler {
  return async (ctx) => {
    const params = readStored(migrateParamsSchema, ctx.task.params, 'parameters');
    const plan = readStored(migratePlanSchema, ctx.task.plan, 'plan');
    if (plan.decision === 'refuse') throw new FerryError(isFerryErrorCode(plan.code) ? plan.code : 'MIGRATION_REFUSED', plan.message);
    if (ctx.stopReason() === 'cancel') throw new FerryError('CANCELLED', 'cancelled before it started');
    const [source, target] = await Promise.all([d.store.getHost(plan.source), d.store.getHost(plan.target)]);
    const src = d.hosts.client(source);
    const dst = d.hosts.client(target);
    const stored = checkpointSchema.safeParse(ctx.task.checkpoint);
    const migrationId = stored.success ? stored.data.migrationId : randomBytes(16).toString('hex');
    if (!stored.success) await ctx.checkpoint({ migrationId });
    await ctx.progress(0.01, `${params.vm}: ${plan.source} -> ${plan.target}${ctx.task.attempts > 1 ? ' (taken over: reconciling)' : ''}`);

    const route = await routeMigration({ paths: d.paths, ttlMs: d.pathTtlMs, tokenFor: (h) => d.hosts.tokenFor(h) }, ctx, params.request.isolation !== false, source, target, src, dst, migrationId);
    try {
      return await runMigration(d, ctx, { params, plan, src, dst, migrationId, route, disk: plan.disk });
    } finally {
      await route.close('the migration task ended');
    }
  };
}

/** One migration task's run, its hosts and route decided. */
interface Run {
  readonly params: z.infer<typeof migrateParamsSchema>;
  readonly plan: { readonly source: string; readonly target: string };
  readonly src: HostClient;
  readonly dst: HostClient;
  readonly migrationId: string;
  readonly route: MigrationRoute;
  /** A --to-site migration's disk destination, as the scheduler planned it. */
  readonly disk: MigrateDisk | undefined;
}

async function runMigration(d: MigrateTaskDeps, ctx: TaskContext, run: Run): Promise<JsonValue> {
  const { params, plan, src, dst, migrationId, route } = run;
  const subject = `vm:${params.vm}`;
  const planned = params.request.disk === undefined && run.disk !== undefined ? await plannedDisk(dst, plan.target, run.disk) : null;
  const disk = params.request.disk ?? (planned !== null ? { datastore: planned.datastore } : undefined);
  const request = {
    ...route.request, migrationId,
    ...(params.request.options !== undefined ? { options: params.request.options } : {}),
    // Without a path the disk keeps the one it has here (the VM's top): the seeded bases are at their paths too.
    ...(disk !== undefined ? { disk } : {}),
  };
  const started = await withRetries(ctx, `ask ${plan.source} to migrate`, async () => {
    try {
      return await src.migrate(params.vm, request);
    } catch (err) {
      // The source no longer has the VM (and remembers no migration of it): maybe it already moved.
      if (ctx.task.attempts > 1 && isFerryError(err) && err.code === 'NOT_FOUND') return null;
      throw err;
    }
  });
  if (started === null) return settleByLocation(d, ctx, params.vm, plan.source, plan.target, src, dst, migrationId);
  await d.event('migration.started', subject, { vm: params.vm, from: plan.source, to: plan.target, migrationId, taskId: ctx.task.id, isolation: isolationJson(route.isolation) });

  let cancelAsked = false;
  let lastEventMs = 0;
  let lastRound = 0;
  const askCancel = (): void => {
    if (cancelAsked || ctx.stopReason() !== 'cancel') return;
    cancelAsked = true;
    void src.cancelMigration(migrationId).catch((err: unknown) => { ctx.log(`cannot cancel migration ${migrationId}: ${errorMessage(err)}`); });
  };
  ctx.signal.addEventListener('abort', askCancel, { once: true });
  askCancel();
  // Following stops only when this center stops or loses the task; a cancel is the source's to carry out.
  const follow = new AbortController();
  const stopFollowing = (): void => { if (ctx.stopReason() === 'lost' || ctx.stopReason() === 'shutdown') follow.abort(); };
  ctx.signal.addEventListener('abort', stopFollowing, { once: true });
  const record: MigrationRecord = await withRetries(ctx, `follow migration ${migrationId}`, () => src.waitForMigration(migrationId, {
    signal: follow.signal,
    onProgress: (p) => {
      void ctx.progress(fraction(p), `${params.vm}: ${p.phase}, round ${p.round}${p.etaMs !== null ? `, ~${Math.ceil(p.etaMs / 1000)} s left` : ''}`);
      const now = performance.now();
      if (p.round !== lastRound || now - lastEventMs >= PROGRESS_EVENT_MS) {
        lastRound = p.round;
        lastEventMs = now;
        void d.event('migration.progress', subject, { ...p, vm: params.vm, taskId: ctx.task.id }).catch(() => undefined);
      }
    },
  }));
  const summary = await finishWith(d, ctx, record, params.vm, plan.source, plan.target, route, dst);
  return planned !== null && typeof summary === 'object' && summary !== null && !Array.isArray(summary) ? { ...summary, disk: planned } : summary;
}

/**
 * A --to-site migration's disk destination on the target: the seeds' datastore the scheduler chose, or
 * (none seeded there) the target's datastore with the most space left, as the target reports it now.
 */
async function plannedDisk(dst: HostClient, target: string, disk: MigrateDisk): Promise<{ datastore: string; datastoreId: string; seeded: boolean; prepareTaskId: number | null }> {
  if (disk.datastore !== null && disk.datastoreId !== null) return { datastore: disk.datastore, datastoreId: disk.datastoreId, seeded: disk.seeded, prepareTaskId: disk.prepareTaskId };
  const roomiest = (await dst.listDatastores()).sort((a, b) => b.spaceLeftBytes - a.spaceLeftBytes)[0];
  if (roomiest === undefined) throw new FerryError('NO_COMPATIBLE_HOST', `host ${target} mounts no datastore to copy the VM's disk to`);
  return { datastore: roomiest.name, datastoreId: roomiest.id, seeded: false, prepareTaskId: null };
}

async function finishWith(d: MigrateTaskDeps, ctx: TaskContext, record: MigrationRecord, vm: string, source: string, target: string, route: MigrationRoute, dst: HostClient): Promise<JsonValue> {
  const subject = `vm:${vm}`;
  await d.event('migration.finished', subject, { vm, from: source, to: target, migrationId: record.migrationId, outcome: record.outcome, taskId: ctx.task.id, engineDowntimeMs: record.engineDowntimeMs, guestDowntimeMs: record.guestDowntimeMs, switchoverMs: record.switchoverMs, totalMs: record.totalMs });
  const summary = { migrationId: record.migrationId, from: source, to: target, outcome: record.outcome, engineDowntimeMs: record.engineDowntimeMs, guestDowntimeMs: record.guestDowntimeMs, switchoverMs: record.switchoverMs, totalMs: record.totalMs, transferredBytes: record.transferredBytes, rounds: record.rounds.length, isolation: isolationJson(route.isolation) };
  if (record.outcome === 'succeeded') {
    await moveRow(d, vm, target, dst);
    return summary;
  }
  const code = record.error !== null && isFerryErrorCode(record.error.code) ? record.error.code : 'MIGRATION_FAILED';
  if (record.outcome === 'cancelled' || code === 'MIGRATION_CANCELLED') throw new FerryError('CANCELLED', `migration ${record.migrationId} was cancelled; VM ${vm} stays on ${source}`);
  throw new FerryError(code, `migration ${record.migrationId} ${record.outcome}: ${record.error?.message ?? 'no reason given'}; VM ${vm} stays on ${source}`);
}

/**
 * The VM's row follows it to the target with the state the target reports now (its heartbeat would do the
 * same; this makes it visible at once). The row may already name the target: a heartbeat of the target
 * built mid-switch-over (the VM still paused there) lands while no center follows the task — so the
 * target's word, not the row, decides the state. A target that does not answer: the engine resumed the VM
 * unless it was paused before.
 */
async function moveRow(d: MigrateTaskDeps, vm: string, target: string, dst: HostClient): Promise<void> {
  const row = await d.store.getVm(vm);
  const onTarget = await findVm(dst, vm).catch(() => null);
  const reported = onTarget?.state === 'running' || onTarget?.state === 'paused' ? onTarget.state : null;
  const state = reported ?? (row.state === 'paused' ? 'paused' : 'running');
  if (row.host === target && row.state === state) return;
  await d.store.upsertVm({ name: vm, host: target, state, config: row.config, disks: row.disks }, row.host);
  await d.event('vm.changed', `vm:${vm}`, { vm, host: target, state, from: { host: row.host, state: row.state }, reason: 'migrated' });
}

/** The source does not know the migration any more: where the VM really is decides. */
async function settleByLocation(d: MigrateTaskDeps, ctx: TaskContext, vm: string, source: string, target: string, src: HostClient, dst: HostClient, migrationId: string): Promise<JsonValue> {
  const onTarget = await findVm(dst, vm);
  if (onTarget !== null && (onTarget.state === 'running' || onTarget.state === 'paused')) {
    await moveRow(d, vm, target, dst);
    ctx.log(`reconciled: VM ${vm} runs on ${target}`);
    return { migrationId, from: source, to: target, outcome: 'succeeded', reconciled: true };
  }
  const onSource = await findVm(src, vm);
  throw new FerryError('MIGRATION_FAILED', `VM ${vm} is on neither host as expected after a takeover (source: ${onSource?.state ?? 'absent'}, target: ${onTarget?.state ?? 'absent'}); the inventory keeps what the hosts report`);
}

async function findVm(client: HostClient, vm: string): Promise<VmView | null> {
  try { return await client.vm(vm); } catch (err) {
    if (isFerryError(err) && err.code === 'NOT_FOUND') return null;
    throw err;
  }
}

/** Retries a host call that failed by transport (not by the host's answer) while the task is not to stop. */
async function withRetries<T>(ctx: TaskContext, what: string, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      const transport = isFerryError(err) && (err.code === 'HOST_UNREACHABLE' || err.code === 'CONNECT_TIMEOUT' || (err.code === 'HOST_ERROR' && err.origin !== 'remote'));
      const stop = ctx.stopReason();
      if (!transport || attempt >= MAX_HOST_RETRIES || stop === 'lost' || stop === 'shutdown') throw err;
      await ctx.progress(0, `${what}: ${errorMessage(err)} (retry ${attempt} of ${MAX_HOST_RETRIES})`);
      await new Promise((resolve) => setTimeout(resolve, HOST_RETRY_MS));
    }
  }
}
