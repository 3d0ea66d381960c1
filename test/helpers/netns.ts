/**
 * A throw-away network topology for tests that need real namespaces (root only): N host namespaces,
 * each joined by a veth pair to one "wan" namespace that routes between them, like hosts of different
 * sites behind a router. Physical addresses come from 192.0.2.0/24 (FINDINGS.md): host i is
 * 192.0.2.(4i+1)/30, its wan side 192.0.2.(4i+2)/30, and the wan namespace also holds the "center"
 * address 192.0.2.254 on its loopback, so a center running there is reachable from every host.
 *
 * Names are unique per run (a random tag), so tests may run side by side; destroy() kills the
 * processes it spawned and deletes every namespace it made (the veths go with them). It is idempotent:
 * call it from `after` and it cleans up even when the setup failed half-way.
 *
 *   const net = await createTopology({ hosts: 2 });
 *   after(() => net.destroy());
 *   const child = net.spawnNode(net.hosts[0].ns, 'dist/test/helpers/x.js', []);
 */
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/** At most this many hosts: 4 addresses per /30 each, below the center address. */
export const MAX_TOPOLOGY_HOSTS = 60;
/** The center's address, on the wan namespace's loopback. */
export const CENTER_ADDRESS = '192.0.2.254';
/** A setup command that takes longer than this is stuck. */
export const NETNS_COMMAND_TIMEOUT_MS = 10_000;
/** Bytes of a command's output kept (`ip -j … show` of a test namespace is a few KiB). */
const NETNS_MAX_OUTPUT_BYTES = 4 * 1024 * 1024;
/** Hex characters of the per-run tag: "fy" + 4 + "h" + up to 2 digits + "w" fits in 15. */
const TAG_HEX = 4;

export interface TopologyHost {
  /** The namespace's name (for `ip netns exec`, `ip -n`). */
  readonly ns: string;
  /** Its physical (underlay) address. */
  readonly address: string;
  /** Its wan router's address (its default gateway). */
  readonly gateway: string;
  /** Its interface towards the wan. */
  readonly link: string;
}

export interface Topology {
  readonly hosts: readonly TopologyHost[];
  /** The routing namespace (holds CENTER_ADDRESS). */
  readonly wan: string;
  readonly centerAddress: string;
  /** Runs a program inside a namespace; resolves with its stdout, rejects with its stderr in the message. */
  exec(ns: string, cmd: string, args: readonly string[]): Promise<string>;
  /** `ip -j …` inside a namespace, parsed. */
  ipJson(ns: string, args: readonly string[]): Promise<unknown>;
  /** Starts `node script args…` inside a namespace (killed by destroy()). */
  spawnNode(ns: string, script: string, args: readonly string[], options?: SpawnOptions): ChildProcess;
  /** Kills what spawnNode started and deletes every namespace; idempotent, never throws. */
  destroy(): Promise<void>;
}

export function run(cmd: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: NETNS_COMMAND_TIMEOUT_MS, maxBuffer: NETNS_MAX_OUTPUT_BYTES, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err === null) resolve(stdout);
      else reject(new Error(`${cmd} ${args.join(' ')} failed: ${stderr.trim() || err.message}`));
    });
  });
}

function hostAddresses(i: number): { address: string; gateway: string } {
  return { address: `192.0.2.${4 * i + 1}`, gateway: `192.0.2.${4 * i + 2}` };
}

class NetnsTopology implements Topology {
  readonly hosts: TopologyHost[] = [];
  readonly wan: string;
  readonly centerAddress = CENTER_ADDRESS;
  private readonly namespaces: string[] = [];
  private readonly children = new Set<ChildProcess>();
  private destroying: Promise<void> | null = null;

  constructor(readonly tag: string) {
    this.wan = `ferry-${tag}-wan`;
  }

  exec(ns: string, cmd: string, args: readonly string[]): Promise<string> {
    return run('ip', ['netns', 'exec', ns, cmd, ...args]);
  }

  async ipJson(ns: string, args: readonly string[]): Promise<unknown> {
    const out = await run('ip', ['-n', ns, '-j', ...args]);
    return out.trim() === '' ? [] : JSON.parse(out) as unknown;
  }

  spawnNode(ns: string, script: string, args: readonly string[], options: SpawnOptions = {}): ChildProcess {
    // `ip netns exec` execs node after entering the namespace: the child's pid is node's, so a signal reaches it.
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, script, ...args], { stdio: ['pipe', 'pipe', 'inherit'], ...options });
    this.children.add(child);
    child.once('exit', () => { this.children.delete(child); });
    return child;
  }

  async addNamespace(name: string): Promise<void> {
    await run('ip', ['netns', 'add', name]);
    this.namespaces.push(name);
    await run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  }

  async build(hostCount: number): Promise<void> {
    await this.addNamespace(this.wan);
    await run('ip', ['-n', this.wan, 'addr', 'add', `${CENTER_ADDRESS}/32`, 'dev', 'lo']);
    await this.exec(this.wan, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
    for (let i = 0; i < hostCount; i++) await this.addHost(i);
  }

  private async addHost(i: number): Promise<void> {
    const ns = `ferry-${this.tag}-h${i}`;
    const link = `fy${this.tag}h${i}`;
    const wanLink = `fy${this.tag}w${i}`;
    const { address, gateway } = hostAddresses(i);
    await this.addNamespace(ns);
    // Both ends made inside their namespaces: nothing ever appears in the namespace the tests run in.
    await run('ip', ['link', 'add', link, 'netns', ns, 'type', 'veth', 'peer', 'name', wanLink, 'netns', this.wan]);
    await run('ip', ['-n', ns, 'addr', 'add', `${address}/30`, 'dev', link]);
    await run('ip', ['-n', this.wan, 'addr', 'add', `${gateway}/30`, 'dev', wanLink]);
    await run('ip', ['-n', ns, 'link', 'set', link, 'up']);
    await run('ip', ['-n', this.wan, 'link', 'set', wanLink, 'up']);
    await run('ip', ['-n', ns, 'route', 'add', 'default', 'via', gateway]);
    this.hosts.push({ ns, address, gateway, link });
  }

  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      await Promise.all([...this.children].map(killChild));
      for (const ns of this.namespaces.splice(0).reverse()) await run('ip', ['netns', 'del', ns]).catch(() => undefined);
    })();
    return this.destroying;
  }
}

function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => { child.once('exit', () => { resolve(); }); child.kill('SIGKILL'); });
}

/** Builds the topology; on a failure it removes what it made and rethrows. */
export async function createTopology(options: { hosts: number }): Promise<Topology> {
  if (!Number.isInteger(options.hosts) || options.hosts < 1 || options.hosts > MAX_TOPOLOGY_HOSTS) {
    throw new Error(`a topology has 1 to ${MAX_TOPOLOGY_HOSTS} hosts, not ${options.hosts}`);
  }
  const topology = new NetnsTopology(randomBytes(TAG_HEX / 2).toString('hex'));
  try {
    await topology.build(options.hosts);
  } catch (err) {
    await topology.destroy();
    throw err;
  }
  return topology;
}

/** Why namespace tests cannot run here (not root, or no `ip netns`), or null when they can. */
export async function netnsUnavailable(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)';
  try {
    await run('ip', ['netns', 'list']);
    return null;
  } catch (err) {
    return `ip netns does not work here: ${err instanceof Error ? err.message : String(err)}`;
  }
}
