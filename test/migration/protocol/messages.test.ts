import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../../src/lib/errors.js';
import { Command, encodeFrame, type Frame } from '../../../src/migration/protocol/frame.js';
import { FrameReader } from '../../../src/migration/protocol/reader.js';
import { MAX_IMAGE_BYTES } from '../../../src/lib/limits.js';
import {
  MAX_PREPARE_JSON_BYTES, decodeMessage, decodePrepare, decodeState, encodeAbort, encodeCommit,
  encodeError, encodeErrorFor, encodeHello, encodeMemory, encodeMessage, encodeOk, encodePrepare, encodeRound,
  encodeState, type Message, type StateBody,
} from '../../../src/migration/protocol/messages.js';
import {
  MiB, RAM_BYTES, TICKET, controlStream, dataStream, helloBody, jsonFrame, makeImage, memoryEntries, prepareBody,
  rawFrame, sha256, stateBody, throwsCode,
} from './fixtures.js';

function frameOf(bytes: Buffer): Frame {
  const reader = new FrameReader();
  const frames = reader.push(bytes);
  reader.end();
  assert.equal(frames.length, 1);
  const [frame] = frames;
  assert.ok(frame);
  return frame;
}

function decode(bytes: Buffer, ramBytes: number | null = RAM_BYTES): Message {
  return decodeMessage(frameOf(bytes), ramBytes === null ? {} : { ramBytes });
}

function badJson(command: number, value: unknown, message?: RegExp): void {
  throwsCode(() => decode(jsonFrame(command, value)), 'PROTOCOL_BAD_PAYLOAD', message);
}

/** A PREPARE payload from raw JSON text and image, bypassing the encoder. */
function preparePayload(json: string | Buffer, image: Uint8Array = makeImage()): Buffer {
  const j = typeof json === 'string' ? Buffer.from(json) : json;
  const len = Buffer.alloc(4);
  len.writeUInt32LE(j.length);
  return Buffer.concat([len, j, image]);
}

function prepareWire(over: Record<string, unknown> = {}, vmOver: Record<string, unknown> = {}): Record<string, unknown> {
  const p = prepareBody();
  return { migrationId: p.migrationId, vm: { ...p.vm, ...vmOver }, dataChannels: p.dataChannels, ...over };
}

function stateWire(globals: unknown[], over: Record<string, unknown> = {}): Record<string, unknown> {
  return { claimedPages: 1, clockNs: '5', clockWallMs: 1, vcpus: [{ halted: false, globals, lastClockReadNs: '0' }], ...over };
}

