/** A vCPU's architectural state as Ferry captures it at a safepoint: its instance's mutable globals. */
export type GlobalValue =
  | { readonly type: 'i32' | 'f32' | 'f64'; readonly value: number }
  | { readonly type: 'i64'; readonly value: bigint };

export interface VcpuSnapshotState {
  readonly halted: boolean;
  readonly globals: readonly GlobalValue[];
}
