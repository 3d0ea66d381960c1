/**
 * The guest block device on real worker threads and real files: a WAT guest submits the
 * descriptors the test places in its RAM (a doorbell word), the main thread's BlockService does
 * the I/O on a LocalFile, completions arrive in the guest's status words. Round trip, every kind
 * of bad descriptor (the VM and the host keep running), dirty tracking of read data, the queue
 * bound, a pause that waits for in-flight requests, flush ordering, a VM without a disk.
 */
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestWat, wat2wasm } from '../helpers/wat.js';
import { Vm } from '../../src/vmm/vm.js';
import { KiB, MiB } from '../../src/lib/units.js';
import { LocalFile } from '../../src/storage/local-file.js';
import type { BlockFile } from '../../src/storage/block-file.js';
import {
  BLOCK_DESCRIPTOR_BYTES, BLOCK_DRAIN_TIMEOUT_MS, BLOCK_E_ALIGN, BLOCK_E_BAD_DESCRIPTOR, BLOCK_E_BAD_OP, BLOCK_E_DISK_RANGE, BLOCK_E_IO, BLOCK_E_LENGTH,
  BLOCK_E_NO_DISK, BLOCK_E_QUEUE_FULL, BLOCK_E_RAM_RANGE, BLOCK_MAX_IN_FLIGHT, BLOCK_MAX_REQUEST_BYTES, BLOCK_OP_FLUSH, BLOCK_OP_READ,
  BLOCK_OP_WRITE, BLOCK_STATUS_OK, BLOCK_STATUS_PENDING, blockBackend, type BlockBackend,
} from '../../src/vmm/devices/block.js';

const RAM_BYTES = 1 * MiB;
const DISK_BYTES = 256 * KiB;
/** Doorbell layout in guest RAM (see MAILBOX_GUEST). */
const BELL_PTR = 0;
const BELL_COUNT = 12;
const BELL_ACKS = 8;
const CAPACITY_AT = 16;
const RESULTS_AT = 0x100;
/** Multi-vCPU guest: the go word and one done word per vCPU, clear of the 128 results at RESULTS_AT. */
const GO_AT = 0x400;
const DONE_AT = 0x500;
const DESC_AT = 0x1000;
const BUF_AT = 0x10000;

/**
 * vCPU 0 waits for a descriptor pointer at BELL_PTR; then it submits BELL_COUNT descriptors
 * spaced 32 bytes apart, stores each block_submit result at RESULTS_AT + 4*i, clears the bell and
 * counts an ack. It also publishes block_capacity at CAPACITY_AT. Other vCPUs halt.
 */
const MAILBOX_GUEST = guestWat({
  imports: `(import "ferry" "block_submit" (func $submit (param i32) (result i32)))
    (import "ferry" "block_capacity" (func $cap (result i64)))`,
  memory: '16',
  step: `(local $p i32) (local $i i32) (local $n i32)
    (if (i32.ne (local.get $vcpu) (i32.const 0)) (then (return (i32.const 2))))
    (i64.store (i32.const ${CAPACITY_AT}) (call $cap))
    (local.set $p (i32.atomic.load (i32.const ${BELL_PTR})))
    (if (i32.eqz (local.get $p)) (then (return (i32.const 1))))
    (local.set $n (i32.load (i32.const ${BELL_COUNT})))
    (loop $l
      (i32.store (i32.add (i32.const ${RESULTS_AT}) (i32.shl (local.get $i) (i32.const 2))) (call $submit (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const ${BLOCK_DESCRIPTOR_BYTES})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (i32.atomic.store (i32.const ${BELL_PTR}) (i32.const 0))
    (drop (i32.atomic.rmw.add (i32.const ${BELL_ACKS}) (i32.const 1)))
    (i32.const 0)`,
});

interface Desc { readonly op: number; readonly offset: bigint | number; readonly length: number; readonly buf: number }

