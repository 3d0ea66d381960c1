/** Paths of the guest images built from guests/src at install time (dist/guests/<name>.wasm). */
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { CreateVmRequest } from '../../src/api/host-v1.js';

export type GuestName = 'dirtier' | 'compute' | 'kvlog' | 'diskbench';

export function guestImagePath(name: GuestName): string {
  // This file runs as dist/test/helpers/guests.js.
  const path = fileURLToPath(new URL(`../../guests/${name}.wasm`, import.meta.url));
  if (!existsSync(path)) throw new Error(`guest image ${path} is missing: run npm run build`);
  return path;
}

const images = new Map<GuestName, string>();

/** A create request for one of the built guest images (base64 read once per guest). */
export async function vmRequest(name: string, guest: GuestName, rest: Omit<CreateVmRequest, 'name' | 'imageBase64'>): Promise<CreateVmRequest> {
  let image = images.get(guest);
  if (image === undefined) {
    image = (await readFile(guestImagePath(guest))).toString('base64');
    images.set(guest, image);
  }
  return { name, imageBase64: image, ...rest };
}
