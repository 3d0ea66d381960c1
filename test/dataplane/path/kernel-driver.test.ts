/**
 * The kernel path driver between two real network namespaces joined by a routing "wan" namespace
 * (test/helpers/netns.ts). The driver runs `ip` in its own namespace, so each end runs in a child
 * (test/helpers/kernel-path-child.ts) inside its host's namespace; this file only asks and inspects.
 * Root only (skipped otherwise). Everything it makes is deleted in `after`, whatever failed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MAX_VNI, type PathSpec } from '../../../src/dataplane/path/spec.js';
import { PATH_TABLE_BASE, VXLAN_OVERHEAD_BYTES, VXLAN_PORT, pathLinkName } from '../../../src/dataplane/path/kernel-driver.js';
import { createTopology, netnsUnavailable, run, type Topology, type TopologyHost } from '../../helpers/netns.js';
import type { ChildRequest } from '../../helpers/kernel-path-child.js';

const CHILD_SCRIPT = fileURLToPath(new URL('../../helpers/kernel-path-child.js', import.meta.url));
/** A child's answer to one request comes within this (a dial is bounded at 5 s in the child). */
const CHILD_ANSWER_TIMEOUT_MS = 15_000;
const FIRST_PORT = 7000;
/** Bytes of the round trip that checks content (several TLS records, several VXLAN frames). */
const TRANSFER_BYTES = 1024 * 1024;
/** The veth MTU of the test topology (the kernel's default for veth). */
const VETH_MTU = 1500;
/** A dial the test expects to time out waits this long. */
const DIAL_TIMEOUT_MS = 300;

type Answer = Record<string, unknown> & { ok: boolean };
type Request = ChildRequest extends infer R ? R extends { id: number } ? Omit<R, 'id'> : never : never;

/** One end of a path: a child in a namespace, asked over JSON lines. */
class PathEnd {
  private nextId = 1;
  private readonly waiting = new Map<number, (a: Answer) => void>();
  readonly ready: Promise<void>;

  constructor(readonly host: TopologyHost, readonly child: ChildProcess) {
    let onReady: () => void = () => undefined;
    this.ready = new Promise((resolve) => { onReady = resolve; });
    if (child.stdout === null) throw new Error('child has no stdout');
    createInterface({ input: child.stdout }).on('line', (line) => {
      const msg = JSON.parse(line) as Answer & { id?: number; ready?: boolean };
      if (msg.ready === true) { onReady(); return; }
      if (msg.id !== undefined) this.waiting.get(msg.id)?.(msg);
    });
  }

  ask(req: Request): Promise<Answer> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`no answer to ${req.op} within ${CHILD_ANSWER_TIMEOUT_MS} ms`)); }, CHILD_ANSWER_TIMEOUT_MS);
      this.waiting.set(id, (a) => { clearTimeout(timer); this.waiting.delete(id); resolve(a); });
      this.child.stdin?.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }

  /** Asks and expects success. */
  async must(req: Request): Promise<Answer> {
    const a = await this.ask(req);
    assert.equal(a.ok, true, `${req.op} failed: ${String(a['code'])} ${String(a['message'])}`);
    return a;
  }
}

function startEnd(net: Topology, host: TopologyHost): Promise<PathEnd> {
  const end = new PathEnd(host, net.spawnNode(host.ns, CHILD_SCRIPT, [host.address]));
  return end.ready.then(() => end);
}

function specPair(a: TopologyHost, b: TopologyHost): [PathSpec, PathSpec] {
  const base = {
    pathId: randomBytes(16).toString('hex'), driver: 'kernel' as const, firstPort: FIRST_PORT, portCount: 4,
    vni: randomInt(1, MAX_VNI + 1), secret: randomBytes(32).toString('base64url'), expiresAtMs: Date.now() + 3_600_000,
  };
  const [va, vb] = [`100.64.${randomInt(0, 256)}.1`, `100.64.${randomInt(0, 256)}.2`];
  return [
    { ...base, side: 'source', localAddress: va, peerAddress: vb, peerEndpoint: { host: b.address, port: VXLAN_PORT } },
    { ...base, side: 'target', localAddress: vb, peerAddress: va, peerEndpoint: { host: a.address, port: VXLAN_PORT } },
  ];
}

