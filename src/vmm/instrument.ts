/**
 * Load-time instrumentation of a guest image (binaryen).
 *
 * What it does to the module, in order:
 *  1. validates the image against the guest ABI (docs/guest-abi.md) — clear FerryError codes;
 *  2. replaces the guest's memory by an imported shared memory `ferry_rt.memory` sized for the VM's
 *     RAM plus the host-reserved regions (src/vmm/layout.ts); active data segments become passive
 *     and are applied once by a generated `__ferry_init` (never per vCPU instance);
 *  3. rewrites every expression that can write guest memory — plain stores of every width, SIMD
 *     stores and lane stores, atomic stores, atomic RMW and cmpxchg, memory.fill, memory.copy,
 *     memory.init, memory.grow — so that it (a) traps if any written byte lies at or beyond RAM,
 *     (b) performs the write, (c) *then* fires the write trace of every region the write touched;
 *  4. virtualises memory.size/memory.grow over a claimed-pages control word;
 *  5. exports every internal mutable global as `__ferry_g<N>` so vCPU state can be captured.
 *
 * The trace mark is inline wasm: per written region, `if (bitmap[r]) bitmap[r] = 0`. A byte of 1
 * means "armed"; the first write clears it (fires). Checking before clearing keeps un-armed memory
 * free of bitmap writes (no cache-line bouncing between vCPUs when traces are off). Both the first
 * and the last byte of a store are checked, so a store straddling two regions fires both.
 *
 * Each write site is moved into a tiny helper function that is then inlined by binaryen's
 * `inlining-optimizing` pass (one caller each), so the result is straight-line code at the site.
 */
import binaryen from 'binaryen';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { FerryError } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { assert } from '../lib/assert.js';
import { MAX_IMAGE_BYTES, WASM_PAGE_BYTES } from '../lib/limits.js';
import {
  CONTROL_CLAIMED_PAGES_OFFSET, CONTROL_POLL_FLAG_OFFSET, CONTROL_TRACE_SHIFT_OFFSET, FINE_SHIFT, SPLIT_MARK, computeLayout, granularityShift, validateGranularity,
  type MemoryLayout,
} from './layout.js';

export const GUEST_ABI_VERSION = 1;
/**
 * Version of what this file emits. Bump it with every change that can make the instrumented binary of
 * the same image differ (a new check, another helper, a pass added): a migration target adopts a
 * source's instrumented module only when the source's INSTRUMENTER_BUILD equals its own
 * (src/vmm/instrument-offer.ts), and then still compares it with its own build afterwards.
 */
export const INSTRUMENTER_FORMAT_VERSION = 1;
/** The binaryen release in use: its passes shape the output as much as this file does. */
const BINARYEN_VERSION = (createRequire(import.meta.url)('binaryen/package.json') as { version: string }).version;
/** The identity of this instrumenter: same build + same image, RAM and granularity = the same bytes. */
export const INSTRUMENTER_BUILD = `ferry-instrument/${INSTRUMENTER_FORMAT_VERSION}+binaryen@${BINARYEN_VERSION}`;
/** Import module of runtime-internal imports added by the instrumentation. */
export const RUNTIME_IMPORT_MODULE = 'ferry_rt';
/** Import module of the guest-visible devices. */
export const DEVICE_IMPORT_MODULE = 'ferry';
export const EXPORTED_GLOBAL_PREFIX = '__ferry_g';
export const INIT_EXPORT = '__ferry_init';

type ValueTypeName = 'i32' | 'i64' | 'f32' | 'f64';

/** Signatures of the device imports a guest may use (docs/guest-abi.md). */
export const DEVICE_IMPORTS: Readonly<Record<string, { params: readonly ValueTypeName[]; results: readonly ValueTypeName[] }>> = {
  console_write: { params: ['i32', 'i32'], results: [] },
  clock_ns: { params: [], results: ['i64'] },
  cmdline: { params: ['i32', 'i32'], results: ['i32'] },
  panic: { params: ['i32', 'i32'], results: [] },
  block_submit: { params: ['i32'], results: ['i32'] },
  block_capacity: { params: [], results: ['i64'] },
};

const REQUIRED_FUNCTION_EXPORTS: Readonly<Record<string, { params: readonly ValueTypeName[]; results: readonly ValueTypeName[] }>> = {
  ferry_boot: { params: ['i32'], results: [] },
  ferry_vcpu_step: { params: ['i32', 'i32'], results: ['i32'] },
};
const OPTIONAL_FUNCTION_EXPORTS: Readonly<Record<string, { params: readonly ValueTypeName[]; results: readonly ValueTypeName[] }>> = {
  ferry_selfcheck: { params: [], results: ['i32'] },
  ferry_max_clock_gap_ns: { params: [], results: ['i64'] },
};

export interface ExportedGlobal {
  readonly exportName: string;
  readonly type: ValueTypeName;
}

export interface InstrumentOptions {
  readonly ramBytes: number;
  readonly granularityBytes: number;
  /**
   * Deliberately broken tracking, for tests that must prove the trace oracle can fail. Never set in
   * production paths (the CLI and host agent have no way to set it).
   */
  readonly faultInjection?: FaultInjection;
}

export interface FaultInjection {
  /**
   * Benchmark baseline: leave guest writes uninstrumented (no bounds checks, no trace marks) while
   * keeping everything else (shared memory, size/grow, globals). UNSAFE: the guest can then write
   * the reserved region. Only `npm run bench:runtime` uses it, to measure what instrumentation costs.
   */
  readonly uninstrumentedWrites?: boolean;
  /**
   * Measurement only: insert a safepoint poll (a load of a control word that is never set, and a
   * branch) at every loop back-edge, to measure what the rejected alternative to bounded steps
   * would cost (docs/design/runtime.md). 'atomic' uses i32.atomic.load, 'plain' an ordinary load.
   */
  readonly backEdgePoll?: 'atomic' | 'plain';
  /** Measurement only: a constant trace shift instead of the run-time control word. */
  readonly constantShift?: boolean;
  /** Do not mark traces for plain (non-atomic) stores. */
  readonly skipPlainStoreMarks?: boolean;
  /** Mark only the region of a store's first byte (the "trust alignment" bug FINDINGS warns of). */
  readonly markFirstRegionOnly?: boolean;
}

export interface InstrumentStats {
  stores: number;
  atomicRmw: number;
  simdLaneStores: number;
  bulk: number;
  grows: number;
  sizes: number;
}

/** An image instrumented for one RAM size and trace granularity: what a VM runs. */
export interface InstrumentedImage extends ImageAnalysis {
  /** The instrumented module, compiled once and shared with every vCPU worker. */
  readonly module: WebAssembly.Module;
  readonly binary: Uint8Array;
  /**
   * The instrumenter that made `binary` (INSTRUMENTER_BUILD); null for a fault-injected build, which
   * is never cached nor offered to a migration target.
   */
  readonly build: string | null;
}

