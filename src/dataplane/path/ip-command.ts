/**
 * The one way Ferry runs iproute2's `ip`: execFile (never a shell, so no argument is ever parsed as
 * shell syntax), every argument checked against a plain character set, a timeout, and the command's
 * stderr in the error so an operator sees what the kernel said. It runs in the caller's network
 * namespace: a host process runs inside its own, so nothing here switches namespaces.
 *
 * Some arguments must not appear in errors (the peer host's underlay address, which the operation's
 * code never learns): `redact` replaces them in the message and the details.
 */
import { execFile } from 'node:child_process';
import { FerryError, errnoCode, errorMessage } from '../../lib/errors.js';

/** The iproute2 binary, found on PATH. */
export const IP_BINARY = 'ip';
/** One `ip` call takes milliseconds; a hung one (a wedged netlink socket) must not hang a path's setup. */
export const IP_TIMEOUT_MS = 5_000;
/** `ip -j ... show` of a busy host stays far below this; more is not an answer we can use. */
export const IP_MAX_OUTPUT_BYTES = 4 * 1024 * 1024;
/** Arguments at most (the longest call here, the VXLAN link, has ~20). */
export const IP_MAX_ARGS = 32;
/** Characters of one argument at most (names ≤ 15, addresses ≤ 43, numbers). */
export const IP_MAX_ARG_CHARS = 64;
/**
 * A lower-case flag (-j, -d), or a word: names, numbers, IPv4/IPv6 addresses with a prefix length,
 * MAC addresses. A word may not start with "-", so a value never turns into an option of `ip`.
 */
const IP_ARG_PATTERN = /^(-[a-z]+|[A-Za-z0-9][A-Za-z0-9._:/-]*)$/;
/** What stands in for a redacted argument. */
export const REDACTED = '<redacted>';

/**
 * stderr of `ip` when the thing to delete is not there: a device ("Cannot find device"), a route
 * ("No such process", ESRCH), a rule ("No such file or directory", ENOENT), an address
 * ("Address not found" / "Cannot assign requested address"), a neighbour ("No such file or directory").
 */
const GONE_PATTERN = /Cannot find device|No such device|No such process|No such file or directory|Address not found|Cannot assign requested address/;

export interface IpOptions {
  readonly timeoutMs?: number;
  /** Values to hide from the error's message and details (they are still passed to `ip`). */
  readonly redact?: readonly string[];
}

function checkArgs(args: readonly string[]): void {
  if (args.length === 0 || args.length > IP_MAX_ARGS) {
    throw new FerryError('INVALID_ARGUMENT', `an ip command takes 1 to ${IP_MAX_ARGS} arguments, not ${args.length}`);
  }
  for (const arg of args) {
    if (arg.length > IP_MAX_ARG_CHARS || !IP_ARG_PATTERN.test(arg)) {
      throw new FerryError('INVALID_ARGUMENT', `refusing to pass "${arg.slice(0, IP_MAX_ARG_CHARS)}" to ip: only a flag, or letters, digits and . _ : / - not first (at most ${IP_MAX_ARG_CHARS})`);
    }
  }
}

function redactText(text: string, redact: readonly string[]): string {
  let out = text;
  for (const value of redact) if (value !== '') out = out.split(value).join(REDACTED);
  return out;
}

function failure(args: readonly string[], err: unknown, stderr: string, options: IpOptions): FerryError {
  const redact = options.redact ?? [];
  const command = redactText(`${IP_BINARY} ${args.join(' ')}`, redact);
  const said = redactText(stderr.trim(), redact);
  const killed = typeof err === 'object' && err !== null && 'killed' in err && err.killed === true;
  const why = errnoCode(err) === 'ENOENT' ? `${IP_BINARY} is not installed (install iproute2)`
    : killed ? `it did not finish within ${options.timeoutMs ?? IP_TIMEOUT_MS} ms`
    : said !== '' ? said : redactText(errorMessage(err), redact);
  return new FerryError('PATH_SETUP_FAILED', `"${command}" failed: ${why}`, { command, stderr: said });
}

/** Runs `ip args…`; resolves with its stdout, rejects with PATH_SETUP_FAILED (the command and its stderr). */
export function runIp(args: readonly string[], options: IpOptions = {}): Promise<string> {
  checkArgs(args);
  return new Promise((resolve, reject) => {
    execFile(IP_BINARY, args, {
      timeout: options.timeoutMs ?? IP_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: IP_MAX_OUTPUT_BYTES, encoding: 'utf8',
    }, (err, stdout, stderr) => {
      if (err === null) resolve(stdout); else reject(failure(args, err, stderr, options));
    });
  });
}

/** Runs `ip -j args…` and parses its JSON (an empty answer is an empty list). */
export async function ipJson(args: readonly string[], options: IpOptions = {}): Promise<unknown> {
  const out = await runIp(['-j', ...args], options);
  if (out.trim() === '') return [];
  try {
    return JSON.parse(out) as unknown;
  } catch {
    throw new FerryError('PATH_SETUP_FAILED', `"${IP_BINARY} -j ${args.join(' ')}" printed something that is not JSON`);
  }
}

/** True when `err` is ip saying that what was to be deleted is not there (a delete that has nothing to do). */
export function isAlreadyGone(err: unknown): boolean {
  if (!(err instanceof FerryError) || err.code !== 'PATH_SETUP_FAILED') return false;
  const stderr = err.details['stderr'];
  return typeof stderr === 'string' && GONE_PATTERN.test(stderr);
}

/** Runs a delete; resolves false when there was nothing to delete, true when it deleted something. */
export async function runIpDelete(args: readonly string[], options: IpOptions = {}): Promise<boolean> {
  try {
    await runIp(args, options);
    return true;
  } catch (err) {
    if (isAlreadyGone(err)) return false;
    throw err;
  }
}
