/**
 * CLI commands of the center: `ferry center` (run one), `ferry center join-token`, and the first
 * listings that talk to a center: `ferry host list`, `ferry task list` (each with --json).
 */
import { Option, type Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { FerryError, errorMessage } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { CenterClient } from '../api/center-client.js';
import { MAX_JOIN_TOKEN_TTL_MS, MIN_JOIN_TOKEN_TTL_MS, SECRET_PATTERN } from '../api/center-v1.js';
import { Center, DEFAULT_EVENT_RETENTION_MAX_EVENTS } from '../center/center.js';
import { durationOption, parseIntegerOption } from './args.js';
import { parseListen, print } from './host-commands.js';

/** Where a client's API token comes from unless --token-file says. */
export const CENTER_TOKEN_ENV = 'FERRY_CENTER_TOKEN';
/** The default listen address of a center. */
export const DEFAULT_CENTER_LISTEN = '127.0.0.1:7100';
/** Largest page the CLI asks for; it pages on until the list ends. */
const CLI_PAGE = 1000;

interface CenterClientOpts { center: string; tokenFile?: string }

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
async function allPages<T, K>(fetchPage: (after: K | undefined) => Promise<{ items: readonly T[]; next: K | null }>): Promise<T[]> {
  const all: T[] = [];
  for (let after: K | undefined; ;) {
    const page = await fetchPage(after);
    all.push(...page.items);
    if (page.next === null) return all;
    after = page.next;
  }
}

async function centerClient(o: CenterClientOpts): Promise<CenterClient> {
  return new CenterClient(o.center, await centerToken(o.tokenFile));
}

function withCenterOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--center <url>', 'center URL, e.g. http://127.0.0.1:7100')
    .option('--token-file <file>', `file holding an API token (default: $${CENTER_TOKEN_ENV})`);
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
    .addOption(new Option('--event-retention <duration>', 'events older than this are pruned (default 7d)').argParser(durationOption('--event-retention')))
    .addOption(new Option('--event-retention-count <n>', `at most this many events are kept, the newest (default ${DEFAULT_EVENT_RETENTION_MAX_EVENTS})`)
      .argParser((v) => parseIntegerOption(v, '--event-retention-count', 1, Number.MAX_SAFE_INTEGER)))
    .action(async (o: { dataDir?: string; listen: string; db?: string; heartbeatInterval?: number; missedHeartbeats?: number; sweepInterval?: number; eventRetention?: number; eventRetentionCount?: number }) => {
      if (o.dataDir === undefined) throw new FerryError('INVALID_ARGUMENT', 'ferry center needs --data-dir <dir>');
      const listen = parseListen(o.listen);
      const c = await Center.start({
        dataDir: o.dataDir, listenHost: listen.host, listenPort: listen.port,
        ...(o.db !== undefined ? { db: o.db } : {}),
        ...(o.heartbeatInterval !== undefined ? { heartbeatIntervalMs: o.heartbeatInterval } : {}),
        ...(o.missedHeartbeats !== undefined ? { missedHeartbeats: o.missedHeartbeats } : {}),
        ...(o.sweepInterval !== undefined ? { sweepIntervalMs: o.sweepInterval } : {}),
        ...(o.eventRetention !== undefined ? { eventRetentionMs: o.eventRetention } : {}),
        ...(o.eventRetentionCount !== undefined ? { eventRetentionMaxEvents: o.eventRetentionCount } : {}),
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
      const t = await (await centerClient(o)).createJoinToken(o.ttl);
      if (o.json) print(t);
      else process.stdout.write(`${t.token}\n`);
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
