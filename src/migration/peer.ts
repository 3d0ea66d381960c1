/**
 * How a migration source reaches its target *outside* the migration stream: to be expected (a
 * one-time ticket and an address to dial) and to ask, after COMMIT, what became of the migration.
 * The engine is given this interface; a host agent implements it over the target's HTTP API, and a
 * management server can broker it instead — the engine knows no URL and no REST path.
 */
import { z } from 'zod';
import type { TransportAddress } from '../dataplane/transport.js';

export const incomingStateSchema = z.enum(['pending', 'committed', 'aborted', 'unknown']);
export type IncomingState = z.infer<typeof incomingStateSchema>;

/** What the target knows of one incoming migration. */
export const incomingOutcomeSchema = z.object({
  state: incomingStateSchema,
  vm: z.string().optional(),
  reason: z.string().optional(),
  /** Largest gap a vCPU saw between its last clock read on the source and its first here (null: not measured). */
  guestDowntimeMs: z.number().nullable().optional(),
});
export type IncomingOutcome = z.infer<typeof incomingOutcomeSchema>;

/** The target's one-time permission for one migration. */
export interface IncomingTicket {
  /** The target's id of this migration (used to ask for its outcome). */
  readonly migrationId: string;
  /** Secret the source presents in HELLO on every connection. */
  readonly ticket: string;
  /** Where the source dials the migration streams. */
  readonly address: TransportAddress;
  readonly expiresInMs: number;
}

export interface MigrationTargetPeer {
  /** How the target is named in logs and in the migration record. */
  readonly label: string;
  /**
   * Asks the target to expect a migration. A refusal rejects with the target's FerryError
   * (origin 'remote', its own code); an unreachable target with a local one. `sourceMigrationId`, the
   * source's id of the migration, is told to the target so that its log lines carry the same id.
   */
  requestTicket(timeoutMs: number, sourceMigrationId?: string): Promise<IncomingTicket>;
  /** What the target recorded for this migration. Rejects when the target cannot answer (never "unknown" for that). */
  incomingOutcome(migrationId: string, timeoutMs: number): Promise<IncomingOutcome>;
}
