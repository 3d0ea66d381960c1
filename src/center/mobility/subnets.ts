/**
 * IPv4 CIDR arithmetic for the sites' virtual subnets (ARCHITECTURE.md §1.4, issue 10): pure functions,
 * no I/O. Addresses are handled as unsigned 32-bit integers; the only text forms are the dotted quad
 * and `a.b.c.d/n`, both canonical (no leading zeros, no host bits set), so that one subnet has one
 * spelling and the store's uniqueness over the text means uniqueness of the subnet.
 *
 * Virtual subnets live inside 100.64.0.0/10 (RFC 6598 shared address space) only. A virtual address
 * must never be one the hosts' real networks route to: the kernel driver puts these addresses and
 * routes in the host's own namespace, and an RFC 1918 range is what datacenters' underlays use. The
 * shared space is meant for exactly this kind of address that is not routed on the Internet.
 */
import { FerryError } from '../../lib/errors.js';

export interface Cidr {
  /** The network address as an unsigned 32-bit integer (host bits zero). */
  readonly network: number;
  readonly prefixLength: number;
}

// Before VIRTUAL_SPACE: it is parsed at load time.
const IPV4_OCTETS = 4;
const OCTET_MAX = 255;
const IPV4_BITS = 32;
const DOTTED_QUAD = /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/;
const CIDR_TEXT = /^([0-9.]{7,15})\/([0-9]{1,2})$/;

/** Where every virtual subnet is: 100.64.0.0/10. */
export const VIRTUAL_SPACE: Cidr = { network: ipv4ToInt('100.64.0.0'), prefixLength: 10 };
/** Widest site subnet: a /16 (65,534 usable addresses) is more than one site's operations ever hold at once. */
export const MIN_SUBNET_PREFIX_LENGTH = 16;
/** Narrowest site subnet: a /29 (6 usable addresses: three same-site operations at once), a lab's smallest. */
export const MAX_SUBNET_PREFIX_LENGTH = 29;
/** The prefix length of the subnet a site gets when none was set. */
export const DEFAULT_SITE_PREFIX_LENGTH = 24;
/** How many default /24s fit in the virtual space (16,384). */
export const DEFAULT_SUBNET_COUNT = 2 ** (DEFAULT_SITE_PREFIX_LENGTH - VIRTUAL_SPACE.prefixLength);

function invalid(text: string, why: string): FerryError {
  return new FerryError('INVALID_ARGUMENT', `${JSON.stringify(text.slice(0, 64))} is not a usable virtual subnet: ${why}`, { subnet: text.slice(0, 64) });
}

/** A canonical dotted quad as an unsigned integer; throws INVALID_ARGUMENT otherwise. */
export function ipv4ToInt(text: string): number {
  const m = DOTTED_QUAD.exec(text);
  if (m === null) throw new FerryError('INVALID_ARGUMENT', `${JSON.stringify(text.slice(0, 64))} is not an IPv4 address in dotted-quad form (a.b.c.d, no leading zeros)`);
  let value = 0;
  for (let i = 1; i <= IPV4_OCTETS; i++) {
    const octet = Number(m[i]);
    if (octet > OCTET_MAX) throw new FerryError('INVALID_ARGUMENT', `${JSON.stringify(text)} has an octet above ${OCTET_MAX}`);
    value = value * (OCTET_MAX + 1) + octet;
  }
  return value;
}

export function intToIpv4(value: number): string {
  const octets: number[] = [];
  for (let i = IPV4_OCTETS - 1; i >= 0; i--) octets.push(Math.floor(value / (OCTET_MAX + 1) ** i) % (OCTET_MAX + 1));
  return octets.join('.');
}

/** Addresses in a subnet, network and broadcast included. */
export function cidrSize(c: Cidr): number {
  return 2 ** (IPV4_BITS - c.prefixLength);
}

export function formatCidr(c: Cidr): string {
  return `${intToIpv4(c.network)}/${c.prefixLength}`;
}

