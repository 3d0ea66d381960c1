/** One task: its state and, by kind, the live view of what it does (migration, copy, preparation, evacuation). */
import * as api from './api.js';
import type { CenterTaskView } from './api.js';
import { useFleet, type CopyLive, type Fleet, type MigrationLive } from './fleet.js';
import { Action, Badge, FINISHED, Kv, Progress } from './common.js';
import { RoundChart } from './chart.js';
import { bytes, ms, rate, when } from './format.js';

const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Record<string, unknown> : {});
/** A copy's boundary ({ fileIndex, offsetBytes }) as a person reads it. */
const boundary = (v: unknown): string => { const b = obj(v); return typeof b.fileIndex === 'number' && typeof b.offsetBytes === 'number' ? `file ${b.fileIndex + 1} at ${bytes(b.offsetBytes)}` : JSON.stringify(v); };
const text = (v: unknown): string => (typeof v === 'string' ? v : '');
const numOr = (v: unknown): number | null => (typeof v === 'number' ? v : null);
/** A { part: ms } object (the engine downtime's breakdown in a task's result), or null when there is none. */
const numbers = (v: unknown): Record<string, number> | null => {
  const entries = Object.entries(obj(v)).filter((e): e is [string, number] => typeof e[1] === 'number');
  return entries.length === 0 ? null : Object.fromEntries(entries);
};
/** The engine downtime's parts as a person reads them (the migration record's switchoverMs keys). */
const PART_LABELS: Readonly<Record<string, string>> = { pauseMs: 'pause (every vCPU parked)', finalRoundMs: 'final round', stateMs: 'vCPU and device state', commitMs: 'commit' };

export function TaskHeader(props: { task: CenterTaskView; fleet: Fleet }) {
  const t = props.task;
  return (
    <>
      <h1 id="task-title">Task #{t.id} {t.kind} <Badge state={t.state} /></h1>
      <Kv rows={[
        ['Target', t.target], ['Phase', <span data-testid="task-phase">{t.phase}</span>], ['Progress', <Progress value={props.fleet.progressOf(t)} label={`task ${t.id} progress`} />],
        ...(t.waitingReason !== null && !FINISHED.has(t.state) ? [['Waiting because', <span class="why">{t.waitingReason}</span>] as const] : []),
        ...(t.error !== null ? [['Error', <span class="error" data-testid="task-error">{t.error.code}: {t.error.message}</span>] as const] : []),
        ['Requested by', t.requestedBy], ['Created', when(t.createdAtMs)], ['Started', when(t.startedAtMs)], ['Ended', when(t.endedAtMs)], ['Attempts', String(t.attempts)],
      ]} compact />
      {!FINISHED.has(t.state) && (
        <div class="actions"><Action label={t.cancelRequested ? 'Cancel requested…' : 'Cancel task'} kind="danger" disabled={t.cancelRequested} run={async () => { await api.cancelTask(t.id); props.fleet.refresh(`task:${t.id}`); }} /></div>
      )}
    </>
  );
}

export function TaskPage(props: { id: number }) {
  const f = useFleet();
  const t = f.tasks.get(props.id);
  if (t === undefined) return <section><h1>Task #{props.id}</h1><p>{f.loaded ? 'No such task.' : 'Loading…'}</p></section>;
  if (t.kind === 'vm.migrate' || t.kind === 'copy') f.loadHistory(t);
  return (
    <section aria-labelledby="task-title">
      <TaskHeader task={t} fleet={f} />
      {t.kind === 'vm.migrate' && <MigrationView task={t} live={f.migrations.get(t.id) ?? null} history={f.history.get(t.id)} />}
      {t.kind === 'copy' && <CopyView task={t} live={f.copies.get(t.id) ?? null} />}
      {t.kind === 'vm.prepare-migration' && <PrepareView task={t} fleet={f} />}
      {t.kind === 'host.evacuate' && <EvacuationView task={t} fleet={f} />}
      <details><summary>Parameters and result (JSON)</summary><pre>{JSON.stringify({ params: t.params, plan: t.plan, result: t.result }, null, 2)}</pre></details>
    </section>
  );
}

const PHASES = [['prepare', 'Prepare'], ['precopy', 'Pre-copy rounds'], ['switchover', 'Switch-over'], ['release', 'Release']] as const;

