/**
 * Live status of a running VM for the CLI: steps/s, guest work units/s and dirty regions/s, sampled
 * from the VM's per-vCPU counters and (when tracking) by collecting fired traces once per tick.
 */
import type { Vm } from '../vmm/vm.js';
import { formatBytes } from '../lib/units.js';

export interface StatusSample {
  readonly stepsPerSec: number;
  readonly unitsPerSec: number;
  readonly dirtyRegionsPerSec: number | null;
  readonly uptimeMs: number;
}

export class StatusSampler {
  private lastSteps = 0;
  private lastUnits = 0;
  private lastAt = performance.now();
  private readonly startedAt = performance.now();
  private tracking = false;

  constructor(private readonly vm: Vm, private readonly trackDirty: boolean) {}

  async begin(): Promise<void> {
    if (this.trackDirty) {
      await this.vm.tracker.armAll();
      this.tracking = true;
    }
    this.lastAt = performance.now();
  }

  async sample(): Promise<StatusSample> {
    const now = performance.now();
    const dt = Math.max(1e-3, (now - this.lastAt) / 1000);
    const stats = this.vm.vcpuStats();
    const steps = stats.reduce((a, s) => a + s.steps, 0);
    const units = stats.reduce((a, s) => a + s.units, 0);
    let dirty: number | null = null;
    if (this.tracking && this.vm.state === 'running') dirty = (await this.vm.tracker.collect()).regions.length / dt;
    const sample = { stepsPerSec: (steps - this.lastSteps) / dt, unitsPerSec: (units - this.lastUnits) / dt, dirtyRegionsPerSec: dirty, uptimeMs: now - this.startedAt };
    this.lastSteps = steps;
    this.lastUnits = units;
    this.lastAt = now;
    return sample;
  }

  format(s: StatusSample): string {
    const vm = this.vm;
    const parts = [
      `vm ${vm.config.name}`,
      `${vm.config.vcpus} vCPU${vm.config.vcpus > 1 ? 's' : ''} ${vm.state}`,
      `${compact(s.stepsPerSec)} steps/s`,
      `${compact(s.unitsPerSec)} units/s`,
    ];
    if (s.dirtyRegionsPerSec !== null) parts.push(`dirty ${compact(s.dirtyRegionsPerSec)} regions/s of ${formatBytes(vm.config.granularityBytes)}`);
    parts.push(`up ${(s.uptimeMs / 1000).toFixed(1)} s`);
    return parts.join(' | ');
  }
}

/** 12345678 -> "12.3M". */
export function compact(n: number): string {
  const abs = Math.abs(n);
  if (abs >= 1e9) return `${(n / 1e9).toFixed(2)}G`;
  if (abs >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (abs >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return n.toFixed(0);
}
