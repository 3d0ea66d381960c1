/**
 * `ferry disk`: create, info, export, import and check of VMDK files on this machine, for operators
 * and scripts (no host agent involved). Parents are opened read-only through the `openParent`
 * callback the VMDK code expects, with the hint resolved relative to the child's directory — the
 * local CLI works on the paths its user gives it, so confining hints is a datastore's concern, not
 * this one's. Every file opened is closed on every path; an output is never left half written.
 */
import { Option, type Command } from 'commander';
import cliProgress from 'cli-progress';
import { lstat, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { FerryError, errnoCode, errorMessage } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { LocalFile } from '../storage/local-file.js';
import { VmdkDisk } from '../storage/vmdk/disk.js';
import { openLocalDisk, openLocalParent } from '../storage/vmdk/local-disk.js';
import { SECTOR_BYTES, VMDK_MAGIC } from '../storage/vmdk/header.js';
import { CID_NO_PARENT, formatCid } from '../storage/vmdk/descriptor.js';
import { copyIntoDisk, type ImportProgress } from '../storage/vmdk/import.js';
import { sizeOption } from './args.js';

/** Export reads and writes this much at a time: large enough for sequential I/O, small next to RAM. */
const EXPORT_CHUNK_BYTES = 1024 * 1024;

async function withDisk<T>(path: string, fn: (disk: VmdkDisk) => Promise<T>): Promise<T> {
  const disk = await openLocalDisk(path, true);
  try {
    return await fn(disk);
  } finally {
    await disk.close();
  }
}

async function refuseExisting(path: string): Promise<void> {
  const exists = await lstat(path).then(() => true, (err: unknown) => {
    if (errnoCode(err) === 'ENOENT') return false;
    throw new FerryError('STORE_IO', `cannot stat ${path}: ${errorMessage(err)}`);
  });
  if (exists) throw new FerryError('ALREADY_EXISTS', `${path} already exists`);
}

/**
 * A name next to `path` to write the output under until it is complete: same directory, so the
 * final rename stays on one file system and is atomic.
 */
function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.ferry-${process.pid}.tmp`);
}

async function publish(tempPath: string, path: string): Promise<void> {
  // The check at the start left a window; checking again right before the rename makes it small.
  await refuseExisting(path);
  await rename(tempPath, path).catch((err: unknown) => { throw new FerryError('STORE_IO', `cannot rename ${tempPath} to ${path}: ${errorMessage(err)}`); });
}

/** A progress bar on stderr when it is a terminal; nothing otherwise (scripts read stdout). */
function progress(label: string, totalBytes: number): { update: ImportProgress; stop: () => void } {
  if (process.stderr.isTTY !== true) return { update: () => undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar({
    format: `${label} [{bar}] {percentage}% | {done} of {total_size} | eta {eta}s`,
    stream: process.stderr, hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  bar.start(Math.max(1, totalBytes), 0, { done: '0 B', total_size: formatBytes(totalBytes) });
  return {
    update: (doneBytes) => { bar.update(doneBytes, { done: formatBytes(doneBytes) }); },
    stop: () => { bar.stop(); },
  };
}

interface ChainEntry { file: string; createType: string; cid: string; parentCid: string; parentFileNameHint?: string; allocatedBytes: number }

interface DiskReport {
  file: string; format: 'vmdk'; createType: string; virtualSizeBytes: number; grainSizeBytes: number;
  /** This file's own grains (a delta's parents hold the rest). */
  allocatedBytes: number; cid: string; parentCid: string; parentFileNameHint?: string;
  /** This disk first, its base last. */
  chain: ChainEntry[];
}

async function describe(disk: VmdkDisk): Promise<DiskReport> {
  const chain: ChainEntry[] = [];
  for (let d: VmdkDisk | undefined = disk; d !== undefined; d = d.parent) {
    const i = d.info();
    chain.push({
      file: i.name, createType: i.createType, cid: i.cid, parentCid: i.parentCid,
      ...(i.parentFileNameHint !== undefined ? { parentFileNameHint: i.parentFileNameHint } : {}),
      allocatedBytes: await d.allocatedBytes(),
    });
  }
  const top = disk.info();
  return {
    file: top.name, format: 'vmdk', createType: top.createType, virtualSizeBytes: top.capacityBytes, grainSizeBytes: top.grainSizeBytes,
    allocatedBytes: chain[0]?.allocatedBytes ?? 0, cid: top.cid, parentCid: top.parentCid,
    ...(top.parentFileNameHint !== undefined ? { parentFileNameHint: top.parentFileNameHint } : {}),
    chain,
  };
}

async function createDisk(path: string, o: { size?: number; parent?: string }): Promise<VmdkDisk> {
  if (o.parent === undefined) {
    if (o.size === undefined) throw new FerryError('INVALID_ARGUMENT', '--size is required (e.g. --size 10GiB) unless --parent is given');
    const file = await LocalFile.open(path, { create: true });
    return VmdkDisk.create(file, { capacityBytes: o.size }).catch(async (err: unknown) => { await file.close(); await rm(path, { force: true }); throw err; });
  }
  const parent = await openLocalDisk(o.parent, true);
  let file: LocalFile | undefined;
  try {
    if (o.size !== undefined && o.size !== parent.capacityBytes) {
      throw new FerryError('INVALID_ARGUMENT', `--size ${o.size} differs from the parent's virtual size (${parent.capacityBytes} bytes); a delta has its parent's size (omit --size)`);
    }
    file = await LocalFile.open(path, { create: true });
    // The hint is what a reader resolves against the child's directory (docs/disk-format.md).
    const hint = relative(dirname(resolve(path)), resolve(o.parent));
    return await VmdkDisk.createDelta(parent, file, hint);
  } catch (err) {
    await parent.close();
    if (file !== undefined) { await file.close(); await rm(path, { force: true }); }
    throw err;
  }
}

async function exportDisk(path: string, outPath: string): Promise<number> {
  await refuseExisting(outPath);
  const tempPath = tempPathFor(outPath);
  return withDisk(path, async (disk) => {
    let out: FileHandle | undefined;
    const bar = progress('export', disk.capacityBytes);
    try {
      out = await open(tempPath, 'wx');
      const chunk = new Uint8Array(EXPORT_CHUNK_BYTES);
      for (let at = 0; at < disk.capacityBytes; at += chunk.length) {
        const part = chunk.subarray(0, Math.min(chunk.length, disk.capacityBytes - at));
        await disk.read(at, part);
        // Zeros are left as holes (the truncate below sets the length): a 10 GiB empty disk exports in a moment.
        if (part.some((b) => b !== 0)) await out.write(part, 0, part.length, at);
        bar.update(at + part.length, disk.capacityBytes);
      }
      await out.truncate(disk.capacityBytes);
      await out.sync();
      await out.close();
      out = undefined;
      await publish(tempPath, outPath);
      return disk.capacityBytes;
    } catch (err) {
      await out?.close().catch(() => undefined);
      await rm(tempPath, { force: true });
      throw err instanceof FerryError ? err : new FerryError('STORE_IO', `export to ${outPath} failed: ${errorMessage(err)}`);
    } finally {
      bar.stop();
    }
  });
}

/** True if the file starts with the sparse extent magic ("KDMV"): a VMDK, whatever its createType. */
async function isVmdk(file: LocalFile): Promise<boolean> {
  const magic = new Uint8Array(4);
  await file.read(0, magic);
  return new DataView(magic.buffer).getUint32(0, true) === VMDK_MAGIC;
}

/** A raw image as an import source: its size rounded up to a whole sector (the tail reads as zeros, as qemu-img does). */
function rawSource(file: LocalFile, sizeBytes: number): { capacityBytes: number; read: (at: number, buf: Uint8Array) => Promise<void> } {
  return { capacityBytes: Math.ceil(sizeBytes / SECTOR_BYTES) * SECTOR_BYTES, read: (at, buf) => file.read(at, buf) };
}

async function importDisk(inPath: string, outPath: string): Promise<{ kind: string; capacityBytes: number; allocatedBytes: number; sourceBytes: number }> {
  await refuseExisting(outPath);
  const input = await LocalFile.open(inPath, { readOnly: true });
  let source: VmdkDisk | undefined;
  let target: VmdkDisk | undefined;
  const tempPath = tempPathFor(outPath);
  let published = false;
  try {
    let kind = 'raw';
    let sourceBytes = 0;
    let from: { capacityBytes: number; read: (at: number, buf: Uint8Array) => Promise<void> };
    if (await isVmdk(input)) {
      // Any VMDK Ferry opens, chain included: the import is its guest-visible content, flattened.
      source = await VmdkDisk.open(input, { openParent: openLocalParent });
      kind = `vmdk ${source.info().createType}`;
      from = source;
      sourceBytes = source.capacityBytes;
    } else {
      sourceBytes = await input.size();
      if (sourceBytes === 0) throw new FerryError('INVALID_ARGUMENT', `${inPath} is empty: a disk needs a size`);
      from = rawSource(input, sourceBytes);
    }
    // Created under a temporary path but named as the output: the name is what the descriptor's extent line records.
    const out = await LocalFile.open(tempPath, { create: true }, outPath);
    target = await VmdkDisk.create(out, { capacityBytes: from.capacityBytes }).catch(async (err: unknown) => { await out.close(); throw err; });
    const bar = progress('import', from.capacityBytes);
    const result = await copyIntoDisk(from, target, bar.update).finally(bar.stop);
    await target.close();
    await publish(tempPath, outPath);
    published = true;
    return { kind, sourceBytes, ...result };
  } finally {
    if (source !== undefined) await source.close(); else await input.close();
    await target?.close();
    if (!published) await rm(tempPath, { force: true });
  }
}

/** Adds `ferry disk …`; returns the `disk` command (the host-backed `disk chain` joins it, ./snapshot-commands.ts). */
export function addDiskCommands(program: Command): Command {
  const disk = program.command('disk').description('create, inspect, export, import and check VMDK disk files on this machine');

  disk.command('create')
    .description('create a new monolithicSparse disk, or a delta over a parent (never overwrites a file)')
    .argument('<file>', 'the new disk (.vmdk)')
    .addOption(new Option('--size <size>', 'virtual size, a multiple of 512 bytes (e.g. 10GiB); a delta takes its parent\'s').argParser(sizeOption('--size')))
    .option('--parent <base>', 'make a delta of this disk (its path is recorded relative to the new disk\'s directory)')
    .action(async (path: string, o: { size?: number; parent?: string }) => {
      const created = await createDisk(path, o);
      try {
        const i = created.info();
        process.stdout.write(`created ${path}: ${formatBytes(i.capacityBytes)} (${i.capacityBytes} bytes), CID ${i.cid}` +
          `${i.parentFileNameHint !== undefined ? `, delta of ${i.parentFileNameHint} (parent CID ${i.parentCid})` : ''}\n`);
      } finally {
        await created.close();
      }
    });

  disk.command('info')
    .description('format, virtual size, allocated bytes, CID, parent CID and the parent chain of a disk')
    .argument('<file>', 'disk file')
    .option('--json', 'print as JSON', false)
    .action(async (path: string, o: { json: boolean }) => {
      const d = await withDisk(path, describe);
      if (o.json) { process.stdout.write(`${JSON.stringify(d, null, 2)}\n`); return; }
      const none = (cid: string): string => (cid === formatCid(CID_NO_PARENT) ? `${cid} (no parent)` : cid);
      process.stdout.write([
        `disk        ${d.file}`,
        `format      vmdk ${d.createType}`,
        `virtual     ${formatBytes(d.virtualSizeBytes)} (${d.virtualSizeBytes} bytes), grains of ${formatBytes(d.grainSizeBytes)}`,
        `allocated   ${formatBytes(d.allocatedBytes)} (${d.allocatedBytes} bytes, this file's own grains)`,
        `CID         ${d.cid}`,
        `parent CID  ${none(d.parentCid)}`,
        'chain',
        ...d.chain.map((c, n) => `  ${n}  ${c.file}  CID ${c.cid}  parent ${none(c.parentCid)}  ${formatBytes(c.allocatedBytes)} allocated`),
      ].join('\n') + '\n');
    });

  disk.command('export')
    .description('write the guest-visible content of a disk and its whole chain as a raw image')
    .argument('<file>', 'disk file')
    .argument('<out>', 'raw image to write (must not exist)')
    .action(async (path: string, outPath: string) => {
      const bytes = await exportDisk(path, outPath);
      process.stdout.write(`exported ${path} to ${outPath}: ${formatBytes(bytes)} (${bytes} bytes)\n`);
    });

  disk.command('import')
    .description('import a raw image or a VMDK (e.g. streamOptimized from an OVA) into a new sparse disk; zero grains are not allocated')
    .argument('<in>', 'raw image or VMDK')
    .argument('<out>', 'the new disk (.vmdk, must not exist)')
    .action(async (inPath: string, outPath: string) => {
      const r = await importDisk(inPath, outPath);
      const rounded = r.capacityBytes !== r.sourceBytes ? ` (${r.sourceBytes} bytes rounded up to whole sectors, the tail reads as zeros)` : '';
      process.stdout.write(`imported ${inPath} (${r.kind}) to ${outPath}: ${formatBytes(r.capacityBytes)} virtual${rounded}, ${formatBytes(r.allocatedBytes)} allocated\n`);
    });

  disk.command('check')
    .description('read and check every table and grain of a disk and its chain: exit 0 if consistent, 1 with the problem found')
    .argument('<file>', 'disk file')
    .action(async (path: string) => {
      await withDisk(path, (d) => d.check());
      process.stdout.write(`${path}: no problems found\n`);
    });
  return disk;
}