/** Everything `ip` shows of a namespace that a path could leave behind, as one string per kind. */
async function stateOf(net: Topology, ns: string): Promise<Record<string, string>> {
  const [link, addr, rule, route, neigh] = await Promise.all([
    net.ipJson(ns, ['link', 'show']), net.ipJson(ns, ['addr', 'show']), net.ipJson(ns, ['rule', 'show']),
    net.ipJson(ns, ['route', 'show', 'table', 'all']), net.ipJson(ns, ['neigh', 'show']),
  ]);
  return { link: JSON.stringify(link), addr: JSON.stringify(addr), rule: JSON.stringify(rule), route: JSON.stringify(route), neigh: JSON.stringify(neigh) };
}

/** Asserts that nothing of `spec` is left in the namespace. */
async function assertNothingLeft(net: Topology, ns: string, spec: PathSpec): Promise<void> {
  const marks = [pathLinkName(spec.pathId), `"${spec.localAddress}"`, `"${spec.peerAddress}"`, `"${PATH_TABLE_BASE + spec.vni}"`, `:${PATH_TABLE_BASE + spec.vni}`];
  for (const [kind, text] of Object.entries(await stateOf(net, ns))) {
    for (const mark of marks) assert.ok(!text.includes(mark), `ip ${kind} show still has ${mark}: ${text}`);
  }
}

/** `ss -tnoH` lines inside a namespace (TCP sockets other than listeners, with their timers). */
async function tcpSockets(net: Topology, ns: string): Promise<string[]> {
  return (await net.exec(ns, 'ss', ['-tnoH'])).split('\n').filter((l) => l.trim() !== '');
}

const skip = await netnsUnavailable();

