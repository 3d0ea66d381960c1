/**
 * CLI commands that talk to host agents: `ferry host` (run an agent) and the `ferry vm` verbs
 * that take `--host URL` (create, start, stop, pause, resume, delete, list, status, console,
 * verify, migrate; the disk snapshot verbs are in ./snapshot-commands.ts).
 */
import { Option, type Command } from 'commander';
import { readFile } from 'node:fs/promises';
import cliProgress from 'cli-progress';
import { FerryError, errorMessage } from '../lib/errors.js';
import { normalizeFingerprint } from '../lib/fingerprint.js';
import { formatBytes, parseSizeBytes } from '../lib/units.js';
import { HostAgent, type HostOptions } from '../host/agent.js';
import type { DatastoreMount } from '../host/datastores.js';
import { DEFAULT_PATH_DRIVERS } from '../host/path-drivers.js';
import { PATH_DRIVER_KINDS, type PathDriverKind } from '../dataplane/path/spec.js';
import { DEFAULT_LEASE_TIMING, checkLeaseTiming } from '../storage/lease.js';
import { loadToken } from '../host/auth.js';
import { DEFAULT_GRANULARITY_BYTES } from '../vmm/layout.js';
import { MAX_DATA_CHANNELS, MAX_VCPUS, MIN_DATA_CHANNELS, MIN_VCPUS, VM_NAME_PATTERN, VM_NAME_RULE } from '../lib/limits.js';
import { DEFAULT_SITE } from '../center/inventory.js';
import { CONSOLE_LOG_BYTES } from '../host/console-log.js';
import type { MigrationProgress, MigrationRecord } from '../migration/record.js';
import type { MigrationOptions } from '../migration/options.js';
import { HostClient } from '../api/host-client.js';
import type { CreateVmRequest } from '../api/host-v1.js';
import type { CenterClient } from '../api/center-client.js';
import { BUILTIN_IMAGE_PATTERN, prepareMigrationResultSchema, type CenterTaskView } from '../api/center-v1.js';
import { durationOption, parseIntegerOption, sizeOption } from './args.js';
import { CENTER_TOKEN_ENV, CLI_PAGE, allPages, centerClient, withCenterOptions, type CenterClientOpts } from './center-access.js';
import { readClientConfig } from './client-config.js';
import { describeTask, followTask, taskExitCode } from './center-tasks.js';
import { compact } from './status.js';
import { loggerFor, withLogOptions, type LogOptions } from './log-options.js';

export interface ClientOpts { host?: string; center?: string; tokenFile?: string; caFile?: string }

/**
 * The host named by --host (a verb only a host does refuses --center with a clear error); an https://
 * host (ferry host --tls) is trusted by --ca-file, else by the client config's CA (ferry login).
 */
export async function client(o: ClientOpts): Promise<HostClient> {
  if (o.host === undefined) {
    throw new FerryError('INVALID_ARGUMENT', o.center !== undefined ? 'this verb talks to a host: pass --host <url> instead of --center' : 'pass --host <url> (a host agent) or --center <url> (a center; or run ferry up / ferry login, which write a config file naming one)');
  }
  const token = await loadToken(o.tokenFile);
  if (!o.host.startsWith('https:')) return new HostClient(o.host, token);
  let caPem: string | undefined;
  if (o.caFile !== undefined) {
    try { caPem = await readFile(o.caFile, 'utf8'); } catch (err) { throw new FerryError('INVALID_ARGUMENT', `cannot read the CA file ${o.caFile}: ${errorMessage(err)}`); }
  } else {
    caPem = (await readClientConfig())?.caPem;
  }
  return new HostClient(o.host, token, caPem !== undefined ? { caPem } : {});
}

/**
 * The center named by --center, or with neither --host nor --center the one of the client config file
 * (ferry up, ferry login); null when the verb is for a host (--host, or no config either).
 */
async function centerOf(o: ClientOpts): Promise<CenterClient | null> {
  if (o.center === undefined) {
    if (o.host !== undefined || await readClientConfig() === null) return null;
    return centerClient(o.tokenFile !== undefined ? { tokenFile: o.tokenFile } : {});
  }
  if (o.host !== undefined) throw new FerryError('INVALID_ARGUMENT', 'pass --host or --center, not both');
  return centerClient({ center: o.center, ...(o.tokenFile !== undefined ? { tokenFile: o.tokenFile } : {}), ...(o.caFile !== undefined ? { caFile: o.caFile } : {}) });
}

