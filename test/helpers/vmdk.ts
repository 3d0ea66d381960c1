/** Shared by the VMDK tests: temp dirs, local disks, a seeded write pattern, qemu-img and qemu-io. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlockFile } from '../../src/storage/block-file.js';
import { LocalFile } from '../../src/storage/local-file.js';
import { VmdkDisk } from '../../src/storage/vmdk/disk.js';

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-vmdk-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export { openLocalParent, openLocalDisk } from '../../src/storage/vmdk/local-disk.js';

export async function createLocalDisk(path: string, capacityBytes: number, grainSizeSectors?: number): Promise<VmdkDisk> {
  const file = await LocalFile.open(path, { create: true });
  return VmdkDisk.create(file, { capacityBytes, ...(grainSizeSectors !== undefined ? { grainSizeSectors } : {}) });
}

/** mulberry32: a small seeded PRNG, so a pattern can be replayed by another process. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface PatternWrite { readonly offsetBytes: number; readonly data: Uint8Array }

/** `count` writes at random offsets and lengths (1 byte .. maxLength) inside `capacityBytes`. */
export function writePattern(seed: number, count: number, capacityBytes: number, maxLength = 200_000): PatternWrite[] {
  const rnd = prng(seed);
  const out: PatternWrite[] = [];
  for (let i = 0; i < count; i++) {
    const length = 1 + Math.floor(rnd() * Math.min(maxLength, capacityBytes));
    const offsetBytes = Math.floor(rnd() * (capacityBytes - length + 1));
    const data = new Uint8Array(length);
    const fill = Math.floor(rnd() * 256);
    for (let j = 0; j < length; j++) data[j] = (fill + j * 7 + (j >> 9)) & 0xff;
    out.push({ offsetBytes, data });
  }
  return out;
}

export interface ToolResult { readonly code: number; readonly stdout: string; readonly stderr: string }

/** Bound on any one qemu-img / qemu-io run: a hung tool fails the test instead of hanging it. */
const TOOL_TIMEOUT_MS = 60_000;

export function runTool(tool: 'qemu-img' | 'qemu-io', args: readonly string[]): Promise<ToolResult> {
  return new Promise((resolvePromise, reject) => {
    execFile(tool, args, { timeout: TOOL_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') { reject(new Error(`${tool} ${args.join(' ')}: ${err.message} (is qemu-utils installed? scripts/system-packages.sh)`)); return; }
      resolvePromise({ code: err === null ? 0 : (err.code as number), stdout, stderr });
    });
  });
}

export async function qemuImg(...args: string[]): Promise<ToolResult> {
  return runTool('qemu-img', args);
}

/** Runs qemu-img and fails with its output unless it exits 0. */
export async function qemuImgOk(...args: string[]): Promise<string> {
  const r = await qemuImg(...args);
  if (r.code !== 0) throw new Error(`qemu-img ${args.join(' ')} exited ${r.code}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

export interface QemuVmdkInfo {
  readonly 'virtual-size': number;
  readonly 'format-specific': { readonly data: { readonly cid: number; readonly 'parent-cid': number; readonly 'create-type': string } };
}

export async function qemuInfo(path: string): Promise<QemuVmdkInfo> {
  return JSON.parse(await qemuImgOk('info', '--output=json', path)) as QemuVmdkInfo;
}

/** A BlockFile in memory (fuzzing opens thousands of disks: no file system in the loop). */
export class MemoryFile implements BlockFile {
  constructor(readonly name: string, public bytes: Uint8Array, readonly readOnly = true) {}
  read(position: number, buf: Uint8Array): Promise<void> {
    buf.fill(0);
    if (position < this.bytes.length) buf.set(this.bytes.subarray(position, Math.min(this.bytes.length, position + buf.length)));
    return Promise.resolve();
  }
  write(position: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) return Promise.reject(new Error('read-only'));
    if (position + data.length > this.bytes.length) {
      const grown = new Uint8Array(position + data.length);
      grown.set(this.bytes);
      this.bytes = grown;
    }
    this.bytes.set(data, position);
    return Promise.resolve();
  }
  flush(): Promise<void> { return Promise.resolve(); }
  size(): Promise<number> { return Promise.resolve(this.bytes.length); }
  truncate(length: number): Promise<void> {
    const next = new Uint8Array(length);
    next.set(this.bytes.subarray(0, Math.min(length, this.bytes.length)));
    this.bytes = next;
    return Promise.resolve();
  }
  close(): Promise<void> { return Promise.resolve(); }
}

/**
 * A streamOptimized file as VMware writes it, made from one qemu-img wrote (directory at the front):
 * the header's gdOffset becomes all-ones, and a footer marker, a header copy that places the
 * directory and an end-of-stream marker are appended.
 */
export function gdInFooter(front: Uint8Array): Buffer {
  const SECTOR = 512;
  const MARKER_FOOTER = 3;
  const footer = Buffer.alloc(3 * SECTOR);
  footer.writeBigUInt64LE(1n, 0);
  footer.writeUInt32LE(MARKER_FOOTER, 12);
  footer.set(front.subarray(0, SECTOR), SECTOR);
  const moved = Buffer.from(front);
  moved.writeBigUInt64LE(0xffffffffffffffffn, 56);
  return Buffer.concat([moved, footer]);
}
