/**
 * `ferry vm snapshot | revert | consolidate` and `ferry disk chain` as a user runs them: the real
 * CLI in child processes against a real in-process host agent, a kvlog VM on a real VMDK.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_TOKEN, startAgent, type TestAgent } from '../helpers/agents.js';
import { runFerry } from '../helpers/cli.js';
import { vmRequest } from '../helpers/guests.js';
import { MiB } from '../../src/lib/units.js';
import { diskChainSchema } from '../../src/api/disk-v1.js';

let dir = '';
let host: TestAgent | undefined;
let tokenFile = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-cli-snap-'));
  tokenFile = join(dir, 'token');
  await writeFile(tokenFile, AGENT_TOKEN);
  host = await startAgent('cli-snap', { datastores: [{ name: 'ds1', path: dir }] });
  await host.client.createVm(await vmRequest('kv', 'kvlog', { memoryBytes: 8 * MiB, cmdline: 'max=50000 flush=64 rate=2000', disk: { datastore: 'ds1', path: 'kv.vmdk', sizeBytes: 16 * MiB }, start: true }));
  await host.client.waitForConsole('kv', 'kvlog: flushed');
});
after(async () => {
  await host?.close();
  await rm(dir, { recursive: true, force: true });
});

async function ferry(...args: string[]): Promise<string> {
  assert.ok(host !== undefined);
  const r = await runFerry([...args, '--host', host.agent.url, '--token-file', tokenFile]);
  assert.equal(r.code, 0, `ferry ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

describe('ferry vm snapshot / revert / consolidate, ferry disk chain', () => {
  it('snapshots, shows the chain (text and JSON), reverts, consolidates', async () => {
    assert.match(await ferry('vm', 'snapshot', 'kv'), /^snapshot kv\.vmdk \(CID [0-9a-f]{8}\) of VM kv; writes now go to kv-000001\.vmdk .*guest paused [\d.]+ ms\n$/);
    const text = await ferry('disk', 'chain', 'kv');
    assert.match(text, /2 level\(s\)\n {2}0 {2}top {7}kv-000001\.vmdk {2}CID [0-9a-f]{8} {2}parent [0-9a-f]{8}/);
    assert.match(text, /\n {2}1 {2}snapshot {2}kv\.vmdk /);
    const chain = diskChainSchema.parse(JSON.parse(await ferry('disk', 'chain', 'kv', '--json')));
    assert.equal(chain.chain[0]?.parentCid, chain.chain[1]?.cid);

    assert.match(await ferry('vm', 'revert', 'kv', '--to', 'kv.vmdk'), /reverted to kv\.vmdk .*removed kv-000001\.vmdk; the VM was restarted on it\n$/);
    assert.match(await ferry('vm', 'consolidate', 'kv'), /kv-000002\.vmdk merged into kv\.vmdk .* in \d+ round\(s\)/);
    assert.equal(diskChainSchema.parse(JSON.parse(await ferry('disk', 'chain', 'kv', '--json'))).chain.length, 1);
    assert.equal((await host?.client.verifyVm('kv'))?.selfcheck, 0);

    assert.ok(host !== undefined);
    const refused = await runFerry(['vm', 'consolidate', 'kv', '--host', host.agent.url, '--token-file', tokenFile]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /error \[VM_STATE\]: .*chain of one/);
  });
});
