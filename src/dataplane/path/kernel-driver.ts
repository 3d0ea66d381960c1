/**
 * The `kernel` path driver (docs/design/data-plane-kernel.md): for each operation a VXLAN interface
 * to the peer host, this end's virtual address on it, and a policy rule with its own routing table so
 * that a socket bound to the virtual address reaches the peer's virtual address and nothing else —
 * not the peer's underlay address, not the internet. Streams inside are TLS 1.3 keyed per operation
 * (psk.ts): VXLAN itself is neither encrypted nor authenticated (this kernel has no WireGuard and no
 * kernel ESP with AES-GCM, FINDINGS.md), so the TLS layer carries the secrecy and the authentication.
 *
 * Needs CAP_NET_ADMIN in the host's network namespace (kernelDriverSupport() says whether it has it).
 * Every `ip` call goes through ip-command.ts; the peer's underlay address is redacted from every error
 * and never logged: messages name the path by its short id and its virtual addresses only.
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { connect as netConnect, isIPv4 } from 'node:net';
import { connect as tlsConnect, createServer as tlsCreateServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { FerryError, errnoCode, errorMessage } from '../../lib/errors.js';
import { silentLogger, type Logger } from '../../lib/logger.js';
import { listenError, tuneSocket } from '../tcp.js';
import type { ByteStream } from '../transport.js';
import type { PathCarrier, PathDriver } from './driver.js';
import { ipJson, runIp, runIpDelete, type IpOptions } from './ip-command.js';
import { otherSide, pathKey, pskClientOptions, pskServerOptions } from './psk.js';
import { shortPathId, MAX_VNI, type PathSpec } from './spec.js';

/** The IANA VXLAN port: the peer sends this path's frames to our underlay address at it. */
export const VXLAN_PORT = 4789;
/** Every path interface's name starts so: a sweep finds ours and only ours. */
export const PATH_LINK_PREFIX = 'fyp';
/** Hex digits of the path id after the prefix: 3 + 12 = 15, Linux's longest interface name (IFNAMSIZ - 1). */
export const PATH_LINK_ID_HEX = 12;
/** VXLAN over IPv4 adds the outer IPv4 (20), UDP (8) and VXLAN (8) headers and the inner Ethernet header (14). */
export const VXLAN_OVERHEAD_BYTES = 50;
/** The underlay MTU assumed when the route to the peer does not say (Ethernet). */
export const DEFAULT_UNDERLAY_MTU = 1500;
/**
 * Path routing tables are PATH_TABLE_BASE + VNI: 0x1000_0001 … 0x10ff_ffff, far from the tables
 * people number by hand (1–252, local 255, main 254, default 253) and unique among live paths
 * because the center gives each live path its own VNI.
 */
export const PATH_TABLE_BASE = 0x1000_0000;
/**
 * Priority of every path's policy rule: after `local` (0, so a host still reaches its own
 * addresses), before `main` (32766, whose default route would otherwise carry a virtual source
 * anywhere). One priority for all paths: rules of two paths never match the same packet, since
 * each matches only its own virtual source address.
 */
export const PATH_RULE_PRIORITY = 20_000;
/** A peer that connected but does not finish the TLS handshake is dropped after this long. */
export const PATH_HANDSHAKE_TIMEOUT_MS = 10_000;
/** Prefix of the throw-away interface kernelDriverSupport() creates (not PATH_LINK_PREFIX: a sweep must not race it). */
const PROBE_LINK_PREFIX = 'fyq';
const PROBE_LINK_HEX = 8;
/**
 * The probe's UDP port: not VXLAN_PORT, because a VXLAN device is unique by (VNI, port) in a namespace
 * and a path left by a crashed run (being removed right after the probe) may hold any VNI on VXLAN_PORT.
 */
const PROBE_PORT = VXLAN_PORT + 1;

/** The names of what a path owns on this host: derived from its spec alone, so a dead host's leftovers can be found. */
export interface KernelPathParts {
  readonly link: string;
  readonly table: number;
  readonly localAddress: string;
}

export function pathLinkName(pathId: string): string {
  return `${PATH_LINK_PREFIX}${pathId.slice(0, PATH_LINK_ID_HEX)}`;
}

export function pathTable(vni: number): number {
  return PATH_TABLE_BASE + vni;
}

