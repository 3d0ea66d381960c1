/**
 * How the CLI reaches a center: its URL and an API token (from --token-file or $FERRY_CENTER_TOKEN),
 * the one typed client, and paging through a whole list.
 */
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { FerryError, errorMessage } from '../lib/errors.js';
import { CenterClient } from '../api/center-client.js';
import { SECRET_PATTERN } from '../api/center-v1.js';

/** Where a client's API token comes from unless --token-file says. */
export const CENTER_TOKEN_ENV = 'FERRY_CENTER_TOKEN';
/** Largest page the CLI asks for; it pages on until the list ends. */
export const CLI_PAGE = 1000;

export interface CenterClientOpts { center: string; tokenFile?: string }

async function centerToken(tokenFile: string | undefined): Promise<string> {
  let text: string | undefined;
  let source: string;
  if (tokenFile !== undefined) {
    source = tokenFile;
    try { text = await readFile(tokenFile, 'utf8'); } catch (err) { throw new FerryError('UNAUTHORIZED', `cannot read the API token file ${tokenFile}: ${errorMessage(err)}`); }
  } else {
    source = `$${CENTER_TOKEN_ENV}`;
    text = process.env[CENTER_TOKEN_ENV];
  }
  const t = text?.trim() ?? '';
  if (t === '') throw new FerryError('UNAUTHORIZED', `no API token: pass --token-file <file> (a center's admin token is <data-dir>/admin.token) or set ${CENTER_TOKEN_ENV}`);
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

export async function centerClient(o: CenterClientOpts): Promise<CenterClient> {
  return new CenterClient(o.center, await centerToken(o.tokenFile));
}

export function withCenterOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--center <url>', 'center URL, e.g. http://127.0.0.1:7100')
    .option('--token-file <file>', `file holding an API token (default: $${CENTER_TOKEN_ENV})`);
}

