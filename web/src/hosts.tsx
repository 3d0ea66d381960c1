/** Hosts: state, VMs, datastores; enter and exit maintenance with the evacuation's progress and why it cannot finish. */
import * as api from './api.js';
import type { CenterHostDetail } from './api.js';
import { useFleet, type Fleet } from './fleet.js';
import { Action, Badge, FINISHED, Progress } from './common.js';
import { EvacuationView } from './task.js';
import { bytes, when } from './format.js';

const MAINTENANCE_KINDS = new Set(['host.evacuate', 'host.exit-maintenance']);

export function HostsPage(props: { focus: string | null }) {
  const f = useFleet();
  const hosts = [...f.hosts.values()].sort((a, b) => a.name.localeCompare(b.name));
  return (
    <section aria-labelledby="hosts-title">
      <h1 id="hosts-title">Hosts</h1>
      {hosts.map((h) => <HostCard key={h.name} host={h} fleet={f} focused={props.focus === h.name} />)}
    </section>
  );
}

function HostCard(props: { host: CenterHostDetail; fleet: Fleet; focused: boolean }) {
  const h = props.host;
  const f = props.fleet;
  const vms = [...f.vms.values()].filter((v) => v.host === h.name);
  const latest = [...f.tasks.values()].filter((t) => MAINTENANCE_KINDS.has(t.kind) && t.target === `host:${h.name}`).sort((a, b) => b.id - a.id)[0];
  const inService = h.state === 'connected';
  const inMaintenance = h.state === 'in-maintenance' || h.state === 'entering-maintenance';
  return (
    <article class={`card${props.focused ? ' focused' : ''}`} aria-labelledby={`host-${h.name}`} data-host={h.name} data-state={h.state}>
      <h2 id={`host-${h.name}`}>{h.name} <Badge state={h.state} /></h2>
      <p class="muted">site {h.site} · {h.url} · {h.capacity.vcpus} vCPUs, {bytes(h.capacity.memoryBytes)} · last heartbeat {when(h.lastHeartbeatAtMs)}</p>
      <p>VMs: {vms.length === 0 ? <span class="muted">none</span> : vms.map((v) => <a key={v.name} href={`#/vm/${encodeURIComponent(v.name)}`}>{v.name} </a>)}</p>
      <p>Datastores: {h.datastores.map((d) => `${d.mountName}${d.shared ? ' (shared with other hosts)' : ''}`).join(', ') || <span class="muted">none</span>}</p>
      <div class="actions" role="group" aria-label={`maintenance of ${h.name}`}>
        <Action label={`Enter maintenance on ${h.name}`} disabled={!inService} run={async () => { const t = await api.maintenance(h.name, 'enter'); f.refresh(`task:${t.id}`); }}>Enter maintenance</Action>
        <Action label={`Exit maintenance on ${h.name}`} disabled={!inMaintenance} run={async () => { const t = await api.maintenance(h.name, 'exit'); f.refresh(`task:${t.id}`); }}>Exit maintenance</Action>
      </div>
      {latest !== undefined && (
        <div class="maintenance" data-testid={`maintenance-${h.name}`} data-task-state={latest.state}>
          <p><a href={`#/task/${latest.id}`}>#{latest.id} {latest.kind}</a> <Badge state={latest.state} /> <Progress value={f.progressOf(latest)} label={`${latest.kind} of ${h.name}`} /> <span>{latest.phase}</span></p>
          {!FINISHED.has(latest.state) && latest.waitingReason !== null && <p class="why">Cannot finish yet: {latest.waitingReason}</p>}
          {latest.error !== null && <p class="error">Did not finish: {latest.error.message}</p>}
          {latest.kind === 'host.evacuate' && <EvacuationView task={latest} fleet={f} />}
        </div>
      )}
    </article>
  );
}