export function kernelPathParts(spec: Pick<PathSpec, 'pathId' | 'vni' | 'localAddress'>): KernelPathParts {
  return { link: pathLinkName(spec.pathId), table: pathTable(spec.vni), localAddress: spec.localAddress };
}

/**
 * The Ethernet address of one end of a path: derived from the path id and the side, so each end
 * knows the other's without ARP. Locally administered (bit 1 set), unicast (bit 0 clear).
 */
export function pathMac(pathId: string, side: PathSpec['side']): string {
  const b = createHash('sha256').update(`ferry-path-mac:${pathId}:${side}`).digest().subarray(0, 6);
  b[0] = ((b[0] ?? 0) & 0xfc) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export interface KernelDriverOptions {
  /** This host's underlay (physical) IPv4 address: the local end of every VXLAN and the endpoint peers are told. */
  readonly underlayAddress: string;
  readonly log?: Logger;
}

/** The MTU of the underlay towards the peer: that of the device the route to it leaves by. */
async function underlayMtu(underlay: string, remote: string, ip: IpOptions): Promise<number> {
  const routes = await ipJson(['route', 'get', remote, 'from', underlay], ip);
  const route = Array.isArray(routes) ? (routes[0] as { dev?: unknown } | undefined) : undefined;
  if (typeof route?.dev !== 'string') return DEFAULT_UNDERLAY_MTU;
  const links = await ipJson(['link', 'show', 'dev', route.dev], ip);
  const link = Array.isArray(links) ? (links[0] as { mtu?: unknown } | undefined) : undefined;
  return typeof link?.mtu === 'number' ? link.mtu : DEFAULT_UNDERLAY_MTU;
}

/** One setup step and how to undo it if a later step fails (null: deleting the link undoes it). */
interface SetupStep {
  readonly args: readonly string[];
  readonly undo: readonly string[] | null;
}

/**
 * What open() runs, in order. ARP: each end's MAC is derived from the path (pathMac), the peer's is
 * a permanent neighbour entry and ARP is off on the link — with /32 addresses and no subnet, ARP
 * needs the peer to answer for an address "off-link" (its arp_ignore/rp_filter settings decide), and
 * a static entry needs no round trip before the first packet. `arp off` without the entry does not
 * work: frames are then addressed to the link's own MAC and the peer drops them. `nolearning`
 * plus `remote` sends every frame to the one peer: the VXLAN's default forwarding entry.
 */
function setupSteps(spec: PathSpec, underlay: string, mtu: number): SetupStep[] {
  const parts = kernelPathParts(spec);
  const { link } = parts;
  const t = String(parts.table);
  return [
    {
      args: ['link', 'add', link, 'address', pathMac(spec.pathId, spec.side), 'mtu', String(mtu), 'type', 'vxlan', 'id', String(spec.vni),
        'local', underlay, 'remote', spec.peerEndpoint.host, 'dstport', String(VXLAN_PORT), 'nolearning'],
      undo: ['link', 'del', link],
    },
    { args: ['link', 'set', link, 'arp', 'off'], undo: null },
    { args: ['addr', 'add', `${spec.localAddress}/32`, 'dev', link], undo: null },
    { args: ['neigh', 'replace', spec.peerAddress, 'lladdr', pathMac(spec.pathId, otherSide(spec.side)), 'dev', link, 'nud', 'permanent'], undo: null },
    { args: ['link', 'set', link, 'up'], undo: null },
    { args: ['route', 'add', `${spec.peerAddress}/32`, 'dev', link, 'src', spec.localAddress, 'table', t], undo: null },
    // Anything else from the virtual address is refused at once (EHOSTUNREACH), not sent by `main`'s default route.
    { args: ['route', 'add', 'unreachable', 'default', 'table', t], undo: ['route', 'flush', 'table', t] },
    { args: ['rule', 'add', 'from', `${spec.localAddress}/32`, 'lookup', t, 'priority', String(PATH_RULE_PRIORITY)], undo: ruleDelete(parts) },
  ];
}

function ruleDelete(parts: Pick<KernelPathParts, 'localAddress' | 'table'>): string[] {
  return ['rule', 'del', 'from', `${parts.localAddress}/32`, 'lookup', String(parts.table), 'priority', String(PATH_RULE_PRIORITY)];
}

/**
 * Removes a path's rule, table and link (the link takes its address, neighbour and routes with it),
 * each whether or not the others are there; throws the first real failure after trying all.
 */
export async function removeKernelPathParts(parts: KernelPathParts, ip: IpOptions = {}): Promise<void> {
  const failures: unknown[] = [];
  const attempt = async (args: readonly string[]): Promise<void> => {
    try { await runIpDelete(args, ip); } catch (err) { failures.push(err); }
  };
  await attempt(ruleDelete(parts));
  await attempt(['route', 'flush', 'table', String(parts.table)]);
  if (parts.link !== '') await attempt(['link', 'del', parts.link]);
  if (failures.length > 0) throw failures[0];
}

async function runSteps(spec: PathSpec, steps: readonly SetupStep[], ip: IpOptions): Promise<void> {
  const undos: (readonly string[])[] = [];
  try {
    for (const step of steps) {
      await runIp(step.args, ip);
      if (step.undo !== null) undos.unshift(step.undo);
    }
  } catch (err) {
    // Undo only what this call made: a link that already existed (EEXIST) belongs to someone else.
    for (const undo of undos) await runIpDelete(undo, ip).catch(() => undefined);
    const why = errorMessage(err);
    throw new FerryError('PATH_SETUP_FAILED', `cannot set up kernel path ${shortPathId(spec.pathId)} (${spec.localAddress} → ${spec.peerAddress}): ${why}`, { pathId: spec.pathId }, { cause: err });
  }
}

class KernelCarrier implements PathCarrier {
  private readonly servers = new Set<TlsServer>();
  private readonly sockets = new Set<TLSSocket>();
  private closing: Promise<void> | null = null;
  private readonly key: Buffer;

  constructor(private readonly spec: PathSpec, private readonly log: Logger, private readonly ip: IpOptions) {
    this.key = pathKey(spec);
  }

  dial(port: number, options: { timeoutMs: number; signal?: AbortSignal }): Promise<ByteStream> {
    return new Promise((resolve, reject) => {
      const where = `${this.spec.peerAddress}:${port}`;
      if (this.closing !== null) { reject(this.refused(`it is closed`)); return; }
      if (options.signal?.aborted === true) { reject(this.cancelled(where, options.signal)); return; }
      let connected = false;
      // Our own TCP socket, bound to the virtual address: the policy rule then routes it into the path (and only there).
      const tcp = netConnect({ host: this.spec.peerAddress, port, localAddress: this.spec.localAddress, noDelay: true });
      const socket = tlsConnect({ socket: tcp, ...pskClientOptions(this.spec) });
      const fail = (err: FerryError): void => { cleanup(); socket.destroy(); tcp.destroy(); reject(err); };
      const timer = setTimeout(() => {
        fail(new FerryError('CONNECT_TIMEOUT', `kernel path ${shortPathId(this.spec.pathId)}: connecting to ${where} timed out after ${options.timeoutMs} ms`));
      }, options.timeoutMs);
      const onAbort = (): void => { fail(this.cancelled(where, options.signal)); };
      const onError = (err: Error): void => { fail(this.dialError(where, err, connected)); };
      const cleanup = (): void => {
        clearTimeout(timer); options.signal?.removeEventListener('abort', onAbort); socket.off('error', onError); tcp.off('error', onError);
        // Later errors of the TCP socket end the TLS stream (its owner sees them there), never go unhandled.
        tcp.on('error', (err) => { socket.destroy(err); });
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('error', onError);
      tcp.once('error', onError);
      tcp.once('connect', () => { connected = true; });
      socket.once('secureConnect', () => { cleanup(); tuneSocket(socket); this.track(socket); resolve(socket); });
    });
  }

  async listen(port: number, onStream: (stream: ByteStream) => void): Promise<{ close(): Promise<void> }> {
    if (this.closing !== null) throw this.refused('it is closed');
    const peerSide = otherSide(this.spec.side);
    const server = tlsCreateServer({
      ...pskServerOptions((pathId, side) => (pathId === this.spec.pathId && side === peerSide ? this.key : null)),
      handshakeTimeout: PATH_HANDSHAKE_TIMEOUT_MS,
    }, (socket) => { tuneSocket(socket); this.track(socket); onStream(socket); });
    server.on('tlsClientError', (err, socket) => {
      // A peer without this path's key (or a scanner): dropped. No address in the line: it may be anyone's.
      socket.destroy();
      this.log.debug('kernel path: a stream failed the TLS handshake', { path: shortPathId(this.spec.pathId), reason: errnoCode(err) ?? errorMessage(err) });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => { reject(listenError(err, `${this.spec.localAddress}:${port}`)); });
      server.listen(port, this.spec.localAddress, () => { server.removeAllListeners('error'); resolve(); });
    });
    this.servers.add(server);
    return { close: () => { this.stopServer(server); return Promise.resolve(); } };
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const server of this.servers) this.stopServer(server);
      for (const socket of this.sockets) socket.destroy();
      this.sockets.clear();
      await removeKernelPathParts(kernelPathParts(this.spec), this.ip);
      this.log.info('kernel path closed', { path: shortPathId(this.spec.pathId) });
    })();
    return this.closing;
  }

  /** Stops accepting now; the streams it accepted are their owners' (or close()'s) to end. */
  private stopServer(server: TlsServer): void {
    this.servers.delete(server);
    server.close();
  }

  private track(socket: TLSSocket): void {
    this.sockets.add(socket);
    socket.once('close', () => { this.sockets.delete(socket); });
  }

  private dialError(where: string, err: Error, connected: boolean): FerryError {
    const code = errnoCode(err);
    // After the TCP connect, a failure is the handshake: the peer does not hold this path's key (or has closed the path).
    if (connected || code === undefined || code.startsWith('ERR_SSL') || code === 'ECONNRESET') {
      return this.refused(`the peer at ${where} did not accept the path's key (${code ?? errorMessage(err)})`);
    }
    // errno codes only: Node's messages of a failed connect repeat addresses, and a code says enough.
    return new FerryError('HOST_UNREACHABLE', `kernel path ${shortPathId(this.spec.pathId)}: cannot connect to ${where} (${code})`, { pathId: this.spec.pathId, errno: code });
  }

  private cancelled(where: string, signal: AbortSignal | undefined): FerryError {
    const reason: unknown = signal?.reason;
    return reason instanceof FerryError ? reason : new FerryError('CANCELLED', `kernel path ${shortPathId(this.spec.pathId)}: connecting to ${where} was cancelled`);
  }

  private refused(why: string): FerryError {
    return new FerryError('PATH_REFUSED', `kernel path ${shortPathId(this.spec.pathId)} refused: ${why}`, { pathId: this.spec.pathId });
  }
}