// binaryen.js exposes per-expression accessor classes (binaryen.Store.getPtr ...) that its typings
// do not declare; this is the one place they are reached, through a narrow typed facade.
type Accessor = Record<string, ((...args: number[]) => number) | undefined>;
const accessors = binaryen as unknown as Record<string, Accessor | undefined>;
function accessor(cls: string, method: string): (...args: number[]) => number {
  const fn = accessors[cls]?.[method];
  assert(typeof fn === 'function', `binaryen.${cls}.${method} exists`);
  return fn;
}

/** Children of each expression kind: scalar child names and array child names (binaryen accessor names). */
interface ChildSpec { readonly cls: string; readonly single: readonly string[]; readonly list?: string }
const CHILDREN = new Map<number, ChildSpec>([
  [binaryen.BlockId, { cls: 'Block', single: [], list: 'Child' }],
  [binaryen.IfId, { cls: 'If', single: ['Condition', 'IfTrue', 'IfFalse'] }],
  [binaryen.LoopId, { cls: 'Loop', single: ['Body'] }],
  [binaryen.BreakId, { cls: 'Break', single: ['Condition', 'Value'] }],
  [binaryen.SwitchId, { cls: 'Switch', single: ['Condition', 'Value'] }],
  [binaryen.CallId, { cls: 'Call', single: [], list: 'Operand' }],
  [binaryen.CallIndirectId, { cls: 'CallIndirect', single: ['Target'], list: 'Operand' }],
  [binaryen.LocalSetId, { cls: 'LocalSet', single: ['Value'] }],
  [binaryen.GlobalSetId, { cls: 'GlobalSet', single: ['Value'] }],
  [binaryen.LoadId, { cls: 'Load', single: ['Ptr'] }],
  [binaryen.StoreId, { cls: 'Store', single: ['Ptr', 'Value'] }],
  [binaryen.UnaryId, { cls: 'Unary', single: ['Value'] }],
  [binaryen.BinaryId, { cls: 'Binary', single: ['Left', 'Right'] }],
  [binaryen.SelectId, { cls: 'Select', single: ['IfTrue', 'IfFalse', 'Condition'] }],
  [binaryen.DropId, { cls: 'Drop', single: ['Value'] }],
  [binaryen.ReturnId, { cls: 'Return', single: ['Value'] }],
  [binaryen.MemoryGrowId, { cls: 'MemoryGrow', single: ['Delta'] }],
  [binaryen.AtomicRMWId, { cls: 'AtomicRMW', single: ['Ptr', 'Value'] }],
  [binaryen.AtomicCmpxchgId, { cls: 'AtomicCmpxchg', single: ['Ptr', 'Expected', 'Replacement'] }],
  [binaryen.AtomicWaitId, { cls: 'AtomicWait', single: ['Ptr', 'Expected', 'Timeout'] }],
  [binaryen.AtomicNotifyId, { cls: 'AtomicNotify', single: ['Ptr', 'NotifyCount'] }],
  [binaryen.SIMDExtractId, { cls: 'SIMDExtract', single: ['Vec'] }],
  [binaryen.SIMDReplaceId, { cls: 'SIMDReplace', single: ['Vec', 'Value'] }],
  [binaryen.SIMDShuffleId, { cls: 'SIMDShuffle', single: ['Left', 'Right'] }],
  [binaryen.SIMDTernaryId, { cls: 'SIMDTernary', single: ['A', 'B', 'C'] }],
  [binaryen.SIMDShiftId, { cls: 'SIMDShift', single: ['Vec', 'Shift'] }],
  [binaryen.SIMDLoadId, { cls: 'SIMDLoad', single: ['Ptr'] }],
  [binaryen.SIMDLoadStoreLaneId, { cls: 'SIMDLoadStoreLane', single: ['Ptr', 'Vec'] }],
  [binaryen.MemoryInitId, { cls: 'MemoryInit', single: ['Dest', 'Offset', 'Size'] }],
  [binaryen.MemoryCopyId, { cls: 'MemoryCopy', single: ['Dest', 'Source', 'Size'] }],
  [binaryen.MemoryFillId, { cls: 'MemoryFill', single: ['Dest', 'Value', 'Size'] }],
  [binaryen.RefIsNullId, { cls: 'RefIsNull', single: ['Value'] }],
  [binaryen.RefEqId, { cls: 'RefEq', single: ['Left', 'Right'] }],
  [binaryen.RefAsId, { cls: 'RefAs', single: ['Value'] }],
  [binaryen.TableGetId, { cls: 'TableGet', single: ['Index'] }],
  [binaryen.TableSetId, { cls: 'TableSet', single: ['Index', 'Value'] }],
  [binaryen.TableGrowId, { cls: 'TableGrow', single: ['Value', 'Delta'] }],
  [binaryen.TupleMakeId, { cls: 'TupleMake', single: [], list: 'Operand' }],
  [binaryen.TupleExtractId, { cls: 'TupleExtract', single: ['Tuple'] }],
]);
const LEAVES = new Set<number>([
  binaryen.NopId, binaryen.UnreachableId, binaryen.ConstId, binaryen.LocalGetId, binaryen.GlobalGetId,
  binaryen.MemorySizeId, binaryen.AtomicFenceId, binaryen.DataDropId, binaryen.RefNullId, binaryen.RefFuncId,
  binaryen.TableSizeId,
]);

/** The wasm features a guest may use: what Node 20 runs, minus exceptions and GC. */
const FEATURES = binaryen.Features.MVP | binaryen.Features.Atomics | binaryen.Features.MutableGlobals
  | binaryen.Features.NontrappingFPToInt | binaryen.Features.SIMD128 | binaryen.Features.BulkMemory
  | binaryen.Features.BulkMemoryOpt | binaryen.Features.SignExt | binaryen.Features.ReferenceTypes
  | binaryen.Features.Multivalue;

const LANE_STORE_BYTES = new Map<number, number>([
  [binaryen.Store8LaneVec128, 1], [binaryen.Store16LaneVec128, 2],
  [binaryen.Store32LaneVec128, 4], [binaryen.Store64LaneVec128, 8],
]);

function typeName(t: number): ValueTypeName | null {
  if (t === binaryen.i32) return 'i32';
  if (t === binaryen.i64) return 'i64';
  if (t === binaryen.f32) return 'f32';
  if (t === binaryen.f64) return 'f64';
  return null;
}

function sigOf(params: number, results: number): { params: string[]; results: string[] } {
  const names = (t: number): string[] => binaryen.expandType(t).map((x) => typeName(x) ?? `type#${x}`);
  return { params: names(params), results: names(results) };
}

