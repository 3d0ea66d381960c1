/**
 * The instrumenter on real modules: every store kind fires exactly the regions it writes (including
 * a write straddling two regions), at every granularity; the guest cannot write beyond RAM; bad
 * images are refused with stable codes. Instances run on the test's thread over a real shared memory.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { guestWat, wat2wasm } from '../helpers/wat.js';
import { instrumentImage, type FaultInjection, type InstrumentedImage } from '../../src/vmm/instrument.js';
import { MAX_IMAGE_BYTES } from '../../src/lib/limits.js';
import { isFerryError, type FerryErrorCode } from '../../src/lib/errors.js';
import { KiB, MiB } from '../../src/lib/units.js';
import { CONTROL_TRACE_SHIFT_OFFSET, SPLIT_MARK } from '../../src/vmm/layout.js';

const RAM = 8 * MiB;

/** One export per write kind: `(param $a i32)` writes `size` bytes at $a. */
const KINDS: readonly { name: string; size: number; body: string; atomic?: boolean }[] = [
  { name: 'i32.store', size: 4, body: '(i32.store (local.get $a) (i32.const -1))' },
  { name: 'i32.store8', size: 1, body: '(i32.store8 (local.get $a) (i32.const -1))' },
  { name: 'i32.store16', size: 2, body: '(i32.store16 (local.get $a) (i32.const -1))' },
  { name: 'i64.store', size: 8, body: '(i64.store (local.get $a) (i64.const -1))' },
  { name: 'i64.store8', size: 1, body: '(i64.store8 (local.get $a) (i64.const -1))' },
  { name: 'i64.store16', size: 2, body: '(i64.store16 (local.get $a) (i64.const -1))' },
  { name: 'i64.store32', size: 4, body: '(i64.store32 (local.get $a) (i64.const -1))' },
  { name: 'f32.store', size: 4, body: '(f32.store (local.get $a) (f32.const -1))' },
  { name: 'f64.store', size: 8, body: '(f64.store (local.get $a) (f64.const -1))' },
  { name: 'v128.store', size: 16, body: '(v128.store (local.get $a) (v128.const i32x4 -1 -1 -1 -1))' },
  { name: 'v128.store8_lane', size: 1, body: '(v128.store8_lane 3 (local.get $a) (v128.const i32x4 -1 -1 -1 -1))' },
  { name: 'v128.store16_lane', size: 2, body: '(v128.store16_lane 1 (local.get $a) (v128.const i32x4 -1 -1 -1 -1))' },
  { name: 'v128.store32_lane', size: 4, body: '(v128.store32_lane 2 (local.get $a) (v128.const i32x4 -1 -1 -1 -1))' },
  { name: 'v128.store64_lane', size: 8, body: '(v128.store64_lane 1 (local.get $a) (v128.const i32x4 -1 -1 -1 -1))' },
  { name: 'i32.atomic.store', size: 4, atomic: true, body: '(i32.atomic.store (local.get $a) (i32.const -1))' },
  { name: 'i32.atomic.store8', size: 1, atomic: true, body: '(i32.atomic.store8 (local.get $a) (i32.const -1))' },
  { name: 'i64.atomic.store', size: 8, atomic: true, body: '(i64.atomic.store (local.get $a) (i64.const -1))' },
  { name: 'i64.atomic.store16', size: 2, atomic: true, body: '(i64.atomic.store16 (local.get $a) (i64.const -1))' },
  { name: 'i32.atomic.rmw.add', size: 4, atomic: true, body: '(drop (i32.atomic.rmw.add (local.get $a) (i32.const 1)))' },
  { name: 'i64.atomic.rmw.xchg', size: 8, atomic: true, body: '(drop (i64.atomic.rmw.xchg (local.get $a) (i64.const -1)))' },
  { name: 'i32.atomic.rmw8.or_u', size: 1, atomic: true, body: '(drop (i32.atomic.rmw8.or_u (local.get $a) (i32.const 1)))' },
  { name: 'i64.atomic.rmw32.sub_u', size: 4, atomic: true, body: '(drop (i64.atomic.rmw32.sub_u (local.get $a) (i64.const 1)))' },
  { name: 'i32.atomic.rmw.cmpxchg', size: 4, atomic: true, body: '(drop (i32.atomic.rmw.cmpxchg (local.get $a) (i32.load (local.get $a)) (i32.const -1)))' },
  { name: 'i64.atomic.rmw16.cmpxchg_u', size: 2, atomic: true, body: '(drop (i64.atomic.rmw16.cmpxchg_u (local.get $a) (i64.load16_u (local.get $a)) (i64.const -1)))' },
  { name: 'memory.fill', size: 300, body: '(memory.fill (local.get $a) (i32.const 255) (i32.const 300))' },
  { name: 'memory.copy', size: 300, body: '(memory.copy (local.get $a) (i32.const 16) (i32.const 300))' },
  { name: 'memory.init', size: 5, body: '(memory.init $seg (local.get $a) (i32.const 0) (i32.const 5))' },
  { name: 'store with offset', size: 4, body: '(i32.store offset=4096 (i32.sub (local.get $a) (i32.const 4096)) (i32.const -1))' },
];

