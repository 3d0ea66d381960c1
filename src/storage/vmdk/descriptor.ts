/**
 * The embedded descriptor: the text in the descriptor sectors of a sparse extent that names the
 * disk's content ID (CID), its parent's (parentCID), its type and its one extent. Parsed strictly —
 * every line must be a comment, a `key=value`, an extent line or a `ddb.key = "value"` — and
 * encoded only from values that cannot break out of their line (no quote, newline or control
 * character): a parentFileNameHint like `a.vmdk"\nRW 1 FLAT "/etc/shadow` is refused, not written.
 */
import { randomInt } from 'node:crypto';
import { FerryError } from '../../lib/errors.js';
import type { BlockFile } from '../block-file.js';
import { type SparseHeader, SECTOR_BYTES } from './header.js';

export type CreateType = 'monolithicSparse' | 'streamOptimized';
const CREATE_TYPES: readonly CreateType[] = ['monolithicSparse', 'streamOptimized'];

/** parentCID of a disk with no parent. */
export const CID_NO_PARENT = 0xffffffff;
/** VMware reserves this one too ("CID not set"); a fresh CID is never either. */
export const CID_RESERVED = 0xfffffffe;
/** QEMU's bound on an extent file name. */
export const MAX_EXTENT_NAME_CHARS = 511;
/** A parent hint is a path; the same bound keeps a hostile one from filling the descriptor. */
export const MAX_PARENT_HINT_CHARS = 4096;
/** Keys after the known ones (ddb.* and others) kept on a rewrite; a descriptor with more is not a disk's. */
export const MAX_OTHER_KEYS = 256;

export type ExtentAccess = 'RW' | 'RDONLY';

export interface Descriptor {
  readonly cid: number;
  readonly parentCid: number;
  readonly createType: CreateType;
  readonly parentFileNameHint?: string;
  readonly extent: { readonly access: ExtentAccess; readonly sectors: number; readonly fileName: string };
  /** ddb.* keys (and other top-level keys) in file order, kept verbatim on a rewrite. */
  readonly ddb: readonly (readonly [string, string])[];
}

/** A new content ID: random, never one of the two reserved values. */
export function newCid(previous?: number): number {
  for (;;) {
    const cid = randomInt(0, 0x100000000);
    if (cid !== CID_NO_PARENT && cid !== CID_RESERVED && cid !== previous) return cid;
  }
}

export const formatCid = (cid: number): string => cid.toString(16).padStart(8, '0');

const invalid = (name: string, msg: string): FerryError => new FerryError('DISK_DESCRIPTOR_INVALID', `${name}: descriptor: ${msg}`);

/** Tab is allowed inside text (VMware indents with it); every other C0 control and DEL is not. */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f]/;
// eslint-disable-next-line no-control-regex
const UNSAFE_VALUE = /["\u0000-\u001f\u007f]/;
const HEX_CID = /^[0-9a-fA-F]{1,8}$/;
const KEY = /^[A-Za-z][A-Za-z0-9_.]*$/;
const KEY_VALUE = /^([A-Za-z][A-Za-z0-9_.]*)\s*=\s*(.*)$/;
const EXTENT_LINE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Z]+)\s+"([^"]*)"(\s+\d+)?$/;

function unquote(raw: string, name: string, key: string): string {
  const v = raw.trim();
  if (v.startsWith('"')) {
    if (v.length < 2 || !v.endsWith('"') || v.slice(1, -1).includes('"')) throw invalid(name, `badly quoted value of ${key}`);
    return v.slice(1, -1);
  }
  if (v.includes('"') || /\s/.test(v)) throw invalid(name, `badly quoted value of ${key}`);
  return v;
}

function parseCid(v: string, name: string, key: string): number {
  if (!HEX_CID.test(v)) throw invalid(name, `${key} "${v.slice(0, 16)}" is not a hexadecimal content ID`);
  return Number.parseInt(v, 16);
}

