/**
 * The source side of a live migration (docs/migration-protocol.md): prepare the target, pre-copy
 * memory in rounds while the guest runs (write traces say what to re-send), converge (auto-converge
 * throttling if the guest outruns the link), switch over (stun, last dirty pages, vCPU state,
 * digest, commit), and release — or roll back so the VM keeps running here.
 *
 * A MigrationJob *owns* its VM while it runs. `run()` never throws: the outcome is in the record.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import type { Vm } from '../vmm/vm.js';
import type { InstallStrategy } from '../vmm/traces.js';
import { RateLimiter } from '../dataplane/rate-limiter.js';
import type { Transport } from '../dataplane/transport.js';
import { ClientChannel } from './channel.js';
import type { MigrationOptions } from './options.js';
import type { IncomingTicket, MigrationTargetPeer } from './peer.js';
import type { MigrationJobStatus, MigrationOutcome, MigrationPhase, MigrationProgress, MigrationRecord, RoundRecord, SwitchoverBreakdown, TraceRecord } from './record.js';
import { DEFAULT_POLICY, decideConvergence, type ConvergencePolicy } from './convergence.js';
import { DIGEST_PAGE_BYTES, MemoryDigest } from './digest.js';
import { memoryBatchBytes, writeMemoryBatch, type MemoryEntryInput } from './protocol/memory-batch.js';
import { Command, HEADER_BYTES, MAX_ENTRIES_PER_BATCH, MAX_MEMORY_PAYLOAD_BYTES, MAX_ENTRY_BYTES, PAGE_ALIGN_BYTES, encodeHeader } from './protocol/frame.js';
import { FramePool } from '../dataplane/frame-pool.js';
import { MAX_ABORT_REASON_CHARS } from '../lib/limits.js';
import {
  encodeAbort, encodeCommit, encodeHello, encodePrepare, encodeRound, encodeState,
} from './protocol/messages.js';

export const DEFAULT_DATA_CHANNELS = 2;
/** Payload of one MEMORY frame: large writes are what loopback and LANs move fastest. */
export const BATCH_PAYLOAD_BYTES = 4 * 1024 * 1024;
/** Adaptive tracing starts at this granularity unless the migration names one. */
export const ADAPTIVE_START_GRANULARITY_BYTES = 2 * 1024 * 1024;
/** Split a region that fired again when more than this share of its pages had not changed. */
export const REFINE_UNCHANGED_FRACTION = 0.5;
/** MEMORY frames outstanding per data channel (bounded by the protocol's MAX_IN_FLIGHT). */
const FRAMES_IN_FLIGHT_PER_CHANNEL = 4;
/** Timeouts: a target that never answers is given up on, and the VM keeps running here. */
export const CONNECT_TIMEOUT_MS = 5_000;
export const PREPARE_TIMEOUT_MS = 30_000;
export const REQUEST_TIMEOUT_MS = 30_000;
export const COMMIT_TIMEOUT_MS = 10_000;
/** How long an in-doubt source keeps asking the target whether it committed. */
export const IN_DOUBT_RESOLVE_MS = 30_000;
const IN_DOUBT_POLL_MS = 250;
/** Progress events are rate-limited to this period (plus one per round). */
const PROGRESS_INTERVAL_MS = 100;
/** How long the source waits for the target to report the guest-observed downtime. */
const GUEST_DOWNTIME_WAIT_MS = 3_000;
/** Polls of the target (guest downtime, in-doubt resolution) each get this long. */
const PEER_POLL_TIMEOUT_MS = 2_000;
const GUEST_DOWNTIME_POLL_MS = 50;

interface JobEvents {
  progress: [MigrationProgress];
  done: [MigrationRecord];
}

const ZERO_PAGE = Buffer.alloc(PAGE_ALIGN_BYTES);

/** What a round must send: fired regions (at the tracking granularity) and fired 4 KiB pages of split regions. */
interface DirtySet {
  readonly regions: Uint32Array;
  readonly pages: Uint32Array;
}

