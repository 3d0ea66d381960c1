/**
 * The shared bounds of src/lib/limits.ts, checked through each part's real validator: a VM the
 * runtime accepts is one the protocol carries, the snapshot format saves and reads back, and the
 * host store reloads, and a VM over a bound is refused by all of them alike.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { isFerryError } from '../../src/lib/errors.js';
import {
  MAX_ABORT_REASON_CHARS, MAX_CMDLINE_BYTES, MAX_DATA_CHANNELS, MAX_GRANULARITY_BYTES, MAX_VCPUS, MAX_VM_NAME_CHARS,
  MIN_DATA_CHANNELS, MIN_GRANULARITY_BYTES, WASM_PAGE_BYTES, isValidVmName,
} from '../../src/lib/limits.js';
import { normalizeConfig, type VmConfig } from '../../src/vmm/config.js';
import { validateGranularity } from '../../src/vmm/layout.js';
import { openSnapshot, writeSnapshot, type SnapshotMetadata } from '../../src/vmm/snapshot.js';
import { HostStore } from '../../src/host/store.js';
import { HEADER_BYTES, MAX_ABORT_PAYLOAD_BYTES } from '../../src/migration/protocol/frame.js';
import { decodePrepare, encodeAbort, encodeHello, encodePrepare } from '../../src/migration/protocol/messages.js';
import { helloBody, makeImage, prepareBody, sha256 } from '../migration/protocol/fixtures.js';

/** The VM fields every part validates. */
interface VmFields { name: string; vcpus: number; granularityBytes: number; cmdline: string }

const RAM_BYTES = WASM_PAGE_BYTES;
const BASE: VmFields = { name: 'web-1', vcpus: 2, granularityBytes: 4096, cmdline: 'hot=64MiB' };
const image = makeImage();

let dir = '';
let counter = 0;
before(async () => { dir = await mkdtemp(join(tmpdir(), 'ferry-limits-test-')); });
after(async () => { await rm(dir, { recursive: true, force: true }); });

/** The runtime: the config normalizer, and the granularity check a VM runs before instrumenting. */
function runtimeAccepts(vm: VmFields): boolean {
  try {
    validateGranularity(normalizeConfig({ ...vm, memoryBytes: RAM_BYTES }).granularityBytes);
    return true;
  } catch (err) {
    assert.ok(isFerryError(err, 'VM_CONFIG_INVALID'), String(err));
    return false;
  }
}

function protocolAccepts(vm: VmFields): boolean {
  const body = prepareBody(image, RAM_BYTES);
  let frame: Buffer;
  try {
    frame = encodePrepare(1, { ...body, vm: { ...body.vm, ...vm } });
  } catch (err) {
    assert.ok(isFerryError(err, 'PROTOCOL_BAD_PAYLOAD'), String(err));
    return false;
  }
  assert.deepEqual(decodePrepare(frame.subarray(HEADER_BYTES)).vm, { ...body.vm, ...vm }, 'what the encoder sends, the decoder takes');
  return true;
}

function snapshotMeta(vm: VmFields): SnapshotMetadata {
  return {
    vm: { ...vm, ramBytes: RAM_BYTES }, imageSha256: sha256(image), claimedPages: 1, clockNs: 1n,
    vcpuStates: Array.from({ length: vm.vcpus }, () => ({ halted: false, globals: [] })), createdAt: new Date().toISOString(),
  };
}

async function snapshotWriterAccepts(vm: VmFields): Promise<boolean> {
  const path = join(dir, `w-${++counter}.fsnap`);
  try {
    await writeSnapshot(path, snapshotMeta(vm), image, new Uint8Array(RAM_BYTES));
  } catch (err) {
    assert.ok(isFerryError(err, 'INVALID_ARGUMENT'), String(err));
    return false;
  }
  const snap = await openSnapshot(path);
  await snap.close();
  return true;
}

// Offsets from docs/snapshot-format.md: metadata offset and length (u64), metadata and header crc32.
const META_OFFSET_AT = 16;
const META_LENGTH_AT = 24;
const META_CRC_AT = 68;
const HEADER_CRC_AT = 84;

