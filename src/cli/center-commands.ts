/**
 * CLI commands of the center: `ferry center` (run one), `ferry center join-token`, `ferry login`
 * (trust a center's CA by its fingerprint and keep URL, token and CA in the client config), and the
 * first listings that talk to a center: `ferry host list`, `ferry task list` (each with --json).
 *
 * A command that talks to a center takes --center, --token-file and --ca-file, each overriding the
 * client config (./client-config.ts) that `ferry login` wrote.
 */
import { Option, type Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline/promises';
import { FerryError, errorMessage } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { CenterClient } from '../api/center-client.js';
import { MAX_JOIN_TOKEN_TTL_MS, MIN_JOIN_TOKEN_TTL_MS, SECRET_PATTERN } from '../api/center-v1.js';
import { Center } from '../center/center.js';
import { durationOption, parseIntegerOption } from './args.js';
import { parseListen, print } from './host-commands.js';
import { clientConfigPath, readClientConfig, writeClientConfig } from './client-config.js';
import { fingerprintOf, normalizeFingerprint } from '../lib/fingerprint.js';

/** Where a client's API token comes from unless --token-file says. */
export const CENTER_TOKEN_ENV = 'FERRY_CENTER_TOKEN';
/** The default listen address of a center. */
export const DEFAULT_CENTER_LISTEN = '127.0.0.1:7100';
/** Largest page the CLI asks for; it pages on until the list ends. */
const CLI_PAGE = 1000;

interface CenterClientOpts { center?: string; tokenFile?: string; caFile?: string }

/** The API token of --token-file, else $FERRY_CENTER_TOKEN, else the client config's (`fallback`). */
async function centerToken(tokenFile: string | undefined, fallback?: string): Promise<string> {
  let text: string | undefined;
  let source: string;
  const fromEnv = process.env[CENTER_TOKEN_ENV];
  if (tokenFile !== undefined) {
    source = tokenFile;
    try { text = await readFile(tokenFile, 'utf8'); } catch (err) { throw new FerryError('UNAUTHORIZED', `cannot read the API token file ${tokenFile}: ${errorMessage(err)}`); }
  } else if (fromEnv !== undefined && fromEnv !== '') {
    source = `$${CENTER_TOKEN_ENV}`;
    text = fromEnv;
  } else {
    source = clientConfigPath();
    text = fallback;
  }
  const t = text?.trim() ?? '';
  if (t === '') throw new FerryError('UNAUTHORIZED', `no API token: pass --token-file <file> (a center's admin token is <data-dir>/admin.token), set ${CENTER_TOKEN_ENV} or run ferry login`);
  if (!SECRET_PATTERN.test(t)) throw new FerryError('UNAUTHORIZED', `${source} does not hold a Ferry API token`);
  return t;
}

/** Every page of a keyset-paged list, in order (a listing shows the whole list). */
async function allPages<T, K>(fetchPage: (after: K | undefined) => Promise<{ items: readonly T[]; next: K | null }>): Promise<T[]> {
  const all: T[] = [];
  for (let after: K | undefined; ;) {
    const page = await fetchPage(after);
    all.push(...page.items);
    if (page.next === null) return all;
    after = page.next;
  }
}

async function readCaFile(file: string): Promise<string> {
  let pem: string;
  try { pem = await readFile(file, 'utf8'); } catch (err) { throw new FerryError('INVALID_ARGUMENT', `cannot read the CA file ${file}: ${errorMessage(err)}`); }
  fingerprintOf(pem);
  return pem;
}

/** A client of the center the flags name, else the client config's; trusting --ca-file, else the config's CA. */
async function centerClient(o: CenterClientOpts): Promise<CenterClient> {
  const config = await readClientConfig();
  const center = o.center ?? config?.center;
  if (center === undefined) throw new FerryError('INVALID_ARGUMENT', `no center: pass --center <url> or run ferry login (no client config in ${clientConfigPath()})`);
  const caPem = o.caFile !== undefined ? await readCaFile(o.caFile) : config?.caPem;
  return new CenterClient(center, await centerToken(o.tokenFile, config?.token), caPem !== undefined ? { caPem } : {});
}

function withCenterOptions(cmd: Command): Command {
  return cmd
    .option('--center <url>', 'center URL, e.g. https://127.0.0.1:7100 (default: the client config\'s, see ferry login)')
    .option('--token-file <file>', `file holding an API token (default: $${CENTER_TOKEN_ENV}, else the client config's)`)
    .option('--ca-file <pem>', 'the center\'s CA certificate to trust (default: the client config\'s)');
}

/** Ask a person on a terminal; false for anything but yes. */
async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try { return /^y(es)?$/i.test((await rl.question(question)).trim()); } finally { rl.close(); }
}