/** Union of two ascending index lists, ascending, without duplicates. */
function mergeSorted(a: Uint32Array, b: Uint32Array): Uint32Array {
  if (b.length === 0) return a;
  if (a.length === 0) return b;
  return Uint32Array.from(new Set([...a, ...b])).sort();
}

export class MigrationJob extends EventEmitter<JobEvents> {
  readonly id: string;
  readonly done: Promise<MigrationRecord>;
  private resolveDone: (r: MigrationRecord) => void = () => undefined;
  private readonly abort = new AbortController();
  private readonly policy: ConvergencePolicy;
  private readonly startedAt = new Date();
  private readonly t0 = performance.now();
  private phase: MigrationPhase = 'prepare';
  private readonly phases: { phase: MigrationPhase; atMs: number }[] = [];
  private readonly rounds: RoundRecord[] = [];
  private control: ClientChannel | null = null;
  private data: ClientChannel[] = [];
  private readonly digest: MemoryDigest;
  private traceStats: TraceRecord;
  /** Frame buffers reused across batches: fresh allocations would page-fault on every frame. */
  private readonly framePool = new FramePool(HEADER_BYTES + MAX_MEMORY_PAYLOAD_BYTES);
  private sentBytes = 0;
  private zeroPagesSkipped = 0;
  private throttle = 0;
  private maxThrottle = 0;
  private lastProgress: MigrationProgress | null = null;
  private lastProgressAt = 0;
  private record: MigrationRecord | null = null;
  private corruptedOnce = false;
  /** COMMIT sent: from here a lost reply means in doubt, never a blind rollback. */
  private commitSent = false;
  private wasRunning = false;
  private pauseLatencyMs: number | null = null;
  private engineDowntimeMs: number | null = null;
  private guestDowntimeMs: number | null = null;
  private switchoverMs: SwitchoverBreakdown | null = null;
  private forced = false;
  private finalDigest: string | null = null;
  /** The target's id for this migration (from its ticket), used to ask for the outcome. */
  private remoteId = '';
  private abortSent = false;
  private readonly requestTimeoutMs: number;
  private readonly originalGranularity: number;
  private readonly originalStrategy: InstallStrategy;

  constructor(
    private readonly vm: Vm,
    private readonly imageBytes: Uint8Array,
    private readonly target: MigrationTargetPeer,
    private readonly transport: Transport,
    private readonly options: MigrationOptions,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    super();
    this.id = randomBytes(16).toString('hex');
    this.digest = new MemoryDigest(vm.config.memoryBytes);
    this.policy = {
      ...DEFAULT_POLICY,
      ...(options.downtimeTargetMs !== undefined ? { downtimeTargetMs: options.downtimeTargetMs } : {}),
      ...(options.maxRounds !== undefined ? { maxRounds: options.maxRounds } : {}),
      ...(options.maxTotalMs !== undefined ? { maxTotalMs: options.maxTotalMs } : {}),
      ...(options.autoConverge !== undefined ? { autoConverge: options.autoConverge } : {}),
      ...(options.onLimit !== undefined ? { onLimit: options.onLimit } : {}),
    };
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
    this.requestTimeoutMs = options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
    this.originalGranularity = vm.granularityBytes;
    this.originalStrategy = vm.tracker.strategy;
    this.traceStats = {
      install: options.traceInstall ?? 'single',
      granularityBytes: options.traceGranularityBytes ?? (options.traceAdaptive === true ? ADAPTIVE_START_GRANULARITY_BYTES : vm.granularityBytes),
      installations: 0, stallMaxMs: 0, stallTotalMs: 0, scanMsTotal: 0, barrierMsTotal: 0, unchangedPagesSkipped: 0,
      guestUnitsPerSecDuringPrecopy: null, adaptive: options.traceAdaptive === true, splits: [], splitRegions: 0,
    };
  }

  private noteInstall(r: { stallMs: number; scanMs?: number; barrierMs?: number }): void {
    const t = this.traceStats;
    this.traceStats = {
      ...t, installations: t.installations + 1, stallMaxMs: Math.max(t.stallMaxMs, r.stallMs), stallTotalMs: t.stallTotalMs + r.stallMs,
      scanMsTotal: t.scanMsTotal + (r.scanMs ?? 0), barrierMsTotal: t.barrierMsTotal + (r.barrierMs ?? 0),
    };
  }

