/**
 * A datastore: a named place where disk files live (a local directory today; a shared directory
 * several hosts mount; later other backends). Disks, snapshot files and network file copies read
 * and write through it — nothing else opens disk files by raw path — so that every path is checked
 * once, here, and every writer holds a lease (./lease.ts). docs/design/datastores.md is the design.
 *
 * Paths inside a datastore are relative, '/'-separated and validated at the boundary by
 * `datastorePathParts`: a path that names something outside the datastore is refused before any
 * file system call is made (the implementation also checks where symlinks lead).
 */
import { FerryError } from '../lib/errors.js';
import { MAX_DATASTORE_PATH_BYTES, VM_NAME_PATTERN, VM_NAME_RULE } from '../lib/limits.js';
import type { BlockFile } from './block-file.js';
import type { Lease } from './lease.js';

/** Datastore names follow the VM name rule: they appear in "ds:path" references, URLs and logs. */
export const DATASTORE_NAME_PATTERN = VM_NAME_PATTERN;
export const DATASTORE_NAME_RULE = VM_NAME_RULE;

export { MAX_DATASTORE_PATH_BYTES };
/** Longest path component in bytes: NAME_MAX of Linux file systems, less room for the lease suffix. */
export const MAX_PATH_COMPONENT_BYTES = 200;
/** Deepest path (components): disk layouts are a folder or two deep; a deep path is a mistake or an attack. */
export const MAX_DATASTORE_PATH_DEPTH = 16;
/** Most entries one list() returns (a directory holding more is reported as truncated). */
export const MAX_LIST_ENTRIES = 10_000;

/**
 * Names ending in this are the datastore's own lease files (./lease.ts), and names containing it
 * followed by a dot are their temporary and broken-aside siblings: callers can neither open nor
 * list them, so no disk can be mistaken for a lock or a lock for a disk.
 */
export const LEASE_SUFFIX = '.lck';

/**
 * The datastore's identity file at its root: a random id written once, at the first mount. Two hosts
 * that mount one shared directory read the same id, so "this host and that one see the same disks"
 * is decided by it, never by the names the hosts gave the datastore. Reserved like lease files.
 */
export const DATASTORE_ID_FILE = '.ferry-datastore';
/**
 * The network file copy's journals and checksum files live in this directory at the root of the
 * target datastore (docs/design/nfc.md): reserved, so that no user can open, list or overwrite them.
 */
export const COPY_AREA_DIR = '.ferry-copies';
/** A copy's staging file is `<path>` + this + 8 digits of the copy id: reserved until it is renamed into place. */
export const COPY_STAGING_INFIX = '.ferry-copy-';

/** A datastore id: 32 lowercase hex digits (128 random bits). */
export const DATASTORE_ID_PATTERN = /^[0-9a-f]{32}$/;

/** The root of a datastore, for list() and stat() only. */
export const DATASTORE_ROOT = '';

export function isDatastoreName(name: string): boolean {
  return DATASTORE_NAME_PATTERN.test(name);
}

/** True for the network file copy's own names: its area (COPY_AREA_DIR) and its staging files. */
export function isCopyName(component: string): boolean {
  return component.startsWith(COPY_AREA_DIR) || component.includes(COPY_STAGING_INFIX);
}

/**
 * True for the datastore's own lease files and their siblings, its id file, and (unless
 * `allowCopyNames`: the copy area of Datastore.copyArea()) the network file copy's names — never
 * shown, never opened.
 */
export function isReservedName(component: string, opts: { allowCopyNames?: boolean } = {}): boolean {
  return component.endsWith(LEASE_SUFFIX) || component.includes(`${LEASE_SUFFIX}.`) || component.startsWith(DATASTORE_ID_FILE)
    || (opts.allowCopyNames !== true && isCopyName(component));
}

function refuse(path: string, reason: string, why: string): never {
  throw new FerryError('DATASTORE_PATH_INVALID', `datastore path "${path.slice(0, 80)}${path.length > 80 ? '…' : ''}" ${why}`, { reason });
}

/**
 * The components of a datastore path, or DATASTORE_PATH_INVALID (details.reason says which rule):
 * relative, no NUL, no backslash, no empty, "." or ".." component (so no "//" and no trailing "/"),
 * at most MAX_DATASTORE_PATH_BYTES, MAX_PATH_COMPONENT_BYTES per component and
 * MAX_DATASTORE_PATH_DEPTH components, no reserved name (isReservedName). DATASTORE_ROOT ('') only if allowed.
 */