/** Interfaces in this namespace whose names say they are a path's (PATH_LINK_PREFIX). */
export async function listPathLinks(): Promise<string[]> {
  const links = await ipJson(['link', 'show', 'type', 'vxlan']);
  if (!Array.isArray(links)) return [];
  return links.map((l: unknown) => (typeof l === 'object' && l !== null && 'ifname' in l && typeof l.ifname === 'string' ? l.ifname : ''))
    .filter((name) => name.startsWith(PATH_LINK_PREFIX));
}

export interface SweepResult {
  /** Prefix-named interfaces removed. */
  readonly removed: readonly string[];
  /** Prefix-named interfaces left, because no spec names them and `all` was not asked. */
  readonly kept: readonly string[];
}

/**
 * The second sweep at host start, after removeLeftovers: lists the prefix-named VXLAN interfaces and
 * removes those a spec record names (with their rule and table). Others are kept and reported — a
 * prefix alone does not prove an interface is this host's (another Ferry host may share the
 * namespace) — unless `all` is asked, which removes every prefix-named interface (an operator's clean-up).
 */
export async function sweepPathLinks(specs: readonly PathSpec[], options: { all?: boolean } = {}): Promise<SweepResult> {
  const known = new Map(specs.filter((s) => s.driver === 'kernel').map((s) => [pathLinkName(s.pathId), s]));
  const removed: string[] = [];
  const kept: string[] = [];
  for (const link of await listPathLinks()) {
    const spec = known.get(link);
    if (spec !== undefined) await removeKernelPathParts(kernelPathParts(spec), { redact: [spec.peerEndpoint.host] });
    else if (options.all === true) await runIpDelete(['link', 'del', link]);
    else { kept.push(link); continue; }
    removed.push(link);
  }
  if (options.all === true) await removeAllPathRules();
  return { removed, kept };
}

