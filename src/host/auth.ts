/**
 * Control-API authentication: one bearer token shared by the hosts of a cluster and its operators,
 * read from a file (`--token-file`) or the FERRY_TOKEN environment variable.
 */
import { readFile } from 'node:fs/promises';
import { timingSafeEqual } from 'node:crypto';
import { FerryError, errorMessage } from '../lib/errors.js';

export const TOKEN_ENV = 'FERRY_TOKEN';
/** A shorter token is guessable; refuse it rather than run an open API. */
export const MIN_TOKEN_CHARS = 16;
export const MAX_TOKEN_CHARS = 4096;

export function validateToken(token: string, source: string): string {
  const t = token.trim();
  if (t.length < MIN_TOKEN_CHARS || t.length > MAX_TOKEN_CHARS || /\s/.test(t)) {
    throw new FerryError('AUTH_TOKEN_INVALID', `the API token from ${source} must be ${MIN_TOKEN_CHARS}-${MAX_TOKEN_CHARS} characters without spaces`);
  }
  return t;
}

export async function loadToken(tokenFile: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (tokenFile !== undefined) {
    let text: string;
    try {
      text = await readFile(tokenFile, 'utf8');
    } catch (err) {
      throw new FerryError('AUTH_TOKEN_INVALID', `cannot read the token file ${tokenFile}: ${errorMessage(err)}`);
    }
    return validateToken(text, tokenFile);
  }
  const fromEnv = env[TOKEN_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return validateToken(fromEnv, `$${TOKEN_ENV}`);
  throw new FerryError('AUTH_TOKEN_INVALID', `no API token: pass --token-file <file> or set ${TOKEN_ENV}`);
}

/** Constant-time check of an `Authorization: Bearer <token>` header. */
export function bearerMatches(header: string | undefined, token: string): boolean {
  if (header === undefined || !header.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice('Bearer '.length));
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}
