/**
 * Typed messages of the migration protocol: strict zod schemas for every JSON payload, encoders
 * that produce complete frames, and `decodeMessage`, which turns a frame into a `Message`
 * discriminated by `command`.
 *
 * JSON payloads must be UTF-8 (no BOM), a JSON object, and match their schema exactly (unknown
 * keys are rejected): src/lib/wire-json.ts. Anything else is PROTOCOL_BAD_PAYLOAD. Encoders run the
 * same schemas on what they are about to send, so a peer running this code never receives a payload
 * it rejects; an invalid value to encode is PROTOCOL_BAD_PAYLOAD too (and an oversize one PROTOCOL_TOO_LARGE).
 *
 * Numbers JSON cannot carry exactly travel as strings: i64 globals, clockNs and lastClockReadNs
 * as decimal strings; f32/f64 NaN, ±Infinity and -0 as "NaN", "Infinity", "-Infinity", "-0" (NaN payload
 * bits are not preserved).
 */
import { z } from 'zod';
import { FerryError } from '../../lib/errors.js';
import {
  badPayload as libBadPayload, cannotEncode as libCannotEncode, decodeJsonPayload, encodeJsonPayload, encodeObjectPayload,
  errorBodyOf, errorBodySchema, encodeErrorPayload, type Envelope, type ErrorBody, type OkBody,
} from '../../lib/wire-json.js';

export { MAX_ERROR_CODE_CHARS, MAX_ERROR_MESSAGE_CHARS } from '../../lib/wire-json.js';
import { KiB, MiB } from '../../lib/units.js';
import {
  MAX_ABORT_REASON_CHARS, MAX_CHAIN_DEPTH, MAX_CHANGED_BLOCK_BYTES, MAX_DATASTORE_PATH_BYTES, MAX_DISK_CAPACITY_BYTES, MIN_CHANGED_BLOCK_BYTES, MAX_DATA_CHANNELS, MAX_GLOBALS_PER_VCPU, MAX_IMAGE_BYTES, MAX_RAM_BYTES, MAX_VCPUS, MIN_DATA_CHANNELS,
  MIN_VCPUS, WASM_PAGE_BYTES, cmdlineSchema, granularitySchema, ramBytesSchema, vcpusSchema, vmNameSchema,
} from '../../lib/limits.js';
import { globalValueSchema, globalValueToWire, u64StringSchema, type GlobalValue } from '../../lib/wire-values.js';
import { Command, HEADER_BYTES, MAX_PREPARE_PAYLOAD_BYTES, commandName, encodeFrame, type Frame, type FrameCommand } from './frame.js';
import { DISK_SPACE, decodeMemoryBatch, encodeMemoryBatch, type MemoryBatch, type MemoryEntryInput } from './memory-batch.js';

// ---------------------------------------------------------------------------------------------
// Bounds of the protocol itself. The VM's bounds (name, RAM, vCPUs, granularity, command line,
// globals, image), data channels and the ABORT reason are shared with the runtime and the
// snapshot format: src/lib/limits.ts.

export const MAX_MIGRATION_ID_CHARS = 64;
/**
 * Largest instrumented module a source offers in PREPARE ("Instrumented module offer" in
 * docs/migration-protocol.md): the dirtier's is 33 KB; a larger one is instrumented by the target itself.
 */
export const MAX_INSTRUMENTED_OFFER_BYTES = 4 * MiB;
/** Longest instrumenter build identity (src/vmm/instrument.ts INSTRUMENTER_BUILD, e.g. "ferry-instrument/1+binaryen@132.0.0"). */
export const MAX_INSTRUMENTER_BUILD_CHARS = 128;
/** Base64 characters of `bytes` bytes. */
function base64Chars(bytes: number): number { return 4 * Math.ceil(bytes / 3); }
/** Largest JSON part of a PREPARE without an offer (with its u32 length prefix, 64 KiB). */
const MAX_PREPARE_PLAIN_JSON_BYTES = 64 * KiB - 4;
/** Largest JSON part of a PREPARE: the plain part plus an offered module in base64. */
export const MAX_PREPARE_JSON_BYTES = MAX_PREPARE_PLAIN_JSON_BYTES + base64Chars(MAX_INSTRUMENTED_OFFER_BYTES);
/** Bytes of the u32 JSON length that starts a PREPARE payload. */
export const PREPARE_JSON_LENGTH_BYTES = 4;
/** claimedPages is in wasm pages and cannot exceed the largest RAM. */
export const MAX_CLAIMED_PAGES = MAX_RAM_BYTES / WASM_PAGE_BYTES;

