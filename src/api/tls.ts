/**
 * TLS for the typed clients (./center-client.ts, ./host-client.ts): trust one CA (the center's own,
 * docs/design/center-tls.md) instead of the system's, and present a client certificate (a host's).
 *
 * Node's global fetch takes no CA or client certificate; undici's Agent does, as the dispatcher of
 * undici's own fetch (the same implementation Node bundles, pinned to the version Node 20 bundles, so
 * one code path on Node 20 and 22). A client without TLS options uses the global fetch as before.
 */
import { Agent, fetch as undiciFetch } from 'undici';
import { FerryError, errorMessage } from '../lib/errors.js';

export interface TlsClientOptions {
  /** The CA (PEM) whose certificates this client trusts, instead of the system's. */
  readonly caPem?: string;
  /** A client certificate (PEM) and its key (PKCS#8 PEM), presented when the server asks. */
  readonly certPem?: string;
  readonly keyPem?: string;
  /**
   * Accept any server certificate. Only to read a CA certificate whose fingerprint the caller then
   * compares with the one it was given (`ferry login`, a joining host): never for anything else.
   */
  readonly insecureReadCaOnly?: boolean;
}

export type Fetch = (url: URL, init: RequestInit) => Promise<Response>;

/** OpenSSL's verdicts (and Node's name check) that mean "this server is not who the trusted CA vouches for". */
const UNTRUSTED_CODES: ReadonlySet<string> = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED',
  'CERT_REJECTED', 'ERR_TLS_CERT_ALTNAME_INVALID', 'INVALID_CA', 'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
]);
/** How deep an error's `cause` chain is followed (fetch wraps the socket's error once or twice). */
const MAX_CAUSE_DEPTH = 5;

/** The TLS verification code somewhere in `err`'s cause chain, or null if it is not a certificate failure. */
export function tlsUntrustedCode(err: unknown): string | null {
  let e: unknown = err;
  for (let i = 0; i < MAX_CAUSE_DEPTH && typeof e === 'object' && e !== null; i++) {
    const code: unknown = 'code' in e ? e.code : undefined;
    if (typeof code === 'string' && UNTRUSTED_CODES.has(code)) return code;
    e = 'cause' in e ? e.cause : undefined;
  }
  return null;
}

/**
 * The error a client raises for a failed request: TLS_UNTRUSTED when the peer's certificate was
 * refused (with what to do), otherwise `unreachable` (the caller's CENTER_UNREACHABLE / HOST_UNREACHABLE).
 */
export function transportError(err: unknown, peer: string, what: string, unreachable: 'CENTER_UNREACHABLE' | 'HOST_UNREACHABLE'): FerryError {
  const code = tlsUntrustedCode(err);
  if (code !== null) {
    return new FerryError('TLS_UNTRUSTED', `${peer} presented a certificate this client does not trust (${code}) on ${what}: trust the center's CA (ferry login --center URL), or check that the URL names the right server`, { tlsCode: code });
  }
  return new FerryError(unreachable, `${peer} is unreachable (${what}): ${errorMessage(err)}`);
}

/** One client's fetch: the global one, or undici's over an Agent with the given trust and identity. */
/**
 * Idle keep-alive connections: a client drops its own after HTTP_CLIENT_IDLE_MS, long before a server
 * closes one (HTTP_SERVER_IDLE_MS). With the defaults (client about 4 s, server 5 s) a request sent on a
 * connection the server is just closing fails with "other side closed" — seen under load, when timers
 * fire late — and a POST is not retried. The client also ignores a longer timeout the server advertises.
 */
export const HTTP_CLIENT_IDLE_MS = 4_000;
export const HTTP_SERVER_IDLE_MS = 30_000;

export class TlsFetch {
  readonly #agent: Agent;
  readonly fetch: Fetch;

  constructor(o: TlsClientOptions = {}) {
    const any = o.caPem !== undefined || o.certPem !== undefined || o.insecureReadCaOnly === true;
    if ((o.certPem === undefined) !== (o.keyPem === undefined)) throw new FerryError('INVALID_ARGUMENT', 'a client certificate needs its key, and a key its certificate');
    const agent = new Agent({
      keepAliveTimeout: HTTP_CLIENT_IDLE_MS, keepAliveMaxTimeout: HTTP_CLIENT_IDLE_MS,
      connect: any ? {
        ...(o.caPem !== undefined ? { ca: o.caPem } : {}),
        ...(o.certPem !== undefined && o.keyPem !== undefined ? { cert: o.certPem, key: o.keyPem } : {}),
        rejectUnauthorized: o.insecureReadCaOnly !== true,
      } : {},
    });
    this.#agent = agent;
    // undici's Request/Response are the ones Node's fetch is built from; only their declared types differ.
    this.fetch = async (url, init) => await undiciFetch(url, { ...(init as unknown as Parameters<typeof undiciFetch>[1]), dispatcher: agent });
  }

  /** Ends the pooled connections (idle ones also end by themselves after undici's keep-alive timeout). */
  async close(): Promise<void> {
    await this.#agent.close();
  }
}
