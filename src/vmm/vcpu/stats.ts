/** Per-vCPU run statistics, as the vCPUs keep them in the control block. */
import { S_MAX_STEP_MS, S_STEPS, S_STEP_MS, S_THROTTLED_MS, S_UNITS, V_BUDGET, V_STATE, type Control, type VcpuState } from '../control.js';

export interface VcpuStats {
  readonly vcpu: number;
  readonly state: VcpuState;
  readonly steps: number;
  readonly units: number;
  readonly stepMs: number;
  readonly maxStepMs: number;
  readonly throttledMs: number;
  readonly budget: number;
}

export function readVcpuStats(control: Control, vcpus: number): VcpuStats[] {
  const c = control;
  const out: VcpuStats[] = [];
  for (let v = 0; v < vcpus; v++) {
    out.push({
      vcpu: v, state: c.load(v, V_STATE), steps: c.f64[c.stat(v, S_STEPS)] ?? 0,
      units: c.f64[c.stat(v, S_UNITS)] ?? 0, stepMs: c.f64[c.stat(v, S_STEP_MS)] ?? 0,
      maxStepMs: c.f64[c.stat(v, S_MAX_STEP_MS)] ?? 0, throttledMs: c.f64[c.stat(v, S_THROTTLED_MS)] ?? 0,
      budget: c.load(v, V_BUDGET),
    });
  }
  return out;
}