const U32_MAX = 2 ** 32 - 1;

// ---------------------------------------------------------------------------------------------
// Typed bodies

export type ConnectionRole = 'control' | 'data';

export interface HelloBody {
  readonly protocol: 1;
  /** 64 lowercase hex characters (32 random bytes). */
  readonly ticket: string;
  readonly role: ConnectionRole;
  /** Data channel index 0..15 (control connections use 0 by convention). */
  readonly channel: number;
}

export interface PrepareVm {
  readonly name: string;
  readonly memoryBytes: number;
  readonly vcpus: number;
  readonly granularityBytes: number;
  readonly cmdline: string;
  /** sha256 of the image, 64 lowercase hex characters (not verified by the decoder: the target checks it). */
  readonly imageSha256: string;
}

/**
 * The VM's disk and how it moves (docs/migration-protocol.md, "Disks"):
 * - shared: the target mounts the same datastore (by id) and opens the disk at COMMIT, after the
 *   source gave up its lease; no disk data moves.
 * - copy: the target creates a new disk of `capacityBytes` at `datastore:path` (its own datastore
 *   name) and receives the content in DISK batches of `blockBytes` blocks.
 */
export type PrepareDisk =
  | { readonly mode: 'shared'; readonly datastoreId: string; readonly path: string; readonly capacityBytes: number }
  | {
    readonly mode: 'copy'; readonly datastore: string; readonly path: string; readonly capacityBytes: number; readonly blockBytes: number;
    /**
     * The migration specification's disks (docs/design/cross-site.md): every level of the VM's chain on
     * the source, top first, base last, with its content ID. Absent (an older source): nothing is
     * looked up, everything is copied.
     */
    readonly chain?: readonly ChainLevelSpec[];
  };

/** One disk of the VM's chain as the source announces it in PREPARE. */
export interface ChainLevelSpec {
  /** Its path on the source's datastore: with the VM's name and the CID, the disk's identity. */
  readonly path: string;
  /** The descriptor's CID and parentCID, 8 lowercase hex digits (ffffffff: no parent). */
  readonly cid: string;
  readonly parentCid: string;
  readonly capacityBytes: number;
  /** Bytes of grains this level holds itself (what a copy of it alone would move). */
  readonly allocatedBytes: number;
}

/**
 * The target's answer to PREPARE for a copied disk: the specification sent back, each level marked.
 * `migrate: false` — the target holds this level already (a seed whose CID, parent CID and capacity
 * are the source's) and it does not move; only a run of levels at the base end can be false, and the
 * top never is. An answer without it (an older target): every level moves.
 */
export interface PreparedDisk {
  /** The source's levels, top first, in the order PREPARE gave them. */
  readonly chain: readonly { readonly path: string; readonly cid: string; readonly migrate: boolean }[];
  /** Where the top seeded level lies on the target's datastore (null: nothing is seeded). */
  readonly seedPath: string | null;
  /** Bytes of seed files the target reads and hashes before it answers round 1's ROUND (0: none). */
  readonly verifyBytes: number;
}

/** How the target came by the VM's instrumented module: its own cache, the source's offer, or instrumenting the image itself. */
export type InstrumentationSource = 'cache' | 'source' | 'local';

/** PREPARE's OK body. */
export interface PreparedBody {
  readonly accepted: true;
  readonly disk?: PreparedDisk;
  /** Only in the reply to a PREPARE that carried `instrumented` (a source that reads it). */
  readonly instrumentation?: InstrumentationSource;
}

/**
 * The source's instrumented module of the VM's image, offered so that a target which has none cached
 * need not instrument the image on the migration's critical path (the target checks it, and may refuse
 * it: docs/migration-protocol.md, "Instrumented module offer").
 */
export interface PrepareOffer {
  /** The source's instrumenter build (src/vmm/instrument.ts INSTRUMENTER_BUILD). */
  readonly build: string;
  /** sha256 of `binary`, 64 lowercase hex digits. */
  readonly sha256: string;
  /** The instrumented module; base64 on the wire. */
  readonly binary: Uint8Array;
}

export interface PrepareBody {
  readonly migrationId: string;
  readonly vm: PrepareVm;
  readonly dataChannels: number;
  readonly disk?: PrepareDisk;
  /**
   * Sent only to a target whose HELLO reply lists TARGET_OFFER_CAPABILITY: the offer, or null for
   * "none to give" (a source that reads the reply's `instrumentation` either way). Absent: an older
   * source, or a target that did not say it reads the key (an older target refuses unknown keys).
   */
  readonly instrumented?: PrepareOffer | null;
  /** The guest image; when decoded, a view into the frame payload. */
  readonly image: Uint8Array;
}