  get finished(): boolean { return this.record !== null; }

  status(): MigrationJobStatus {
    return {
      migrationId: this.id, vm: this.vm.config.name, to: this.target.label,
      state: this.record === null ? 'running' : this.record.outcome, phase: this.phase,
      progress: this.lastProgress, record: this.record,
    };
  }

  /** Cancels the migration: before the commit it rolls back (the VM keeps running here). */
  cancel(reason: string): void {
    if (this.record !== null) return;
    this.abort.abort(new FerryError('MIGRATION_CANCELLED', reason));
    const err = new FerryError('MIGRATION_CANCELLED', reason);
    // Fail in-flight requests now so the job unwinds promptly.
    if (this.phase !== 'switchover' || !this.commitSent) {
      this.control?.fail(err);
      for (const d of this.data) d.fail(err);
    }
  }

  private enter(phase: MigrationPhase): void {
    this.phase = phase;
    this.phases.push({ phase, atMs: performance.now() - this.t0 });
    this.log(`migration ${this.id.slice(0, 8)} (${this.vm.config.name} -> ${this.target.label}): ${phase}`);
  }

  private checkCancelled(): void {
    if (this.abort.signal.aborted) {
      const reason: unknown = this.abort.signal.reason;
      throw isFerryError(reason) ? reason : new FerryError('MIGRATION_CANCELLED', 'migration cancelled');
    }
  }

  async run(): Promise<MigrationRecord> {
    let error: FerryError | null = null;
    let outcome: MigrationOutcome = 'succeeded';
    this.wasRunning = this.vm.state === 'running';
    try {
      await this.prepare();
      const finalDirty = await this.precopy();
      await this.switchover(finalDirty);
    } catch (err) {
      error = isFerryError(err) ? err : new FerryError('MIGRATION_FAILED', errorMessage(err));
      outcome = error.code === 'MIGRATION_CANCELLED' ? 'cancelled' : 'failed';
      // An ERROR *reply* to COMMIT is a definite "not committed"; only a lost reply is in doubt.
      const refusedByTarget = error.origin === 'remote';
      if (this.commitSent && !refusedByTarget) outcome = await this.resolveInDoubt(error);
      else await this.rollback(error);
    } finally {
      this.closeChannels();
    }
    if (outcome === 'succeeded' && error === null) {
      this.enter('release');
      await this.vm.stop();
    }
    const record: MigrationRecord = {
      migrationId: this.id, vm: this.vm.config.name, to: this.target.label, outcome,
      error: recordError(outcome, error),
      startedAt: this.startedAt.toISOString(), totalMs: performance.now() - this.t0, phases: this.phases, rounds: this.rounds,
      transferredBytes: this.sentBytes, zeroPagesSkipped: this.zeroPagesSkipped, pauseLatencyMs: this.pauseLatencyMs,
      engineDowntimeMs: this.engineDowntimeMs, guestDowntimeMs: this.guestDowntimeMs, switchoverMs: this.switchoverMs, maxThrottlePermille: this.maxThrottle,
      forcedSwitchover: this.forced, verified: outcome === 'succeeded', digest: this.finalDigest, options: this.options,
      traces: { ...this.traceStats },
    };
    this.record = record;
    this.log(`migration ${this.id.slice(0, 8)}: ${outcome}${record.error ? ` (${record.error.code}: ${record.error.message})` : ''}`);
    this.emit('done', record);
    this.resolveDone(record);
    return record;
  }