function MigrationView(props: { task: CenterTaskView; live: MigrationLive | null; history: string | undefined }) {
  const t = props.task;
  const m = props.live;
  const result = obj(t.result);
  const current = m?.last?.phase ?? (t.state === 'queued' ? null : 'prepare');
  const seen = new Set(m?.phases ?? []);
  if (t.state === 'succeeded') for (const [p] of PHASES) seen.add(p);
  const rounds = m?.rounds ?? [];
  const xs = rounds.map((r) => r.round);
  const engine = m?.finished?.engineDowntimeMs ?? numOr(result.engineDowntimeMs);
  const guest = m?.finished?.guestDowntimeMs ?? numOr(result.guestDowntimeMs);
  const total = m?.finished?.totalMs ?? numOr(result.totalMs);
  const breakdown = m?.finished?.switchoverMs ?? numbers(result.switchoverMs);
  const outcome = m?.finished?.outcome ?? (FINISHED.has(t.state) ? t.state : null);
  const ended = FINISHED.has(t.state);
  return (
    <section aria-label="live migration" class="migration" data-outcome={outcome ?? 'running'}>
      <h2>Migration {m?.from ?? text(obj(t.plan).source)} → {m?.to ?? text(obj(t.plan).target)}</h2>
      <ol class="timeline" aria-label="phases">
        {PHASES.map(([p, label]) => {
          const state = current === p && !ended ? 'current' : seen.has(p) ? 'done' : 'pending';
          return <li key={p} class={`phase phase-${state}`} data-phase={p} data-state={state} aria-current={state === 'current' ? 'step' : undefined}>
            {label}{p === 'precopy' && m?.last !== null && m !== null ? ` (round ${m.last?.round ?? 0})` : ''}
          </li>;
        })}
      </ol>
      {outcome !== null && <p class={`outcome outcome-${outcome}`} role="status" data-testid="migration-outcome">Migration {outcome}</p>}
      <Kv rows={[
        ['Sent', bytes(m?.last?.sentBytes ?? numOr(result.transferredBytes))],
        ['This round', m?.last ? `${bytes(m.last.roundSentBytes)} of ${bytes(m.last.roundTotalBytes)}` : '—'],
        ['Estimated time left', ended ? '—' : ms(m?.last?.etaMs ?? null)],
        ['Throughput', rate(m?.last?.throughputBytesPerSec)], ['Dirty rate', rate(m?.last?.dirtyRateBytesPerSec)],
        ['Throttle', m?.last ? `${(m.last.throttlePermille / 10).toFixed(1)}%` : '—'],
      ]} compact />
      {ended && (
        <section aria-label="downtime" class="downtime">
          <h3>Downtime</h3>
          <Kv rows={[
            ['As the engine measured it', <span data-testid="engine-downtime">{ms(engine)}</span>],
            ['As the guest saw it', <span data-testid="guest-downtime">{ms(guest)}</span>],
            ['Total time', ms(total)],
            ...(breakdown !== null
              ? Object.entries(breakdown).map(([k, v]) => [`of which ${PART_LABELS[k] ?? k.replace(/Ms$/, '')}`, <span data-testid={`downtime-${k}`}>{ms(v)}</span>] as const)
              : [['Breakdown', <span class="muted">none recorded (the switch-over did not finish)</span>] as const]),
          ]} compact />
        </section>
      )}
      {rounds.length > 0 ? (
        <div class="charts">
          <RoundChart title="Bytes sent" label="sent" xs={xs} ys={rounds.map((r) => r.roundSentBytes)} format={bytes} color="#0b5cad" />
          <RoundChart title="Dirty bytes" label="dirty" xs={xs} ys={rounds.map((r) => r.dirtyBytes)} format={bytes} color="#b3261e" />
          <RoundChart title="Dirty rate" label="dirty rate" xs={xs} ys={rounds.map((r) => r.dirtyRateBytesPerSec)} format={rate} color="#8a5300" />
          <RoundChart title="Throughput" label="throughput" xs={xs} ys={rounds.map((r) => r.throughputBytesPerSec)} format={rate} color="#1e7b34" />
          <RoundChart title="Throttle" label="throttle" xs={xs} ys={rounds.map((r) => r.throttlePermille / 10)} format={(v) => `${v.toFixed(0)}%`} color="#6b3fa0" />
        </div>
      ) : <p class="muted">{ended ? `No round was recorded${props.history !== undefined && props.history !== 'done' ? ` (${props.history})` : ''}.` : 'Waiting for the first round…'}</p>}
    </section>
  );
}

