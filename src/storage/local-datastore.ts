/**
 * The local-directory datastore: a directory of this machine (or a shared file system mounted on
 * it) holding disk files. Paths are checked by the rules of ./datastore.ts, then resolved with
 * realpath and refused if they lead outside the root (a symlink inside the datastore may point
 * within it, never out); files are opened by the real path that was checked, with O_NOFOLLOW.
 * Writers take the file's lease (./lease.ts) before the file is opened and give it up after close.
 *
 * What is not defended against: another local user who can write into the datastore directory
 * and swaps a checked directory for a symlink between the check and the open. The threat is
 * hostile *paths* (from API requests, disk descriptors' parent hints), not hostile neighbours.
 */
import { link, lstat, mkdir, open, opendir, readFile, realpath, rename, rmdir, stat, statfs, unlink, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { constants } from 'node:fs';
import { dirname, join, sep } from 'node:path';
import { FerryError, errnoCode, errorMessage } from '../lib/errors.js';
import {
  DATASTORE_ID_FILE, DATASTORE_ID_PATTERN, DATASTORE_NAME_RULE, MAX_LIST_ENTRIES, datastorePathParts, isDatastoreName, isReservedName,
  type CopyArea, type DatastoreEntry, type DatastoreEntryKind, type DatastoreFile, type DatastoreListing,
  type DatastoreOpenOptions, type DatastoreSpace, type DatastoreStat,
} from './datastore.js';
import { DEFAULT_LEASE_TIMING, Lease, checkLeaseOwner, checkLeaseTiming, clearStaleLease, type LeaseOwner, type LeaseTiming } from './lease.js';
import { LocalFile } from './local-file.js';
import { LeasedFile } from './leased-file.js';

export interface LocalDatastoreOptions {
  /** Who this host is, as written into the leases it takes. */
  readonly owner: LeaseOwner;
  readonly leaseTiming?: LeaseTiming;
}

function kindOf(st: Pick<Stats, 'isFile' | 'isDirectory' | 'isSymbolicLink'>): DatastoreEntryKind {
  return st.isFile() ? 'file' : st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'other';
}

/**
 * The id in the root's DATASTORE_ID_FILE, written at the first mount. Created as a temporary file
 * then link(2)ed into place, so that two hosts mounting a fresh shared directory at once agree on
 * one id (the loser of the link reads the winner's).
 */
async function datastoreId(name: string, root: string): Promise<string> {
  const path = join(root, DATASTORE_ID_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const text = (await readFile(path, 'utf8')).trim();
      if (!DATASTORE_ID_PATTERN.test(text)) throw new FerryError('DATASTORE_INVALID', `datastore ${name}: ${path} does not hold a datastore id (32 hex digits); it is not Ferry's, or it was damaged`, { name, path, reason: 'id' });
      return text;
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') {
        if (err instanceof FerryError) throw err;
        throw new FerryError('DATASTORE_INVALID', `datastore ${name}: cannot read ${path}: ${errorMessage(err)}`, { name, path, reason: 'id' });
      }
    }
    const tmp = `${path}.${randomBytes(8).toString('hex')}`;
    try {
      await writeFile(tmp, `${randomBytes(16).toString('hex')}\n`, { flag: 'wx' });
      await link(tmp, path).catch((err: unknown) => { if (errnoCode(err) !== 'EEXIST') throw err; });
    } catch (err) {
      throw new FerryError('DATASTORE_INVALID', `datastore ${name}: cannot write its id file ${path}: ${errorMessage(err)}`, { name, path, reason: 'id' });
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }
  throw new FerryError('DATASTORE_INVALID', `datastore ${name}: its id file ${path} vanished while it was being created`, { name, path, reason: 'id' });
}

export class LocalDatastore implements CopyArea {
  private readonly timing: LeaseTiming;

  private constructor(
    readonly name: string, readonly id: string, readonly location: string, private readonly owner: LeaseOwner, timing: LeaseTiming,
    /** True for the view copyArea() gives: paths may name the network file copy's reserved names. */
    private readonly copyNames = false,
  ) {
    this.timing = checkLeaseTiming(timing);
    checkLeaseOwner(owner);
  }

  /** Mounts directory `root` as datastore `name`: DATASTORE_INVALID (details.reason) if it cannot be. */
  static async mount(name: string, root: string, options: LocalDatastoreOptions): Promise<LocalDatastore> {
    if (!isDatastoreName(name)) throw new FerryError('DATASTORE_INVALID', `datastore name "${name}" is not ${DATASTORE_NAME_RULE}`, { name, reason: 'name' });
    let real: string;
    try {
      real = await realpath(root);
    } catch (err) {
      throw new FerryError('DATASTORE_INVALID', `datastore ${name}: ${root} does not exist or cannot be read (${errorMessage(err)})`, { name, path: root, reason: 'missing' });
    }
    if (!(await stat(real)).isDirectory()) throw new FerryError('DATASTORE_INVALID', `datastore ${name}: ${root} is not a directory`, { name, path: root, reason: 'not-directory' });
    const id = await datastoreId(name, real);
    return new LocalDatastore(name, id, real, options.owner, options.leaseTiming ?? DEFAULT_LEASE_TIMING);
  }

