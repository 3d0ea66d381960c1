/**
 * One incoming migration on the target: builds the VM (vCPUs spawned early, not running), applies
 * memory batches, and on COMMIT verifies the digest, records the commit, resumes the VM and hands
 * it to the host.
 *
 * Before COMMIT, any failure — a bad or out-of-order message, a dropped connection, a digest
 * mismatch, an ABORT, an idle timeout — discards the partial VM; it is never resumed.
 */
import { createHash } from 'node:crypto';
import { inflateRawSync } from 'node:zlib';
import { FerryError, errorMessage } from '../../lib/errors.js';
import { failpoint, failpointDrop } from '../../lib/failpoints.js';
import { MAX_DATA_CHANNELS } from '../../lib/limits.js';
import { cachedInstrumentation, type InstrumentedImage } from '../../vmm/instrument.js';
import { adoptInstrumentedOffer, verifyAdoptedImage } from '../../vmm/instrument-offer.js';
import { Vm } from '../../vmm/vm.js';
import type { ServerChannel } from '../channel.js';
import { MemoryDigest } from '../digest.js';
import { Command, type Frame } from '../protocol/frame.js';
import type { MemoryBatch, MemoryEntry } from '../protocol/memory-batch.js';
import {
  MAX_INSTRUMENTED_OFFER_BYTES, decodeMessage, type CommitBody, type ConnectionRole, type InstrumentationSource, type OkBody, type PrepareBody, type StateBody,
} from '../protocol/messages.js';
import type { IncomingOutcome } from '../peer.js';
import type { IncomingDisk } from '../disk.js';
import type { ReceiverHooks } from './hooks.js';
import { offerVerifier } from './offer-verification.js';

/** An incoming migration with no request for this long is aborted (a source that died). */
export const INCOMING_IDLE_TIMEOUT_MS = 60_000;
/** Connections per migration: one control plus up to 16 data channels. */
const MAX_CONNECTIONS_PER_MIGRATION = 1 + MAX_DATA_CHANNELS;
/** How long after resume the target waits for every vCPU's first clock read. */
const GUEST_CLOCK_WAIT_MS = 2_000;

/** How PREPARE came by the VM's instrumented module; `image` when it adopted the source's. */
interface Instrumented {
  readonly source: InstrumentationSource;
  readonly image?: InstrumentedImage;
}

function commandLabel(command: number): string {
  switch (command) {
    case Command.PREPARE: return 'prepare';
    case Command.MEMORY: return 'memory';
    case Command.ROUND: return 'round';
    case Command.STATE: return 'state';
    case Command.COMMIT: return 'commit';
    case Command.ABORT: return 'abort';
    case Command.DISK: return 'disk';
    default: return 'other';
  }
}

/** An entry's bytes: raw as they are, deflate inflated (bounded by its length) and checked. */
function entryData(what: 'MEMORY' | 'DISK', e: MemoryEntry): Buffer {
  let data = e.data ?? Buffer.alloc(0);
  if (e.encoding === 'deflate') {
    try { data = inflateRawSync(data, { maxOutputLength: e.length }); } catch (err) { throw new FerryError('PROTOCOL_BAD_PAYLOAD', `${what} entry at ${e.offset}: cannot inflate: ${errorMessage(err)}`); }
  }
  if (data.length !== e.length) throw new FerryError('PROTOCOL_BAD_PAYLOAD', `${what} entry at ${e.offset}: ${data.length} bytes of data for a ${e.length}-byte range`);
  return data;
}

export class IncomingMigration {
  private vm: Vm | null = null;
  private image: Uint8Array | null = null;
  private digest: MemoryDigest | null = null;
  private disk: IncomingDisk | null = null;
  /** Copy mode: the digest of the disk blocks received, and the disk's size for the decoder. */
  private diskDigest: MemoryDigest | null = null;
  private diskBytes: number | undefined;
  /**
   * Copy mode over a seed: the seed files' verification, started at PREPARE and awaited by the
   * first ROUND (null once that ROUND has it, or without a disk). `verifying` while it runs: the
   * target is busy itself, so its idle timeout waits. Aborted when the migration ends either way.
   */
  private seedVerified: Promise<void> | null = null;
  private verifying = false;
  private readonly seedAbort = new AbortController();
  private prepared = false;
  /** The vCPU threads being made: started at PREPARE, awaited at the end of each round and before STATE. */
  private spawned: Promise<void> | null = null;
  private ended = false;
  private state: StateBody | null = null;
  private readonly channels = new Set<ServerChannel>();
  private idleTimer: NodeJS.Timeout;
  private outcome: IncomingOutcome = { state: 'pending' };

