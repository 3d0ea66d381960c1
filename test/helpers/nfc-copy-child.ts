/**
 * The process the copier crash test kills: a local copy of the plan in PLAN_FILE (JSON) from the
 * datastore at <srcRoot> into the one at <dstRoot>, as host "child" (short leases, so that the
 * test can take over once they expire). Failpoints (FERRY_FAILPOINTS, e.g. nfc.sink.after-sync=crash)
 * kill it at a named step; it prints `done <outcome>` if it gets to the end.
 * Usage: node nfc-copy-child.js <srcRoot> <dstRoot> <planFile> <epoch> [<rateBytesPerSec>]
 */
import { readFile } from 'node:fs/promises';
import { copyPlanSchema } from '../../src/nfc/plan.js';
import { mountAs, runLocalCopy } from './nfc.js';

const [srcRoot, dstRoot, planFile, epoch, rate] = process.argv.slice(2);
if (srcRoot === undefined || dstRoot === undefined || planFile === undefined || epoch === undefined) throw new Error('usage: nfc-copy-child <srcRoot> <dstRoot> <planFile> <epoch>');
const owner = { hostName: 'child', hostId: 'cccccccccccccccc' };
const plan = copyPlanSchema.parse(JSON.parse(await readFile(planFile, 'utf8')));
const src = await mountAs(srcRoot, 'src', owner);
const dst = await mountAs(dstRoot, 'dst', owner);
const record = await runLocalCopy(src, dst, plan, { epoch: Number(epoch), host: 'child', ...(rate === undefined ? {} : { rateBytesPerSec: Number(rate) }) });
process.stdout.write(`done ${record.outcome}\n`);