let dir = '';
const vms: Vm[] = [];
const files: BlockFile[] = [];
afterEach(async () => {
  for (const vm of vms.splice(0)) await vm.stop();
  for (const f of files.splice(0)) await f.close();
  if (dir !== '') await rm(dir, { recursive: true, force: true });
  dir = '';
});

async function diskFile(bytes = DISK_BYTES): Promise<{ path: string; backend: BlockBackend; file: LocalFile }> {
  dir = await mkdtemp(join(tmpdir(), 'ferry-block-'));
  const path = join(dir, 'disk.img');
  await writeFile(path, new Uint8Array(bytes));
  const file = await LocalFile.open(path);
  files.push(file);
  // A BlockFile plus a capacity is a BlockBackend (src/vmm never imports src/storage).
  return { path, file, backend: blockBackend(file, bytes) };
}

async function startVm(disk: BlockBackend | undefined, vcpus = 1): Promise<Vm> {
  const vm = Vm.create(await wat2wasm(MAILBOX_GUEST), { memoryBytes: RAM_BYTES, vcpus, hangTimeoutMs: 2000, ...(disk ? { disk } : {}) });
  vms.push(vm);
  await vm.start();
  return vm;
}

const words = (vm: Vm): Int32Array => new Int32Array(vm.memory.buffer, 0, RAM_BYTES / 4);

async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

/** Places descriptors at DESC_AT.., rings the bell, returns each block_submit result. */
async function submit(vm: Vm, descs: readonly Desc[], at = DESC_AT): Promise<number[]> {
  for (const [i, d] of descs.entries()) {
    const b = new Uint8Array(BLOCK_DESCRIPTOR_BYTES);
    const v = new DataView(b.buffer);
    v.setUint32(0, d.op, true);
    v.setInt32(4, 0x5a5a5a5a, true); // garbage: submit must set PENDING itself
    v.setBigUint64(8, BigInt(d.offset), true);
    v.setUint32(16, d.length, true);
    v.setUint32(20, d.buf, true);
    if (at + i * BLOCK_DESCRIPTOR_BYTES + BLOCK_DESCRIPTOR_BYTES <= RAM_BYTES) vm.hostWrite(at + i * BLOCK_DESCRIPTOR_BYTES, b);
  }
  const w = words(vm);
  const acks = Atomics.load(w, BELL_ACKS / 4);
  Atomics.store(w, BELL_COUNT / 4, descs.length);
  Atomics.store(w, BELL_PTR / 4, at);
  await until(() => Atomics.load(w, BELL_ACKS / 4) !== acks, 'the guest to submit');
  return descs.map((_, i) => Atomics.load(w, RESULTS_AT / 4 + i));
}

const statusOf = (vm: Vm, i: number, at = DESC_AT): number => Atomics.load(words(vm), (at + i * BLOCK_DESCRIPTOR_BYTES + 4) / 4);

/** Submits and waits for every completion; returns the statuses. */
async function run(vm: Vm, descs: readonly Desc[]): Promise<number[]> {
  const results = await submit(vm, descs);
  assert.deepEqual(results, descs.map(() => 0), 'every request queued');
  await until(() => descs.every((_, i) => statusOf(vm, i) !== BLOCK_STATUS_PENDING), 'completions');
  return descs.map((_, i) => statusOf(vm, i));
}

/** A backend whose operations wait until released: requests stay in flight as long as a test wants. */
function gatedBackend(inner: BlockBackend): { backend: BlockBackend; release: () => void; started: () => number } {
  let open: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => { open = resolve; });
  let started = 0;
  const gated = <T>(op: () => Promise<T>): Promise<T> => { started++; return gate.then(op); };
  return {
    backend: {
      capacityBytes: inner.capacityBytes,
      read: (p, b) => gated(() => inner.read(p, b)),
      write: (p, d) => gated(() => inner.write(p, d)),
      flush: () => gated(() => inner.flush()),
    },
    release: () => { open(); },
    started: () => started,
  };
}

function pattern(seed: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; out[i] = x & 0xff; }
  return out;
}

