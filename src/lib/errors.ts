/**
 * One error root for every operating error Ferry reports. Each error carries a stable `code`
 * (part of the public contract: scripts and tests match on it) and a message a person can act on.
 * Programmer errors (broken invariants) use `assert` from ./assert.ts instead and are not caught.
 */
export const FERRY_ERROR_CODES = [
  // units / generic input
  'INVALID_ARGUMENT',
  'INVALID_SIZE',
  'INVALID_DURATION',
  'CANCELLED',
  // guest image validation
  'IMAGE_NOT_WASM',
  'IMAGE_INVALID',
  'IMAGE_TOO_LARGE',
  'IMAGE_MISSING_EXPORT',
  'IMAGE_BAD_EXPORT',
  'IMAGE_UNSUPPORTED_IMPORT',
  'IMAGE_UNSUPPORTED_FEATURE',
  'IMAGE_NO_MEMORY',
  'IMAGE_ABI_VERSION',
  'GUEST_MEMORY_TOO_LARGE',
  // VM configuration and lifecycle
  'VM_CONFIG_INVALID',
  'VM_STATE',
  'VM_CRASHED',
  'VCPU_HUNG',
  // traces
  'TRACE_INVALID_REGION',
  // host agent and its API
  'AUTH_TOKEN_INVALID',
  'UNAUTHORIZED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'BUSY',
  'REQUEST_TOO_LARGE',
  'BAD_REQUEST',
  'CAPACITY',
  'HOST_UNREACHABLE',
  'CONNECT_TIMEOUT',
  'HOST_ERROR',
  'INTERNAL',
  'STORE_IO',
  // the center's store (src/center/store): the database cannot be reached (or the store is closed)
  'STORE_UNAVAILABLE',
  // the database was migrated by a newer Ferry: this one does not know its schema
  'STORE_SCHEMA_VERSION',
  // the center cannot be reached, or answered something that is not its API (the client's side)
  'CENTER_UNREACHABLE',
  'CENTER_ERROR',
  // TLS: the peer's certificate is not signed by the CA this side trusts (or its CA is not the expected one)
  'TLS_UNTRUSTED',
  // the CLI's client config file (ferry up, ferry login) is unreadable or not a config
  'CONFIG_INVALID',
  // center tasks: a worker acts on a task it no longer holds (re-queued, taken over, finished): stop
  'TASK_NOT_CLAIMED',
  // center tasks: the task's state does not allow the action
  'TASK_STATE',
  // center orchestration: no host can take the VM (each host's reason is in the message)
  'NO_COMPATIBLE_HOST',
  // center orchestration: the host's state does not allow the action (disconnected, in maintenance)
  'HOST_STATE',
  // migration
  'MIGRATION_REFUSED',
  'MIGRATION_FAILED',
  // the convergence limits were reached with onLimit: 'abort' (retry with other options or a quieter guest)
  'MIGRATION_NOT_CONVERGED',
  'MIGRATION_CANCELLED',
  'MIGRATION_TIMEOUT',
  'MIGRATION_IN_DOUBT',
  'DIGEST_MISMATCH',
  'TICKET_INVALID',
  // snapshots
  'SNAPSHOT_NOT_FERRY',
  'SNAPSHOT_VERSION',
  'SNAPSHOT_TRUNCATED',
  'SNAPSHOT_CORRUPT',
  'SNAPSHOT_TOO_LARGE',
  'SNAPSHOT_IO',
  // datastores and disk leases (src/storage, docs/design/datastores.md)
  'DATASTORE_INVALID',
  'DATASTORE_PATH_INVALID',
  // another host (or another open on this one) holds a live write lease on the disk
  'DISK_LOCKED',
  // a write lease this process held was broken or replaced: stop writing
  'LEASE_LOST',
  // live-migration wire protocol (src/migration/protocol, docs/migration-protocol.md)
  'PROTOCOL_BAD_MAGIC',
  'PROTOCOL_VERSION',
  'PROTOCOL_BAD_COMMAND',
  'PROTOCOL_TOO_LARGE',
  'PROTOCOL_TRUNCATED',
  'PROTOCOL_BAD_PAYLOAD',
  'PROTOCOL_OUT_OF_ORDER',
  // virtual disks (src/storage/vmdk, docs/disk-format.md)
  'DISK_NOT_VMDK',
  'DISK_TRUNCATED',
  'DISK_CORRUPT',
  'DISK_UNSUPPORTED',
  'DISK_TOO_LARGE',
  'DISK_DESCRIPTOR_INVALID',
  'DISK_READ_ONLY',
  'DISK_OUT_OF_RANGE',
  // a parent's CID is not the child's parentCID: the parent was modified after the child was made
  'DISK_CHAIN_MISMATCH',
  // a parent chain that loops, is too deep, or names no parent
  'DISK_CHAIN_INVALID',
  // a stream asked of an operation's virtual path outside what it grants (another address, a port out of range, an ended path)
  'PATH_REFUSED',
  // a virtual path could not be set up (a driver this host lacks or cannot use, an interface that would not come up)
  'PATH_SETUP_FAILED',
  // a site's virtual subnet has no free address (or no free operation number) for one more operation
  'ADDRESS_EXHAUSTED',
  // network file copy (docs/design/nfc.md)
  // a copy's part under an older epoch, after a later one opened the target's journal (a hand-off fenced it out)
  'COPY_FENCED',
  // a copy id whose journal on the target holds another plan (other files, sizes or times)
  'COPY_CONFLICT',
  // a chunk whose checksum did not match on arrival (sent again) or too many times (the copy fails)
  'CHUNK_CORRUPT',
  // a source file whose size or modification time is not what the copy planned (it changed under its lease)
  'SOURCE_CHANGED',
  // a finished file read back did not match the source's checksums: it is not renamed into place
  'COPY_VERIFY_FAILED',
  // a copy's journal (or its checksum files) on the target is not one this build can trust: truncated, too large, not JSON, another version, inconsistent
  'COPY_JOURNAL_INVALID',
  // cross-site migration with a pre-seeded base disk (docs/design/cross-site.md)
  // a seed (a base disk copied ahead of a migration) whose file on the target does not hash to the digest the source's file had: it is not used
  'SEED_DAMAGED',
  // a seed manifest that does not match its files (missing, another size, another CID, a broken chain), or one this build cannot read
  'SEED_INVALID',
] as const;