  private async prepare(): Promise<void> {
    this.enter('prepare');
    let ticket: IncomingTicket;
    try {
      ticket = await this.target.requestTicket(CONNECT_TIMEOUT_MS);
    } catch (err) {
      // An answer other than the ticket is the target refusing (a wrong token stays UNAUTHORIZED).
      if (isFerryError(err) && err.origin === 'remote' && err.code !== 'UNAUTHORIZED') {
        throw new FerryError('MIGRATION_REFUSED', `target ${this.target.label} refused: ${err.message} (${err.code})`, { remoteCode: err.code }, { cause: err });
      }
      throw err;
    }
    this.remoteId = ticket.migrationId;
    this.checkCancelled();
    const limiter = this.options.bandwidthBytesPerSec !== undefined ? new RateLimiter(this.options.bandwidthBytesPerSec) : null;
    const dial = { timeoutMs: CONNECT_TIMEOUT_MS, signal: this.abort.signal };
    this.control = new ClientChannel(await this.transport.dial(ticket.address, dial), 'control');
    await this.control.request('HELLO', (id) => encodeHello(id, { protocol: 1, ticket: ticket.ticket, role: 'control', channel: 0 }), this.requestTimeoutMs);
    const channels = this.options.dataChannels ?? DEFAULT_DATA_CHANNELS;
    for (let i = 0; i < channels; i++) {
      const ch = new ClientChannel(await this.transport.dial(ticket.address, dial), `data ${i}`, limiter);
      this.data.push(ch);
      await ch.request('HELLO', (id) => encodeHello(id, { protocol: 1, ticket: ticket.ticket, role: 'data', channel: i }), this.requestTimeoutMs);
    }
    this.log(`migration ${this.id.slice(0, 8)}: connected in ${(performance.now() - this.t0).toFixed(0)} ms`);
    const c = this.vm.config;
    try {
      await this.control.request('PREPARE', (id) => encodePrepare(id, {
        migrationId: ticket.migrationId, dataChannels: channels, image: this.imageBytes,
        vm: { name: c.name, memoryBytes: c.memoryBytes, vcpus: c.vcpus, granularityBytes: c.granularityBytes, cmdline: c.cmdline, imageSha256: this.vm.image.imageSha256 },
      }), this.options.requestTimeoutMs ?? PREPARE_TIMEOUT_MS);
    } catch (err) {
      // The target looked at the VM and said no (capacity, name taken, image): a refusal, whatever its reason code.
      if (isFerryError(err) && err.origin === 'remote') throw new FerryError('MIGRATION_REFUSED', err.message, { remoteCode: err.code }, { cause: err });
      throw err;
    }
  }

