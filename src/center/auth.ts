/**
 * The center's secrets: API tokens (clients), one-time join tokens and host credentials. Each is 32
 * random bytes with a kind prefix (src/api/center-v1.ts SECRET_PATTERN); the store keeps only its
 * SHA-256. An unsalted fast hash is enough here: the secrets are random, not passwords, so there is no
 * dictionary to precompute — and a hash lookup by unique index keeps every request one indexed read.
 *
 * Every check answers UNAUTHORIZED with the same code whatever was wrong (missing, malformed, unknown,
 * revoked, expired, another kind, another host's), so a client branches on one code; the message says
 * which, as the presenter already holds the secret it is told about.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError, errorMessage } from '../lib/errors.js';
import { DEFAULT_JOIN_TOKEN_TTL_MS, SECRET_PATTERN, type SecretKind } from '../api/center-v1.js';
import { commonNameOf } from '../lib/fingerprint.js';
import type { Credential } from './store/model.js';
import type { CenterStore, Clock } from './store/store.js';
import type { CenterCa } from './ca.js';

/** The admin API token, created at first start in the data directory (mode 0600) and printed once. */
export const ADMIN_TOKEN_FILE = 'admin.token';
export const ADMIN_TOKEN_SUBJECT = 'admin';
const SECRET_BYTES = 32;
const CREDENTIAL_ID_BYTES = 8;