export type FerryErrorCode = (typeof FERRY_ERROR_CODES)[number];

const KNOWN_CODES: ReadonlySet<string> = new Set(FERRY_ERROR_CODES);

/** True for a code of this list (a peer may send anything; an unknown code is not passed off as ours). */
export function isFerryErrorCode(code: unknown): code is FerryErrorCode {
  return typeof code === 'string' && KNOWN_CODES.has(code);
}

/**
 * Where an error was decided: `local` (this process), or `remote` (a peer answered with it: an API
 * error body or a protocol ERROR frame). A migration source branches on this: an ERROR *reply* to
 * COMMIT is a definite "not committed", while a local failure after COMMIT leaves it in doubt.
 */
export type ErrorOrigin = 'local' | 'remote';

export class FerryError extends Error {
  readonly code: FerryErrorCode;
  readonly details: Readonly<Record<string, unknown>>;
  readonly origin: ErrorOrigin;

  constructor(code: FerryErrorCode, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions & { origin?: ErrorOrigin }) {
    super(message, options);
    this.name = 'FerryError';
    this.code = code;
    this.details = details;
    this.origin = options?.origin ?? 'local';
  }

  /** An error a peer answered with; a code this build does not know becomes `fallback` (the peer's code kept in details). */
  static fromRemote(code: unknown, message: string, fallback: FerryErrorCode, details: Record<string, unknown> = {}): FerryError {
    const known = isFerryErrorCode(code);
    return new FerryError(known ? code : fallback, message, known ? details : { ...details, remoteCode: String(code) }, { origin: 'remote' });
  }

  toJSON(): { code: FerryErrorCode; message: string; details: Readonly<Record<string, unknown>> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

export function isFerryError(err: unknown, code?: FerryErrorCode): err is FerryError {
  return err instanceof FerryError && (code === undefined || err.code === code);
}

/** The errno code (ENOENT, EEXIST, …) of a failed system call, if the thrown value carries one. */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}

/** Message of any thrown value, for logs and crash reports. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
