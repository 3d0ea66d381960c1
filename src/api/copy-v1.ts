/**
 * The network file copy's part of the host API, version 1 (docs/design/nfc.md): the schemas of
 * src/api/host-v1.ts's copy routes. The center starts, follows, stops (a hand-off) and cancels a host's
 * part of a copy; for the remote form it first asks the receiving host for a ticket.
 */
import { z } from '@hono/zod-openapi';
import { PATH_ID_PATTERN } from '../dataplane/path/spec.js';
import {
  MAX_COPY_STREAMS, boundarySchema, copyFileSchema, copyIdSchema, copyJobRecordSchema, copyJobStatusSchema, copyProgressSchema,
  datastoreNameSchema, MAX_COPY_FILES, copyJournalViewSchema as nfcCopyJournalViewSchema, type CopyJournalView,
} from '../nfc/plan.js';
import { MIN_RATE_BYTES_PER_SEC } from '../dataplane/rate-limiter.js';
import { VM_NAME_PATTERN } from '../lib/limits.js';

export const copyTicketSchema = z.object({
  copyId: copyIdSchema,
  /** 64 lowercase hex digits: what the sending host presents in its HELLO. */
  ticket: z.string().regex(/^[0-9a-f]{64}$/),
  /** The receiving host's NFC port (on its virtual address when the ticket is for a path). */
  port: z.number().int().min(1).max(65535),
  expiresInMs: z.number().int().positive(),
}).strict().openapi('CopyTicket');
export type CopyTicket = z.infer<typeof copyTicketSchema>;

/** POST /v1/copies/incoming: the receiving host (remote form) gets ready for a copy's sessions under `epoch`. */
export const copyTicketRequestSchema = z.object({
  copyId: copyIdSchema,
  epoch: z.number().int().min(1),
  /** The receiving host's datastore (its own name for it). */
  datastore: datastoreNameSchema,
  files: z.array(copyFileSchema).min(1).max(MAX_COPY_FILES),
  /** The copy's virtual path: the ticket's port is on this host's virtual address of it. */
  pathId: z.string().regex(PATH_ID_PATTERN).optional(),
}).strict().openapi('CopyTicketRequest');
export type CopyTicketRequest = z.infer<typeof copyTicketRequestSchema>;

export const copyTargetSchema = z.discriminatedUnion('form', [
  /** This host writes the target datastore itself (its own name for it). */
  z.object({ form: z.literal('local'), datastore: datastoreNameSchema }).strict(),
  /** Another host receives: dial `address` (its virtual address over `pathId`, else its underlay address) with `ticket`. */
  z.object({
    form: z.literal('remote'),
    host: z.string().regex(VM_NAME_PATTERN),
    address: z.object({ host: z.string().min(1).max(255), port: z.number().int().min(1).max(65535) }).strict(),
    ticket: copyTicketSchema,
    pathId: z.string().regex(PATH_ID_PATTERN).optional(),
  }).strict(),
]).openapi('CopyTarget');
export type CopyTarget = z.infer<typeof copyTargetSchema>;

/** POST /v1/copies: this host copies the plan's files from its `sourceDatastore`, from the target's boundary on. */
export const startCopyRequestSchema = z.object({
  copyId: copyIdSchema,
  epoch: z.number().int().min(1),
  sourceDatastore: datastoreNameSchema,
  files: z.array(copyFileSchema).min(1).max(MAX_COPY_FILES),
  target: copyTargetSchema,
  streams: z.number().int().min(1).max(MAX_COPY_STREAMS).optional(),
  rateBytesPerSec: z.number().int().min(MIN_RATE_BYTES_PER_SEC).optional(),
}).strict().openapi('StartCopyRequest');
export type StartCopyRequest = z.infer<typeof startCopyRequestSchema>;

/**
 * The API's names for schemas src/nfc/plan.ts declares, rebuilt from their shapes with this module's `z`:
 * `.openapi()` exists only on schemas made after @hono/zod-openapi extended zod, and plan.ts may be loaded
 * before that (a process whose first import of it is not through this module).
 */
export const copyJournalViewSchema = z.object(nfcCopyJournalViewSchema.shape).strict().openapi('CopyJournal');
export type { CopyJournalView };

export const copyJournalQuerySchema = z.object({ datastore: datastoreNameSchema });
export const copyParams = z.object({ id: copyIdSchema });
export const copyStatusSchema = z.object(copyJobStatusSchema.shape).strict().openapi('CopyStatus');
export { copyJobRecordSchema, copyProgressSchema, boundarySchema };

/** Server-sent events of GET /v1/copies/{id}/events: one status, progress…, done (the record). */
export const copyEventSchemas = {
  status: copyJobStatusSchema,
  progress: copyProgressSchema,
  done: copyJobRecordSchema,
} as const;
export type CopyEvent =
  | { readonly event: 'status'; readonly data: z.infer<typeof copyJobStatusSchema> }
  | { readonly event: 'progress'; readonly data: z.infer<typeof copyProgressSchema> }
  | { readonly event: 'done'; readonly data: z.infer<typeof copyJobRecordSchema> };