  private log: (line: string) => void;

  /** `logFor`: this migration's log, given the VM's name once PREPARE said it (default: the hooks' log). */
  constructor(
    readonly id: string, private readonly hooks: ReceiverHooks, private readonly onEnd: (o: IncomingOutcome, durable: boolean) => void,
    private readonly logFor: (vm: string | null) => (line: string) => void = () => (line) => { hooks.log(line); },
    private readonly idleTimeoutMs: number = INCOMING_IDLE_TIMEOUT_MS,
  ) {
    this.log = logFor(null);
    this.idleTimer = this.armIdle();
  }

  private armIdle(): NodeJS.Timeout {
    const t = setTimeout(() => {
      // Silence from the source while this target hashes its seed is the target's own doing (the
      // source waits for round 1's reply): the timeout starts again once the verification ended.
      if (this.verifying) { this.idleTimer = this.armIdle(); return; }
      void this.abort(`no request from the source for ${this.idleTimeoutMs} ms`);
    }, this.idleTimeoutMs);
    t.unref();
    return t;
  }

  attach(channel: ServerChannel, _role: ConnectionRole): void {
    if (this.ended) throw new FerryError('MIGRATION_FAILED', 'this migration has already ended');
    if (this.channels.size >= MAX_CONNECTIONS_PER_MIGRATION) throw new FerryError('PROTOCOL_OUT_OF_ORDER', 'too many connections for one migration');
    this.channels.add(channel);
  }

  markPrepared(): void { this.prepared = true; }
  get isPrepared(): boolean { return this.prepared; }

  async handle(frame: Frame): Promise<OkBody> {
    if (this.ended) throw new FerryError('MIGRATION_FAILED', `migration ${this.id} has ended (${this.outcome.state})`);
    clearTimeout(this.idleTimer);
    this.idleTimer = this.armIdle();
    if (frame.command === Command.MEMORY && !this.prepared) throw new FerryError('PROTOCOL_OUT_OF_ORDER', 'MEMORY before the migration was prepared');
    const msg = decodeMessage(frame, this.vm !== null ? { ramBytes: this.vm.config.memoryBytes, ...(this.diskBytes !== undefined ? { diskBytes: this.diskBytes } : {}) } : {});
    // Failpoints for fault tests: target.prepare, target.memory, target.round, target.state, target.commit.
    await failpoint(`target.${commandLabel(msg.command)}`);
    if (msg.command === Command.MEMORY && failpointDrop('target.memory.drop')) {
      for (const c of this.channels) c.close('failpoint target.memory.drop');
      throw new FerryError('MIGRATION_FAILED', 'failpoint: connection dropped');
    }
    switch (msg.command) {
      case Command.PREPARE: return this.prepare(msg.body);
      case Command.MEMORY: return this.applyMemory(msg.body);
      case Command.DISK: return this.applyDisk(msg.body);
      // A copied disk is flushed at the end of each round, while the guest still runs on the source:
      // COMMIT's flush then covers only the last round's blocks (it is inside the downtime).
      // The vCPU threads started at PREPARE must be ready by then: waiting for them is pre-copy's, never the downtime's.
      // The first ROUND (whatever its number) also waits for the seed's verification: a damaged seed
      // is its ERROR reply, before anything could switch over onto it.
      case Command.ROUND: await this.spawned; await this.seedChecked(); if (this.diskDigest !== null) await this.disk?.flush(); return {};
      case Command.STATE: return this.applyState(msg.body);
      case Command.COMMIT: return this.commit(msg.body);
      case Command.ABORT:
        await this.abort(`source aborted: ${msg.body.reason}`);
        return {};
      default:
        throw new FerryError('PROTOCOL_OUT_OF_ORDER', `unexpected ${msg.command} request`);
    }
  }

