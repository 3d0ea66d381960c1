/**
 * The chain a copy-mode PREPARE announces and the target's answer about it (docs/migration-protocol.md,
 * "Seeded base levels"): the announcement round-trips and is bounded like every payload; the answer
 * (`preparedFromOk`) is validated as a peer's input and checked against what was announced.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_CHAIN_DEPTH, MAX_DISK_CAPACITY_BYTES } from '../../../src/lib/limits.js';
import { Command } from '../../../src/migration/protocol/frame.js';
import { FrameReader } from '../../../src/migration/protocol/reader.js';
import {
  decodeMessage, decodeOk, decodePrepare, encodeOk, encodePrepare, preparedFromOk, type ChainLevelSpec, type PrepareDisk,
} from '../../../src/migration/protocol/messages.js';
import type { OkBody } from '../../../src/lib/wire-json.js';
import { HEADER_BYTES } from '../../../src/migration/protocol/frame.js';
import { MiB, chainDisk, chainSpec, makeImage, prepareBody, preparedFor, throwsCode } from './fixtures.js';

/** PREPARE's JSON part from a raw wire object (bypassing the encoder, as a hostile source would). */
function preparePayload(wire: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(wire));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(json.length);
  return Buffer.concat([len, json, makeImage()]);
}

function prepareWireWith(disk: unknown): Record<string, unknown> {
  const p = prepareBody();
  return { migrationId: p.migrationId, vm: p.vm, dataChannels: p.dataChannels, disk };
}

function level(over: Partial<Record<keyof ChainLevelSpec, unknown>> & Record<string, unknown> = {}): Record<string, unknown> {
  return { ...chainSpec()[0], ...over };
}

/** The reply as the source gets it: through an OK frame and its decoder. */
function replied(body: unknown): OkBody {
  const frame = encodeOk(7, body as OkBody);
  return decodeOk(frame.subarray(HEADER_BYTES));
}

describe('PREPARE announcing the chain', () => {
  it('round-trips the chain, top first, with every field', () => {
    for (const chain of [chainSpec(), chainSpec().slice(2), Array.from({ length: MAX_CHAIN_DEPTH }, (_, i) => ({ ...chainSpec()[0], path: `d/l${i}.vmdk` } as ChainLevelSpec))]) {
      const disk = chainDisk(chain);
      const reader = new FrameReader();
      const [frame] = reader.push(encodePrepare(2, { ...prepareBody(), disk }));
      assert.ok(frame !== undefined);
      const msg = decodeMessage(frame);
      assert.ok(msg.command === Command.PREPARE);
      assert.deepEqual(msg.body.disk, disk);
    }
    // An older source's copy announcement (no chain) stays without one: nothing is looked up.
    const plain: PrepareDisk = { mode: 'copy', datastore: 'ds2', path: 'a.vmdk', capacityBytes: 64 * MiB, blockBytes: 65536 };
    const body = decodePrepare(preparePayload(prepareWireWith(plain)));
    assert.deepEqual(body.disk, plain);
    assert.equal(body.disk?.mode === 'copy' && 'chain' in body.disk, false);
  });

  it(`refuses hostile chains: more than ${MAX_CHAIN_DEPTH} levels, none, bad CIDs, unknown keys, sizes out of range`, () => {
    const copy = { ...chainDisk(), chain: undefined };
    const bad: [string, unknown][] = [
      ['33 levels', Array.from({ length: MAX_CHAIN_DEPTH + 1 }, (_, i) => level({ path: `d/l${i}.vmdk` }))],
      ['no level', []],
      ['not an array', { 0: level() }],
      ['uppercase cid', [level({ cid: '0000ABCD' })]],
      ['short cid', [level({ cid: 'abc' })]],
      ['long parentCid', [level({ parentCid: '123456789' })]],
      ['numeric cid', [level({ cid: 43981 })]],
      ['unknown key', [level({ sha256: 'ab' })]],
      ['missing allocatedBytes', [{ path: 'a', cid: '00000001', parentCid: 'ffffffff', capacityBytes: 512 }]],
      ['negative allocatedBytes', [level({ allocatedBytes: -1 })]],
      ['fractional allocatedBytes', [level({ allocatedBytes: 1.5 })]],
      ['allocatedBytes beyond the largest disk', [level({ allocatedBytes: MAX_DISK_CAPACITY_BYTES + 1 })]],
      ['capacity not in sectors', [level({ capacityBytes: 1000 })]],
      ['empty path', [level({ path: '' })]],
      ['path too long', [level({ path: 'p'.repeat(1025) })]],
    ];
    for (const [what, chain] of bad) {
      throwsCode(() => decodePrepare(preparePayload(prepareWireWith({ ...copy, chain }))), 'PROTOCOL_BAD_PAYLOAD', undefined);
      assert.throws(() => encodePrepare(2, { ...prepareBody(), disk: { ...copy, chain } as unknown as PrepareDisk }), { code: 'PROTOCOL_BAD_PAYLOAD' }, what);
    }
    // A shared disk carries no chain.
    throwsCode(() => decodePrepare(preparePayload(prepareWireWith({ mode: 'shared', datastoreId: 'ab'.repeat(16), path: 'a', capacityBytes: 512, chain: chainSpec() }))), 'PROTOCOL_BAD_PAYLOAD');
  });
});