function sameSig(actual: { params: string[]; results: string[] }, want: { params: readonly string[]; results: readonly string[] }): boolean {
  return actual.params.join(',') === want.params.join(',') && actual.results.join(',') === want.results.join(',');
}

function sigText(s: { params: readonly string[]; results: readonly string[] }): string {
  return `(${s.params.join(', ')}) -> (${s.results.join(', ')})`;
}

/** Checks done before binaryen sees the bytes: binaryen aborts on malformed input. */
function precheck(bytes: Uint8Array): WebAssembly.Module {
  if (bytes.byteLength > MAX_IMAGE_BYTES) {
    throw new FerryError('IMAGE_TOO_LARGE', `guest image is ${formatBytes(bytes.byteLength)}; the limit is ${formatBytes(MAX_IMAGE_BYTES)}`, { sizeBytes: bytes.byteLength });
  }
  if (bytes.byteLength < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    throw new FerryError('IMAGE_NOT_WASM', 'guest image is not a WebAssembly module (it does not start with \\0asm)');
  }
  if (bytes[4] !== 1 || bytes[5] !== 0 || bytes[6] !== 0 || bytes[7] !== 0) {
    throw new FerryError('IMAGE_NOT_WASM', 'guest image is a WebAssembly component or an unknown binary version; Ferry runs core modules (version 1)');
  }
  try {
    return new WebAssembly.Module(bytes);
  } catch (err) {
    throw new FerryError('IMAGE_INVALID', `guest image is not a valid WebAssembly module: ${(err as Error).message}`, {}, { cause: err });
  }
}

function checkImportsAndExports(compiled: WebAssembly.Module): void {
  let memories = 0;
  for (const imp of WebAssembly.Module.imports(compiled)) {
    if (imp.kind === 'memory') { memories++; continue; }
    if (imp.kind === 'function' && imp.module === DEVICE_IMPORT_MODULE && imp.name in DEVICE_IMPORTS) continue;
    throw new FerryError('IMAGE_UNSUPPORTED_IMPORT',
      `guest imports ${imp.kind} "${imp.module}"."${imp.name}", which Ferry does not provide; a guest may import only ${Object.keys(DEVICE_IMPORTS).map((n) => `ferry.${n}`).join(', ')} and one memory`,
      { module: imp.module, name: imp.name, kind: imp.kind });
  }
  const exports = new Map(WebAssembly.Module.exports(compiled).map((e) => [e.name, e.kind]));
  for (const e of exports.keys()) {
    if (e.startsWith('__ferry')) throw new FerryError('IMAGE_BAD_EXPORT', `guest export "${e}" uses the reserved prefix __ferry`, { name: e });
  }
  for (const name of [...Object.keys(REQUIRED_FUNCTION_EXPORTS), 'ferry_abi_version']) {
    if (!exports.has(name)) {
      throw new FerryError('IMAGE_MISSING_EXPORT', `guest does not export "${name}" (see docs/guest-abi.md: a guest exports ferry_abi_version, ferry_boot and ferry_vcpu_step)`, { name });
    }
  }
  if (exports.get('ferry_abi_version') !== 'global') {
    throw new FerryError('IMAGE_BAD_EXPORT', 'guest export "ferry_abi_version" must be an immutable i32 global', { name: 'ferry_abi_version' });
  }
  for (const name of [...Object.keys(REQUIRED_FUNCTION_EXPORTS), ...Object.keys(OPTIONAL_FUNCTION_EXPORTS)]) {
    const kind = exports.get(name);
    if (kind !== undefined && kind !== 'function') {
      throw new FerryError('IMAGE_BAD_EXPORT', `guest export "${name}" must be a function, not a ${kind}`, { name });
    }
  }
  if (memories > 1) throw new FerryError('IMAGE_UNSUPPORTED_FEATURE', 'guest declares more than one memory; a VM has one RAM');
}

interface Walker {
  readonly mod: binaryen.Module;
  readonly memName: string;
  readonly layout: MemoryLayout;
  readonly shift: number;
  /** Read the shift from the control page at every write (granularity changeable at run time). */
  readonly dynamicShift: boolean;
  readonly stats: InstrumentStats;
  readonly faults: FaultInjection;
  siteCount: number;
  /** Count the write sites (analyzeImage) without rewriting anything. */
  readonly countOnly: boolean;
}

const i32 = binaryen.i32;
const none = binaryen.none;

/** The trace shift: the VM's control word (dynamic) or a constant. */
function shiftExpr(w: Walker): number {
  const m = w.mod;
  return w.dynamicShift ? m.i32.load(w.layout.controlOffset + CONTROL_TRACE_SHIFT_OFFSET, 4, m.i32.const(0), w.memName) : m.i32.const(w.shift);
}

/**
 * Fires the trace of the byte at `addr()` (a factory: the address is needed twice):
 *   b = bitmap[addr >> shift]
 *   if (b == 1) bitmap[...] = 0                              armed coarse region: fire it
 *   else if (b == SPLIT) if (fine[addr >> 12]) fine[...] = 0  split region: fire the 4 KiB page
 * With traces off (b == 0) it is one load and a predicted branch; nothing is written.
 */
function markOne(w: Walker, regionLocal: number, byteLocal: number, addr: () => number): number[] {
  const m = w.mod;
  const bitmap = w.layout.bitmapOffset;
  const fine = w.layout.fineBitmapOffset;
  const page = (): number => m.i32.shr_u(addr(), m.i32.const(FINE_SHIFT));
  return [
    m.local.set(regionLocal, m.i32.shr_u(addr(), shiftExpr(w))),
    m.local.set(byteLocal, m.i32.load8_u(bitmap, 1, m.local.get(regionLocal, i32), w.memName)),
    m.if(m.local.get(byteLocal, i32),
      m.if(m.i32.eq(m.local.get(byteLocal, i32), m.i32.const(1)),
        m.i32.store8(bitmap, 1, m.local.get(regionLocal, i32), m.i32.const(0), w.memName),
        m.if(m.i32.load8_u(fine, 1, page(), w.memName), m.i32.store8(fine, 1, page(), m.i32.const(0), w.memName)))),
  ];
}

/** Trap through ferry_rt.oob (for a message naming the address) unless [p+off, p+off+size) is inside RAM. */
function boundsCheck(w: Walker, ptrLocal: number, offset: number, size: number): number {
  const m = w.mod;
  const trap = m.block(null, [
    m.call('__ferry_oob', [m.local.get(ptrLocal, i32), m.i32.const(offset | 0), m.i32.const(size)], none),
    m.unreachable(),
  ]);
  const maxPtr = w.layout.ramBytes - offset - size;
  if (maxPtr < 0) return trap;
  return m.if(m.i32.gt_u(m.local.get(ptrLocal, i32), m.i32.const(maxPtr | 0)), trap);
}

