/** A VM: state, configuration, disks and chain, live console, power actions, migrate. */
import { useEffect, useRef, useState } from 'preact/hooks';
import * as api from './api.js';
import type { CenterHostDetail, CenterVmView, DiskChainView } from './api.js';
import { fleet, useFleet, type Fleet } from './fleet.js';
import { Action, Badge, FINISHED, Kv } from './common.js';
import { bytes, vmConfig, vmDisks, when } from './format.js';

/** Console text kept on screen: the newest part of a long-running VM's output. */
export const MAX_CONSOLE_CHARS = 64 * 1024;

export function VmPage(props: { name: string }) {
  const f = useFleet();
  const vm = f.vms.get(props.name);
  const [migrating, setMigrating] = useState(false);
  if (vm === undefined) return <section><h1>VM {props.name}</h1><p>{f.loaded ? 'No such VM (deleted?).' : 'Loading…'}</p></section>;
  const c = vmConfig(vm.config);
  const disks = vmDisks(vm.disks);
  const tasks = [...f.tasks.values()].filter((t) => t.target === `vm:${vm.name}`).sort((a, b) => b.id - a.id).slice(0, 10);
  return (
    <section aria-labelledby="vm-title">
      <h1 id="vm-title">VM {vm.name} <Badge state={vm.state} /></h1>
      <div class="actions" role="group" aria-label="power actions">
        <Action label="Start" disabled={vm.state === 'running'} run={async () => { const t = await api.startVm(vm.name); fleet.refresh(`task:${t.id}`); }} />
        <Action label="Stop" disabled={vm.state !== 'running'} run={async () => { const t = await api.stopVm(vm.name); fleet.refresh(`task:${t.id}`); }} />
        <button type="button" class="primary" disabled={vm.state !== 'running'} onClick={() => { setMigrating(true); }}>Migrate…</button>
      </div>
      <Kv rows={[
        ['Host', vm.host === null ? '—' : <a href={`#/hosts/${encodeURIComponent(vm.host)}`} data-testid="vm-host">{vm.host}</a>],
        ['Memory', bytes(c.memoryBytes)], ['vCPUs', String(c.vcpus ?? '—')], ['Created', when(vm.createdAtMs)], ['Changed', when(vm.updatedAtMs)],
      ]} />
      <h2>Disks</h2>
      {disks.length === 0 ? <p class="muted">No disk.</p> : (
        <ul>{disks.map((d) => (
          <li key={d.path}><code>[{d.datastore}] {d.path}</code> ({bytes(d.capacityBytes)})
          </li>
        ))}</ul>
      )}
      {disks.length > 0 && vm.host !== null && <DiskChain name={vm.name} host={vm.host} version={`${f.vmEvents.get(vm.name) ?? 0}:${tasks.map((t) => `${t.id}.${t.state}`).join(',')}`} />}
      <h2>Console</h2>
      {vm.state === 'running' && vm.host !== null ? <Console name={vm.name} host={vm.host} /> : <p class="muted">The console is live while the VM runs.</p>}
      <h2>Recent tasks</h2>
      <ul>{tasks.map((t) => <li key={t.id}><a href={`#/task/${t.id}`}>#{t.id} {t.kind}</a> <Badge state={t.state} /> <span class="muted">{t.phase}</span></li>)}</ul>
      {migrating && <MigrateDialog vm={vm} fleet={f} onClose={() => { setMigrating(false); }} />}
    </section>
  );
}

/**
 * The VM's disk chain as its host has it (GET /vms/{name}/disk/chain: the center asks the host), top
 * first, read again on each of the VM's events and its tasks' changes (`version`: a snapshot by a
 * prepare-migration makes a new top) and when it moves; an answer to an older read is dropped.
 */
function DiskChain(props: { name: string; host: string; version: string }) {
  const [chain, setChain] = useState<DiskChainView | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let current = true;
    api.vmDiskChain(props.name).then((c) => { if (current) { setChain(c); setError(null); } }, (err: unknown) => { if (current) setError(err instanceof Error ? err.message : String(err)); });
    return () => { current = false; };
  }, [props.name, props.host, props.version]);
  return (
    <>
      <h3>Disk chain <span class="muted">(top first)</span></h3>
      {error !== null && <p class="error" role="alert">disk chain: {error}</p>}
      {chain === null ? (error === null && <p class="muted">Loading…</p>) : (
        <div class="table-wrap"><table aria-label="disk chain, top first">
          <thead><tr><th scope="col">File</th><th scope="col">Role</th><th scope="col">CID</th><th scope="col">Parent CID</th><th scope="col">Allocated</th></tr></thead>
          <tbody>{chain.chain.map((l) => (
            <tr key={l.path} data-chain-path={l.path} data-role={l.role}>
              <td><code>[{chain.datastore}] {l.path}</code></td><td>{l.role}</td><td><code data-testid="chain-cid">{l.cid}</code></td><td><code>{l.parentCid}</code></td><td>{bytes(l.allocatedBytes)}</td>
            </tr>
          ))}</tbody>
        </table></div>
      )}
      {chain !== null && chain.operation !== null && <p class="muted">In progress: {chain.operation.kind} ({chain.operation.phase}) {bytes(chain.operation.doneBytes)} of {bytes(chain.operation.totalBytes)}</p>}
    </>
  );
}