/** `bytes` is the descriptor area; the text ends at the first NUL (the rest of the area is padding). */
export function parseDescriptor(bytes: Uint8Array, name: string): Descriptor {
  const end = bytes.indexOf(0);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(end < 0 ? bytes : bytes.subarray(0, end));
  } catch {
    throw invalid(name, 'not UTF-8 text');
  }
  const keys = new Map<string, string>();
  const ddb: (readonly [string, string])[] = [];
  const extents: Descriptor['extent'][] = [];
  for (const rawLine of text.split('\n')) {
    const line = rawLine.replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    if (CONTROL.test(line)) throw invalid(name, 'control characters in a line');
    const ext = EXTENT_LINE.exec(line);
    if (ext !== null) {
      const [, access, sectors, type, fileName] = ext as unknown as [string, string, string, string, string];
      if (access === 'NOACCESS') throw new FerryError('DISK_UNSUPPORTED', `${name}: a NOACCESS extent`);
      if (type !== 'SPARSE') throw new FerryError('DISK_UNSUPPORTED', `${name}: extent type ${type} (only SPARSE, monolithic)`);
      if (fileName.length === 0 || fileName.length > MAX_EXTENT_NAME_CHARS) throw invalid(name, `extent file name of ${fileName.length} characters (1..${MAX_EXTENT_NAME_CHARS})`);
      extents.push({ access: access as ExtentAccess, sectors: Number(sectors), fileName });
      continue;
    }
    const kv = KEY_VALUE.exec(line);
    if (kv === null) throw invalid(name, `unrecognised line "${line.slice(0, 40)}"`);
    const [, key, raw] = kv as unknown as [string, string, string];
    const value = unquote(raw, name, key);
    if (keys.has(key)) throw invalid(name, `${key} given twice`);
    keys.set(key, value);
    if (!['version', 'CID', 'parentCID', 'createType', 'parentFileNameHint'].includes(key)) {
      if (ddb.length >= MAX_OTHER_KEYS) throw invalid(name, `more than ${MAX_OTHER_KEYS} keys`);
      ddb.push([key, value]);
    }
  }
  if (keys.get('version') !== '1') throw invalid(name, `version ${keys.get('version') ?? '(missing)'} (only 1)`);
  const cidText = keys.get('CID');
  const parentText = keys.get('parentCID');
  const typeText = keys.get('createType');
  if (cidText === undefined || parentText === undefined || typeText === undefined) throw invalid(name, 'CID, parentCID and createType are required');
  const createType = CREATE_TYPES.find((t) => t === typeText);
  if (createType === undefined) throw new FerryError('DISK_UNSUPPORTED', `${name}: createType "${typeText.slice(0, 40)}" (only ${CREATE_TYPES.join(', ')})`);
  if (extents.length !== 1) throw new FerryError('DISK_UNSUPPORTED', `${name}: ${extents.length} extents (exactly one)`);
  const parentCid = parseCid(parentText, name, 'parentCID');
  const hint = keys.get('parentFileNameHint');
  if (hint !== undefined && (hint.length === 0 || hint.length > MAX_PARENT_HINT_CHARS)) throw invalid(name, `parentFileNameHint of ${hint.length} characters`);
  return {
    cid: parseCid(cidText, name, 'CID'), parentCid, createType,
    ...(hint !== undefined ? { parentFileNameHint: hint } : {}),
    extent: extents[0] as Descriptor['extent'], ddb,
  };
}

/**
 * Reads the descriptor where `header` places it, parses it, and checks it against the header: the
 * createType of the extent kind the header is (`createType`), and an extent line of its capacity.
 */
export async function readDescriptor(file: BlockFile, header: SparseHeader, createType: CreateType): Promise<Descriptor> {
  const name = file.name;
  const area = new Uint8Array(header.descriptorSizeSectors * SECTOR_BYTES);
  await file.read(header.descriptorOffsetSectors * SECTOR_BYTES, area);
  const desc = parseDescriptor(area, name);
  if (desc.createType !== createType) throw new FerryError('DISK_CORRUPT', `${name}: createType ${desc.createType} with a ${createType} header`);
  if (desc.extent.sectors !== header.capacitySectors) {
    throw new FerryError('DISK_CORRUPT', `${name}: the extent line says ${desc.extent.sectors} sectors, the header ${header.capacitySectors}`);
  }
  return desc;
}

function safe(value: string, what: string): string {
  if (UNSAFE_VALUE.test(value)) throw new FerryError('DISK_DESCRIPTOR_INVALID', `${what} contains a quote, a newline or a control character`);
  return value;
}

/** The descriptor text, NUL-padded to `areaBytes`; refused if it does not fit. */
export function encodeDescriptor(d: Descriptor, areaBytes: number): Uint8Array {
  const lines = [
    '# Disk DescriptorFile',
    'version=1',
    `CID=${formatCid(d.cid)}`,
    `parentCID=${formatCid(d.parentCid)}`,
    `createType="${d.createType}"`,
  ];
  if (d.parentFileNameHint !== undefined) {
    if (d.parentFileNameHint.length === 0 || d.parentFileNameHint.length > MAX_PARENT_HINT_CHARS) throw new FerryError('DISK_DESCRIPTOR_INVALID', 'parentFileNameHint length');
    lines.push(`parentFileNameHint="${safe(d.parentFileNameHint, 'parentFileNameHint')}"`);
  }
  const { fileName } = d.extent;
  if (fileName.length === 0 || fileName.length > MAX_EXTENT_NAME_CHARS) throw new FerryError('DISK_DESCRIPTOR_INVALID', `extent file name of ${fileName.length} characters`);
  lines.push('# Extent description', `${d.extent.access} ${d.extent.sectors} SPARSE "${safe(fileName, 'extent file name')}"`, '# The Disk Data Base', '#DDB');
  for (const [key, value] of d.ddb) {
    if (!KEY.test(key)) throw new FerryError('DISK_DESCRIPTOR_INVALID', `descriptor key "${key.slice(0, 40)}"`);
    lines.push(`${key} = "${safe(value, key)}"`);
  }
  const text = new TextEncoder().encode(lines.join('\n') + '\n');
  if (text.length > areaBytes) throw new FerryError('DISK_TOO_LARGE', `descriptor of ${text.length} bytes does not fit its ${areaBytes}-byte area`);
  const out = new Uint8Array(areaBytes);
  out.set(text);
  return out;
}

/** ddb keys of a new disk, as qemu-img writes them (CHS geometry of an IDE disk, capped like qemu). */
export function defaultDdb(capacitySectors: number): [string, string][] {
  const HEADS = 16;
  const SECTORS_PER_TRACK = 63;
  const MAX_CYLINDERS = 16383;
  const cylinders = Math.min(MAX_CYLINDERS, Math.floor(capacitySectors / (HEADS * SECTORS_PER_TRACK)));
  return [
    ['ddb.virtualHWVersion', '4'],
    ['ddb.geometry.cylinders', String(cylinders)],
    ['ddb.geometry.heads', String(HEADS)],
    ['ddb.geometry.sectors', String(SECTORS_PER_TRACK)],
    ['ddb.adapterType', 'ide'],
  ];
}
