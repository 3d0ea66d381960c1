/**
 * Adopting an instrumented module offered by a migration source (src/vmm/instrument-offer.ts): the
 * real offer (the dirtier's, instrumented here) is accepted with everything the runtime needs from this
 * host's own analysis; every kind of bad offer is refused with a reason that says what is wrong.
 * Hostile modules are real instrumented modules of *other* images (an extra or a missing device
 * import, a missing export, another RAM size), so they compile and only the interface check can tell.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { guestImagePath } from '../helpers/guests.js';
import { guestWat, wat2wasm } from '../helpers/wat.js';
import { KiB, MiB } from '../../src/lib/units.js';
import {
  INSTRUMENTER_BUILD, analyzeImage, cachedInstrumentation, clearInstrumentCache, instrumentImage, type InstrumentedImage,
} from '../../src/vmm/instrument.js';
import { adoptInstrumentedOffer, interfaceProblem, verifyAdoptedImage, type InstrumentedOffer, type OfferDecision } from '../../src/vmm/instrument-offer.js';
import { readWasmInterface, type WasmExport, type WasmSignature } from '../../src/vmm/wasm-interface.js';

const OPTIONS = { ramBytes: 16 * MiB, granularityBytes: 4 * KiB };
const BOUND = 4 * MiB;

function offerOf(binary: Uint8Array, build = INSTRUMENTER_BUILD): InstrumentedOffer {
  return { build, sha256: createHash('sha256').update(binary).digest('hex'), binary };
}

function refused(decision: OfferDecision, reason: RegExp): void {
  assert.equal(decision.accepted, false, 'the offer is refused');
  if (!decision.accepted) assert.match(decision.reason, reason);
}

/** Everything but the module (compiled objects do not compare). */
function withoutModule(image: InstrumentedImage): Record<string, unknown> {
  return Object.fromEntries(Object.entries(image).filter(([k]) => k !== 'module'));
}