describe('message round trips', () => {
  it('HELLO (control and data)', () => {
    for (const body of [helloBody('control'), helloBody('data', 15)]) {
      assert.deepEqual(decode(encodeHello(11, body)), { command: Command.HELLO, requestId: 11, body });
    }
  });

  it('PREPARE with the image as a view into the payload', () => {
    const body = prepareBody(makeImage(1000));
    const frame = frameOf(encodePrepare(12, body));
    const msg = decodeMessage(frame);
    assert.equal(msg.command, Command.PREPARE);
    if (msg.command !== Command.PREPARE) return;
    assert.deepEqual({ ...msg.body, image: Buffer.from(msg.body.image) }, { ...body, image: Buffer.from(body.image) });
    assert.equal(msg.body.image.buffer, frame.payload.buffer);
    assert.equal(sha256(msg.body.image), body.vm.imageSha256);
  });

  it('PREPARE at the bounds (64 KiB..3 GiB, 1 and 64 vCPUs, 4 KiB and 2 MiB granularity, 4096-byte cmdline, 16 channels)', () => {
    for (const vm of [
      { memoryBytes: 64 * 1024, vcpus: 1, granularityBytes: 4096, cmdline: '' },
      { memoryBytes: 3 * 1024 * MiB, vcpus: 64, granularityBytes: 2 * MiB, cmdline: 'é'.repeat(2048) },
    ]) {
      const p = prepareBody();
      const body = { ...p, dataChannels: 16, vm: { ...p.vm, ...vm, name: 'A.b_c-9'.padEnd(64, 'x') } };
      const msg = decode(encodePrepare(1, body));
      assert.ok(msg.command === Command.PREPARE);
      assert.deepEqual(msg.body.vm, body.vm);
      assert.equal(msg.body.dataChannels, 16);
    }
  });

  it('PREPARE with a disk (shared or copied), COMMIT with a disk digest, DISK batches over the disk', () => {
    const disks = [
      { mode: 'shared' as const, datastoreId: 'ab'.repeat(16), path: 'vms/kv.vmdk', capacityBytes: 16 * MiB + 512 },
      { mode: 'copy' as const, datastore: 'ds2', path: 'kv.vmdk', capacityBytes: 1024 * MiB, blockBytes: 64 * 1024 },
    ];
    for (const disk of disks) {
      const msg = decode(encodePrepare(1, { ...prepareBody(), disk }));
      assert.ok(msg.command === Command.PREPARE);
      assert.deepEqual(msg.body.disk, disk);
    }
    const bad = [
      { ...disks[0], datastoreId: 'xyz' }, { ...disks[0], capacityBytes: 1000 }, { ...disks[1], blockBytes: 3 * 65536 },
      { ...disks[1], blockBytes: 4096 }, { ...disks[1], extra: 1 }, { mode: 'mirror', path: 'a', capacityBytes: 512 },
    ];
    for (const disk of bad) {
      assert.throws(() => encodePrepare(1, { ...prepareBody(), disk } as unknown as Parameters<typeof encodePrepare>[1]), { code: 'PROTOCOL_BAD_PAYLOAD' }, JSON.stringify(disk));
    }
    const commit: Message = { command: Command.COMMIT, requestId: 3, body: { digest: 'fedcba9876543210', diskDigest: '0123456789abcdef' } };
    assert.deepEqual(decode(encodeMessage(commit)), commit);
    const data = Buffer.alloc(1024, 7);
    const disk: Message = { command: Command.DISK, requestId: 4, body: { round: 2, entries: [{ offset: 512, length: 1024, encoding: 'raw', data }, { offset: 4096, length: 512, encoding: 'zero', data: null }] } };
    const frame = frameOf(encodeMessage(disk));
    assert.deepEqual(decodeMessage(frame, { diskBytes: 8192 }), disk);
    assert.throws(() => decodeMessage(frame, { ramBytes: RAM_BYTES }), { code: 'PROTOCOL_OUT_OF_ORDER' }, 'no DISK for a migration without a copied disk');
    assert.throws(() => decodeMessage(frame, { diskBytes: 4096 }), { code: 'PROTOCOL_BAD_PAYLOAD', message: /outside the disk/ });
  });

  it('ROUND, COMMIT, ABORT, OK, ERROR', () => {
    const cases: Message[] = [
      { command: Command.ROUND, requestId: 1, body: { round: 0, regions: 0, bytes: 0 } },
      { command: Command.ROUND, requestId: 2, body: { round: 2 ** 32 - 1, regions: 2 ** 32 - 1, bytes: Number.MAX_SAFE_INTEGER } },
      { command: Command.COMMIT, requestId: 3, body: { digest: 'fedcba9876543210' } },
      { command: Command.ABORT, requestId: 4, body: { reason: '' } },
      { command: Command.ABORT, requestId: 5, body: { reason: '\u0000'.repeat(512) } },
      { command: Command.OK, requestId: 6, body: {} },
      { command: Command.OK, requestId: 7, body: { resumed: true, nested: { list: [1, 'two', null] } } },
      { command: Command.ERROR, requestId: 8, body: { code: 'VM_CONFIG_INVALID', message: 'no' } },
      { command: Command.ERROR, requestId: 9, body: { code: 'X'.repeat(64), message: '\u0001'.repeat(4096) } },
    ];
    for (const m of cases) assert.deepEqual(decode(encodeMessage(m)), m);
  });

  it('STATE with extreme values: i32/i64 limits, f32, NaN, infinities, -0, clock 2^64-1', () => {
    const body = stateBody();
    const msg = decode(encodeState(5, body));
    assert.ok(msg.command === Command.STATE);
    assert.deepEqual(msg.body, body);
    const f64 = msg.body.vcpus[0]?.globals[9];
    assert.ok(f64 && Object.is(f64.value, -0));
    // 64 vCPUs of 4096 globals each still fit in the 1 MiB bound when small.
    const big: StateBody = {
      claimedPages: 49152, clockNs: 0n, clockWallMs: 0,
      vcpus: Array.from({ length: 64 }, () => ({
        halted: false, globals: Array.from({ length: 4096 }, () => ({ type: 'i32' as const, value: 0 })), lastClockReadNs: 0n,
      })),
    };
    throwsCode(() => encodeState(1, big), 'PROTOCOL_TOO_LARGE');
    const fits: StateBody = { ...big, vcpus: big.vcpus.slice(0, 2) };
    assert.deepEqual(decode(encodeState(1, fits)).body, fits);
  });

  it('MEMORY (decoded with the RAM size) and decode → encode is byte-identical for whole conversations', () => {
    const msg = decode(encodeMemory(3, 7, memoryEntries()));
    assert.ok(msg.command === Command.MEMORY);
    assert.equal(msg.body.round, 7);
    assert.deepEqual(msg.body.entries.map((e) => [e.offset, e.length, e.encoding, e.data?.length ?? null]),
      [[0, 4096, 'raw', 4096], [8192, 8192, 'zero', null], [RAM_BYTES - 4096, 4096, 'deflate', 3]]);
    for (const stream of [controlStream(), dataStream()]) {
      const reader = new FrameReader();
      const frames = reader.push(stream);
      reader.end();
      const again = Buffer.concat(frames.map((f) => encodeMessage(decodeMessage(f, { ramBytes: RAM_BYTES }))));
      assert.ok(again.equals(stream));
    }
  });

  it('MEMORY without a known RAM size is out of order', () => {
    throwsCode(() => decode(encodeMemory(1, 0, []), null), 'PROTOCOL_OUT_OF_ORDER');
  });
});

