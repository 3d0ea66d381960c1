/**
 * The VMs of one host: define, start, stop, pause, resume, verify, delete, and the arrivals and
 * departures of migrations. Every verb asks the operations registry first (a VM owned by a running
 * operation answers BUSY); every change of a definition is persisted in the data directory, one
 * write after another per VM.
 */
import { FerryError, errorMessage } from '../lib/errors.js';
import { formatBytes } from '../lib/units.js';
import { normalizeConfig, type VmConfig, type VmConfigInput } from '../vmm/config.js';
import { Vm } from '../vmm/vm.js';
import { restoreVm, saveVm } from '../vmm/persist.js';
import { instrumentImage } from '../vmm/instrument.js';
import { digestOf } from '../migration/digest.js';
import type { CreateVmRequest, PauseResultView, VerifyResult, VmView } from '../api/host-v1.js';
import type { HostStore } from './store.js';
import type { OperationsRegistry } from './operations.js';
import { VmSlot } from './vm-slot.js';
import type { HostDatastores } from './datastores.js';
import { VmDisk, type DiskSpec } from './vm-disk.js';

export interface VmServiceOptions {
  readonly hostName: string;
  readonly store: HostStore;
  readonly operations: OperationsRegistry;
  readonly memoryLimitBytes: number;
  readonly datastores: HostDatastores;
  readonly log: (line: string) => void;
}

export class VmService {
  private readonly slots = new Map<string, VmSlot>();
  private readonly pendingStore = new Map<string, Promise<void>>();
  /** Set at shutdown: nothing new arrives. */
  closing = false;

  constructor(private readonly o: VmServiceOptions) {}

  get count(): number { return this.slots.size; }
  get memoryCommittedBytes(): number { return [...this.slots.values()].reduce((a, s) => a + s.config.memoryBytes, 0); }

  slot(name: string): VmSlot {
    const slot = this.slots.get(name);
    if (slot === undefined) throw new FerryError('NOT_FOUND', `host ${this.o.hostName} has no VM named ${name}`);
    return slot;
  }

  describe(slot: VmSlot): VmView {
    const vm = slot.vm;
    return {
      name: slot.name, state: slot.state, owner: this.o.operations.ownerOf(slot.name),
      config: { memoryBytes: slot.config.memoryBytes, vcpus: slot.config.vcpus, granularityBytes: slot.config.granularityBytes, cmdline: slot.config.cmdline },
      crash: vm?.crash ?? null, vcpus: vm?.vcpuStats() ?? [], lastMigration: slot.lastMigration,
      disk: slot.disk?.describe() ?? null,
    };
  }

  list(): VmView[] { return [...this.slots.values()].map((s) => this.describe(s)); }
  get(name: string): VmView { return this.describe(this.slot(name)); }

  /** Capacity and name checks for a VM about to arrive (create or incoming migration). */
  admit(name: string, memoryBytes: number): void {
    if (this.closing) throw new FerryError('MIGRATION_REFUSED', `host ${this.o.hostName} is shutting down`);
    if (this.slots.has(name)) throw new FerryError('ALREADY_EXISTS', `host ${this.o.hostName} already has a VM named ${name}`);
    const used = this.memoryCommittedBytes;
    if (used + memoryBytes > this.o.memoryLimitBytes) {
      throw new FerryError('CAPACITY', `host ${this.o.hostName} cannot take ${formatBytes(memoryBytes)} more: ${formatBytes(used)} of ${formatBytes(this.o.memoryLimitBytes)} is committed to VMs`);
    }
  }

  async create(d: CreateVmRequest): Promise<VmView> {
    const config = normalizeConfig({
      name: d.name, memoryBytes: d.memoryBytes,
      ...(d.vcpus !== undefined ? { vcpus: d.vcpus } : {}),
      ...(d.granularityBytes !== undefined ? { granularityBytes: d.granularityBytes } : {}),
      ...(d.cmdline !== undefined ? { cmdline: d.cmdline } : {}),
      ...(d.hangTimeoutMs !== undefined ? { hangTimeoutMs: d.hangTimeoutMs } : {}),
    });
    const image = new Uint8Array(Buffer.from(d.imageBase64, 'base64'));
    // Validate the image against this configuration now, not at first start.
    instrumentImage(image, { ramBytes: config.memoryBytes, granularityBytes: config.granularityBytes });
    this.admit(config.name, config.memoryBytes);
    const spec = d.disk !== undefined ? { datastore: d.disk.datastore, path: d.disk.path } : null;
    const disk = spec !== null ? await VmDisk.attach(this.o.datastores, spec, d.disk?.sizeBytes) : null;
    // Admitted again: the name may have been taken while the disk was being opened.
    try { this.admit(config.name, config.memoryBytes); } catch (err) { await disk?.close(); throw err; }
    const slot = new VmSlot(config, image, disk);
    this.slots.set(slot.name, slot);
    try {
      // disk.spec, not spec: attaching may have finished an interrupted consolidate, moving the top.
      await this.o.store.saveVm(config, image, false, disk?.spec ?? null);
    } catch (err) {
      this.slots.delete(slot.name);
      await disk?.close();
      throw err;
    }
    if (disk !== null) await this.settle(config.name, disk);
    if (d.start === true) return this.start(slot.name);
    return this.describe(slot);
  }