export function addCenterCommands(program: Command, host: Command): void {
  const center = program.command('center')
    .description('run the management server: inventory of hosts, datastores and VMs, tasks, events, REST API')
    .enablePositionalOptions()
    .option('--data-dir <dir>', 'where the store (SQLite) and the admin token live')
    .option('--listen <host:port>', 'API address (port 0: any free port)', DEFAULT_CENTER_LISTEN)
    .option('--db <url>', 'a postgres://… database instead of SQLite in the data directory')
    .addOption(new Option('--heartbeat-interval <duration>', 'how often hosts heartbeat').argParser(durationOption('--heartbeat-interval')))
    .addOption(new Option('--missed-heartbeats <n>', 'a host is disconnected after this many missed heartbeats').argParser((v) => parseIntegerOption(v, '--missed-heartbeats', 1, 1000)))
    .addOption(new Option('--sweep-interval <duration>', 'how often silent hosts are looked for').argParser(durationOption('--sweep-interval')))
    .action(async (o: { dataDir?: string; listen: string; db?: string; heartbeatInterval?: number; missedHeartbeats?: number; sweepInterval?: number }) => {
      if (o.dataDir === undefined) throw new FerryError('INVALID_ARGUMENT', 'ferry center needs --data-dir <dir>');
      const listen = parseListen(o.listen);
      const c = await Center.start({
        dataDir: o.dataDir, listenHost: listen.host, listenPort: listen.port,
        ...(o.db !== undefined ? { db: o.db } : {}),
        ...(o.heartbeatInterval !== undefined ? { heartbeatIntervalMs: o.heartbeatInterval } : {}),
        ...(o.missedHeartbeats !== undefined ? { missedHeartbeats: o.missedHeartbeats } : {}),
        ...(o.sweepInterval !== undefined ? { sweepIntervalMs: o.sweepInterval } : {}),
      });
      process.on('unhandledRejection', (reason) => {
        process.stderr.write(`center: INTERNAL ERROR (unhandled rejection, please report): ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}\n`);
      });
      // Signal handlers before the ready line: whoever reads it may signal at once.
      const stopped = new Promise<void>((resolve) => {
        const stop = (signal: string): void => {
          process.stderr.write(`center: ${signal}: shutting down\n`);
          void c.close().then(resolve, (err: unknown) => { process.stderr.write(`center: shutdown: ${errorMessage(err)}\n`); resolve(); });
        };
        process.once('SIGTERM', () => { stop('SIGTERM'); });
        process.once('SIGINT', () => { stop('SIGINT'); });
      });
      // Every start: an operator compares it with what ferry login and a joining host are shown.
      process.stdout.write(`ferry center ca-fingerprint=${c.ca.fingerprint}${c.caCreated ? ' (CA created now)' : ''}\n`);
      // The token is shown once, when it is made; afterwards only where it is.
      if (c.adminTokenCreated) process.stdout.write(`admin token (shown once; also in ${c.adminTokenFile}): ${c.adminToken}\n`);
      // One machine-readable line for scripts and tests.
      process.stdout.write(`ferry center ready url=${c.url} admin-token-file=${c.adminTokenFile}\n`);
      await stopped;
    });

  withCenterOptions(center.command('join-token')
    .description('a one-time token a new host joins with (ferry host … --center URL --join-token <token>)')
    .addOption(new Option('--ttl <duration>', 'how long it may be used').argParser(durationOption('--ttl')))
    .option('--json', 'print as JSON', false))
    .action(async (o: CenterClientOpts & { ttl?: number; json: boolean }) => {
      if (o.ttl !== undefined && (o.ttl < MIN_JOIN_TOKEN_TTL_MS || o.ttl > MAX_JOIN_TOKEN_TTL_MS)) {
        throw new FerryError('INVALID_ARGUMENT', `--ttl must be between ${MIN_JOIN_TOKEN_TTL_MS} ms and ${MAX_JOIN_TOKEN_TTL_MS / 86_400_000} days`);
      }
      const client = await centerClient(o);
      const t = await client.createJoinToken(o.ttl);
      if (o.json) print(t);
      else {
        process.stdout.write(`${t.token}\n`);
        process.stderr.write(`join a host with: ferry host … --center ${client.baseUrl} --join-token <the token> --center-ca-fingerprint ${t.caFingerprint}\n`);
      }
    });

  program.command('login')
    .description('trust a center\'s CA (by its fingerprint) and keep its URL, an API token and the CA in the client config')
    .requiredOption('--center <url>', 'center URL, e.g. https://127.0.0.1:7100')
    .option('--token-file <file>', `file holding an API token (default: $${CENTER_TOKEN_ENV})`)
    .option('--ca-fingerprint <sha256>', 'the CA fingerprint ferry center printed; without it a terminal asks, a script is refused')
    .action(async (o: { center: string; tokenFile?: string; caFingerprint?: string }) => {
      const token = await centerToken(o.tokenFile);
      const expected = o.caFingerprint !== undefined ? normalizeFingerprint(o.caFingerprint) : undefined;
      const ca = await CenterClient.readCa(o.center);
      process.stderr.write(`center ${o.center}: CA fingerprint (SHA-256) ${ca.fingerprint}\n`);
      if (expected !== undefined) {
        if (ca.fingerprint !== expected) {
          throw new FerryError('TLS_UNTRUSTED', `the center's CA fingerprint is ${ca.fingerprint}, not the given ${expected}: not trusted, nothing written (another server, or a man in the middle)`, { fingerprint: ca.fingerprint, expected });
        }
      } else if (process.stdin.isTTY && process.stderr.isTTY) {
        if (!await confirm('compare it with the one ferry center printed; trust this CA? [y/N] ')) throw new FerryError('TLS_UNTRUSTED', 'the CA was not trusted: nothing written');
      } else {
        throw new FerryError('TLS_UNTRUSTED', `not on a terminal, so nobody can compare the fingerprint: pass --ca-fingerprint ${ca.fingerprint} if it is the one ferry center printed (nothing written)`, { fingerprint: ca.fingerprint });
      }
      // The token is checked before it is kept: over TLS verified with the CA just trusted.
      const client = new CenterClient(o.center, token, { caPem: ca.certificate });
      try { await client.listHosts({ limit: 1 }); } finally { await client.close(); }
      const path = clientConfigPath();
      await writeClientConfig({ center: client.baseUrl, token, caPem: ca.certificate, caFingerprint: ca.fingerprint }, path);
      process.stdout.write(`logged in to ${client.baseUrl} (CA ${ca.fingerprint}); client config in ${path}\n`);
    });

  withCenterOptions(host.command('list').description('list the hosts a center knows').option('--json', 'print as JSON', false))
    .action(async (o: CenterClientOpts & { json: boolean }) => {
      const client = await centerClient(o);
      const hosts = await allPages(async (after: string | undefined) => {
        const page = await client.listHosts({ limit: CLI_PAGE, ...(after !== undefined ? { after } : {}) });
        return { items: page.hosts, next: page.next };
      });
      if (o.json) { print(hosts); return; }
      for (const h of hosts) {
        const seen = h.lastHeartbeatAtMs === null ? 'never' : `${((Date.now() - h.lastHeartbeatAtMs) / 1000).toFixed(1)} s ago`;
        process.stdout.write(`${h.name}\t${h.state}\t${h.capacity.vcpus} vCPU\t${formatBytes(h.capacity.memoryBytes)}\theartbeat ${seen}\t${h.url}\n`);
      }
    });

  const task = program.command('task').description('tasks of a center');
  withCenterOptions(task.command('list').description('list a center\'s tasks, oldest first').option('--json', 'print as JSON', false))
    .action(async (o: CenterClientOpts & { json: boolean }) => {
      const client = await centerClient(o);
      const tasks = await allPages(async (after: number | undefined) => {
        const page = await client.listTasks({ limit: CLI_PAGE, ...(after !== undefined ? { after } : {}) });
        return { items: page.tasks, next: page.next };
      });
      if (o.json) { print(tasks); return; }
      for (const t of tasks) {
        const detail = t.error !== null ? `[${t.error.code}] ${t.error.message}` : (t.waitingReason ?? t.phase);
        process.stdout.write(`${t.id}\t${t.kind}\t${t.target}\t${t.state}\t${Math.round(t.progress * 100)}%\t${detail}\n`);
      }
    });
}