/**
 * The snapshot *reader*: a snapshot of `written` (valid) is patched on disk to hold `patched`
 * instead (the metadata JSON must keep its byte length), then opened.
 */
async function snapshotReaderAccepts(written: VmFields, patched: VmFields): Promise<boolean> {
  const path = join(dir, `r-${++counter}.fsnap`);
  await writeSnapshot(path, snapshotMeta(written), image, new Uint8Array(RAM_BYTES));
  const b = await readFile(path);
  const start = Number(b.readBigUInt64LE(META_OFFSET_AT));
  const end = start + Number(b.readBigUInt64LE(META_LENGTH_AT));
  const json = b.subarray(start, end).toString('utf8');
  const from = JSON.stringify({ name: written.name, ramBytes: RAM_BYTES, vcpus: written.vcpus, granularityBytes: written.granularityBytes, cmdline: written.cmdline });
  const to = JSON.stringify({ name: patched.name, ramBytes: RAM_BYTES, vcpus: patched.vcpus, granularityBytes: patched.granularityBytes, cmdline: patched.cmdline });
  assert.ok(json.includes(from), 'the vm object is written as the test expects');
  const edited = Buffer.from(json.replace(from, to), 'utf8');
  assert.equal(edited.byteLength, end - start, 'the patch keeps the metadata length');
  edited.copy(b, start);
  b.writeUInt32LE(crc32(b.subarray(start, end)), META_CRC_AT);
  b.writeUInt32LE(crc32(b.subarray(0, HEADER_CRC_AT)), HEADER_CRC_AT);
  await writeFile(path, b);
  try {
    await (await openSnapshot(path)).close();
    return true;
  } catch (err) {
    assert.ok(isFerryError(err, 'SNAPSHOT_CORRUPT'), String(err));
    return false;
  }
}

async function storeAccepts(vm: VmFields): Promise<boolean> {
  const store = new HostStore(join(dir, `store-${++counter}`));
  await store.init();
  const config: VmConfig = { ...normalizeConfig({ memoryBytes: RAM_BYTES }), ...vm };
  await store.saveVm(config, image);
  const { vms, problems } = await store.loadAll();
  // A refused config is reported as a problem, or not found at all when its name is not one
  // directory below vms/ ('', 'a/b', '..').
  if (vms.length === 1) assert.deepEqual({ configs: vms.map((v) => v.config), problems }, { configs: [config], problems: [] });
  return vms.length === 1;
}

/** Every part's verdict on `vm`, keyed by part, so a disagreement names the part. */
async function verdicts(vm: Partial<VmFields>): Promise<Record<string, boolean>> {
  const v = { ...BASE, ...vm };
  return {
    runtime: runtimeAccepts(v), protocol: protocolAccepts(v), snapshot: await snapshotWriterAccepts(v), store: await storeAccepts(v),
  };
}

const ALL_ACCEPT = { runtime: true, protocol: true, snapshot: true, store: true };
const ALL_REFUSE = { runtime: false, protocol: false, snapshot: false, store: false };