  copyArea(): LocalDatastore {
    return this.copyNames ? this : new LocalDatastore(this.name, this.id, this.location, this.owner, this.timing, true);
  }

  async open(path: string, options: DatastoreOpenOptions = {}): Promise<DatastoreFile> {
    const parts = this.parts(path);
    const label = this.label(path);
    const create = options.create === true;
    if (create && options.readOnly === true) throw new FerryError('INVALID_ARGUMENT', `${label}: a file cannot be created read-only`);
    if (options.lease === true && options.readOnly !== true) throw new FerryError('INVALID_ARGUMENT', `${label}: "lease" is for read-only opens (a writer takes its lease anyway)`);
    // A new file: its parent must be inside; the name itself cannot be a symlink (O_EXCL refuses one).
    const real = create ? await this.resolveEntry(path, parts) : await this.resolveExisting(path, parts);
    if (options.lease === true) {
      // The lease first, as a writer does: once it is ours, nobody opens the file for writing until close().
      const lease = await Lease.take(real, this.owner, this.timing, label);
      try {
        return new LeasedFile(await LocalFile.open(real, { readOnly: true, noFollow: true }, label), lease);
      } catch (err) {
        await lease.release();
        throw err;
      }
    }
    if (!create && options.readOnly === true) {
      // Readers take no lease and do not look at one: a reader of a disk another host writes sees
      // what that host has flushed (snapshot bases are read-only and written by nobody).
      return new LeasedFile(await LocalFile.open(real, { readOnly: true, noFollow: true }, label), null);
    }
    const lease = await Lease.take(real, this.owner, this.timing, label);
    try {
      return new LeasedFile(await LocalFile.open(real, { create, noFollow: true }, label), lease);
    } catch (err) {
      await lease.release();
      throw err;
    }
  }

  async rename(from: string, to: string, options: { overwrite?: boolean } = {}): Promise<void> {
    const realFrom = await this.resolveEntry(from, this.parts(from));
    const realTo = await this.resolveEntry(to, this.parts(to));
    const st = await this.lstatOf(from, realFrom);
    // A disk being written stays where its writer opened it; a dead writer's lease is tidied first.
    if (st.isFile()) await clearStaleLease(realFrom, this.label(from), this.owner, this.timing);
    if (options.overwrite === true) {
      await clearStaleLease(realTo, this.label(to), this.owner, this.timing);
      await this.fsOp(`rename ${this.label(from)} to ${to}`, () => rename(realFrom, realTo));
      return;
    }
    if (st.isDirectory()) {
      // rename(2) of a directory never replaces a file (ENOTDIR) or a non-empty directory
      // (ENOTEMPTY), but would replace an empty one: refused by looking first. A directory created
      // between the look and the rename is the one race left; it holds nothing, so nothing is lost.
      if (await this.lstatOrNull(realTo) !== null) throw new FerryError('ALREADY_EXISTS', `${this.label(to)} already exists`);
      await this.fsOp(`rename ${this.label(from)} to ${to}`, () => rename(realFrom, realTo));
      return;
    }
    // link(2) is the atomic "create this name unless it exists"; the old name goes after. A crash in
    // between leaves both names on the one file (a later remove tidies), never neither.
    await this.fsOp(`rename ${this.label(from)} to ${to}`, () => link(realFrom, realTo));
    await this.fsOp(`rename ${this.label(from)} to ${to}`, () => unlink(realFrom));
  }

  async remove(path: string): Promise<void> {
    const real = await this.resolveEntry(path, this.parts(path));
    const st = await this.lstatOf(path, real);
    if (st.isDirectory()) {
      await this.fsOp(`remove ${this.label(path)}`, () => rmdir(real));
      return;
    }
    await clearStaleLease(real, this.label(path), this.owner, this.timing);
    await this.fsOp(`remove ${this.label(path)}`, () => unlink(real));
  }