function kindsModule(): string {
  const fns = KINDS.map((k, i) => `(func (export "w${i}") (param $a i32) ${k.body})`).join('\n');
  return guestWat({
    memory: `${RAM / (64 * KiB)}`,
    extra: `(data $seg "ferry") (global $g (mut i64) (i64.const 7))
      ${fns}
      (func (export "grow") (param $n i32) (result i32) (memory.grow (local.get $n)))
      (func (export "size") (result i32) (memory.size))
      (func (export "store_at") (param $a i32) (param $v i32) (i32.store (local.get $a) (local.get $v)))`,
  });
}

interface Harness {
  readonly image: InstrumentedImage;
  readonly memory: WebAssembly.Memory;
  readonly exports: WebAssembly.Exports;
  readonly bitmap: Uint8Array;
  readonly regions: number;
}

async function harness(granularityBytes: number, ramBytes = RAM, source = kindsModule(), faultInjection: FaultInjection = {}): Promise<Harness> {
  const image = instrumentImage(await wat2wasm(source), { ramBytes, granularityBytes, faultInjection });
  const memory = new WebAssembly.Memory({ initial: image.layout.totalPages, maximum: image.layout.totalPages, shared: true });
  new Int32Array(memory.buffer, image.layout.controlOffset, 1)[0] = image.initialPages;
  // The trace shift word the runtime keeps in the control page (read by every instrumented write).
  new Int32Array(memory.buffer, image.layout.controlOffset + CONTROL_TRACE_SHIFT_OFFSET, 1)[0] = Math.log2(granularityBytes);
  const instance = new WebAssembly.Instance(image.module, {
    ferry_rt: {
      memory,
      oob: (p: number, off: number, size: number) => { throw new WebAssembly.RuntimeError(`oob ${p >>> 0}+${off >>> 0} size ${size >>> 0}`); },
    },
  });
  const regions = Math.ceil(ramBytes / granularityBytes);
  return { image, memory, exports: instance.exports, bitmap: new Uint8Array(memory.buffer, image.layout.bitmapOffset, regions), regions };
}

function fired(h: Harness): number[] {
  const out: number[] = [];
  h.bitmap.forEach((b, r) => { if (b === 0) out.push(r); });
  return out;
}

function call(h: Harness, name: string, ...args: number[]): number {
  return (h.exports[name] as (...a: number[]) => number)(...args);
}

