#!/usr/bin/env node
/**
 * The `ferry` command. Exit codes: 0 ok, 1 operating error (printed with its stable code),
 * 2 usage error, 3 the guest crashed.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { basename } from 'node:path';
import { FerryError, errorMessage } from '../lib/errors.js';
import { MiB, formatBytes, parseSizeBytes } from '../lib/units.js';
import { DEFAULT_GRANULARITY_BYTES } from '../vmm/layout.js';
import { openSnapshot } from '../vmm/snapshot.js';
import { restoreVm } from '../vmm/persist.js';
import { DEFAULT_HANG_TIMEOUT_MS } from '../vmm/config.js';
import { Vm } from '../vmm/vm.js';
import { MAX_VCPUS, MAX_VM_NAME_CHARS, MIN_VCPUS, VM_NAME_CHAR_CLASS, WASM_PAGE_BYTES } from '../lib/limits.js';
import { durationOption, parseIntegerOption, sizeOption } from './args.js';
import { runSession } from './run-vm.js';
import { openRawDisk, type OpenedDisk } from './disk.js';
import { addHostCommands } from './host-commands.js';
import { addCenterCommands } from './center-commands.js';
import { addDiskCommands } from './disk-commands.js';
import { addSnapshotCommands } from './snapshot-commands.js';
import { runDemo } from './demo.js';
import { DEFAULT_UP_HOSTS, MAX_UP_HOSTS, MAX_UP_SITES, MIN_UP_HOSTS, runUp } from './up.js';

const DEFAULT_MEMORY = '256MiB';
/** The demo: the multi-vCPU dirtier on a random 64 MiB working set. */
const DEMO_CMDLINE = 'hot=64MiB pattern=random';

interface RunOptions {
  vcpus: number;
  memory: number;
  traceGranularity: number;
  cmdline: string;
  name?: string;
  for?: number;
  save?: string;
  hangTimeout: number;
  status: boolean;
  quiet: boolean;
  disk?: string;
  diskSize?: number;
}

async function readImage(path: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(path));
  } catch (err) {
    throw new FerryError('INVALID_ARGUMENT', `cannot read guest image ${path}: ${errorMessage(err)}`);
  }
}

/** A VM name from an image file name: "guests/dirtier.wasm" -> "dirtier". */
function nameFromPath(path: string): string {
  const base = basename(path).replace(/\.wasm$/i, '').replace(new RegExp(`[^${VM_NAME_CHAR_CLASS}]`, 'g'), '-').slice(0, MAX_VM_NAME_CHARS);
  return base === '' ? 'vm' : base;
}

function sessionOptions(o: { for?: number; save?: string; status: boolean; quiet: boolean }, trackDirty: boolean): Parameters<typeof runSession>[1] {
  return {
    status: o.status, quiet: o.quiet, trackDirty,
    ...(o.for !== undefined ? { forMs: o.for } : {}),
    ...(o.save !== undefined ? { savePath: o.save } : {}),
  };
}

function finish(result: { exitCode: number; summary: string }): void {
  process.stderr.write(`ferry: ${result.summary}\n`);
  process.exitCode = result.exitCode;
}

function addRunOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--for <duration>', 'run for this long, then pause, summarise and exit (e.g. 5s, 500ms)').argParser(durationOption('--for')))
    .option('--save <snapshot>', 'on exit, save the paused VM to this snapshot file (continue it with `ferry vm restore`)')
    .addOption(new Option('--hang-timeout <duration>', 'a vCPU step running longer than this marks the VM crashed (hung)').argParser(durationOption('--hang-timeout')).default(DEFAULT_HANG_TIMEOUT_MS, '2s'))
    .option('--status', 'show a live status line on stderr (steps/s, units/s, dirty regions/s)', false)
    .option('--quiet', 'do not print the guest console', false)
    .option('--disk <file>', 'a raw disk image (a local file) as the guest\'s block device; its size is the file\'s')
    .addOption(new Option('--disk-size <size>', 'with --disk: create the file with this size if it does not exist').argParser(sizeOption('--disk-size')));
}

