/**
 * Maintenance mode. Entering (`host.evacuate`): the host becomes `entering-maintenance` (no placement
 * chooses it any more), every running or paused VM on it gets a live-migration task — queued through
 * the scheduler, so the budgets hold during an evacuation as at any time — and the host becomes
 * `in-maintenance` once none is left. A VM that cannot move (no compatible host, a failed migration)
 * ends the task failed with each VM's reason, and the host stays `entering-maintenance`: never silently
 * stuck, never a VM stopped to make progress. Stopped VMs stay defined where they are.
 *
 * Network file copies the host is copying are handed off, not waited for (they run for hours) nor
 * cancelled: each copy task sees its host's new state and hands itself to another host
 * (./copy-task.ts). The evacuation waits, alongside its VMs, until no copy task's current host is this
 * one; a copy no other host can take keeps the host `entering-maintenance`, with that copy's reason.
 *
 * Exiting (`host.exit-maintenance`): a running evacuation is cancelled (its migrations still queued are
 * cancelled; those already running finish or roll back), then the host is back in service.
 */
import { z } from 'zod';
import { FerryError } from '../../lib/errors.js';
import { FINISHED_TASK_STATES, MAX_LIST_LIMIT, type JsonValue, type Task } from '../store/model.js';
import type { CenterStore } from '../store/store.js';
import type { EventWakeups } from '../events.js';
import { TASK_KINDS, hostParamsSchema, hostSubject, readStored, vmSubject } from './kinds.js';
import { copyJournalSchema } from './copy-plan.js';
import type { TaskContext, TaskHandler } from './workers.js';

/** How often an evacuation looks at its migrations (a local finish wakes it sooner). */
const EVACUATION_POLL_MS = 500;
/** VMs one evacuation moves: one heartbeat's worth (MAX_HEARTBEAT_VMS). */
const MAX_EVACUATED_VMS = 1000;
const checkpointSchema = z.object({ children: z.array(z.number().int()) }).strict();

export interface MaintenanceTaskDeps {
  readonly store: CenterStore;
  readonly wakeups: EventWakeups;
  readonly event: (kind: string, subject: string, payload: JsonValue) => Promise<void>;
}

async function setState(d: MaintenanceTaskDeps, host: string, state: 'connected' | 'entering-maintenance' | 'in-maintenance', why: string): Promise<void> {
  const before = await d.store.getHost(host);
  if (before.state === state) return;
  const after = await d.store.setHostState(host, state, [before.state]);
  if (after.state !== state) throw new FerryError('HOST_STATE', `host ${host} changed from ${before.state} to ${after.state} meanwhile; it is not set ${state}`);
  await d.event('host.state', hostSubject(host), { host, state, from: before.state, reason: why });
}

export function evacuateTask(d: MaintenanceTaskDeps): TaskHandler {
  return async (ctx) => {
    const { host } = readStored(hostParamsSchema, ctx.task.params, 'parameters');
    const h = await d.store.getHost(host);
    if (h.state === 'disconnected' || h.state === 'joining') throw new FerryError('HOST_STATE', `host ${host} is ${h.state}: its VMs cannot be moved until it is connected`);
    await setState(d, host, 'entering-maintenance', `maintenance asked by ${ctx.task.requestedBy}`);
    const stored = checkpointSchema.safeParse(ctx.task.checkpoint);
    const children = stored.success ? stored.data.children : await enqueueMoves(d, ctx, host);
    if (!stored.success) await ctx.checkpoint({ children });
    const { tasks, copies } = await waitFor(d, ctx, children, host);
    const failed = tasks.filter((t) => t.state !== 'succeeded');
    const left = (await d.store.listVms({ host, limit: MAX_LIST_LIMIT })).filter((v) => v.state === 'running' || v.state === 'paused');
    if (failed.length > 0 || left.length > 0 || copies.length > 0) {
      const reasons = failed.slice(0, 5).map((t) => `${t.target.replace(/^vm:/, '')}: ${t.error?.message ?? t.state}`);
      const extra = left.filter((v) => !failed.some((t) => t.target === vmSubject(v.name))).map((v) => `${v.name}: still ${v.state} here`);
      const vms = failed.length + extra.length > 0 ? `${failed.length + extra.length} VM(s) could not move (${[...reasons, ...extra].slice(0, 5).join('; ')})` : null;
      const held = copies.length > 0 ? `${copies.length} copy task(s) cannot hand off (${copies.slice(0, 5).map((c) => `task ${c.task.id}: ${c.blocked ?? 'still copying here'}`).join('; ')})` : null;
      throw new FerryError('NO_COMPATIBLE_HOST', `host ${host} stays entering-maintenance: ${[vms, held].filter((x) => x !== null).join('; ')}`);
    }
    await setState(d, host, 'in-maintenance', `evacuated ${children.length} VM(s)`);
    return { host, moved: children.length, migrations: tasks.map((t) => ({ task: t.id, vm: t.target.replace(/^vm:/, ''), result: t.result })) };
  };
}