/** Follows the console through the center (GET /vms/{name}/console?follow=1) while shown, on its current host. */
function Console(props: { name: string; host: string }) {
  const [text, setText] = useState('');
  const [error, setError] = useState<string | null>(null);
  const pre = useRef<HTMLPreElement>(null);
  useEffect(() => {
    const ac = new AbortController();
    setText('');
    void (async () => {
      try {
        const res = await api.consoleStream(props.name, ac.signal);
        if (res.body === null) return;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const chunk = decoder.decode(value, { stream: true });
          setText((t) => (t + chunk).slice(-MAX_CONSOLE_CHARS));
        }
      } catch (err) {
        if (!ac.signal.aborted) setError(err instanceof Error ? err.message : String(err));
      }
    })();
    return () => { ac.abort(); };
  }, [props.name, props.host]);
  useEffect(() => { const el = pre.current; if (el !== null) el.scrollTop = el.scrollHeight; }, [text]);
  return (
    <>
      {error !== null && <p class="error" role="alert">console: {error}</p>}
      <pre class="console" ref={pre} tabIndex={0} aria-label={`console of ${props.name}`} aria-live="off">{text}</pre>
    </>
  );
}

export interface Fit {
  readonly host: CenterHostDetail;
  readonly reason: string | null;
  readonly freeMemoryBytes: number;
  /** Whether the host could take the VM by a move to its site (toSite): the disk is copied there, so its datastore need not be mounted. */
  readonly bySite: boolean;
}

/**
 * Which hosts could take the VM, each with why not: the center's placement rule (src/center/placement.ts)
 * on what the API shows — connected, memory left for the VM, and the VM's disk datastore mounted (by id);
 * a host of another site may take it by a move to that site (toSite, `bySite`), whose disk is copied.
 */
export function fitsFor(vm: CenterVmView, f: Fleet): Fit[] {
  const need = vmConfig(vm.config).memoryBytes ?? 0;
  const disk = vmDisks(vm.disks)[0];
  const source = vm.host === null ? undefined : f.hosts.get(vm.host);
  const diskId = disk === undefined ? null : source?.datastores.find((d) => d.mountName === disk.datastore)?.id ?? null;
  const busy = new Map<string, number>();
  for (const t of f.tasks.values()) {
    if (t.kind !== 'vm.migrate' || FINISHED.has(t.state)) continue;
    const plan = typeof t.plan === 'object' && t.plan !== null ? t.plan as Record<string, unknown> : {};
    // Memory promised to a host by a migration admitted to it: that VM's, as the scheduler counts it.
    const moving = f.vms.get(t.target.replace(/^vm:/, ''));
    const movingBytes = moving === undefined ? 0 : vmConfig(moving.config).memoryBytes ?? 0;
    if (typeof plan.target === 'string' && t.target !== `vm:${vm.name}`) busy.set(plan.target, (busy.get(plan.target) ?? 0) + movingBytes);
  }
  return [...f.hosts.values()].filter((h) => h.name !== vm.host).map((h) => {
    const used = [...f.vms.values()].filter((v) => v.host === h.name).reduce((s, v) => s + (vmConfig(v.config).memoryBytes ?? 0), 0) + (busy.get(h.name) ?? 0);
    const free = Math.max(0, h.capacity.memoryBytes - used);
    let reason: string | null = null;
    if (h.state !== 'connected') reason = `host ${h.name} is ${h.state}: only a connected host in service takes VMs`;
    else if (free < need) reason = `host ${h.name} has ${bytes(free)} of memory left, the VM needs ${bytes(need)}`;
    const bySite = reason === null && h.site !== source?.site;
    if (reason === null && disk !== undefined && diskId !== null && !h.datastores.some((d) => d.id === diskId)) reason = `host ${h.name} does not mount datastore ${disk.datastore}, where the VM's disk is`;
    return { host: h, reason, freeMemoryBytes: free, bySite };
  }).sort((a, b) => (a.reason === null ? 0 : 1) - (b.reason === null ? 0 : 1) || b.freeMemoryBytes - a.freeMemoryBytes);
}

