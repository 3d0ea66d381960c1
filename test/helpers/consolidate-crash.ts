/**
 * Shared by the consolidate kill -9 test and the child it kills: the chain's layout on the
 * datastore, short lease timings (a killed child's leases expire in a moment), and the "pointer" —
 * a small file naming the chain's top, written atomically, standing in for the host's VM config
 * (the record a consolidate's commit moves from the delta to its parent).
 */
import { readFile, rename, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isFerryError } from '../../src/lib/errors.js';
import { LocalDatastore } from '../../src/storage/local-datastore.js';
import type { LeaseTiming } from '../../src/storage/lease.js';

export const DATASTORE = 'ds1';
export const BASE_PATH = 'vm/kv.vmdk';
export const DELTA_PATH = 'vm/kv-000001.vmdk';
/** Long enough that a loaded CI machine stalling the writer does not lose its lease (300 ms did, under load), short enough that waiting out a killed child's leases costs little. */
export const CRASH_LEASE_TIMING: LeaseTiming = { durationMs: 1500, renewIntervalMs: 100, clockSkewMs: 0 };
const POINTER_FILE = 'pointer.json';
/** Bound on waiting for a dead writer's lease to expire: a few lease durations. */
const MAX_LOCKED_RETRIES = 10;

export function mountCrashDatastore(root: string, hostName: string, hostId: string): Promise<LocalDatastore> {
  return LocalDatastore.mount(DATASTORE, join(root, 'ds'), { owner: { hostName, hostId }, leaseTiming: CRASH_LEASE_TIMING });
}

/** The chain's top as last committed (null: never moved, the delta is the top). */
export async function readPointer(root: string): Promise<string | null> {
  try {
    return (JSON.parse(await readFile(join(root, POINTER_FILE), 'utf8')) as { top: string }).top;
  } catch {
    return null;
  }
}

/** Durable and atomic, as the host writes a VM's config: temp file, fsync, rename. */
export async function writePointer(root: string, top: string): Promise<void> {
  const tmp = join(root, `${POINTER_FILE}.tmp`);
  await writeFile(tmp, JSON.stringify({ top }));
  const fh = await open(tmp, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
  await rename(tmp, join(root, POINTER_FILE));
}

/** Runs `op`, waiting out the lease of a killed writer (DISK_LOCKED until its expiresAt) as often as needed. */
export async function retryWhileLocked<T>(op: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await op();
    } catch (err) {
      if (!isFerryError(err, 'DISK_LOCKED') || attempt >= MAX_LOCKED_RETRIES) throw err;
      const expiresAt = Date.parse(String(err.details.expiresAt));
      await sleep(Math.max(1, expiresAt - Date.now() + CRASH_LEASE_TIMING.clockSkewMs + 1));
    }
  }
}
