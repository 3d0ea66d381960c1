/**
 * PREPARE's instrumented module offer on the wire (docs/migration-protocol.md, "Instrumented module
 * offer"): the module travels base64 inside the JSON, so the image is still every byte after the JSON;
 * a PREPARE without the key is what an older source sends and decodes as before; the source sends the
 * key only to a target whose HELLO reply lists the capability; PREPARE's reply says where the module
 * came from.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, HEADER_BYTES, MAX_PREPARE_PAYLOAD_BYTES } from '../../../src/migration/protocol/frame.js';
import { MAX_IMAGE_BYTES } from '../../../src/lib/limits.js';
import {
  MAX_INSTRUMENTED_OFFER_BYTES, TARGET_OFFER_CAPABILITY, decodePrepare, encodePrepare, offerFits, preparedFromOk, takesInstrumentedOffer,
  type PrepareOffer,
} from '../../../src/migration/protocol/messages.js';
import { makeImage, prepareBody, sha256, throwsCode } from './fixtures.js';

function offer(bytes = 3000): PrepareOffer {
  const binary = makeImage(bytes);
  return { build: 'ferry-instrument/1+binaryen@132.0.0', sha256: sha256(binary), binary };
}

/** The PREPARE payload of an encoded frame. */
function payloadOf(frame: Buffer): Buffer {
  return frame.subarray(HEADER_BYTES);
}

/** A PREPARE payload from a JSON object and an image, bypassing the encoder. */
function rawPrepare(json: unknown, image: Uint8Array): Buffer {
  const j = Buffer.from(JSON.stringify(json));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(j.length);
  return Buffer.concat([len, j, image]);
}

describe('PREPARE with an instrumented module offer', () => {
  it('round-trips the offer, and the image is still every byte after the JSON', () => {
    const body = { ...prepareBody(makeImage(1000)), instrumented: offer() };
    const payload = payloadOf(encodePrepare(7, body));
    const decoded = decodePrepare(payload);
    assert.ok(decoded.instrumented);
    assert.equal(decoded.instrumented.build, body.instrumented.build);
    assert.equal(decoded.instrumented.sha256, body.instrumented.sha256);
    assert.deepEqual(Buffer.from(decoded.instrumented.binary), Buffer.from(body.instrumented.binary));
    assert.deepEqual(Buffer.from(decoded.image), Buffer.from(body.image));
    // The image-is-the-rest rule an older decoder applies: u32 JSON length, JSON, then the image.
    const jsonLength = payload.readUInt32LE(0);
    const json = JSON.parse(payload.subarray(4, 4 + jsonLength).toString('utf8')) as { instrumented: { binaryBase64: string } };
    assert.deepEqual(Buffer.from(json.instrumented.binaryBase64, 'base64'), Buffer.from(body.instrumented.binary));
    assert.deepEqual(payload.subarray(4 + jsonLength), Buffer.from(body.image));
  });

  it('decodes an old-style PREPARE (no key) without one, and "none to give" (null) as null', () => {
    const plain = decodePrepare(payloadOf(encodePrepare(1, prepareBody())));
    assert.equal('instrumented' in plain, false);
    const none = decodePrepare(payloadOf(encodePrepare(1, { ...prepareBody(), instrumented: null })));
    assert.equal(none.instrumented, null);
  });

  it('refuses a malformed offer: not canonical base64, empty, a bad sha256, an unknown key, a build too long', () => {
    const image = makeImage();
    const base = prepareBody(image);
    const wire = (instrumented: unknown): unknown => ({ migrationId: base.migrationId, vm: base.vm, dataChannels: base.dataChannels, instrumented });
    const good = { build: 'b', sha256: sha256(image), binaryBase64: Buffer.from(image).toString('base64') };
    assert.ok(decodePrepare(rawPrepare(wire(good), image)).instrumented);
    for (const bad of [
      { ...good, binaryBase64: 'AAA*' }, { ...good, binaryBase64: 'AA=A' }, { ...good, binaryBase64: '' },
      { ...good, sha256: 'ABC' }, { ...good, extra: 1 }, { ...good, build: 'x'.repeat(129) }, 'offer',
    ]) {
      throwsCode(() => decodePrepare(rawPrepare(wire(bad), image)), 'PROTOCOL_BAD_PAYLOAD', /instrumented/);
    }
  });

  it(`refuses an offer over MAX_INSTRUMENTED_OFFER_BYTES (${MAX_INSTRUMENTED_OFFER_BYTES}) on both sides, and offers only what fits the frame`, () => {
    throwsCode(() => encodePrepare(1, { ...prepareBody(), instrumented: offer(MAX_INSTRUMENTED_OFFER_BYTES + 1) }), 'PROTOCOL_TOO_LARGE', /offered module/);
    const image = makeImage();
    const base = prepareBody(image);
    const tooLong = { build: 'b', sha256: sha256(image), binaryBase64: 'AAAA'.repeat(Math.ceil(MAX_INSTRUMENTED_OFFER_BYTES / 3) + 1) };
    throwsCode(() => decodePrepare(rawPrepare({ migrationId: base.migrationId, vm: base.vm, dataChannels: base.dataChannels, instrumented: tooLong }, image)),
      'PROTOCOL_BAD_PAYLOAD', /at most/);
    assert.equal(offerFits(20_000, 40_000), true);
    assert.equal(offerFits(20_000, MAX_INSTRUMENTED_OFFER_BYTES + 1), false);
    assert.equal(offerFits(MAX_IMAGE_BYTES, 1 << 20), false, 'a largest image leaves no room in the PREPARE frame');
    assert.ok(MAX_IMAGE_BYTES < MAX_PREPARE_PAYLOAD_BYTES);
  });

  it('is sent only to a target whose HELLO reply lists the capability', () => {
    assert.equal(takesInstrumentedOffer({ host: 'ferry', protocol: 1 }), false, 'what every target without the feature answers');
    assert.equal(takesInstrumentedOffer({ host: 'ferry', protocol: 1, offers: [TARGET_OFFER_CAPABILITY] }), true);
    assert.equal(takesInstrumentedOffer({ offers: TARGET_OFFER_CAPABILITY }), false);
    assert.equal(takesInstrumentedOffer({ offers: ['something-else'] }), false);
  });

  it('PREPARE\'s reply says where the module came from; anything else there is refused', () => {
    for (const instrumentation of ['cache', 'source', 'local'] as const) {
      assert.deepEqual(preparedFromOk({ accepted: true, instrumentation }, undefined), { accepted: true, instrumentation });
    }
    assert.deepEqual(preparedFromOk({ accepted: true }, undefined), { accepted: true });
    throwsCode(() => preparedFromOk({ accepted: true, instrumentation: 'borrowed' }, undefined), 'PROTOCOL_BAD_PAYLOAD', /instrumentation/);
    assert.equal(Command.PREPARE, 2);
  });
});