export function withClientOptions(cmd: Command): Command {
  return cmd
    .option('--host <url>', 'host agent URL, e.g. http://127.0.0.1:7000')
    .option('--center <url>', 'or a center URL, e.g. https://127.0.0.1:7100 (it picks the host; with neither: the config file of ferry login / ferry up)')
    .option('--token-file <file>', `file holding the API token (default: $FERRY_TOKEN for a host, $${CENTER_TOKEN_ENV} for a center)`)
    .option('--ca-file <pem>', 'for an https:// host or a center: the CA to trust (default: the center CA of the config file)');
}

/** Runs a center task to its end (progress bar, Ctrl-C cancels) and prints how it ended; sets the exit code. */
async function runTask(start: Promise<CenterTaskView>, c: CenterClient, json: boolean, detach = false): Promise<void> {
  const done = await followTask(c, await start, { quiet: json, detachOnSigint: detach });
  if (json) print(done);
  else process.stderr.write(`${describeTask(done)}\n`);
  if (done.state === 'failed' || done.state === 'cancelled') process.exitCode = 1;
}

/** What a succeeded prepare-migration says to a person: where the seeds lie, with their CIDs. */
function preparedLines(result: unknown): string {
  const r = prepareMigrationResultSchema.safeParse(result);
  if (!r.success) return '';
  const x = r.data;
  const seeds = x.seeds.map((s) => `  ${s.path}\tCID ${s.cid}\t${formatBytes(s.fileBytes)}\n`).join('');
  return `${x.vm} runs on ${x.snapshot.top}; seeds on ${x.toSite}:${x.datastore} (${x.datastoreId}), ${formatBytes(x.copiedBytes)} copied${x.copyTaskId !== null ? ` by copy task ${x.copyTaskId}` : ''}:\n${seeds}`;
}

export function print(obj: unknown): void {
  process.stdout.write(`${JSON.stringify(obj, null, 2)}\n`);
}

type DiskOption = NonNullable<CreateVmRequest['disk']>;

/** `--disk ds:path[,size=10GiB]`: the datastore's name, the path inside it, and a size for a new disk. */
function parseDiskOption(text: string): DiskOption {
  const m = /^([^:,]+):([^,]+)(?:,size=([^,]+))?$/.exec(text);
  if (m === null) throw new FerryError('INVALID_ARGUMENT', `--disk: "${text}" is not <datastore>:<path>[,size=<size>] (e.g. ds1:vms/web.vmdk,size=10GiB)`);
  const [, datastore = '', path = '', size] = m;
  return { datastore, path, ...(size !== undefined ? { sizeBytes: parseSizeBytes(size, '--disk size') } : {}) };
}

export function parseListen(text: string, flag = '--listen'): { host: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(text.trim());
  const port = Number(m?.[2]);
  if (!m || port > 65535) throw new FerryError('INVALID_ARGUMENT', `${flag}: "${text}" is not host:port (e.g. 127.0.0.1:7000, port 0 = any free port)`);
  return { host: (m[1] ?? '').replace(/^\[|\]$/g, ''), port };
}

/** `--path-drivers kernel,portable` (or `none`): known kinds, each once. */
function parsePathDrivers(text: string): readonly PathDriverKind[] {
  if (text.trim() === 'none') return [];
  const kinds = text.split(',').map((k) => k.trim());
  for (const k of kinds) {
    if (!(PATH_DRIVER_KINDS as readonly string[]).includes(k)) throw new FerryError('INVALID_ARGUMENT', `--path-drivers: "${k}" is not a path driver (${PATH_DRIVER_KINDS.join(', ')}, or none)`);
  }
  if (new Set(kinds).size !== kinds.length) throw new FerryError('INVALID_ARGUMENT', `--path-drivers names a driver twice: ${text}`);
  return kinds as PathDriverKind[];
}

/** `--datastore name=path`: the name before the first "=", the path after it (checked when the host mounts it). */
function parseDatastoreFlag(text: string): DatastoreMount {
  const eq = text.indexOf('=');
  const name = eq < 0 ? '' : text.slice(0, eq);
  const path = eq < 0 ? '' : text.slice(eq + 1);
  if (name === '' || path === '') throw new FerryError('DATASTORE_INVALID', `--datastore: "${text}" is not name=path (e.g. --datastore ds1=/srv/ferry/ds1)`, { reason: 'syntax' });
  return { name, path };
}

/** The environment variable a join token may come in (a command line shows in `ps`). */
export const JOIN_TOKEN_ENV = 'FERRY_JOIN_TOKEN';

