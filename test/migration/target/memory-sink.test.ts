/**
 * A prepared target applies MEMORY batches as they arrive, straight into guest RAM (IncomingMigration
 * .memorySink). A batch that turns out invalid halfway — here an entry past the end of RAM after a valid
 * one whose pages were already written — is refused with its own code, to the request it was in, and
 * the whole incoming VM is discarded (the migration recorded aborted), over real sockets.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isFerryError } from '../../../src/lib/errors.js';
import { MigrationReceiver } from '../../../src/migration/target/receiver.js';
import type { StoredOutcome } from '../../../src/migration/target/hooks.js';
import { ClientChannel } from '../../../src/migration/channel.js';
import { encodeHello, encodeMemory, encodePrepare } from '../../../src/migration/protocol/messages.js';
import { Command, PROTOCOL_VERSION } from '../../../src/migration/protocol/frame.js';
import { tcpTransport } from '../../../src/dataplane/tcp.js';
import type { TransportAddress } from '../../../src/dataplane/transport.js';
import { MiB } from '../../../src/lib/units.js';

const RAM_BYTES = 4 * MiB;
const TIMEOUT_MS = 10_000;

describe('IncomingMigration applying MEMORY as it arrives', () => {
  const stored = new Map<string, StoredOutcome>();
  const recorded = new Map<string, () => void>();
  const receiver = new MigrationReceiver({
    admit: () => undefined,
    adopt: () => Promise.resolve(),
    prepareDisk: () => Promise.reject(new Error('no disk in this test')),
    recordOutcome: (id, outcome) => {
      stored.set(id, outcome);
      const done = recorded.get(id);
      if (done !== undefined) setImmediate(done);
      return Promise.resolve();
    },
    storedOutcome: (id) => Promise.resolve(stored.get(id) ?? null),
    log: () => {},
  }, tcpTransport, { host: '127.0.0.1', port: 0 });
  let address: TransportAddress;
  const channels: ClientChannel[] = [];
  before(async () => { address = await receiver.listen(); });
  after(async () => { for (const c of channels) c.close(); await receiver.close(); });

  async function connect(ticket: string, role: 'control' | 'data'): Promise<ClientChannel> {
    const c = new ClientChannel(await tcpTransport.dial(address, { timeoutMs: TIMEOUT_MS }), `test ${role}`);
    channels.push(c);
    await c.request('hello', (rid) => encodeHello(rid, { protocol: PROTOCOL_VERSION, ticket, role, channel: 0 }), TIMEOUT_MS);
    return c;
  }

  /** A ticket and a control connection that prepared a small VM. */
  async function prepared(name: string): Promise<{ ticket: string; migrationId: string }> {
    const image = await readFile(new URL('../../../guests/compute.wasm', import.meta.url));
    const t = await receiver.issueTicket();
    const control = await connect(t.ticket, 'control');
    await control.request('PREPARE', (rid) => encodePrepare(rid, {
      migrationId: t.migrationId, dataChannels: 1, image,
      vm: { name, memoryBytes: RAM_BYTES, vcpus: 1, granularityBytes: 4096, cmdline: '', imageSha256: createHash('sha256').update(image).digest('hex') },
    }), TIMEOUT_MS);
    return t;
  }

  it('refuses a batch with an entry outside RAM after pages it already applied: PROTOCOL_BAD_PAYLOAD to that request, VM discarded', async () => {
    const t = await prepared('sink-1');
    const aborted = new Promise<void>((resolve) => { recorded.set(t.migrationId, resolve); });
    const data = await connect(t.ticket, 'data');
    // 2 MiB of valid pages first (many socket chunks, applied as they come), then a page past the end of RAM.
    const frame = encodeMemory(0, 1, [
      { offset: 0, length: 2 * MiB, encoding: 'raw', data: Buffer.alloc(2 * MiB, 0x5a) },
      { offset: RAM_BYTES, length: 4096, encoding: 'raw', data: Buffer.alloc(4096, 1) },
    ]);
    await assert.rejects(data.request('MEMORY', (rid) => { frame.writeUInt32LE(rid, 8); return frame; }, TIMEOUT_MS), (err: unknown) => {
      assert.ok(isFerryError(err));
      assert.equal(err.code, 'PROTOCOL_BAD_PAYLOAD', err.message);
      assert.match(err.message, /entry 1 .*outside guest RAM/);
      return true;
    });
    await aborted;
    assert.equal(stored.get(t.migrationId), 'aborted');
    assert.equal((await receiver.outcome(t.migrationId)).state, 'aborted');
  });

  it('refuses a batch as soon as its header shows it cannot be valid, without waiting for the rest of its payload', async () => {
    const t = await prepared('sink-2');
    const data = await connect(t.ticket, 'data');
    // A 64 KiB MEMORY payload announcing 4096 entries (their headers alone would need 64 KiB + 8): only
    // the frame header and the batch header are ever sent. A target that buffered the payload first
    // would wait for the remaining bytes and never answer.
    const head = Buffer.alloc(16 + 8);
    head.write('FMIG', 0, 'latin1');
    head.writeUInt8(PROTOCOL_VERSION, 4);
    head.writeUInt8(Command.MEMORY, 5);
    head.writeUInt32LE(64 * 1024, 12);
    head.writeUInt32LE(1, 16);
    head.writeUInt32LE(4096, 20);
    await assert.rejects(data.request('MEMORY', (rid) => { head.writeUInt32LE(rid, 8); return head; }, TIMEOUT_MS), (err: unknown) => {
      assert.ok(isFerryError(err));
      assert.equal(err.code, 'PROTOCOL_BAD_PAYLOAD', err.message);
      assert.match(err.message, /entries cannot fit/);
      return true;
    });
  });
});
