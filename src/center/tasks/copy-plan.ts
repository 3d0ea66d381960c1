/**
 * A copy task's plan and journal (docs/design/nfc.md, "The center"): which datastores a copy runs
 * between, which hosts may copy it (mount the source, in service) and in which form (local: the copier
 * mounts the target too; remote: through a host that mounts it), and the journal — the task's
 * checkpoint — that says which host copies under which epoch and who copied which range before.
 *
 * The center never reads a datastore itself: the plan's sizes and modification times come from a host
 * that mounts the source (POST /v1/datastores/{name}/stat), and the copying host checks the source
 * against them (SOURCE_CHANGED otherwise).
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { FerryError, errorMessage } from '../../lib/errors.js';
import {
  boundarySchema, copyFileSchema, copyIdSchema, copySegmentSchema, copyTargetFormSchema, type CopyFile, type CopyTargetForm,
} from '../../nfc/plan.js';
import { MAX_CENTER_COPY_FILES, type CenterCopyRequest } from '../../api/center-v1.js';
import type { HostControl } from '../host-control.js';
import type { Datastore, Host, HostDatastore, JsonValue, Task } from '../store/model.js';
import { everyPage } from '../store/pages.js';
import type { CenterStore } from '../store/store.js';
import { datastoreIdSchema } from '../store/model.js';
import { TASK_KINDS, copySubject } from './kinds.js';

/** A copy id's random bytes: 16, shown as the 32 hex digits COPY_ID_PATTERN asks for (it names the target's journal). */
const COPY_ID_BYTES = 16;

/**
 * Queue a copy task: what POST /api/v1/copies does, and a prepare-migration for its bases. Refused
 * here, not in the task: unknown or ambiguous datastores, a copy onto itself, an unknown `via` host.
 * The caller pokes the workers.
 */
export async function enqueueCopy(store: CenterStore, request: CenterCopyRequest, requestedBy: string): Promise<Task> {
  await resolveCopyDatastores(store, request.from, request.to);
  if (request.via !== undefined) await store.getHost(request.via);
  const copyId = randomBytes(COPY_ID_BYTES).toString('hex');
  // Stored as JSON: optional fields that are absent are left out.
  const params = JSON.parse(JSON.stringify({ copyId, request })) as JsonValue;
  return store.enqueueTask({ kind: TASK_KINDS.copy, target: copySubject(copyId), requestedBy, params });
}

/**
 * Parts one copy task records (each a host's range under one epoch, when it moved the boundary or sent
 * bytes) at most. A copy handed on this often is stuck in a loop, and the journal (a task checkpoint,
 * at most 64 KiB of JSON) must hold them beside the plan (MAX_CENTER_COPY_PATHS_BYTES).
 */
export const MAX_COPY_SEGMENTS = 100;

export const copyJournalSchema = z.object({
  copyId: copyIdSchema,
  sourceId: datastoreIdSchema(),
  targetId: datastoreIdSchema(),
  files: z.array(copyFileSchema).min(1).max(MAX_CENTER_COPY_FILES),
  /** The current part: its epoch (1 for the first host, +1 at each hand-off or restart), host and form. */
  epoch: z.number().int().min(1),
  host: z.string().min(1),
  form: copyTargetFormSchema,
  /** The remote form's receiving host (it mounts the target datastore), else null. */
  receiver: z.string().min(1).nullable(),
  /** Where the current part starts: the target's durable boundary when it was asked to start. */
  from: boundarySchema,
  /** The parts before the current one, oldest first. */
  segments: z.array(copySegmentSchema).max(MAX_COPY_SEGMENTS),
  handoffs: z.number().int().min(0),
  /** The seq of the last move request acted on (0: none). */
  movesHandled: z.number().int().min(0),
  /** The current part's virtual path (remote form over a path), or null. */
  pathId: z.string().nullable(),
  /** Why the host's maintenance cannot take the copy elsewhere now (no eligible host), or null. */
  blocked: z.string().nullable(),
}).strict();
export type CopyJournal = z.infer<typeof copyJournalSchema>;

/** A datastore as the API names it: its id, or a name exactly one datastore has. */
export async function resolveDatastore(store: CenterStore, ref: string): Promise<Datastore> {
  const all = await everyPage((after: string | undefined, limit) => store.listDatastores({ limit, ...(after !== undefined ? { after } : {}) }), (d) => d.id);
  const byId = all.find((d) => d.id === ref);
  if (byId !== undefined) return byId;
  const named = all.filter((d) => d.name === ref);
  if (named.length === 1 && named[0] !== undefined) return named[0];
  if (named.length === 0) throw new FerryError('NOT_FOUND', `no datastore ${ref} in the inventory (a host that mounts it reports it in its heartbeats)`);
  throw new FerryError('INVALID_ARGUMENT', `${named.length} datastores are called ${ref} (ids ${named.map((d) => d.id).join(', ')}): name one by its id`);
}

/** The two datastores of a copy request, checked: both known, not the same one. */
export async function resolveCopyDatastores(store: CenterStore, from: string, to: string): Promise<{ source: Datastore; target: Datastore }> {
  const [source, target] = [await resolveDatastore(store, from), await resolveDatastore(store, to)];
  if (source.id === target.id) throw new FerryError('INVALID_ARGUMENT', `datastores ${from} and ${to} are the same datastore (${source.id}): a copy onto itself would replace every file with itself`);
  return { source, target };
}