  /** Pre-copy rounds; returns what is still dirty when the policy decided to switch over. */
  private async precopy(): Promise<DirtySet> {
    this.enter('precopy');
    const unitsAtStart = this.vm.vcpuStats().reduce((a, v) => a + v.units, 0);
    const precopyStart = performance.now();
    const guestRate = (): number => (this.vm.vcpuStats().reduce((a, v) => a + v.units, 0) - unitsAtStart) * 1000 / Math.max(1, performance.now() - precopyStart);
    const tracker = await this.vm.setTraceGranularity(this.traceStats.granularityBytes);
    tracker.strategy = this.traceStats.install;
    this.noteInstall(await tracker.armAll());
    // Round 1: everything. The target's memory is fresh (all zero): zero pages are not sent at all.
    let work: DirtySet = { regions: Uint32Array.from({ length: tracker.regionCount }, (_, i) => i), pages: new Uint32Array(0) };
    let previousDirty: number | null = null;
    for (let round = 1; ; round++) {
      this.checkCancelled();
      const startedMs = performance.now();
      const unchanged = new Map<number, number>();
      const bytes = await this.sendRegions(work, round, round === 1, unchanged);
      const fired = work.regions.length + work.pages.length;
      await this.control?.request('ROUND', (id) => encodeRound(id, { round, regions: fired, bytes }), this.requestTimeoutMs);
      const durationMs = performance.now() - startedMs;
      const throughput = bytes > 0 && durationMs > 0 ? (bytes * 1000) / durationMs : (this.rounds.at(-1)?.throughputBytesPerSec ?? 0);
      // What the guest dirtied while this round was sent.
      const collectResult = this.vm.state === 'running' ? await tracker.collect() : tracker.collectPaused();
      this.noteInstall(collectResult);
      const collected: DirtySet = { regions: collectResult.regions, pages: collectResult.pages };
      // With regions coarser than a page only the changed pages are sent; estimate what the next
      // round will really send from this round's ratio of sent bytes to fired-region bytes.
      const gran = this.vm.granularityBytes;
      const firedBytes = work.regions.length * gran + work.pages.length * DIGEST_PAGE_BYTES;
      const sendRatio = round === 1 || firedBytes === 0 ? 1 : Math.min(1, Math.max(DIGEST_PAGE_BYTES / gran, bytes / firedBytes));
      const dirtyBytes = Math.round((collected.regions.length * gran) * sendRatio + collected.pages.length * DIGEST_PAGE_BYTES);
      const decision = decideConvergence({
        round, dirtyBytes, previousDirtyBytes: previousDirty, throughputBytesPerSec: throughput,
        elapsedMs: performance.now() - this.t0, throttlePermille: this.throttle,
      }, this.policy);
      this.rounds.push({
        round, regions: fired, bytes, durationMs, throughputBytesPerSec: throughput, dirtyBytesAfter: dirtyBytes,
        throttlePermille: this.throttle, expectedDowntimeMs: decision.expectedDowntimeMs,
      });
      this.progress(true, { round, dirtyBytes, throughput, durationMs, roundBytes: bytes });
      if (decision.action === 'switchover') {
        this.forced = decision.forced;
        this.traceStats = { ...this.traceStats, guestUnitsPerSecDuringPrecopy: guestRate() };
        return collected;
      }
      if (decision.action === 'abort') throw new FerryError('MIGRATION_FAILED', `migration aborted: ${decision.reason}`);
      if (decision.throttlePermille !== this.throttle) {
        this.throttle = decision.throttlePermille;
        this.maxThrottle = Math.max(this.maxThrottle, this.throttle);
        this.vm.setThrottle(this.throttle);
      }
      previousDirty = dirtyBytes;
      work = collected;
      // Adaptive: a region that fired again (it was sent this round, after round 1) with most of
      // its pages unchanged is traced per page from now on.
      if (this.traceStats.adaptive && round > 1 && gran > DIGEST_PAGE_BYTES) {
        const perRegion = gran / DIGEST_PAGE_BYTES;
        const split = [...unchanged].filter(([, n]) => n > REFINE_UNCHANGED_FRACTION * perRegion).map(([r]) => r);
        if (split.length > 0) work = await this.splitRegions(split, work, round);
      }
    }
  }

  /**
   * Switches regions to per-page tracing without losing a write: with every vCPU parked, collect
   * what fired since the last collect (added to the next round's work), split, resume.
   */
  private async splitRegions(regions: number[], work: DirtySet, round: number): Promise<DirtySet> {
    const t0 = performance.now();
    const wasRunning = this.vm.state === 'running';
    if (wasRunning) await this.vm.pause();
    const late = this.vm.tracker.collectPaused();
    const added = this.vm.tracker.split(regions);
    if (wasRunning) this.vm.resume();
    this.noteInstall({ stallMs: wasRunning ? performance.now() - t0 : 0, scanMs: late.scanMs });
    this.traceStats = {
      ...this.traceStats, splits: [...this.traceStats.splits, { round, regions: added }], splitRegions: this.traceStats.splitRegions + added,
    };
    return { regions: mergeSorted(work.regions, late.regions), pages: mergeSorted(work.pages, late.pages) };
  }

