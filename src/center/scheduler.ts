/**
 * The scheduler: one center at a time (the `scheduler` duty) admits queued migrations whose cost fits
 * the budgets (./budgets.ts), choosing a target when none was asked for (./placement.ts), and tells
 * each that must wait why ("host a: 2 of 2 outbound migrations running"). Admission is the only place
 * budgets are counted, and one process does it, so two centers never both admit the migration that
 * fills the last slot. It also re-queues the tasks of workers that died (expired claims).
 *
 * A migration that cannot run at all (its VM is gone or stopped, no host is compatible) is admitted
 * with a `refuse` plan: its worker fails it with that reason — a task ends by its claimer only.
 */
import { errorMessage, isFerryError } from '../lib/errors.js';
import { BudgetUsage, type BudgetLimits, type OperationCost } from './budgets.js';
import { best, fits, needsOf, noFitReason, vmMemoryBytes, type VmNeeds } from './placement.js';
import type { JsonValue, Task, Vm } from './store/model.js';
import { checkSite, preferSeeded, siteFits, type SiteFit } from './site-placement.js';
import { everyPage } from './store/pages.js';
import type { CenterStore } from './store/store.js';
import { TASK_KINDS, migrateParamsSchema, migratePlanSchema, readStored, type MigratePlan } from './tasks/kinds.js';

export const SCHEDULER_DUTY = 'scheduler';
/** Unadmitted tasks looked at per pass, oldest first: a bounded pass; the rest wait for the next. */
export const SCHEDULER_PAGE = 200;

export interface SchedulerResult {
  readonly admitted: number;
  readonly waiting: number;
  readonly requeued: number;
}

export class Scheduler {
  constructor(private readonly store: CenterStore, private readonly limits: BudgetLimits, private readonly log: (line: string) => void) {}

  /** One pass (the caller holds the duty). */
  async pass(): Promise<SchedulerResult> {
    const requeued = (await this.store.requeueExpiredClaims()).length;
    const { usage, inbound } = await this.inUse();
    let admitted = 0;
    let waiting = 0;
    const queued = await this.store.listTasks({ state: 'queued', admitted: false, kind: TASK_KINDS.migrateVm, limit: SCHEDULER_PAGE });
    for (const task of queued) {
      try {
        const decision = await this.decide(task, usage, inbound);
        if (decision.wait !== undefined) {
          waiting++;
          if (task.waitingReason !== decision.wait) await this.store.setTaskWaiting(task.id, decision.wait);
          continue;
        }
        // As stored JSON: an absent optional field is left out.
        await this.store.admitTask(task.id, JSON.parse(JSON.stringify(decision.plan)) as JsonValue);
        admitted++;
        if (decision.plan.decision === 'run') {
          usage.add(costOf(decision.plan));
          inbound.set(decision.plan.target, (inbound.get(decision.plan.target) ?? 0) + decision.plan.memoryBytes);
        }
      } catch (err) {
        // Cancelled meanwhile (TASK_STATE) or the store hiccuped: the next pass looks again.
        if (!isFerryError(err) || err.code !== 'TASK_STATE') this.log(`scheduler: task ${task.id}: ${errorMessage(err)}`);
      }
    }
    return { admitted, waiting, requeued };
  }

  /** Budgets in use: every running or admitted migration, from its plan. */
  private async inUse(): Promise<{ usage: BudgetUsage; inbound: Map<string, number> }> {
    const usage = new BudgetUsage(this.limits);
    const inbound = new Map<string, number>();
    for (const state of ['running', 'queued'] as const) {
      const tasks = await everyPage((after: number | undefined, limit) => this.store.listTasks({
        state, kind: TASK_KINDS.migrateVm, limit, ...(state === 'queued' ? { admitted: true } : {}), ...(after !== undefined ? { after } : {}),
      }), (t) => t.id);
      for (const t of tasks) {
        const plan = migratePlanSchema.safeParse(t.plan);
        if (!plan.success || plan.data.decision !== 'run') continue;
        usage.add(costOf(plan.data));
        inbound.set(plan.data.target, (inbound.get(plan.data.target) ?? 0) + plan.data.memoryBytes);
      }
    }
    return { usage, inbound };
  }