export interface RoundBody {
  readonly round: number;
  readonly regions: number;
  readonly bytes: number;
}

export interface VcpuState {
  readonly halted: boolean;
  readonly globals: readonly GlobalValue[];
  /**
   * The vCPU's last guest-clock read on the source (u64 ns of the guest clock, 0 = never read);
   * lets the target measure the gap the guest observed. Not in the document's STATE row yet.
   */
  readonly lastClockReadNs: bigint;
}

export interface StateBody {
  /** Guest's claimed memory in 64 KiB pages. */
  readonly claimedPages: number;
  /** Guest monotonic clock (u64 ns). */
  readonly clockNs: bigint;
  /**
   * Source wall-clock time (ms since the epoch, integer) at which clockNs was read, so the target
   * can advance the guest clock by the downtime. Not in the document's STATE row yet.
   */
  readonly clockWallMs: number;
  readonly vcpus: readonly VcpuState[];
}

export interface CommitBody {
  /** 16 lowercase hex characters. */
  readonly digest: string;
  /** Copy mode: the digest of every disk block sent (as the memory digest, over the disk's blocks). */
  readonly diskDigest?: string;
}

export interface AbortBody {
  readonly reason: string;
}

export type { OkBody, ErrorBody };

export type HelloMessage = Envelope<typeof Command.HELLO, HelloBody>;
export type PrepareMessage = Envelope<typeof Command.PREPARE, PrepareBody>;
export type MemoryMessage = Envelope<typeof Command.MEMORY, MemoryBatch>;
export type DiskMessage = Envelope<typeof Command.DISK, MemoryBatch>;
export type RoundMessage = Envelope<typeof Command.ROUND, RoundBody>;
export type StateMessage = Envelope<typeof Command.STATE, StateBody>;
export type CommitMessage = Envelope<typeof Command.COMMIT, CommitBody>;
export type AbortMessage = Envelope<typeof Command.ABORT, AbortBody>;
export type OkMessage = Envelope<typeof Command.OK, OkBody>;
export type ErrorMessage = Envelope<typeof Command.ERROR, ErrorBody>;

export type Message =
  | HelloMessage | PrepareMessage | MemoryMessage | RoundMessage | StateMessage | CommitMessage | AbortMessage
  | OkMessage | ErrorMessage | DiskMessage;

/** What decodeMessage needs to know beyond the frame: the VM's RAM size (and disk size) once PREPARE was accepted. */
export interface DecodeContext {
  readonly ramBytes?: number;
  /** Set only for a migration that copies its disk. */
  readonly diskBytes?: number;
}

// ---------------------------------------------------------------------------------------------
// Wire schemas (JSON form)

const lowerHex = (chars: number): z.ZodString =>
  z.string().regex(new RegExp(`^[0-9a-f]{${chars}}$`), `must be ${chars} lowercase hex digits`);

const idString = (maxChars: number): z.ZodString =>
  z.string().regex(new RegExp(`^[A-Za-z0-9._-]{1,${maxChars}}$`), `must be 1..${maxChars} characters of A-Z a-z 0-9 . _ -`);

const intIn = (min: number, max: number): z.ZodNumber => z.number().int().min(min).max(max);

export const helloSchema = z.object({
  protocol: z.literal(1),
  ticket: lowerHex(64),
  role: z.enum(['control', 'data']),
  channel: intIn(0, MAX_DATA_CHANNELS - 1),
}).strict();

export const prepareVmSchema = z.object({
  name: vmNameSchema(),
  memoryBytes: ramBytesSchema(),
  vcpus: vcpusSchema(),
  granularityBytes: granularitySchema(),
  cmdline: cmdlineSchema(),
  imageSha256: lowerHex(64),
}).strict();

const diskPathSchema = z.string().min(1).max(MAX_DATASTORE_PATH_BYTES);
const diskCapacitySchema = intIn(DISK_SPACE.unitBytes, MAX_DISK_CAPACITY_BYTES).refine((n) => n % DISK_SPACE.unitBytes === 0, 'must be a multiple of 512');

const cidSchema = lowerHex(8);

export const chainLevelSpecSchema = z.object({
  path: diskPathSchema, cid: cidSchema, parentCid: cidSchema, capacityBytes: diskCapacitySchema,
  allocatedBytes: intIn(0, MAX_DISK_CAPACITY_BYTES),
}).strict();

