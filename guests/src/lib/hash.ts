// The splitmix64 finalizer: a cheap, well-mixing 64-bit bijection. Guests derive their
// deterministic values from it (compute's hash chain, dirtier's per-vCPU seeds, kvlog's record
// fields), so its constants are part of what their output and kvlog's on-disk records mean:
// changing them changes every value a test or an earlier boot checks.

@inline export function mix64(v: u64): u64 {
  let x = v + 0x9e3779b97f4a7c15;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}
