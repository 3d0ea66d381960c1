/**
 * The keys of one operation's path: TLS 1.3 with a pre-shared key derived from the operation's secret.
 * Node 20's TLS 1.3 PSK mode still runs an X25519 exchange (psk_dhe_ke), so every stream has its own
 * forward-secret keys; TLS records are sequenced and authenticated, so a replayed, reordered or
 * altered record fails the stream. No 0-RTT data is accepted (Node offers none), so a captured
 * handshake cannot be replayed either. A stream whose peer does not know the secret fails the
 * handshake ("binder does not verify") before a byte of the operation is exchanged.
 *
 * Each end presents its own identity (`ferry-path-1:<pathId>:<side>`) and both derive the same key for
 * the path: the identity names the path, the key proves knowledge of its secret.
 */
import { constants as cryptoConstants, hkdfSync } from 'node:crypto';
import type { ConnectionOptions, TLSSocket, TlsOptions } from 'node:tls';
import { FerryError } from '../../lib/errors.js';
import { PATH_ID_PATTERN, type PathSpec } from './spec.js';

const IDENTITY_PREFIX = 'ferry-path-1:';
const PSK_BYTES = 32;
const HKDF_INFO = 'ferry path tls1.3 psk v1';
/** TLS 1.3 suites only: AES-GCM is the fastest per core here (FINDINGS: ~1 GB/s), ChaCha20 next. */
const PATH_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

/** The path's key: HKDF-SHA256 over the secret, salted with the path id so two paths never share a key. */
export function pathKey(spec: Pick<PathSpec, 'pathId' | 'secret'>): Buffer {
  return Buffer.from(hkdfSync('sha256', Buffer.from(spec.secret, 'base64url'), Buffer.from(spec.pathId, 'hex'), HKDF_INFO, PSK_BYTES));
}

export function pskIdentity(pathId: string, side: PathSpec['side']): string {
  return `${IDENTITY_PREFIX}${pathId}:${side}`;
}

/** The path id an identity names, or null for one that is not a path identity (refused unread). */
export function pathIdOfIdentity(identity: string): { pathId: string; side: PathSpec['side'] } | null {
  if (!identity.startsWith(IDENTITY_PREFIX) || identity.length > IDENTITY_PREFIX.length + 40) return null;
  const parts = identity.slice(IDENTITY_PREFIX.length).split(':');
  if (parts.length !== 2) return null; // "…:source:" or "…:source:x" is not an identity of ours
  const [pathId, side] = parts;
  if (pathId === undefined || !PATH_ID_PATTERN.test(pathId) || (side !== 'source' && side !== 'target')) return null;
  return { pathId, side };
}

/**
 * Server options: `keyFor(pathId, side, socket)` answers the key of a live path whose peer end is
 * `side`, or null (unknown, ended or expired path: the handshake fails). `socket` is the connection
 * asking, for a driver that routes the stream by the path its handshake named.
 */
export function pskServerOptions(keyFor: (pathId: string, peerSide: PathSpec['side'], socket: TLSSocket) => Buffer | null): TlsOptions {
  return {
    minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: PATH_CIPHERS,
    pskCallback: (socket, identity) => {
      const id = pathIdOfIdentity(identity);
      return id === null ? null : keyFor(id.pathId, id.side, socket);
    },
    // No certificates: the PSK authenticates both ends.
    // No session tickets: a client holding a ticket from an earlier stream would resume without the
    // pskCallback being asked (measured on Node 20: it resumed after the path's key was withdrawn), so
    // a closed or expired path could still be entered. Without tickets every stream is a full PSK handshake.
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
  };
}

export function pskClientOptions(spec: PathSpec): ConnectionOptions {
  const key = pathKey(spec);
  const identity = pskIdentity(spec.pathId, spec.side);
  return {
    minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: PATH_CIPHERS,
    // Node asks for the PSK with the server's hint; the path's key does not depend on it.
    pskCallback: () => ({ psk: key, identity }),
    checkServerIdentity: () => undefined,
  };
}

/** The side at the other end. */
export function otherSide(side: PathSpec['side']): PathSpec['side'] {
  return side === 'source' ? 'target' : 'source';
}

export function assertPathId(pathId: string): void {
  if (!PATH_ID_PATTERN.test(pathId)) throw new FerryError('INVALID_ARGUMENT', `path id must be 32 lowercase hex digits, not "${pathId.slice(0, 40)}"`);
}
