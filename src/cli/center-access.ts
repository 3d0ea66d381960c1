/**
 * How the CLI reaches a center: its URL (--center, else the client config file that `ferry up` and
 * `ferry login` write) and an API token (--token-file, else $FERRY_CENTER_TOKEN, else the config
 * file's — only for the center the file names), the one typed client, and paging through a whole list.
 */
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { FerryError, errorMessage } from '../lib/errors.js';
import { CenterClient } from '../api/center-client.js';
import { SECRET_PATTERN } from '../api/center-v1.js';
import { fingerprintOf } from '../lib/fingerprint.js';
import { clientConfigPath, readClientConfig, type ClientConfig } from './client-config.js';

/** Where a client's API token comes from unless --token-file says. */
export const CENTER_TOKEN_ENV = 'FERRY_CENTER_TOKEN';
/** Largest page the CLI asks for; it pages on until the list ends. */
export const CLI_PAGE = 1000;

export interface CenterClientOpts { center?: string; tokenFile?: string; caFile?: string }

/** The API token of --token-file, else $FERRY_CENTER_TOKEN, else the config file's — `config` only when it names the center being reached. */
export async function centerToken(tokenFile: string | undefined, config: ClientConfig | null): Promise<string> {
  let text: string | undefined;
  let source: string;
  const fromEnv = process.env[CENTER_TOKEN_ENV];
  if (tokenFile !== undefined) {
    source = tokenFile;
    try { text = await readFile(tokenFile, 'utf8'); } catch (err) { throw new FerryError('UNAUTHORIZED', `cannot read the API token file ${tokenFile}: ${errorMessage(err)}`); }
  } else if ((fromEnv !== undefined && fromEnv.trim() !== '') || config === null) {
    source = `$${CENTER_TOKEN_ENV}`;
    text = fromEnv;
  } else {
    source = clientConfigPath();
    text = config.token;
  }
  const t = text?.trim() ?? '';
  if (t === '') throw new FerryError('UNAUTHORIZED', `no API token: pass --token-file <file> (a center's admin token is <data-dir>/admin.token), set ${CENTER_TOKEN_ENV}, or run ferry up / ferry login`);
  if (!SECRET_PATTERN.test(t)) throw new FerryError('UNAUTHORIZED', `${source} does not hold a Ferry API token`);
  return t;
}

/** Every page of a keyset-paged list, in order (a listing shows the whole list). */
export async function allPages<T, K>(fetchPage: (after: K | undefined) => Promise<{ items: readonly T[]; next: K | null }>): Promise<T[]> {
  const all: T[] = [];
  for (let after: K | undefined; ;) {
    const page = await fetchPage(after);
    all.push(...page.items);
    if (page.next === null) return all;
    after = page.next;
  }
}

export async function readCaFile(file: string): Promise<string> {
  let pem: string;
  try { pem = await readFile(file, 'utf8'); } catch (err) { throw new FerryError('INVALID_ARGUMENT', `cannot read the CA file ${file}: ${errorMessage(err)}`); }
  fingerprintOf(pem);
  return pem;
}

/** Same origin: the config file's token (and CA) are only ever used for the center they came from. */
function sameCenter(a: string, b: string): boolean {
  try { return new URL(a).origin === new URL(b).origin; } catch { return false; }
}

/** A client of the center the flags name, else the config file's; trusting --ca-file, else the config's CA. */
export async function centerClient(o: CenterClientOpts): Promise<CenterClient> {
  const config = await readClientConfig();
  const url = o.center ?? config?.center;
  if (url === undefined) throw new FerryError('INVALID_ARGUMENT', `no center: pass --center <url>, or run ferry up / ferry login (they write ${clientConfigPath()})`);
  const own = config !== null && sameCenter(config.center, url) ? config : null;
  const caPem = o.caFile !== undefined ? await readCaFile(o.caFile) : own?.caPem;
  return new CenterClient(url, await centerToken(o.tokenFile, own), caPem !== undefined ? { caPem } : {});
}

export function withCenterOptions(cmd: Command): Command {
  return cmd
    .option('--center <url>', 'center URL, e.g. https://127.0.0.1:7100 (default: the config file\'s, written by ferry login / ferry up)')
    .option('--token-file <file>', `file holding an API token (default: $${CENTER_TOKEN_ENV}, else the config file's)`)
    .option('--ca-file <pem>', 'the center\'s CA certificate to trust (default: the config file\'s)');
}
