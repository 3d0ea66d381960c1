/**
 * The center's own CA (docs/design/center-tls.md): made at the first start of the first center and
 * kept in the store, so every center of a fleet (several on one PostgreSQL) signs with the same one and
 * hosts and clients trust one fingerprint. It signs two kinds of certificate:
 * - each center process's server certificate, made at its start for the names it is reached by (its
 *   key never leaves the process memory);
 * - each host's certificate, from the CSR the host made with a key that never leaves the host.
 */
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { FerryError } from '../lib/errors.js';
import { createCa, generateKeyPair, importPrivateKey, issueCertificate, readCsr } from '../lib/x509.js';
import { fingerprintOf } from '../lib/fingerprint.js';
import type { CenterStore } from './store/store.js';
import type { webcrypto } from 'node:crypto';

/** The CA outlives any host: 20 years, so no fleet meets its expiry in practice (rotation is not built yet). */
export const CA_VALIDITY_DAYS = 20 * 365;
/**
 * A host certificate's lifetime. Revocation does not wait for expiry: a certificate is accepted only
 * while the credential issued with it is live (checked on every request), so expiry is a backstop.
 * Five years, as renewal without a re-join is not built yet.
 */
export const HOST_CERT_VALIDITY_DAYS = 5 * 365;
/** A center's server certificate is made at each start; 397 days is the longest browsers accept. */
export const SERVER_CERT_VALIDITY_DAYS = 397;
export const CA_COMMON_NAME = 'Ferry center CA';

export interface IssuedHostCertificate {
  readonly certPem: string;
  readonly fingerprint: string;
  readonly serial: string;
  readonly notAfterMs: number;
}

export class CenterCa {
  readonly fingerprint: string;

  private constructor(readonly certPem: string, private readonly key: webcrypto.CryptoKey) {
    this.fingerprint = fingerprintOf(certPem);
  }

  /** The fleet's CA from the store, made now if the store has none (of racing centers, the first one's is kept). */
  static async ensure(store: CenterStore): Promise<{ ca: CenterCa; created: boolean }> {
    let stored = await store.getCenterCa();
    let created = false;
    if (stored === null) {
      const made = await createCa(CA_COMMON_NAME, CA_VALIDITY_DAYS);
      stored = await store.createCenterCa(made);
      created = stored.certPem === made.certPem;
    }
    return { ca: new CenterCa(stored.certPem, await importPrivateKey(stored.keyPem)), created };
  }

  /**
   * A server certificate and key for a center listening on `listenHost`: valid for it (unless it is a
   * wildcard address), loopback by name and address, and this machine's host name.
   */
  async serverCertificate(listenHost: string): Promise<{ certPem: string; keyPem: string }> {
    const wildcard = listenHost === '0.0.0.0' || listenHost === '::' || listenHost === '';
    const names = [...(wildcard ? [] : [listenHost]), '127.0.0.1', '::1', 'localhost', hostname()];
    const key = await generateKeyPair();
    const cert = await issueCertificate({
      caCertPem: this.certPem, caKey: this.key, commonName: wildcard ? hostname() : listenHost, publicKey: key.publicKey, altNames: names, validityDays: SERVER_CERT_VALIDITY_DAYS,
    });
    return { certPem: cert.certPem, keyPem: key.keyPem };
  }

  /**
   * A host's certificate from its CSR: refused (BAD_REQUEST) unless the CSR is signed by its own key and
   * names exactly `host`. Valid as a server for the host name of `hostUrl` (its control API).
   */
  async signHostCsr(csrPem: string, host: string, hostUrl: string): Promise<IssuedHostCertificate> {
    const csr = await readCsr(csrPem);
    if (csr.commonName !== host) {
      throw new FerryError('BAD_REQUEST', `the certificate signing request is for ${csr.commonName === null ? 'no single common name' : `"${csr.commonName}"`}, not for the joining host ${host}`);
    }
    const urlHost = new URL(hostUrl).hostname;
    const bare = urlHost.startsWith('[') ? urlHost.slice(1, -1) : urlHost;
    const names = [host, ...(bare !== '' && (isIP(bare) !== 0 || bare !== host) ? [bare] : [])];
    const cert = await issueCertificate({ caCertPem: this.certPem, caKey: this.key, commonName: host, publicKey: csr.publicKey, altNames: names, validityDays: HOST_CERT_VALIDITY_DAYS });
    return { certPem: cert.certPem, fingerprint: fingerprintOf(cert.certPem), serial: cert.serial, notAfterMs: cert.notAfterMs };
  }
}
