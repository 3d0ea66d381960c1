/**
 * What a host is told to set up for one mobility operation's virtual path (ARCHITECTURE.md §1.4): its
 * own virtual address and the peer's, the ports the operation may use, the operation's secret and
 * when it all expires. The center allocates it (src/center/mobility) and pushes one to each of the
 * two hosts over their authenticated control API; the host's path registry (src/host/paths.ts) opens
 * it with a driver and gives the migration engine only the resulting Transport.
 *
 * `peer.endpoint` is the peer host's tunnel endpoint (its underlay address): only the driver reads
 * it. It is never shown in a path's view, logged, or put in a migration record — the operation's code
 * knows the peer by its virtual address alone.
 */
import { isIPv4 } from 'node:net';
import { z } from 'zod';

/** Kinds of path drivers: `portable` needs no privileges (the default), `kernel` makes per-operation interfaces. */
export const PATH_DRIVER_KINDS = ['portable', 'kernel'] as const;
export type PathDriverKind = (typeof PATH_DRIVER_KINDS)[number];

/** An operation's path id: the same on both hosts, and the TLS PSK identity's subject. */
export const PATH_ID_PATTERN = /^[0-9a-f]{32}$/;
/** Hex digits of a path id shown in logs and messages: enough to find it, the whole id stays in details. */
export const SHORT_PATH_ID_CHARS = 8;

export function shortPathId(pathId: string): string {
  return pathId.slice(0, SHORT_PATH_ID_CHARS);
}

/** Bytes of a path secret (256 bits, as base64url in the spec). */
export const PATH_SECRET_BYTES = 32;
/** Ports an operation may be granted on its virtual address, at most (a migration uses one; a copy a few). */
export const MAX_PATH_PORTS = 16;
/** The lowest port a path may grant (below are privileged and well-known services). */
export const MIN_PATH_PORT = 1024;
/** VXLAN network identifiers are 24 bits; 0 is not used. */
export const MAX_VNI = 0xff_ffff;
/** A path lives at most this long unless renewed: a center that vanished cannot leave one open for ever. */
export const MAX_PATH_TTL_MS = 24 * 60 * 60 * 1000;

const ipv4Schema = z.string().max(15).refine((s) => isIPv4(s), 'must be an IPv4 address');
const hostSchema = z.string().min(1).max(253).regex(/^[A-Za-z0-9.:-]+$/, 'must be an IP address or a host name');
const portSchema = z.number().int().min(1).max(65535);

export const pathEndpointSchema = z.object({ host: hostSchema, port: portSchema }).strict();
export type PathEndpoint = z.infer<typeof pathEndpointSchema>;

const pathSpecFields = z.object({
  pathId: z.string().regex(PATH_ID_PATTERN, 'must be 32 lowercase hex digits'),
  /** Which end of the operation this host is (the source dials, the target listens). */
  side: z.enum(['source', 'target']),
  driver: z.enum(PATH_DRIVER_KINDS),
  /** This host's virtual address for the operation. */
  localAddress: ipv4Schema,
  /** The peer's virtual address: the only address the operation may dial. */
  peerAddress: ipv4Schema,
  /** The peer host's tunnel endpoint for this driver (underlay); read by the driver only. */
  peerEndpoint: pathEndpointSchema,
  /** The ports granted on both virtual addresses: first .. first + count - 1. */
  firstPort: z.number().int().min(MIN_PATH_PORT).max(65535),
  portCount: z.number().int().min(1).max(MAX_PATH_PORTS),
  /** The operation's number on the wire (VXLAN VNI for the kernel driver); unique among live paths. */
  vni: z.number().int().min(1).max(MAX_VNI),
  /** 32 random bytes, base64url: the keys of both ends are derived from it (psk.ts). */
  secret: z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'must be 32 bytes as base64url'),
  /** Wall-clock time (ms since the epoch) after which the host removes the path by itself. */
  expiresAtMs: z.number().int().min(0),
}).strict();

export const pathSpecSchema = pathSpecFields
  .refine((s) => s.firstPort + s.portCount - 1 <= 65535, 'the port range runs past 65535')
  .refine((s) => s.localAddress !== s.peerAddress, 'the two ends of a path need different virtual addresses');
export type PathSpec = z.infer<typeof pathSpecSchema>;

/** What a host notes durably of a path it opens: the spec without its secret (enough to remove its parts). */
export const pathRecordSchema = pathSpecFields.omit({ secret: true });
export type PathRecord = z.infer<typeof pathRecordSchema>;

export function pathRecord(spec: PathSpec): PathRecord {
  return pathRecordSchema.parse(Object.fromEntries(Object.entries(spec).filter(([k]) => k !== 'secret')));
}

/** What a path shows of itself (host API, logs): no secret and no underlay address. */
export interface PathView {
  readonly pathId: string;
  readonly side: PathSpec['side'];
  readonly driver: PathDriverKind;
  readonly localAddress: string;
  readonly peerAddress: string;
  readonly firstPort: number;
  readonly portCount: number;
  readonly expiresAtMs: number;
  /** Streams open now, in either direction. */
  readonly openStreams: number;
}

export function pathView(spec: PathSpec, openStreams: number): PathView {
  return {
    pathId: spec.pathId, side: spec.side, driver: spec.driver, localAddress: spec.localAddress, peerAddress: spec.peerAddress,
    firstPort: spec.firstPort, portCount: spec.portCount, expiresAtMs: spec.expiresAtMs, openStreams,
  };
}

/** True when `port` is one the path grants. */
export function pathGrantsPort(spec: Pick<PathSpec, 'firstPort' | 'portCount'>, port: number): boolean {
  return Number.isInteger(port) && port >= spec.firstPort && port < spec.firstPort + spec.portCount;
}
