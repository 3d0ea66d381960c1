/** Compiles WebAssembly text to a binary with the `wabt` package (tests build their own tiny guests). */
import wabtInit from 'wabt';

let wabtPromise: ReturnType<typeof wabtInit> | undefined;

export async function wat2wasm(source: string): Promise<Uint8Array> {
  wabtPromise ??= wabtInit();
  const wabt = await wabtPromise;
  const parsed = wabt.parseWat('guest.wat', source, {
    threads: true, bulk_memory: true, simd: true, mutable_globals: true, sign_extension: true, sat_float_to_int: true, multi_value: true,
  });
  try {
    parsed.resolveNames();
    parsed.validate();
    return new Uint8Array(parsed.toBinary({}).buffer);
  } finally {
    parsed.destroy();
  }
}

/** The smallest ABI-conformant guest around a body: tests splice their own functions in. */
export function guestWat(opts: { memory?: string; extra?: string; step?: string; boot?: string; imports?: string } = {}): string {
  return `(module
  ${opts.imports ?? ''}
  (memory (export "memory") ${opts.memory ?? '1'})
  (global (export "ferry_abi_version") i32 (i32.const 1))
  (func (export "ferry_boot") (param $vcpus i32) ${opts.boot ?? ''})
  (func (export "ferry_vcpu_step") (param $vcpu i32) (param $budget i32) (result i32) ${opts.step ?? '(i32.const 2)'})
  ${opts.extra ?? ''}
)`;
}