export function newSecret(kind: SecretKind): string {
  return `ferry-${kind}-${randomBytes(SECRET_BYTES).toString('base64url')}`;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

export function newCredentialId(): string {
  return randomBytes(CREDENTIAL_ID_BYTES).toString('hex');
}

function unauthorized(message: string): FerryError {
  return new FerryError('UNAUTHORIZED', message);
}

/** The secret of an `Authorization: Bearer <secret>` header, if it has the shape of one. */
function bearerSecret(header: string | undefined): string | null {
  if (header === undefined || !header.startsWith('Bearer ')) return null;
  const s = header.slice('Bearer '.length);
  return SECRET_PATTERN.test(s) ? s : null;
}

/** What TLS told about the client of one request (src/center/app.ts reads it off the socket). */
export interface PeerCertificate {
  /** The client sent a certificate. */
  readonly presented: boolean;
  /** It chains to the center's CA and is within its validity (node:tls's verdict). */
  readonly authorized: boolean;
  readonly authorizationError: string | null;
  readonly subject: string;
  readonly fingerprint: string;
}

export type Principal = { readonly kind: 'api'; readonly credential: Credential } | { readonly kind: 'host'; readonly host: string; readonly credential: Credential };

export class CenterAuth {
  constructor(private readonly store: CenterStore, private readonly clock: Clock, private readonly ca: CenterCa) {}

  /** The credential behind a bearer header, if it is a live one of `kind`; UNAUTHORIZED otherwise. */
  async authenticate(header: string | undefined, kind: 'api' | 'host'): Promise<Credential> {
    const secret = bearerSecret(header);
    const what = kind === 'api' ? 'an API token' : 'a host credential';
    if (secret === null) throw unauthorized(`missing or malformed credential: send Authorization: Bearer <${kind === 'api' ? 'API token' : 'host credential'}>`);
    const c = await this.store.findCredential(hashSecret(secret));
    if (c === null || c.kind !== kind) throw unauthorized(`the bearer is not ${what} of this center`);
    if (c.revokedAtMs !== null) throw unauthorized(`${what} ${c.id} was revoked`);
    if (c.expiresAtMs !== null && c.expiresAtMs <= this.clock()) throw unauthorized(`${what} ${c.id} expired`);
    return c;
  }

  /** A host's own credential, for that host only. */
  async authenticateHost(header: string | undefined, host: string): Promise<Credential> {
    const c = await this.authenticate(header, 'host');
    if (c.subject !== host) throw unauthorized(`this host credential belongs to another host, not ${host}`);
    return c;
  }

  /**
   * A host's TLS client certificate, on top of its credential: it must be signed by this center's CA,
   * name `host`, and be the certificate issued together with `credential` (the host's live one). So a
   * certificate dies with its credential: a re-join (which revokes the old credential) revokes it too.
   */
  async authenticateHostCertificate(peer: PeerCertificate, host: string, credential: Credential): Promise<void> {
    if (!peer.presented) throw unauthorized(`host ${host} sent no client certificate: a host heartbeats with the certificate it received when it joined`);
    if (!peer.authorized) throw unauthorized(`the client certificate is not one of this center's CA (${peer.authorizationError ?? 'unverified'})`);
    const cn = commonNameOf(peer.subject);
    if (cn !== host) throw unauthorized(`the client certificate is ${cn === null ? 'nameless' : `host ${cn}'s`}, not host ${host}'s`);
    const issued = await this.store.findHostCertificate(peer.fingerprint);
    if (issued === null || issued.host !== host) throw unauthorized(`the client certificate ${peer.fingerprint} was not issued to host ${host} by this center`);
    if (issued.credentialId !== credential.id) throw unauthorized(`the client certificate ${peer.fingerprint} was issued with an earlier credential of host ${host}, since revoked (the host joined again)`);
  }

  async issueJoinToken(by: string, ttlMs: number = DEFAULT_JOIN_TOKEN_TTL_MS): Promise<{ id: string; token: string; expiresAtMs: number; caFingerprint: string }> {
    const token = newSecret('join');
    const expiresAtMs = this.clock() + ttlMs;
    const c = await this.store.createCredential({ id: newCredentialId(), kind: 'join', subject: by, secretHash: hashSecret(token), expiresAtMs });
    return { id: c.id, token, expiresAtMs, caFingerprint: this.ca.fingerprint };
  }

  /**
   * Spend a join token for `host`: its new credential (shown once) and its certificate from `csr`, or
   * UNAUTHORIZED (the token) or BAD_REQUEST (the CSR: checked first, so a bad one does not spend the token).
   * `beforeSpend` may refuse the join after the token is known to be live and before it is spent.
   */
  async join(joinToken: string, host: string, csr: string, hostUrl: string, beforeSpend?: () => Promise<void>): Promise<{ credential: string; certificate: string }> {
    const cert = await this.ca.signHostCsr(csr, host, hostUrl);
    const credential = newSecret('host');
    const refused = unauthorized('the join token is unknown, already used, revoked or expired: ask for a new one (ferry center join-token)');
    if (beforeSpend !== undefined) {
      // Only a caller with a live token hears what `beforeSpend` refuses (it may tell of the inventory);
      // the spend below checks the token again, in its transaction.
      const t = await this.store.findCredential(hashSecret(joinToken));
      if (t === null || t.kind !== 'join' || t.spentAtMs !== null || t.revokedAtMs !== null || (t.expiresAtMs !== null && t.expiresAtMs <= this.clock())) throw refused;
      await beforeSpend();
    }
    const issued = await this.store.spendJoinToken(hashSecret(joinToken), { id: newCredentialId(), kind: 'host', subject: host, secretHash: hashSecret(credential) });
    if (issued === null) throw refused;
    // After the spend: a certificate is only ever recorded for a credential that exists. A center that
    // dies between the two leaves a host whose join answer never arrived; it joins again with a new token.
    await this.store.recordHostCertificate({ fingerprint: cert.fingerprint, host, credentialId: issued.id, serial: cert.serial, notAfterMs: cert.notAfterMs });
    return { credential, certificate: cert.certPem };
  }

  /**
   * The admin token of this data directory: created (file mode 0600) at first start, registered in the
   * store if the store does not know it (a fresh database, or several centers sharing one PostgreSQL,
   * each with its own directory). Answers the file and whether it was created now.
   */
  async ensureAdminToken(dataDir: string): Promise<{ file: string; token: string; created: boolean }> {
    const file = join(dataDir, ADMIN_TOKEN_FILE);
    let token: string | null = null;
    try {
      token = (await readFile(file, 'utf8')).trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new FerryError('INVALID_ARGUMENT', `cannot read the admin token ${file}: ${errorMessage(err)}`);
    }
    const created = token === null;
    if (token === null) {
      token = newSecret('api');
      await mkdir(dataDir, { recursive: true });
      // wx: never overwrite a token another center process wrote at the same moment.
      await writeFile(file, `${token}\n`, { mode: 0o600, flag: 'wx' });
      await chmod(file, 0o600);
    } else if (!SECRET_PATTERN.test(token) || !token.startsWith('ferry-api-')) {
      throw new FerryError('INVALID_ARGUMENT', `${file} does not hold a Ferry API token; remove it to have a new one made`);
    }
    const hash = hashSecret(token);
    if (await this.store.findCredential(hash) === null) {
      await this.store.createCredential({ id: newCredentialId(), kind: 'api', subject: ADMIN_TOKEN_SUBJECT, secretHash: hash });
    }
    return { file, token, created };
  }
}