describe('JSON payload validation', () => {
  it('rejects invalid UTF-8 and a byte-order mark', () => {
    for (const bytes of [
      [0x7b, 0xff, 0x7d],
      [0x7b, 0x22, 0xc0, 0x80, 0x22, 0x3a, 0x31, 0x7d], // overlong NUL in a key
      [0x7b, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x3a, 0x31, 0x7d], // UTF-8-encoded surrogate
      [0x7b, 0x22, 0xe2, 0x82, 0x22, 0x3a, 0x31, 0x7d], // truncated sequence
      [0xef, 0xbb, 0xbf, 0x7b, 0x7d], // BOM + {}
    ]) {
      throwsCode(() => decode(rawFrame(Command.OK, Buffer.from(bytes))), 'PROTOCOL_BAD_PAYLOAD');
    }
    throwsCode(() => decode(rawFrame(Command.OK, Buffer.from([0x7b, 0xff, 0x7d]))), 'PROTOCOL_BAD_PAYLOAD', /UTF-8/);
  });

  it('rejects payloads that are not a JSON object', () => {
    for (const text of ['', ' ', '[]', 'null', '1', '"s"', 'true', '{', '{"a":1}x', "{'a':1}", '{"a":NaN}']) {
      throwsCode(() => decode(rawFrame(Command.OK, Buffer.from(text))), 'PROTOCOL_BAD_PAYLOAD');
      throwsCode(() => decode(rawFrame(Command.ROUND, Buffer.from(text))), 'PROTOCOL_BAD_PAYLOAD');
    }
  });

  it('rejects unknown keys everywhere (strict schemas)', () => {
    badJson(Command.HELLO, { ...helloBody('data'), extra: 1 }, /extra/);
    badJson(Command.ROUND, { round: 1, regions: 1, bytes: 1, x: null });
    badJson(Command.COMMIT, { digest: '0123456789abcdef', __proto__x: 1 });
    badJson(Command.ABORT, { reason: 'r', code: 'X' });
    badJson(Command.ERROR, { code: 'X', message: 'm', details: {} });
    badJson(Command.STATE, stateWire([{ type: 'i32', value: 1, extra: true }]));
    badJson(Command.STATE, { ...stateWire([]), vcpus: [{ halted: false, globals: [], lastClockReadNs: '0', extra: 1 }] });
    badJson(Command.STATE, { ...stateWire([]), extra: 1 });
    throwsCode(() => decodePrepare(preparePayload(JSON.stringify(prepareWire({ extra: 1 })))), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decodePrepare(preparePayload(JSON.stringify(prepareWire({}, { extra: 1 })))), 'PROTOCOL_BAD_PAYLOAD', /vm/);
  });

  it('rejects missing keys and wrong types', () => {
    badJson(Command.HELLO, { protocol: 1, ticket: TICKET, role: 'data' });
    badJson(Command.HELLO, { ...helloBody('data'), protocol: '1' });
    badJson(Command.HELLO, { ...helloBody('data'), channel: '0' });
    badJson(Command.HELLO, { ...helloBody('data'), role: 'DATA' });
    badJson(Command.ROUND, { round: '1', regions: 1, bytes: 1 });
    badJson(Command.ROUND, { round: 1.5, regions: 1, bytes: 1 });
    badJson(Command.COMMIT, { digest: 1234567890123456 });
    badJson(Command.ABORT, { reason: null });
    badJson(Command.ERROR, { code: 5, message: 'm' });
    badJson(Command.STATE, stateWire([], { clockNs: 5 }));
    badJson(Command.STATE, stateWire([{ type: 'i64', value: 5 }]));
    badJson(Command.STATE, stateWire([{ type: 'i32', value: '5' }]));
    badJson(Command.STATE, stateWire([{ type: 'v128', value: 0 }]));
    badJson(Command.STATE, { ...stateWire([]), vcpus: [{ halted: 0, globals: [], lastClockReadNs: '0' }] });
    badJson(Command.STATE, { ...stateWire([]), vcpus: [{ halted: false, globals: [] }] });
    badJson(Command.STATE, { ...stateWire([]), vcpus: [{ halted: false, globals: [], lastClockReadNs: 0 }] });
    badJson(Command.STATE, { claimedPages: 1, clockNs: '5', vcpus: [{ halted: false, globals: [], lastClockReadNs: '0' }] });
    badJson(Command.STATE, stateWire([], { clockWallMs: '1' }));
    badJson(Command.STATE, { ...stateWire([]), vcpus: {} });
    throwsCode(() => decodePrepare(preparePayload(JSON.stringify(prepareWire({}, { vcpus: '2' })))), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => decodePrepare(preparePayload(JSON.stringify(prepareWire({ vm: null })))), 'PROTOCOL_BAD_PAYLOAD');
  });

  it('rejects out-of-bounds values', () => {
    badJson(Command.HELLO, { ...helloBody('data'), protocol: 2 });
    badJson(Command.HELLO, { ...helloBody('data'), ticket: TICKET.toUpperCase() });
    badJson(Command.HELLO, { ...helloBody('data'), ticket: TICKET.slice(1) });
    badJson(Command.HELLO, { ...helloBody('data'), ticket: `${TICKET}0` });
    badJson(Command.HELLO, { ...helloBody('data'), channel: 16 });
    badJson(Command.HELLO, { ...helloBody('data'), channel: -1 });
    badJson(Command.ROUND, { round: 2 ** 32, regions: 1, bytes: 1 });
    badJson(Command.ROUND, { round: 1, regions: -1, bytes: 1 });
    badJson(Command.ROUND, { round: 1, regions: 1, bytes: 2 ** 53 });
    badJson(Command.COMMIT, { digest: '0123456789ABCDEF' });
    badJson(Command.COMMIT, { digest: '0123456789abcde' });
    badJson(Command.COMMIT, { digest: '0123456789abcdef0' });
    badJson(Command.ABORT, { reason: 'x'.repeat(513) });
    badJson(Command.ERROR, { code: '', message: 'm' });
    badJson(Command.ERROR, { code: 'X'.repeat(65), message: 'm' });
    badJson(Command.ERROR, { code: 'X', message: 'm'.repeat(4097) });
    const badVm: [string, unknown][] = [
      ['name', ''], ['name', 'x'.repeat(65)], ['name', 'web 1'], ['name', 'a/b'], ['name', 'é'],
      ['memoryBytes', 64 * 1024 - 1], ['memoryBytes', 3 * 1024 * MiB + 65536], ['memoryBytes', 65536 + 4096], ['memoryBytes', 0],
      ['vcpus', 0], ['vcpus', 65], ['vcpus', 1.5],
      ['granularityBytes', 2048], ['granularityBytes', 4 * MiB], ['granularityBytes', 12288],
      ['cmdline', 'x'.repeat(4097)], ['cmdline', 'é'.repeat(2049)],
      ['imageSha256', 'A'.repeat(64)], ['imageSha256', 'a'.repeat(63)],
    ];
    for (const [key, v] of badVm) {
      throwsCode(() => decodePrepare(preparePayload(JSON.stringify(prepareWire({}, { [key]: v })))), 'PROTOCOL_BAD_PAYLOAD',
        new RegExp(`vm\\.${key}`));
    }
    for (const over of [{ dataChannels: 0 }, { dataChannels: 17 }, { migrationId: '' }, { migrationId: 'a b' }, { migrationId: 'x'.repeat(65) }]) {
      throwsCode(() => decodePrepare(preparePayload(JSON.stringify(prepareWire(over)))), 'PROTOCOL_BAD_PAYLOAD');
    }
    badJson(Command.STATE, stateWire([], { claimedPages: -1 }));
    badJson(Command.STATE, stateWire([], { claimedPages: 49153 }));
    badJson(Command.STATE, stateWire([], { clockNs: '-1' }));
    badJson(Command.STATE, stateWire([], { clockNs: (2n ** 64n).toString() }));
    badJson(Command.STATE, stateWire([], { clockNs: '01' }));
    badJson(Command.STATE, stateWire([], { clockNs: '1e3' }));
    badJson(Command.STATE, stateWire([], { clockWallMs: -1 }));
    badJson(Command.STATE, stateWire([], { clockWallMs: 1.5 }));
    badJson(Command.STATE, stateWire([], { clockWallMs: 2 ** 53 }));
    badJson(Command.STATE, { ...stateWire([]), vcpus: [{ halted: false, globals: [], lastClockReadNs: (2n ** 64n).toString() }] });
    badJson(Command.STATE, stateWire([], { vcpus: [] }));
    badJson(Command.STATE, stateWire([], { vcpus: Array.from({ length: 65 }, () => ({ halted: false, globals: [], lastClockReadNs: '0' })) }));
    badJson(Command.STATE, stateWire(Array.from({ length: 4097 }, () => ({ type: 'i32', value: 0 }))));
    badJson(Command.STATE, stateWire([{ type: 'i32', value: 2 ** 31 }]));
    badJson(Command.STATE, stateWire([{ type: 'i32', value: -(2 ** 31) - 1 }]));
    badJson(Command.STATE, stateWire([{ type: 'i64', value: (2n ** 63n).toString() }]));
    badJson(Command.STATE, stateWire([{ type: 'i64', value: (-(2n ** 63n) - 1n).toString() }]));
    badJson(Command.STATE, stateWire([{ type: 'i64', value: '-0' }]));
    badJson(Command.STATE, stateWire([{ type: 'i64', value: ' 1' }]));
    badJson(Command.STATE, stateWire([{ type: 'f32', value: 0.1 }]), /f32/);
    badJson(Command.STATE, stateWire([{ type: 'f64', value: 'nan' }]));
    // 1e400 parses to Infinity, which only the "Infinity" string may carry.
    throwsCode(() => decode(rawFrame(Command.STATE, Buffer.from('{"claimedPages":1,"clockNs":"5","vcpus":[{"halted":false,"globals":[{"type":"f64","value":1e400}]}]}'))),
      'PROTOCOL_BAD_PAYLOAD');
    // But the decimal strings and special floats decode exactly.
    const ok = decodeState(Buffer.from(JSON.stringify(stateWire([{ type: 'f32', value: '-Infinity' }, { type: 'i64', value: '-9223372036854775808' }]))));
    assert.deepEqual(ok.vcpus[0]?.globals, [{ type: 'f32', value: Number.NEGATIVE_INFINITY }, { type: 'i64', value: -(2n ** 63n) }]);
  });

  it('OK accepts any JSON object and ERROR reports the fields', () => {
    assert.deepEqual(decode(rawFrame(Command.OK, Buffer.from(' {"a":[1,{"b":null}]} '))).body, { a: [1, { b: null }] });
    throwsCode(() => decode(jsonFrame(Command.ERROR, { code: 'X' })), 'PROTOCOL_BAD_PAYLOAD', /message/);
  });
});

