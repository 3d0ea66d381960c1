/**
 * Mutation fuzzing of the VMDK parser: valid disks with a few bytes changed (mostly in the header,
 * descriptor and tables, where the parser looks), opened and read everywhere that matters. The
 * only acceptable outcomes are success or a FerryError; anything else — another exception, a hang —
 * is a finding. Used by the short run in npm test and by `npm run fuzz:vmdk`.
 */
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../../src/lib/errors.js';
import { VmdkDisk } from '../../src/storage/vmdk/disk.js';
import { MemoryFile, gdInFooter, prng } from './vmdk.js';

const MiB = 1024 * 1024;

/** Seeds: a Ferry disk with data, a Ferry delta over it, qemu-img's sparse and streamOptimized ones, and the latter with its directory in a footer. */
export async function buildCorpus(dir: string): Promise<Map<string, Uint8Array>> {
  const baseFile = new MemoryFile('t.vmdk', new Uint8Array(0), false);
  const base = await VmdkDisk.create(baseFile, { capacityBytes: 4 * MiB });
  await base.write(100_000, new Uint8Array(200_000).fill(0x5a));
  await base.flush();
  await base.close();
  const deltaFile = new MemoryFile('d.vmdk', new Uint8Array(0), false);
  const delta = await VmdkDisk.createDelta(await VmdkDisk.open(new MemoryFile('t.vmdk', baseFile.bytes)), deltaFile, 't.vmdk');
  await delta.write(150_000, new Uint8Array(10_000).fill(0x77));
  await delta.flush();
  await delta.close();
  const raw = join(dir, 'r.raw');
  const content = Buffer.alloc(2 * MiB);
  for (let i = 0; i < content.length; i += 4096) content.writeUInt32LE((i * 2654435761) >>> 0, i);
  await writeFile(raw, content);
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', raw, join(dir, 'q.vmdk')]);
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, join(dir, 's.vmdk')]);
  const stream = await readFile(join(dir, 's.vmdk'));
  return new Map<string, Uint8Array>([
    ['t.vmdk', baseFile.bytes], ['d.vmdk', deltaFile.bytes],
    ['q.vmdk', await readFile(join(dir, 'q.vmdk'))], ['s.vmdk', stream], ['f.vmdk', gdInFooter(stream)],
  ]);
}

/** A parent chain in memory: name → bytes. */
export type Corpus = ReadonlyMap<string, Uint8Array>;

/** Bytes read from the start of a mutated disk, and random probes beyond. */
const READ_PREFIX_BYTES = 4 * 1024 * 1024;
const PROBES = 16;
const PROBE_BYTES = 70_000;
/** check() walks every grain of a streamOptimized disk: only on disks of a sane size (a mutated capacity can be 2 TiB). */
const CHECK_MAX_CAPACITY_BYTES = 64 * MiB;
/** A case that takes longer than this is a hang. */
const CASE_TIMEOUT_MS = 10_000;

export interface FuzzOutcome { readonly ok: number; readonly refused: Map<string, number> }

/** One case: mutate `target` of `corpus`, open it as top of its chain, read. Throws on a non-FerryError or a hang. */
export async function fuzzOne(corpus: Corpus, target: string, seed: number, outcome: FuzzOutcome): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`fuzz case ${target} seed ${seed}: no outcome within ${CASE_TIMEOUT_MS} ms`)), CASE_TIMEOUT_MS);
  });
  try {
    await Promise.race([fuzzCase(corpus, target, seed, outcome), hang]);
  } finally {
    clearTimeout(timer);
  }
}

async function fuzzCase(corpus: Corpus, target: string, seed: number, outcome: FuzzOutcome): Promise<void> {
  const rnd = prng(seed);
  const original = corpus.get(target) as Uint8Array;
  const bytes = Uint8Array.from(original);
  const mutations = 1 + Math.floor(rnd() * 8);
  for (let m = 0; m < mutations; m++) {
    // 3 in 4 in the first 64 KiB (header, descriptor, tables), the rest anywhere.
    const span = rnd() < 0.75 ? Math.min(bytes.length, 65536) : bytes.length;
    const at = Math.floor(rnd() * span);
    const kind = rnd();
    if (kind < 0.5) bytes[at] = Math.floor(rnd() * 256);
    else if (kind < 0.7) bytes[at] = (bytes[at] as number) ^ (1 << Math.floor(rnd() * 8));
    else if (kind < 0.85) bytes.fill(0xff, at, at + 1 + Math.floor(rnd() * 8));
    else bytes.fill(0, at, at + 1 + Math.floor(rnd() * 8));
  }
  const truncated = rnd() < 0.05 ? bytes.subarray(0, Math.floor(rnd() * bytes.length)) : bytes;
  const files = new Map(corpus);
  files.set(target, truncated);
  let disk: VmdkDisk | undefined;
  try {
    disk = await VmdkDisk.open(new MemoryFile(target, truncated), {
      openParent: (hint) => {
        const parent = files.get(hint);
        if (parent === undefined) return Promise.reject(new FerryError('NOT_FOUND', `no ${hint}`));
        return Promise.resolve(new MemoryFile(hint, parent));
      },
    });
    const prefix = new Uint8Array(Math.min(disk.capacityBytes, READ_PREFIX_BYTES));
    await disk.read(0, prefix);
    for (let p = 0; p < PROBES; p++) {
      const length = Math.min(PROBE_BYTES, disk.capacityBytes);
      await disk.read(Math.floor(rnd() * (disk.capacityBytes - length + 1)), new Uint8Array(length));
    }
    await disk.allocatedBytes();
    if (disk.capacityBytes <= CHECK_MAX_CAPACITY_BYTES) await disk.check();
    (outcome as { ok: number }).ok++;
  } catch (err) {
    if (!(err instanceof FerryError)) throw new Error(`fuzz case ${target} seed ${seed}: not a FerryError: ${String(err)}`, { cause: err });
    outcome.refused.set(err.code, (outcome.refused.get(err.code) ?? 0) + 1);
  } finally {
    await disk?.close();
  }
}
