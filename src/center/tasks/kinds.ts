/**
 * The kinds of center tasks, their parameters and plans as stored: written by the API (parameters)
 * and the scheduler (plans), read back — and checked again, since a row is only as good as the code
 * that wrote it — by the worker that runs the task.
 */
import { z } from 'zod';
import { FerryError } from '../../lib/errors.js';
import { centerCopyRequestSchema, centerCreateVmRequestSchema, centerMigrateRequestSchema, centerPrepareMigrationRequestSchema } from '../../api/center-v1.js';
import { copyIdSchema } from '../../nfc/plan.js';
import type { JsonValue } from '../store/model.js';

export const TASK_KINDS = {
  createVm: 'vm.create',
  startVm: 'vm.start',
  stopVm: 'vm.stop',
  deleteVm: 'vm.delete',
  migrateVm: 'vm.migrate',
  enterMaintenance: 'host.evacuate',
  exitMaintenance: 'host.exit-maintenance',
  /** Snapshot a VM's disk and seed its bases on a datastore of another site (./prepare-migration-task.ts). */
  prepareMigration: 'vm.prepare-migration',
  /** A network file copy (./copy-task.ts): its subject is `copy:<copy id>`. */
  copy: 'copy',
} as const;

/** Tasks whose subject is a VM or a host carry it as `vm:<name>` / `host:<name>` (filters and events use it). */
export const vmSubject = (name: string): string => `vm:${name}`;
export const hostSubject = (name: string): string => `host:${name}`;
export const copySubject = (copyId: string): string => `copy:${copyId}`;

export const createVmParamsSchema = centerCreateVmRequestSchema;
export const vmParamsSchema = z.object({ vm: z.string().min(1) }).strict();
export const migrateParamsSchema = z.object({
  vm: z.string().min(1),
  request: centerMigrateRequestSchema,
  /** Set when an evacuation asked for the move: the host being emptied. */
  evacuating: z.string().optional(),
}).strict();
export type MigrateParams = z.infer<typeof migrateParamsSchema>;
export const prepareMigrationParamsSchema = z.object({ vm: z.string().min(1), request: centerPrepareMigrationRequestSchema }).strict();
export type PrepareMigrationParams = z.infer<typeof prepareMigrationParamsSchema>;
export const hostParamsSchema = z.object({ host: z.string().min(1) }).strict();
/** A copy task's parameters: the request as the API took it, and the copy id the API made for it. */
export const copyParamsSchema = z.object({ copyId: copyIdSchema, request: centerCopyRequestSchema }).strict();
export type CopyParams = z.infer<typeof copyParamsSchema>;

/**
 * A migration `--to-site`'s disk destination the scheduler chose (../site-placement.ts): the target's
 * datastore (its mount name and id) the seeds of a prepare-migration are on (`seeded`), or null for both
 * when the task is to pick the target's roomiest.
 */
export const migrateDiskSchema = z.object({
  datastore: z.string().nullable(),
  datastoreId: z.string().nullable(),
  seeded: z.boolean(),
  prepareTaskId: z.number().int().nullable(),
}).strict();
export type MigrateDisk = z.infer<typeof migrateDiskSchema>;

/** What the scheduler decided for a migration: run it between these hosts — or refuse it, with why. */
export const migratePlanSchema = z.discriminatedUnion('decision', [
  z.object({
    decision: z.literal('run'),
    source: z.string(), target: z.string(), memoryBytes: z.number(), datastores: z.array(z.string()),
    /** A --to-site migration whose disk moves without a destination in the request: where to. */
    disk: migrateDiskSchema.optional(),
  }).strict(),
  z.object({ decision: z.literal('refuse'), code: z.string(), message: z.string() }).strict(),
]);
export type MigratePlan = z.infer<typeof migratePlanSchema>;

/** A stored document read back through its schema: a row this code does not understand is STORE_IO. */
export function readStored<S extends z.ZodType>(schema: S, value: JsonValue | null, what: string): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw new FerryError('STORE_IO', `the task's ${what} is not one this center understands: ${r.error.issues[0]?.message ?? 'invalid'}`);
  return r.data;
}
