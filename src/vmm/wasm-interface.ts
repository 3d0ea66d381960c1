/**
 * The interface of a WebAssembly module read from its binary: imports (with function signatures,
 * memory limits and sharedness), exports (with function signatures and global types), whether it
 * has a start function. `WebAssembly.Module.imports/exports` give names and kinds only (Node 20 has
 * no type reflection), and an offered instrumented module (src/vmm/instrument-offer.ts) must be
 * checked down to the signatures and the memory's size.
 *
 * Only for bytes `new WebAssembly.Module` has accepted (so the structure is valid); it still checks
 * every bound it reads and throws a plain Error naming what it cannot read (the caller turns that into
 * a refusal). Code and data sections are skipped, never decoded.
 */

export type WasmValueType = 'i32' | 'i64' | 'f32' | 'f64' | 'v128' | 'funcref' | 'externref';

export interface WasmSignature {
  readonly params: readonly WasmValueType[];
  readonly results: readonly WasmValueType[];
}

export interface WasmLimits {
  readonly minPages: number;
  readonly maxPages: number | null;
  readonly shared: boolean;
}

export type WasmImport =
  | { readonly module: string; readonly name: string; readonly kind: 'function'; readonly signature: WasmSignature }
  | { readonly module: string; readonly name: string; readonly kind: 'memory'; readonly limits: WasmLimits }
  | { readonly module: string; readonly name: string; readonly kind: 'table' | 'global' | 'tag' };

export type WasmExport =
  | { readonly name: string; readonly kind: 'function'; readonly signature: WasmSignature }
  | { readonly name: string; readonly kind: 'global'; readonly type: WasmValueType; readonly mutable: boolean }
  | { readonly name: string; readonly kind: 'memory' | 'table' | 'tag' };

export interface WasmInterface {
  readonly imports: readonly WasmImport[];
  readonly exports: readonly WasmExport[];
  readonly hasStart: boolean;
}

const SECTION = { custom: 0, type: 1, import: 2, function: 3, table: 4, memory: 5, global: 6, export: 7, start: 8, tag: 13 } as const;
const VALUE_TYPES = new Map<number, WasmValueType>([[0x7f, 'i32'], [0x7e, 'i64'], [0x7d, 'f32'], [0x7c, 'f64'], [0x7b, 'v128'], [0x70, 'funcref'], [0x6f, 'externref']]);
const FUNC_TYPE_FORM = 0x60;
const EXTERNAL_KINDS = ['function', 'table', 'memory', 'global', 'tag'] as const;
/** Opcodes a constant expression (global initialiser) may use, and the bytes of their immediates (-1: a LEB128). */
const CONST_EXPR_OPS = new Map<number, number>([
  [0x41, -1], [0x42, -1], [0x43, 4], [0x44, 8], [0x23, -1], [0xd2, -1], [0xd0, 1],
  [0x6a, 0], [0x6b, 0], [0x6c, 0], [0x7c, 0], [0x7d, 0], [0x7e, 0], // extended-const add/sub/mul
]);
const END_OPCODE = 0x0b;
const SIMD_PREFIX = 0xfd;
const V128_CONST = 0x0c;
const V128_BYTES = 16;

class Reader {
  pos: number;
  constructor(private readonly bytes: Uint8Array, start: number, readonly end: number) { this.pos = start; }

  byte(): number {
    if (this.pos >= this.end) throw new Error(`unexpected end at byte ${this.pos}`);
    return this.bytes[this.pos++] ?? 0;
  }

  /** An unsigned LEB128 of at most 32 bits. */
  u32(): number {
    let result = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const b = this.byte();
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) {
        if (result > 0xffffffff) throw new Error(`LEB128 at byte ${this.pos} exceeds 32 bits`);
        return result;
      }
    }
    throw new Error(`LEB128 at byte ${this.pos} is too long`);
  }

  /** Skips a (signed or unsigned) LEB128 of any width up to 64 bits. */
  skipLeb(): void {
    for (let i = 0; i < 10; i++) if ((this.byte() & 0x80) === 0) return;
    throw new Error(`LEB128 at byte ${this.pos} is too long`);
  }

  skip(n: number): void {
    if (n > this.end - this.pos) throw new Error(`unexpected end at byte ${this.pos}`);
    this.pos += n;
  }

  name(): string {
    const n = this.u32();
    const start = this.pos;
    this.skip(n);
    return new TextDecoder('utf-8', { fatal: true }).decode(this.bytes.subarray(start, start + n));
  }

  valueType(): WasmValueType {
    const code = this.byte();
    const t = VALUE_TYPES.get(code);
    if (t === undefined) throw new Error(`unsupported value type 0x${code.toString(16)}`);
    return t;
  }

  limits(): WasmLimits {
    const flags = this.byte();
    if ((flags & ~0x03) !== 0) throw new Error(`unsupported limits flags 0x${flags.toString(16)} (memory64?)`);
    const minPages = this.u32();
    const maxPages = (flags & 0x01) !== 0 ? this.u32() : null;
    return { minPages, maxPages, shared: (flags & 0x02) !== 0 };
  }

  /** Skips a constant expression up to and including its `end`. */
  skipConstExpr(): void {
    for (;;) {
      const op = this.byte();
      if (op === END_OPCODE) return;
      if (op === SIMD_PREFIX) {
        const sub = this.u32();
        if (sub !== V128_CONST) throw new Error(`unsupported SIMD opcode ${sub} in a constant expression`);
        this.skip(V128_BYTES);
        continue;
      }
      const immediate = CONST_EXPR_OPS.get(op);
      if (immediate === undefined) throw new Error(`unsupported opcode 0x${op.toString(16)} in a constant expression`);
      if (immediate < 0) this.skipLeb(); else this.skip(immediate);
    }
  }
}

