/**
 * A host's link to its center: join once with a one-time join token (the credential it receives is
 * kept in a file of the host's data directory, mode 0600, so a restarted host does not need a new
 * token), then heartbeat — capacity, datastores, VMs — at the interval the center asks for.
 *
 * A host must never fall over because its center is away: every failure is logged and retried with
 * capped exponential backoff (with jitter, so a fleet does not come back in lockstep when the center
 * does); VMs keep running meanwhile. A refused credential (revoked, another center) is logged loudly
 * and retried slowly: an operator fixes it, the host does not exit.
 */
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { CenterClient } from '../api/center-client.js';
import { MAX_HEARTBEAT_VMS, SECRET_PATTERN, type HeartbeatRequest } from '../api/center-v1.js';

/** Where a joined host keeps its center credential unless told otherwise. */
export const CENTER_CREDENTIAL_FILE = 'center-credential';
/** Until the center answers with its own interval. */
export const DEFAULT_LINK_HEARTBEAT_MS = 5000;
/** The first retry after a failure, doubled per failure up to the cap. */
export const LINK_BACKOFF_INITIAL_MS = 250;
export const LINK_BACKOFF_MAX_MS = 30_000;

export interface CenterLinkOptions {
  readonly centerUrl: string;
  readonly hostName: string;
  readonly dataDir: string;
  /** A one-time join token; needed only while the host has no credential yet. */
  readonly joinToken?: string;
  /** Where the credential is read from and written to (default: <dataDir>/center-credential). */
  readonly credentialFile?: string;
  /** The host's current report (capacity, datastores, VMs) and control URL. */
  readonly report: () => Promise<HeartbeatRequest>;
  readonly log: (line: string) => void;
  /** Tests shorten the backoff. */
  readonly backoffInitialMs?: number;
  readonly backoffMaxMs?: number;
}

export type LinkState = 'joining' | 'linked' | 'failing' | 'closed';

export class CenterLink {
  #credential: string | null = null;
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<void> = Promise.resolve();
  #failures = 0;
  #intervalMs = DEFAULT_LINK_HEARTBEAT_MS;
  #state: LinkState = 'joining';
  #lastError: string | null = null;
  readonly credentialFile: string;

  constructor(private readonly o: CenterLinkOptions) {
    this.credentialFile = o.credentialFile ?? join(o.dataDir, CENTER_CREDENTIAL_FILE);
    // Validated now: a bad URL is the operator's mistake at start, not a retry loop.
    new CenterClient(o.centerUrl, null);
  }

  get state(): LinkState { return this.#state; }
  get lastError(): string | null { return this.#lastError; }

  /** Starts the loop: the first attempt now, in the background. */
  start(): void {
    this.schedule(0);
  }

  async close(): Promise<void> {
    this.#state = 'closed';
    if (this.#timer !== null) clearTimeout(this.#timer);
    await this.#running;
  }

  private schedule(delayMs: number): void {
    if (this.#state === 'closed') return;
    this.#timer = setTimeout(() => { this.#running = this.step(); }, delayMs);
  }

  private async step(): Promise<void> {
    try {
      const credential = this.#credential ?? await this.obtainCredential();
      this.#credential = credential;
      const report = await this.o.report();
      if (report.vms.length > MAX_HEARTBEAT_VMS) {
        this.o.log(`host ${this.o.hostName}: ${report.vms.length} VMs, a heartbeat carries ${MAX_HEARTBEAT_VMS}: the center shows the rest unknown`);
      }
      const bounded = { ...report, vms: report.vms.slice(0, MAX_HEARTBEAT_VMS) };
      const answer = await new CenterClient(this.o.centerUrl, credential).heartbeat(this.o.hostName, bounded);
      // Closed while this heartbeat was in flight: stay closed (setting 'linked' would schedule the next
      // one, and a closed host would go on heartbeating — never disconnected, its process never exiting).
      if (this.#state === 'closed') return;
      if (this.#state !== 'linked') this.o.log(`host ${this.o.hostName}: linked to center ${this.o.centerUrl} (state ${answer.state})`);
      this.#state = 'linked';
      this.#failures = 0;
      this.#lastError = null;
      this.#intervalMs = answer.heartbeatIntervalMs;
      this.schedule(this.#intervalMs);
    } catch (err) {
      if (this.#state === 'closed') return;
      this.#failures++;
      const message = errorMessage(err);
      // Log a change of trouble, not every retry of the same one.
      if (message !== this.#lastError) this.o.log(`host ${this.o.hostName}: center ${this.o.centerUrl}: ${isFerryError(err) ? `[${err.code}] ` : ''}${message} (retrying with backoff)`);
      this.#lastError = message;
      this.#state = 'failing';
      // A refused credential is dropped: it is read again from the file (an operator may have replaced it).
      if (isFerryError(err) && err.code === 'UNAUTHORIZED') this.#credential = null;
      this.schedule(this.backoffMs());
    }
  }

  private backoffMs(): number {
    const initial = this.o.backoffInitialMs ?? LINK_BACKOFF_INITIAL_MS;
    const max = this.o.backoffMaxMs ?? LINK_BACKOFF_MAX_MS;
    const exp = Math.min(max, initial * 2 ** Math.min(this.#failures - 1, 30));
    // Full jitter in the upper half: spread, but never much sooner than the backoff says.
    return Math.round(exp / 2 + Math.random() * exp / 2);
  }

  /** The stored credential, or a new one from the join token (then stored before it is used). */
  private async obtainCredential(): Promise<string> {
    const stored = await this.readCredential();
    if (stored !== null) return stored;
    if (this.o.joinToken === undefined) {
      throw new FerryError('UNAUTHORIZED', `no center credential in ${this.credentialFile} and no join token: start the host with --join-token <token> (ferry center join-token)`);
    }
    if (this.#state === 'closed') throw new FerryError('CANCELLED', 'the center link is closed');
    this.#state = 'joining';
    const { report } = this.o;
    const { url } = await report();
    const joined = await new CenterClient(this.o.centerUrl, null).join({ joinToken: this.o.joinToken, name: this.o.hostName, url });
    // Stored before anything else: the token is spent now, and a host that lost this would need a new one.
    await this.writeCredential(joined.credential);
    this.o.log(`host ${this.o.hostName}: joined center ${this.o.centerUrl}; credential kept in ${this.credentialFile}`);
    return joined.credential;
  }

  private async readCredential(): Promise<string | null> {
    let text: string;
    try {
      text = (await readFile(this.credentialFile, 'utf8')).trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new FerryError('INVALID_ARGUMENT', `cannot read the center credential ${this.credentialFile}: ${errorMessage(err)}`);
    }
    if (!SECRET_PATTERN.test(text) || !text.startsWith('ferry-host-')) throw new FerryError('INVALID_ARGUMENT', `${this.credentialFile} does not hold a center host credential`);
    return text;
  }

  private async writeCredential(credential: string): Promise<void> {
    await mkdir(dirname(this.credentialFile), { recursive: true });
    // Written aside and renamed: a crash leaves the old file or the new one, never half of one.
    const tmp = `${this.credentialFile}.tmp`;
    await writeFile(tmp, `${credential}\n`, { mode: 0o600 });
    await chmod(tmp, 0o600);
    await rename(tmp, this.credentialFile);
  }
}
