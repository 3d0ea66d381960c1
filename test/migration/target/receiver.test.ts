/**
 * MigrationReceiver's memory of outcomes is bounded by MAX_REMEMBERED_OUTCOMES: beyond it the
 * oldest durable outcomes are forgotten (the store answers for them), one only memory holds is
 * never dropped, and when every remembered outcome is such a one, new tickets are refused (BUSY).
 * Outcomes are driven for real: a ticket, a control connection over TCP with HELLO, then the
 * connection dropped — the receiver aborts that migration and records it.
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../../src/lib/errors.js';
import { MigrationReceiver } from '../../../src/migration/target/receiver.js';
import { MAX_REMEMBERED_OUTCOMES } from '../../../src/migration/target/outcomes.js';
import type { StoredOutcome } from '../../../src/migration/target/hooks.js';
import { ClientChannel } from '../../../src/migration/channel.js';
import { encodeHello } from '../../../src/migration/protocol/messages.js';
import { PROTOCOL_VERSION } from '../../../src/migration/protocol/frame.js';
import { tcpTransport } from '../../../src/dataplane/tcp.js';
import type { TransportAddress } from '../../../src/dataplane/transport.js';

/** A receiver with an in-memory "data directory" whose writes can be made to fail. */
class Harness {
  readonly stored = new Map<string, StoredOutcome>();
  failWrites = false;
  private readonly recorded = new Map<string, () => void>();
  readonly receiver = new MigrationReceiver({
    admit: () => { throw new FerryError('MIGRATION_REFUSED', 'this test prepares nothing'); },
    adopt: () => Promise.reject(new FerryError('INTERNAL', 'nothing commits in this test')),
    prepareDisk: () => Promise.reject(new FerryError('MIGRATION_REFUSED', 'this test prepares nothing')),
    recordOutcome: (id, outcome) => {
      // Resolved after the receiver has handled this write's result (its microtasks run first).
      const done = this.recorded.get(id);
      if (done !== undefined) setImmediate(done);
      if (this.failWrites) return Promise.reject(new FerryError('STORE_IO', 'disk full (test)'));
      this.stored.set(id, outcome);
      return Promise.resolve();
    },
    storedOutcome: (id) => Promise.resolve(this.stored.get(id) ?? null),
    log: () => {},
  }, tcpTransport, { host: '127.0.0.1', port: 0 });
  private address: TransportAddress | null = null;

  async listen(): Promise<void> { this.address = await this.receiver.listen(); }

  /** One migration that the source abandons right after HELLO; resolves when its abort was recorded (or failed to be). */
  async abandonedMigration(): Promise<string> {
    assert.ok(this.address !== null);
    const t = await this.receiver.issueTicket();
    const recorded = new Promise<void>((resolve) => { this.recorded.set(t.migrationId, resolve); });
    const channel = new ClientChannel(await tcpTransport.dial(this.address, { timeoutMs: 5000 }), 'test control');
    await channel.request('hello', (rid) => encodeHello(rid, { protocol: PROTOCOL_VERSION, ticket: t.ticket, role: 'control', channel: 0 }), 5000);
    channel.close();
    await recorded;
    this.recorded.delete(t.migrationId);
    return t.migrationId;
  }
}

describe('MigrationReceiver remembered outcomes', () => {
  let h: Harness | null = null;
  afterEach(async () => { await h?.receiver.close(); h = null; });

  it(`forgets the oldest durable outcomes beyond ${MAX_REMEMBERED_OUTCOMES}, never one only memory holds; the store answers for the forgotten`, async () => {
    h = new Harness();
    await h.listen();
    h.failWrites = true;
    const memoryOnly = await h.abandonedMigration();
    h.failWrites = false;
    const ids: string[] = [];
    for (let i = 0; i < MAX_REMEMBERED_OUTCOMES + 50; i++) {
      ids.push(await h.abandonedMigration());
      assert.ok(h.receiver.rememberedOutcomes <= MAX_REMEMBERED_OUTCOMES, `${h.receiver.rememberedOutcomes} remembered after ${i + 1}`);
    }
    assert.ok(h.receiver.rememberedOutcomes >= MAX_REMEMBERED_OUTCOMES - 1, 'durable outcomes are forgotten only beyond the bound');
    assert.equal(h.stored.has(memoryOnly), false);
    // Only memory holds it, so it is still there (with the reason only memory has), after 1074 newer ones.
    const kept = await h.receiver.outcome(memoryOnly);
    assert.equal(kept.state, 'aborted');
    assert.equal(typeof kept.reason, 'string');
    // The oldest durable one was forgotten: the store answers (no reason), and without it, nothing does.
    const oldest = ids[0] ?? '';
    assert.deepEqual(await h.receiver.outcome(oldest), { state: 'aborted' });
    h.stored.delete(oldest);
    assert.deepEqual(await h.receiver.outcome(oldest), { state: 'unknown' }, 'not in memory any more');
    // The newest are remembered.
    const newest = await h.receiver.outcome(ids.at(-1) ?? '');
    assert.deepEqual([newest.state, typeof newest.reason], ['aborted', 'string']);
  });

  it(`refuses new tickets (BUSY) once all ${MAX_REMEMBERED_OUTCOMES} remembered outcomes are held only in memory, and keeps every one`, async () => {
    h = new Harness();
    await h.listen();
    h.failWrites = true;
    const ids: string[] = [];
    for (let i = 0; i < MAX_REMEMBERED_OUTCOMES; i++) {
      ids.push(await h.abandonedMigration());
      assert.ok(h.receiver.rememberedOutcomes <= MAX_REMEMBERED_OUTCOMES);
    }
    assert.equal(h.receiver.rememberedOutcomes, MAX_REMEMBERED_OUTCOMES);
    const err = await h.receiver.issueTicket().then(() => null, (e: unknown) => e);
    assert.ok(err instanceof FerryError);
    assert.equal(err.code, 'BUSY');
    assert.equal(h.receiver.rememberedOutcomes, MAX_REMEMBERED_OUTCOMES, 'the refused ticket added nothing');
    for (const id of ids) assert.equal((await h.receiver.outcome(id)).state, 'aborted', `${id} still remembered`);
    assert.equal(h.stored.size, 0);
  });
});