  async start(name: string): Promise<VmView> {
    const slot = this.slot(name);
    this.o.operations.requireFree(name, 'start');
    if (slot.vm !== null && (slot.vm.state === 'running' || slot.vm.state === 'paused' || slot.vm.state === 'halted')) {
      throw new FerryError('VM_STATE', `VM ${name} is already ${slot.vm.state}`);
    }
    if (slot.diskProblem !== null) {
      // Still locked or gone: the attach's own error (DISK_LOCKED names the holder and the expiry).
      slot.disk = await VmDisk.attach(this.o.datastores, slot.diskProblem.spec);
      slot.diskProblem = null;
    }
    const vm = slot.vm !== null && slot.vm.state === 'created' ? slot.vm : Vm.create(slot.imageBytes, withDisk(slot));
    if (slot.vm !== vm) slot.attach(vm);
    await vm.start();
    return this.describe(slot);
  }

  async stop(name: string): Promise<VmView> {
    const slot = this.slot(name);
    this.o.operations.requireFree(name, 'stop');
    if (slot.vm !== null) await slot.vm.stop();
    slot.vm = null;
    return this.describe(slot);
  }

  async pause(name: string): Promise<PauseResultView> {
    const slot = this.slot(name);
    this.o.operations.requireFree(name, 'pause');
    const r = await slot.requireVm('pause').pause();
    return { ...this.describe(slot), pauseLatencyMs: r.latencyMs };
  }

  resume(name: string): VmView {
    const slot = this.slot(name);
    this.o.operations.requireFree(name, 'resume');
    slot.requireVm('resume').resume();
    return this.describe(slot);
  }

  async delete(name: string): Promise<{ name: string; deleted: true }> {
    const slot = this.slot(name);
    this.o.operations.requireFree(name, 'delete');
    if (slot.vm !== null && slot.vm.state !== 'stopped' && slot.vm.state !== 'crashed') {
      throw new FerryError('VM_STATE', `VM ${name} is ${slot.vm.state}; stop it before deleting it`);
    }
    await slot.vm?.stop();
    this.slots.delete(name);
    slot.console.close();
    await slot.disk?.close(); // the disk file stays on its datastore; only the lease goes
    await this.persist(name, () => this.o.store.removeVm(name));
    return { name, deleted: true };
  }

  /** Pauses the VM, runs the guest's self-check and digests its RAM, then resumes it. */
  async verify(name: string): Promise<VerifyResult> {
    const slot = this.slot(name);
    this.o.operations.requireFree(name, 'verify');
    const vm = slot.requireVm('verify');
    const wasRunning = vm.state === 'running';
    if (wasRunning) await vm.pause();
    try {
      const gapNs = vm.guestMaxClockGapNs();
      return {
        name, state: wasRunning ? 'running' : vm.state,
        selfcheck: vm.image.hasSelfcheck ? vm.selfcheck() : null,
        guestMaxClockGapMs: gapNs === null ? null : Number(gapNs) / 1e6,
        digest: digestOf(vm.ram),
        claimedPages: vm.claimedPages,
      };
    } finally {
      if (wasRunning) vm.resume();
    }
  }

  /** A VM that arrived by migration and is now running here: registered at once, persisted in the promise. */
  adopt(vm: Vm, imageBytes: Uint8Array, disk: VmDisk | null): Promise<void> {
    const slot = new VmSlot(vm.config, imageBytes, disk);
    slot.attach(vm);
    this.slots.set(slot.name, slot);
    return this.persist(slot.name, () => this.o.store.saveVm(vm.config, imageBytes, false, disk?.spec ?? null));
  }

  /** The VM left by migration (its copy here was stopped by the job): this host forgets it. */
  async departed(name: string): Promise<void> {
    const slot = this.slots.get(name);
    slot?.console.close();
    this.slots.delete(name);
    // A copied disk's source file stays on its datastore (only its lease goes); a shared one was handed over already.
    await slot?.disk?.close().catch((err: unknown) => { this.o.log(`host ${this.o.hostName}: VM ${name}: cannot close its disk: ${errorMessage(err)}`); });
    await this.persist(name, () => this.o.store.removeVm(name)).catch((err: unknown) => {
      this.o.log(`host ${this.o.hostName}: cannot remove migrated VM ${name}: ${errorMessage(err)}`);
    });
  }