const MiB = 1024 * 1024;
const SITE_CHOICE = 'site:';

function MigrateDialog(props: { vm: CenterVmView; fleet: Fleet; onClose: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  const fits = fitsFor(props.vm, props.fleet);
  const first = fits.find((x) => x.reason === null)?.host.name ?? '';
  const [to, setTo] = useState(first);
  const [bandwidth, setBandwidth] = useState('');
  const [downtime, setDowntime] = useState('');
  const [autoConverge, setAutoConverge] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => { ref.current?.showModal(); }, []);
  const sites = [...new Set(fits.map((x) => x.host.site))].sort();
  const here = props.vm.host === null ? undefined : props.fleet.hosts.get(props.vm.host)?.site;
  const submit = async (ev: Event): Promise<void> => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const mib = Number(bandwidth);
      const dt = Number(downtime);
      const options = {
        ...(bandwidth !== '' ? { bandwidthBytesPerSec: Math.round(mib * MiB) } : {}),
        ...(downtime !== '' ? { downtimeTargetMs: dt } : {}),
        autoConverge,
      };
      // `site:<name>`: any host of that site, the center picks (a cross-site move: toSite).
      const target = to.startsWith(SITE_CHOICE) ? { toSite: to.slice(SITE_CHOICE.length) } : to !== '' ? { to } : {};
      const t = await api.migrateVm(props.vm.name, { ...target, options });
      fleet.refresh(`task:${t.id}`);
      props.onClose();
      location.hash = `#/task/${t.id}`;
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <dialog ref={ref} class="dialog" aria-labelledby="migrate-title" onClose={props.onClose}>
      <form onSubmit={(e) => { void submit(e); }}>
        <h2 id="migrate-title">Migrate {props.vm.name} from {props.vm.host}</h2>
        <fieldset>
          <legend>Target host</legend>
          {sites.map((site) => (
            <div key={site} role="group" aria-label={`site ${site}`}>
              <h3>Site {site}</h3>
              {fits.filter((x) => x.host.site === site).map((x) => (
                <div class={`target ${x.reason === null ? 'ok' : 'refused'}`} key={x.host.name} data-target={x.host.name}>
                  <label>
                    <input type="radio" name="to" value={x.host.name} checked={to === x.host.name} disabled={x.reason !== null} onChange={() => { setTo(x.host.name); }} />
                    {' '}<strong>{x.host.name}</strong> <Badge state={x.host.state} /> {x.reason === null ? <span class="compatible">compatible, {bytes(x.freeMemoryBytes)} free</span> : <span class="why">refused: {x.reason}</span>}
                  </label>
                </div>
              ))}
              {site !== here && fits.some((x) => x.host.site === site && x.bySite) && (
                <label class="target"><input type="radio" name="to" value={`${SITE_CHOICE}${site}`} checked={to === `${SITE_CHOICE}${site}`} onChange={() => { setTo(`${SITE_CHOICE}${site}`); }} /> Any host of site {site} (the center picks; the disk goes to the datastore a preparation seeded)</label>
              )}
            </div>
          ))}
          <label class="target"><input type="radio" name="to" value="" checked={to === ''} onChange={() => { setTo(''); }} /> Let the center choose</label>
          {fits.length === 0 && <p class="muted">No other host in the inventory.</p>}
        </fieldset>
        <fieldset>
          <legend>Options</legend>
          <label for="opt-bw">Bandwidth limit (MiB/s, empty: none)</label>
          <input id="opt-bw" type="number" min={1} step="any" value={bandwidth} onInput={(e) => { setBandwidth(e.currentTarget.value); }} />
          <label for="opt-dt">Downtime target (ms, empty: default)</label>
          <input id="opt-dt" type="number" min={1} max={60000} value={downtime} onInput={(e) => { setDowntime(e.currentTarget.value); }} />
          <label><input type="checkbox" checked={autoConverge} onChange={(e) => { setAutoConverge(e.currentTarget.checked); }} /> Auto-converge (throttle the guest when it dirties faster than the link)</label>
        </fieldset>
        {error !== null && <p class="error" role="alert">{error}</p>}
        <div class="actions">
          <button type="submit" class="primary" disabled={busy}>Start migration</button>
          <button type="button" onClick={() => { ref.current?.close(); }}>Close</button>
        </div>
      </form>
    </dialog>
  );
}