export const prepareDiskSchema = z.discriminatedUnion('mode', [
  z.object({ mode: z.literal('shared'), datastoreId: lowerHex(32), path: diskPathSchema, capacityBytes: diskCapacitySchema }).strict(),
  z.object({
    mode: z.literal('copy'), datastore: vmNameSchema(), path: diskPathSchema, capacityBytes: diskCapacitySchema,
    blockBytes: intIn(MIN_CHANGED_BLOCK_BYTES, MAX_CHANGED_BLOCK_BYTES).refine((n) => (n & (n - 1)) === 0, 'must be a power of two'),
    chain: z.array(chainLevelSpecSchema).min(1).max(MAX_CHAIN_DEPTH).optional(),
  }).strict(),
]);

export const preparedDiskSchema = z.object({
  chain: z.array(z.object({ path: diskPathSchema, cid: cidSchema, migrate: z.boolean() }).strict()).min(1).max(MAX_CHAIN_DEPTH),
  seedPath: diskPathSchema.nullable(),
  verifyBytes: intIn(0, MAX_DISK_CAPACITY_BYTES * MAX_CHAIN_DEPTH),
}).strict();

export const instrumentationSourceSchema = z.enum(['cache', 'source', 'local']);

/** PREPARE's OK body: `accepted`, for a copied disk what the target made of its chain, and where its module came from. */
export const preparedSchema = z.object({
  accepted: z.literal(true), disk: preparedDiskSchema.optional(), instrumentation: instrumentationSourceSchema.optional(),
}).strict();

/** Base64 characters, padding only at the end (a flat character class: a grouped repetition overflows the regex stack on megabytes). */
const BASE64_RE = /^[A-Za-z0-9+/]+={0,2}$/;

export const prepareOfferSchema = z.object({
  build: z.string().min(1).max(MAX_INSTRUMENTER_BUILD_CHARS),
  sha256: lowerHex(64),
  binaryBase64: z.string().max(base64Chars(MAX_INSTRUMENTED_OFFER_BYTES), `must be at most ${MAX_INSTRUMENTED_OFFER_BYTES} bytes of base64`)
    .regex(BASE64_RE, 'must be canonical base64 of at least one byte').refine((b64) => b64.length % 4 === 0, 'must be canonical base64 (a multiple of 4 characters)'),
}).strict();

/** The JSON part of PREPARE (the image follows it in the payload). */
export const prepareSchema = z.object({
  migrationId: idString(MAX_MIGRATION_ID_CHARS),
  vm: prepareVmSchema,
  dataChannels: intIn(MIN_DATA_CHANNELS, MAX_DATA_CHANNELS),
  disk: prepareDiskSchema.optional(),
  instrumented: prepareOfferSchema.nullable().optional(),
}).strict();

/**
 * The capability a target lists in its HELLO reply's `offers` when it reads PREPARE's `instrumented`
 * (and answers `instrumentation`). A source sends the key only to such a target: an older target's
 * strict PREPARE schema would refuse it, and an older source's strict reading of the PREPARE reply
 * would refuse `instrumentation`.
 */
export const TARGET_OFFER_CAPABILITY = 'instrumented-module';

/** Whether a HELLO reply says the target reads PREPARE's `instrumented` (any other reply: it does not). */
export function takesInstrumentedOffer(helloReply: OkBody): boolean {
  const offers = helloReply['offers'];
  return Array.isArray(offers) && offers.includes(TARGET_OFFER_CAPABILITY);
}

/**
 * Whether an offer of `binaryBytes` fits a PREPARE with a `imageBytes` image (the frame's payload
 * bound holds both; the image always goes, the offer only if it fits).
 */
export function offerFits(imageBytes: number, binaryBytes: number): boolean {
  return binaryBytes <= MAX_INSTRUMENTED_OFFER_BYTES
    && PREPARE_JSON_LENGTH_BYTES + MAX_PREPARE_PLAIN_JSON_BYTES + base64Chars(binaryBytes) + imageBytes <= MAX_PREPARE_PAYLOAD_BYTES;
}

export const roundSchema = z.object({
  round: intIn(0, U32_MAX),
  regions: intIn(0, U32_MAX),
  bytes: intIn(0, Number.MAX_SAFE_INTEGER),
}).strict();

const u64Wire = u64StringSchema({ formatMessage: 'must be a canonical decimal u64 string' });

const globalSchema = globalValueSchema({ formatMessage: 'must be a canonical decimal i64 string' });

const vcpuSchema = z.object({
  halted: z.boolean(),
  globals: z.array(globalSchema).max(MAX_GLOBALS_PER_VCPU),
  lastClockReadNs: u64Wire,
}).strict();

