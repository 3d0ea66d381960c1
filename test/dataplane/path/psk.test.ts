/** A path's TLS PSK: identities parse only when they are exactly ours, keys are per path and per secret. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { constants } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { pathIdOfIdentity, pathKey, pskIdentity, pskServerOptions } from '../../../src/dataplane/path/psk.js';
import { randomPathId, randomPathSecret } from '../../helpers/path-specs.js';

describe('path PSK identities', () => {
  const pathId = randomPathId();

  it('round-trips both sides', () => {
    assert.deepEqual(pathIdOfIdentity(pskIdentity(pathId, 'source')), { pathId, side: 'source' });
    assert.deepEqual(pathIdOfIdentity(pskIdentity(pathId, 'target')), { pathId, side: 'target' });
  });

  it('rejects hostile and malformed identities', () => {
    const good = pskIdentity(pathId, 'source');
    const hostile = [
      '', 'ferry-path-1:', 'ferry-path-1::source', `${good}:`, `${good}:x`, `${good}\0`, `${good} `, ` ${good}`,
      `ferry-path-2:${pathId}:source`, `FERRY-PATH-1:${pathId}:source`, `ferry-path-1:${pathId.toUpperCase()}:source`,
      `ferry-path-1:${pathId}:Source`, `ferry-path-1:${pathId}:both`, `ferry-path-1:${pathId.slice(1)}:source`,
      `ferry-path-1:${pathId}0:source`, `ferry-path-1:${pathId}`, `ferry-path-1:source:${pathId}`,
      `ferry-path-1:${'../'.repeat(10)}:source`, `ferry-path-1:${pathId}:source${'A'.repeat(10_000)}`,
      `ferry-path-1:${'é'.repeat(32)}:source`, `ferry-path-1:${pathId.slice(0, 31)}g:target`,
    ];
    for (const identity of hostile) assert.equal(pathIdOfIdentity(identity), null, JSON.stringify(identity.slice(0, 80)));
  });

  it('the server callback asks for no key for an identity that is not a path identity', () => {
    let asked = 0;
    const options = pskServerOptions(() => { asked++; return Buffer.alloc(32); });
    const callback = options.pskCallback;
    assert.ok(callback !== undefined);
    const socket = {} as TLSSocket;
    assert.equal(callback(socket, 'anything'), null);
    assert.equal(asked, 0);
    assert.ok(callback(socket, pskIdentity(pathId, 'target')) !== null);
    assert.equal(asked, 1);
  });

  it('the server issues no session tickets (a ticket would resume without asking for the key)', () => {
    const secureOptions = pskServerOptions(() => null).secureOptions ?? 0;
    assert.equal(secureOptions & constants.SSL_OP_NO_TICKET, constants.SSL_OP_NO_TICKET);
  });
});

describe('path keys', () => {
  it('are 32 bytes, the same for both ends of one path, different per path and per secret', () => {
    const secret = randomPathSecret();
    const a = randomPathId();
    const b = randomPathId();
    const keyA = pathKey({ pathId: a, secret });
    assert.equal(keyA.length, 32);
    assert.deepEqual(pathKey({ pathId: a, secret }), keyA);
    assert.notDeepEqual(pathKey({ pathId: b, secret }), keyA, 'two paths sharing a secret still have different keys');
    assert.notDeepEqual(pathKey({ pathId: a, secret: randomPathSecret() }), keyA);
    assert.notDeepEqual(keyA, Buffer.from(secret, 'base64url'), 'the key is derived, not the secret itself');
  });
});
