/**
 * The process the consolidate crash test kills: consolidates the delta DELTA_PATH into its parent
 * on a local datastore, with the pointer file as its commit record. Prints `progress <done> <total>`
 * after each chunk copied and `done` at the end (stdout is a pipe: a line printed is a line the
 * test reads even after SIGKILL). Failpoints (FERRY_FAILPOINTS) may crash it at a named step.
 * Usage: node consolidate-crash-child.js <root> <hostId>
 */
import { consolidateChain } from '../../src/storage/vmdk/consolidate.js';
import { DELTA_PATH, mountCrashDatastore, writePointer } from './consolidate-crash.js';

const [root, hostId] = process.argv.slice(2);
if (root === undefined || hostId === undefined) throw new Error('usage: consolidate-crash-child <root> <hostId>');
const ds = await mountCrashDatastore(root, 'child', hostId);
await consolidateChain(ds, DELTA_PATH, {
  commit: (parentPath) => writePointer(root, parentPath),
  onProgress: (done, total) => { process.stdout.write(`progress ${done} ${total}\n`); },
});
process.stdout.write('done\n');
