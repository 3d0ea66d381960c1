/** GET /v1/vms/{name}/console?follow=1 is a live stream that ends when its VM leaves the host. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startAgent, type TestAgent } from '../helpers/agents.js';
import { vmRequest } from '../helpers/guests.js';
import { MiB } from '../../src/lib/units.js';

let h: TestAgent;
before(async () => { h = await startAgent('console'); });
after(async () => { await h.close(); });

describe('console follow stream', () => {
  it('delivers output as it comes and ends when the VM is deleted', async () => {
    await h.client.createVm(await vmRequest('talker', 'dirtier', { memoryBytes: 4 * MiB, cmdline: 'hot=1MiB pattern=seq', start: true }));
    await h.client.waitForConsole('talker', 'dirtier:');
    const stream = await h.client.console('talker', { follow: true });
    const drained = (async (): Promise<number> => {
      let bytes = 0;
      for await (const chunk of stream) bytes += chunk.byteLength;
      return bytes;
    })();
    await h.client.stopVm('talker');
    await h.client.deleteVm('talker');
    // Without the close on delete this never resolves and the test times out.
    assert.ok(await drained > 0, 'the stream carried the console and then ended');
  });
});
