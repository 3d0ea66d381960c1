/**
 * The writer the crash-consistency test kills: opens a disk (and its chain) read-write and writes
 * epochs of seeded random writes, issued together and followed by a flush; prints `acked <epoch>` on stdout (a pipe:
 * synchronous on Linux, so a line printed is a line the test reads even after SIGKILL) once the flush
 * of that epoch resolved. Usage: node vmdk-crash-writer.js <disk.vmdk> <seed>
 */
import { crashEpoch } from './vmdk-crash.js';
import { openLocalDisk } from './vmdk.js';

const [path, seedText] = process.argv.slice(2);
if (path === undefined || seedText === undefined) throw new Error('usage: vmdk-crash-writer <disk.vmdk> <seed>');
const disk = await openLocalDisk(path);
for (let epoch = 1; ; epoch++) {
  // All of an epoch's writes in flight at once, the flush issued behind them (not after they
  // resolve): the disk's own ordering is what makes the flush cover them.
  const writes = crashEpoch(Number(seedText), epoch, disk.capacityBytes).map((w) => disk.write(w.offsetBytes, w.data));
  await Promise.all([...writes, disk.flush()]);
  process.stdout.write(`acked ${epoch}\n`);
}