describe('adopting an offered instrumented module', () => {
  it('accepts the real offer, with the layout, globals, devices and stats of this host\'s own analysis', async () => {
    const image = await readFile(guestImagePath('dirtier'));
    const source = instrumentImage(image, OPTIONS);
    const decision = adoptInstrumentedOffer(image, OPTIONS, offerOf(source.binary), BOUND);
    assert.ok(decision.accepted, decision.accepted ? '' : decision.reason);
    assert.deepEqual(withoutModule(decision.image), withoutModule(source));
    // The analysis alone gives what instrumentation gives, the stats included.
    const analysed = Object.fromEntries(Object.entries(source).filter(([k]) => !['module', 'binary', 'build'].includes(k)));
    assert.deepEqual(analyzeImage(image, OPTIONS), analysed);
  });

  it('refuses an offer made by another instrumenter build', async () => {
    const image = await readFile(guestImagePath('dirtier'));
    const binary = instrumentImage(image, OPTIONS).binary;
    refused(adoptInstrumentedOffer(image, OPTIONS, offerOf(binary, 'ferry-instrument/0+binaryen@1.0.0'), BOUND),
      /made by instrumenter ferry-instrument\/0\+binaryen@1\.0\.0; this host's is ferry-instrument\//);
  });

  it('refuses bytes that do not hash to the announced sha256', async () => {
    const image = await readFile(guestImagePath('dirtier'));
    const binary = instrumentImage(image, OPTIONS).binary;
    const offer = { ...offerOf(binary), sha256: '0'.repeat(64) };
    refused(adoptInstrumentedOffer(image, OPTIONS, offer, BOUND), /hash to [0-9a-f]{12}…, not the announced 000000000000…/);
  });

  it('refuses garbage bytes (they do not compile)', async () => {
    const image = await readFile(guestImagePath('dirtier'));
    const garbage = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 0xff, 0xff, 0xff]);
    refused(adoptInstrumentedOffer(image, OPTIONS, offerOf(garbage), BOUND), /does not compile/);
  });

  it('refuses an offer over the size bound', async () => {
    const image = await readFile(guestImagePath('dirtier'));
    const binary = instrumentImage(image, OPTIONS).binary;
    refused(adoptInstrumentedOffer(image, OPTIONS, offerOf(binary), binary.byteLength - 1), /is \d.*; at most .* is adopted/);
  });

  it('refuses a module with an import this host\'s instrumentation of the image does not have', async () => {
    const plain = await wat2wasm(guestWat());
    const withClock = await wat2wasm(guestWat({ imports: '(import "ferry" "clock_ns" (func $clock (result i64)))' }));
    refused(adoptInstrumentedOffer(plain, OPTIONS, offerOf(instrumentImage(withClock, OPTIONS).binary), BOUND),
      /it imports function ferry\.clock_ns \(\) -> \(i64\), which this host's instrumentation of the image does not/);
  });

  it('refuses a module without an import this host\'s instrumentation of the image has', async () => {
    const plain = await wat2wasm(guestWat());
    const withConsole = await wat2wasm(guestWat({ imports: '(import "ferry" "console_write" (func $w (param i32 i32)))' }));
    refused(adoptInstrumentedOffer(withConsole, OPTIONS, offerOf(instrumentImage(plain, OPTIONS).binary), BOUND),
      /does not import function ferry\.console_write \(i32, i32\) -> \(\)/);
  });

  it('refuses a module made for another RAM size (its memory import differs)', async () => {
    const plain = await wat2wasm(guestWat());
    const other = instrumentImage(plain, { ...OPTIONS, ramBytes: 32 * MiB }).binary;
    refused(adoptInstrumentedOffer(plain, OPTIONS, offerOf(other), BOUND), /memory ferry_rt\.memory \d+\.\.\d+ pages shared/);
  });

  it('refuses a module missing an export the runtime needs', async () => {
    const selfcheck = '(func (export "ferry_selfcheck") (result i32) (i32.const 0))';
    const withCheck = await wat2wasm(guestWat({ extra: selfcheck }));
    const without = await wat2wasm(guestWat());
    refused(adoptInstrumentedOffer(withCheck, OPTIONS, offerOf(instrumentImage(without, OPTIONS).binary), BOUND),
      /does not export "ferry_selfcheck" \(a function\)/);
  });

  it('refuses a module with an export of its own or a saved global of the wrong type', async () => {
    const counter = '(global $n (mut i64) (i64.const 0))';
    const image = await wat2wasm(guestWat({ extra: counter }));
    const extra = await wat2wasm(guestWat({ extra: `${counter} (func (export "more") (result i32) (i32.const 0))` }));
    refused(adoptInstrumentedOffer(image, OPTIONS, offerOf(instrumentImage(extra, OPTIONS).binary), BOUND), /exports "more", which this host's instrumentation/);
    const i32Global = await wat2wasm(guestWat({ extra: '(global $n (mut i32) (i32.const 0))' }));
    refused(adoptInstrumentedOffer(image, OPTIONS, offerOf(instrumentImage(i32Global, OPTIONS).binary), BOUND),
      /export "__ferry_g0" is a mutable i32 global, not a mutable i64/);
  });

  it('refuses a module with a start function, or a runtime export of the wrong signature', async () => {
    const image = await readFile(guestImagePath('dirtier'));
    const binary = instrumentImage(image, OPTIONS).binary;
    const analysis = analyzeImage(image, OPTIONS);
    const iface = readWasmInterface(binary);
    assert.equal(interfaceProblem(iface, analysis), null);
    assert.match(interfaceProblem({ ...iface, hasStart: true }, analysis) ?? '', /has a start function/);
    const narrow: WasmSignature = { params: ['i32'], results: ['i32'] };
    const exports = iface.exports.map((e): WasmExport => (e.name === 'ferry_vcpu_step' && e.kind === 'function' ? { ...e, signature: narrow } : e));
    assert.match(interfaceProblem({ ...iface, exports }, analysis) ?? '', /"ferry_vcpu_step" has signature \(i32\) -> \(i32\), not \(i32, i32\) -> \(i32\)/);
  });

  it('reads a start section, memory limits and global types from a binary', async () => {
    const bytes = await wat2wasm(`(module
      (import "m" "mem" (memory 2 5))
      (global $g (export "g") (mut i64) (i64.const 11))
      (func $s) (start $s))`);
    const iface = readWasmInterface(bytes);
    assert.equal(iface.hasStart, true);
    assert.deepEqual(iface.imports, [{ module: 'm', name: 'mem', kind: 'memory', limits: { minPages: 2, maxPages: 5, shared: false } }]);
    assert.deepEqual(iface.exports, [{ name: 'g', kind: 'global', type: 'i64', mutable: true }]);
  });

  it('verifies an adopted module against this host\'s own build, and caches that build', async () => {
    const image = await readFile(guestImagePath('dirtier'));
    const source = instrumentImage(image, OPTIONS);
    clearInstrumentCache(); // a target that never saw the image
    const decision = adoptInstrumentedOffer(image, OPTIONS, offerOf(source.binary), BOUND);
    assert.ok(decision.accepted);
    assert.equal(cachedInstrumentation(source.imageSha256, OPTIONS), undefined, 'adopting does not fill the cache');
    assert.equal(verifyAdoptedImage(image, OPTIONS, decision.image).same, true);
    assert.ok(cachedInstrumentation(source.imageSha256, OPTIONS) !== undefined, 'the verification cached its build');
    // A module that passed the interface check but whose code differs is reported as different.
    const tampered = new Uint8Array(decision.image.binary);
    tampered[tampered.length - 1] = (tampered[tampered.length - 1] ?? 0) ^ 1;
    assert.equal(verifyAdoptedImage(image, OPTIONS, { ...decision.image, binary: tampered }).same, false);
  });
});