async function rejects(source: Uint8Array | Promise<Uint8Array>, code: FerryErrorCode, ramBytes = RAM): Promise<void> {
  const bytes = await source;
  assert.throws(() => instrumentImage(bytes, { ramBytes, granularityBytes: 4 * KiB }), (err: unknown) => {
    assert.ok(isFerryError(err), `expected a FerryError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.ok(err.message.length > 20, 'message says what to do');
    return true;
  });
}

describe('instrumentation: every write kind fires exactly the regions it writes', () => {
  for (const granularityBytes of [4 * KiB, 64 * KiB, 2 * MiB]) {
    it(`granularity ${granularityBytes / KiB} KiB`, async () => {
      const h = await harness(granularityBytes);
      const G = granularityBytes;
      KINDS.forEach((k, i) => {
        // Inside region 1, ending exactly at its end, at the start of region 2, and (non-atomic
        // multi-byte kinds; atomics must be aligned) straddling regions 1 and 2.
        const addrs = [G + 64, 2 * G - k.size, 2 * G];
        if (!k.atomic && k.size > 1) addrs.push(2 * G - Math.floor(k.size / 2));
        for (const addr of addrs) {
          const expect: number[] = [];
          for (let r = Math.floor(addr / G); r <= Math.floor((addr + k.size - 1) / G); r++) expect.push(r);
          h.bitmap.fill(1);
          call(h, `w${i}`, addr);
          assert.deepEqual(fired(h), expect, `${k.name} at ${addr} (granularity ${G})`);
        }
        if (!k.atomic && k.size > 1) assert.equal(Math.floor((2 * G - Math.floor(k.size / 2)) / G), 1, 'straddle case starts in region 1');
        // Not armed: the write leaves the bitmap untouched (no bitmap traffic when traces are off).
        h.bitmap.fill(0);
        call(h, `w${i}`, G + 128);
        assert.ok(h.bitmap.every((b) => b === 0), `${k.name} wrote the bitmap while traces were off`);
      });
    });
  }

  it('the straddle check has teeth: first-region-only marking (a known bug) misses region 2', async () => {
    const h = await harness(4 * KiB, RAM, kindsModule(), { markFirstRegionOnly: true });
    h.bitmap.fill(1);
    call(h, 'store_at', 2 * 4 * KiB - 2, -1);
    assert.deepEqual(fired(h), [1], 'the broken tracker fires only the first region');
  });

  it('split regions (adaptive tracing) fire 4 KiB pages in the fine bitmap, never the coarse byte', async () => {
    const G = 64 * KiB;
    const h = await harness(G);
    const fine = new Uint8Array(h.memory.buffer, h.image.layout.fineBitmapOffset, RAM / (4 * KiB));
    const firedPages = (): number[] => { const out: number[] = []; fine.forEach((b, p) => { if (b === 0 && p >= 16 && p < 32) out.push(p); }); return out; };
    const reset = (): void => { h.bitmap.fill(1); h.bitmap[1] = SPLIT_MARK; fine.fill(1); };
    // Region 1 (pages 16..31) is split; region 2 is not.
    reset();
    call(h, 'store_at', G + 3 * 4096 + 8, 7);
    assert.deepEqual(firedPages(), [19]);
    assert.equal(h.bitmap[1], SPLIT_MARK, 'the coarse byte of a split region stays');
    reset();
    call(h, 'store_at', G + 5 * 4096 - 2, 7); // straddles pages 20 and 21 inside region 1
    assert.deepEqual(firedPages(), [20, 21]);
    reset();
    call(h, 'store_at', 2 * G - 2, 7); // straddles the last page of region 1 and region 2
    assert.deepEqual(firedPages(), [31]);
    assert.deepEqual(fired(h), [2], 'region 2 fires at coarse granularity');
    reset();
    const fillIndex = KINDS.findIndex((k) => k.name === 'memory.fill');
    call(h, `w${fillIndex}`, G + 6 * 4096 - 100); // 300 bytes over pages 21 and 22
    assert.deepEqual(firedPages(), [21, 22]);
  });

  it('the writes themselves happen (instrumentation keeps semantics)', async () => {
    const h = await harness(4 * KiB);
    const view = new DataView(h.memory.buffer);
    call(h, 'store_at', 5000, 0x12345678);
    assert.equal(view.getUint32(5000, true), 0x12345678);
    const fillIndex = KINDS.findIndex((k) => k.name === 'memory.fill');
    call(h, `w${fillIndex}`, 10_000);
    assert.equal(new Uint8Array(h.memory.buffer, 10_000, 300).every((b) => b === 255), true);
    const initIndex = KINDS.findIndex((k) => k.name === 'memory.init');
    call(h, `w${initIndex}`, 20_000);
    assert.equal(Buffer.from(h.memory.buffer, 20_000, 5).toString(), 'ferry');
  });

  it('memory.grow claims within RAM, marks the claimed range, and fails with -1 beyond it', async () => {
    const source = guestWat({ memory: '2', extra: '(func (export "grow") (param $n i32) (result i32) (memory.grow (local.get $n))) (func (export "size") (result i32) (memory.size))' });
    const h = await harness(64 * KiB, 16 * 64 * KiB, source);
    assert.equal(call(h, 'size'), 2);
    h.bitmap.fill(1);
    assert.equal(call(h, 'grow', 3), 2);
    assert.equal(call(h, 'size'), 5);
    assert.deepEqual(fired(h), [2, 3, 4]);
    assert.equal(call(h, 'grow', 12), -1, 'beyond RAM');
    assert.equal(call(h, 'size'), 5, 'a failed grow changes nothing');
    assert.equal(call(h, 'grow', 11), 5);
    assert.equal(call(h, 'grow', 1), -1);
    assert.equal(call(h, 'grow', 0), 16);
  });

  it('a declared maximum below RAM caps memory.grow', async () => {
    const source = guestWat({ memory: '1 3', extra: '(func (export "grow") (param $n i32) (result i32) (memory.grow (local.get $n)))' });
    const h = await harness(64 * KiB, 16 * 64 * KiB, source);
    assert.equal(call(h, 'grow', 2), 1);
    assert.equal(call(h, 'grow', 1), -1);
  });
});

describe('instrumentation: the guest cannot write beyond RAM', () => {
  it('stores, bulk writes and offset overflows into the reserved region trap and change nothing', async () => {
    const h = await harness(4 * KiB);
    const reserved = new Uint8Array(h.memory.buffer, RAM, h.image.layout.totalBytes - RAM);
    const before = Buffer.from(reserved);
    const bitmapAt = h.image.layout.bitmapOffset;
    assert.throws(() => call(h, 'store_at', bitmapAt, 0x01010101), /oob/);
    assert.throws(() => call(h, 'store_at', RAM - 2, 1), /oob/, 'a store straddling the end of RAM');
    assert.throws(() => call(h, 'store_at', h.image.layout.controlOffset, 1000), /oob/, 'the claimed-pages word');
    const fill = KINDS.findIndex((k) => k.name === 'memory.fill');
    assert.throws(() => call(h, `w${fill}`, RAM - 100), /oob/);
    const copy = KINDS.findIndex((k) => k.name === 'memory.copy');
    assert.throws(() => call(h, `w${copy}`, bitmapAt), /oob/);
    const withOffset = KINDS.findIndex((k) => k.name === 'store with offset');
    assert.throws(() => call(h, `w${withOffset}`, RAM), /oob/, 'offset immediate pushes the address out');
    const atomic = KINDS.findIndex((k) => k.name === 'i64.atomic.rmw.xchg');
    assert.throws(() => call(h, `w${atomic}`, bitmapAt), /oob/);
    const lane = KINDS.findIndex((k) => k.name === 'v128.store64_lane');
    assert.throws(() => call(h, `w${lane}`, RAM - 4), /oob/);
    assert.ok(Buffer.from(reserved).equals(before), 'reserved region unchanged');
    assert.equal(new Uint8Array(h.memory.buffer, RAM - 100, 100).every((b) => b === 0), true, 'a rejected fill wrote nothing');
    call(h, 'store_at', RAM - 4, 7);
    assert.equal(new DataView(h.memory.buffer).getUint32(RAM - 4, true), 7, 'the last word of RAM is writable');
  });
});

describe('instrumentation: image validation', () => {
  it('refuses what is not a wasm module', async () => {
    await rejects(new Uint8Array([1, 2, 3]), 'IMAGE_NOT_WASM');
    await rejects(new TextEncoder().encode('#!/bin/sh\necho not wasm\n'), 'IMAGE_NOT_WASM');
    await rejects(new Uint8Array([0, 0x61, 0x73, 0x6d, 0x0d, 0, 1, 0]), 'IMAGE_NOT_WASM');
    const truncated = (await wat2wasm(guestWat())).slice(0, 30);
    await rejects(truncated, 'IMAGE_INVALID');
    const big = new Uint8Array(MAX_IMAGE_BYTES + 1);
    big.set([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);
    await rejects(big, 'IMAGE_TOO_LARGE');
  });

  it('refuses missing or malformed ABI exports', async () => {
    await rejects(wat2wasm('(module (memory 1) (global (export "ferry_abi_version") i32 (i32.const 1)) (func (export "ferry_boot") (param i32)))'), 'IMAGE_MISSING_EXPORT');
    await rejects(wat2wasm('(module (memory 1) (func (export "ferry_boot") (param i32)) (func (export "ferry_vcpu_step") (param i32 i32) (result i32) (i32.const 0)))'), 'IMAGE_MISSING_EXPORT');
    await rejects(wat2wasm(guestWat().replace('(param $vcpu i32) (param $budget i32) (result i32)', '(param $vcpu i32) (param $budget i32) (result i64)').replace('(i32.const 2)', '(i64.const 2)')), 'IMAGE_BAD_EXPORT');
    await rejects(wat2wasm(guestWat().replace('(global (export "ferry_abi_version") i32 (i32.const 1))', '(global (export "ferry_abi_version") i32 (i32.const 2))')), 'IMAGE_ABI_VERSION');
    await rejects(wat2wasm(guestWat().replace('(global (export "ferry_abi_version") i32 (i32.const 1))', '(global (export "ferry_abi_version") (mut i32) (i32.const 1))')), 'IMAGE_BAD_EXPORT');
    await rejects(wat2wasm(guestWat({ extra: '(func (export "__ferry_init"))' })), 'IMAGE_BAD_EXPORT');
    // Optional exports are checked when present.
    await rejects(wat2wasm(guestWat({ extra: '(func (export "ferry_selfcheck") (result i64) (i64.const 0))' })), 'IMAGE_BAD_EXPORT');
    await rejects(wat2wasm(guestWat({ extra: '(func (export "ferry_max_clock_gap_ns") (result i32) (i32.const 0))' })), 'IMAGE_BAD_EXPORT');
  });

  it('refuses imports Ferry does not provide, and device imports with the wrong signature', async () => {
    await rejects(wat2wasm(guestWat({ imports: '(import "env" "abort" (func (param i32 i32 i32 i32)))' })), 'IMAGE_UNSUPPORTED_IMPORT');
    await rejects(wat2wasm(guestWat({ imports: '(import "ferry" "reboot" (func))' })), 'IMAGE_UNSUPPORTED_IMPORT');
    await rejects(wat2wasm(guestWat({ imports: '(import "ferry" "clock_ns" (func (result i32)))' })), 'IMAGE_UNSUPPORTED_IMPORT');
    await rejects(wat2wasm(guestWat({ imports: '(import "env" "g" (global i32))' })), 'IMAGE_UNSUPPORTED_IMPORT');
  });

  it('refuses a guest that needs more memory than the VM has, and a module without memory', async () => {
    await rejects(wat2wasm(guestWat({ memory: '200' })), 'GUEST_MEMORY_TOO_LARGE', 64 * 64 * KiB);
    await rejects(wat2wasm('(module (global (export "ferry_abi_version") i32 (i32.const 1)) (func (export "ferry_boot") (param i32)) (func (export "ferry_vcpu_step") (param i32 i32) (result i32) (i32.const 2)))'), 'IMAGE_NO_MEMORY');
  });

  it('refuses invalid VM sizes and granularities', async () => {
    const bytes = await wat2wasm(guestWat());
    for (const [ramBytes, granularityBytes] of [[1000, 4096], [0, 4096], [64 * KiB, 3000], [64 * KiB, 1024], [64 * KiB, 4 * MiB]] as const) {
      assert.throws(() => instrumentImage(bytes, { ramBytes, granularityBytes }), (err: unknown) => isFerryError(err, 'VM_CONFIG_INVALID'));
    }
  });

  it('exports internal mutable globals for state capture', async () => {
    const h = await harness(4 * KiB);
    assert.deepEqual(h.image.globals.map((g) => g.type), ['i64']);
    assert.equal((h.exports[h.image.globals[0]?.exportName ?? ''] as WebAssembly.Global).value, 7n);
  });
});
