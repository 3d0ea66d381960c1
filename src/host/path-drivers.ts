/**
 * Which virtual-path drivers a host offers (`ferry host --path-drivers kernel,portable`) and where
 * their tunnel endpoint listens (`--tunnel-listen host:port`). The portable driver needs nothing;
 * the kernel driver needs network privileges in the host's namespace and is refused at start, with
 * the reason, when the probe says it cannot work here — never discovered mid-migration.
 */
import { isIPv4 } from 'node:net';
import { FerryError } from '../lib/errors.js';
import type { PathDriver } from '../dataplane/path/driver.js';
import type { PathDriverKind } from '../dataplane/path/spec.js';
import { createPortableDriver } from '../dataplane/path/portable-driver.js';
import { createKernelDriver, kernelDriverSupport } from '../dataplane/path/kernel-driver.js';

/** Without --path-drivers: the portable driver only (no privileges; what `npm start` uses). */
export const DEFAULT_PATH_DRIVERS: readonly PathDriverKind[] = ['portable'];

/** Addresses that mean "every interface": fine to listen on, useless to tell a peer. */
const WILDCARD_ADDRESSES: ReadonlySet<string> = new Set(['0.0.0.0', '::', '[::]']);

export interface PathDriverChoice {
  /** In order of preference; empty: the host takes part in no isolated operation (the center falls back, and says so). */
  readonly kinds?: readonly PathDriverKind[];
  /** The underlay address peers reach this host's tunnel endpoint at (default: the control API's listen address). */
  readonly tunnelHost?: string;
  /** The portable driver's port (default 0: any free one; the center learns it from heartbeats). */
  readonly tunnelPort?: number;
}

export async function openPathDrivers(choice: PathDriverChoice, listenHost: string): Promise<PathDriver[]> {
  const kinds = choice.kinds ?? DEFAULT_PATH_DRIVERS;
  if (new Set(kinds).size !== kinds.length) throw new FerryError('INVALID_ARGUMENT', `--path-drivers names a driver twice: ${kinds.join(',')}`);
  const host = choice.tunnelHost ?? listenHost;
  // Peers are told this address: a wildcard tells them nothing they can reach.
  if (kinds.length > 0 && WILDCARD_ADDRESSES.has(host)) {
    throw new FerryError('INVALID_ARGUMENT', `the path drivers' tunnel endpoint would be ${host}, which peers cannot dial: give --tunnel-listen <this host's underlay address>:0 (or --path-drivers none)`);
  }
  const drivers: PathDriver[] = [];
  try {
    for (const kind of kinds) drivers.push(await openDriver(kind, host, choice.tunnelPort ?? 0));
  } catch (err) {
    await Promise.allSettled(drivers.map((d) => d.close()));
    throw err;
  }
  return drivers;
}

async function openDriver(kind: PathDriverKind, host: string, port: number): Promise<PathDriver> {
  if (kind === 'portable') return createPortableDriver({ listen: { host, port } });
  // The VXLAN's local and remote ends are addresses (ip takes no names): say so now, not at the first migration.
  if (!isIPv4(host)) throw new FerryError('INVALID_ARGUMENT', `the kernel path driver needs an IPv4 underlay address, not "${host}": give --tunnel-listen <IPv4>:0`);
  const support = await kernelDriverSupport();
  if (!support.supported) throw new FerryError('PATH_SETUP_FAILED', `the kernel path driver cannot work on this host: ${support.reason}; start the host without it (--path-drivers portable)`);
  return createKernelDriver({ underlayAddress: host });
}