/** Any well-formed IPv4 CIDR, host bits zero (`10.0.0.1/8` is refused: it names a host, not a subnet). */
export function parseCidr(text: string): Cidr {
  const m = CIDR_TEXT.exec(text);
  if (m === null || m[1] === undefined || m[2] === undefined) throw invalid(text, 'expected a.b.c.d/n');
  const prefixLength = Number(m[2]);
  if (prefixLength > IPV4_BITS || String(prefixLength) !== m[2]) throw invalid(text, `the prefix length must be 0-${IPV4_BITS}, without leading zeros`);
  const network = ipv4ToInt(m[1]);
  if (network % cidrSize({ network, prefixLength }) !== 0) throw invalid(text, `host bits are set (the subnet is ${formatCidr({ network: network - (network % cidrSize({ network, prefixLength })), prefixLength })})`);
  return { network, prefixLength };
}

/** A subnet a site may be given: /16../29 inside 100.64.0.0/10 (see the top of this file for why only there). */
export function parseSiteSubnet(text: string): Cidr {
  const c = parseCidr(text);
  if (c.prefixLength < MIN_SUBNET_PREFIX_LENGTH || c.prefixLength > MAX_SUBNET_PREFIX_LENGTH) {
    throw invalid(text, `a site's subnet is a /${MIN_SUBNET_PREFIX_LENGTH} to a /${MAX_SUBNET_PREFIX_LENGTH}`);
  }
  if (!cidrContains(VIRTUAL_SPACE, c)) throw invalid(text, `virtual subnets are inside ${formatCidr(VIRTUAL_SPACE)} (RFC 6598), never an underlay's range`);
  return c;
}

/** Whether `outer` holds all of `inner` (a subnet, or an address as a /32). */
export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return inner.prefixLength >= outer.prefixLength && inner.network >= outer.network && inner.network < outer.network + cidrSize(outer);
}

export function addressInCidr(c: Cidr, address: string): boolean {
  return cidrContains(c, { network: ipv4ToInt(address), prefixLength: IPV4_BITS });
}

/** Two CIDR blocks overlap exactly when one contains the other. */
export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  return cidrContains(a, b) || cidrContains(b, a);
}

/**
 * Usable addresses: all but the network and broadcast addresses (kept free so the kernel driver can
 * give a per-operation interface any usable address without it meaning "the whole subnet"). No gateway
 * is reserved: a path is point to point, nothing routes through a .1.
 */
export function usableAddressCount(c: Cidr): number {
  return cidrSize(c) - 2;
}

/** The nth usable address (0-based), or null past the last. */
export function nthUsableAddress(c: Cidr, n: number): string | null {
  if (!Number.isInteger(n) || n < 0 || n >= usableAddressCount(c)) return null;
  return intToIpv4(c.network + 1 + n);
}

/** The index nthUsableAddress would give for `address`, or null if it is not a usable address of `c`. */
export function usableIndexOf(c: Cidr, address: string): number | null {
  const n = ipv4ToInt(address) - c.network - 1;
  return n >= 0 && n < usableAddressCount(c) ? n : null;
}

/** The ith default /24 inside the virtual space (0: 100.64.0.0/24), or null past the last. */
export function defaultSiteSubnet(i: number): Cidr | null {
  if (!Number.isInteger(i) || i < 0 || i >= DEFAULT_SUBNET_COUNT) return null;
  return { network: VIRTUAL_SPACE.network + i * 2 ** (IPV4_BITS - DEFAULT_SITE_PREFIX_LENGTH), prefixLength: DEFAULT_SITE_PREFIX_LENGTH };
}

/** The lowest default /24 that overlaps none of `taken`, or null when every one does. */
export function lowestFreeDefaultSubnet(taken: readonly Cidr[]): Cidr | null {
  const used = new Set<number>();
  const defaultSize = 2 ** (IPV4_BITS - DEFAULT_SITE_PREFIX_LENGTH);
  for (const t of taken) {
    if (!cidrsOverlap(VIRTUAL_SPACE, t)) continue;
    // The default /24s a taken block touches: from the one holding its first address to the one holding its last.
    const first = Math.floor((Math.max(t.network, VIRTUAL_SPACE.network) - VIRTUAL_SPACE.network) / defaultSize);
    const last = Math.floor((Math.min(t.network + cidrSize(t), VIRTUAL_SPACE.network + cidrSize(VIRTUAL_SPACE)) - 1 - VIRTUAL_SPACE.network) / defaultSize);
    for (let i = first; i <= last; i++) used.add(i);
  }
  for (let i = 0; i < DEFAULT_SUBNET_COUNT; i++) if (!used.has(i)) return defaultSiteSubnet(i);
  return null;
}
