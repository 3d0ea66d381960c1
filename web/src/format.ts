/** How numbers read on screen: binary units as the CLI prints them (src/lib/units.ts formatBytes). */
const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const;
const STEP = 1024;

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  let v = n;
  let i = 0;
  while (Math.abs(v) >= STEP && i < UNITS.length - 1) { v /= STEP; i++; }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(1)} ${UNITS[i] ?? 'B'}`;
}

export const rate = (n: number | null | undefined): string => (n === null || n === undefined ? '—' : `${bytes(n)}/s`);

export function ms(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  if (n < 1000) return `${n.toFixed(n < 10 ? 1 : 0)} ms`;
  if (n < 120_000) return `${(n / 1000).toFixed(1)} s`;
  return `${Math.floor(n / 60_000)} min ${Math.round((n % 60_000) / 1000)} s`;
}

export const when = (atMs: number | null): string => (atMs === null ? '—' : new Date(atMs).toLocaleTimeString());
export const percent = (f: number): string => `${Math.round(Math.max(0, Math.min(1, f)) * 100)}%`;

/** A VM row's recorded memory and vCPUs (the center keeps them as JSON: src/center/inventory.ts vmRecord). */
export function vmConfig(config: unknown): { memoryBytes: number | null; vcpus: number | null } {
  const c = typeof config === 'object' && config !== null ? config as Record<string, unknown> : {};
  return { memoryBytes: typeof c.memoryBytes === 'number' ? c.memoryBytes : null, vcpus: typeof c.vcpus === 'number' ? c.vcpus : null };
}

export interface DiskRow { readonly datastore: string; readonly path: string; readonly capacityBytes: number | null; readonly chain: readonly { path: string; cid: string }[] }
export function vmDisks(disks: unknown): DiskRow[] {
  if (!Array.isArray(disks)) return [];
  return disks.flatMap((d: unknown) => {
    if (typeof d !== 'object' || d === null) return [];
    const r = d as Record<string, unknown>;
    const chain = Array.isArray(r.chain) ? r.chain.flatMap((l: unknown) => {
      const x = typeof l === 'object' && l !== null ? l as Record<string, unknown> : {};
      return typeof x.path === 'string' && typeof x.cid === 'string' ? [{ path: x.path, cid: x.cid }] : [];
    }) : [];
    return typeof r.datastore === 'string' && typeof r.path === 'string'
      ? [{ datastore: r.datastore, path: r.path, capacityBytes: typeof r.capacityBytes === 'number' ? r.capacityBytes : null, chain }] : [];
  });
}