describe('PREPARE binary layout', () => {
  it('is u32 JSON length, JSON, image', () => {
    const body = prepareBody(makeImage(20));
    const frame = encodePrepare(1, body);
    const jsonLength = frame.readUInt32LE(16);
    const json = JSON.parse(frame.subarray(20, 20 + jsonLength).toString()) as unknown;
    assert.deepEqual(json, { migrationId: body.migrationId, vm: body.vm, dataChannels: body.dataChannels });
    assert.ok(frame.subarray(20 + jsonLength).equals(body.image));
  });

  it('rejects short payloads, lengths beyond the payload, oversize JSON, no image and oversize images', () => {
    for (let n = 0; n < 4; n++) throwsCode(() => decodePrepare(Buffer.alloc(n)), 'PROTOCOL_BAD_PAYLOAD');
    const good = preparePayload(JSON.stringify(prepareWire()));
    const beyond = Buffer.from(good);
    beyond.writeUInt32LE(good.length - 3, 0);
    throwsCode(() => decodePrepare(beyond), 'PROTOCOL_BAD_PAYLOAD', /claims/);
    const huge = Buffer.from(good);
    huge.writeUInt32LE(0xffffffff, 0);
    throwsCode(() => decodePrepare(huge), 'PROTOCOL_TOO_LARGE');
    throwsCode(() => decodePrepare(preparePayload(Buffer.alloc(MAX_PREPARE_JSON_BYTES + 1, 0x20))), 'PROTOCOL_TOO_LARGE');
    throwsCode(() => decodePrepare(preparePayload(JSON.stringify(prepareWire()), new Uint8Array(0))), 'PROTOCOL_BAD_PAYLOAD', /image/);
    const bigImage = Buffer.alloc(MAX_IMAGE_BYTES + 1);
    throwsCode(() => decodePrepare(preparePayload(JSON.stringify(prepareWire()), bigImage)), 'PROTOCOL_TOO_LARGE', /image/);
    throwsCode(() => encodePrepare(1, prepareBody(bigImage)), 'PROTOCOL_TOO_LARGE');
    // JSON that is not an object, or the image glued into the JSON part.
    throwsCode(() => decodePrepare(preparePayload('[]')), 'PROTOCOL_BAD_PAYLOAD');
    const glued = Buffer.from(good);
    glued.writeUInt32LE(good.readUInt32LE(0) + 5, 0);
    throwsCode(() => decodePrepare(glued), 'PROTOCOL_BAD_PAYLOAD');
  });
});

