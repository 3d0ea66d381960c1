/**
 * CLI commands of the center: `ferry center` (run one), `ferry center join-token`, `ferry login`
 * (trust a center's CA by its fingerprint and keep URL, token and CA in the client config), and the
 * first listings that talk to a center: `ferry host list`, `ferry task list` (each with --json).
 *
 * A command that talks to a center takes --center, --token-file and --ca-file, each overriding the
 * client config (./client-config.ts) that `ferry login` wrote.
 */
import { Option, type Command } from 'commander';
import { createInterface } from 'node:readline/promises';
import { FerryError, errorMessage } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { MAX_JOIN_TOKEN_TTL_MS, MIN_JOIN_TOKEN_TTL_MS, TASK_STATES, type CenterSiteView } from '../api/center-v1.js';
import { Center, DEFAULT_EVENT_RETENTION_MAX_EVENTS } from '../center/center.js';
import { DEFAULT_BUDGETS, MAX_BUDGET } from '../center/budgets.js';
import { durationOption, parseIntegerOption, sizeOption } from './args.js';
import { DEFAULT_COPY_STREAMS, MAX_COPY_STREAMS } from '../nfc/plan.js';
import { MIN_RATE_BYTES_PER_SEC } from '../dataplane/rate-limiter.js';
import { parseListen, print } from './host-commands.js';
import { CENTER_TOKEN_ENV, CLI_PAGE, allPages, centerClient, centerToken, withCenterOptions, type CenterClientOpts } from './center-access.js';
import { describeTask, followTask, taskExitCode } from './center-tasks.js';
import { loggerFor, withLogOptions, type LogOptions } from './log-options.js';
import { WRITTEN_BY_LOGIN, clientConfigPath, writeClientConfig } from './client-config.js';
import { normalizeFingerprint } from '../lib/fingerprint.js';
import { CenterClient } from '../api/center-client.js';

/** The default listen address of a center. */
export const DEFAULT_CENTER_LISTEN = '127.0.0.1:7100';

function parseTaskId(text: string): number {
  const id = Number(text);
  if (!/^\d{1,15}$/.test(text) || !Number.isSafeInteger(id) || id < 1) throw new FerryError('INVALID_ARGUMENT', `"${text}" is not a task id (a positive integer, as ferry task list shows)`);
  return id;
}

const UNSET_SUBNET = '(the lowest free /24 of 100.64.0.0/10, given at first use)';

/** One line of `ferry site list`: name, host and datastore names, subnet. */
function siteLine(x: CenterSiteView): string {
  const more = (truncated: boolean): string => (truncated ? ',…' : '');
  const hosts = x.hosts.length === 0 ? '-' : `${x.hosts.join(',')}${more(x.hostsTruncated)}`;
  const datastores = x.datastores.length === 0 ? '-' : `${x.datastores.map((d) => d.name).join(',')}${more(x.datastoresTruncated)}`;
  return `${x.name}\thosts ${hosts}\tdatastores ${datastores}\t${x.virtualSubnet ?? UNSET_SUBNET}`;
}

/** Ask a person on a terminal; false for anything but yes. */
async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try { return /^y(es)?$/i.test((await rl.question(question)).trim()); } finally { rl.close(); }
}

