/**
 * The CLI's client config: which center the `ferry` verbs talk to when no --center is given, with which
 * API token, trusting which CA. Written by `ferry login` (after the CA's fingerprint was checked) and by
 * `ferry up` (for the fleet it starts), read by every command that talks to a center when its flags do
 * not say otherwise. One JSON file: `$FERRY_CONFIG`, else `$XDG_CONFIG_HOME/ferry/config.json`, else
 * `~/.config/ferry/config.json`. It holds a secret: mode 0600, in a directory of mode 0700.
 */
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { FerryError, errorMessage } from '../lib/errors.js';
import { MAX_PEM_CHARS } from '../lib/limits.js';
import { SECRET_PATTERN } from '../api/center-v1.js';
import { centerOrigin } from '../api/center-client.js';

/** The environment variable naming the config file instead of the default path. */
export const CONFIG_ENV = 'FERRY_CONFIG';
/** `writtenBy` of a file `ferry up` wrote: only such a file may be overwritten or removed by it. */
export const WRITTEN_BY_UP = 'ferry up';
export const WRITTEN_BY_LOGIN = 'ferry login';
/** Owner read/write only: the file holds an API token. */
const CONFIG_FILE_MODE = 0o600;
const CONFIG_DIR_MODE = 0o700;
/** A config is a URL, a token and a certificate: anything much larger is not one. */
const MAX_CONFIG_BYTES = 4 * MAX_PEM_CHARS;

export const clientConfigSchema = z.object({
  center: z.string().refine((s) => { try { centerOrigin(s); return true; } catch { return false; } }, 'must be an https:// center URL'),
  token: z.string().regex(SECRET_PATTERN, 'must be a Ferry API token'),
  /** The center's CA certificate (PEM), trusted after its fingerprint was checked. */
  caPem: z.string().max(MAX_PEM_CHARS),
  caFingerprint: z.string(),
  /** Who wrote the file (WRITTEN_BY_UP, WRITTEN_BY_LOGIN). */
  writtenBy: z.string().max(64).optional(),
}).strict();
export type ClientConfig = z.infer<typeof clientConfigSchema>;

/** Where the config file is: $FERRY_CONFIG, else under $XDG_CONFIG_HOME, else under ~/.config. */
export function clientConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const given = env[CONFIG_ENV];
  if (given !== undefined && given !== '') return given;
  const xdg = env.XDG_CONFIG_HOME;
  return join(xdg !== undefined && xdg !== '' ? xdg : join(homedir(), '.config'), 'ferry', 'config.json');
}

/** The config at `path`, or null if there is none; CONFIG_INVALID naming the file if it is not one. */
export async function readClientConfig(path: string = clientConfigPath()): Promise<ClientConfig | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new FerryError('CONFIG_INVALID', `cannot read the ferry config file ${path}: ${errorMessage(err)}`, { path });
  }
  if (text.length > MAX_CONFIG_BYTES) throw new FerryError('CONFIG_INVALID', `the ferry config file ${path} is larger than ${MAX_CONFIG_BYTES} bytes`, { path });
  let json: unknown;
  try { json = JSON.parse(text); } catch (err) {
    throw new FerryError('CONFIG_INVALID', `the ferry config file ${path} is not JSON (${errorMessage(err)}); fix or remove it, or run ferry login again`, { path });
  }
  const parsed = clientConfigSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new FerryError('CONFIG_INVALID', `the ferry config file ${path} is invalid (${issue?.path.join('.') ?? ''}: ${issue?.message ?? ''}); fix or remove it, or run ferry login again`, { path });
  }
  return parsed.data;
}

/** Writes the config file whole (a temporary name renamed into place), created 0600: the token is never readable by others. */
export async function writeClientConfig(config: ClientConfig, path: string = clientConfigPath()): Promise<void> {
  const checked = clientConfigSchema.parse(config);
  await mkdir(dirname(path), { recursive: true, mode: CONFIG_DIR_MODE });
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    await writeFile(tmp, `${JSON.stringify(checked, null, 2)}\n`, { mode: CONFIG_FILE_MODE });
    // The mode of writeFile applies only to a new file (and the umask may narrow it): set it outright.
    await chmod(tmp, CONFIG_FILE_MODE);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw new FerryError('CONFIG_INVALID', `cannot write the ferry config file ${path}: ${errorMessage(err)}`, { path });
  }
}

export async function removeClientConfig(path: string = clientConfigPath()): Promise<void> {
  await rm(path, { force: true });
}