/** Reads the module's interface. Throws an Error naming what it could not read. */
export function readWasmInterface(bytes: Uint8Array): WasmInterface {
  const r = new Reader(bytes, 8, bytes.byteLength); // after magic and version (checked by the caller's compile)
  const types: WasmSignature[] = [];
  const imports: WasmImport[] = [];
  const functionTypes: number[] = []; // per function index (imports first)
  const globals: { type: WasmValueType; mutable: boolean }[] = []; // per global index (imports first)
  const rawExports: { name: string; kind: (typeof EXTERNAL_KINDS)[number]; index: number }[] = [];
  let hasStart = false;
  while (r.pos < r.end) {
    const id = r.byte();
    const size = r.u32();
    const body = new Reader(bytes, r.pos, r.pos + size);
    if (body.end > r.end) throw new Error(`section ${id} runs past the end of the module`);
    r.skip(size);
    switch (id) {
      case SECTION.type:
        for (let n = body.u32(), i = 0; i < n; i++) {
          const form = body.byte();
          if (form !== FUNC_TYPE_FORM) throw new Error(`type ${i} is not a function type (form 0x${form.toString(16)})`);
          const params = Array.from({ length: body.u32() }, () => body.valueType());
          const results = Array.from({ length: body.u32() }, () => body.valueType());
          types.push({ params, results });
        }
        break;
      case SECTION.import:
        for (let n = body.u32(), i = 0; i < n; i++) {
          const module = body.name();
          const name = body.name();
          const kind = EXTERNAL_KINDS[body.byte()];
          if (kind === 'function') {
            const typeIndex = body.u32();
            functionTypes.push(typeIndex);
            imports.push({ module, name, kind, signature: typeAt(types, typeIndex) });
          } else if (kind === 'memory') {
            imports.push({ module, name, kind, limits: body.limits() });
          } else if (kind === 'table') {
            body.valueType();
            body.limits();
            imports.push({ module, name, kind });
          } else if (kind === 'global') {
            globals.push({ type: body.valueType(), mutable: body.byte() === 1 });
            imports.push({ module, name, kind });
          } else if (kind === 'tag') {
            body.byte();
            body.u32();
            imports.push({ module, name, kind });
          } else {
            throw new Error(`import ${i} has an unknown kind`);
          }
        }
        break;
      case SECTION.function:
        for (let n = body.u32(), i = 0; i < n; i++) functionTypes.push(body.u32());
        break;
      case SECTION.global:
        for (let n = body.u32(), i = 0; i < n; i++) {
          const type = body.valueType();
          const mutable = body.byte() === 1;
          body.skipConstExpr();
          globals.push({ type, mutable });
        }
        break;
      case SECTION.export:
        for (let n = body.u32(), i = 0; i < n; i++) {
          const name = body.name();
          const kind = EXTERNAL_KINDS[body.byte()];
          if (kind === undefined) throw new Error(`export ${i} has an unknown kind`);
          rawExports.push({ name, kind, index: body.u32() });
        }
        break;
      case SECTION.start:
        hasStart = true;
        break;
      default:
        break; // custom, table, memory, element, code, data, data count, tag: not part of what is checked
    }
  }
  const exports = rawExports.map((e): WasmExport => {
    if (e.kind === 'function') {
      const typeIndex = functionTypes[e.index];
      if (typeIndex === undefined) throw new Error(`export "${e.name}" names function ${e.index}, which does not exist`);
      return { name: e.name, kind: 'function', signature: typeAt(types, typeIndex) };
    }
    if (e.kind === 'global') {
      const g = globals[e.index];
      if (g === undefined) throw new Error(`export "${e.name}" names global ${e.index}, which does not exist`);
      return { name: e.name, kind: 'global', type: g.type, mutable: g.mutable };
    }
    return { name: e.name, kind: e.kind };
  });
  return { imports, exports, hasStart };
}

function typeAt(types: readonly WasmSignature[], index: number): WasmSignature {
  const t = types[index];
  if (t === undefined) throw new Error(`type index ${index} does not exist`);
  return t;
}

/** `(i32, i32) -> (i32)`: how signatures are compared and shown. */
export function signatureText(s: WasmSignature): string {
  return `(${s.params.join(', ')}) -> (${s.results.join(', ')})`;
}