export const stateSchema = z.object({
  claimedPages: intIn(0, MAX_CLAIMED_PAGES),
  clockNs: u64Wire,
  clockWallMs: intIn(0, Number.MAX_SAFE_INTEGER),
  vcpus: z.array(vcpuSchema).min(MIN_VCPUS).max(MAX_VCPUS),
}).strict();

export const commitSchema = z.object({ digest: lowerHex(16), diskDigest: lowerHex(16).optional() }).strict();

export const abortSchema = z.object({ reason: z.string().max(MAX_ABORT_REASON_CHARS) }).strict();

export const okSchema = z.record(z.string(), z.unknown());

export const errorSchema = errorBodySchema;

// ---------------------------------------------------------------------------------------------
// Helpers

function badPayload(command: FrameCommand, message: string, details: Record<string, unknown> = {}): FerryError {
  return libBadPayload(commandName(command), message, { command, ...details });
}

function decodeJson<S extends z.ZodTypeAny>(command: FrameCommand, schema: S, bytes: Uint8Array): z.output<S> {
  return decodeJsonPayload(commandName(command), schema, bytes, { command });
}

/** Validates a wire object before sending it; returns its UTF-8 JSON. */
function encodeJson(command: FrameCommand, schema: z.ZodTypeAny, wire: unknown): Buffer {
  return encodeJsonPayload(commandName(command), schema, wire, { command });
}

function cannotEncode(command: FrameCommand, message: string): FerryError {
  return libCannotEncode(commandName(command), message, { command });
}

// ---------------------------------------------------------------------------------------------
// Decoders (payload -> body)

export function decodeHello(payload: Uint8Array): HelloBody {
  return decodeJson(Command.HELLO, helloSchema, payload);
}

/** PREPARE: u32 JSON length, the JSON, then the image (returned as a view into `payload`). */
export function decodePrepare(payload: Uint8Array): PrepareBody {
  const C = Command.PREPARE;
  if (payload.byteLength < PREPARE_JSON_LENGTH_BYTES) {
    throw badPayload(C, `is ${payload.byteLength} bytes, shorter than its ${PREPARE_JSON_LENGTH_BYTES}-byte JSON length`);
  }
  const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const jsonLength = buf.readUInt32LE(0);
  if (jsonLength > MAX_PREPARE_JSON_BYTES) {
    throw new FerryError('PROTOCOL_TOO_LARGE',
      `PREPARE payload: the JSON part is ${jsonLength} bytes; the limit is ${MAX_PREPARE_JSON_BYTES}`,
      { command: C, jsonLength, maxJsonBytes: MAX_PREPARE_JSON_BYTES });
  }
  if (jsonLength > buf.length - PREPARE_JSON_LENGTH_BYTES) {
    throw badPayload(C, `the JSON part claims ${jsonLength} bytes but only ${buf.length - PREPARE_JSON_LENGTH_BYTES} follow`,
      { jsonLength });
  }
  const jsonEnd = PREPARE_JSON_LENGTH_BYTES + jsonLength;
  const header = decodeJson(C, prepareSchema, buf.subarray(PREPARE_JSON_LENGTH_BYTES, jsonEnd));
  const image = buf.subarray(jsonEnd);
  if (image.length === 0) throw badPayload(C, 'carries no guest image');
  if (image.length > MAX_IMAGE_BYTES) {
    throw new FerryError('PROTOCOL_TOO_LARGE',
      `PREPARE payload: the guest image is ${image.length} bytes; the limit is ${MAX_IMAGE_BYTES}`,
      { command: C, imageBytes: image.length, maxImageBytes: MAX_IMAGE_BYTES });
  }
  const { disk, instrumented, ...rest } = header;
  return {
    ...rest, image, ...(disk !== undefined ? { disk: prepareDiskOf(disk) } : {}),
    ...(instrumented !== undefined ? { instrumented: instrumented === null ? null : prepareOfferOf(instrumented) } : {}),
  };
}

/** The decoded offer: its module's bytes out of base64 (the schema checked it is canonical base64). */
function prepareOfferOf(offer: z.infer<typeof prepareOfferSchema>): PrepareOffer {
  return { build: offer.build, sha256: offer.sha256, binary: new Uint8Array(Buffer.from(offer.binaryBase64, 'base64')) };
}

/** The decoded disk without keys zod leaves `undefined` (exact optional properties). */
function prepareDiskOf(disk: z.infer<typeof prepareDiskSchema>): PrepareDisk {
  if (disk.mode === 'shared') return disk;
  const { chain, ...rest } = disk;
  return { ...rest, ...(chain !== undefined ? { chain } : {}) };
}

export function decodeRound(payload: Uint8Array): RoundBody {
  return decodeJson(Command.ROUND, roundSchema, payload);
}

