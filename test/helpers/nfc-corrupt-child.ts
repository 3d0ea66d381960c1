/**
 * The process of the remote copy's corruption test: a receiver and a remote copy of the plan in
 * <planFile> from the datastore at <srcRoot> into the one at <dstRoot>, over TCP on 127.0.0.1, in one
 * process started with FERRY_FAILPOINTS (e.g. nfc.send.corrupt=drop:3: the third chunk sent is damaged
 * after its CRC-32 was computed). Prints one line `result <json>`: the job's record, the sink's
 * resentBytes and the receiver's log lines.
 * Usage: node nfc-corrupt-child.js <srcRoot> <dstRoot> <planFile> <streams>
 */
import { readFile } from 'node:fs/promises';
import { copyPlanSchema } from '../../src/nfc/plan.js';
import { HOST_A, HOST_B, mountAs } from './nfc.js';
import { remoteCopyJob, startReceiver } from './nfc-remote.js';

const [srcRoot, dstRoot, planFile, streams] = process.argv.slice(2);
if (srcRoot === undefined || dstRoot === undefined || planFile === undefined || streams === undefined) {
  throw new Error('usage: nfc-corrupt-child <srcRoot> <dstRoot> <planFile> <streams>');
}
const plan = copyPlanSchema.parse(JSON.parse(await readFile(planFile, 'utf8')));
const src = await mountAs(srcRoot, 'src', HOST_A);
const dst = await mountAs(dstRoot, 'dst', HOST_B);
const r = await startReceiver(dst);
const { job, sink } = await remoteCopyJob(src, r, plan, await r.ticket(plan), { streams: Number(streams) });
const record = await job.run();
await r.receiver.close();
process.stdout.write(`result ${JSON.stringify({ record, resentBytes: sink()?.resentBytes ?? null, lines: r.lines })}\n`);