/** Every rule at PATH_RULE_PRIORITY that looks up a path table, and those tables (the `all` sweep: links are gone already). */
async function removeAllPathRules(): Promise<void> {
  const rules = await ipJson(['rule', 'show']);
  if (!Array.isArray(rules)) return;
  for (const rule of rules as { priority?: unknown; src?: unknown; table?: unknown }[]) {
    const table = Number(rule.table);
    if (rule.priority !== PATH_RULE_PRIORITY || typeof rule.src !== 'string' || !isIPv4(rule.src)) continue;
    if (!(table > PATH_TABLE_BASE && table <= PATH_TABLE_BASE + MAX_VNI)) continue;
    await removeKernelPathParts({ link: '', table, localAddress: rule.src });
  }
}

export interface KernelSupport {
  readonly supported: boolean;
  readonly reason: string;
}

/** Whether this process can use the kernel driver: `ip` is there and it may create (and delete) a VXLAN link. */
export async function kernelDriverSupport(): Promise<KernelSupport> {
  const probe = `${PROBE_LINK_PREFIX}${randomBytes(PROBE_LINK_HEX / 2).toString('hex')}`;
  try {
    // Down and without a remote, the link opens no socket and carries nothing; it exists for a few ms.
    // A random VNI: two hosts of one namespace probing at once do not collide either.
    await runIp(['link', 'add', probe, 'type', 'vxlan', 'id', String(randomInt(1, MAX_VNI + 1)), 'dstport', String(PROBE_PORT), 'local', '127.0.0.1']);
  } catch (err) {
    return { supported: false, reason: `cannot create a VXLAN interface (needs iproute2, CAP_NET_ADMIN and the vxlan module): ${errorMessage(err)}` };
  }
  await runIpDelete(['link', 'del', probe]).catch(() => undefined);
  return { supported: true, reason: 'ip can create VXLAN interfaces here' };
}

