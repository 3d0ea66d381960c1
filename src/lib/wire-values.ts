/**
 * JSON-safe encoding of WebAssembly values, shared by the snapshot metadata (src/vmm/snapshot.ts)
 * and the migration protocol's STATE payload (src/migration/protocol/messages.ts).
 *
 * JSON numbers cannot carry every wasm value exactly, so on the wire:
 *   i32        a JSON number (an integer in the i32 range)
 *   i64, u64   a decimal string (a bigint in memory)
 *   f32, f64   a JSON number, or "NaN", "Infinity", "-Infinity", "-0" (NaN payload bits are not kept)
 *
 * Nothing here knows about error codes: the schemas report zod issues and the encoder asks its
 * caller to make the error, so each user keeps its own codes and messages.
 */
import { z } from 'zod';

/** A wasm global's value as Ferry holds it in memory. */
export type GlobalValue =
  | { readonly type: 'i32' | 'f32' | 'f64'; readonly value: number }
  | { readonly type: 'i64'; readonly value: bigint };

export const I32_MIN = -(2 ** 31);
export const I32_MAX = 2 ** 31 - 1;
export const I64_MIN = -(2n ** 63n);
export const I64_MAX = 2n ** 63n - 1n;
export const U64_MAX = 2n ** 64n - 1n;

// ---------------------------------------------------------------------------------------------
// Floats

/** A float on the wire: JSON has no NaN, infinities or negative zero, so those travel as strings. */
export type FloatWire = number | 'NaN' | 'Infinity' | '-Infinity' | '-0';

export function floatToWire(v: number): FloatWire {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Number.POSITIVE_INFINITY) return 'Infinity';
  if (v === Number.NEGATIVE_INFINITY) return '-Infinity';
  if (Object.is(v, -0)) return '-0';
  return v;
}

export function floatFromWire(v: FloatWire): number {
  switch (v) {
    case 'NaN': return Number.NaN;
    case 'Infinity': return Number.POSITIVE_INFINITY;
    case '-Infinity': return Number.NEGATIVE_INFINITY;
    case '-0': return -0;
    default: return v;
  }
}

/** A wire float (finite number or one of the special strings) -> number. */
export const floatWireSchema = z.union([z.number().finite(), z.enum(['NaN', 'Infinity', '-Infinity', '-0'])])
  .transform(floatFromWire);

// ---------------------------------------------------------------------------------------------
// 64-bit integers as decimal strings

export interface DecimalStringOptions {
  /** Issue message for a string that is not a decimal integer of the accepted form. */
  readonly formatMessage: string;
}

export interface I64StringOptions extends DecimalStringOptions {
  /** Also accept "-0" (read as 0). Snapshot files always have; the migration protocol does not. */
  readonly allowNegativeZero?: boolean;
}

/** Decimal string matching `pattern` -> bigint in [min, max]; out of range is the issue "is outside the <what> range". */
function decimalBigint(pattern: RegExp, min: bigint, max: bigint, what: string, formatMessage: string) {
  return z.string().regex(pattern, formatMessage).transform((s, ctx) => {
    const v = BigInt(s);
    if (v < min || v > max) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: `is outside the ${what} range` });
      return z.NEVER;
    }
    return v;
  });
}

/** Signed decimal string (no leading zeros or '+') -> bigint in the i64 range. */
export function i64StringSchema(options: I64StringOptions) {
  const pattern = options.allowNegativeZero === true ? /^-?(?:0|[1-9][0-9]{0,18})$/ : /^(?:0|-?[1-9][0-9]{0,18})$/;
  return decimalBigint(pattern, I64_MIN, I64_MAX, 'i64', options.formatMessage);
}

/** Unsigned decimal string (no leading zeros or sign) -> bigint in the u64 range. */
export function u64StringSchema(options: DecimalStringOptions) {
  return decimalBigint(/^(?:0|[1-9][0-9]{0,19})$/, 0n, U64_MAX, 'u64', options.formatMessage);
}

// ---------------------------------------------------------------------------------------------
// Global values

/**
 * Strict schema of a wire global value ({ type, value }, no other keys) -> GlobalValue. An f32
 * must be representable as an f32; `i64` says how its decimal strings are checked.
 */
export function globalValueSchema(i64: I64StringOptions) {
  return z.discriminatedUnion('type', [
    z.object({ type: z.literal('i32'), value: z.number().int().min(I32_MIN).max(I32_MAX) }).strict(),
    z.object({ type: z.literal('i64'), value: i64StringSchema(i64) }).strict(),
    z.object({
      type: z.literal('f32'),
      value: floatWireSchema.refine((v) => Number.isNaN(v) || Math.fround(v) === v, 'is not representable as an f32'),
    }).strict(),
    z.object({ type: z.literal('f64'), value: floatWireSchema }).strict(),
  ]);
}

export type GlobalValueWire =
  | { readonly type: 'i32'; readonly value: number }
  | { readonly type: 'i64'; readonly value: string }
  | { readonly type: 'f32' | 'f64'; readonly value: FloatWire };

/**
 * GlobalValue -> its JSON wire form. An i64 that is not a bigint, an f32/f64 that is not a number
 * and an unknown type are refused: `fail(problem)` makes the error that is thrown. An i32 value is
 * copied as it is (the global-value schema checks it).
 */
export function globalValueToWire(g: GlobalValue, fail: (problem: string) => Error): GlobalValueWire {
  switch (g.type) {
    case 'i64':
      if (typeof g.value !== 'bigint') throw fail('an i64 value must be a bigint');
      return { type: 'i64', value: g.value.toString() };
    case 'i32':
      return { type: 'i32', value: g.value };
    case 'f32':
    case 'f64':
      if (typeof g.value !== 'number') throw fail(`an ${g.type} value must be a number`);
      return { type: g.type, value: floatToWire(g.value) };
    default:
      throw fail(`unknown global type ${String((g as { type: unknown }).type)}`);
  }
}
