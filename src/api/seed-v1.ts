/**
 * Seeds' part of the host API, version 1 (docs/design/cross-site.md): the schemas of src/api/host-v1.ts's
 * seed routes. The center records on a host of the target site which base disks of a VM it copied to
 * one of that host's datastores (after the copy verified them), reads them back, and removes them (the
 * manifest, and on request the seed files no chain uses).
 */
import { z } from '@hono/zod-openapi';
import { MAX_CHAIN_DEPTH } from '../lib/limits.js';
import { seedLevelSchema, seedManifestSchema } from '../storage/seed-manifest.js';

/** PUT /v1/datastores/{name}/seeds/{vm}: the levels, base first (the host checks each against its file). */
export const putSeedsRequestSchema = z.object({
  levels: z.array(seedLevelSchema).min(1).max(MAX_CHAIN_DEPTH),
  taskId: z.number().int().positive().nullable(),
}).strict().openapi('PutSeedsRequest');
export type PutSeedsRequest = z.infer<typeof putSeedsRequestSchema>;

export const seedsViewSchema = z.object({
  /** The datastore's name on this host, and its id. */
  datastore: z.string(),
  datastoreId: z.string(),
  manifest: seedManifestSchema,
}).strict().openapi('SeedsView');
export type SeedsView = z.infer<typeof seedsViewSchema>;

/** DELETE /v1/datastores/{name}/seeds/{vm}?files=true: also remove the seed files (those no open chain holds). */
export const deleteSeedsQuerySchema = z.object({ files: z.enum(['true', 'false']).optional() }).strict();

export const deleteSeedsResultSchema = z.object({
  /** Seed files removed (empty unless files=true). */
  removedFiles: z.array(z.string()),
  /** Seed files kept, and why (in use by a VM's chain, locked). */
  keptFiles: z.array(z.object({ path: z.string(), reason: z.string() }).strict()),
}).strict().openapi('DeleteSeedsResult');
export type DeleteSeedsResult = z.infer<typeof deleteSeedsResultSchema>;
