/**
 * A real host agent process for test/e2e/datastore-leases.test.ts: it mounts one shared directory
 * as datastore "shared" and opens one disk file on it for writing through its datastore, the way
 * a VM's disk will be opened. argv[2] is JSON { name, dataDir, sharedDir, file, token, timing }.
 * Prints (one line each, for the test to wait on): "ready url=…", "refused <details JSON>" each
 * time the lease is held by another (it retries), "taken <JSON>" once it holds the lease and has
 * written and flushed its name at offset 0, "lost <JSON>" if the lease is lost. SIGTERM closes the
 * disk (releasing the lease) and the host.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { HostAgent } from '../../src/host/agent.js';
import { isFerryError } from '../../src/lib/errors.js';
import type { LeaseTiming } from '../../src/storage/lease.js';
import type { DatastoreFile } from '../../src/storage/datastore.js';

interface Config { name: string; dataDir: string; sharedDir: string; file: string; token: string; timing: LeaseTiming }
/** Between take attempts while another host holds the lease. */
const RETRY_MS = 100;

const c = JSON.parse(process.argv[2] ?? '{}') as Config;
const say = (line: string): void => { process.stdout.write(`${line}\n`); };
const agent = await HostAgent.start({
  name: c.name, dataDir: c.dataDir, listenHost: '127.0.0.1', listenPort: 0, token: c.token, log: () => {},
  datastores: [{ name: 'shared', path: c.sharedDir }], leaseTiming: c.timing,
});
say(`ready url=${agent.url}`);
let disk: DatastoreFile | null = null;
let stopping = false;
process.once('SIGTERM', () => {
  stopping = true;
  void (disk?.close() ?? Promise.resolve()).then(() => agent.close()).then(() => { process.exit(0); });
});
while (disk === null && !stopping) {
  try {
    disk = await agent.datastores.get('shared').open(c.file);
  } catch (err) {
    if (!isFerryError(err, 'DISK_LOCKED')) throw err;
    say(`refused ${JSON.stringify(err.details)}`);
    await sleep(RETRY_MS);
  }
}
if (disk !== null) {
  const lease = disk.lease;
  lease?.on('lost', (l) => { say(`lost ${JSON.stringify(l)}`); });
  await disk.write(0, Buffer.from(c.name));
  await disk.flush();
  say(`taken ${JSON.stringify({ atMs: Date.now(), broke: lease?.broke?.hostName ?? null, hostId: agent.hostId })}`);
}
