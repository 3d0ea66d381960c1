/**
 * A VM's configuration: what the caller may set, the defaults, and the checks. The shared bounds
 * (vCPUs, command line, name) are src/lib/limits.ts; memory size and trace granularity are checked
 * where the memory map is computed (src/vmm/layout.ts). The bounds below are the runtime's own.
 */
import { FerryError } from '../lib/errors.js';
import { MAX_CMDLINE_BYTES, MAX_VCPUS, MIN_VCPUS, VM_NAME_RULE, cmdlineBytes, isValidVmName } from '../lib/limits.js';
import type { BlockBackend } from './devices/block.js';
import { DEFAULT_GRANULARITY_BYTES } from './layout.js';

export const DEFAULT_HANG_TIMEOUT_MS = 2000;
export const MIN_HANG_TIMEOUT_MS = 10;
/** Beyond ten minutes a "hang timeout" no longer detects hangs; a typo should not switch detection off. */
export const MAX_HANG_TIMEOUT_MS = 600_000;
/** Target duration of one step: bounds pause latency (a vCPU parks at the end of its current step). */
export const DEFAULT_STEP_TARGET_US = 150;
export const MIN_STEP_TARGET_US = 20;
export const MAX_STEP_TARGET_US = 100_000;

export interface VmConfig {
  readonly name: string;
  readonly memoryBytes: number;
  readonly vcpus: number;
  readonly granularityBytes: number;
  readonly cmdline: string;
  /** A step still running after this long marks the VM crashed (reason "hung"). */
  readonly hangTimeoutMs: number;
  /** Target duration of one vCPU step (bounds pause latency). */
  readonly stepTargetUs: number;
}

/**
 * The devices a VM is built with. Kept out of VmConfig, which is plain data (saved with a VM,
 * shown by the API): a backend is a live object whose owner opens and closes it.
 */
export interface VmDevicesInput {
  /** The guest's disk (ferry.block_submit); without it block_submit refuses with BLOCK_E_NO_DISK. */
  readonly disk?: BlockBackend;
}

export type VmConfigInput = Partial<VmConfig> & Pick<VmConfig, 'memoryBytes'> & VmDevicesInput;

/** Fills in the defaults and checks every field this module owns; throws VM_CONFIG_INVALID. */
export function normalizeConfig(input: VmConfigInput): VmConfig {
  const config: VmConfig = {
    name: input.name ?? 'vm',
    memoryBytes: input.memoryBytes,
    vcpus: input.vcpus ?? 1,
    granularityBytes: input.granularityBytes ?? DEFAULT_GRANULARITY_BYTES,
    cmdline: input.cmdline ?? '',
    hangTimeoutMs: input.hangTimeoutMs ?? DEFAULT_HANG_TIMEOUT_MS,
    stepTargetUs: input.stepTargetUs ?? DEFAULT_STEP_TARGET_US,
  };
  const problem = configProblem(config);
  if (problem !== null) throw new FerryError('VM_CONFIG_INVALID', problem, { config });
  return config;
}

/** The first thing wrong with `config`, in words, or null. */
function configProblem(config: VmConfig): string | null {
  const { vcpus, cmdline, name, hangTimeoutMs, stepTargetUs } = config;
  if (!Number.isInteger(vcpus) || vcpus < MIN_VCPUS || vcpus > MAX_VCPUS) return `vcpus must be an integer from ${MIN_VCPUS} to ${MAX_VCPUS}, got ${vcpus}`;
  if (cmdlineBytes(cmdline) > MAX_CMDLINE_BYTES) return `command line is ${cmdlineBytes(cmdline)} bytes (UTF-8); the limit is ${MAX_CMDLINE_BYTES}`;
  if (cmdline.includes('\0')) return 'command line must not contain NUL characters';
  if (!isValidVmName(name)) return `VM name "${name}" must be ${VM_NAME_RULE}`;
  if (!Number.isFinite(hangTimeoutMs) || hangTimeoutMs < MIN_HANG_TIMEOUT_MS || hangTimeoutMs > MAX_HANG_TIMEOUT_MS) {
    return `hang timeout must be between ${MIN_HANG_TIMEOUT_MS} and ${MAX_HANG_TIMEOUT_MS} ms`;
  }
  if (!Number.isFinite(stepTargetUs) || stepTargetUs < MIN_STEP_TARGET_US || stepTargetUs > MAX_STEP_TARGET_US) {
    return `step target must be between ${MIN_STEP_TARGET_US} and ${MAX_STEP_TARGET_US} µs`;
  }
  return null;
}
