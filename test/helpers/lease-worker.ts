/**
 * A child process that races for one lease (test/storage/lease.test.ts): argv[2] is JSON
 * { filePath, hostName, timing }. It prints "ready", waits for "go" on stdin (so that every worker
 * starts its take at the same moment), tries Lease.take, prints one JSON line with the result, and
 * holds a won lease until its stdin closes (so that a loser cannot take it cleanly after a release).
 */
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { Lease, type LeaseTiming } from '../../src/storage/lease.js';
import { isFerryError } from '../../src/lib/errors.js';

interface WorkerConfig { filePath: string; hostName: string; timing: LeaseTiming }

const config = JSON.parse(process.argv[2] ?? '{}') as WorkerConfig;
const lines = createInterface({ input: process.stdin });
let lease: Lease | null = null;
lines.on('line', (line) => {
  if (line.trim() !== 'go') return;
  Lease.take(config.filePath, { hostName: config.hostName, hostId: randomBytes(8).toString('hex') }, config.timing)
    .then((l) => {
      lease = l;
      process.stdout.write(`${JSON.stringify({ won: true, hostName: config.hostName, broke: l.broke?.hostName ?? null })}\n`);
    }, (err: unknown) => {
      process.stdout.write(`${JSON.stringify({ won: false, hostName: config.hostName, code: isFerryError(err) ? err.code : String(err) })}\n`);
    });
});
lines.on('close', () => { void (lease?.release() ?? Promise.resolve()).then(() => { process.exit(0); }); });
process.stdout.write('ready\n');
