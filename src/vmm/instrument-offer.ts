/**
 * Adopting an instrumented module made elsewhere (a migration source offers the one its VM runs),
 * instead of instrumenting the image here (binaryen's passes: 150–300 ms for a 17 KB guest, on a
 * migration's critical path).
 *
 * Nothing the runtime relies on is taken from the offer except the module's code: the layout, the
 * claimed-page bounds, the saved globals, the devices, the self-check exports and the statistics come
 * from this host's own analysis of the original image (analyzeImage: the checks instrumentation makes,
 * without its passes). The module is adopted only if it was made by this very instrumenter build, its
 * bytes are the ones announced, it compiles, and its interface is exactly the one this host's
 * instrumentation of that image has: the same imports (the runtime's shared memory of this VM's size,
 * the runtime's helper, the image's device imports, with their signatures), no start function, and
 * the image's exports plus `__ferry_init` and one mutable global per saved global, of its type. What the
 * code does inside that interface is checked afterwards: verifyAdoptedImage instruments the image here
 * and compares the bytes (docs/migration-protocol.md, "Instrumented module offer").
 *
 * A refusal is an answer, not an error: the caller instruments locally as before. An image this host
 * would refuse to instrument at all still throws (the FerryError instrumentImage would throw).
 */
import { createHash } from 'node:crypto';
import { formatBytes } from '../lib/units.js';
import {
  DEVICE_IMPORTS, DEVICE_IMPORT_MODULE, INIT_EXPORT, INSTRUMENTER_BUILD, RUNTIME_IMPORT_MODULE,
  analyzeImage, instrumentImage, type ImageAnalysis, type InstrumentOptions, type InstrumentedImage,
} from './instrument.js';
import { readWasmInterface, signatureText, type WasmExport, type WasmImport, type WasmInterface, type WasmSignature } from './wasm-interface.js';

/** An instrumented module as a source offers it. */
export interface InstrumentedOffer {
  /** The INSTRUMENTER_BUILD of the host that made it. */
  readonly build: string;
  /** sha256 of `binary`, 64 lowercase hex digits. */
  readonly sha256: string;
  readonly binary: Uint8Array;
}

export type OfferDecision =
  | { readonly accepted: true; readonly image: InstrumentedImage }
  | { readonly accepted: false; readonly reason: string };

/** The runtime's helper import every instrumented module has (src/vmm/instrument.ts, addRuntimeHelpers). */
const OOB_IMPORT: WasmSignature = { params: ['i32', 'i32', 'i32'], results: [] };
const RUNTIME_MEMORY_IMPORT = 'memory';
/** Signatures of the exports the vCPU worker and the VM call (besides the guest ABI's, checked by analyzeImage on the image). */
const RUNTIME_FUNCTION_EXPORTS: Readonly<Record<string, WasmSignature>> = {
  ferry_boot: { params: ['i32'], results: [] },
  ferry_vcpu_step: { params: ['i32', 'i32'], results: ['i32'] },
  [INIT_EXPORT]: { params: [], results: [] },
};
const OPTIONAL_RUNTIME_EXPORTS: Readonly<Record<string, { readonly signature: WasmSignature; readonly flag: 'hasSelfcheck' | 'hasMaxClockGap' }>> = {
  ferry_selfcheck: { signature: { params: [], results: ['i32'] }, flag: 'hasSelfcheck' },
  ferry_max_clock_gap_ns: { signature: { params: [], results: ['i64'] }, flag: 'hasMaxClockGap' },
};

/**
 * The offered module for `imageBytes` in a VM of `options`, if it passes every check; otherwise why
 * not (one line). `maxOfferBytes`: the largest module adopted (the protocol's bound).
 */
export function adoptInstrumentedOffer(
  imageBytes: Uint8Array, options: Omit<InstrumentOptions, 'faultInjection'>, offer: InstrumentedOffer, maxOfferBytes: number,
): OfferDecision {
  const refuse = (reason: string): OfferDecision => ({ accepted: false, reason });
  if (offer.binary.byteLength > maxOfferBytes) {
    return refuse(`the offered module is ${formatBytes(offer.binary.byteLength)}; at most ${formatBytes(maxOfferBytes)} is adopted`);
  }
  if (offer.build !== INSTRUMENTER_BUILD) return refuse(`it was made by instrumenter ${offer.build}; this host's is ${INSTRUMENTER_BUILD}`);
  const sha = createHash('sha256').update(offer.binary).digest('hex');
  if (sha !== offer.sha256) return refuse(`its bytes hash to ${sha.slice(0, 12)}…, not the announced ${offer.sha256.slice(0, 12)}…`);
  const analysis = analyzeImage(imageBytes, options); // throws for an image this host would not run at all
  let module: WebAssembly.Module;
  try {
    module = new WebAssembly.Module(offer.binary);
  } catch (err) {
    return refuse(`it does not compile: ${(err as Error).message}`);
  }
  let iface: WasmInterface;
  try {
    iface = readWasmInterface(offer.binary);
  } catch (err) {
    return refuse(`its interface cannot be read: ${(err as Error).message}`);
  }
  const problem = interfaceProblem(iface, analysis);
  if (problem !== null) return refuse(problem);
  return { accepted: true, image: { ...analysis, module, binary: new Uint8Array(offer.binary), build: offer.build } };
}