  /** Copies the batch's pages into the VM's RAM; the digest is updated over exactly the bytes applied. */
  private applyMemory(batch: MemoryBatch): OkBody {
    const vm = this.requireVm();
    const digest = this.digest;
    if (digest === null) throw new FerryError('MIGRATION_FAILED', 'no digest');
    for (const e of batch.entries) {
      const dest = vm.ram.subarray(e.offset, e.offset + e.length);
      if (e.encoding === 'zero') { dest.fill(0); digest.updateZero(e.offset, e.length); continue; }
      const data = entryData('MEMORY', e);
      dest.set(data);
      digest.update(e.offset, data);
    }
    return {};
  }

  /** Writes the batch's blocks to the copied disk; the disk digest is updated over exactly the bytes written. */
  private async applyDisk(batch: MemoryBatch): Promise<OkBody> {
    const disk = this.disk;
    const digest = this.diskDigest;
    if (disk === null || digest === null) throw new FerryError('PROTOCOL_OUT_OF_ORDER', 'DISK for a migration that copies no disk');
    for (const e of batch.entries) {
      if (e.encoding === 'zero') {
        await disk.write(e.offset, new Uint8Array(e.length));
        digest.updateZero(e.offset, e.length);
        continue;
      }
      const data = entryData('DISK', e);
      await disk.write(e.offset, data);
      digest.update(e.offset, data);
    }
    return {};
  }

  private async applyState(body: StateBody): Promise<OkBody> {
    const vm = this.requireVm();
    await this.spawned;
    this.state = body;
    vm.setRestoreState({
      claimedPages: body.claimedPages, clockNs: body.clockNs, clockWallMs: body.clockWallMs,
      vcpus: body.vcpus.map((v) => ({ halted: v.halted, globals: v.globals })),
    });
    return {};
  }

  private requireVm(): Vm {
    if (this.vm === null) throw new FerryError('PROTOCOL_OUT_OF_ORDER', 'the migration was not prepared');
    return this.vm;
  }

  private async prepare(body: PrepareBody): Promise<OkBody> {
    const t0 = performance.now();
    const sha = createHash('sha256').update(body.image).digest('hex');
    if (sha !== body.vm.imageSha256) {
      throw new FerryError('MIGRATION_REFUSED', `guest image hash mismatch: announced ${body.vm.imageSha256.slice(0, 12)}…, received ${sha.slice(0, 12)}…`);
    }
    try {
      this.hooks.admit({ name: body.vm.name, memoryBytes: body.vm.memoryBytes });
    } catch (err) {
      throw new FerryError('MIGRATION_REFUSED', `target refuses VM ${body.vm.name}: ${errorMessage(err)}`);
    }
    // From here its lines name the VM too.
    this.log = this.logFor(body.vm.name);
    const image = new Uint8Array(body.image); // the frame payload is transient
    const disk = body.disk !== undefined ? await this.hooks.prepareDisk(this.id, body.vm.name, body.disk) : null;
    let vm: Vm;
    let instrumented: Instrumented;
    try {
      if (this.ended) throw new FerryError('MIGRATION_FAILED', `migration ${this.id} ended while its disk was being prepared`);
      instrumented = this.instrumentationFor(body, image);
      vm = Vm.create(image, {
        name: body.vm.name, memoryBytes: body.vm.memoryBytes, vcpus: body.vm.vcpus,
        granularityBytes: body.vm.granularityBytes, cmdline: body.vm.cmdline,
        ...(disk !== null ? { disk: disk.backend } : {}),
      }, null, undefined, instrumented.image);
    } catch (err) {
      await disk?.discard();
      throw err;
    }
    this.disk = disk;
    if (body.disk?.mode === 'copy') {
      this.diskBytes = body.disk.capacityBytes;
      this.diskDigest = new MemoryDigest(body.disk.capacityBytes, body.disk.blockBytes);
    }
    this.vm = vm;
    this.image = image;
    this.digest = new MemoryDigest(body.vm.memoryBytes);
    const t1 = performance.now();
    this.log(`incoming migration ${this.id.slice(0, 8)}: prepared VM ${body.vm.name} (${body.vm.vcpus} vCPUs, ${body.vm.memoryBytes} bytes) in ${(t1 - t0).toFixed(0)} ms (instrumentation: ${instrumented.source})`);
    if (instrumented.image !== undefined) this.verifyAdoptedWhenEnded(vm, image, instrumented.image);
    // Threads and instances now, so that the resume at switch-over is only a wake-up; made while
    // round 1 arrives (not before PREPARE's reply: that cost the migration their start-up time).
    this.spawned = vm.spawn().then(() => { this.log(`incoming migration ${this.id.slice(0, 8)}: vCPUs ready ${(performance.now() - t1).toFixed(0)} ms after prepare`); });
    this.spawned.catch(() => undefined); // a failure is the first ROUND's (or STATE's) ERROR reply
    if (disk !== null) this.startSeedVerification(disk);
    // `instrumentation` only to a source that sent `instrumented` (an older one refuses unknown reply keys).
    return {
      accepted: true, ...(disk?.prepared !== undefined ? { disk: disk.prepared } : {}),
      ...(body.instrumented !== undefined ? { instrumentation: instrumented.source } : {}),
    };
  }