function centerLinkOptions(o: { center?: string; joinToken?: string; centerCredentialFile?: string; centerCaFingerprint?: string; site?: string }): HostOptions['center'] {
  const joinToken = o.joinToken ?? (process.env[JOIN_TOKEN_ENV] !== '' ? process.env[JOIN_TOKEN_ENV] : undefined);
  if (o.center === undefined) {
    if (o.joinToken !== undefined || o.centerCredentialFile !== undefined || o.centerCaFingerprint !== undefined || o.site !== undefined) {
      throw new FerryError('INVALID_ARGUMENT', '--join-token, --center-ca-fingerprint, --center-credential-file and --site need --center <url>');
    }
    return undefined;
  }
  return {
    centerUrl: o.center, ...(joinToken !== undefined ? { joinToken } : {}), ...(o.centerCredentialFile !== undefined ? { credentialFile: o.centerCredentialFile } : {}),
    ...(o.centerCaFingerprint !== undefined ? { caFingerprint: normalizeFingerprint(o.centerCaFingerprint) } : {}),
    ...(o.site !== undefined ? { site: siteName(o.site) } : {}),
  };
}

/** --site: a name as the center's API takes it (checked here, so a typo is the operator's error at start, not a join refused later). */
function siteName(text: string): string {
  if (!VM_NAME_PATTERN.test(text)) throw new FerryError('INVALID_ARGUMENT', `--site: "${text}" is not a site name (${VM_NAME_RULE})`);
  return text;
}

