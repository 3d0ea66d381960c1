import { FerryError } from './errors.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

const SIZE_UNITS: Readonly<Record<string, number>> = {
  '': 1, b: 1,
  k: KiB, kb: 1000, kib: KiB,
  m: MiB, mb: 1000 * 1000, mib: MiB,
  g: GiB, gb: 1000 * 1000 * 1000, gib: GiB,
};

/** Largest size string we accept: anything above is a typo, not a request (16 TiB). */
export const MAX_PARSED_SIZE_BYTES = 16 * 1024 * GiB;

/**
 * Parses a byte size such as `256MiB`, `4KiB`, `2M`, `4096`. Binary units (KiB/MiB/GiB, and the
 * one-letter K/M/G) are powers of 1024; KB/MB/GB are powers of 1000. Throws INVALID_SIZE.
 */
export function parseSizeBytes(text: string, what = 'size'): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = match?.[2]?.toLowerCase();
  const scale = unit === undefined ? undefined : SIZE_UNITS[unit];
  if (!match || scale === undefined) {
    throw new FerryError('INVALID_SIZE', `${what}: "${text}" is not a size; use e.g. 4096, 64KiB, 256MiB, 1GiB`, { text });
  }
  const bytes = Number(match[1]) * scale;
  if (!Number.isSafeInteger(bytes) || bytes > MAX_PARSED_SIZE_BYTES) {
    throw new FerryError('INVALID_SIZE', `${what}: "${text}" is not a whole number of bytes up to 16 TiB`, { text });
  }
  return bytes;
}

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses a duration such as `500ms`, `5s`, `2m`, `1h` (a bare number is seconds). Throws INVALID_DURATION. */
export function parseDurationMs(text: string, what = 'duration'): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!match) {
    throw new FerryError('INVALID_DURATION', `${what}: "${text}" is not a duration; use e.g. 500ms, 5s, 2m`, { text });
  }
  const ms = Number(match[1]) * (DURATION_UNITS[match[2] ?? 's'] ?? 1000);
  if (!Number.isFinite(ms)) throw new FerryError('INVALID_DURATION', `${what}: "${text}" is out of range`, { text });
  return ms;
}

/** Human-readable size, binary units: 268435456 -> "256 MiB". */
export function formatBytes(bytes: number): string {
  const units: readonly [string, number][] = [['GiB', GiB], ['MiB', MiB], ['KiB', KiB]];
  for (const [name, scale] of units) {
    if (Math.abs(bytes) >= scale) {
      const v = bytes / scale;
      return `${Number.isInteger(v) ? v.toString() : v.toFixed(1)} ${name}`;
    }
  }
  return `${bytes} B`;
}