describe('block device', () => {
  it('round trip: write, flush, read back into another buffer; the file holds the bytes', async () => {
    const { backend, file } = await diskFile();
    const vm = await startVm(backend);
    // start() answers when the vCPUs run, not when the guest's first step has published the capacity (a loaded CI machine showed 0).
    const capacity = (): bigint => new DataView(vm.memory.buffer).getBigInt64(CAPACITY_AT, true);
    await until(() => capacity() !== 0n, 'the guest to publish block_capacity');
    assert.equal(capacity(), BigInt(DISK_BYTES));
    const data = pattern(7, 8 * KiB);
    vm.hostWrite(BUF_AT, data);
    assert.deepEqual(await run(vm, [{ op: BLOCK_OP_WRITE, offset: 4096, length: data.length, buf: BUF_AT }]), [BLOCK_STATUS_OK]);
    assert.deepEqual(await run(vm, [{ op: BLOCK_OP_FLUSH, offset: 0, length: 0, buf: 0 }]), [BLOCK_STATUS_OK]);
    assert.deepEqual(await run(vm, [{ op: BLOCK_OP_READ, offset: 4096, length: data.length, buf: BUF_AT + 64 * KiB }]), [BLOCK_STATUS_OK]);
    assert.deepEqual(vm.ram.subarray(BUF_AT + 64 * KiB, BUF_AT + 64 * KiB + data.length), data);
    const onDisk = new Uint8Array(data.length);
    await file.read(4096, onDisk);
    assert.deepEqual(onDisk, data);
    // The largest request, at the very end of the disk.
    assert.deepEqual(await run(vm, [{ op: BLOCK_OP_READ, offset: DISK_BYTES - 64 * KiB, length: 64 * KiB, buf: BUF_AT }]), [BLOCK_STATUS_OK]);
    assert.equal(vm.state, 'running');
    const stats = vm.blockStats();
    assert.equal(stats?.inFlight, 0);
    assert.equal(stats?.failed, 0);
  });

  it('bad descriptors complete with errors (or are refused at submit); the VM and the host keep running', async () => {
    const { backend } = await diskFile();
    const vm = await startVm(backend);
    const statuses = await run(vm, [
      { op: 7, offset: 0, length: 512, buf: BUF_AT },                                  // unknown op
      { op: BLOCK_OP_READ, offset: 0, length: 512, buf: RAM_BYTES - 256 },              // buffer crosses the end of RAM
      { op: BLOCK_OP_READ, offset: 0, length: 512, buf: 0xffff_fe00 },                  // buffer far outside RAM
      { op: BLOCK_OP_WRITE, offset: DISK_BYTES, length: 512, buf: BUF_AT },             // beyond the disk
      { op: BLOCK_OP_WRITE, offset: DISK_BYTES - 512, length: 1024, buf: BUF_AT },      // crosses the end of the disk
      { op: BLOCK_OP_READ, offset: 0xffff_ffff_ffff_fe00n, length: 512, buf: BUF_AT },  // u64 offset near 2^64
      { op: BLOCK_OP_READ, offset: 0, length: BLOCK_MAX_REQUEST_BYTES + 512, buf: 0 },  // oversized
      { op: BLOCK_OP_READ, offset: 0, length: 0, buf: BUF_AT },                         // empty
      { op: BLOCK_OP_READ, offset: 100, length: 512, buf: BUF_AT },                     // misaligned offset
      { op: BLOCK_OP_WRITE, offset: 0, length: 100, buf: BUF_AT },                      // misaligned length
      { op: BLOCK_OP_FLUSH, offset: 0, length: 512, buf: 0 },                           // flush with a length
    ]);
    assert.deepEqual(statuses, [
      BLOCK_E_BAD_OP, BLOCK_E_RAM_RANGE, BLOCK_E_RAM_RANGE, BLOCK_E_DISK_RANGE, BLOCK_E_DISK_RANGE, BLOCK_E_DISK_RANGE,
      BLOCK_E_LENGTH, BLOCK_E_LENGTH, BLOCK_E_ALIGN, BLOCK_E_ALIGN, BLOCK_E_LENGTH,
    ]);
    // Descriptors that cannot even hold a status are refused at submit: misaligned, beyond RAM.
    assert.deepEqual(await submit(vm, [{ op: BLOCK_OP_FLUSH, offset: 0, length: 0, buf: 0 }], DESC_AT + 4), [BLOCK_E_BAD_DESCRIPTOR]);
    assert.deepEqual(await submit(vm, [{ op: BLOCK_OP_FLUSH, offset: 0, length: 0, buf: 0 }], RAM_BYTES - 16), [BLOCK_E_BAD_DESCRIPTOR]);
    assert.deepEqual(await submit(vm, [{ op: BLOCK_OP_FLUSH, offset: 0, length: 0, buf: 0 }], 0xffff_ffe0), [BLOCK_E_BAD_DESCRIPTOR]);
    // Still serving good requests.
    assert.deepEqual(await run(vm, [{ op: BLOCK_OP_READ, offset: 0, length: 512, buf: BUF_AT }]), [BLOCK_STATUS_OK]);
    assert.equal(vm.state, 'running');
    assert.equal(vm.blockStats()?.failed, 11);
  });

  it('a backend failure completes with BLOCK_E_IO, nothing else', async () => {
    const { backend } = await diskFile();
    const failing: BlockBackend = { ...backend, write: () => Promise.reject(new Error('disk on fire')) };
    const vm = await startVm(failing);
    assert.deepEqual(await run(vm, [{ op: BLOCK_OP_WRITE, offset: 0, length: 512, buf: BUF_AT }]), [BLOCK_E_IO]);
    assert.equal(vm.state, 'running');
    assert.match(vm.blockStats()?.lastIoError ?? '', /disk on fire/);
  });

  it('a VM without a disk refuses block_submit and reports capacity 0', async () => {
    const vm = await startVm(undefined);
    assert.deepEqual(await submit(vm, [{ op: BLOCK_OP_READ, offset: 0, length: 512, buf: BUF_AT }]), [BLOCK_E_NO_DISK]);
    assert.equal(new DataView(vm.memory.buffer).getBigInt64(CAPACITY_AT, true), 0n);
    assert.equal(vm.blockStats(), null);
    assert.equal(vm.state, 'running');
  });

  it('data a read puts in guest RAM fires the write traces (collect shows those pages)', async () => {
    const { backend, file } = await diskFile();
    await file.write(64 * KiB, pattern(3, 12 * KiB));
    const vm = await startVm(backend);
    await vm.tracker.armAll();
    await vm.tracker.collect(); // whatever the guest's own steps wrote so far
    const target = BUF_AT + 128 * KiB; // pages 48..50 of RAM, never written by the guest
    assert.deepEqual(await run(vm, [{ op: BLOCK_OP_READ, offset: 64 * KiB, length: 12 * KiB, buf: target }]), [BLOCK_STATUS_OK]);
    const fired = new Set((await vm.tracker.collect()).regions);
    for (let page = target / 4096; page < (target + 12 * KiB) / 4096; page++) assert.ok(fired.has(page), `page ${page} fired`);
    assert.ok(!fired.has(target / 4096 + 3), 'the page after the buffer did not fire');
    assert.deepEqual(vm.ram.subarray(target, target + 12 * KiB), pattern(3, 12 * KiB));
  });

  it(`bounds the queue at ${BLOCK_MAX_IN_FLIGHT} per VM; a pause waits for every in-flight request`, async () => {
    const { backend } = await diskFile();
    const gated = gatedBackend(backend);
    const vm = await startVm(gated.backend);
    const descs: Desc[] = Array.from({ length: BLOCK_MAX_IN_FLIGHT + 1 }, (_, i) => ({ op: BLOCK_OP_READ, offset: i * 512, length: 512, buf: BUF_AT + i * 512 }));
    const results = await submit(vm, descs);
    assert.deepEqual(results, [...descs.slice(1).map(() => 0), BLOCK_E_QUEUE_FULL]);
    await until(() => gated.started() === BLOCK_MAX_IN_FLIGHT, 'every request to reach the backend');
    let paused = false;
    const pausing = vm.pause().then((r) => { paused = true; return r; });
    await sleep(100);
    assert.equal(paused, false, 'pause is still waiting for the in-flight requests');
    assert.equal(statusOf(vm, 0), BLOCK_STATUS_PENDING);
    gated.release();
    const result = await pausing;
    assert.equal(vm.state, 'paused');
    assert.ok(result.blockDrainMs > 0 && result.latencyMs >= result.blockDrainMs);
    for (let i = 0; i < BLOCK_MAX_IN_FLIGHT; i++) assert.equal(statusOf(vm, i), BLOCK_STATUS_OK, `request ${i} completed before the pause returned`);
    assert.equal(vm.blockStats()?.inFlight, 0);
    vm.resume();
    assert.deepEqual(await run(vm, [{ op: BLOCK_OP_READ, offset: 0, length: 512, buf: BUF_AT }]), [BLOCK_STATUS_OK]);
  });

  it('a flush completes only after every write submitted before it has completed, then is durable', async () => {
    const { backend } = await diskFile();
    const order: string[] = [];
    let releaseWrite: () => void = () => undefined;
    const slowWrite = new Promise<void>((resolve) => { releaseWrite = resolve; });
    const observed: BlockBackend = {
      capacityBytes: backend.capacityBytes,
      read: (p, b) => backend.read(p, b),
      write: async (p, d) => { await slowWrite; await backend.write(p, d); order.push('write'); },
      flush: async () => { await backend.flush(); order.push('flush'); },
    };
    const vm = await startVm(observed);
    assert.deepEqual(await submit(vm, [
      { op: BLOCK_OP_WRITE, offset: 0, length: 4096, buf: BUF_AT },
      { op: BLOCK_OP_FLUSH, offset: 0, length: 0, buf: 0 },
    ]), [0, 0]);
    await sleep(50);
    assert.equal(statusOf(vm, 1), BLOCK_STATUS_PENDING, 'the flush waits for the write before it');
    releaseWrite();
    await until(() => statusOf(vm, 1) !== BLOCK_STATUS_PENDING, 'the flush');
    assert.deepEqual([statusOf(vm, 0), statusOf(vm, 1)], [BLOCK_STATUS_OK, BLOCK_STATUS_OK]);
    assert.deepEqual(order, ['write', 'flush']);
  });

  it('a guest that hangs in the step that submitted: the VM crashes hung and stop() does not wait for the request', async () => {
    // Requests are posted when their step ends; this step never ends, so the request never reaches
    // the service and stop() must not wait BLOCK_DRAIN_TIMEOUT_MS for it.
    const { backend } = await diskFile();
    const guest = guestWat({
      imports: '(import "ferry" "block_submit" (func $submit (param i32) (result i32)))',
      memory: '16',
      step: `(if (i32.eqz (i32.atomic.load (i32.const ${BELL_PTR}))) (then (return (i32.const 1))))
        (drop (call $submit (i32.atomic.load (i32.const ${BELL_PTR}))))
        (loop $forever (br $forever)) (i32.const 0)`,
    });
    const vm = Vm.create(await wat2wasm(guest), { memoryBytes: RAM_BYTES, vcpus: 1, hangTimeoutMs: 200, disk: backend });
    vms.push(vm);
    await vm.start();
    const d = new DataView(new ArrayBuffer(BLOCK_DESCRIPTOR_BYTES));
    d.setUint32(0, BLOCK_OP_READ, true);
    d.setUint32(16, 512, true);
    d.setUint32(20, BUF_AT, true);
    vm.hostWrite(DESC_AT, new Uint8Array(d.buffer));
    Atomics.store(words(vm), BELL_PTR / 4, DESC_AT);
    await until(() => vm.state === 'crashed', 'the hang to be detected');
    assert.equal(vm.crash?.reason, 'hung');
    const t0 = Date.now();
    await vm.stop();
    assert.ok(Date.now() - t0 < BLOCK_DRAIN_TIMEOUT_MS / 2, `stop took ${Date.now() - t0} ms`);
    assert.equal(vm.blockStats()?.inFlight, 0);
  });

  it('the queue bound holds for the whole VM when 4 vCPUs submit at once', async () => {
    const { backend } = await diskFile();
    const gated = gatedBackend(backend);
    const perVcpu = 32;
    const vcpus = 4;
    // Every vCPU waits for the go word, then submits its 32 descriptors (at DESC_AT + v*32*32)
    // and stores each result at RESULTS_AT + 4*(v*32 + i); then sets its done word.
    const source = guestWat({
      imports: '(import "ferry" "block_submit" (func $submit (param i32) (result i32)))',
      memory: '16',
      step: `(local $i i32) (local $p i32)
        (if (i32.eqz (i32.atomic.load (i32.const ${GO_AT}))) (then (return (i32.const 1))))
        (if (i32.load (i32.add (i32.const ${DONE_AT}) (i32.shl (local.get $vcpu) (i32.const 2)))) (then (return (i32.const 1))))
        (loop $l
          (local.set $p (i32.add (i32.const ${DESC_AT}) (i32.mul (i32.add (i32.mul (local.get $vcpu) (i32.const ${perVcpu})) (local.get $i)) (i32.const ${BLOCK_DESCRIPTOR_BYTES}))))
          (i32.store (i32.add (i32.const ${RESULTS_AT}) (i32.shl (i32.add (i32.mul (local.get $vcpu) (i32.const ${perVcpu})) (local.get $i)) (i32.const 2))) (call $submit (local.get $p)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const ${perVcpu}))))
        (i32.atomic.store (i32.add (i32.const ${DONE_AT}) (i32.shl (local.get $vcpu) (i32.const 2))) (i32.const 1))
        (i32.const 0)`,
    });
    const vm = Vm.create(await wat2wasm(source), { memoryBytes: RAM_BYTES, vcpus, hangTimeoutMs: 2000, disk: gated.backend });
    vms.push(vm);
    await vm.start();
    for (let i = 0; i < perVcpu * vcpus; i++) {
      const b = new Uint8Array(BLOCK_DESCRIPTOR_BYTES);
      const v = new DataView(b.buffer);
      v.setUint32(0, BLOCK_OP_READ, true);
      v.setBigUint64(8, BigInt(i * 512), true);
      v.setUint32(16, 512, true);
      v.setUint32(20, BUF_AT + i * 512, true);
      vm.hostWrite(DESC_AT + i * BLOCK_DESCRIPTOR_BYTES, b);
    }
    const w = words(vm);
    Atomics.store(w, GO_AT / 4, 1);
    await until(() => Array.from({ length: vcpus }, (_, v) => Atomics.load(w, DONE_AT / 4 + v)).every((d) => d === 1), 'every vCPU to submit');
    const results = Array.from({ length: perVcpu * vcpus }, (_, i) => Atomics.load(w, RESULTS_AT / 4 + i));
    assert.equal(results.filter((r) => r === 0).length, BLOCK_MAX_IN_FLIGHT);
    assert.equal(results.filter((r) => r === BLOCK_E_QUEUE_FULL).length, perVcpu * vcpus - BLOCK_MAX_IN_FLIGHT);
    gated.release();
    await vm.pause();
    results.forEach((r, i) => { if (r === 0) assert.equal(statusOf(vm, i), BLOCK_STATUS_OK, `accepted request ${i} completed`); });
    assert.deepEqual({ ...vm.blockStats(), lastIoError: null }, { submitted: BLOCK_MAX_IN_FLIGHT, completed: BLOCK_MAX_IN_FLIGHT, failed: 0, inFlight: 0, lastIoError: null });
  });
});