  /**
   * Where the VM's instrumented module comes from: this host's cache first (Vm.create finds it there);
   * else the source's offer if it passes every check (src/vmm/instrument-offer.ts); else Vm.create
   * instruments the image here, as without an offer. A refused offer is one log line, never a failure.
   */
  private instrumentationFor(body: PrepareBody, image: Uint8Array): Instrumented {
    const options = { ramBytes: body.vm.memoryBytes, granularityBytes: body.vm.granularityBytes };
    if (cachedInstrumentation(body.vm.imageSha256, options) !== undefined) return { source: 'cache' };
    const offer = body.instrumented;
    if (offer === undefined || offer === null) return { source: 'local' };
    const decision = adoptInstrumentedOffer(image, options, offer, MAX_INSTRUMENTED_OFFER_BYTES);
    if (!decision.accepted) {
      this.log(`incoming migration ${this.id.slice(0, 8)}: not using the source's instrumented module (${decision.reason}); instrumenting the image here`);
      return { source: 'local' };
    }
    return { source: 'source', image: decision.image };
  }

  /**
   * Once this migration has ended (committed or aborted: both abort seedAbort), off its critical path,
   * instruments the image here and compares the bytes with the adopted module (src/migration/target/
   * offer-verification.ts). A difference is a warning naming the VM and both builds; the VM keeps
   * running on the module it has. Cancelled if the VM stops first (a host shutting down saves and
   * stops its VMs) or by the verifier's close().
   */
  private verifyAdoptedWhenEnded(vm: Vm, image: Uint8Array, adopted: InstrumentedImage): void {
    const name = vm.config.name;
    const options = { ramBytes: vm.config.memoryBytes, granularityBytes: adopted.granularityBytes };
    const tag = `incoming migration ${this.id.slice(0, 8)}`;
    const log = this.log;
    const verify = (): void => {
      const check = verifyAdoptedImage(image, options, adopted);
      if (check.same) log(`${tag}: VM ${name}'s instrumented module from the source verified: identical to this host's build ${check.local.build ?? 'none'}`);
      else log(`${tag}: WARN VM ${name}'s instrumented module from the source failed verification: it differs from this host's own build of the image (source's build ${adopted.build ?? 'none'}, this host's ${check.local.build ?? 'none'}); the VM keeps running on the source's module`);
    };
    // commit() and abort() set the outcome in the same turn as they abort seedAbort: read it a microtask later.
    this.seedAbort.signal.addEventListener('abort', () => {
      queueMicrotask(() => {
        const vmGone = new AbortController();
        const onState = (s: string): void => { if (s === 'stopped') vmGone.abort(); };
        // A committed VM runs here: its verification is dropped if it stops first. An aborted one is
        // stopped already: its verification still runs (it warms the cache for a retry).
        if (this.outcome.state === 'committed') vm.on('state', onState);
        offerVerifier.schedule({
          what: `VM ${name}'s instrumented module`, log, signal: vmGone.signal,
          run: () => { vm.off('state', onState); verify(); },
        });
      });
    }, { once: true });
  }
  /** Starts hashing the seed files (at once resolved without a seed); the first ROUND awaits it. */
  private startSeedVerification(disk: IncomingDisk): void {
    const t0 = performance.now();
    const bytes = disk.prepared?.verifyBytes ?? 0;
    this.verifying = true;
    // Through a promise even if verifySeed throws at once: its failure is always the first ROUND's.
    const verified = Promise.resolve().then(() => disk.verifySeed(this.seedAbort.signal)).finally(() => {
      this.verifying = false;
      // A full idle window for the source from here: it was waiting for our answer meanwhile.
      if (!this.ended) { clearTimeout(this.idleTimer); this.idleTimer = this.armIdle(); }
    });
    this.seedVerified = verified;
    verified.then(
      () => { if (bytes > 0) this.log(`incoming migration ${this.id.slice(0, 8)}: seed verified (${bytes} bytes) in ${(performance.now() - t0).toFixed(0)} ms`); },
      (err: unknown) => { this.log(`incoming migration ${this.id.slice(0, 8)}: seed verification failed after ${(performance.now() - t0).toFixed(0)} ms: ${errorMessage(err)}`); },
    );
  }

