/**
 * The CLI's client configuration file: which center the `ferry` verbs talk to when no --center is
 * given, and the API token they present. `ferry up` (and `ferry login`) write it; default
 * `$XDG_CONFIG_HOME/ferry/config.json` (or `~/.config/ferry/config.json`), `$FERRY_CONFIG` names
 * another file. It holds a secret: written with mode 0600, in a directory of mode 0700.
 */
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { FerryError, errorMessage } from '../lib/errors.js';
import { SECRET_PATTERN } from '../api/center-v1.js';

/** The environment variable naming the config file instead of the default path. */
export const CONFIG_ENV = 'FERRY_CONFIG';
/** `writtenBy` of a file `ferry up` wrote: only such a file may be overwritten or removed by it. */
export const WRITTEN_BY_UP = 'ferry up';
/** Owner read/write only: the file holds an API token. */
const CONFIG_FILE_MODE = 0o600;
const CONFIG_DIR_MODE = 0o700;
/** Far above any real file (a URL, a token, a CA certificate): a larger one is not a config file. */
const MAX_CONFIG_BYTES = 1024 * 1024;

const clientConfigSchema = z.object({
  /** The center's URL, e.g. http://127.0.0.1:7100. */
  center: z.string().url(),
  /** An API token of that center. */
  token: z.string().regex(SECRET_PATTERN, 'not a Ferry API token'),
  /** The center's CA certificate (PEM), for an https center. */
  ca: z.string().optional(),
  /** Who wrote the file ("ferry up", "ferry login"). */
  writtenBy: z.string().optional(),
});
export type ClientConfig = z.infer<typeof clientConfigSchema>;

/** Where the config file is: $FERRY_CONFIG, else under $XDG_CONFIG_HOME, else under ~/.config. */
export function clientConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const given = env[CONFIG_ENV];
  if (given !== undefined && given !== '') return given;
  const xdg = env.XDG_CONFIG_HOME;
  return join(xdg !== undefined && xdg !== '' ? xdg : join(homedir(), '.config'), 'ferry', 'config.json');
}

/** The config file's content, or null when there is none; a file that is not a config is an error naming it. */
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
    throw new FerryError('CONFIG_INVALID', `the ferry config file ${path} is not JSON (${errorMessage(err)}); fix or remove it`, { path });
  }
  const parsed = clientConfigSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new FerryError('CONFIG_INVALID', `the ferry config file ${path} is invalid (${issue?.path.join('.') ?? ''}: ${issue?.message ?? ''}); fix or remove it`, { path });
  }
  return parsed.data;
}

/** Writes the config file whole (a temporary name renamed into place), mode 0600. */
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
