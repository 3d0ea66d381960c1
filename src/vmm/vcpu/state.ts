import type { GlobalValue } from '../../lib/wire-values.js';

export type { GlobalValue };

/** A vCPU's architectural state as Ferry captures it at a safepoint: its instance's mutable globals. */
export interface VcpuSnapshotState {
  readonly halted: boolean;
  readonly globals: readonly GlobalValue[];
}