describe('the PREPARE reply (preparedFromOk)', () => {
  const announced = chainSpec();

  it('accepts an answer that keeps a run of base levels, none, or says nothing of the disk', () => {
    for (const kept of [0, 1, 2]) {
      const disk = preparedFor(announced, kept);
      assert.deepEqual(preparedFromOk(replied({ accepted: true, disk }), announced), { accepted: true, disk });
    }
    // An older target: no disk part, every level moves.
    assert.deepEqual(preparedFromOk(replied({ accepted: true }), announced), { accepted: true });
    assert.deepEqual(preparedFromOk(replied({ accepted: true }), undefined), { accepted: true });
  });

  it('refuses answers that do not fit what was announced, or are malformed', () => {
    const good = preparedFor(announced, 1);
    const bad: [string, unknown, readonly ChainLevelSpec[] | undefined, RegExp][] = [
      ['a level fewer', { ...good, chain: good.chain.slice(1) }, announced, /not the ones PREPARE announced/],
      ['a level more', { ...good, chain: [...good.chain, { path: 'x', cid: '00000009', migrate: false }] }, announced, /not the ones/],
      ['levels swapped', { ...good, chain: [good.chain[1], good.chain[0], good.chain[2]] }, announced, /not the ones/],
      ['another cid', { ...good, chain: good.chain.map((l, i) => (i === 2 ? { ...l, cid: '00000000' } : l)) }, announced, /not the ones/],
      ['another path', { ...good, chain: good.chain.map((l, i) => (i === 2 ? { ...l, path: 'elsewhere.vmdk' } : l)) }, announced, /not the ones/],
      ['the top kept', { ...good, chain: good.chain.map((l) => ({ ...l, migrate: false })) }, announced, /top of the chain/],
      ['a middle level kept above a moving base', { ...good, chain: good.chain.map((l, i) => ({ ...l, migrate: i !== 1 })) }, announced, /base end/],
      ['levels kept without a seedPath', { ...good, seedPath: null }, announced, /seedPath/],
      ['a seedPath with nothing kept', { ...preparedFor(announced, 0), seedPath: 'seeds/x.vmdk' }, announced, /seedPath/],
      ['a disk part when no chain was announced', good, undefined, /announced none/],
      ['an unknown key in the disk part', { ...good, extra: 1 }, announced, /disk/],
      ['an unknown key in a level', { ...good, chain: good.chain.map((l) => ({ ...l, allocatedBytes: 1 })) }, announced, /disk\.chain/],
      ['an unknown key at the top', { accepted: true, disk: good, resumed: true }, announced, /\(root\)|resumed/],
      ['not accepted', { accepted: false, disk: good }, announced, /accepted/],
      ['migrate as a string', { ...good, chain: good.chain.map((l) => ({ ...l, migrate: String(l.migrate) })) }, announced, /migrate/],
      ['negative verifyBytes', { ...good, verifyBytes: -1 }, announced, /verifyBytes/],
      ['an empty chain', { ...good, chain: [] }, announced, /chain/],
    ];
    for (const [what, disk, ann, message] of bad) {
      const body = typeof disk === 'object' && disk !== null && 'accepted' in disk ? disk : { accepted: true, disk };
      assert.throws(() => preparedFromOk(replied(body), ann), (err: unknown) => {
        assert.ok(err instanceof Error && 'code' in err && err.code === 'PROTOCOL_BAD_PAYLOAD', `${what}: ${String(err)}`);
        assert.match(err.message, message, what);
        return true;
      }, what);
    }
  });
});