export function decodeState(payload: Uint8Array): StateBody {
  return decodeJson(Command.STATE, stateSchema, payload);
}

export function decodeCommit(payload: Uint8Array): CommitBody {
  const { digest, diskDigest } = decodeJson(Command.COMMIT, commitSchema, payload);
  return { digest, ...(diskDigest !== undefined ? { diskDigest } : {}) };
}

export function decodeAbort(payload: Uint8Array): AbortBody {
  return decodeJson(Command.ABORT, abortSchema, payload);
}

/**
 * PREPARE's OK body as the source reads it: validated like any payload (a target is a peer, not
 * trusted), and checked against what the source announced — the same levels in the same order, only
 * a run at the base end unmarked, never the top. PROTOCOL_BAD_PAYLOAD otherwise.
 */
export function preparedFromOk(body: OkBody, announced: readonly ChainLevelSpec[] | undefined): PreparedBody {
  const parsed = preparedSchema.safeParse(body);
  if (!parsed.success) throw badPayload(Command.OK, `PREPARE reply: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  const { disk: parsedDisk, instrumentation } = parsed.data;
  const prepared: PreparedBody = {
    accepted: true, ...(parsedDisk !== undefined ? { disk: parsedDisk } : {}), ...(instrumentation !== undefined ? { instrumentation } : {}),
  };
  const disk = prepared.disk;
  if (disk === undefined) return prepared;
  if (announced === undefined) throw badPayload(Command.OK, 'PREPARE reply marks disk levels, but PREPARE announced none');
  if (disk.chain.length !== announced.length || disk.chain.some((l, i) => l.path !== announced[i]?.path || l.cid !== announced[i]?.cid)) {
    throw badPayload(Command.OK, 'PREPARE reply: its disk levels are not the ones PREPARE announced');
  }
  const firstKept = disk.chain.findIndex((l) => !l.migrate);
  if (firstKept === 0) throw badPayload(Command.OK, 'PREPARE reply: the top of the chain cannot be seeded (the VM writes it)');
  if (firstKept > 0 && disk.chain.slice(firstKept).some((l) => l.migrate)) throw badPayload(Command.OK, 'PREPARE reply: only a run of levels at the base end can stay');
  if ((firstKept > 0) !== (disk.seedPath !== null)) throw badPayload(Command.OK, 'PREPARE reply: seedPath must be given exactly when levels stay');
  return prepared;
}

export function decodeOk(payload: Uint8Array): OkBody {
  return decodeJson(Command.OK, okSchema, payload);
}

export function decodeError(payload: Uint8Array): ErrorBody {
  return decodeJson(Command.ERROR, errorSchema, payload);
}

/**
 * Decodes a complete frame into a typed message. MEMORY needs `context.ramBytes` (known once the
 * migration was prepared); without it a MEMORY frame is PROTOCOL_OUT_OF_ORDER.
 */
export function decodeMessage(frame: Frame, context: DecodeContext = {}): Message {
  const { requestId, payload } = frame;
  switch (frame.command) {
    case Command.HELLO: return { command: Command.HELLO, requestId, body: decodeHello(payload) };
    case Command.PREPARE: return { command: Command.PREPARE, requestId, body: decodePrepare(payload) };
    case Command.MEMORY: {
      if (context.ramBytes === undefined) {
        throw new FerryError('PROTOCOL_OUT_OF_ORDER',
          `MEMORY (request ${requestId}) arrived before the migration was prepared`, { command: Command.MEMORY, requestId });
      }
      return { command: Command.MEMORY, requestId, body: decodeMemoryBatch(payload, context.ramBytes) };
    }
    case Command.DISK: {
      if (context.diskBytes === undefined) {
        throw new FerryError('PROTOCOL_OUT_OF_ORDER',
          `DISK (request ${requestId}) arrived for a migration that copies no disk (or before it was prepared)`, { command: Command.DISK, requestId });
      }
      return { command: Command.DISK, requestId, body: decodeMemoryBatch(payload, context.diskBytes, DISK_SPACE) };
    }
    case Command.ROUND: return { command: Command.ROUND, requestId, body: decodeRound(payload) };
    case Command.STATE: return { command: Command.STATE, requestId, body: decodeState(payload) };
    case Command.COMMIT: return { command: Command.COMMIT, requestId, body: decodeCommit(payload) };
    case Command.ABORT: return { command: Command.ABORT, requestId, body: decodeAbort(payload) };
    case Command.OK: return { command: Command.OK, requestId, body: decodeOk(payload) };
    case Command.ERROR: return { command: Command.ERROR, requestId, body: decodeError(payload) };
    default: {
      const command: number = frame.command;
      throw new FerryError('PROTOCOL_BAD_COMMAND', `frame (request ${requestId}) has command code ${command}`,
        { command, requestId });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Encoders (body -> complete frame)

export function encodeHello(requestId: number, body: HelloBody): Buffer {
  const wire = { protocol: body.protocol, ticket: body.ticket, role: body.role, channel: body.channel };
  return encodeFrame(Command.HELLO, requestId, encodeJson(Command.HELLO, helloSchema, wire));
}

export function encodePrepare(requestId: number, body: PrepareBody): Buffer {
  const C = Command.PREPARE;
  const vm = body.vm;
  const wire = {
    migrationId: body.migrationId,
    vm: {
      name: vm.name, memoryBytes: vm.memoryBytes, vcpus: vm.vcpus, granularityBytes: vm.granularityBytes,
      cmdline: vm.cmdline, imageSha256: vm.imageSha256,
    },
    dataChannels: body.dataChannels,
    ...(body.disk !== undefined ? { disk: body.disk } : {}),
    ...(body.instrumented !== undefined ? { instrumented: body.instrumented === null ? null : prepareOfferToWire(body.instrumented) } : {}),
  };
  const json = encodeJson(C, prepareSchema, wire);
  if (json.length > MAX_PREPARE_JSON_BYTES) throw cannotEncode(C, `the JSON part is ${json.length} bytes; the limit is ${MAX_PREPARE_JSON_BYTES}`);
  if (body.image.byteLength === 0) throw cannotEncode(C, 'the guest image is empty');
  if (body.image.byteLength > MAX_IMAGE_BYTES) {
    throw new FerryError('PROTOCOL_TOO_LARGE', `cannot encode PREPARE: the guest image is ${body.image.byteLength} bytes; ` +
      `the limit is ${MAX_IMAGE_BYTES}`, { command: C, imageBytes: body.image.byteLength });
  }
  const payload = Buffer.allocUnsafe(PREPARE_JSON_LENGTH_BYTES + json.length + body.image.byteLength);
  payload.writeUInt32LE(json.length, 0);
  json.copy(payload, PREPARE_JSON_LENGTH_BYTES);
  payload.set(body.image, PREPARE_JSON_LENGTH_BYTES + json.length);
  return encodeFrame(C, requestId, payload);
}

function prepareOfferToWire(offer: PrepareOffer): z.input<typeof prepareOfferSchema> {
  if (offer.binary.byteLength > MAX_INSTRUMENTED_OFFER_BYTES) {
    throw new FerryError('PROTOCOL_TOO_LARGE', `cannot encode PREPARE: the offered module is ${offer.binary.byteLength} bytes; the limit is ${MAX_INSTRUMENTED_OFFER_BYTES}`,
      { command: Command.PREPARE, offerBytes: offer.binary.byteLength });
  }
  return { build: offer.build, sha256: offer.sha256, binaryBase64: Buffer.from(offer.binary.buffer, offer.binary.byteOffset, offer.binary.byteLength).toString('base64') };
}

/** MEMORY frame from entries (see encodeMemoryBatch). */
export function encodeMemory(requestId: number, round: number, entries: readonly MemoryEntryInput[]): Buffer {
  return encodeFrame(Command.MEMORY, requestId, encodeMemoryBatch(round, entries));
}

/** DISK frame from entries over the disk's sectors. */
export function encodeDisk(requestId: number, round: number, entries: readonly MemoryEntryInput[]): Buffer {
  return encodeFrame(Command.DISK, requestId, encodeMemoryBatch(round, entries, DISK_SPACE));
}

export function encodeRound(requestId: number, body: RoundBody): Buffer {
  const wire = { round: body.round, regions: body.regions, bytes: body.bytes };
  return encodeFrame(Command.ROUND, requestId, encodeJson(Command.ROUND, roundSchema, wire));
}

function globalToWire(g: GlobalValue, where: string): unknown {
  return globalValueToWire(g, (problem) => cannotEncode(Command.STATE, `${where}: ${problem}`));
}

export function encodeState(requestId: number, body: StateBody): Buffer {
  const C = Command.STATE;
  if (typeof body.clockNs !== 'bigint') throw cannotEncode(C, 'clockNs must be a bigint');
  body.vcpus.forEach((v, i) => {
    if (typeof v.lastClockReadNs !== 'bigint') throw cannotEncode(C, `vcpus.${i}.lastClockReadNs must be a bigint`);
  });
  if (body.vcpus.length > MAX_VCPUS) throw cannotEncode(C, `${body.vcpus.length} vCPUs; the limit is ${MAX_VCPUS}`);
  const wire = {
    claimedPages: body.claimedPages,
    clockNs: body.clockNs.toString(),
    clockWallMs: body.clockWallMs,
    vcpus: body.vcpus.map((v, i) => {
      if (v.globals.length > MAX_GLOBALS_PER_VCPU) {
        throw cannotEncode(C, `vcpus.${i} has ${v.globals.length} globals; the limit is ${MAX_GLOBALS_PER_VCPU}`);
      }
      return {
        halted: v.halted,
        globals: v.globals.map((g, j) => globalToWire(g, `vcpus.${i}.globals.${j}`)),
        lastClockReadNs: v.lastClockReadNs.toString(),
      };
    }),
  };
  return encodeFrame(C, requestId, encodeJson(C, stateSchema, wire));
}

export function encodeCommit(requestId: number, body: CommitBody): Buffer {
  const wire = { digest: body.digest, ...(body.diskDigest !== undefined ? { diskDigest: body.diskDigest } : {}) };
  return encodeFrame(Command.COMMIT, requestId, encodeJson(Command.COMMIT, commitSchema, wire));
}

export function encodeAbort(requestId: number, body: AbortBody): Buffer {
  return encodeFrame(Command.ABORT, requestId, encodeJson(Command.ABORT, abortSchema, { reason: body.reason }));
}

/**
 * OK reply. `body` must be a plain JSON-serialisable object; it is sent as JSON.stringify renders
 * it (undefined members are dropped).
 */
export function encodeOk(requestId: number, body: OkBody = {}): Buffer {
  return encodeFrame(Command.OK, requestId, encodeObjectPayload(commandName(Command.OK), body, { command: Command.OK }));
}

/** ERROR reply; a message longer than the bound is shortened (with an ellipsis) rather than refused. */
export function encodeError(requestId: number, body: ErrorBody): Buffer {
  return encodeFrame(Command.ERROR, requestId, encodeErrorPayload(commandName(Command.ERROR), body, { command: Command.ERROR }));
}

/** ERROR reply for a thrown value: a FerryError keeps its stable code, anything else becomes INTERNAL. */
export function encodeErrorFor(requestId: number, err: unknown): Buffer {
  return encodeError(requestId, errorBodyOf(err));
}

/** Encodes any message (MEMORY from its decoded form, so decode → encode round-trips). */
export function encodeMessage(message: Message): Buffer {
  switch (message.command) {
    case Command.HELLO: return encodeHello(message.requestId, message.body);
    case Command.PREPARE: return encodePrepare(message.requestId, message.body);
    case Command.MEMORY: return encodeMemory(message.requestId, message.body.round, message.body.entries);
    case Command.ROUND: return encodeRound(message.requestId, message.body);
    case Command.STATE: return encodeState(message.requestId, message.body);
    case Command.COMMIT: return encodeCommit(message.requestId, message.body);
    case Command.ABORT: return encodeAbort(message.requestId, message.body);
    case Command.OK: return encodeOk(message.requestId, message.body);
    case Command.ERROR: return encodeError(message.requestId, message.body);
    case Command.DISK: return encodeDisk(message.requestId, message.body.round, message.body.entries);
  }
}

/** Enough runs for V8 to leave the interpreter for the code on the switch-over path. */
const WARM_UP_RUNS = 20;

/**
 * Encodes and decodes the switch-over messages (STATE, COMMIT, OK) a few times. They run once per
 * migration, with the guest stunned, and their first run in a process (zod schemas, BigInt
 * formatting, cold bytecode) took ~3 ms of encode and ~0.5 ms of decode here — most of the STATE
 * round trip. A host calls this at start-up so the downtime path never runs cold.
 */
export function warmUpSwitchoverCodecs(): void {
  const state: StateBody = {
    claimedPages: 1, clockNs: 1n, clockWallMs: Date.now(),
    vcpus: [{
      halted: false, lastClockReadNs: 1n,
      globals: [{ type: 'i32', value: 1 }, { type: 'i64', value: 1n }, { type: 'f32', value: 0.5 }, { type: 'f64', value: 0.25 }],
    }],
  };
  for (let i = 0; i < WARM_UP_RUNS; i++) {
    decodeState(encodeState(i + 1, state).subarray(HEADER_BYTES));
    decodeCommit(encodeCommit(i + 1, { digest: '0123456789abcdef' }).subarray(HEADER_BYTES));
    decodeOk(encodeOk(i + 1, { resumed: true }).subarray(HEADER_BYTES));
  }
}