  /** Restores VMs saved at the last shutdown; VMs lost in a crash come back as defined (not running). */
  async load(): Promise<void> {
    const { vms, problems } = await this.o.store.loadAll();
    for (const p of problems) this.o.log(`host ${this.o.hostName}: ${p}`);
    for (const stored of vms) {
      const { disk, problem } = await this.reattach(stored.config, stored.runningAtShutdown, stored.disk);
      const slot = new VmSlot(stored.config, stored.image, disk);
      slot.diskProblem = problem !== null && stored.disk !== undefined ? { spec: stored.disk, message: problem } : null;
      this.slots.set(slot.name, slot);
      if (stored.snapshotPath === null || problem !== null) continue;
      try {
        const vm = await restoreVm(stored.snapshotPath, { hangTimeoutMs: stored.config.hangTimeoutMs, ...(disk !== null ? { disk: disk.backend } : {}) });
        slot.attach(vm);
        // The snapshot is consumed: a later crash must not resurrect this older state.
        await this.o.store.removeSnapshot(slot.name);
        await this.o.store.saveVm(slot.config, null, false, disk?.spec ?? null);
        if (stored.runningAtShutdown) await vm.start();
        this.o.log(`host ${this.o.hostName}: restored VM ${slot.name} from its shutdown snapshot${stored.runningAtShutdown ? ' and resumed it' : ''}`);
      } catch (err) {
        this.o.log(`host ${this.o.hostName}: VM ${slot.name}: cannot restore its shutdown snapshot: ${errorMessage(err)}`);
      }
    }
  }

  /** Shutdown: running VMs are paused and saved (resumed at the next start); every thread is released. */
  async saveAll(): Promise<string[]> {
    const report: string[] = [];
    for (const slot of this.slots.values()) {
      const vm = slot.vm;
      if (vm === null) continue;
      const wasRunning = vm.state === 'running';
      try {
        if (wasRunning || vm.state === 'paused' || vm.state === 'halted') {
          if (wasRunning) await vm.pause();
          await saveVm(vm, this.o.store.snapshotPath(slot.name));
          await this.o.store.saveVm(slot.config, null, wasRunning, slot.disk?.spec ?? null);
          report.push(`VM ${slot.name}: paused and saved (${wasRunning ? 'will resume' : 'stays paused'} at the next start)`);
        } else if (vm.state === 'crashed') {
          report.push(`VM ${slot.name}: was crashed; nothing to save`);
        }
      } catch (err) {
        report.push(`VM ${slot.name}: NOT saved (${errorMessage(err)}); its running state is lost`);
      }
      await vm.stop();
    }
    // Flushed, closed, leases released: the next start (here or on another host) takes them again.
    for (const slot of this.slots.values()) await slot.disk?.close();
    return report;
  }

  /** The disk a stored definition names, opened again; a problem (locked, gone) is kept, not thrown. */
  private async reattach(config: VmConfig, runningAtShutdown: boolean, spec: DiskSpec | undefined): Promise<{ disk: VmDisk | null; problem: string | null }> {
    if (spec === undefined) return { disk: null, problem: null };
    let disk: VmDisk | null = null;
    try {
      disk = await VmDisk.attach(this.o.datastores, spec);
      if (disk.spec.path !== spec.path) {
        // An interrupted consolidate was finished: its parent is the top now; recorded before the delta goes.
        await this.o.store.saveVm(config, null, runningAtShutdown, disk.spec);
        this.o.log(`host ${this.o.hostName}: VM ${config.name}: finished an interrupted consolidate of ${spec.path} into ${disk.spec.path}`);
      }
      await this.settle(config.name, disk);
      return { disk, problem: null };
    } catch (err) {
      await disk?.close();
      const problem = `${spec.datastore}:${spec.path}: ${errorMessage(err)}`;
      this.o.log(`host ${this.o.hostName}: VM ${config.name}: cannot attach its disk ${problem}`);
      return { disk: null, problem };
    }
  }

  /** Leftovers of a consolidate finished at attach are tidied; failing to is reported, not fatal (the chain is sound). */
  private async settle(vm: string, disk: VmDisk): Promise<void> {
    await disk.settleRecovery().catch((err: unknown) => {
      this.o.log(`host ${this.o.hostName}: VM ${vm}: cannot remove what a finished consolidate left: ${errorMessage(err)}`);
    });
  }

  /**
   * Records durably that VM `name`'s disk is now at `spec` (a snapshot, revert or consolidate
   * moved the chain's top), in turn with the VM's other store writes.
   */
  saveDiskSpec(name: string, spec: DiskSpec): Promise<void> {
    const slot = this.slot(name);
    return this.persist(name, () => this.o.store.saveVm(slot.config, null, false, spec));
  }

  /** Store writes of one VM run one after another (a delete must not race a save). */
  private persist(name: string, op: () => Promise<void>): Promise<void> {
    const next = (this.pendingStore.get(name) ?? Promise.resolve()).catch(() => undefined).then(op);
    this.pendingStore.set(name, next);
    void next.finally(() => { if (this.pendingStore.get(name) === next) this.pendingStore.delete(name); }).catch(() => undefined);
    return next;
  }
}

/** The VM's configuration with its disk as the block device. */
function withDisk(slot: VmSlot): VmConfigInput {
  return slot.disk !== null ? { ...slot.config, disk: slot.disk.backend } : slot.config;
}