/** A host that may copy: it mounts the source; with the target too, the local form. */
export interface CopierCandidate {
  readonly host: Host;
  readonly sourceMount: string;
  /** This host's name for the target datastore, or null (the remote form). */
  readonly targetMount: string | null;
  /** Null when it may copy now; else why not. */
  readonly reason: string | null;
}

/** Every host that mounts the source, with why it may not copy now (not in service, or excluded). */
export async function copierCandidates(store: CenterStore, sourceId: string, targetId: string, exclude: ReadonlySet<string>): Promise<CopierCandidate[]> {
  const mounts = await store.listDatastoreHosts(sourceId);
  const targets = await store.listDatastoreHosts(targetId);
  const out: CopierCandidate[] = [];
  for (const m of mounts) {
    const host = await store.getHost(m.host);
    const targetMount = targets.find((t) => t.host === m.host)?.mountName ?? null;
    const reason = exclude.has(host.name) ? `host ${host.name} is the host the copy leaves`
      : host.state !== 'connected' ? `host ${host.name} is ${host.state}` : null;
    out.push({ host, sourceMount: m.mountName, targetMount, reason });
  }
  return out;
}

/**
 * The copier to use: `wanted` if given (it must be a candidate without a reason, else the refusal
 * says why), else the first that can write the target itself (the local form moves the bytes once),
 * then by name. Null with the reasons when none can.
 */
export function chooseCopier(candidates: readonly CopierCandidate[], wanted: string | null, sourceName: string): { chosen: CopierCandidate } | { refused: string } {
  if (wanted !== null) {
    const c = candidates.find((x) => x.host.name === wanted);
    if (c === undefined) return { refused: `host ${wanted} does not mount datastore ${sourceName}` };
    return c.reason === null ? { chosen: c } : { refused: c.reason };
  }
  const ok = candidates.filter((c) => c.reason === null)
    .sort((a, b) => Number(b.targetMount !== null) - Number(a.targetMount !== null) || (a.host.name < b.host.name ? -1 : 1));
  const first = ok[0];
  if (first !== undefined) return { chosen: first };
  const reasons = candidates.map((c) => c.reason).filter((r): r is string => r !== null);
  return { refused: candidates.length === 0 ? `no host mounts datastore ${sourceName}` : `no host can copy from ${sourceName}: ${reasons.slice(0, 5).join('; ')}` };
}

/**
 * The remote form's receiver: a host in service that mounts the target, other than the copier —
 * `keep` (the current receiver) while it still qualifies, else the first by name.
 */
export async function chooseReceiver(store: CenterStore, targetId: string, copier: string, keep: string | null, targetName: string): Promise<HostDatastore> {
  const mounts = (await store.listDatastoreHosts(targetId)).filter((m) => m.host !== copier);
  const ok: HostDatastore[] = [];
  const reasons: string[] = [];
  for (const m of mounts) {
    const h = await store.getHost(m.host);
    if (h.state === 'connected') ok.push(m); else reasons.push(`host ${h.name} is ${h.state}`);
  }
  const chosen = ok.find((m) => m.host === keep) ?? ok.sort((a, b) => (a.host < b.host ? -1 : 1))[0];
  if (chosen === undefined) {
    throw new FerryError('NO_COMPATIBLE_HOST', `no host in service mounts the target datastore ${targetName} to receive the copy${reasons.length > 0 ? ` (${reasons.slice(0, 5).join('; ')})` : ''}`);
  }
  return chosen;
}

/** The form a copier gives a copy. */
export function formOf(c: CopierCandidate): CopyTargetForm {
  return c.targetMount !== null ? 'local' : 'remote';
}

/** A host's own name for a datastore it mounts (NOT_FOUND if it no longer reports it). */
export async function mountOf(store: CenterStore, host: string, datastoreId: string): Promise<string> {
  const m = (await store.listHostDatastores(host)).find((x) => x.datastoreId === datastoreId);
  if (m === undefined) throw new FerryError('NOT_FOUND', `host ${host} no longer reports datastore ${datastoreId}`);
  return m.mountName;
}

/** The plan's files as a host that mounts the source sees them now: regular files only. */
export async function statPlan(hosts: HostControl, copier: CopierCandidate, paths: readonly string[]): Promise<CopyFile[]> {
  let stats;
  try {
    stats = await hosts.client(copier.host).statDatastoreFiles(copier.sourceMount, paths);
  } catch (err) {
    throw new FerryError(err instanceof FerryError ? err.code : 'HOST_ERROR', `cannot read the files to copy on ${copier.host.name}: ${errorMessage(err)}`);
  }
  return stats.map((s) => {
    if (s.kind !== 'file') throw new FerryError('INVALID_ARGUMENT', `${s.path} is a ${s.kind}, not a file: a copy moves files (list a directory's files)`);
    return { path: s.path, sizeBytes: s.sizeBytes, modifiedMs: s.modifiedMs };
  });
}