async function enqueueMoves(d: MaintenanceTaskDeps, ctx: TaskContext, host: string): Promise<number[]> {
  const vms = (await d.store.listVms({ host, limit: MAX_LIST_LIMIT })).filter((v) => v.state === 'running' || v.state === 'paused').slice(0, MAX_EVACUATED_VMS);
  const ids: number[] = [];
  for (const vm of vms) {
    const t = await d.store.enqueueTask({
      kind: TASK_KINDS.migrateVm, target: vmSubject(vm.name), requestedBy: `task:${ctx.task.id}`, admitted: false,
      params: { vm: vm.name, request: {}, evacuating: host }, waitingReason: 'waiting for the scheduler',
    });
    ids.push(t.id);
  }
  d.wakeups.poke();
  await ctx.progress(0.02, `evacuating ${host}: ${ids.length} VM(s) to move`);
  return ids;
}

/** A copy task whose current host is the one being drained, and why it cannot leave (null: it is handing off). */
interface CopyOnHost { readonly task: Task; readonly blocked: string | null }

/** The unfinished copy tasks whose journal names `host` as the copying host. */
async function copiesOn(d: MaintenanceTaskDeps, host: string): Promise<CopyOnHost[]> {
  const out: CopyOnHost[] = [];
  for (const state of ['running', 'queued'] as const) {
    for (const t of await d.store.listTasks({ kind: TASK_KINDS.copy, state, limit: MAX_LIST_LIMIT })) {
      const j = copyJournalSchema.safeParse(t.checkpoint);
      if (j.success && j.data.host === host) out.push({ task: t, blocked: j.data.blocked });
    }
  }
  return out;
}

async function waitFor(d: MaintenanceTaskDeps, ctx: TaskContext, ids: readonly number[], host: string): Promise<{ tasks: Task[]; copies: CopyOnHost[] }> {
  let cancelled = false;
  for (;;) {
    const tasks = await Promise.all(ids.map((id) => d.store.getTask(id)));
    const done = tasks.filter((t) => FINISHED_TASK_STATES.includes(t.state));
    const copies = cancelled ? [] : await copiesOn(d, host);
    // A copy no other host can take (blocked) does not leave by waiting: the evacuation ends and says so.
    if (done.length === tasks.length && copies.every((c) => c.blocked !== null)) {
      if (cancelled) {
        await setState(d, host, 'connected', 'maintenance cancelled');
        throw new FerryError('CANCELLED', `entering maintenance on ${host} was cancelled; ${done.filter((t) => t.state === 'succeeded').length} VM(s) had moved`);
      }
      return { tasks, copies };
    }
    if (ctx.stopReason() === 'cancel' && !cancelled) {
      cancelled = true;
      for (const t of tasks) if (!FINISHED_TASK_STATES.includes(t.state)) await d.store.cancelTask(t.id, `task:${ctx.task.id}`);
      d.wakeups.poke();
    }
    if (ctx.stopReason() === 'lost' || ctx.stopReason() === 'shutdown') throw new FerryError('CANCELLED', 'stopped');
    const waiting = tasks.filter((t) => t.state === 'queued' && t.waitingReason !== null);
    const stuck = copies.find((c) => c.blocked !== null);
    const phase = `evacuating ${host}: ${done.length} of ${tasks.length} moved or ended${waiting.length > 0 ? `; ${waiting.length} waiting (${waiting[0]?.waitingReason ?? ''})` : ''}`
      + `${copies.length > 0 ? `; ${copies.length} copy task(s) to hand off${stuck !== undefined ? ` (task ${stuck.task.id}: ${stuck.blocked ?? ''})` : ''}` : ''}`;
    await ctx.progress(tasks.length === 0 ? 1 : 0.02 + 0.97 * done.length / tasks.length, phase);
    const generation = d.wakeups.generation;
    await d.wakeups.wait(generation, EVACUATION_POLL_MS, ctx.signal.aborted ? AbortSignal.timeout(EVACUATION_POLL_MS) : ctx.signal);
  }
}

export function exitMaintenanceTask(d: MaintenanceTaskDeps): TaskHandler {
  return async (ctx) => {
    const { host } = readStored(hostParamsSchema, ctx.task.params, 'parameters');
    await d.store.getHost(host);
    const evacuations = (await d.store.listTasks({ kind: TASK_KINDS.enterMaintenance, target: hostSubject(host), limit: MAX_LIST_LIMIT }))
      .filter((t) => !FINISHED_TASK_STATES.includes(t.state));
    for (const t of evacuations) await d.store.cancelTask(t.id, `task:${ctx.task.id}`);
    d.wakeups.poke();
    for (;;) {
      const open = await Promise.all(evacuations.map((t) => d.store.getTask(t.id)));
      if (open.every((t) => FINISHED_TASK_STATES.includes(t.state))) break;
      await ctx.progress(0.5, `exiting maintenance on ${host}: waiting for the evacuation to stop`);
      await d.wakeups.wait(d.wakeups.generation, EVACUATION_POLL_MS, ctx.signal.aborted ? AbortSignal.timeout(EVACUATION_POLL_MS) : ctx.signal);
    }
    await setState(d, host, 'connected', `maintenance ended by ${ctx.task.requestedBy}`);
    return { host, state: 'connected' };
  };
}