/**
 * Moves a fixed-size write (store, atomic, lane store) into a helper `(ptr, operands...) -> result`
 * that checks bounds, performs it, then marks the first and last written regions; returns the call.
 */
function wrapFixedWrite(w: Walker, expr: number, cls: 'Store' | 'AtomicRMW' | 'AtomicCmpxchg' | 'SIMDLoadStoreLane',
  operandNames: readonly string[], offset: number, size: number): number {
  const m = w.mod;
  const operands = operandNames.map((n) => accessor(cls, `get${n}`)(expr));
  const operandTypes = operands.map((o) => binaryen.getExpressionType(o));
  if (operandTypes.includes(binaryen.unreachable)) return expr; // never executes
  const resultType = binaryen.getExpressionType(expr);
  operandNames.forEach((n, i) => { accessor(cls, `set${n}`)(expr, m.local.get(i, operandTypes[i] ?? none)); });
  const nParams = operands.length;
  const r0 = nParams, b0 = nParams + 1, result = nParams + 2;
  const body: number[] = [boundsCheck(w, 0, offset, size)];
  body.push(resultType === none ? expr : m.local.set(result, expr));
  const addr = (extra: number) => (): number => m.i32.add(m.local.get(0, i32), m.i32.const((offset + extra) | 0));
  const skipMarks = w.faults.skipPlainStoreMarks === true && cls === 'Store' && !accessor('Store', 'isAtomic')(expr);
  if (!skipMarks) body.push(...markOne(w, r0, b0, addr(0)));
  if (size > 1 && !skipMarks && w.faults.markFirstRegionOnly !== true) {
    // A store can straddle two regions or two pages of a split region: mark its last byte too when
    // it lies in another 4 KiB page (FINDINGS: checking only the first region loses writes).
    body.push(m.if(m.i32.ne(m.i32.shr_u(addr(size - 1)(), m.i32.const(FINE_SHIFT)), m.i32.shr_u(addr(0)(), m.i32.const(FINE_SHIFT))),
      m.block(null, markOne(w, r0, b0, addr(size - 1)))));
  }
  if (resultType !== none) body.push(m.local.get(result, resultType));
  const name = `__ferry_site${w.siteCount++}`;
  const vars = resultType === none ? [i32, i32] : [i32, i32, resultType];
  m.addFunction(name, binaryen.createType(operandTypes), resultType, vars, m.block(null, body, resultType));
  return m.call(name, operands, resultType);
}

/** memory.fill / memory.copy / memory.init: check [dest, dest+size) inside RAM, run, mark the range. */
function wrapBulkWrite(w: Walker, expr: number, cls: 'MemoryFill' | 'MemoryCopy' | 'MemoryInit', operandNames: readonly [string, string, string]): number {
  const m = w.mod;
  const operands = operandNames.map((n) => accessor(cls, `get${n}`)(expr));
  if (operands.some((o) => binaryen.getExpressionType(o) === binaryen.unreachable)) return expr;
  operandNames.forEach((n, i) => { accessor(cls, `set${n}`)(expr, m.local.get(i, i32)); });
  const dest = (): number => m.local.get(0, i32);
  const size = (): number => m.local.get(2, i32);
  const end = m.i64.add(m.i64.extend_u(dest()), m.i64.extend_u(size()));
  const body = [
    m.if(m.i64.gt_u(end, (m.i64.const)(BigInt(w.layout.ramBytes))), m.block(null, [
      m.call('__ferry_oob', [dest(), m.i32.const(0), size()], none), m.unreachable(),
    ])),
    expr,
    m.call('__ferry_mark_range', [dest(), size()], none),
  ];
  const name = `__ferry_site${w.siteCount++}`;
  m.addFunction(name, binaryen.createType([i32, i32, i32]), none, [], m.block(null, body, none));
  return m.call(name, operands, none);
}

/** Rewrites `expr`'s subtree; returns the expression to put in its place. */
function visit(w: Walker, expr: number): number {
  if (expr === 0) return 0;
  const id = binaryen.getExpressionId(expr);
  if (LEAVES.has(id)) {
    if (id === binaryen.MemorySizeId) { w.stats.sizes++; return w.countOnly ? expr : w.mod.call('__ferry_memory_size', [], i32); }
    return expr;
  }
  const spec = CHILDREN.get(id);
  if (spec === undefined) {
    throw new FerryError('IMAGE_UNSUPPORTED_FEATURE', `guest uses a WebAssembly feature Ferry does not run (expression kind ${id}: exceptions, GC and strings are not supported)`, { expressionId: id });
  }
  for (const name of spec.single) {
    const child = accessor(spec.cls, `get${name}`)(expr);
    if (child === 0) continue;
    const next = visit(w, child);
    if (next !== child) accessor(spec.cls, `set${name}`)(expr, next);
  }
  if (spec.list !== undefined) {
    const n = accessor(spec.cls, spec.list === 'Child' ? 'getNumChildren' : `getNum${spec.list}s`)(expr);
    for (let i = 0; i < n; i++) {
      const child = accessor(spec.cls, `get${spec.list}At`)(expr, i);
      const next = visit(w, child);
      if (next !== child) accessor(spec.cls, `set${spec.list}At`)(expr, i, next);
    }
  }
  if (id === binaryen.LoopId && w.faults.backEdgePoll !== undefined) {
    const m = w.mod;
    const body = accessor('Loop', 'getBody')(expr);
    const flagAddr = w.layout.controlOffset + CONTROL_POLL_FLAG_OFFSET;
    const flag = w.faults.backEdgePoll === 'atomic' ? m.i32.atomic.load(flagAddr, m.i32.const(0), w.memName) : m.i32.load(flagAddr, 4, m.i32.const(0), w.memName);
    accessor('Loop', 'setBody')(expr, m.block(null, [m.if(flag, m.unreachable()), body], binaryen.getExpressionType(body)));
    return expr;
  }
  if (w.faults.uninstrumentedWrites === true && id !== binaryen.MemoryGrowId) return expr;
  const site = writeSite(w, id, expr);
  if (site === null) return expr;
  w.stats[site.stat]++;
  // analyzeImage only counts; instrumentation rewrites the site.
  return w.countOnly ? expr : site.rewrite();
}

/** A write site: the statistic it counts in, and its rewrite into the traced form. */
interface WriteSite {
  readonly stat: keyof InstrumentStats;
  readonly rewrite: () => number;
}

