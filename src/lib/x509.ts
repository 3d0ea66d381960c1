/**
 * Certificates for the center's CA and its hosts, made by @peculiar/x509 over Node's WebCrypto (no
 * hand-written ASN.1): ECDSA P-256 keys with SHA-256 signatures — the curve every TLS stack (Node's
 * OpenSSL, browsers) handles, with small keys and fast signing, unlike RSA's seconds-long key generation.
 *
 * Keys leave this module as PKCS#8 PEM (what node:tls reads), certificates as PEM (fingerprints:
 * ./fingerprint.ts, which clients load without this library).
 */
// The library's dependency injection (tsyringe) needs the Reflect metadata API: loaded once, here,
// before the library, by the only module that imports it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import { FerryError, errorMessage } from './errors.js';
import { MAX_PEM_CHARS } from './limits.js';

type CryptoKey = webcrypto.CryptoKey;

// Node's WebCrypto, explicitly: the library would otherwise look for a global crypto.
x509.cryptoProvider.set(webcrypto);

/** Key and signature algorithm of every Ferry key: ECDSA on P-256 with SHA-256. */
export const KEY_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
/** 20 random bytes: the largest serial RFC 5280 allows, random so two centers sharing a CA never collide. */
const SERIAL_BYTES = 20;
const DAY_MS = 24 * 60 * 60 * 1000;
/** Issued certificates start this far in the past: a host whose clock is a little behind the center's accepts them. */
const NOT_BEFORE_SLACK_MS = 60 * 60 * 1000;

export interface KeyPairPem { readonly keyPem: string; readonly publicKey: CryptoKey; readonly privateKey: CryptoKey }

export async function generateKeyPair(): Promise<KeyPairPem> {
  const keys = await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']);
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { keyPem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY'), publicKey: keys.publicKey, privateKey: keys.privateKey };
}

export async function importPrivateKey(keyPem: string): Promise<CryptoKey> {
  try {
    return await webcrypto.subtle.importKey('pkcs8', x509.PemConverter.decodeFirst(keyPem), KEY_ALGORITHM, false, ['sign']);
  } catch (err) {
    throw new FerryError('INVALID_ARGUMENT', `not a P-256 private key in PKCS#8 PEM: ${errorMessage(err)}`);
  }
}

/** A host name, an IPv4 or an IPv6 address as a subject alternative name. */
function generalName(name: string): { type: 'ip' | 'dns'; value: string } {
  const bare = name.startsWith('[') && name.endsWith(']') ? name.slice(1, -1) : name;
  return isIP(bare) !== 0 ? { type: 'ip', value: bare } : { type: 'dns', value: bare };
}

function randomSerial(): string {
  const b = webcrypto.getRandomValues(new Uint8Array(SERIAL_BYTES));
  // Positive: the top bit clear (a DER INTEGER with it set would be negative).
  b[0] = (b[0] ?? 0) & 0x7f;
  return Buffer.from(b).toString('hex');
}

/** A CA: a self-signed certificate that may sign end-entity certificates only (path length 0). */
export async function createCa(commonName: string, validityDays: number): Promise<{ certPem: string; keyPem: string }> {
  const keys = await generateKeyPair();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(), name: `CN=${commonName}`, notBefore: new Date(now - NOT_BEFORE_SLACK_MS), notAfter: new Date(now + validityDays * DAY_MS),
    keys: { publicKey: keys.publicKey, privateKey: keys.privateKey }, signingAlgorithm: KEY_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: keys.keyPem };
}

/** A certificate signing request for `commonName`, signed by the key it asks a certificate for. */
export async function createCsr(commonName: string, key: KeyPairPem): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${commonName}`, keys: { publicKey: key.publicKey, privateKey: key.privateKey }, signingAlgorithm: KEY_ALGORITHM,
  });
  return csr.toString('pem');
}

/** The CSR's subject CN and public key, once its own signature is checked; BAD_REQUEST otherwise. */
export async function readCsr(csrPem: string): Promise<{ commonName: string | null; publicKey: x509.PublicKey }> {
  if (csrPem.length > MAX_PEM_CHARS) throw new FerryError('BAD_REQUEST', `a certificate signing request is at most ${MAX_PEM_CHARS} characters of PEM`);
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw new FerryError('BAD_REQUEST', `not a PEM certificate signing request: ${errorMessage(err)}`);
  }
  let valid: boolean;
  try { valid = await csr.verify(); } catch (err) { throw new FerryError('BAD_REQUEST', `cannot check the certificate signing request's signature: ${errorMessage(err)}`); }
  if (!valid) throw new FerryError('BAD_REQUEST', 'the certificate signing request is not signed by the key it names');
  const cns = csr.subjectName.getField('CN');
  return { commonName: cns.length === 1 ? (cns[0] ?? null) : null, publicKey: csr.publicKey };
}

export interface IssueOptions {
  readonly caCertPem: string;
  readonly caKey: CryptoKey;
  readonly commonName: string;
  readonly publicKey: x509.PublicKey | CryptoKey;
  /** Host names and addresses the certificate is valid for as a server. */
  readonly altNames: readonly string[];
  readonly validityDays: number;
}

/** An end-entity certificate signed by the CA, good for both TLS ends (server and client). */
export async function issueCertificate(o: IssueOptions): Promise<{ certPem: string; serial: string; notAfterMs: number }> {
  const ca = new x509.X509Certificate(o.caCertPem);
  const now = Date.now();
  const notAfterMs = now + o.validityDays * DAY_MS;
  const serial = randomSerial();
  const names = [...new Set(o.altNames)].map(generalName);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial, subject: `CN=${o.commonName}`, issuer: ca.subject, notBefore: new Date(now - NOT_BEFORE_SLACK_MS), notAfter: new Date(notAfterMs),
    publicKey: o.publicKey, signingKey: o.caKey, signingAlgorithm: KEY_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      ...(names.length > 0 ? [new x509.SubjectAlternativeNameExtension(names)] : []),
      await x509.AuthorityKeyIdentifierExtension.create(ca.publicKey, false),
    ],
  });
  return { certPem: cert.toString('pem'), serial, notAfterMs };
}