  /**
   * Sends the given regions as MEMORY batches spread over the data channels, pipelined. Page data
   * is copied once, from guest RAM straight into a reused frame buffer, and the digest is computed
   * over exactly those bytes (what the target will receive). Returns the bytes of page data sent.
   */
  private async sendRegions(work: DirtySet, round: number, skipZero: boolean, unchangedByRegion: Map<number, number> | null = null): Promise<number> {
    const regions = work.regions;
    const gran = this.vm.granularityBytes;
    const ramBytes = this.vm.config.memoryBytes;
    const ram = Buffer.from(this.vm.ram.buffer, 0, ramBytes);
    const skipUnchanged = round > 1 && gran > DIGEST_PAGE_BYTES;
    const compress = this.options.compression === 'deflate';
    const inFlight: Promise<unknown>[] = [];
    let runs: { offset: number; length: number; zero: boolean }[] = [];
    let runsBytes = 0;
    let channel = 0;
    let roundBytes = 0;
    const totalBytes = regions.length * gran + work.pages.length * DIGEST_PAGE_BYTES;

    const flush = async (): Promise<void> => {
      if (runs.length === 0) return;
      const batch = runs;
      runs = [];
      runsBytes = 0;
      const entries: MemoryEntryInput[] = batch.map((r) => {
        if (r.zero) return { offset: r.offset, length: r.length, encoding: 'zero' };
        const view = ram.subarray(r.offset, r.offset + r.length);
        if (compress) {
          const deflated = deflateRawSync(view, { level: 1 });
          if (deflated.length < r.length) return { offset: r.offset, length: r.length, encoding: 'deflate', data: deflated };
        }
        return { offset: r.offset, length: r.length, encoding: 'raw', data: view };
      });
      const payloadBytes = memoryBatchBytes(round, entries);
      const ch = this.data[channel++ % this.data.length];
      if (ch === undefined) throw new FerryError('MIGRATION_FAILED', 'no data channel');
      const buf = this.framePool.acquire(HEADER_BYTES + payloadBytes);
      const p = ch.request(`MEMORY round ${round}`, (id) => {
        encodeHeader(Command.MEMORY, id, payloadBytes).copy(buf, 0);
        const dataAt = writeMemoryBatch(buf, HEADER_BYTES, round, entries);
        entries.forEach((e, i) => {
          if (e.encoding === 'zero') { this.digest.updateZero(e.offset, e.length); return; }
          const at = dataAt[i] ?? -1;
          // Hash what is sent: for deflate, the source bytes as they were compressed.
          this.digest.update(e.offset, e.encoding === 'raw' ? buf.subarray(at, at + e.length) : inflateRawSync(e.data ?? Buffer.alloc(0)));
          roundBytes += e.length;
          this.sentBytes += e.length;
        });
        if (this.options.corruptPageInRound === round && !this.corruptedOnce) {
          const at = dataAt.find((x) => x >= 0) ?? -1;
          if (at >= 0) { buf[at] = (buf[at] ?? 0) ^ 0xff; this.corruptedOnce = true; }
        }
        return buf.subarray(0, HEADER_BYTES + payloadBytes);
      }, this.requestTimeoutMs);
      // The buffer is reused once the target answered (it was written by then), or the request failed.
      void p.then(() => { this.framePool.release(buf); }, () => { this.framePool.release(buf); });
      inFlight.push(p);
      // Keep the total queued bounded: wait for the oldest when every channel is busy.
      if (inFlight.length >= this.data.length * FRAMES_IN_FLIGHT_PER_CHANNEL) await inFlight.shift();
      this.progress(false, { round, roundBytes, totalBytes });
      this.checkCancelled();
    };

    // Walk pages of the selected regions, coalescing runs of non-zero pages into raw entries and
    // (after round 1) runs of zero pages into zero entries.
    let runStart = -1;
    let runZero = false;
    let runEnd = -1;
    const endRun = async (): Promise<void> => {
      if (runStart < 0) return;
      runs.push({ offset: runStart, length: runEnd - runStart, zero: runZero });
      runsBytes += runZero ? 0 : runEnd - runStart;
      runStart = -1;
      if (runsBytes >= BATCH_PAYLOAD_BYTES - MAX_ENTRY_BYTES || runs.length >= MAX_ENTRIES_PER_BATCH) await flush();
    };
    const visitPage = async (page: number): Promise<void> => {
      const data = ram.subarray(page, page + DIGEST_PAGE_BYTES);
      const zero = data.equals(ZERO_PAGE);
      if (zero && skipZero) { await endRun(); this.zeroPagesSkipped++; return; }
      // A fired region coarser than a page: send only the pages that changed since last sent.
      if (skipUnchanged && this.digest.unchanged(page, data)) {
        await endRun();
        this.traceStats = { ...this.traceStats, unchangedPagesSkipped: this.traceStats.unchangedPagesSkipped + 1 };
        if (unchangedByRegion !== null) { const r = Math.floor(page / gran); unchangedByRegion.set(r, (unchangedByRegion.get(r) ?? 0) + 1); }
        return;
      }
      if (runStart >= 0 && (zero !== runZero || page !== runEnd || runEnd - runStart >= MAX_ENTRY_BYTES)) await endRun();
      if (runStart < 0) { runStart = page; runZero = zero; }
      runEnd = page + DIGEST_PAGE_BYTES;
    };
    for (const r of regions) {
      const start = r * gran;
      const end = Math.min(start + gran, ramBytes);
      for (let page = start; page < end; page += DIGEST_PAGE_BYTES) await visitPage(page);
    }
    // Pages fired in split regions (per-page tracing).
    for (const p of work.pages) await visitPage(p * DIGEST_PAGE_BYTES);
    await endRun();
    await flush();
    // Every frame must be acknowledged; a failure of any is the round's failure.
    for (const p of inFlight) await p;
    return roundBytes;
  }