export function addHostCommands(program: Command, vm: Command): Command {
  const host = withLogOptions(program.command('host'))
    // Its own options stop at a subcommand: `ferry host list --center URL` is list's --center, not the agent's.
    .enablePositionalOptions()
    .description('run a host agent: VMs, an authenticated control API, a migration endpoint and a network file copy endpoint; SIGTERM saves running VMs')
    // Checked in the action, not as required options: commander checks a parent's required options for
    // its subcommands too, and `ferry host list` needs neither.
    .option('--name <name>', 'host name (required)')
    .option('--data-dir <dir>', 'where VM definitions and shutdown snapshots are kept (required)')
    .option('--listen <host:port>', 'control API address (port 0: any free port)', '127.0.0.1:7000')
    .option('--migration-port <port>', 'migration endpoint port (default: any free port)')
    .option('--copy-port <port>', 'network file copy endpoint port, where other hosts send copies into this host\'s datastores (default: any free port)')
    .option('--token-file <file>', 'file holding the API token (default: $FERRY_TOKEN)')
    .addOption(new Option('--memory-limit <size>', 'memory the host may commit to VMs').argParser(sizeOption('--memory-limit')))
    .addOption(new Option('--warm-memory <size>', 'keep the guest memory of one VM of this RAM size faulted in ahead of need (resident while it waits), so that the next VM of that size created or migrated here skips its page faults').argParser(sizeOption('--warm-memory')))
    .option('--datastore <name=path>', 'mount a directory as datastore <name> (repeatable; two hosts may mount one shared directory)', (v: string, all: string[]) => [...all, v], [])
    .option('--center <url>', 'join this center and heartbeat to it (capacity, datastores, VMs)')
    .option('--join-token <token>', `with --center: the one-time join token for the first start (default: $${JOIN_TOKEN_ENV}); later starts use the stored credential`)
    .option('--center-ca-fingerprint <sha256>', 'with --center: the SHA-256 fingerprint of the center\'s CA, to trust it at the first join (printed by ferry center and ferry center join-token)')
    .option('--tls', 'with --center: serve the control API over HTTPS with the certificate the center signed (clients trust the center\'s CA)', false)
    .option('--site <name>', `with --center: the site this host joins (sent at its first join; fixed from then on: the center refuses a re-join into another site) (default: the center's "${DEFAULT_SITE}" site)`)
    .option('--center-credential-file <file>', 'with --center: where the host\'s center credential is kept (default: <data-dir>/center-credential; its key, certificate and the CA beside it)')
    .addOption(new Option('--path-drivers <list>', 'virtual-path drivers this host offers for mobility operations, in order of preference: portable (no privileges), kernel (per-operation VXLAN interfaces; needs CAP_NET_ADMIN); "none" for no isolated operations').argParser(parsePathDrivers).default(DEFAULT_PATH_DRIVERS, DEFAULT_PATH_DRIVERS.join(',')))
    .option('--tunnel-listen <host:port>', 'where the path drivers\' tunnel endpoint is (the host\'s underlay address; port 0: any free one; default: the --listen address, any port)')
    // Every host mounting one datastore must use the same lease timing. Shorter leases make a dead host's disks free sooner (tests use them).
    .addOption(new Option('--lease-duration <duration>', 'how long a disk lease lasts without renewal').argParser(durationOption('--lease-duration')).default(DEFAULT_LEASE_TIMING.durationMs, `${DEFAULT_LEASE_TIMING.durationMs}ms`))
    .addOption(new Option('--lease-renew <duration>', 'disk lease heartbeat period (at most half the duration)').argParser(durationOption('--lease-renew')).default(DEFAULT_LEASE_TIMING.renewIntervalMs, `${DEFAULT_LEASE_TIMING.renewIntervalMs}ms`))
    .addOption(new Option('--lease-clock-skew <duration>', 'how far the hosts\' clocks may disagree; a stale lease is broken this long after its expiry').argParser(durationOption('--lease-clock-skew')).default(DEFAULT_LEASE_TIMING.clockSkewMs, `${DEFAULT_LEASE_TIMING.clockSkewMs}ms`))
    .action(async (given: { name?: string; dataDir?: string; listen: string; migrationPort?: string; copyPort?: string; tokenFile?: string; memoryLimit?: number; warmMemory?: number; datastore: string[]; center?: string; joinToken?: string; centerCredentialFile?: string; centerCaFingerprint?: string; site?: string; tls: boolean; leaseDuration: number; leaseRenew: number; leaseClockSkew: number; pathDrivers: readonly PathDriverKind[]; tunnelListen?: string } & LogOptions) => {
      const { name, dataDir } = given;
      if (name === undefined || dataDir === undefined) throw new FerryError('INVALID_ARGUMENT', 'ferry host needs --name <name> and --data-dir <dir>');
      const o = { ...given, name, dataDir };
      const listen = parseListen(o.listen);
      const center = centerLinkOptions(o);
      const datastores = o.datastore.map(parseDatastoreFlag);
      const leaseTiming = checkLeaseTiming({ durationMs: o.leaseDuration, renewIntervalMs: o.leaseRenew, clockSkewMs: o.leaseClockSkew });
      const tunnel = o.tunnelListen !== undefined ? parseListen(o.tunnelListen, '--tunnel-listen') : undefined;
      const agent = await HostAgent.start({
        pathDrivers: { kinds: o.pathDrivers, ...(tunnel !== undefined ? { tunnelHost: tunnel.host, tunnelPort: tunnel.port } : {}) },
        logger: loggerFor(o), name: o.name, dataDir: o.dataDir, listenHost: listen.host, listenPort: listen.port, token: await loadToken(o.tokenFile),
        ...(o.memoryLimit !== undefined ? { memoryLimitBytes: o.memoryLimit } : {}),
        ...(o.warmMemory !== undefined ? { warmMemoryBytes: o.warmMemory } : {}),
        datastores, leaseTiming,
        ...(center !== undefined ? { center } : {}),
        ...(o.tls ? { tls: true } : {}),
        ...(o.migrationPort !== undefined ? { migrationPort: parseIntegerOption(o.migrationPort, '--migration-port', 0, 65535) } : {}),
        ...(o.copyPort !== undefined ? { copyPort: parseIntegerOption(o.copyPort, '--copy-port', 0, 65535) } : {}),
      });
      // A host must outlive a bug in one request or one migration: report it loudly, keep serving.
      process.on('unhandledRejection', (reason) => {
        agent.logger.error(`host ${agent.name}: INTERNAL ERROR (unhandled rejection, please report): ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`);
      });
      // One machine-readable line for scripts and tests.
      process.stdout.write(`ferry host ${agent.name} ready url=${agent.url} migration-port=${agent.migrationPort} copy-port=${agent.copyPort}\n`);
      await new Promise<void>((resolve) => {
        const stop = (signal: string): void => {
          agent.logger.info(`host ${agent.name}: ${signal}: shutting down`);
          void agent.close().then((report) => {
            for (const line of report) agent.logger.info(`host ${agent.name}: ${line}`);
            resolve();
          });
        };
        process.once('SIGTERM', () => { stop('SIGTERM'); });
        process.once('SIGINT', () => { stop('SIGINT'); });
      });
    });

  withClientOptions(vm.command('create')
    .description('define a VM on a host (and start it with --start)')
    .argument('<name>', 'VM name')
    .requiredOption('--image <file>', 'guest image (.wasm)')
    .addOption(new Option('--memory <size>', 'guest RAM').argParser(sizeOption('--memory')).default(parseSizeBytes('256MiB'), '256MiB'))
    .addOption(new Option('--vcpus <n>', 'vCPUs').argParser((v) => parseIntegerOption(v, '--vcpus', MIN_VCPUS, MAX_VCPUS)).default(1))
    .addOption(new Option('--trace-granularity <size>', 'write-trace region size').argParser(sizeOption('--trace-granularity')).default(DEFAULT_GRANULARITY_BYTES, '4KiB'))
    .option('--cmdline <text>', 'guest command line', '')
    .addOption(new Option('--disk <ds:path[,size=N]>', 'a VMDK on one of the host\'s datastores; with size=, a new disk of that size').argParser(parseDiskOption))
    .option('--start', 'start it right away', false)
    .option('--on <host>', 'through a center: on this host (default: the center places it)')
    .option('--json', 'print as JSON', false))
    .action(async (name: string, o: ClientOpts & { image: string; memory: number; vcpus: number; traceGranularity: number; cmdline: string; start: boolean; disk?: DiskOption; on?: string; json: boolean }) => {
      const center = await centerOf(o);
      if (center !== null) {
        // A bare name (no path, no .wasm) is an image built with Ferry; anything else is a file sent along.
        const builtin = BUILTIN_IMAGE_PATTERN.test(o.image);
        let imageBase64: string | undefined;
        if (!builtin) {
          try { imageBase64 = (await readFile(o.image)).toString('base64'); } catch (err) { throw new FerryError('INVALID_ARGUMENT', `cannot read guest image ${o.image}: ${errorMessage(err)}`); }
        }
        await runTask(center.createVm({
          name, memoryBytes: o.memory, vcpus: o.vcpus, granularityBytes: o.traceGranularity, cmdline: o.cmdline, start: o.start,
          ...(builtin ? { image: o.image } : { imageBase64: imageBase64 ?? '' }), ...(o.on !== undefined ? { host: o.on } : {}), ...(o.disk !== undefined ? { disk: o.disk } : {}),
        }), center, o.json);
        return;
      }
      let image: Buffer;
      try { image = await readFile(o.image); } catch (err) { throw new FerryError('INVALID_ARGUMENT', `cannot read guest image ${o.image}: ${errorMessage(err)}`); }
      print(await (await client(o)).createVm({
        name, imageBase64: image.toString('base64'), memoryBytes: o.memory, vcpus: o.vcpus,
        granularityBytes: o.traceGranularity, cmdline: o.cmdline, start: o.start, ...(o.disk !== undefined ? { disk: o.disk } : {}),
      }));
    });

  const verbs: readonly [string, string, (c: HostClient, name: string) => Promise<unknown>][] = [
    ['start', 'start (boot) a defined VM', (c, n) => c.startVm(n)],
    ['stop', 'power a VM off', (c, n) => c.stopVm(n)],
    ['pause', 'pause every vCPU', (c, n) => c.pauseVm(n)],
    ['resume', 'resume a paused VM', (c, n) => c.resumeVm(n)],
    ['verify', 'pause briefly, run the guest self-check and digest its memory, resume', (c, n) => c.verifyVm(n)],
    ['delete', 'remove a stopped VM and its definition', (c, n) => c.deleteVm(n)],
    ['status', 'show a VM\'s state, vCPU statistics and last migration', (c, n) => c.vm(n)],
  ];
  // Through a center these are tasks (followed to their end); status is the center's view of the VM.
  const centerVerbs: Readonly<Record<string, (c: CenterClient, name: string) => Promise<CenterTaskView>>> = {
    start: (c, n) => c.startVm(n), stop: (c, n) => c.stopVm(n), delete: (c, n) => c.deleteVm(n),
  };
  for (const [verb, description, call] of verbs) {
    withClientOptions(vm.command(verb).description(description).argument('<name>', 'VM name').option('--json', 'through a center: print the task as JSON', false))
      .action(async (name: string, o: ClientOpts & { json: boolean }) => {
        const center = await centerOf(o);
        const viaCenter = centerVerbs[verb];
        if (center !== null && viaCenter !== undefined) { await runTask(viaCenter(center, name), center, o.json); return; }
        if (center !== null && verb === 'status') { print(await center.vm(name)); return; }
        print(await call(await client(o), name));
      });
  }

  withClientOptions(vm.command('list').description('list the VMs of a host, or of every host a center knows').option('--json', 'print as JSON', false))
    .action(async (o: ClientOpts & { json: boolean }) => {
      const center = await centerOf(o);
      if (center !== null) {
        const vms = await allPages(async (after: string | undefined) => {
          const page = await center.listVms({ limit: CLI_PAGE, ...(after !== undefined ? { after } : {}) });
          return { items: page.vms, next: page.next };
        });
        if (o.json) { print(vms); return; }
        for (const v of vms) {
          const memory = (v.config as { memoryBytes?: number } | null)?.memoryBytes;
          process.stdout.write(`${v.name}\t${v.state}\t${v.host ?? '(no host)'}\t${memory !== undefined ? formatBytes(memory) : ''}\n`);
        }
        return;
      }
      const vms = await (await client(o)).listVms();
      if (o.json) { print(vms); return; }
      for (const v of vms) process.stdout.write(`${v.name}\t${v.state}\t${v.config.vcpus} vCPU\t${formatBytes(v.config.memoryBytes)}${v.owner !== null ? `\t(${v.owner})` : ''}\n`);
    });

  withClientOptions(vm.command('console').description(`print a VM's console (the last ${formatBytes(CONSOLE_LOG_BYTES)}); --follow streams it`)
    .argument('<name>', 'VM name').option('--follow', 'keep streaming until Ctrl-C', false))
    .action(async (name: string, o: ClientOpts & { follow: boolean }) => {
      const ac = new AbortController();
      process.once('SIGINT', () => { ac.abort(); });
      const center = await centerOf(o);
      const text = center !== null ? await center.console(name, { follow: o.follow, signal: ac.signal }) : await (await client(o)).console(name, { follow: o.follow, signal: ac.signal });
      try {
        for await (const chunk of text) process.stdout.write(chunk);
      } catch (err) {
        if (!ac.signal.aborted) throw err;
      }
    });

  withClientOptions(vm.command('migrate')
    .description('live-migrate a VM to another host, with a progress bar; Ctrl-C cancels (the VM keeps running here)')
    .argument('<name>', 'VM name')
    .option('--to <url|host>', 'target host URL (through a center: a host name, or leave it out and the center picks one)')
    .option('--cancel <migrationId>', 'cancel a running migration instead')
    .option('--target-token-file <file>', 'token of the target host, if it differs')
    .addOption(new Option('--downtime <duration>', 'downtime target for the switch-over').argParser(durationOption('--downtime')))
    .addOption(new Option('--channels <n>', 'parallel data connections').argParser((v) => parseIntegerOption(v, '--channels', MIN_DATA_CHANNELS, MAX_DATA_CHANNELS)))
    .addOption(new Option('--bandwidth <size>', 'bandwidth cap per second (e.g. 500MiB)').argParser(sizeOption('--bandwidth')))
    .option('--compress', 'deflate page data (helps on slow links, costs CPU)', false)
    .addOption(new Option('--max-rounds <n>', 'give up converging after this many rounds').argParser((v) => parseIntegerOption(v, '--max-rounds', 1, 10_000)))
    .addOption(new Option('--on-limit <what>', 'at the limit: force the switch-over or abort').choices(['force', 'abort']))
    .option('--no-auto-converge', 'never throttle the guest to converge')
    .addOption(new Option('--trace-install <strategy>', 'how write traces are installed: single (a helper re-arms, vCPUs keep running) or stop-all').choices(['single', 'stop-all']))
    .addOption(new Option('--trace-granularity <size>', 'write-trace region size for this migration (4KiB .. 2MiB)').argParser(sizeOption('--trace-granularity')))
    .option('--trace-adaptive', 'start with coarse write traces (2 MiB unless --trace-granularity) and refine where little changed', false)
    .option('--disk-datastore <name>', "copy the VM's disk live to this datastore of the target (needed when the target does not mount the disk's datastore)")
    .option('--disk-path <path>', 'path of the copied disk on that datastore (default: the same path as here)')
    .option('--no-isolation', 'through a center: connect the two hosts directly instead of over the migration\'s own virtual path (the task says so)')
    .option('--to-site <site>', 'through a center: to a host of this site (with --to, it must be in it); the disk goes to the datastore ferry vm prepare-migration seeded there (else the target\'s roomiest), the seeded bases skipped')
    .option('--json', 'print the final record as JSON', false))
    .action(async (name: string, o: ClientOpts & { toSite?: string;
      to?: string; cancel?: string; targetTokenFile?: string; downtime?: number; channels?: number; bandwidth?: number;
      compress: boolean; maxRounds?: number; onLimit?: 'force' | 'abort'; autoConverge: boolean; json: boolean;
      traceInstall?: 'single' | 'stop-all'; traceGranularity?: number; traceAdaptive: boolean; diskDatastore?: string; diskPath?: string; isolation: boolean;
    }) => {
      const options: MigrationOptions = {
        ...(o.downtime !== undefined ? { downtimeTargetMs: o.downtime } : {}),
        ...(o.channels !== undefined ? { dataChannels: o.channels } : {}),
        ...(o.bandwidth !== undefined ? { bandwidthBytesPerSec: o.bandwidth } : {}),
        ...(o.compress ? { compression: 'deflate' } : {}),
        ...(o.maxRounds !== undefined ? { maxRounds: o.maxRounds } : {}),
        ...(o.onLimit !== undefined ? { onLimit: o.onLimit } : {}),
        ...(o.autoConverge ? {} : { autoConverge: false }),
        ...(o.traceInstall !== undefined ? { traceInstall: o.traceInstall } : {}),
        ...(o.traceGranularity !== undefined ? { traceGranularityBytes: o.traceGranularity } : {}),
        ...(o.traceAdaptive ? { traceAdaptive: true } : {}),
      };
      if (o.diskPath !== undefined && o.diskDatastore === undefined) throw new FerryError('INVALID_ARGUMENT', '--disk-path needs --disk-datastore');
      const disk = o.diskDatastore !== undefined ? { datastore: o.diskDatastore, ...(o.diskPath !== undefined ? { path: o.diskPath } : {}) } : undefined;
      const center = await centerOf(o);
      if (center !== null) {
        if (o.cancel !== undefined) throw new FerryError('INVALID_ARGUMENT', 'through a center, cancel the migration\'s task: ferry task cancel <id>');
        if (o.targetTokenFile !== undefined) throw new FerryError('INVALID_ARGUMENT', '--target-token-file is for host-to-host migrations; a center reaches every host itself');
        await runTask(center.migrateVm(name, {
          options, ...(o.to !== undefined ? { to: o.to } : {}), ...(o.toSite !== undefined ? { toSite: o.toSite } : {}), ...(disk !== undefined ? { disk } : {}), ...(o.isolation ? {} : { isolation: false }),
        }), center, o.json);
        return;
      }
      if (o.toSite !== undefined) throw new FerryError('INVALID_ARGUMENT', '--to-site is for migrations through a center (pass --center, or none with a client config)');
      if (!o.isolation) throw new FerryError('INVALID_ARGUMENT', '--no-isolation is for migrations through a center; host to host, a migration always connects directly');
      const c = await client(o);
      if (o.cancel !== undefined) { print(await c.cancelMigration(o.cancel)); return; }
      if (o.to === undefined) throw new FerryError('INVALID_ARGUMENT', 'ferry vm migrate needs --to <target host URL> (or --cancel <id>)');
      const token = o.targetTokenFile !== undefined ? await loadToken(o.targetTokenFile) : undefined;
      const started = await c.migrate(name, { to: o.to, options, ...(token !== undefined ? { token } : {}), ...(disk !== undefined ? { disk } : {}) });
      const record = await followMigration(c, started.migrationId, o.json);
      if (o.json) print(record);
      else process.stderr.write(`${summarize(record)}\n`);
      if (record.outcome !== 'succeeded') process.exitCode = record.outcome === 'in-doubt' ? 4 : 1;
    });
  withCenterOptions(vm.command('prepare-migration')
    .description('ahead of a cross-site migration: snapshot the running VM\'s disk (its top becomes a read-only base, a new delta takes the writes) and copy the bases to a datastore of another site in the background, recorded there as seeds (a center task)')
    .argument('<name>', 'VM name')
    .requiredOption('--to-site <site>', 'the site the VM will migrate to (ferry site list)')
    .option('--datastore <datastore>', 'a datastore of that site, by name or id (default: the one with the most space left)')
    .option('--wait', 'follow the task to its end with a progress bar (Ctrl-C stops following; the task goes on)', false)
    .option('--json', 'print the task as JSON', false))
    .action(async (name: string, o: CenterClientOpts & { toSite: string; datastore?: string; wait: boolean; json: boolean }) => {
      const center = await centerClient(o);
      const started = await center.prepareMigration(name, { toSite: o.toSite, ...(o.datastore !== undefined ? { datastore: o.datastore } : {}) });
      if (!o.wait) { if (o.json) print(started); else process.stdout.write(`${started.id}\n`); return; }
      const done = await followTask(center, started, { quiet: o.json, detachOnSigint: true });
      if (o.json) { print(done); } else {
        process.stderr.write(`${describeTask(done)}\n`);
        if (done.state === 'succeeded') process.stdout.write(preparedLines(done.result));
      }
      process.exitCode = taskExitCode(done);
    });
  withClientOptions(host.command('paths').description('a host\'s virtual-path drivers and the paths open on it now (no secrets, no peer underlay addresses)').option('--json', 'print as JSON', false))
    .action(async (o: ClientOpts & { json: boolean }) => {
      if (o.center !== undefined) throw new FerryError('INVALID_ARGUMENT', 'ferry host paths asks one host: give --host <url>');
      const c = await client(o);
      const listed = await c.listPaths();
      if (o.json) { print(listed); return; }
      for (const d of listed.drivers) process.stdout.write(`driver ${d.kind}\ttunnel endpoint ${d.endpoint.host}:${d.endpoint.port}\n`);
      if (listed.drivers.length === 0) process.stdout.write('no path drivers (--path-drivers none)\n');
      for (const p of listed.paths) {
        const left = Math.max(0, Math.round((p.expiresAtMs - Date.now()) / 1000));
        process.stdout.write(`path ${p.pathId.slice(0, 8)}\t${p.side}\t${p.driver}\t${p.localAddress} <-> ${p.peerAddress}\tports ${p.firstPort}-${p.firstPort + p.portCount - 1}\t${p.openStreams} streams\texpires in ${left} s\n`);
      }
    });
  return host;
}