/** What is wrong with the module's interface against this host's analysis of the image, or null. */
export function interfaceProblem(iface: WasmInterface, analysis: ImageAnalysis): string | null {
  const importProblem = compareImports(iface.imports, expectedImports(analysis));
  if (importProblem !== null) return importProblem;
  if (iface.hasStart) return 'it has a start function (an instrumented module runs its start from __ferry_init)';
  return exportProblem(iface.exports, analysis);
}

function importText(i: WasmImport): string {
  if (i.kind === 'function') return `function ${i.module}.${i.name} ${signatureText(i.signature)}`;
  if (i.kind === 'memory') return `memory ${i.module}.${i.name} ${i.limits.minPages}..${i.limits.maxPages ?? 'unbounded'} pages${i.limits.shared ? ' shared' : ''}`;
  return `${i.kind} ${i.module}.${i.name}`;
}

/** What this host's instrumentation of the image imports: its device imports, the runtime's helper and memory. */
function expectedImports(analysis: ImageAnalysis): WasmImport[] {
  const devices = analysis.deviceImports.map((name): WasmImport => {
    const sig = DEVICE_IMPORTS[name];
    return { module: DEVICE_IMPORT_MODULE, name, kind: 'function', signature: { params: [...(sig?.params ?? [])], results: [...(sig?.results ?? [])] } };
  });
  const pages = analysis.layout.totalPages;
  return [
    ...devices,
    { module: RUNTIME_IMPORT_MODULE, name: 'oob', kind: 'function', signature: OOB_IMPORT },
    { module: RUNTIME_IMPORT_MODULE, name: RUNTIME_MEMORY_IMPORT, kind: 'memory', limits: { minPages: pages, maxPages: pages, shared: true } },
  ];
}

/** The imports must be exactly the expected ones (as a multiset: order is irrelevant to instantiation). */
function compareImports(actual: readonly WasmImport[], expected: readonly WasmImport[]): string | null {
  const remaining = new Map<string, number>();
  for (const e of expected) remaining.set(importText(e), (remaining.get(importText(e)) ?? 0) + 1);
  for (const a of actual) {
    const text = importText(a);
    const n = remaining.get(text) ?? 0;
    if (n === 0) return `it imports ${text}, which this host's instrumentation of the image does not`;
    remaining.set(text, n - 1);
  }
  for (const [text, n] of remaining) if (n > 0) return `it does not import ${text}, which this host's instrumentation of the image does`;
  return null;
}

/** Exactly the image's exports, __ferry_init and the saved globals' exports; the runtime's with the right signatures and types. */
function exportProblem(exports: readonly WasmExport[], analysis: ImageAnalysis): string | null {
  const byName = new Map(exports.map((e) => [e.name, e]));
  if (byName.size !== exports.length) return 'it exports a name twice';
  const expected = new Map<string, string>(analysis.imageExports.map((e) => [e.name, e.kind]));
  expected.set(INIT_EXPORT, 'function');
  for (const g of analysis.globals) expected.set(g.exportName, 'global');
  for (const [name, kind] of expected) {
    const e = byName.get(name);
    if (e === undefined) return `it does not export "${name}" (a ${kind})`;
    if (e.kind !== kind) return `its export "${name}" is a ${e.kind}, not a ${kind}`;
  }
  for (const e of exports) if (!expected.has(e.name)) return `it exports "${e.name}", which this host's instrumentation of the image does not`;
  const wantFunctions: [string, WasmSignature][] = Object.entries(RUNTIME_FUNCTION_EXPORTS);
  for (const [name, { signature, flag }] of Object.entries(OPTIONAL_RUNTIME_EXPORTS)) if (analysis[flag]) wantFunctions.push([name, signature]);
  for (const [name, want] of wantFunctions) {
    const e = byName.get(name);
    if (e?.kind !== 'function') return `it does not export the function "${name}"`;
    if (signatureText(e.signature) !== signatureText(want)) return `its export "${name}" has signature ${signatureText(e.signature)}, not ${signatureText(want)}`;
  }
  for (const g of analysis.globals) {
    const e = byName.get(g.exportName);
    if (e?.kind !== 'global') return `it does not export the global "${g.exportName}"`;
    if (e.type !== g.type || !e.mutable) return `its export "${g.exportName}" is ${e.mutable ? 'a mutable' : 'an immutable'} ${e.type} global, not a mutable ${g.type}`;
  }
  return null;
}

/** The outcome of checking an adopted module against this host's own instrumentation. */
export interface AdoptedCheck {
  readonly same: boolean;
  /** This host's build of the image, now in its instrument cache. */
  readonly local: InstrumentedImage;
}

/**
 * Instruments the image here (the result goes into this host's instrument cache, so the next VM of
 * it needs no offer) and compares the bytes with the adopted module's. Synchronous and as costly as
 * instrumentation: the caller runs it off any critical path.
 */
export function verifyAdoptedImage(imageBytes: Uint8Array, options: Omit<InstrumentOptions, 'faultInjection'>, adopted: InstrumentedImage): AdoptedCheck {
  const local = instrumentImage(imageBytes, options);
  return { same: Buffer.compare(local.binary, adopted.binary) === 0, local };
}