describe('shared limits: every part agrees', () => {
  it('VM names: 1..MAX_VM_NAME_CHARS characters of [A-Za-z0-9._-]', async () => {
    assert.equal(MAX_VM_NAME_CHARS, 64);
    for (const name of ['a', 'x'.repeat(MAX_VM_NAME_CHARS), 'Web_1.prod-2', '...', '.a']) {
      assert.ok(isValidVmName(name), name);
      assert.deepEqual(await verdicts({ name }), ALL_ACCEPT, name);
    }
    for (const name of ['', 'x'.repeat(MAX_VM_NAME_CHARS + 1), 'web 1', 'a/b', 'é', '.', '..']) {
      assert.ok(!isValidVmName(name), name);
      assert.deepEqual(await verdicts({ name }), ALL_REFUSE, JSON.stringify(name));
    }
  });

  it('the snapshot reader refuses a name over the bound that the writer would not have written', async () => {
    const written = { ...BASE, name: 'x'.repeat(MAX_VM_NAME_CHARS), cmdline: 'ab' };
    assert.equal(await snapshotReaderAccepts(written, { ...written, name: 'x'.repeat(MAX_VM_NAME_CHARS), cmdline: 'ba' }), true);
    assert.equal(await snapshotReaderAccepts(written, { ...written, name: 'x'.repeat(MAX_VM_NAME_CHARS + 1), cmdline: 'a' }), false);
  });

  it('command lines: MAX_CMDLINE_BYTES bytes of UTF-8, whatever their length in characters', async () => {
    const twoByte = 'é'.repeat(MAX_CMDLINE_BYTES / 2);
    const threeByte = `a${'€'.repeat((MAX_CMDLINE_BYTES - 1) / 3)}`;
    const fourByte = '😀'.repeat(MAX_CMDLINE_BYTES / 4);
    for (const cmdline of [twoByte, threeByte, fourByte, 'x'.repeat(MAX_CMDLINE_BYTES)]) {
      assert.equal(Buffer.byteLength(cmdline), MAX_CMDLINE_BYTES);
      assert.deepEqual(await verdicts({ cmdline }), ALL_ACCEPT);
      assert.deepEqual(await verdicts({ cmdline: `${cmdline}x` }), ALL_REFUSE, 'one byte more');
    }
    // Fewer characters than the bound, more bytes: a character count would let it through.
    assert.deepEqual(await verdicts({ cmdline: '€'.repeat(2000) }), ALL_REFUSE);
    const written = { ...BASE, name: 'ab', cmdline: twoByte };
    assert.equal(await snapshotReaderAccepts(written, { ...written, name: 'a', cmdline: `${twoByte}x` }), false);
  });

  it('vCPUs: 1..MAX_VCPUS', async () => {
    assert.deepEqual(await verdicts({ vcpus: MAX_VCPUS }), ALL_ACCEPT);
    assert.deepEqual(await verdicts({ vcpus: MAX_VCPUS + 1 }), ALL_REFUSE);
    assert.deepEqual(await verdicts({ vcpus: 0 }), ALL_REFUSE);
  });

  it('granularities: powers of two from MIN_ to MAX_GRANULARITY_BYTES', async () => {
    for (const granularityBytes of [MIN_GRANULARITY_BYTES, MAX_GRANULARITY_BYTES]) {
      assert.deepEqual(await verdicts({ granularityBytes }), ALL_ACCEPT, String(granularityBytes));
    }
    for (const granularityBytes of [MIN_GRANULARITY_BYTES / 2, MAX_GRANULARITY_BYTES * 2, 3 * MIN_GRANULARITY_BYTES]) {
      assert.deepEqual(await verdicts({ granularityBytes }), ALL_REFUSE, String(granularityBytes));
    }
  });

  it('data channels: MIN_ to MAX_DATA_CHANNELS in PREPARE, and HELLO channel indexes below the maximum', () => {
    const body = prepareBody(image, RAM_BYTES);
    for (const dataChannels of [MIN_DATA_CHANNELS, MAX_DATA_CHANNELS]) encodePrepare(1, { ...body, dataChannels });
    for (const dataChannels of [MIN_DATA_CHANNELS - 1, MAX_DATA_CHANNELS + 1]) {
      assert.throws(() => encodePrepare(1, { ...body, dataChannels }), (e: unknown) => isFerryError(e, 'PROTOCOL_BAD_PAYLOAD'));
    }
    encodeHello(1, helloBody('data', MAX_DATA_CHANNELS - 1));
    assert.throws(() => encodeHello(1, helloBody('data', MAX_DATA_CHANNELS)), (e: unknown) => isFerryError(e, 'PROTOCOL_BAD_PAYLOAD'));
  });

  it('ABORT reasons: MAX_ABORT_REASON_CHARS of the worst-case JSON escaping fit the ABORT payload bound', () => {
    const frame = encodeAbort(1, { reason: '\u0001'.repeat(MAX_ABORT_REASON_CHARS) });
    assert.ok(frame.length - HEADER_BYTES <= MAX_ABORT_PAYLOAD_BYTES);
    assert.throws(() => encodeAbort(1, { reason: 'x'.repeat(MAX_ABORT_REASON_CHARS + 1) }), (e: unknown) => isFerryError(e, 'PROTOCOL_BAD_PAYLOAD'));
  });
});