  /** The first ROUND's wait for the seed; a rejection (SEED_DAMAGED) is its ERROR reply and ends the migration. */
  private async seedChecked(): Promise<void> {
    const verified = this.seedVerified;
    if (verified === null) return;
    await verified;
    this.seedVerified = null;
  }

  private async commit(body: CommitBody): Promise<OkBody> {
    const vm = this.requireVm();
    if (this.state === null) throw new FerryError('PROTOCOL_OUT_OF_ORDER', 'COMMIT before STATE');
    const sourceDigest = body.digest;
    const ours = this.digest?.hex() ?? '';
    if (ours !== sourceDigest) {
      // The ERROR reply goes out first; closing the connection then aborts (discards) the VM.
      throw new FerryError('DIGEST_MISMATCH', `memory digest mismatch: source ${sourceDigest}, target ${ours}; the VM was not resumed here`);
    }
    // The disk's part awaits real I/O (a flush, the lease): a connection that closed meanwhile
    // aborted this migration — the VM was stopped, the disk discarded, "aborted" recorded, and the
    // source may already run the VM again. Committing now would record the opposite.
    try {
      await this.commitDisk(body.diskDigest);
    } catch (err) {
      if (this.ended) this.abortedWhileCommitting();
      throw err;
    }
    if (this.ended) this.abortedWhileCommitting();
    // Durable before the VM runs: a restarted target must still answer "committed".
    const t0 = performance.now();
    try {
      await this.hooks.recordOutcome(this.id, 'committed', vm.config.name);
    } catch (err) {
      // Not committed: the source takes the disk back after the ERROR reply, so let it go first.
      await this.disk?.discard();
      throw err;
    }
    // Committed from here, whatever happens to the connections: an abort now would undo a commit
    // that a restarted target reports (and that the source may already have learned).
    this.ended = true;
    clearTimeout(this.idleTimer);
    this.seedAbort.abort(new FerryError('MIGRATION_FAILED', 'migration committed'));
    this.outcome = { state: 'committed', vm: vm.config.name, guestDowntimeMs: null };
    this.onEnd(this.outcome, true); // recorded above
    const recordedAt = performance.now();
    await failpoint('target.after-commit-record');
    await vm.start();
    const startedAt = performance.now();
    // The host registers the VM before the reply (adopt does that synchronously); persisting its
    // definition finishes after the reply: it is not on the downtime path (the commit record
    // above is what a restarted host needs).
    void this.hooks.adopt(vm, this.image ?? new Uint8Array(), this.disk).catch((err: unknown) => { this.log(`incoming migration ${this.id.slice(0, 8)}: cannot record VM ${vm.config.name}: ${errorMessage(err)}`); });
    this.log(`incoming migration ${this.id.slice(0, 8)}: committed; VM ${vm.config.name} runs here (commit record ${(recordedAt - t0).toFixed(1)} ms, resume ${(startedAt - recordedAt).toFixed(1)} ms)`);
    void this.measureGuestDowntime(vm);
    return { resumed: true };
  }