describe('encoders refuse what the decoder would reject', () => {
  it('throws PROTOCOL_BAD_PAYLOAD for invalid bodies', () => {
    throwsCode(() => encodeHello(1, { ...helloBody('data'), ticket: 'short' }), 'PROTOCOL_BAD_PAYLOAD', /ticket/);
    throwsCode(() => encodePrepare(1, { ...prepareBody(), dataChannels: 0 }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodePrepare(1, prepareBody(new Uint8Array(0))), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeRound(1, { round: -1, regions: 0, bytes: 0 }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeCommit(1, { digest: 'xyz' }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeAbort(1, { reason: 'r'.repeat(513) }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeState(1, { ...stateBody(), clockNs: -1n }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeState(1, { ...stateBody(), vcpus: [] }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeState(1, { ...stateBody(), vcpus: [{ halted: false, globals: [{ type: 'f32', value: 0.1 }], lastClockReadNs: 0n }] }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeState(1, { ...stateBody(), vcpus: [{ halted: false, globals: [{ type: 'i64', value: 1 as unknown as bigint }], lastClockReadNs: 0n }] }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeOk(1, { n: 1n }), 'PROTOCOL_BAD_PAYLOAD');
    throwsCode(() => encodeError(1, { code: '', message: 'm' }), 'PROTOCOL_BAD_PAYLOAD');
  });

  it('shortens long ERROR messages and maps thrown values', () => {
    const msg = decode(encodeError(4, { code: 'X', message: 'y'.repeat(10_000) }));
    assert.ok(msg.command === Command.ERROR);
    assert.equal(msg.body.message.length, 4096);
    assert.ok(msg.body.message.endsWith('…'));
    assert.deepEqual(decode(encodeErrorFor(5, new FerryError('PROTOCOL_OUT_OF_ORDER', 'late'))).body,
      { code: 'PROTOCOL_OUT_OF_ORDER', message: 'late' });
    assert.deepEqual(decode(encodeErrorFor(6, new TypeError('boom'))).body, { code: 'INTERNAL', message: 'boom' });
  });

  it('frames produced by the encoders pass the frame decoder', () => {
    const f = frameOf(encodeFrame(Command.OK, 1, Buffer.from('{}')));
    assert.deepEqual(decodeMessage(f), { command: Command.OK, requestId: 1, body: {} });
  });
});