  private async switchover(dirty: DirtySet): Promise<void> {
    this.enter('switchover');
    this.checkCancelled();
    const stunAt = performance.now();
    if (this.vm.state === 'running') this.pauseLatencyMs = (await this.vm.pause()).latencyMs;
    const late = this.vm.tracker.collectPaused();
    const final: DirtySet = { regions: mergeSorted(dirty.regions, late.regions), pages: mergeSorted(dirty.pages, late.pages) };
    const round = this.rounds.length + 1;
    const startedMs = performance.now();
    const bytes = await this.sendRegions(final, round, false);
    this.rounds.push({
      round, regions: final.regions.length + final.pages.length, bytes, durationMs: performance.now() - startedMs,
      throughputBytesPerSec: bytes > 0 ? (bytes * 1000) / Math.max(1e-3, performance.now() - startedMs) : 0,
      dirtyBytesAfter: 0, throttlePermille: this.throttle, expectedDowntimeMs: 0,
    });
    const sentAt = performance.now();
    const states = this.vm.captureVcpuStates();
    const lastReads = this.vm.lastClockReads();
    const clockNs = this.vm.guestClockNs;
    await this.control?.request('STATE', (id) => encodeState(id, {
      claimedPages: this.vm.claimedPages, clockNs, clockWallMs: Date.now(),
      vcpus: states.map((s, v) => ({ halted: s.halted, globals: s.globals, lastClockReadNs: lastReads[v] ?? 0n })),
    }), this.requestTimeoutMs);
    const stateAt = performance.now();
    this.finalDigest = this.digest.hex();
    this.checkCancelled();
    this.commitSent = true;
    await this.control?.request('COMMIT', (id) => encodeCommit(id, { digest: this.finalDigest ?? '' }), this.options.requestTimeoutMs ?? COMMIT_TIMEOUT_MS);
    const doneAt = performance.now();
    this.engineDowntimeMs = doneAt - stunAt;
    this.switchoverMs = { pauseMs: startedMs - stunAt, finalRoundMs: sentAt - startedMs, stateMs: stateAt - sentAt, commitMs: doneAt - stateAt };
    this.progress(true, { round, dirtyBytes: 0, throughput: 0, durationMs: 0, roundBytes: bytes });
    this.guestDowntimeMs = await this.fetchGuestDowntime();
  }

  /** Asks the target for the gap the guest saw (known once every vCPU read its clock there). */
  private async fetchGuestDowntime(): Promise<number | null> {
    const deadline = performance.now() + GUEST_DOWNTIME_WAIT_MS;
    while (performance.now() < deadline) {
      try {
        const gap = (await this.target.incomingOutcome(this.remoteId, PEER_POLL_TIMEOUT_MS)).guestDowntimeMs;
        if (typeof gap === 'number') return gap;
      } catch { /* the target is busy resuming; try again */ }
      await new Promise((resolve) => setTimeout(resolve, GUEST_DOWNTIME_POLL_MS));
    }
    return null;
  }

