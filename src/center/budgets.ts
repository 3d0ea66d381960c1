/**
 * Admission by cost, as vCenter does it: every host and datastore has a budget, every migration (and,
 * later, every copy) costs against both of its ends, and work beyond a budget waits queued — never
 * refused — with the reason it waits. The defaults follow the anchors: vCenter allows 8 concurrent
 * vMotions per host on a 10 GbE network and 128 per datastore (a vMotion costs 1 against each);
 * KubeVirt allows 2 outbound migrations per node and 5 per cluster. A migration here costs 1 against
 * its source's outbound budget, 1 against each host's total and 1 against each datastore it touches.
 */
import { z } from 'zod';

/** vCenter: concurrent vMotions per host on 10 GbE. */
export const DEFAULT_HOST_MIGRATIONS = 8;
/** KubeVirt: parallelOutboundMigrationsPerNode. */
export const DEFAULT_HOST_OUTBOUND_MIGRATIONS = 2;
/** vCenter: concurrent vMotions per datastore. */
export const DEFAULT_DATASTORE_MIGRATIONS = 128;
/** KubeVirt: parallelMigrationsPerCluster. */
export const DEFAULT_FLEET_MIGRATIONS = 5;
/** Far beyond any real limit: a budget is a small integer. */
export const MAX_BUDGET = 10_000;

const budget = z.number().int().min(1).max(MAX_BUDGET);
export const budgetLimitsSchema = z.object({
  hostMigrations: budget,
  hostOutboundMigrations: budget,
  datastoreMigrations: budget,
  fleetMigrations: budget,
}).strict();
export type BudgetLimits = z.infer<typeof budgetLimitsSchema>;

export const DEFAULT_BUDGETS: BudgetLimits = {
  hostMigrations: DEFAULT_HOST_MIGRATIONS,
  hostOutboundMigrations: DEFAULT_HOST_OUTBOUND_MIGRATIONS,
  datastoreMigrations: DEFAULT_DATASTORE_MIGRATIONS,
  fleetMigrations: DEFAULT_FLEET_MIGRATIONS,
};

/** What one admitted operation costs: the hosts it runs between and the datastores it touches. */
export interface OperationCost {
  readonly source: string;
  readonly target: string;
  readonly datastores: readonly string[];
}

/** What is in use now: counted from running and admitted tasks' plans, then added to as the scheduler admits. */
export class BudgetUsage {
  readonly #hostTotal = new Map<string, number>();
  readonly #hostOutbound = new Map<string, number>();
  readonly #datastore = new Map<string, number>();
  #fleet = 0;

  constructor(private readonly limits: BudgetLimits) {}

  add(cost: OperationCost): void {
    inc(this.#hostOutbound, cost.source);
    inc(this.#hostTotal, cost.source);
    inc(this.#hostTotal, cost.target);
    for (const d of new Set(cost.datastores)) inc(this.#datastore, d);
    this.#fleet++;
  }

  /** Null when `cost` fits every budget, else why it must wait ("host a: 2 of 2 outbound migrations running"). */
  blocker(cost: OperationCost): string | null {
    const l = this.limits;
    if (this.#fleet >= l.fleetMigrations) return `fleet: ${this.#fleet} of ${l.fleetMigrations} migrations running`;
    const out = this.#hostOutbound.get(cost.source) ?? 0;
    if (out >= l.hostOutboundMigrations) return `host ${cost.source}: ${out} of ${l.hostOutboundMigrations} outbound migrations running`;
    for (const h of [cost.source, cost.target]) {
      const n = this.#hostTotal.get(h) ?? 0;
      if (n >= l.hostMigrations) return `host ${h}: ${n} of ${l.hostMigrations} migrations running`;
    }
    for (const d of new Set(cost.datastores)) {
      const n = this.#datastore.get(d) ?? 0;
      if (n >= l.datastoreMigrations) return `datastore ${d}: ${n} of ${l.datastoreMigrations} migrations running`;
    }
    return null;
  }

  /** Migrations counted against a host (both directions): what the placement prefers to spread. */
  hostLoad(host: string): number { return this.#hostTotal.get(host) ?? 0; }
}

function inc(m: Map<string, number>, key: string): void {
  m.set(key, (m.get(key) ?? 0) + 1);
}
