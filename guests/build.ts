// Builds the AssemblyScript guest images: guests/src/<name>.ts -> dist/guests/<name>.wasm.
//
// Run after tsc (npm run build): node dist/guests/build.js [--wat]
//   --wat   also write dist/guests/<name>.wat (text form, to inspect the generated code)
//
// Each image is checked against the parts of docs/guest-abi.md that a build can see: it imports
// only from module "ferry", exports ferry_abi_version, ferry_boot, ferry_vcpu_step and a memory,
// and has no start function (guests keep all state initialisation in ferry_boot).

import asc from 'assemblyscript/asc';
import { mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface GuestSpec {
  /** Image name: dist/guests/<name>.wasm. */
  readonly name: string;
  /** Entry file, relative to the repo root. */
  readonly entry: string;
  /** Initial memory in 64 KiB pages: what the static data needs (more RAM is claimed at boot). */
  readonly initialPages: number;
}

const GUESTS: readonly GuestSpec[] = [
  { name: 'dirtier', entry: 'guests/src/dirtier.ts', initialPages: 1 },
  { name: 'compute', entry: 'guests/src/compute.ts', initialPages: 1 },
  { name: 'kvlog', entry: 'guests/src/kvlog.ts', initialPages: 1 },
  { name: 'diskbench', entry: 'guests/src/diskbench.ts', initialPages: 1 },
];

// The abort handler, as an internal AssemblyScript name (file path without extension / function).
const ABORT_HANDLER = 'guests/src/lib/panic/ferryAbort';
const REQUIRED_EXPORTS: readonly string[] = ['ferry_abi_version', 'ferry_boot', 'ferry_vcpu_step'];

// dist/guests/build.js -> repo root is two levels up.
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const outDir = path.join(repoRoot, 'dist', 'guests');

class BuildError extends Error {}

/** Collects a compiler output stream into a string. */
class TextSink {
  private readonly chunks: string[] = [];
  write(chunk: Uint8Array | string): void {
    this.chunks.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
  }
  text(): string {
    return this.chunks.join('');
  }
}

function compilerArgs(guest: GuestSpec, outFile: string, watFile: string | undefined): string[] {
  const args = [
    guest.entry,
    '--baseDir', repoRoot,
    '--outFile', outFile,
    '--optimizeLevel', '3',
    '--shrinkLevel', '0',
    '--converge',
    '--runtime', 'stub',
    '--enable', 'threads',
    '--enable', 'simd',
    '--initialMemory', String(guest.initialPages),
    '--use', `abort=${ABORT_HANDLER}`,
    '--noColors',
  ];
  if (watFile !== undefined) args.push('--textFile', watFile);
  return args;
}

// --- minimal reader of the wasm sections that matter for the ABI check -----------------------

interface ImageShape {
  readonly imports: { module: string; name: string }[];
  readonly exports: { name: string; kind: number }[];
  readonly hasStart: boolean;
}

class Reader {
  pos = 0;
  constructor(private readonly bytes: Uint8Array) {}
  byte(): number {
    const b = this.bytes[this.pos];
    if (b === undefined) throw new BuildError('truncated wasm image');
    this.pos++;
    return b;
  }
  u32(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      const b = this.byte();
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return result;
      shift += 7;
      if (shift > 35) throw new BuildError('bad LEB128 in wasm image');
    }
  }
  name(): string {
    const len = this.u32();
    const s = Buffer.from(this.bytes.subarray(this.pos, this.pos + len)).toString('utf8');
    this.pos += len;
    return s;
  }
  skipLimits(): void {
    const flags = this.byte();
    this.u32();
    if ((flags & 1) !== 0) this.u32();
  }
}

function readShape(bytes: Uint8Array): ImageShape {
  const r = new Reader(bytes);
  const magic = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  for (const m of magic) {
    if (r.byte() !== m) throw new BuildError('not a wasm version 1 binary');
  }
  const imports: { module: string; name: string }[] = [];
  const exports: { name: string; kind: number }[] = [];
  let hasStart = false;
  while (r.pos < bytes.length) {
    const id = r.byte();
    const size = r.u32();
    const end = r.pos + size;
    if (id === 2) {
      const count = r.u32();
      for (let i = 0; i < count; i++) {
        const module = r.name();
        const name = r.name();
        const kind = r.byte();
        if (kind === 0) r.u32(); // function type index
        else if (kind === 1) { r.byte(); r.skipLimits(); } // table
        else if (kind === 2) r.skipLimits(); // memory
        else if (kind === 3) { r.byte(); r.byte(); } // global type + mutability
        else throw new BuildError(`unknown import kind ${kind}`);
        imports.push({ module, name });
      }
    } else if (id === 7) {
      const count = r.u32();
      for (let i = 0; i < count; i++) {
        const name = r.name();
        const kind = r.byte();
        r.u32();
        exports.push({ name, kind });
      }
    } else if (id === 8) {
      hasStart = true;
    }
    r.pos = end;
  }
  return { imports, exports, hasStart };
}

function checkShape(guest: GuestSpec, bytes: Uint8Array): void {
  const shape = readShape(bytes);
  const problems: string[] = [];
  for (const imp of shape.imports) {
    if (imp.module !== 'ferry') problems.push(`imports ${imp.module}.${imp.name} (only module "ferry" is allowed)`);
  }
  for (const name of REQUIRED_EXPORTS) {
    if (!shape.exports.some((e) => e.name === name)) problems.push(`does not export ${name}`);
  }
  if (!shape.exports.some((e) => e.kind === 2)) problems.push('does not export its memory');
  if (shape.hasStart) problems.push('has a start function (initialise state in ferry_boot instead)');
  if (problems.length > 0) throw new BuildError(`guest ${guest.name}: ${problems.join('; ')}`);
}

// ---------------------------------------------------------------------------------------------

async function buildGuest(guest: GuestSpec, withWat: boolean): Promise<void> {
  const outFile = path.join(outDir, `${guest.name}.wasm`);
  const watFile = withWat ? path.join(outDir, `${guest.name}.wat`) : undefined;
  const stdout = new TextSink();
  const stderr = new TextSink();
  const result = await asc.main(compilerArgs(guest, outFile, watFile), { stdout, stderr });
  if (result.error !== null) {
    const log = [stderr.text(), stdout.text()].join('\n').trim();
    throw new BuildError(`guest ${guest.name}: compile of ${guest.entry} failed: ${result.error.message}${log === '' ? '' : `\n${log}`}`);
  }
  const bytes = await readFile(outFile);
  checkShape(guest, bytes);
  const { size } = await stat(outFile);
  process.stdout.write(`guest ${guest.name}: ${path.relative(repoRoot, outFile)} ${size} bytes\n`);
}

async function main(): Promise<void> {
  const withWat = process.argv.includes('--wat');
  await mkdir(outDir, { recursive: true });
  for (const guest of GUESTS) await buildGuest(guest, withWat);
}

main().catch((err: unknown) => {
  const message = err instanceof BuildError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
  process.stderr.write(`guest build failed: ${message}\n`);
  process.exitCode = 1;
});