  /** Before COMMIT was sent: the target discards its copy; the VM continues here. */
  private async rollback(error: FerryError): Promise<void> {
    this.enter('rollback');
    try {
      if (this.control !== null && !this.abortSent) {
        this.abortSent = true;
        await this.control.request('ABORT', (id) => encodeAbort(id, { reason: error.message.slice(0, MAX_ABORT_REASON_CHARS) }), 2_000).catch(() => undefined);
      }
    } finally {
      this.vm.setThrottle(0);
      this.vm.tracker.disarmAll();
      // Back to the VM's own tracing configuration.
      await this.vm.setTraceGranularity(this.originalGranularity).catch(() => undefined);
      this.vm.tracker.strategy = this.originalStrategy;
      if (this.vm.state === 'paused' && this.wasRunning) this.vm.resume();
    }
  }

  /**
   * COMMIT was sent but its reply never came: the target may or may not run the VM. Ask it until
   * it answers; never resume here unless the target says it did not commit.
   */
  private async resolveInDoubt(error: FerryError): Promise<MigrationOutcome> {
    this.enter('resolve');
    const deadline = performance.now() + (this.options.inDoubtTimeoutMs ?? IN_DOUBT_RESOLVE_MS);
    while (performance.now() < deadline) {
      try {
        // Only a definite answer decides; a target that cannot read its record answers an error.
        const { state } = await this.target.incomingOutcome(this.remoteId, PEER_POLL_TIMEOUT_MS);
        if (state === 'committed') {
          this.log(`migration ${this.id.slice(0, 8)}: commit reply lost, but the target reports committed: releasing here`);
          this.vm.setThrottle(0);
          return 'succeeded';
        }
        if (state === 'aborted' || state === 'unknown') {
          await this.rollback(error);
          return 'failed';
        }
      } catch { /* unreachable: keep asking */ }
      await new Promise((resolve) => setTimeout(resolve, IN_DOUBT_POLL_MS));
    }
    this.log(`migration ${this.id.slice(0, 8)}: IN DOUBT — the target did not say whether it committed; VM ${this.vm.config.name} stays paused here. Resume it only if the target does not run it.`);
    return 'in-doubt';
  }

  private closeChannels(): void {
    this.control?.close();
    for (const d of this.data) d.close();
  }

  private progress(force: boolean, p: { round: number; dirtyBytes?: number; throughput?: number; durationMs?: number; roundBytes: number; totalBytes?: number }): void {
    const now = performance.now();
    if (!force && now - this.lastProgressAt < PROGRESS_INTERVAL_MS) return;
    this.lastProgressAt = now;
    const last = this.rounds.at(-1);
    const throughput = p.throughput ?? last?.throughputBytesPerSec ?? 0;
    const dirtyBytes = p.dirtyBytes ?? last?.dirtyBytesAfter ?? 0;
    const dirtyRate = last !== undefined && last.durationMs > 0 ? (last.dirtyBytesAfter * 1000) / last.durationMs : 0;
    const remaining = p.totalBytes !== undefined ? p.totalBytes - p.roundBytes : dirtyBytes;
    const progress: MigrationProgress = {
      migrationId: this.id, phase: this.phase, round: p.round, sentBytes: this.sentBytes, roundSentBytes: p.roundBytes,
      roundTotalBytes: p.totalBytes ?? p.roundBytes, dirtyBytes, dirtyRateBytesPerSec: dirtyRate, throughputBytesPerSec: throughput,
      etaMs: throughput > 0 ? (remaining * 1000) / throughput : null, throttlePermille: this.throttle, elapsedMs: now - this.t0,
    };
    this.lastProgress = progress;
    this.emit('progress', progress);
  }
}

/** The record's error: none on success; in doubt, the code that says so (the cause stays in the message). */
function recordError(outcome: MigrationOutcome, error: FerryError | null): MigrationRecord['error'] {
  if (outcome === 'succeeded' || error === null) return null;
  if (outcome === 'in-doubt') return { code: 'MIGRATION_IN_DOUBT', message: `the target did not say whether it committed (${error.code}: ${error.message})` };
  return { code: error.code, message: error.message };
}