  async list(dir: string): Promise<DatastoreListing> {
    const real = await this.resolveExisting(dir, this.parts(dir, true));
    const entries: DatastoreEntry[] = [];
    let truncated = false;
    const d = await this.fsOp(`list ${this.label(dir)}`, () => opendir(real));
    for await (const e of d) {
      if (isReservedName(e.name, { allowCopyNames: this.copyNames })) continue;
      if (entries.length === MAX_LIST_ENTRIES) { truncated = true; break; }
      entries.push({ name: e.name, kind: kindOf(e) });
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { entries, truncated };
  }

  async stat(path: string): Promise<DatastoreStat> {
    const real = await this.resolveExisting(path, this.parts(path, true));
    const st = await this.fsOp(`stat ${this.label(path)}`, () => stat(real));
    return { kind: kindOf(st), sizeBytes: st.size, modifiedMs: st.mtimeMs };
  }

  async mkdir(path: string): Promise<void> {
    const parts = this.parts(path);
    let real = this.location;
    // One level at a time, so that each existing level is checked to stay inside before going deeper.
    for (const part of parts) {
      const next = join(real, part);
      try {
        await mkdir(next);
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') throw new FerryError('STORE_IO', `mkdir ${this.label(path)}: ${errorMessage(err)}`);
      }
      real = this.inside(path, await this.fsOp(`mkdir ${this.label(path)}`, () => realpath(next)));
      if (!(await stat(real)).isDirectory()) throw new FerryError('ALREADY_EXISTS', `${this.label(path)}: ${part} exists and is not a directory`);
    }
  }

  async space(): Promise<DatastoreSpace> {
    const s = await this.fsOp(`statfs of datastore ${this.name}`, () => statfs(this.location));
    return { freeBytes: s.bavail * s.bsize, totalBytes: s.blocks * s.bsize };
  }

  async spaceLeft(): Promise<number> {
    return (await this.space()).freeBytes;
  }

  async replaceFile(path: string, data: Uint8Array): Promise<void> {
    const real = await this.resolveEntry(path, this.parts(path));
    // The temporary name is the file's own plus a random tail: in the same directory (rename(2) stays
    // atomic), and as reserved as the file itself when that one is (a copy area's journal).
    const tmp = `${real}.${randomBytes(8).toString('hex')}.tmp`;
    const what = `replace ${this.label(path)}`;
    try {
      await this.fsOp(what, async () => {
        const fh = await open(tmp, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW);
        try {
          await fh.writeFile(data);
          await fh.datasync();
        } finally {
          await fh.close();
        }
      });
      await this.fsOp(what, () => rename(tmp, real));
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
    await this.syncReal(what, dirname(real));
  }

  async syncDirectory(path: string): Promise<void> {
    await this.syncReal(`sync ${this.label(path)}`, await this.resolveExisting(path, this.parts(path, true)));
  }

  private async syncReal(what: string, realDir: string): Promise<void> {
    await this.fsOp(what, async () => {
      const fh = await open(realDir, constants.O_RDONLY | constants.O_DIRECTORY);
      try { await fh.sync(); } finally { await fh.close(); }
    });
  }

  private parts(path: string, allowRoot = false): string[] {
    return datastorePathParts(path, { allowRoot, allowCopyNames: this.copyNames });
  }

  private label(path: string): string {
    return `${this.name}:${path}`;
  }

  /** `real` if it is the root or below it, else DATASTORE_PATH_INVALID (a symlink led out). */
  private inside(path: string, real: string): string {
    if (real === this.location || real.startsWith(this.location + sep)) return real;
    throw new FerryError('DATASTORE_PATH_INVALID', `datastore path ${this.label(path)} leads outside the datastore (through a symlink)`, { reason: 'escapes' });
  }

  /** The real path of an existing entry, symlinks followed and checked. */
  private async resolveExisting(path: string, parts: readonly string[]): Promise<string> {
    let real: string;
    try {
      real = await realpath(join(this.location, ...parts));
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new FerryError('NOT_FOUND', `${this.label(path)}: no such file or directory`);
      if (code === 'ELOOP') throw new FerryError('DATASTORE_PATH_INVALID', `${this.label(path)}: too many levels of symlinks`, { reason: 'loop' });
      throw new FerryError('STORE_IO', `cannot resolve ${this.label(path)}: ${errorMessage(err)}`);
    }
    return this.inside(path, real);
  }

  /** The real path of an entry by name: its parent resolved and checked, the last component as it is (not followed). */
  private async resolveEntry(path: string, parts: readonly string[]): Promise<string> {
    const last = parts[parts.length - 1];
    if (last === undefined) throw new FerryError('DATASTORE_PATH_INVALID', `${this.label(path)}: the datastore root itself cannot be opened, renamed or removed`, { reason: 'empty' });
    const parent = parts.length === 1 ? this.location : await this.resolveExisting(path, parts.slice(0, -1));
    return join(parent, last);
  }

  private async lstatOrNull(real: string): Promise<Stats | null> {
    try {
      return await lstat(real);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return null;
      throw new FerryError('STORE_IO', `cannot stat ${real}: ${errorMessage(err)}`);
    }
  }

  private async lstatOf(path: string, real: string): Promise<Stats> {
    const st = await this.lstatOrNull(real);
    if (st === null) throw new FerryError('NOT_FOUND', `${this.label(path)}: no such file or directory`);
    return st;
  }

  /** A file system call whose errno becomes a Ferry code: ENOENT NOT_FOUND, EEXIST ALREADY_EXISTS, ENOTEMPTY INVALID_ARGUMENT. */
  private async fsOp<T>(what: string, op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT') throw new FerryError('NOT_FOUND', `${what}: no such file or directory`);
      if (code === 'EEXIST') throw new FerryError('ALREADY_EXISTS', `${what}: the target already exists`);
      if (code === 'ENOTEMPTY') throw new FerryError('INVALID_ARGUMENT', `${what}: the directory is not empty`);
      throw new FerryError('STORE_IO', `${what} failed: ${errorMessage(err)}`);
    }
  }
}
