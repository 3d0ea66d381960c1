/**
 * Virtual-path specs for tests: the matching pair the center would push to the two hosts of one
 * operation (same path id, secret, ports and VNI; each side's own and peer virtual addresses; each
 * side told the other's tunnel endpoint), from a fresh random secret unless one is given.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { MAX_VNI, PATH_SECRET_BYTES, pathSpecSchema, type PathEndpoint, type PathSpec } from '../../src/dataplane/path/spec.js';

/** Virtual addresses from 100.64.0.0/10 (FINDINGS: the range tests use for virtual ones). */
export const SOURCE_VIRTUAL_ADDRESS = '100.64.0.1';
export const TARGET_VIRTUAL_ADDRESS = '100.64.0.2';
/** Paths in tests live this long unless a test says otherwise: far beyond any test's run. */
const TEST_PATH_TTL_MS = 60 * 60 * 1000;
const DEFAULT_FIRST_PORT = 7000;
const DEFAULT_PORT_COUNT = 4;

export interface PathSpecPairOptions {
  /** Where each host's driver listens (its tunnel endpoint): each side's spec names the other's. */
  readonly sourceEndpoint: PathEndpoint;
  readonly targetEndpoint: PathEndpoint;
  readonly driver?: PathSpec['driver'];
  readonly pathId?: string;
  readonly secret?: string;
  readonly firstPort?: number;
  readonly portCount?: number;
  readonly expiresAtMs?: number;
}

export interface PathSpecPair {
  readonly source: PathSpec;
  readonly target: PathSpec;
}

export function randomPathId(): string {
  return randomBytes(16).toString('hex');
}

export function randomPathSecret(): string {
  return randomBytes(PATH_SECRET_BYTES).toString('base64url');
}

export function pathSpecPair(options: PathSpecPairOptions): PathSpecPair {
  const common = {
    pathId: options.pathId ?? randomPathId(),
    driver: options.driver ?? 'portable',
    secret: options.secret ?? randomPathSecret(),
    firstPort: options.firstPort ?? DEFAULT_FIRST_PORT,
    portCount: options.portCount ?? DEFAULT_PORT_COUNT,
    vni: randomInt(1, MAX_VNI + 1),
    expiresAtMs: options.expiresAtMs ?? Date.now() + TEST_PATH_TTL_MS,
  };
  return {
    source: pathSpecSchema.parse({
      ...common, side: 'source', localAddress: SOURCE_VIRTUAL_ADDRESS, peerAddress: TARGET_VIRTUAL_ADDRESS, peerEndpoint: options.targetEndpoint,
    }),
    target: pathSpecSchema.parse({
      ...common, side: 'target', localAddress: TARGET_VIRTUAL_ADDRESS, peerAddress: SOURCE_VIRTUAL_ADDRESS, peerEndpoint: options.sourceEndpoint,
    }),
  };
}

/** The same spec with another secret (what a party that does not know the path's secret would present). */
export function withSecret(spec: PathSpec, secret: string): PathSpec {
  return { ...spec, secret };
}
