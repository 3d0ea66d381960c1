/**
 * One host's part of a copy as the center drives it: asking the copying host to stop (a hand-off) and
 * waiting for its record, reading the target journal's durable boundary (the truth when a host died or
 * does not answer: it only ever grows), and giving the copy up on the target (a cancelled or failed copy
 * leaves nothing half-made). The hosts that can answer for the target are the receiver (remote form)
 * or any host in service that mounts the target datastore (the local form's copier first).
 */
import { errorMessage, isFerryError } from '../../lib/errors.js';
import { COPY_START, normalizeBoundary, type Boundary, type CopyJobRecord } from '../../nfc/plan.js';
import type { HostClient } from '../../api/host-client.js';
import type { HostControl } from '../host-control.js';
import type { CenterStore } from '../store/store.js';
import type { CopyJournal } from './copy-plan.js';

/**
 * How long a hand-off waits for the stopping host's `stopped` record. Stopping waits for the chunks in
 * flight (MAX_COPY_INFLIGHT_BYTES) and one sync: seconds even on a slow disk. Beyond this the host is
 * treated as gone and the target journal's boundary is used; fencing keeps its late writes out.
 */
export const HANDOFF_STOP_TIMEOUT_MS = 30_000;
/** Attempts to give a copy up on its target while the last part still holds its staging files (their leases). */
const DISCARD_ATTEMPTS = 10;
/** Between two of them. */
const DISCARD_RETRY_MS = 500;

/** True when an error is about reaching the host (it may be gone), not the host's own answer. */
export function isTransportError(err: unknown): boolean {
  return isFerryError(err) && (err.code === 'HOST_UNREACHABLE' || err.code === 'CONNECT_TIMEOUT' || (err.code === 'HOST_ERROR' && err.origin !== 'remote'));
}

export interface PartDeps {
  readonly store: CenterStore;
  readonly hosts: HostControl;
  readonly log: (line: string) => void;
}

/** A host's client by name (its URL as the store has it now: a restarted host may have a new one). */
export async function clientOf(d: PartDeps, host: string): Promise<HostClient> {
  return d.hosts.client(await d.store.getHost(host));
}

/**
 * Asks the copying host to stop its part and waits for its record (up to HANDOFF_STOP_TIMEOUT_MS):
 * `stopped` at a boundary the target acknowledged, or however else it ended. Null when the host died,
 * does not answer, or does not know the part (it restarted): the caller reads the target journal.
 */
export async function stopPart(d: PartDeps, j: CopyJournal, signal: AbortSignal): Promise<CopyJobRecord | null> {
  let client: HostClient;
  try {
    client = await clientOf(d, j.host);
    await client.stopCopy(j.copyId);
  } catch (err) {
    d.log(`copy ${j.copyId.slice(0, 8)}: cannot ask ${j.host} to stop part ${j.epoch}: ${errorMessage(err)}`);
    return null;
  }
  try {
    const record = await client.waitForCopy(j.copyId, { signal: AbortSignal.any([AbortSignal.timeout(HANDOFF_STOP_TIMEOUT_MS), signal]) });
    if (record.epoch === j.epoch) return record;
    d.log(`copy ${j.copyId.slice(0, 8)}: ${j.host} answered part ${record.epoch}, not ${j.epoch}`);
  } catch (err) {
    d.log(`copy ${j.copyId.slice(0, 8)}: no record from ${j.host} for part ${j.epoch} within ${HANDOFF_STOP_TIMEOUT_MS} ms: ${errorMessage(err)}`);
  }
  return null;
}

/** The hosts that can answer for the copy's target datastore, in the order to ask them, with their name for it. */
export async function targetOwners(d: PartDeps, j: CopyJournal, prefer: readonly string[]): Promise<{ host: string; mount: string }[]> {
  const mounts = await d.store.listDatastoreHosts(j.targetId);
  const order = [...prefer, ...(j.receiver !== null ? [j.receiver] : []), j.host, ...mounts.map((m) => m.host).sort()];
  const out: { host: string; mount: string }[] = [];
  for (const h of order) {
    const m = mounts.find((x) => x.host === h);
    if (m !== undefined && !out.some((o) => o.host === h)) out.push({ host: h, mount: m.mountName });
  }
  return out;
}

/**
 * The durable boundary the target journal holds, and its epoch: asked of the hosts that mount the
 * target until one answers. Nobody answering, the current part's start stands (it was durable then,
 * and a journal's boundary never moves back).
 */
export async function journalBoundary(d: PartDeps, j: CopyJournal, prefer: readonly string[] = []): Promise<{ boundary: Boundary; epoch: number; from: string | null }> {
  for (const owner of await targetOwners(d, j, prefer)) {
    try {
      const view = await (await clientOf(d, owner.host)).copyJournal(j.copyId, owner.mount);
      return { boundary: normalizeBoundary({ files: j.files }, view.boundary ?? COPY_START), epoch: view.epoch, from: owner.host };
    } catch (err) {
      d.log(`copy ${j.copyId.slice(0, 8)}: ${owner.host} cannot read the target journal: ${errorMessage(err)}`);
    }
  }
  return { boundary: j.from, epoch: j.epoch, from: null };
}

/**
 * Cancels the current part (best effort: its host may be gone) and gives the copy up on the target:
 * staging files and journal removed. Answers whether the target confirmed it.
 */
export async function cancelAndDiscard(d: PartDeps, j: CopyJournal): Promise<boolean> {
  try {
    const client = await clientOf(d, j.host);
    await client.cancelCopy(j.copyId);
    await client.waitForCopy(j.copyId, { signal: AbortSignal.timeout(HANDOFF_STOP_TIMEOUT_MS) });
  } catch (err) {
    d.log(`copy ${j.copyId.slice(0, 8)}: cancelling part ${j.epoch} on ${j.host}: ${errorMessage(err)}`);
  }
  return discard(d, j);
}

async function discard(d: PartDeps, j: CopyJournal): Promise<boolean> {
  for (let attempt = 1; attempt <= DISCARD_ATTEMPTS; attempt++) {
    for (const owner of await targetOwners(d, j, [])) {
      try {
        await (await clientOf(d, owner.host)).discardCopyJournal(j.copyId, owner.mount);
        return true;
      } catch (err) {
        d.log(`copy ${j.copyId.slice(0, 8)}: ${owner.host} cannot discard the target's staging files (attempt ${attempt}): ${errorMessage(err)}`);
        // The last part still holds the staging files: try again once it let them go.
        if (isFerryError(err, 'DISK_LOCKED')) break;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, DISCARD_RETRY_MS));
  }
  return false;
}
