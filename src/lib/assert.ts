/**
 * Assertions are for programmer errors only: a failed assertion means Ferry itself is wrong, never
 * that a user, a guest or a peer sent bad input (those get a FerryError with a stable code).
 */
export class AssertionError extends Error {
  constructor(message: string) {
    super(`assertion failed: ${message}`);
    this.name = 'AssertionError';
  }
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function unreachable(value: never, what: string): never {
  throw new AssertionError(`unreachable ${what}: ${String(value)}`);
}
