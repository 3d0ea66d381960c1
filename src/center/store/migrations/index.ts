/**
 * Every migration, oldest first. Listed by static import rather than read from the directory at run
 * time: the compiled layout (dist/…) and a bundled CLI find them the same way, and a migration that
 * fails to compile fails the build, not a center's start.
 */
import type { StoreMigration } from './migration.js';
import { migration0001 } from './0001-inventory.js';
import { migration0002 } from './0002-tasks-events.js';
import { migration0003 } from './0003-credentials.js';
import { migration0004 } from './0004-task-admission.js';
import { migration0005 } from './0005-tls.js';
import { migration0006 } from './0006-mobility-paths.js';
import { migration0007 } from './0007-task-move.js';
import { migration0008 } from './0008-datastore-space.js';

export const MIGRATIONS: readonly StoreMigration[] = [migration0001, migration0002, migration0003, migration0004, migration0005, migration0006, migration0007, migration0008];
