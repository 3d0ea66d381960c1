/**
 * The CLI's client config: which center to talk to, with which API token, trusting which CA. Written by
 * `ferry login` (and later `ferry up`), read by every command that talks to a center when its flags do
 * not say otherwise. One JSON file, mode 0600 (it holds a token):
 * `$FERRY_CONFIG`, else `$XDG_CONFIG_HOME/ferry/config.json`, else `~/.config/ferry/config.json`.
 */
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { FerryError, errorMessage } from '../lib/errors.js';
import { MAX_PEM_CHARS } from '../lib/limits.js';
import { SECRET_PATTERN } from '../api/center-v1.js';
import { centerOrigin } from '../api/center-client.js';

export const CONFIG_ENV = 'FERRY_CONFIG';
/** A config is a URL, a token and a certificate: anything much larger is not one. */
const MAX_CONFIG_BYTES = 4 * MAX_PEM_CHARS;

export const clientConfigSchema = z.object({
  center: z.string().refine((s) => { try { centerOrigin(s); return true; } catch { return false; } }, 'must be an https:// center URL'),
  token: z.string().regex(SECRET_PATTERN, 'must be a Ferry API token'),
  /** The center's CA certificate (PEM), trusted after its fingerprint was checked at login. */
  caPem: z.string().max(MAX_PEM_CHARS),
  caFingerprint: z.string(),
}).strict();
export type ClientConfig = z.infer<typeof clientConfigSchema>;

export function clientConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const given = env[CONFIG_ENV];
  if (given !== undefined && given !== '') return given;
  const xdg = env.XDG_CONFIG_HOME;
  return join(xdg !== undefined && xdg !== '' ? xdg : join(homedir(), '.config'), 'ferry', 'config.json');
}

/** The config at `path`, or null if there is none; INVALID_ARGUMENT if it is not one. */
export async function readClientConfig(path: string = clientConfigPath()): Promise<ClientConfig | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new FerryError('INVALID_ARGUMENT', `cannot read the client config ${path}: ${errorMessage(err)}`);
  }
  if (text.length > MAX_CONFIG_BYTES) throw new FerryError('INVALID_ARGUMENT', `${path} is too large for a Ferry client config`);
  let parsed: unknown;
  try { parsed = JSON.parse(text); } catch (err) { throw new FerryError('INVALID_ARGUMENT', `${path} is not JSON: ${errorMessage(err)}`); }
  const r = clientConfigSchema.safeParse(parsed);
  if (!r.success) throw new FerryError('INVALID_ARGUMENT', `${path} is not a Ferry client config (${r.error.issues[0]?.path.join('.') ?? ''}: ${r.error.issues[0]?.message ?? ''}); run ferry login again`);
  return r.data;
}

export async function writeClientConfig(config: ClientConfig, path: string = clientConfigPath()): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  // Aside and renamed, created 0600: the token is never readable by others, not even for a moment.
  const tmp = `${path}.tmp`;
  await writeFile(tmp, `${JSON.stringify(clientConfigSchema.parse(config), null, 2)}\n`, { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, path);
}