describe('kernel path driver (network namespaces)', { skip: skip ?? false }, () => {
  let net: Topology | null = null;
  const ends: PathEnd[] = [];
  let source: PathEnd;
  let target: PathEnd;
  let specs: [PathSpec, PathSpec];

  before(async () => {
    net = await createTopology({ hosts: 2 });
    const [ha, hb] = net.hosts;
    assert.ok(ha !== undefined && hb !== undefined);
    source = await startEnd(net, ha);
    target = await startEnd(net, hb);
    ends.push(source, target);
    specs = specPair(ha, hb);
  });
  after(async () => { await net?.destroy(); });

  const topology = (): Topology => { assert.ok(net !== null); return net; };

  it('can be used here (ip present, may create a VXLAN)', async () => {
    const a = await source.must({ op: 'support' });
    assert.equal(a['supported'], true, String(a['reason']));
  });

  it('opens both ends: one VXLAN interface each, MTU the underlay less the VXLAN overhead', async () => {
    await source.must({ op: 'open', spec: specs[0] });
    await target.must({ op: 'open', spec: specs[1] });
    const links = await topology().ipJson(source.host.ns, ['-d', 'link', 'show', 'dev', pathLinkName(specs[0].pathId)]) as { mtu: number; linkinfo?: { info_data?: { id?: number } } }[];
    assert.equal(links[0]?.mtu, VETH_MTU - VXLAN_OVERHEAD_BYTES);
    assert.equal(links[0]?.linkinfo?.info_data?.id, specs[0].vni);
  });

  it('carries a TLS stream between the virtual addresses, bytes intact', async () => {
    await target.must({ op: 'listen', port: FIRST_PORT });
    const a = await source.must({ op: 'dial', port: FIRST_PORT, bytes: TRANSFER_BYTES, hold: 'kept' });
    assert.equal(a['same'], true);
  });

  it('ss inside the namespaces shows the stream between virtual addresses only, with keep-alive', async () => {
    for (const end of ends) {
      const lines = await tcpSockets(topology(), end.host.ns);
      assert.ok(lines.length > 0, `no TCP socket in ${end.host.ns}`);
      for (const line of lines) {
        assert.ok(line.includes(`${specs[0].localAddress}:`) && line.includes(`${specs[1].localAddress}:`), `not between the virtual addresses: ${line}`);
        for (const h of topology().hosts) assert.ok(!line.includes(h.address), `an underlay address in: ${line}`);
        assert.ok(line.includes('keepalive'), `no keep-alive on: ${line}`);
      }
    }
  });

  it('a socket bound to the virtual address cannot reach the peer\'s physical address', async () => {
    await target.must({ op: 'listen-plain', port: FIRST_PORT + 1 });
    // The control: from the host's own address the peer's physical port is reachable.
    const plain = await source.must({ op: 'connect', host: target.host.address, port: FIRST_PORT + 1, fromVirtual: false });
    assert.equal(plain['result'], 'connected');
    const bound = await source.must({ op: 'connect', host: target.host.address, port: FIRST_PORT + 1, fromVirtual: true });
    assert.ok(bound['result'] === 'EHOSTUNREACH' || bound['result'] === 'ENETUNREACH', `bound to the virtual address it got: ${String(bound['result'])}`);
  });

  it('refuses a stream with a wrong secret, and the open stream goes on', async () => {
    const wrong = await source.must({ op: 'dial-secret', port: FIRST_PORT, secret: randomBytes(32).toString('base64url') });
    assert.notEqual(wrong['result'], 'connected');
    const right = await source.must({ op: 'dial-secret', port: FIRST_PORT, secret: specs[0].secret });
    assert.equal(right['result'], 'connected', 'the control with the right secret must connect');
    const kept = await source.must({ op: 'echo', hold: 'kept', bytes: 64 * 1024 });
    assert.equal(kept['same'], true);
  });

  it('a second open of the same path fails PATH_SETUP_FAILED without the peer\'s underlay address, and leaves the first intact', async () => {
    const again = await source.ask({ op: 'open', spec: specs[0] });
    assert.equal(again.ok, false);
    assert.equal(again['code'], 'PATH_SETUP_FAILED');
    // Its own underlay address may be named (the operator's host); the peer's never.
    assert.ok(!String(again['message']).includes(target.host.address), `the peer's underlay address in: ${String(again['message'])}`);
    const kept = await source.must({ op: 'echo', hold: 'kept', bytes: 1024 });
    assert.equal(kept['same'], true);
  });

  it('after close() nothing of the path remains and its old address cannot be reached', async () => {
    await source.must({ op: 'close' });
    await target.must({ op: 'close' });
    await assertNothingLeft(topology(), source.host.ns, specs[0]);
    await assertNothingLeft(topology(), target.host.ns, specs[1]);
    const after = await source.must({ op: 'connect', host: specs[1].localAddress, port: FIRST_PORT, fromVirtual: false });
    assert.notEqual(after['result'], 'connected');
    const listening = await topology().exec(target.host.ns, 'ss', ['-tlnH']);
    assert.ok(!listening.includes(specs[1].localAddress), `still listening: ${listening}`);
  });

  it('the driver\'s dial: PATH_REFUSED when the secrets differ, HOST_UNREACHABLE, CONNECT_TIMEOUT, CANCELLED, naming no underlay address', async () => {
    const [ha, hb] = topology().hosts;
    assert.ok(ha !== undefined && hb !== undefined);
    const [s0, s1] = specPair(ha, hb);
    // The first path is closed: its two children open this one (a child holds one path at a time).
    const [dialer, listener] = [source, target];
    await dialer.must({ op: 'open', spec: s0 });
    await listener.must({ op: 'open', spec: { ...s1, secret: randomBytes(32).toString('base64url') } });
    await listener.must({ op: 'listen', port: FIRST_PORT });
    const refused = await dialer.ask({ op: 'dial', port: FIRST_PORT, bytes: 1 });
    assert.equal(refused['code'], 'PATH_REFUSED', String(refused['message']));
    const nobody = await dialer.ask({ op: 'dial', port: FIRST_PORT + 2, bytes: 1 });
    assert.equal(nobody['code'], 'HOST_UNREACHABLE', String(nobody['message']));
    // The listener's end goes silent (its interface down: the SYN is dropped there): a dial times out, or is cancelled.
    await topology().exec(hb.ns, 'ip', ['link', 'set', pathLinkName(s1.pathId), 'down']);
    const late = await dialer.ask({ op: 'dial', port: FIRST_PORT, bytes: 1, timeoutMs: DIAL_TIMEOUT_MS });
    assert.equal(late['code'], 'CONNECT_TIMEOUT', String(late['message']));
    const cancelled = await dialer.ask({ op: 'dial', port: FIRST_PORT, bytes: 1, abort: true });
    assert.equal(cancelled['code'], 'CANCELLED', String(cancelled['message']));
    for (const m of [refused['message'], nobody['message'], late['message'], cancelled['message']]) {
      for (const h of topology().hosts) assert.ok(!String(m).includes(h.address), `an underlay address in: ${String(m)}`);
    }
    await dialer.must({ op: 'close' });
    await listener.must({ op: 'close' });
    await assertNothingLeft(topology(), hb.ns, s1);
  });

  it('removeLeftovers after a SIGKILL removes everything the dead process made', async () => {
    const [ha, hb] = topology().hosts;
    assert.ok(ha !== undefined && hb !== undefined);
    const [leftSpec] = specPair(ha, hb);
    const doomed = await startEnd(topology(), ha);
    await doomed.must({ op: 'open', spec: leftSpec });
    await doomed.must({ op: 'listen', port: FIRST_PORT });
    const exited = new Promise((resolve) => { doomed.child.once('exit', resolve); });
    doomed.child.kill('SIGKILL');
    await exited;
    const before = await stateOf(topology(), ha.ns);
    assert.ok(before['link']?.includes(pathLinkName(leftSpec.pathId)), 'the killed process left its interface (as a crash would)');
    assert.ok(before['rule']?.includes(leftSpec.localAddress), 'the killed process left its rule');
    const sweeper = await startEnd(topology(), ha);
    ends.push(sweeper);
    await sweeper.must({ op: 'remove-leftovers', spec: leftSpec });
    await sweeper.must({ op: 'remove-leftovers', spec: leftSpec }); // again: nothing left to remove is no error
    await assertNothingLeft(topology(), ha.ns, leftSpec);
  });

  it('the sweep removes prefix-named interfaces a spec names, and others only when asked', async () => {
    const [ha, hb] = topology().hosts;
    assert.ok(ha !== undefined && hb !== undefined);
    const [known] = specPair(ha, hb);
    const [stranger] = specPair(ha, hb);
    for (const spec of [known, stranger]) {
      const doomed = await startEnd(topology(), ha);
      await doomed.must({ op: 'open', spec });
      const exited = new Promise((resolve) => { doomed.child.once('exit', resolve); });
      doomed.child.kill('SIGKILL');
      await exited;
    }
    const sweeper = ends[ends.length - 1];
    assert.ok(sweeper !== undefined);
    const first = await sweeper.must({ op: 'sweep', specs: [known], all: false });
    assert.deepEqual(first['removed'], [pathLinkName(known.pathId)]);
    assert.deepEqual(first['kept'], [pathLinkName(stranger.pathId)]);
    await assertNothingLeft(topology(), ha.ns, known);
    const second = await sweeper.must({ op: 'sweep', specs: [], all: true });
    assert.deepEqual(second['removed'], [pathLinkName(stranger.pathId)]);
    await assertNothingLeft(topology(), ha.ns, stranger);
  });
});

describe('network-namespace topology (test/helpers/netns.ts)', { skip: skip ?? false }, () => {
  it('hosts reach the center address in the wan namespace; destroy() removes every namespace, and may be called again', async () => {
    const net = await createTopology({ hosts: 3 });
    try {
      const center = net.spawnNode(net.wan, '-e', [
        `require('node:net').createServer((s) => s.end('center')).listen(${FIRST_PORT}, '${net.centerAddress}', () => console.log('up'))`,
      ]);
      await new Promise((resolve) => { center.stdout?.once('data', resolve); });
      for (const host of net.hosts) {
        const out = await net.exec(host.ns, process.execPath, ['-e',
          `require('node:net').connect(${FIRST_PORT}, '${net.centerAddress}').on('data', (d) => { process.stdout.write(d); process.exit(0); })`]);
        assert.equal(out, 'center', `${host.ns} did not reach the center`);
      }
    } finally {
      await net.destroy();
      await net.destroy();
    }
    const names = [net.wan, ...net.hosts.map((h) => h.ns)];
    const list = await run('ip', ['netns', 'list']);
    for (const name of names) assert.ok(!list.includes(name), `${name} is still there`);
  });
});
