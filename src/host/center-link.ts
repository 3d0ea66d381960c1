/**
 * A host's link to its center: join once with a one-time join token (the credential it receives is
 * kept in a file of the host's data directory, mode 0600, so a restarted host does not need a new
 * token), then heartbeat — capacity, datastores, VMs — at the interval the center asks for.
 *
 * Both ends verified (docs/design/center-tls.md): at the first join the host reads the center's CA
 * and accepts it only if its fingerprint is the one the operator gave (`--center-ca-fingerprint`, shown
 * by `ferry center` and `ferry center join-token`); it makes its own key (never sent anywhere) and
 * a CSR, and receives its certificate signed by that CA. Beside the credential it keeps the key
 * (0600), its certificate and the CA; every heartbeat verifies the center with the CA and presents the
 * certificate as the TLS client certificate.
 *
 * A host must never fall over because its center is away: every failure is logged and retried with
 * capped exponential backoff (with jitter, so a fleet does not come back in lockstep when the center
 * does); VMs keep running meanwhile. A refused credential (revoked, another center) is logged loudly
 * and retried slowly: an operator fixes it, the host does not exit.
 */
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import { fingerprintOf } from '../lib/fingerprint.js';
import { CenterClient, centerOrigin } from '../api/center-client.js';
import type { TlsClientOptions } from '../api/tls.js';
import { MAX_HEARTBEAT_VMS, SECRET_PATTERN, type HeartbeatRequest, type JoinResult } from '../api/center-v1.js';
import type { IncomingOutcome } from '../migration/peer.js';

/** Where a joined host keeps its center credential unless told otherwise. */
export const CENTER_CREDENTIAL_FILE = 'center-credential';
/** Beside the credential file: the host's private key (mode 0600), its certificate, the center's CA. */
export const CENTER_KEY_FILE = 'center-host.key';
export const CENTER_CERT_FILE = 'center-host.crt';
export const CENTER_CA_FILE = 'center-ca.crt';
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
  /**
   * The site the host joins (sent in the join only: a host's site is fixed when it joins; the center
   * refuses a re-join of the same name into another site). Without: the center's default site.
   */
  readonly site?: string;
  /** Where the credential is read from and written to (default: <dataDir>/center-credential). */
  readonly credentialFile?: string;
  /** The center CA's SHA-256 fingerprint: needed to join (the host trusts the center it joins only by it). */
  readonly caFingerprint?: string;
  /** The host's current report (capacity, datastores, VMs) and control URL. */
  readonly report: () => Promise<HeartbeatRequest>;
  readonly log: (line: string) => void;
  /** Told the host's TLS identity whenever the link has one (read from its files or new from a join): a host serving HTTPS uses it. */
  readonly onIdentity?: (tls: HostTlsIdentity) => void;
  /** Tests shorten the backoff. */
  readonly backoffInitialMs?: number;
  readonly backoffMaxMs?: number;
}

export type LinkState = 'joining' | 'linked' | 'failing' | 'closed';

/** A joined host's certificate and key (PEM), and the center's CA it trusts. */
export type HostTlsIdentity = Required<Pick<TlsClientOptions, 'caPem' | 'certPem' | 'keyPem'>>;

/** What a joined host holds: its credential and its TLS identity and trust. */
interface Identity {
  readonly credential: string;
  readonly tls: HostTlsIdentity;
}

export class CenterLink {
  #client: CenterClient | null = null;
  #identity: Identity | null = null;
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<void> = Promise.resolve();
  #failures = 0;
  #intervalMs = DEFAULT_LINK_HEARTBEAT_MS;
  #state: LinkState = 'joining';
  #lastError: string | null = null;
  #controlToken: string | null = null;
  readonly credentialFile: string;
  readonly keyFile: string;
  readonly certFile: string;
  readonly caFile: string;

  constructor(private readonly o: CenterLinkOptions) {
    this.credentialFile = o.credentialFile ?? join(o.dataDir, CENTER_CREDENTIAL_FILE);
    const dir = dirname(this.credentialFile);
    this.keyFile = join(dir, CENTER_KEY_FILE);
    this.certFile = join(dir, CENTER_CERT_FILE);
    this.caFile = join(dir, CENTER_CA_FILE);
    // Validated now: a bad URL is the operator's mistake at start, not a retry loop.
    centerOrigin(o.centerUrl);
  }

