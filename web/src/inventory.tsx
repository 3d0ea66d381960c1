/** Sites → hosts → VMs, and the datastores with the hosts that mount them, live. */
import { useFleet } from './fleet.js';
import { Badge } from './common.js';
import { bytes, vmConfig } from './format.js';

/** One host's view of a datastore's space (a shared one: each host reports what its mount shows). */
interface MountSpace { readonly host: string; readonly capacityBytes: number | null; readonly freeBytes: number | null }

export function Inventory() {
  const f = useFleet();
  const hosts = [...f.hosts.values()];
  const vms = [...f.vms.values()];
  const siteNames = [...new Set([...f.sites.map((s) => s.name), ...hosts.map((h) => h.site)])].sort();
  const datastores = new Map<string, { names: Set<string>; hosts: string[]; shared: boolean; space: MountSpace[] }>();
  for (const h of hosts) {
    for (const d of h.datastores) {
      const e = datastores.get(d.id) ?? { names: new Set<string>(), hosts: [], shared: d.shared, space: [] };
      e.names.add(d.mountName);
      e.hosts.push(h.name);
      e.space.push({ host: h.name, capacityBytes: d.capacityBytes, freeBytes: d.freeBytes });
      datastores.set(d.id, e);
    }
  }
  const homeless = vms.filter((v) => v.host === null || !f.hosts.has(v.host));
  return (
    <section aria-labelledby="inventory-title">
      <h1 id="inventory-title">Inventory</h1>
      {siteNames.map((site) => (
        <section class="site" key={site} aria-label={`site ${site}`}>
          <h2>Site {site}</h2>
          <ul class="hosts">
            {hosts.filter((h) => h.site === site).map((h) => {
              const on = vms.filter((v) => v.host === h.name);
              const used = on.reduce((s, v) => s + (vmConfig(v.config).memoryBytes ?? 0), 0);
              return (
                <li key={h.name} class="host" data-host={h.name}>
                  <a href={`#/hosts/${encodeURIComponent(h.name)}`}><strong>{h.name}</strong></a> <Badge state={h.state} />
                  <span class="muted"> {bytes(used)} of {bytes(h.capacity.memoryBytes)} memory given to VMs, {h.capacity.vcpus} vCPUs</span>
                  <ul class="vms">
                    {on.map((v) => (
                      <li key={v.name} data-vm={v.name}><a href={`#/vm/${encodeURIComponent(v.name)}`}>{v.name}</a> <Badge state={v.state} /></li>
                    ))}
                    {on.length === 0 && <li class="muted">no VMs</li>}
                  </ul>
                </li>
              );
            })}
          </ul>
        </section>
      ))}
      {homeless.length > 0 && (
        <section aria-label="VMs on no host"><h2>VMs on no host</h2>
          <ul>{homeless.map((v) => <li key={v.name}><a href={`#/vm/${encodeURIComponent(v.name)}`}>{v.name}</a> <Badge state={v.state} /></li>)}</ul>
        </section>
      )}
      <h2>Datastores</h2>
      <div class="table-wrap">
        <table aria-label="datastores">
          <thead><tr><th scope="col">Names</th><th scope="col">Id</th><th scope="col">Mounted by</th><th scope="col">Shared</th><th scope="col">Space</th></tr></thead>
          <tbody>
            {[...datastores].map(([id, d]) => (
              <tr key={id} data-datastore={id}>
                <td>{[...d.names].join(', ')}</td><td><code>{id.slice(0, 12)}…</code></td><td>{d.hosts.join(', ')}</td><td>{d.shared ? 'yes' : 'no'}</td>
                <td><ul class="space">{d.space.map((s) => (
                  <li key={s.host} data-space-host={s.host} data-free-bytes={s.freeBytes ?? ''}>
                    {s.capacityBytes === null || s.freeBytes === null ? <span class="muted">{s.host}: not reported yet</span>
                      : <>{d.space.length > 1 ? `${s.host}: ` : ''}{bytes(s.freeBytes)} free of {bytes(s.capacityBytes)}</>}
                  </li>
                ))}</ul></td>
              </tr>
            ))}
            {datastores.size === 0 && <tr><td colSpan={5} class="muted">no host reports a datastore</td></tr>}
          </tbody>
        </table>
      </div>
    </section>
  );
}
