/**
 * Copy mode over a seed (docs/migration-protocol.md, "Seeded base levels"): what the source makes of
 * the target's answer to PREPARE — which levels of the announced chain stay (the target holds them
 * already), what the record says of them, and how long round 1's ROUND may take while the target
 * hashes its seed files before it answers.
 */
import { MiB } from '../../lib/units.js';
import type { ChainLevelSpec, PreparedBody, PreparedDisk } from '../protocol/messages.js';
import { tag, type JobContext } from './context.js';

/**
 * The slowest rate at which a target is still expected to read and hash its seed files (a loaded
 * spinning disk or a network datastore; sha256 itself runs at several hundred MiB/s per core). Round
 * 1's ROUND is answered only after that verification, so its timeout grows by the seed's bytes at
 * this rate: a large seed is not mistaken for a dead target, and a target that really stalls is
 * still given up on.
 */
export const MIN_SEED_VERIFY_BYTES_PER_SEC = 64 * MiB;

/** Levels at the chain's base the target holds already (0: everything moves). */
export function seededLevels(prepared: PreparedDisk | null): number {
  return prepared?.chain.filter((l) => !l.migrate).length ?? 0;
}

/** The extra time round 1's ROUND may take: the target hashes `verifyBytes` of seed files first. */
export function seedVerifyAllowanceMs(verifyBytes: number): number {
  return Math.ceil((verifyBytes * 1000) / MIN_SEED_VERIFY_BYTES_PER_SEC);
}

/**
 * Takes the target's answer (already checked against `announced` by preparedFromOk): kept in the
 * job context for the disk sender, written to the record, logged. An answer without a disk part
 * (an older target, or no chain announced) means every level moves.
 */
export function applyPrepared(ctx: JobContext, reply: PreparedBody, announced: readonly ChainLevelSpec[] | undefined): void {
  const prepared = reply.disk ?? null;
  ctx.preparedDisk = prepared;
  const rec = ctx.record.disk;
  if (rec === null || announced === undefined) return;
  const migrate = (i: number): boolean => prepared?.chain[i]?.migrate ?? true;
  const chain = announced.map((l, i) => ({ path: l.path, cid: l.cid, allocatedBytes: l.allocatedBytes, migrate: migrate(i) }));
  const kept = chain.filter((l) => !l.migrate);
  rec.chain = chain;
  rec.seededLevels = kept.length;
  rec.seededBytes = kept.reduce((sum, l) => sum + l.allocatedBytes, 0);
  rec.seedPath = prepared?.seedPath ?? null;
  rec.seedVerifyBytes = prepared?.verifyBytes ?? 0;
  const moving = chain.filter((l) => l.migrate);
  const movingBytes = moving.reduce((sum, l) => sum + l.allocatedBytes, 0);
  ctx.log(kept.length > 0
    ? `${tag(ctx)}: disk seeded on the target at ${rec.seedPath ?? '?'}: ${kept.length} of ${chain.length} levels (${rec.seededBytes} bytes) stay, ` +
      `${moving.length} (${movingBytes} bytes) move; the target verifies ${rec.seedVerifyBytes} bytes of seed before round 1 ends`
    : `${tag(ctx)}: no disk seed on the target${prepared === null ? ' (it answered without one)' : ''}: all ${chain.length} levels (${movingBytes} bytes) move`);
}
