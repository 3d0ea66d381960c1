/**
 * Certificate fingerprints and names, with Node's own X509Certificate only (no certificate library:
 * clients load this, not ./x509.ts). A fingerprint is the SHA-256 of a certificate's DER as `AB:CD:…`,
 * what `openssl x509 -fingerprint -sha256` and browsers show, so an operator can compare it with any tool.
 */
import { X509Certificate as NodeX509 } from 'node:crypto';
import { FerryError, errorMessage } from './errors.js';
import { MAX_PEM_CHARS } from './limits.js';

/** SHA-256 fingerprint of a PEM certificate, `AB:CD:…`. */
export function fingerprintOf(certPem: string): string {
  return parseCertificate(certPem).fingerprint256;
}

/** A fingerprint as typed by a person (any case, with or without colons) in the `AB:CD:…` form; INVALID_ARGUMENT if it is none. */
export function normalizeFingerprint(text: string): string {
  const hex = text.trim().replace(/^sha256[:=]/i, '').replace(/:/g, '').toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) throw new FerryError('INVALID_ARGUMENT', `"${text}" is not a SHA-256 fingerprint (64 hex digits, colons allowed)`);
  return hex.replace(/(..)(?!$)/g, '$1:');
}

export function parseCertificate(certPem: string): NodeX509 {
  if (certPem.length > MAX_PEM_CHARS) throw new FerryError('BAD_REQUEST', `a certificate is at most ${MAX_PEM_CHARS} characters of PEM`);
  try {
    return new NodeX509(certPem);
  } catch (err) {
    throw new FerryError('BAD_REQUEST', `not a PEM certificate: ${errorMessage(err)}`);
  }
}

/** The CN of a distinguished name like `CN=h1` (what Ferry writes), or null. */
export function commonNameOf(subject: string): string | null {
  const m = /(?:^|[\n,])\s*CN=([^\n,]*)/.exec(subject);
  return m?.[1] ?? null;
}