/** The write site `expr` (of expression kind `id`) is, or null when it writes nothing (lane loads included). */
function writeSite(w: Walker, id: number, expr: number): WriteSite | null {
  switch (id) {
    case binaryen.StoreId:
      return { stat: 'stores', rewrite: () => wrapFixedWrite(w, expr, 'Store', ['Ptr', 'Value'], accessor('Store', 'getOffset')(expr), accessor('Store', 'getBytes')(expr)) };
    case binaryen.AtomicRMWId:
      return { stat: 'atomicRmw', rewrite: () => wrapFixedWrite(w, expr, 'AtomicRMW', ['Ptr', 'Value'], accessor('AtomicRMW', 'getOffset')(expr), accessor('AtomicRMW', 'getBytes')(expr)) };
    case binaryen.AtomicCmpxchgId:
      return { stat: 'atomicRmw', rewrite: () => wrapFixedWrite(w, expr, 'AtomicCmpxchg', ['Ptr', 'Expected', 'Replacement'], accessor('AtomicCmpxchg', 'getOffset')(expr), accessor('AtomicCmpxchg', 'getBytes')(expr)) };
    case binaryen.SIMDLoadStoreLaneId: {
      const bytes = LANE_STORE_BYTES.get(accessor('SIMDLoadStoreLane', 'getOp')(expr));
      if (bytes === undefined) return null; // a lane load
      return { stat: 'simdLaneStores', rewrite: () => wrapFixedWrite(w, expr, 'SIMDLoadStoreLane', ['Ptr', 'Vec'], accessor('SIMDLoadStoreLane', 'getOffset')(expr), bytes) };
    }
    case binaryen.MemoryFillId:
      return { stat: 'bulk', rewrite: () => wrapBulkWrite(w, expr, 'MemoryFill', ['Dest', 'Value', 'Size']) };
    case binaryen.MemoryCopyId:
      return { stat: 'bulk', rewrite: () => wrapBulkWrite(w, expr, 'MemoryCopy', ['Dest', 'Source', 'Size']) };
    case binaryen.MemoryInitId:
      return { stat: 'bulk', rewrite: () => wrapBulkWrite(w, expr, 'MemoryInit', ['Dest', 'Offset', 'Size']) };
    case binaryen.MemoryGrowId:
      return { stat: 'grows', rewrite: () => w.mod.call('__ferry_memory_grow', [accessor('MemoryGrow', 'getDelta')(expr)], i32) };
    default:
      return null;
  }
}

/** Runtime helpers shared by all sites: range marking, memory.size/grow over the claimed-pages word. */
function addRuntimeHelpers(w: Walker, maxClaimPages: number): void {
  const m = w.mod;
  const bitmap = w.layout.bitmapOffset;
  const ctrl = w.layout.controlOffset + CONTROL_CLAIMED_PAGES_OFFSET;
  m.addFunctionImport('__ferry_oob', RUNTIME_IMPORT_MODULE, 'oob', binaryen.createType([i32, i32, i32]), none);
  // (dest, size): fire every region in [dest, dest+size); callers guarantee dest+size <= RAM.
  // Split regions fire the 4 KiB pages of the range that lie in them.
  const fine = w.layout.fineBitmapOffset;
  const d = 0, n = 1, r = 2, last = 3, b = 4, p = 5, pEnd = 6;
  const regionStart = (): number => m.i32.shl(m.local.get(r, i32), shiftExpr(w));
  m.addFunction('__ferry_mark_range', binaryen.createType([i32, i32]), none, [i32, i32, i32, i32, i32], m.block(null, [
    m.if(m.i32.eqz(m.local.get(n, i32)), m.return()),
    m.local.set(r, m.i32.shr_u(m.local.get(d, i32), shiftExpr(w))),
    m.local.set(last, m.i32.shr_u(m.i32.sub(m.i32.add(m.local.get(d, i32), m.local.get(n, i32)), m.i32.const(1)), shiftExpr(w))),
    m.loop('__ferry_mark_loop', m.block(null, [
      m.local.set(b, m.i32.load8_u(bitmap, 1, m.local.get(r, i32), w.memName)),
      m.if(m.i32.eq(m.local.get(b, i32), m.i32.const(1)),
        m.i32.store8(bitmap, 1, m.local.get(r, i32), m.i32.const(0), w.memName),
        m.if(m.i32.eq(m.local.get(b, i32), m.i32.const(SPLIT_MARK)), m.block(null, [
          // pages of [max(dest, region start), min(dest + size, region end)) in this region
          m.local.set(p, m.i32.shr_u(m.select(m.i32.gt_u(m.local.get(d, i32), regionStart()), m.local.get(d, i32), regionStart()), m.i32.const(FINE_SHIFT))),
          m.local.set(pEnd, m.i32.shr_u(m.i32.sub(
            m.select(m.i32.lt_u(m.i32.add(m.local.get(d, i32), m.local.get(n, i32)), m.i32.shl(m.i32.add(m.local.get(r, i32), m.i32.const(1)), shiftExpr(w))),
              m.i32.add(m.local.get(d, i32), m.local.get(n, i32)), m.i32.shl(m.i32.add(m.local.get(r, i32), m.i32.const(1)), shiftExpr(w))),
            m.i32.const(1)), m.i32.const(FINE_SHIFT))),
          m.loop('__ferry_mark_fine', m.block(null, [
            m.if(m.i32.load8_u(fine, 1, m.local.get(p, i32), w.memName), m.i32.store8(fine, 1, m.local.get(p, i32), m.i32.const(0), w.memName)),
            m.local.set(p, m.i32.add(m.local.get(p, i32), m.i32.const(1))),
            m.br('__ferry_mark_fine', m.i32.le_u(m.local.get(p, i32), m.local.get(pEnd, i32))),
          ])),
        ]))),
      m.local.set(r, m.i32.add(m.local.get(r, i32), m.i32.const(1))),
      m.br('__ferry_mark_loop', m.i32.le_u(m.local.get(r, i32), m.local.get(last, i32))),
    ])),
  ]));
  m.addFunction('__ferry_memory_size', none, i32, [], m.i32.atomic.load(ctrl, m.i32.const(0), w.memName));
  // (delta) -> old claimed pages, or -1 beyond min(declared max, RAM): a CAS loop, since any vCPU may grow.
  const delta = 0, old = 1;
  m.addFunction('__ferry_memory_grow', binaryen.createType([i32]), i32, [i32], m.block(null, [
    m.loop('__ferry_grow_retry', m.block(null, [
      m.local.set(old, m.i32.atomic.load(ctrl, m.i32.const(0), w.memName)),
      m.if(m.i32.gt_u(m.local.get(delta, i32), m.i32.sub(m.i32.const(maxClaimPages), m.local.get(old, i32))),
        m.return(m.i32.const(-1))),
      m.br('__ferry_grow_retry', m.i32.ne(
        m.i32.atomic.rmw.cmpxchg(ctrl, m.i32.const(0), m.local.get(old, i32), m.i32.add(m.local.get(old, i32), m.local.get(delta, i32)), w.memName),
        m.local.get(old, i32))),
    ])),
    // Newly claimed pages are zero already; marking them tells a migration they now belong to the guest.
    m.call('__ferry_mark_range', [m.i32.shl(m.local.get(old, i32), m.i32.const(16)), m.i32.shl(m.local.get(delta, i32), m.i32.const(16))], none),
    m.local.get(old, i32),
  ], i32));
}

