/** Parsers for CLI option values: every bad value becomes a FerryError with a stable code. */
import { FerryError } from '../lib/errors.js';
import { parseDurationMs, parseSizeBytes } from '../lib/units.js';

export function parseIntegerOption(text: string, what: string, min: number, max: number): number {
  if (!/^\d+$/.test(text.trim())) throw new FerryError('INVALID_ARGUMENT', `${what}: "${text}" is not a whole number`);
  const n = Number(text);
  if (n < min || n > max) throw new FerryError('INVALID_ARGUMENT', `${what}: ${n} is out of range ${min}..${max}`);
  return n;
}

export const sizeOption = (what: string) => (text: string): number => parseSizeBytes(text, what);
export const durationOption = (what: string) => (text: string): number => parseDurationMs(text, what);
