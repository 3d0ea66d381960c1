/** Paths of the guest images built from guests/src at install time (dist/guests/<name>.wasm). */
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';

export type GuestName = 'dirtier' | 'compute' | 'kvlog';

export function guestImagePath(name: GuestName): string {
  // This file runs as dist/test/helpers/guests.js.
  const path = fileURLToPath(new URL(`../../guests/${name}.wasm`, import.meta.url));
  if (!existsSync(path)) throw new Error(`guest image ${path} is missing: run npm run build`);
  return path;
}
