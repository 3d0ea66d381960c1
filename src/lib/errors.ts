/**
 * One error root for every operating error Ferry reports. Each error carries a stable `code`
 * (part of the public contract: scripts and tests match on it) and a message a person can act on.
 * Programmer errors (broken invariants) use `assert` from ./assert.ts instead and are not caught.
 */
export type FerryErrorCode =
  // units / generic input
  | 'INVALID_ARGUMENT'
  | 'INVALID_SIZE'
  | 'INVALID_DURATION'
  // guest image validation
  | 'IMAGE_NOT_WASM'
  | 'IMAGE_INVALID'
  | 'IMAGE_TOO_LARGE'
  | 'IMAGE_MISSING_EXPORT'
  | 'IMAGE_BAD_EXPORT'
  | 'IMAGE_UNSUPPORTED_IMPORT'
  | 'IMAGE_UNSUPPORTED_FEATURE'
  | 'IMAGE_NO_MEMORY'
  | 'IMAGE_ABI_VERSION'
  | 'GUEST_MEMORY_TOO_LARGE'
  // VM configuration and lifecycle
  | 'VM_CONFIG_INVALID'
  | 'VM_STATE'
  | 'VM_CRASHED'
  | 'VCPU_HUNG'
  | 'VCPU_START_FAILED'
  // traces
  | 'TRACE_INVALID_REGION'
  // host agent and its API
  | 'AUTH_TOKEN_INVALID'
  | 'UNAUTHORIZED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'BUSY'
  | 'REQUEST_TOO_LARGE'
  | 'BAD_REQUEST'
  | 'CAPACITY'
  | 'HOST_UNREACHABLE'
  | 'HOST_ERROR'
  | 'INTERNAL'
  | 'STORE_IO'
  // migration
  | 'MIGRATION_REFUSED'
  | 'MIGRATION_FAILED'
  | 'MIGRATION_CANCELLED'
  | 'MIGRATION_TIMEOUT'
  | 'MIGRATION_IN_DOUBT'
  | 'DIGEST_MISMATCH'
  | 'TICKET_INVALID'
  // snapshots
  | 'SNAPSHOT_NOT_FERRY'
  | 'SNAPSHOT_VERSION'
  | 'SNAPSHOT_TRUNCATED'
  | 'SNAPSHOT_CORRUPT'
  | 'SNAPSHOT_TOO_LARGE'
  | 'SNAPSHOT_IO'
  // live-migration wire protocol (src/migration/protocol, docs/migration-protocol.md)
  | 'PROTOCOL_BAD_MAGIC'
  | 'PROTOCOL_VERSION'
  | 'PROTOCOL_BAD_COMMAND'
  | 'PROTOCOL_TOO_LARGE'
  | 'PROTOCOL_TRUNCATED'
  | 'PROTOCOL_BAD_PAYLOAD'
  | 'PROTOCOL_OUT_OF_ORDER';

export class FerryError extends Error {
  readonly code: FerryErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: FerryErrorCode, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = 'FerryError';
    this.code = code;
    this.details = details;
  }

  toJSON(): { code: FerryErrorCode; message: string; details: Readonly<Record<string, unknown>> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

export function isFerryError(err: unknown, code?: FerryErrorCode): err is FerryError {
  return err instanceof FerryError && (code === undefined || err.code === code);
}

/** Message of any thrown value, for logs and crash reports. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