export function addCenterCommands(program: Command, host: Command): void {
  const center = withLogOptions(program.command('center'))
    .description('run the management server: inventory of hosts, datastores and VMs, tasks, events, REST API')
    .enablePositionalOptions()
    .option('--data-dir <dir>', 'where the store (SQLite) and the admin token live')
    .option('--listen <host:port>', 'API address (port 0: any free port)', DEFAULT_CENTER_LISTEN)
    .option('--db <url>', 'a postgres://… database instead of SQLite in the data directory')
    .addOption(new Option('--heartbeat-interval <duration>', 'how often hosts heartbeat').argParser(durationOption('--heartbeat-interval')))
    .addOption(new Option('--missed-heartbeats <n>', 'a host is disconnected after this many missed heartbeats').argParser((v) => parseIntegerOption(v, '--missed-heartbeats', 1, 1000)))
    .addOption(new Option('--sweep-interval <duration>', 'how often silent hosts are looked for').argParser(durationOption('--sweep-interval')))
    .addOption(new Option('--path-ttl <duration>', 'how long a mobility operation\'s virtual path lives unless renewed (renewed every third of it while the operation runs)').argParser(durationOption('--path-ttl')))
    .addOption(new Option('--task-lease <duration>', 'a task\'s claim: a dead center\'s tasks are taken over after about this long').argParser(durationOption('--task-lease')))
    .addOption(new Option('--task-concurrency <n>', 'tasks this center runs at once').argParser((v) => parseIntegerOption(v, '--task-concurrency', 1, 1000)))
    .addOption(new Option('--max-migrations-per-host <n>', `concurrent migrations a host takes part in (default ${DEFAULT_BUDGETS.hostMigrations}, as vCenter on 10 GbE)`).argParser((v) => parseIntegerOption(v, '--max-migrations-per-host', 1, MAX_BUDGET)))
    .addOption(new Option('--max-outbound-per-host <n>', `concurrent migrations out of one host (default ${DEFAULT_BUDGETS.hostOutboundMigrations}, as KubeVirt)`).argParser((v) => parseIntegerOption(v, '--max-outbound-per-host', 1, MAX_BUDGET)))
    .addOption(new Option('--max-migrations-per-datastore <n>', `concurrent migrations touching one datastore (default ${DEFAULT_BUDGETS.datastoreMigrations}, as vCenter)`).argParser((v) => parseIntegerOption(v, '--max-migrations-per-datastore', 1, MAX_BUDGET)))
    .addOption(new Option('--max-migrations <n>', `concurrent migrations in the fleet (default ${DEFAULT_BUDGETS.fleetMigrations}, as KubeVirt)`).argParser((v) => parseIntegerOption(v, '--max-migrations', 1, MAX_BUDGET)))
    .addOption(new Option('--event-retention <duration>', 'events older than this are pruned (default 7d)').argParser(durationOption('--event-retention')))
    .addOption(new Option('--event-retention-count <n>', `at most this many events are kept, the newest (default ${DEFAULT_EVENT_RETENTION_MAX_EVENTS})`)
      .argParser((v) => parseIntegerOption(v, '--event-retention-count', 1, Number.MAX_SAFE_INTEGER)))
    .action(async (o: {
      dataDir?: string; listen: string; db?: string; heartbeatInterval?: number; missedHeartbeats?: number; sweepInterval?: number; taskLease?: number; taskConcurrency?: number; pathTtl?: number;
      maxMigrationsPerHost?: number; maxOutboundPerHost?: number; maxMigrationsPerDatastore?: number; maxMigrations?: number; eventRetention?: number; eventRetentionCount?: number;
    } & LogOptions) => {
      if (o.dataDir === undefined) throw new FerryError('INVALID_ARGUMENT', 'ferry center needs --data-dir <dir>');
      const listen = parseListen(o.listen);
      const logger = loggerFor(o);
      const c = await Center.start({
        logger, dataDir: o.dataDir, listenHost: listen.host, listenPort: listen.port,
        ...(o.db !== undefined ? { db: o.db } : {}),
        ...(o.heartbeatInterval !== undefined ? { heartbeatIntervalMs: o.heartbeatInterval } : {}),
        ...(o.missedHeartbeats !== undefined ? { missedHeartbeats: o.missedHeartbeats } : {}),
        ...(o.sweepInterval !== undefined ? { sweepIntervalMs: o.sweepInterval } : {}),
        ...(o.taskLease !== undefined ? { taskLeaseMs: o.taskLease } : {}),
        ...(o.pathTtl !== undefined ? { pathTtlMs: o.pathTtl } : {}),
        ...(o.taskConcurrency !== undefined ? { taskConcurrency: o.taskConcurrency } : {}),
        budgets: {
          ...(o.maxMigrationsPerHost !== undefined ? { hostMigrations: o.maxMigrationsPerHost } : {}),
          ...(o.maxOutboundPerHost !== undefined ? { hostOutboundMigrations: o.maxOutboundPerHost } : {}),
          ...(o.maxMigrationsPerDatastore !== undefined ? { datastoreMigrations: o.maxMigrationsPerDatastore } : {}),
          ...(o.maxMigrations !== undefined ? { fleetMigrations: o.maxMigrations } : {}),
        },
        ...(o.eventRetention !== undefined ? { eventRetentionMs: o.eventRetention } : {}),
        ...(o.eventRetentionCount !== undefined ? { eventRetentionMaxEvents: o.eventRetentionCount } : {}),
      });
      process.on('unhandledRejection', (reason) => {
        c.logger.error(`center: INTERNAL ERROR (unhandled rejection, please report): ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`);
      });
      // Signal handlers before the ready line: whoever reads it may signal at once.
      const stopped = new Promise<void>((resolve) => {
        const stop = (signal: string): void => {
          c.logger.info(`center: ${signal}: shutting down`);
          void c.close().then(resolve, (err: unknown) => { c.logger.error(`center: shutdown: ${errorMessage(err)}`); resolve(); });
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
      const token = await centerToken(o.tokenFile, null);
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
      await writeClientConfig({ center: client.baseUrl, token, caPem: ca.certificate, caFingerprint: ca.fingerprint, writtenBy: WRITTEN_BY_LOGIN }, path);
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

  const site = program.command('site').description('sites of a center: each has its hosts (ferry host --site), the datastores they mount, and the virtual subnet its hosts\' mobility operations take addresses from');
  withCenterOptions(site.command('list').description('list the sites: hosts, datastores, virtual subnet').option('--json', 'print as JSON', false))
    .action(async (o: CenterClientOpts & { json: boolean }) => {
      const client = await centerClient(o);
      const sites = await allPages(async (after: string | undefined) => {
        const page = await client.listSites({ limit: CLI_PAGE, ...(after !== undefined ? { after } : {}) });
        return { items: page.sites, next: page.next };
      });
      if (o.json) { print(sites); return; }
      for (const x of sites) process.stdout.write(`${siteLine(x)}\n`);
    });
  withCenterOptions(site.command('show').description('one site: its hosts, the datastores they mount (name and id), its virtual subnet')
    .argument('<site>', 'site name').option('--json', 'print as JSON', false))
    .action(async (name: string, o: CenterClientOpts & { json: boolean }) => {
      const x = await (await centerClient(o)).site(name);
      if (o.json) { print(x); return; }
      process.stdout.write(`site ${x.name}${x.description !== '' ? ` (${x.description})` : ''}\nvirtual subnet: ${x.virtualSubnet ?? UNSET_SUBNET}\n`);
      process.stdout.write(`hosts: ${x.hosts.length === 0 ? '(none)' : x.hosts.join(', ')}${x.hostsTruncated ? ', … (more: ferry host list)' : ''}\n`);
      process.stdout.write(`datastores:${x.datastores.length === 0 ? ' (none)' : ''}\n`);
      for (const ds of x.datastores) process.stdout.write(`  ${ds.name}\t${ds.id}\n`);
      if (x.datastoresTruncated) process.stdout.write('  … (more)\n');
    });
  withCenterOptions(site.command('subnet').description('set a site\'s virtual subnet (/16../29 inside 100.64.0.0/10; refused while the site has live paths)')
    .argument('<site>', 'site name').argument('<cidr>', 'e.g. 100.64.10.0/24').option('--json', 'print as JSON', false))
    .action(async (name: string, cidr: string, o: CenterClientOpts & { json: boolean }) => {
      const updated = await (await centerClient(o)).setSiteSubnet(name, cidr);
      if (o.json) print(updated);
      else process.stdout.write(`${updated.name}\t${updated.virtualSubnet ?? ''}\n`);
    });

  const maintenance = host.command('maintenance').description('take a host out of service (its running VMs leave by live migration) or back');
  for (const action of ['enter', 'exit'] as const) {
    withCenterOptions(maintenance.command(action)
      .description(action === 'enter' ? 'evacuate every running VM (within the budgets), then in-maintenance; a VM that cannot move is reported' : 'cancel an evacuation in progress and return the host to service')
      .argument('<host>', 'host name')
      .option('--no-wait', 'answer the task at once instead of following it')
      .option('--json', 'print the task as JSON', false))
      .action(async (name: string, o: CenterClientOpts & { wait: boolean; json: boolean }) => {
        const client = await centerClient(o);
        const task = await client.maintenance(name, action);
        if (!o.wait) { if (o.json) print(task); else process.stdout.write(`${task.id}\n`); return; }
        // Ctrl-C leaves an evacuation running: cancelling it is `ferry host maintenance exit`.
        const done = await followTask(client, task, { quiet: o.json, detachOnSigint: true });
        if (o.json) print(done);
        else process.stderr.write(`${describeTask(done)}\n`);
        if (done.state !== 'succeeded' && done.state !== 'running' && done.state !== 'queued') process.exitCode = 1;
      });
  }

  withCenterOptions(program.command('copy')
    .description('copy files from one datastore to another through a host (a center task: handed to another host when that one is drained, or with ferry task move)')
    .argument('<files...>', 'paths in the source datastore (each lands at the same path in the target)')
    .requiredOption('--from <datastore>', 'the source datastore (its name as ferry host list shows it, or its id)')
    .requiredOption('--to <datastore>', 'the target datastore')
    .option('--via <host>', 'the host that copies (it must mount the source); default: the center picks one')
    .addOption(new Option('--streams <n>', `parallel streams (default ${DEFAULT_COPY_STREAMS})`).argParser((v) => parseIntegerOption(v, '--streams', 1, MAX_COPY_STREAMS)))
    .addOption(new Option('--rate <size>', 'bandwidth cap per second (e.g. 100MiB)').argParser(sizeOption('--rate')))
    .option('--no-isolation', 'remote form: connect the two hosts directly instead of over the copy\'s own virtual path')
    .option('--wait', 'follow the copy to its end with a progress bar (Ctrl-C stops following; the copy goes on)', false)
    .option('--json', 'print the task as JSON', false))
    .action(async (files: string[], o: CenterClientOpts & { from: string; to: string; via?: string; streams?: number; rate?: number; isolation: boolean; wait: boolean; json: boolean }) => {
      if (o.rate !== undefined && o.rate < MIN_RATE_BYTES_PER_SEC) throw new FerryError('INVALID_ARGUMENT', `--rate must be at least ${formatBytes(MIN_RATE_BYTES_PER_SEC)}/s`);
      const client = await centerClient(o);
      const started = await client.copy({
        files, from: o.from, to: o.to, ...(o.via !== undefined ? { via: o.via } : {}), ...(o.streams !== undefined ? { streams: o.streams } : {}),
        ...(o.rate !== undefined ? { rateBytesPerSec: o.rate } : {}), ...(o.isolation ? {} : { isolation: false }),
      });
      if (!o.wait) { if (o.json) print(started); else process.stdout.write(`${started.id}\n`); return; }
      const done = await followTask(client, started, { quiet: o.json, detachOnSigint: true });
      if (o.json) print(done);
      else process.stderr.write(`${describeTask(done)}\n`);
      process.exitCode = taskExitCode(done);
    });

  const task = program.command('task').description('tasks of a center');
  withCenterOptions(task.command('watch').description('follow a task to its end with a progress bar (Ctrl-C stops watching, the task goes on)')
    .argument('<id>', 'task id').option('--json', 'print the final task as JSON', false))
    .action(async (id: string, o: CenterClientOpts & { json: boolean }) => {
      const client = await centerClient(o);
      const done = await followTask(client, await client.task(parseTaskId(id)), { quiet: o.json, detachOnSigint: true });
      if (o.json) print(done);
      else process.stderr.write(`${describeTask(done)}\n`);
      process.exitCode = taskExitCode(done);
    });
  withCenterOptions(task.command('cancel').description('cancel a task in any state (a running one stops at its next step)')
    .argument('<id>', 'task id').option('--json', 'print the task as JSON', false))
    .action(async (id: string, o: CenterClientOpts & { json: boolean }) => {
      const t = await (await centerClient(o)).cancelTask(parseTaskId(id));
      if (o.json) print(t);
      else process.stdout.write(`${describeTask(t)}${t.cancelRequested ? ' (cancel requested)' : ''}\n`);
    });
  withCenterOptions(task.command('move').description('hand a running copy to another host (--to, or one the center picks): its host stops at a durable boundary, the other goes on from there')
    .argument('<id>', 'task id (a copy task)').option('--to <host>', 'the host to go on (it must mount the copy\'s source and be in service)').option('--json', 'print the task as JSON', false))
    .action(async (id: string, o: CenterClientOpts & { to?: string; json: boolean }) => {
      const taskId = parseTaskId(id);
      const t = await (await centerClient(o)).moveTask(taskId, o.to);
      if (o.json) print(t);
      else process.stdout.write(`${describeTask(t)} (move requested${o.to !== undefined ? ` to ${o.to}` : ''}; ferry task watch ${t.id} follows it)\n`);
    });
  withCenterOptions(task.command('list').description('list a center\'s tasks, oldest first').option('--json', 'print as JSON', false)
    .addOption(new Option('--state <state>', 'only tasks in this state').choices(TASK_STATES))
    .option('--kind <kind>', 'only tasks of this kind (vm.create, vm.migrate, host.evacuate, copy, ...)')
    .option('--vm <name>', 'only tasks of this VM'))
    .action(async (o: CenterClientOpts & { json: boolean; state?: (typeof TASK_STATES)[number]; kind?: string; vm?: string }) => {
      const client = await centerClient(o);
      const tasks = await allPages(async (after: number | undefined) => {
        const page = await client.listTasks({
          limit: CLI_PAGE, ...(after !== undefined ? { after } : {}), ...(o.state !== undefined ? { state: o.state } : {}),
          ...(o.kind !== undefined ? { kind: o.kind } : {}), ...(o.vm !== undefined ? { target: `vm:${o.vm}` } : {}),
        });
        return { items: page.tasks, next: page.next };
      });
      if (o.json) { print(tasks); return; }
      for (const t of tasks) {
        const detail = t.error !== null ? `[${t.error.code}] ${t.error.message}` : (t.waitingReason ?? t.phase);
        process.stdout.write(`${t.id}\t${t.kind}\t${t.target}\t${t.state}\t${Math.round(t.progress * 100)}%\t${detail}\n`);
      }
    });
}
