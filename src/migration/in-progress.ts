/**
 * Migrations in progress in this process, either side. Background work that blocks the main thread
 * for a while (a target's check of an adopted instrumented module: 0.2–0.5 s of binaryen) waits while
 * any is: a stall of the main thread in a migration's switch-over is its downtime (a host being drained
 * or filled receives VMs back to back). Bounded by the migrations a host admits.
 */
const inProgress = new Set<object>();

/** Marks a migration (source job or incoming migration) in progress until the returned function is called. */
export function migrationBegins(migration: object): () => void {
  inProgress.add(migration);
  return () => { inProgress.delete(migration); };
}

/** Migrations in progress in this process now. */
export function migrationsInProgress(): number {
  return inProgress.size;
}
