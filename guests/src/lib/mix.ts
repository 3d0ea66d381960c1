// splitmix64's finalizer: a cheap, well-mixing bijection of u64, used by guests to derive
// checkable content and pseudo-random choices from counters and seeds.

@inline export function mix64(v: u64): u64 {
  let x = v + 0x9e3779b97f4a7c15;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}