function findMemoryName(mod: binaryen.Module): string {
  for (let i = 0; i < mod.getNumExports(); i++) {
    const info = binaryen.getExportInfo(mod.getExportByIndex(i));
    if (info.kind === binaryen.ExternalMemory) return info.value;
  }
  // Not exported: binaryen's text form names it.
  const match = /\(memory \$(\S+)/.exec(mod.emitText());
  if (match?.[1] === undefined) throw new FerryError('IMAGE_NO_MEMORY', 'guest declares no memory; a guest needs one memory (its RAM)');
  return match[1];
}

/** Instrumented images kept for reuse (a host runs and receives the same images again and again). */
export const INSTRUMENT_CACHE_ENTRIES = 16;
const cache = new Map<string, InstrumentedImage>();

/**
 * Instruments an image, reusing an earlier result for the same image, RAM size and granularity
 * (the result depends on nothing else). Fault-injected builds are never cached.
 */
export function instrumentImage(bytes: Uint8Array, options: InstrumentOptions): InstrumentedImage {
  if (options.faultInjection !== undefined) return instrumentUncached(bytes, options);
  const key = cacheKey(createHash('sha256').update(bytes).digest('hex'), options);
  const hit = cache.get(key);
  if (hit !== undefined) {
    cache.delete(key);
    cache.set(key, hit); // most recently used last
    return hit;
  }
  const image = instrumentUncached(bytes, options);
  cache.set(key, image);
  if (cache.size > INSTRUMENT_CACHE_ENTRIES) cache.delete(cache.keys().next().value ?? '');
  return image;
}

function cacheKey(imageSha256: string, options: Omit<InstrumentOptions, 'faultInjection'>): string {
  return `${imageSha256}:${options.ramBytes}:${options.granularityBytes}`;
}

/**
 * The cached instrumentation of the image with this sha256 for a VM of `options`, if this host has
 * one (no instrumentation happens, the entry's recency is unchanged).
 */
export function cachedInstrumentation(imageSha256: string, options: Omit<InstrumentOptions, 'faultInjection'>): InstrumentedImage | undefined {
  return cache.get(cacheKey(imageSha256, options));
}

/** Forgets every cached instrumentation (tests that need a host which never saw an image). */
export function clearInstrumentCache(): void {
  cache.clear();
}

/** Functions in the last (largest) warm-up guest: enough code that binaryen's optimizer tiers up as a real guest needs. */
const WARM_UP_FUNCTIONS = 48;
/** Instrumentations of warm-up guests (of 1/3, 2/3 and all WARM_UP_FUNCTIONS): after three, the first real one costs what a warm one does. */
const WARM_UP_PASSES = 3;
/**
 * No further pass starts after this long (a host's start waits for the warm-up): three passes take
 * ~0.7 s on a quiet 2-core machine, a single one several seconds when it is heavily loaded.
 */
const WARM_UP_BUDGET_MS = 1_000;

/**
 * binaryen's own code (itself WebAssembly) is cold after load and tiers up only after running a
 * while: the first instrumentation of a real guest (dirtier, 17 KB) took 0.6–1.5 s after warming up
 * on a tiny module, 0.15–0.3 s after three passes over a guest-sized one. A host calls this once at
 * start-up so the first VM it creates or receives by migration does not pay for it (it would add
 * to migration time); the host's start pays instead, within WARM_UP_BUDGET_MS plus one pass.
 */
let warmedUp = false;
export function warmUpInstrumenter(): void {
  // Once per process: binaryen stays warm (hosts made in one process, as tests do, pay it once).
  if (warmedUp) return;
  warmedUp = true;
  const deadline = performance.now() + WARM_UP_BUDGET_MS;
  // Growing passes: on a loaded machine, where the budget ends after the first, that one stays short.
  for (let i = 0; i < WARM_UP_PASSES && (i === 0 || performance.now() < deadline); i++) {
    const bytes = warmUpGuest(Math.ceil((WARM_UP_FUNCTIONS * (i + 1)) / WARM_UP_PASSES));
    instrumentUncached(bytes, { ramBytes: WASM_PAGE_BYTES * (i + 1), granularityBytes: 4096 });
  }
}

/** A guest-sized module of `functions` small functions with loops, stores of each width, bulk memory and calls to inline. */
function warmUpGuest(functions: number): Uint8Array {
  const m = new binaryen.Module();
  try {
    m.setFeatures(FEATURES);
    m.setMemory(1, 1, 'memory');
    m.addGlobal('abi', i32, false, m.i32.const(GUEST_ABI_VERSION));
    m.addGlobal('counter', i32, true, m.i32.const(0));
    m.addGlobalExport('abi', 'ferry_abi_version');
    const i32x2 = binaryen.createType([i32, i32]);
    m.addFunction('leaf', i32x2, i32, [], m.i32.add(m.i32.mul(m.local.get(0, i32), m.local.get(1, i32)), m.global.get('counter', i32)));
    for (let f = 0; f < functions; f++) m.addFunction(`f${f}`, i32x2, i32, [i32, binaryen.i64], warmUpBody(m, f));
    m.addFunction('boot', binaryen.createType([i32]), none, [], m.drop(m.call('f0', [m.local.get(0, i32), m.i32.const(1)], i32)));
    m.addFunction('step', i32x2, i32, [], m.block(null, [
      m.memory.fill(m.i32.const(0), m.i32.const(0), m.i32.const(16)),
      m.memory.copy(m.i32.const(64), m.i32.const(0), m.i32.const(16)),
      m.call(`f${functions - 1}`, [m.local.get(0, i32), m.local.get(1, i32)], i32)], i32));
    m.addFunctionExport('boot', 'ferry_boot');
    m.addFunctionExport('step', 'ferry_vcpu_step');
    return m.emitBinary();
  } finally {
    m.dispose();
  }
}

/** Function `f`: a loop storing i32/i64/byte values and calling a small helper (the inliner's work). */
function warmUpBody(m: binaryen.Module, f: number): number {
  const [a, b, i, x] = [0, 1, 2, 3];
  const loop = `loop${f}`;
  const callee = m.call('leaf', [m.local.get(i, i32), m.i32.const(f)], i32);
  return m.block(null, [
    m.local.set(i, m.i32.const(0)),
    m.loop(loop, m.block(null, [
      m.i32.store(0, 4, m.i32.and(m.i32.add(m.local.get(a, i32), m.i32.shl(m.local.get(i, i32), m.i32.const(2))), m.i32.const(0xfffc)), m.local.get(i, i32)),
      m.i64.store8(0, 1, m.i32.and(m.local.get(i, i32), m.i32.const(0xffff)), m.local.get(x, binaryen.i64)),
      m.local.set(x, m.i64.add(m.local.get(x, binaryen.i64), m.i64.extend_u(callee))),
      m.global.set('counter', m.i32.add(m.global.get('counter', i32), m.i32.const(1))),
      m.local.set(i, m.i32.add(m.local.get(i, i32), m.i32.const(1))),
      m.br(loop, m.i32.lt_u(m.local.get(i, i32), m.local.get(b, i32))),
    ])),
    m.if(m.i32.eqz(m.local.get(a, i32)), m.i32.store16(0, 2, m.i32.const(8), m.i32.wrap(m.local.get(x, binaryen.i64)))),
    m.i32.load(0, 4, m.i32.const(0)),
  ], i32);
}

/**
 * What this host's own reading of an image yields for a VM of `options`' RAM and granularity: every
 * part of an InstrumentedImage except the module itself. Cheap (binaryen reads the image and counts;
 * no pass runs): a migration target that adopts a module a source offers (src/vmm/instrument-offer.ts)
 * takes all of this from here, never from the source.
 */
export interface ImageAnalysis {
  /** sha256 of the original (uninstrumented) image: its identity for snapshots and migration. */
  readonly imageSha256: string;
  readonly layout: MemoryLayout;
  readonly granularityBytes: number;
  /** The guest's declared initial memory, in wasm pages: the claimed size at boot. */
  readonly initialPages: number;
  /** How far memory.grow may claim: min(declared maximum, RAM). */
  readonly maxClaimPages: number;
  readonly globals: readonly ExportedGlobal[];
  readonly hasSelfcheck: boolean;
  /** The guest exports ferry_max_clock_gap_ns (its own record of the largest clock gap it saw). */
  readonly hasMaxClockGap: boolean;
  readonly deviceImports: readonly string[];
  readonly stats: Readonly<InstrumentStats>;
  /** The image's own exports with their kinds (the instrumented module keeps them all). */
  readonly imageExports: readonly { readonly name: string; readonly kind: string }[];
}

/** A read image and what was learned from it, for the transform (the binaryen module must be disposed). */
interface ReadImage {
  readonly mod: binaryen.Module;
  readonly analysis: Omit<ImageAnalysis, 'stats'>;
  /** binaryen's names of the mutable globals, in the order of `analysis.globals`. */
  readonly globalNames: readonly string[];
  readonly segments: readonly { readonly name: string; readonly data: Uint8Array; readonly dest: number | null }[];
}

/** Validation and analysis of `bytes` for a VM of `options`: everything before the rewrite. */
function readImage(bytes: Uint8Array, options: InstrumentOptions): ReadImage {
  validateGranularity(options.granularityBytes);
  const layout = computeLayout(options.ramBytes);
  const compiled = precheck(bytes);
  checkImportsAndExports(compiled);
  const imageSha256 = createHash('sha256').update(bytes).digest('hex');
  const imageExports = WebAssembly.Module.exports(compiled).map((e) => ({ name: e.name, kind: e.kind }));

  const mod = binaryen.readBinary(bytes);
  try {
    mod.setFeatures(FEATURES);
    if (!mod.hasMemory()) throw new FerryError('IMAGE_NO_MEMORY', 'guest declares no memory; a guest needs one memory (its RAM)');
    const memInfo = mod.getMemoryInfo();
    if (memInfo.is64) throw new FerryError('IMAGE_UNSUPPORTED_FEATURE', 'guest uses a 64-bit memory (memory64); Ferry guests use 32-bit memory');
    const initialPages = memInfo.initial;
    if (initialPages > layout.ramPages) {
      throw new FerryError('GUEST_MEMORY_TOO_LARGE',
        `guest needs ${formatBytes(initialPages * WASM_PAGE_BYTES)} of memory at start but the VM has ${formatBytes(layout.ramBytes)}; give the VM more memory (--memory)`,
        { guestInitialBytes: initialPages * WASM_PAGE_BYTES, ramBytes: layout.ramBytes });
    }
    const declaredMax = (memInfo as { max?: number }).max;
    const maxClaimPages = Math.min(declaredMax ?? layout.ramPages, layout.ramPages);

    // ABI version: an immutable i32 global with value 1.
    const abiExport = binaryen.getExportInfo(mod.getExport('ferry_abi_version'));
    const abiGlobal = binaryen.getGlobalInfo(mod.getGlobal(abiExport.value));
    const abiInit = binaryen.getExpressionInfo(abiGlobal.init) as { id: number; value?: unknown };
    if (abiGlobal.mutable || abiGlobal.type !== i32 || abiInit.id !== binaryen.ConstId) {
      throw new FerryError('IMAGE_BAD_EXPORT', 'guest export "ferry_abi_version" must be an immutable i32 global initialised to a constant');
    }
    if (abiInit.value !== GUEST_ABI_VERSION) {
      throw new FerryError('IMAGE_ABI_VERSION', `guest was built for Ferry guest ABI version ${String(abiInit.value)}; this runtime implements version ${GUEST_ABI_VERSION}`, { version: abiInit.value });
    }

    // Function signatures of exports and device imports.
    const exportedFunctions = [
      ...Object.entries(REQUIRED_FUNCTION_EXPORTS),
      ...Object.entries(OPTIONAL_FUNCTION_EXPORTS).filter(([name]) => imageExports.some((e) => e.name === name)),
    ];
    for (const [name, want] of exportedFunctions) {
      const fn = binaryen.getFunctionInfo(mod.getFunction(binaryen.getExportInfo(mod.getExport(name)).value));
      const got = sigOf(fn.params, fn.results);
      if (!sameSig(got, want)) {
        throw new FerryError('IMAGE_BAD_EXPORT', `guest export "${name}" has signature ${sigText(got)}; the ABI requires ${sigText(want)}`, { name });
      }
    }
    const deviceImports: string[] = [];
    for (let i = 0; i < mod.getNumFunctions(); i++) {
      const fn = binaryen.getFunctionInfo(mod.getFunctionByIndex(i));
      if (!fn.module) continue;
      const base = fn.base ?? '';
      const want = DEVICE_IMPORTS[base];
      assert(want !== undefined && fn.module === DEVICE_IMPORT_MODULE, 'imports were checked');
      const got = sigOf(fn.params, fn.results);
      if (!sameSig(got, want)) {
        throw new FerryError('IMAGE_UNSUPPORTED_IMPORT', `guest imports ferry.${base} with signature ${sigText(got)}; the device has ${sigText(want)}`, { name: base });
      }
      deviceImports.push(base);
    }

    // Globals: every internal mutable global is exported (by the transform) so per-vCPU state can be captured.
    const globals: ExportedGlobal[] = [];
    const globalNames: string[] = [];
    for (let i = 0; i < mod.getNumGlobals(); i++) {
      const g = binaryen.getGlobalInfo(mod.getGlobalByIndex(i));
      if (!g.mutable) continue;
      const type = typeName(g.type);
      if (type === null) {
        throw new FerryError('IMAGE_UNSUPPORTED_FEATURE', `guest has a mutable global "${g.name}" of a type that cannot be saved (only i32, i64, f32, f64)`, { global: g.name });
      }
      globals.push({ exportName: `${EXPORTED_GLOBAL_PREFIX}${globals.length}`, type });
      globalNames.push(g.name);
    }

    // Data segments: all become passive; the active ones' constant destinations must lie in the initial memory.
    const segments: { name: string; data: Uint8Array; dest: number | null }[] = [];
    const segModule = mod as unknown as { getNumDataSegments(): number; getDataSegmentByIndex(i: number): number; getDataSegmentInfo(ref: number): unknown };
    for (let i = 0; i < segModule.getNumDataSegments(); i++) {
      const info = segModule.getDataSegmentInfo(segModule.getDataSegmentByIndex(i)) as { name: string; offset: number | null; data: ArrayBuffer; passive: boolean };
      const data = new Uint8Array(info.data);
      if (info.passive) { segments.push({ name: info.name, data, dest: null }); continue; }
      if (typeof info.offset !== 'number') {
        throw new FerryError('IMAGE_UNSUPPORTED_FEATURE', `data segment ${info.name} has a non-constant offset; Ferry guests place data at constant addresses`);
      }
      const dest = info.offset >>> 0;
      if (dest + data.byteLength > initialPages * WASM_PAGE_BYTES) {
        throw new FerryError('IMAGE_INVALID', `data segment ${info.name} (${data.byteLength} B at ${dest}) lies outside the guest's initial memory`);
      }
      segments.push({ name: info.name, data, dest });
    }
    return {
      mod, globalNames, segments,
      analysis: {
        imageSha256, layout, granularityBytes: options.granularityBytes, initialPages, maxClaimPages, globals,
        hasSelfcheck: exportedFunctions.some(([n]) => n === 'ferry_selfcheck'),
        hasMaxClockGap: exportedFunctions.some(([n]) => n === 'ferry_max_clock_gap_ns'), deviceImports, imageExports,
      },
    };
  } catch (err) {
    mod.dispose();
    throw err;
  }
}

/** The guest's own functions (not imports), before any of ours is added. */
function guestFunctionsOf(mod: binaryen.Module): number[] {
  const guestFunctions: number[] = [];
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const ref = mod.getFunctionByIndex(i);
    if (!binaryen.getFunctionInfo(ref).module) guestFunctions.push(ref);
  }
  return guestFunctions;
}