  private async decide(task: Task, usage: BudgetUsage, inbound: Map<string, number>): Promise<{ plan: MigratePlan; wait?: undefined } | { wait: string }> {
    const refuse = (code: string, message: string): { plan: MigratePlan } => ({ plan: { decision: 'refuse', code, message } });
    let params;
    try { params = readStored(migrateParamsSchema, task.params, 'parameters'); } catch (err) { return refuse('INVALID_ARGUMENT', errorMessage(err)); }
    const vm = await this.store.getVm(params.vm).catch(() => null);
    if (vm === null) return refuse('NOT_FOUND', `VM ${params.vm} is not in the inventory`);
    if (vm.host === null) return refuse('VM_STATE', `VM ${vm.name} is on no host`);
    // Booting is a moment (its host's heartbeat may also report it a little late): worth waiting for.
    if (vm.state === 'created') return { wait: `VM ${vm.name} is still booting on ${vm.host}` };
    if (vm.state !== 'running' && vm.state !== 'paused') return refuse('VM_STATE', `VM ${vm.name} is ${vm.state}; only a running or paused VM is live-migrated`);
    if (params.evacuating !== undefined && vm.host !== params.evacuating) return refuse('VM_STATE', `VM ${vm.name} is no longer on ${params.evacuating} (it is on ${vm.host})`);
    const source = await this.store.getHost(vm.host);
    if (source.state === 'disconnected' || source.state === 'joining') return { wait: `host ${source.name} is ${source.state}` };
    let needs: VmNeeds;
    try { needs = await needsOf(this.store, vm, params.request.disk?.datastore ?? null); } catch (err) {
      return refuse(isFerryError(err) ? err.code : 'INTERNAL', errorMessage(err));
    }
    const requested = params.request.to;
    if (requested === vm.host) return refuse('INVALID_ARGUMENT', `VM ${vm.name} is already on ${requested}`);
    if (params.request.toSite !== undefined) return this.decideSite(vm, params.request.toSite, requested, params.request.disk !== undefined, needs, usage, inbound);
    const candidates = await fits(this.store, needs, inbound, new Set([vm.host]));
    const pool = requested === undefined ? candidates : candidates.filter((c) => c.host.name === requested);
    if (requested !== undefined && pool.length === 0) return refuse('NOT_FOUND', `host ${requested} is not in the inventory`);
    const compatible = pool.filter((c) => c.reason === null);
    if (compatible.length === 0) {
      // A host that is only busy now (a full memory promise by migrations in flight) is worth waiting for;
      // one that cannot take the VM at all is not.
      return refuse('NO_COMPATIBLE_HOST', `VM ${vm.name}: ${noFitReason(pool)}`);
    }
    let blocked: string | null = null;
    const free = compatible.filter((c) => {
      const b = usage.blocker(costFor(vm.host ?? '', c.host.name, c.mounts, needs));
      blocked ??= b;
      return b === null;
    });
    const chosen = best(free, (h) => usage.hostLoad(h));
    if (chosen === null) return { wait: blocked ?? 'waiting for a budget' };
    const cost = costFor(vm.host ?? '', chosen.host.name, chosen.mounts, needs);
    return { plan: { decision: 'run', source: cost.source, target: chosen.host.name, memoryBytes: vmMemoryBytes(vm.config), datastores: [...cost.datastores] } };
  }

  /** A migration to a host of `site` (../site-placement.ts): its hosts only, the disk to the seeds' datastore there if a host mounts it. */
  private async decideSite(vm: Vm, site: string, requested: string | undefined, diskGiven: boolean, needs: VmNeeds, usage: BudgetUsage, inbound: Map<string, number>): Promise<{ plan: MigratePlan } | { wait: string }> {
    const refuse = (code: string, message: string): { plan: MigratePlan } => ({ plan: { decision: 'refuse', code, message } });
    let pool: SiteFit[];
    try {
      await checkSite(this.store, site, requested);
      // A request naming the disk's destination is placed by name as usual, among the site's hosts.
      pool = diskGiven
        ? (await fits(this.store, needs, inbound, new Set(vm.host !== null ? [vm.host] : []))).filter((c) => c.host.site === site && (requested === undefined || c.host.name === requested)).map((c) => ({ ...c, disk: null }))
        : await siteFits(this.store, vm, site, requested, needs, inbound);
    } catch (err) {
      return refuse(isFerryError(err) ? err.code : 'INTERNAL', errorMessage(err));
    }
    const compatible = pool.filter((c) => c.reason === null);
    if (compatible.length === 0) return refuse('NO_COMPATIBLE_HOST', `VM ${vm.name} to site ${site}: ${pool.length === 0 ? `no host of site ${site} other than the VM's own` : noFitReason(pool)}`);
    const source = vm.host ?? '';
    let blocked: string | null = null;
    const free = preferSeeded(compatible).filter((c) => {
      const b = usage.blocker(siteCost(source, c, needs));
      blocked ??= b;
      return b === null;
    });
    const chosen = best(free, (h) => usage.hostLoad(h));
    if (chosen === null) return { wait: blocked ?? 'waiting for a budget' };
    const fit = free.find((c) => c.host.name === chosen.host.name);
    const cost = fit !== undefined ? siteCost(source, fit, needs) : costFor(source, chosen.host.name, chosen.mounts, needs);
    return { plan: { decision: 'run', source, target: chosen.host.name, memoryBytes: vmMemoryBytes(vm.config), datastores: [...cost.datastores], ...(fit?.disk != null ? { disk: fit.disk } : {}) } };
  }
}

/** The datastores a --to-site migration touches: its disk's, and the destination when one is known. */
function siteCost(source: string, c: SiteFit, needs: VmNeeds): OperationCost {
  if (c.disk === null) return costFor(source, c.host.name, c.mounts, needs);
  const datastores = [needs.diskDatastoreId, c.disk.datastoreId].filter((x): x is string => x !== null);
  return { source, target: c.host.name, datastores };
}

function costOf(plan: Extract<MigratePlan, { decision: 'run' }>): OperationCost {
  return { source: plan.source, target: plan.target, datastores: plan.datastores };
}

/** The datastores a migration touches: the shared one (both ends use it), or the copy's destination too. */
function costFor(source: string, target: string, targetMounts: readonly { datastoreId: string; mountName: string }[], needs: { diskDatastoreId: string | null; diskDestination: string | null }): OperationCost {
  const datastores: string[] = [];
  if (needs.diskDatastoreId !== null) datastores.push(needs.diskDatastoreId);
  if (needs.diskDestination !== null) {
    const dest = targetMounts.find((m) => m.mountName === needs.diskDestination);
    if (dest !== undefined) datastores.push(dest.datastoreId);
  }
  return { source, target, datastores };
}