/** Follows a migration with a progress bar; Ctrl-C cancels it. Returns the final record. */
async function followMigration(c: HostClient, id: string, quiet: boolean): Promise<MigrationRecord> {
  const tty = process.stderr.isTTY && !quiet;
  const bar = tty ? new cliProgress.SingleBar({
    format: 'migrate [{bar}] {percentage}% round {round} | {sent} sent | {rate}/s | dirty {dirty} | throttle {throttle}% | eta {eta_s}s',
    stream: process.stderr, hideCursor: true,
  }, cliProgress.Presets.shades_classic) : null;
  bar?.start(1, 0, { round: 0, sent: '0 B', rate: '0', dirty: '0 B', throttle: 0, eta_s: '?' });
  const onSigint = (): void => {
    process.stderr.write('\ncancelling the migration (the VM keeps running on its host)...\n');
    void c.cancelMigration(id).catch(() => undefined);
  };
  const onProgress = (p: MigrationProgress): void => {
    bar?.setTotal(Math.max(1, p.roundTotalBytes));
    bar?.update(p.roundSentBytes, {
      round: p.round, sent: formatBytes(p.sentBytes) + (p.diskSentBytes > 0 ? ` + disk ${formatBytes(p.diskSentBytes)}` : ''), rate: formatBytes(p.throughputBytesPerSec), dirty: formatBytes(p.dirtyBytes),
      throttle: (p.throttlePermille / 10).toFixed(1), eta_s: p.etaMs === null ? '?' : (p.etaMs / 1000).toFixed(1),
    });
  };
  process.on('SIGINT', onSigint);
  try {
    return await c.waitForMigration(id, { onProgress });
  } finally {
    bar?.stop();
    process.off('SIGINT', onSigint);
  }
}