/** Runs `session` with the --disk of `o` attached (if any), closing the disk after the VM stopped. */
async function withDisk<T>(o: { disk?: string; diskSize?: number }, session: (disk: OpenedDisk | null) => Promise<T>): Promise<T> {
  if (o.disk === undefined) {
    if (o.diskSize !== undefined) throw new FerryError('INVALID_ARGUMENT', '--disk-size needs --disk <file>');
    return session(null);
  }
  const disk = await openRawDisk(o.disk, o.diskSize);
  try {
    return await session(disk);
  } finally {
    await disk.close();
  }
}

/** `ferry up --hosts`: out of range is a usage error (exit 2), said the way commander says its own. */
function hostsOption(text: string): number {
  try {
    return parseIntegerOption(text, '--hosts', MIN_UP_HOSTS, MAX_UP_HOSTS);
  } catch (err) {
    throw new InvalidArgumentError(errorMessage(err));
  }
}

function sitesOption(text: string): number {
  try {
    return parseIntegerOption(text, '--sites', 1, MAX_UP_SITES);
  } catch (err) {
    throw new InvalidArgumentError(errorMessage(err));
  }
}

export function buildProgram(): Command {
  const program = new Command('ferry')
    .description('Ferry: a VM host and VM mobility platform (WebAssembly guests, multi-vCPU, write traces)')
    .showHelpAfterError()
    // Subcommands with options of their own under commands with options (`ferry host list --center`).
    .enablePositionalOptions()
    .exitOverride();

  const vm = program.command('vm').description('run, save and restore VMs on this machine');

  addRunOptions(vm.command('run')
    .description('run a guest image as a VM, streaming its console; Ctrl-C pauses, summarises and exits')
    .argument('<image>', 'guest image (.wasm) built against the Ferry guest ABI (docs/guest-abi.md)')
    .addOption(new Option('--vcpus <n>', `number of vCPUs (${MIN_VCPUS}-${MAX_VCPUS})`).argParser((v) => parseIntegerOption(v, '--vcpus', MIN_VCPUS, MAX_VCPUS)).default(1))
    .addOption(new Option('--memory <size>', 'guest RAM, fixed for the VM\'s life (e.g. 256MiB, 1GiB)').argParser(sizeOption('--memory')).default(parseSizeBytes(DEFAULT_MEMORY), DEFAULT_MEMORY))
    .addOption(new Option('--trace-granularity <size>', 'write-trace region size: 4KiB .. 2MiB, a power of two').argParser(sizeOption('--trace-granularity')).default(DEFAULT_GRANULARITY_BYTES, '4KiB'))
    .option('--cmdline <text>', 'the guest\'s command line (e.g. "hot=64MiB pattern=random")', '')
    .option('--name <name>', 'VM name'))
    .action(async (imagePath: string, o: RunOptions) => {
      const image = await readImage(imagePath);
      finish(await withDisk(o, (disk) => {
        const vmInstance = Vm.create(image, {
          memoryBytes: o.memory, vcpus: o.vcpus, granularityBytes: o.traceGranularity, cmdline: o.cmdline,
          hangTimeoutMs: o.hangTimeout, name: o.name ?? nameFromPath(imagePath), ...(disk !== null ? { disk: disk.backend } : {}),
        });
        return runSession(vmInstance, sessionOptions(o, o.status));
      }));
    });

  addRunOptions(vm.command('restore')
    .description('continue a VM saved with --save, exactly where it paused')
    .argument('<snapshot>', 'snapshot file')
    .addOption(new Option('--trace-granularity <size>', 'instrument with another write-trace granularity').argParser(sizeOption('--trace-granularity'))))
    .action(async (path: string, o: RunOptions & { traceGranularity?: number }) => {
      finish(await withDisk(o, async (disk) => {
        const vmInstance = await restoreVm(path, {
          hangTimeoutMs: o.hangTimeout, ...(o.traceGranularity !== undefined ? { granularityBytes: o.traceGranularity } : {}),
          ...(disk !== null ? { disk: disk.backend } : {}),
        });
        return runSession(vmInstance, sessionOptions(o, o.status));
      }));
    });

  vm.command('inspect')
    .description('print what a snapshot holds (validates every checksum of its header, metadata and image)')
    .argument('<snapshot>', 'snapshot file')
    .option('--json', 'print the metadata as JSON', false)
    .action(async (path: string, o: { json: boolean }) => {
      const snap = await openSnapshot(path);
      try {
        const m = snap.meta;
        if (o.json) {
          process.stdout.write(`${JSON.stringify(m, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
          return;
        }
        process.stdout.write([
          `snapshot ${path}`,
          `  vm        ${m.vm.name}: ${m.vm.vcpus} vCPU(s), ${formatBytes(m.vm.ramBytes)} RAM (${formatBytes(m.claimedPages * WASM_PAGE_BYTES)} claimed), traces ${formatBytes(m.vm.granularityBytes)}`,
          `  image     sha256 ${m.imageSha256} (${formatBytes(snap.image.byteLength)})`,
          `  cmdline   ${m.vm.cmdline === '' ? '(empty)' : m.vm.cmdline}`,
          `  clock     ${(Number(m.clockNs) / 1e9).toFixed(3)} s of guest time`,
          `  vCPUs     ${m.vcpuStates.map((s, i) => `${i}:${s.halted ? 'halted' : 'runnable'}`).join(' ')} (${m.vcpuStates[0]?.globals.length ?? 0} globals each)`,
          `  created   ${m.createdAt}`,
        ].join('\n') + '\n');
      } finally {
        await snap.close();
      }
    });

  addCenterCommands(program, addHostCommands(program, vm));
  addSnapshotCommands(vm, addDiskCommands(program));

  program.command('demo')
    .description('two local host agents and a demo VM (the multi-vCPU dirtier) live-migrated back and forth until Ctrl-C')
    .addOption(new Option('--vcpus <n>', 'vCPUs of the demo VM').argParser((v) => parseIntegerOption(v, '--vcpus', MIN_VCPUS, MAX_VCPUS)).default(2))
    .addOption(new Option('--memory <size>', 'RAM of the demo VM').argParser(sizeOption('--memory')).default(256 * MiB, '256MiB'))
    .option('--cmdline <text>', 'the dirtier\'s command line', DEMO_CMDLINE)
    .addOption(new Option('--migrations <n>', 'stop after this many migrations').argParser((v) => parseIntegerOption(v, '--migrations', 1, 1_000_000)))
    .action(async (o: { vcpus: number; memory: number; cmdline: string; migrations?: number }) => {
      process.exitCode = await runDemo({ vcpus: o.vcpus, memoryBytes: o.memory, cmdline: o.cmdline, ...(o.migrations !== undefined ? { migrations: o.migrations } : {}) });
    });

  program.command('up')
    .description('a center, hosts sharing one datastore (or --sites: several sites, each with its own) and a demo VM on loopback (what npm start runs); writes the client config; Ctrl-C stops all')
    .addOption(new Option('--hosts <n>', `number of hosts (${MIN_UP_HOSTS}-${MAX_UP_HOSTS}; default ${DEFAULT_UP_HOSTS}, or one per site with --sites)`).argParser(hostsOption))
    .addOption(new Option('--sites <n>', `number of sites (1-${MAX_UP_SITES}): with 2 or more, site-a, site-b, … each with its own datastore, the hosts spread round-robin, the demo VM with a disk on site-a (to show prepare-migration and migrate --to-site)`).argParser(sitesOption))
    .option('--data-dir <dir>', 'keep the fleet here (a later ferry up --data-dir resumes it); default: a temporary directory removed at exit')
    .option('--listen <host:port>', 'the center\'s address (default 127.0.0.1:7100, or any free port if it is taken)')
    .option('--no-demo', 'create no demo VM')
    .action(async (o: { hosts?: number; sites?: number; dataDir?: string; listen?: string; demo: boolean }) => {
      process.exitCode = await runUp({
        demo: o.demo, ...(o.hosts !== undefined ? { hosts: o.hosts } : {}), ...(o.sites !== undefined ? { sites: o.sites } : {}),
        ...(o.dataDir !== undefined ? { dataDir: o.dataDir } : {}), ...(o.listen !== undefined ? { listen: o.listen } : {}),
      });
    });

  return program;
}

export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are "errors" to commander; usage mistakes exit 2.
      return err.exitCode === 0 ? 0 : 2;
    }
    if (err instanceof FerryError) {
      process.stderr.write(`ferry: error [${err.code}]: ${err.message}\n`);
      return 1;
    }
    process.stderr.write(`ferry: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 1;
  }
}

// Run when executed (not when imported by tests).
if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === (await import('node:fs')).realpathSync(process.argv[1])) {
  process.exitCode = await main(process.argv.slice(2));
}