  get state(): LinkState { return this.#state; }
  /** The host's TLS identity once it has one (after a join, or from its files). */
  get tls(): HostTlsIdentity | null { return this.#identity?.tls ?? null; }

  /** Reads a stored identity now (a host serving HTTPS needs its certificate before it listens); null if it has not joined yet. */
  async loadStored(): Promise<HostTlsIdentity | null> {
    const credential = await this.readCredential();
    const tls = credential !== null ? await this.readTls() : null;
    if (credential === null || tls === null) return null;
    this.adopt({ credential, tls });
    return tls;
  }

  private adopt(id: Identity): void {
    const changed = this.#identity?.tls.certPem !== id.tls.certPem;
    this.#identity = id;
    if (changed) this.o.onIdentity?.(id.tls);
  }
  get lastError(): string | null { return this.#lastError; }
  /** The credential the center acts on this host with (from its last heartbeat answer), or null before one. */
  get controlToken(): string | null { return this.#controlToken; }

  /**
   * Asks the center what the target of this host's migration over path `pathId` recorded for incoming
   * migration `id` (an in-doubt source; see ./brokered-peer.ts). Rejects when the center cannot answer.
   */
  async brokeredOutcome(pathId: string, id: string, timeoutMs: number): Promise<IncomingOutcome> {
    const client = this.#client;
    if (client === null) throw new FerryError('CENTER_UNREACHABLE', `host ${this.o.hostName} is not linked to its center (${this.#lastError ?? 'not joined yet'})`);
    return (await client.brokeredIncoming(this.o.hostName, pathId, id, timeoutMs)).outcome;
  }

  /** Starts the loop: the first attempt now, in the background. */
  start(): void {
    this.schedule(0);
  }

  async close(): Promise<void> {
    this.#state = 'closed';
    if (this.#timer !== null) clearTimeout(this.#timer);
    await this.#running;
    await this.dropClient();
  }

  private async dropClient(): Promise<void> {
    const c = this.#client;
    this.#client = null;
    await c?.close().catch(() => undefined);
  }

  private schedule(delayMs: number): void {
    if (this.#state === 'closed') return;
    this.#timer = setTimeout(() => { this.#running = this.step(); }, delayMs);
  }

  private async step(): Promise<void> {
    try {
      if (this.#client === null) {
        const id = await this.obtainIdentity();
        if (this.#state === 'closed') return;
        this.adopt(id);
        this.#client = new CenterClient(this.o.centerUrl, id.credential, id.tls);
      }
      const client = this.#client;
      const report = await this.o.report();
      if (report.vms.length > MAX_HEARTBEAT_VMS) {
        this.o.log(`host ${this.o.hostName}: ${report.vms.length} VMs, a heartbeat carries ${MAX_HEARTBEAT_VMS}: the center shows the rest unknown`);
      }
      const bounded = { ...report, vms: report.vms.slice(0, MAX_HEARTBEAT_VMS) };
      const answer = await client.heartbeat(this.o.hostName, bounded);
      // Closed while the heartbeat was in flight: stay closed (no "linked", no next heartbeat).
      if (this.#state === 'closed') return;
      if (this.#state !== 'linked') this.o.log(`host ${this.o.hostName}: linked to center ${this.o.centerUrl} (state ${answer.state})`);
      this.#state = 'linked';
      this.#failures = 0;
      this.#lastError = null;
      this.#intervalMs = answer.heartbeatIntervalMs;
      this.#controlToken = answer.controlToken;
      this.schedule(this.#intervalMs);
    } catch (err) {
      if (this.#state === 'closed') return;
      this.#failures++;
      const message = errorMessage(err);
      // Log a change of trouble, not every retry of the same one.
      if (message !== this.#lastError) this.o.log(`host ${this.o.hostName}: center ${this.o.centerUrl}: ${isFerryError(err) ? `[${err.code}] ` : ''}${message} (retrying with backoff)`);
      this.#lastError = message;
      this.#state = 'failing';
      // A refused credential or certificate is dropped: read again from the files (an operator may have replaced them).
      if (isFerryError(err) && (err.code === 'UNAUTHORIZED' || err.code === 'TLS_UNTRUSTED')) await this.dropClient();
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

  /** The stored identity, or a new one from the join token (then stored before it is used). */
  private async obtainIdentity(): Promise<Identity> {
    const stored = await this.readCredential();
    const tls = stored !== null ? await this.readTls() : null;
    if (stored !== null && tls !== null) return { credential: stored, tls };
    if (this.o.joinToken === undefined) {
      const missing = stored === null ? `no center credential in ${this.credentialFile}` : `no certificate, key and CA beside ${this.credentialFile} (joined before the center spoke TLS?)`;
      throw new FerryError('UNAUTHORIZED', `${missing} and no join token: start the host with --join-token <token> --center-ca-fingerprint <sha256> (ferry center join-token)`);
    }
    if (this.o.caFingerprint === undefined) {
      throw new FerryError('INVALID_ARGUMENT', `joining center ${this.o.centerUrl} needs its CA fingerprint to trust it: add --center-ca-fingerprint <sha256> (printed by ferry center and ferry center join-token)`);
    }
    if (this.#state !== 'closed') this.#state = 'joining';
    // Trust first: the CA is accepted only by the fingerprint the operator gave, then the join is verified TLS.
    const ca = await CenterClient.readCa(this.o.centerUrl, this.o.caFingerprint);
    // Loaded when needed: only a joining host makes keys, and the certificate library is not small.
    const { createCsr, generateKeyPair } = await import('../lib/x509.js');
    const key = await generateKeyPair();
    const csr = await createCsr(this.o.hostName, key);
    const { url } = await this.o.report();
    const joiner = new CenterClient(this.o.centerUrl, null, { caPem: ca.certificate });
    let joined: JoinResult;
    try { joined = await joiner.join({ joinToken: this.o.joinToken, name: this.o.hostName, url, csr, ...(this.o.site !== undefined ? { site: this.o.site } : {}) }); } finally { await joiner.close(); }
    if (fingerprintOf(joined.caCertificate) !== ca.fingerprint) throw new FerryError('TLS_UNTRUSTED', `center ${this.o.centerUrl} answered the join with another CA than it presented`);
    const identity: Identity = { credential: joined.credential, tls: { caPem: ca.certificate, certPem: joined.certificate, keyPem: key.keyPem } };
    // Stored before anything else: the token is spent now, and a host that lost this would need a new one.
    // The credential last: its presence means the whole identity is there.
    await this.writeAtomically(this.keyFile, identity.tls.keyPem);
    await this.writeAtomically(this.certFile, identity.tls.certPem, 0o644);
    await this.writeAtomically(this.caFile, identity.tls.caPem, 0o644);
    await this.writeAtomically(this.credentialFile, `${joined.credential}\n`);
    this.o.log(`host ${this.o.hostName}: joined center ${this.o.centerUrl} (CA ${ca.fingerprint}); credential, key and certificate kept beside ${this.credentialFile}`);
    return identity;
  }

  /** The stored key, certificate and CA, or null if any is missing. */
  private async readTls(): Promise<Identity['tls'] | null> {
    const read = async (file: string): Promise<string | null> => {
      try { return await readFile(file, 'utf8'); } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
        throw new FerryError('INVALID_ARGUMENT', `cannot read ${file}: ${errorMessage(err)}`);
      }
    };
    const [keyPem, certPem, caPem] = [await read(this.keyFile), await read(this.certFile), await read(this.caFile)];
    return keyPem === null || certPem === null || caPem === null ? null : { keyPem, certPem, caPem };
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

  private async writeAtomically(file: string, text: string, mode = 0o600): Promise<void> {
    await mkdir(dirname(file), { recursive: true });
    // Written aside and renamed: a crash leaves the old file or the new one, never half of one.
    const tmp = `${file}.tmp`;
    await writeFile(tmp, text, { mode });
    await chmod(tmp, mode);
    await rename(tmp, file);
  }
}