/**
 * This host's analysis of an image for a VM of `options` without instrumenting it: the same checks
 * (the same FerryErrors) and the same numbers instrumentation would give, at a fraction of its cost
 * (no binaryen pass runs; the write sites are counted, not rewritten).
 */
export function analyzeImage(bytes: Uint8Array, options: Omit<InstrumentOptions, 'faultInjection'>): ImageAnalysis {
  const read = readImage(bytes, options);
  try {
    const stats: InstrumentStats = { stores: 0, atomicRmw: 0, simdLaneStores: 0, bulk: 0, grows: 0, sizes: 0 };
    const walker: Walker = {
      mod: read.mod, memName: '', layout: read.analysis.layout, shift: granularityShift(options.granularityBytes), dynamicShift: true,
      stats, faults: {}, siteCount: 0, countOnly: true,
    };
    for (const ref of guestFunctionsOf(read.mod)) visit(walker, binaryen.getFunctionInfo(ref).body);
    return { ...read.analysis, stats };
  } finally {
    read.mod.dispose();
  }
}

function instrumentUncached(bytes: Uint8Array, options: InstrumentOptions): InstrumentedImage {
  const { mod, analysis, globalNames, segments } = readImage(bytes, options);
  try {
    const { layout, maxClaimPages } = analysis;
    analysis.globals.forEach((g, i) => { mod.addGlobalExport(globalNames[i] ?? '', g.exportName); });

    const shift = granularityShift(options.granularityBytes);
    const memName = findMemoryName(mod);
    const stats: InstrumentStats = { stores: 0, atomicRmw: 0, simdLaneStores: 0, bulk: 0, grows: 0, sizes: 0 };
    const walker: Walker = {
      mod, memName, layout, shift, dynamicShift: options.faultInjection?.constantShift !== true, stats, faults: options.faultInjection ?? {}, siteCount: 0, countOnly: false,
    };

    // Walk the guest's own functions (before adding ours).
    const guestFunctions = guestFunctionsOf(mod);
    addRuntimeHelpers(walker, maxClaimPages);
    for (const ref of guestFunctions) {
      const body = binaryen.getFunctionInfo(ref).body;
      const next = visit(walker, body);
      if (next !== body) (binaryen as unknown as { Function: { setBody(f: number, b: number): void } }).Function.setBody(ref, next);
    }

    // Memory: an imported shared memory of the VM's physical size; data segments applied once by __ferry_init.
    const initBody: number[] = [];
    for (const seg of segments) {
      if (seg.dest === null) continue;
      initBody.push(mod.memory.init(seg.name, mod.i32.const(seg.dest), mod.i32.const(0), mod.i32.const(seg.data.byteLength), memName));
      initBody.push(mod.call('__ferry_mark_range', [mod.i32.const(seg.dest), mod.i32.const(seg.data.byteLength)], none));
    }
    const start = mod.getStart();
    if (start !== 0) {
      initBody.push(mod.call(binaryen.getFunctionInfo(start).name, [], none));
      mod.setStart(0);
    }
    mod.addFunction(INIT_EXPORT, none, none, [], mod.block(null, initBody, none));
    mod.addFunctionExport(INIT_EXPORT, INIT_EXPORT);
    mod.setMemory(layout.totalPages, layout.totalPages, null, segments.map((s) => ({ name: s.name, data: s.data, passive: true, offset: 0 })), true, false, memName);
    mod.addMemoryImport(memName, RUNTIME_IMPORT_MODULE, 'memory', true);

    // Inline every site helper into its one caller, and clean up.
    mod.runPasses(['inlining-optimizing']);
    if (!mod.validate()) {
      throw new FerryError('IMAGE_INVALID', 'guest image failed validation after instrumentation (an unsupported construct?)');
    }
    const binary = mod.emitBinary();
    let module: WebAssembly.Module;
    try {
      module = new WebAssembly.Module(binary);
    } catch (err) {
      throw new FerryError('IMAGE_INVALID', `instrumented guest image does not compile: ${(err as Error).message}`, {}, { cause: err });
    }
    return { ...analysis, module, binary, stats, build: options.faultInjection === undefined ? INSTRUMENTER_BUILD : null };
  } finally {
    mod.dispose();
  }
}