export function summarize(r: MigrationRecord): string {
  const ms = (v: number | null): string => (v === null ? 'n/a' : `${v.toFixed(1)} ms`);
  const head = `migration ${r.migrationId.slice(0, 8)} of ${r.vm} to ${r.to}: ${r.outcome.toUpperCase()}`;
  const body = `${(r.totalMs / 1000).toFixed(2)} s, ${r.rounds.length} rounds, ${formatBytes(r.transferredBytes)} sent, `
    + `downtime engine ${ms(r.engineDowntimeMs)} / guest ${ms(r.guestDowntimeMs)}, pause ${ms(r.pauseLatencyMs)}, `
    + `max throttle ${(r.maxThrottlePermille / 10).toFixed(1)}%${r.forcedSwitchover ? ' (forced switch-over)' : ''}`;
  const t = r.traces;
  const refined = t.splitRegions > 0 ? `, ${t.splitRegions} region(s) split to 4 KiB pages` : '';
  const traces = `  traces: ${t.install}, ${t.adaptive ? 'adaptive ' : ''}${formatBytes(t.granularityBytes)} regions${refined}, ${t.installations} installations, stall max ${t.stallMaxMs.toFixed(2)} ms / total ${t.stallTotalMs.toFixed(1)} ms, scan ${t.scanMsTotal.toFixed(1)} ms, barrier ${t.barrierMsTotal.toFixed(1)} ms, ${t.unchangedPagesSkipped} unchanged pages not re-sent`;
  const s = r.switchoverMs;
  const switchover = s === null ? [] : [`  switch-over: pause ${ms(s.pauseMs)}, last round ${ms(s.finalRoundMs)}, state ${ms(s.stateMs)}, commit (digest check, durable record, resume) ${ms(s.commitMs)}`];
  const d = r.disk;
  const disk = d === null ? [] : [d.mode === 'shared'
    ? `  disk: shared datastore, lease handed over (flush + release ${ms(d.releaseMs)}), no disk data moved`
    : `  disk: copied, ${formatBytes(d.sentBytes)} of a ${formatBytes(d.capacityBytes)} disk sent, digest ${d.digest ?? 'n/a'}`];
  const rounds = r.rounds.map((x) => `  round ${x.round}: ${formatBytes(x.bytes)}${x.diskBytes > 0 ? ` + disk ${formatBytes(x.diskBytes)}` : ''} in ${x.durationMs.toFixed(1)} ms (${compact(x.throughputBytesPerSec)}B/s), dirty after ${formatBytes(x.dirtyBytesAfter)}, throttle ${(x.throttlePermille / 10).toFixed(1)}%`);
  return [head, `  ${body}`, traces, ...disk, ...switchover, ...rounds, ...(r.error !== null ? [`  error [${r.error.code}]: ${r.error.message}`] : [])].join('\n');
}