function checkSpec(spec: PathSpec): void {
  if (spec.driver !== 'kernel') throw new FerryError('PATH_SETUP_FAILED', `path ${shortPathId(spec.pathId)} is for the ${spec.driver} driver, not the kernel one`);
  // The VXLAN's remote must be an address: a name would need a resolver, and `ip` takes none.
  if (!isIPv4(spec.peerEndpoint.host)) throw new FerryError('PATH_SETUP_FAILED', `kernel path ${shortPathId(spec.pathId)}: the peer's tunnel endpoint must be an IPv4 address`);
}

export function createKernelDriver(options: KernelDriverOptions): PathDriver {
  const { underlayAddress } = options;
  if (!isIPv4(underlayAddress)) throw new FerryError('INVALID_ARGUMENT', `the kernel driver's underlay address must be an IPv4 address, not "${underlayAddress.slice(0, 40)}"`);
  const driverLog = options.log ?? silentLogger();
  return {
    kind: 'kernel',
    endpoint: { host: underlayAddress, port: VXLAN_PORT },
    async open(spec, log) {
      checkSpec(spec);
      const ip: IpOptions = { redact: [spec.peerEndpoint.host] };
      const mtu = await underlayMtu(underlayAddress, spec.peerEndpoint.host, ip)
        .catch((err: unknown) => { throw new FerryError('PATH_SETUP_FAILED', `kernel path ${shortPathId(spec.pathId)}: no route to the peer's tunnel endpoint: ${errorMessage(err)}`); });
      await runSteps(spec, setupSteps(spec, underlayAddress, mtu - VXLAN_OVERHEAD_BYTES), ip);
      log.info('kernel path open', { path: shortPathId(spec.pathId), localAddress: spec.localAddress, peerAddress: spec.peerAddress, mtu: mtu - VXLAN_OVERHEAD_BYTES });
      return new KernelCarrier(spec, log, ip);
    },
    async removeLeftovers(specs, log) {
      const failures: unknown[] = [];
      for (const spec of specs.filter((s) => s.driver === 'kernel')) {
        try {
          await removeKernelPathParts(kernelPathParts(spec), { redact: [spec.peerEndpoint.host] });
        } catch (err) {
          failures.push(err);
          log.warn('kernel path: could not remove what a previous run left', { path: shortPathId(spec.pathId), error: errorMessage(err) });
        }
      }
      if (failures.length > 0) throw failures[0];
    },
    close() {
      // The kernel driver has no listener of its own: each path's listeners are its carrier's.
      driverLog.debug('kernel driver closed');
      return Promise.resolve();
    },
  };
}