function CopyView(props: { task: CenterTaskView; live: CopyLive | null }) {
  const c = props.live;
  const result = obj(props.task.result);
  const segments = Array.isArray(result.segments) ? result.segments.map(obj) : [];
  return (
    <section aria-label="copy" class="copy">
      <h2>Copy {text(result.from)} {result.to !== undefined ? `→ ${text(result.to)}` : ''}</h2>
      <Kv rows={[
        ['Copied', c ? `${bytes(c.doneBytes)} of ${bytes(c.totalBytes)}` : bytes(numOr(result.totalBytes))], ['Rate', rate(c?.rateBytesPerSec)],
        ['Estimated time left', ms(c?.etaMs ?? null)], ['On host', c?.host ?? '—'], ['Verified', typeof result.verified === 'boolean' ? (result.verified ? 'yes: digests match' : 'NO') : '—'],
      ]} />
      {props.task.state === 'running' && (
        <div class="actions"><Action label="Hand off to another host" run={async () => { await api.moveTask(props.task.id); }} /></div>
      )}
      <h3>Hosts that copied (hand-offs)</h3>
      {segments.length > 0 ? (
        <div class="table-wrap"><table aria-label="segments">
          <thead><tr><th scope="col">Host</th><th scope="col">From</th><th scope="col">To</th><th scope="col">Sent</th></tr></thead>
          <tbody>{segments.map((s, i) => <tr key={i} data-segment-host={text(s.host)}><td>{text(s.host)}</td><td>{boundary(s.from)}</td><td>{boundary(s.to)}</td><td>{bytes(numOr(s.sentBytes))}</td></tr>)}</tbody>
        </table></div>
      ) : (
        <ol aria-label="parts">{(c?.parts ?? []).map((p) => <li key={p.epoch} data-part-host={p.host}>part {p.epoch} on <strong>{p.host}</strong>{p.reason !== null ? ` (handed off: ${p.reason})` : ''} from {boundary(p.boundary)}</li>)}</ol>
      )}
    </section>
  );
}

function PrepareView(props: { task: CenterTaskView; fleet: Fleet }) {
  const r = obj(props.task.result);
  const seeds = Array.isArray(r.seeds) ? r.seeds.map(obj) : [];
  const copyTaskId = numOr(r.copyTaskId);
  const snap = obj(r.snapshot);
  return (
    <section aria-label="cross-site preparation">
      <h2>Preparation for site {text(obj(props.task.params).toSite ?? r.toSite)}</h2>
      <Kv rows={[
        ['Seeds datastore', r.datastore === undefined ? '—' : `${text(r.datastore)} (${text(r.datastoreId)})`],
        ['Snapshot top', snap.top === undefined ? '—' : <code>{text(snap.top)}</code>], ['Copied', bytes(numOr(r.copiedBytes))],
        ['Copy task', copyTaskId === null ? '—' : <a href={`#/task/${copyTaskId}`}>#{copyTaskId}</a>],
      ]} />
      {seeds.length > 0 && (
        <div class="table-wrap"><table aria-label="seeds">
          <thead><tr><th scope="col">Seed (base first)</th><th scope="col">CID</th><th scope="col">Digest</th><th scope="col">Size</th></tr></thead>
          <tbody>{seeds.map((s) => <tr key={text(s.path)}><td><code>{text(s.path)}</code></td><td><code>{text(s.cid)}</code></td><td><code>{text(s.digest).slice(0, 16)}…</code></td><td>{bytes(numOr(s.fileBytes))}</td></tr>)}</tbody>
        </table></div>
      )}
      {copyTaskId !== null && props.fleet.copies.has(copyTaskId) && <CopyView task={props.fleet.tasks.get(copyTaskId) ?? props.task} live={props.fleet.copies.get(copyTaskId) ?? null} />}
    </section>
  );
}

/** The migrations an evacuation started (their requestedBy is this task). */
export function EvacuationView(props: { task: CenterTaskView; fleet: Fleet }) {
  const children = [...props.fleet.tasks.values()].filter((c) => c.requestedBy === `task:${props.task.id}`).sort((a, b) => a.id - b.id);
  return (
    <section aria-label="evacuation">
      <h2>Evacuation</h2>
      {children.length === 0 ? <p class="muted">No VM had to move (yet).</p> : (
        <ul>{children.map((c) => <li key={c.id}><a href={`#/task/${c.id}`}>#{c.id} {c.target}</a> <Badge state={c.state} /> {c.waitingReason !== null && !FINISHED.has(c.state) ? <span class="why">{c.waitingReason}</span> : <span class="muted">{c.phase}</span>}</li>)}</ul>
      )}
    </section>
  );
}