export function datastorePathParts(path: string, opts: { allowRoot?: boolean; allowCopyNames?: boolean } = {}): string[] {
  if (typeof path !== 'string') refuse(String(path), 'type', 'is not a string');
  if (path === DATASTORE_ROOT) {
    if (opts.allowRoot === true) return [];
    refuse(path, 'empty', 'is empty');
  }
  if (Buffer.byteLength(path) > MAX_DATASTORE_PATH_BYTES) refuse(path, 'too-long', `is longer than ${MAX_DATASTORE_PATH_BYTES} bytes`);
  if (path.includes('\0')) refuse(path, 'nul', 'contains a NUL character');
  if (path.startsWith('/')) refuse(path, 'absolute', 'is absolute (datastore paths are relative to the datastore)');
  // A backslash is an ordinary character to Linux but a separator to a Windows-made descriptor: refused, not guessed.
  if (path.includes('\\')) refuse(path, 'backslash', 'contains a backslash (the separator is "/")');
  const parts = path.split('/');
  if (parts.length > MAX_DATASTORE_PATH_DEPTH) refuse(path, 'too-deep', `has more than ${MAX_DATASTORE_PATH_DEPTH} components`);
  for (const part of parts) {
    if (part === '') refuse(path, 'empty-component', 'has an empty component ("//", or a leading or trailing "/")');
    if (part === '..') refuse(path, 'dot-dot', 'has a ".." component (it would leave its directory)');
    if (part === '.') refuse(path, 'dot', 'has a "." component');
    if (Buffer.byteLength(part) > MAX_PATH_COMPONENT_BYTES) refuse(path, 'component-too-long', `has a component longer than ${MAX_PATH_COMPONENT_BYTES} bytes`);
    if (isReservedName(part, opts)) refuse(path, 'reserved', `names one of the datastore's own files (lease files "*${LEASE_SUFFIX}", "${DATASTORE_ID_FILE}", the copy area "${COPY_AREA_DIR}" and staging files "*${COPY_STAGING_INFIX}*")`);
  }
  return parts;
}

export interface DatastoreOpenOptions {
  /** No lease is taken; writes are refused. */
  readonly readOnly?: boolean;
  /** Create the file (it must not exist yet). Implies writing, so a lease is taken. */
  readonly create?: boolean;
  /**
   * With readOnly: take the file's write lease all the same (DISK_LOCKED if anyone holds a live one)
   * while opening it for reading only — nobody can open it for writing while this is open, and
   * nothing is written through it (a network file copy's source). Released at close().
   */
  readonly lease?: boolean;
}

/** A file opened through a datastore. Writers hold `lease` until close(); readers hold none. */
export interface DatastoreFile extends BlockFile {
  readonly lease: Lease | null;
}

export type DatastoreEntryKind = 'file' | 'directory' | 'symlink' | 'other';

export interface DatastoreEntry {
  readonly name: string;
  readonly kind: DatastoreEntryKind;
}

export interface DatastoreListing {
  /** Sorted by name; lease files are never listed. */
  readonly entries: readonly DatastoreEntry[];
  /** The directory held more than MAX_LIST_ENTRIES entries. */
  readonly truncated: boolean;
}

export interface DatastoreStat {
  readonly kind: DatastoreEntryKind;
  readonly sizeBytes: number;
  readonly modifiedMs: number;
}

export interface DatastoreSpace {
  /** Bytes an unprivileged writer can still allocate (statfs f_bavail × f_bsize). */
  readonly freeBytes: number;
  readonly totalBytes: number;
}

export interface Datastore {
  /** The name this host mounts it under (another host may use another name for the same store). */
  readonly name: string;
  /** Its identity (DATASTORE_ID_FILE): equal on every host that mounts the same store. */
  readonly id: string;
  /** Where it lives, for operators (a local directory's real path). */
  readonly location: string;
  /** Opens a file; writers take its lease first (DISK_LOCKED if another holds a live one). */
  open(path: string, options?: DatastoreOpenOptions): Promise<DatastoreFile>;
  /**
   * Renames atomically: readers see the old name or the new one, never neither. An existing `to`
   * is ALREADY_EXISTS unless `overwrite`. A file with a live lease is DISK_LOCKED.
   */
  rename(from: string, to: string, options?: { overwrite?: boolean }): Promise<void>;
  /** Removes a file or an empty directory; a file with a live lease is DISK_LOCKED. */
  remove(path: string): Promise<void>;
  list(dir: string): Promise<DatastoreListing>;
  stat(path: string): Promise<DatastoreStat>;
  /** Creates a directory and any missing parents (an existing directory is fine). */
  mkdir(path: string): Promise<void>;
  space(): Promise<DatastoreSpace>;
  /** Bytes free (space().freeBytes). */
  spaceLeft(): Promise<number>;
  /**
   * The same datastore, seen by the network file copy's target side only (src/nfc/local-sink.ts): its
   * paths may also name COPY_AREA_DIR and staging files (lease files and the id file stay refused).
   */
  copyArea(): CopyArea;
}

/** A datastore as the network file copy's target side sees it: its reserved names, and durable small writes. */
export interface CopyArea extends Datastore {
  /** Replaces the file `path` with `data` atomically and durably: a temporary file, fsync, rename over, fsync of the directory. */
  replaceFile(path: string, data: Uint8Array): Promise<void>;
  /** fsync of directory `path` (DATASTORE_ROOT for the root): makes the renames and creates in it durable. */
  syncDirectory(path: string): Promise<void>;
}
