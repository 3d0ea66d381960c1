/**
 * The one place a center's task workers are wired: every task kind with its handler and what the
 * handlers need (the store, the hosts' clients, the event log).
 */
import type { CenterStore } from '../store/store.js';
import type { JsonValue } from '../store/model.js';
import type { EventWakeups } from '../events.js';
import type { HostControl } from '../host-control.js';
import type { Logger } from '../../lib/logger.js';
import type { ObserveTaskWait } from '../metrics.js';
import { TASK_KINDS } from './kinds.js';
import { migrateTask } from './migrate-task.js';
import { copyTask } from './copy-task.js';
import { prepareMigrationTask } from './prepare-migration-task.js';
import { DEFAULT_MIGRATION_PATH_TTL_MS, type MobilityPaths } from './migration-path.js';
import { evacuateTask, exitMaintenanceTask } from './maintenance-tasks.js';
import { createVmTask, deleteVmTask, powerTask } from './vm-tasks.js';
import { TaskWorkers, type TaskHandler } from './workers.js';

export interface WorkersDeps {
  readonly store: CenterStore;
  readonly wakeups: EventWakeups;
  readonly hostControl: HostControl;
  readonly centerId: string;
  readonly logger: Logger;
  readonly observeWait?: ObserveTaskWait;
  readonly options: { readonly taskConcurrency?: number; readonly taskLeaseMs?: number; readonly pathTtlMs?: number };
  readonly paths: MobilityPaths;
}

export function buildWorkers(w: WorkersDeps): TaskWorkers {
  const event = async (kind: string, subject: string, payload: JsonValue): Promise<void> => {
    await w.store.appendEvent({ kind, subject, payload });
    w.wakeups.poke();
  };
  const d = { store: w.store, hosts: w.hostControl, wakeups: w.wakeups, event, paths: w.paths, pathTtlMs: w.options.pathTtlMs ?? DEFAULT_MIGRATION_PATH_TTL_MS };
  const handlers = new Map<string, TaskHandler>([
    [TASK_KINDS.createVm, createVmTask(d)],
    [TASK_KINDS.startVm, powerTask(d, 'start')],
    [TASK_KINDS.stopVm, powerTask(d, 'stop')],
    [TASK_KINDS.deleteVm, deleteVmTask(d)],
    [TASK_KINDS.migrateVm, migrateTask(d)],
    [TASK_KINDS.enterMaintenance, evacuateTask(d)],
    [TASK_KINDS.exitMaintenance, exitMaintenanceTask(d)],
    [TASK_KINDS.copy, copyTask(d)],
    [TASK_KINDS.prepareMigration, prepareMigrationTask(d)],
  ]);
  return new TaskWorkers({
    store: w.store, wakeups: w.wakeups, centerId: w.centerId, handlers, logger: w.logger,
    ...(w.observeWait !== undefined ? { observeWait: w.observeWait } : {}),
    ...(w.options.taskConcurrency !== undefined ? { concurrency: w.options.taskConcurrency } : {}),
    ...(w.options.taskLeaseMs !== undefined ? { leaseMs: w.options.taskLeaseMs } : {}),
  });
}