  private abortedWhileCommitting(): never {
    this.log(`incoming migration ${this.id.slice(0, 8)}: aborted while it was committing; not resumed, not recorded as committed`);
    throw new FerryError('MIGRATION_FAILED', `migration ${this.id} was aborted while it was committing`);
  }

  /**
   * The disk's part of COMMIT, before the commit record: a copied disk is flushed and its digest
   * compared; a shared disk's lease is taken (the source released it just before COMMIT).
   */
  private async commitDisk(sourceDiskDigest: string | undefined): Promise<void> {
    const disk = this.disk;
    if (disk === null) {
      if (sourceDiskDigest !== undefined) throw new FerryError('PROTOCOL_BAD_PAYLOAD', 'COMMIT carries a disk digest for a migration without a disk');
      return;
    }
    if (this.diskDigest !== null) {
      const ours = this.diskDigest.hex();
      if (sourceDiskDigest !== ours) {
        throw new FerryError('DIGEST_MISMATCH', `disk digest mismatch: source ${sourceDiskDigest ?? 'none'}, target ${ours}; the VM was not resumed here`);
      }
      await disk.flush();
    }
    await failpoint('target.disk-activate');
    await disk.activate();
    // Fault tests: the target dies holding the shared disk's lease, before its commit record.
    await failpoint('target.after-disk-activate');
  }

  /** The largest gap any vCPU saw between its last clock read on the source and its first here. */
  private async measureGuestDowntime(vm: Vm): Promise<void> {
    const lastOnSource = this.state?.vcpus.map((v) => v.lastClockReadNs) ?? [];
    const deadline = performance.now() + GUEST_CLOCK_WAIT_MS;
    let first = vm.firstClockReads();
    while (first.some((t, v) => t === 0n && (lastOnSource[v] ?? 0n) !== 0n) && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 2));
      first = vm.firstClockReads();
    }
    let gapNs = -1n;
    first.forEach((t, v) => {
      const last = lastOnSource[v] ?? 0n;
      if (t !== 0n && last !== 0n && t - last > gapNs) gapNs = t - last;
    });
    this.outcome = { ...this.outcome, guestDowntimeMs: gapNs < 0n ? null : Number(gapNs) / 1e6 };
    this.onEnd(this.outcome, true);
  }

  connectionClosed(channel: ServerChannel, reason: string): void {
    this.channels.delete(channel);
    if (!this.ended) void this.abort(`a connection failed before the commit: ${reason}`);
  }

  /** Discards the partial VM (never resumed) and records the migration as aborted. */
  async abort(reason: string): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.idleTimer);
    this.seedAbort.abort(new FerryError('MIGRATION_FAILED', `migration aborted: ${reason}`));
    this.outcome = { state: 'aborted', reason };
    this.onEnd(this.outcome, false);
    for (const c of this.channels) c.close(reason);
    const vm = this.vm;
    this.vm = null;
    await vm?.stop();
    const disk = this.disk;
    this.disk = null;
    await disk?.discard().catch((err: unknown) => { this.log(`incoming migration ${this.id.slice(0, 8)}: cannot discard the disk: ${errorMessage(err)}`); });
    try {
      await this.hooks.recordOutcome(this.id, 'aborted', vm?.config.name ?? '');
      this.onEnd(this.outcome, true);
    } catch (err) {
      // Kept in memory (never evicted) instead; a restart would answer "unknown", which means the same to a source.
      this.log(`incoming migration ${this.id.slice(0, 8)}: cannot record the abort: ${errorMessage(err)}`);
    }
    this.log(`incoming migration ${this.id.slice(0, 8)}: aborted (${reason}); partial VM discarded`);
  }
}

