/** Every task, newest first, live: filters, the reason a queued task waits, cancel. */
import { useState } from 'preact/hooks';
import * as api from './api.js';
import { useFleet } from './fleet.js';
import { Action, Badge, FINISHED, Progress } from './common.js';
import { when } from './format.js';

/** Rows drawn at most: the newest; the filters reach the rest. */
export const MAX_TASK_ROWS = 200;
const STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;

export function TasksPage(props: { kinds?: readonly string[]; title?: string }) {
  const f = useFleet();
  const [state, setState] = useState('');
  const [kind, setKind] = useState('');
  const [text, setText] = useState('');
  const all = [...f.tasks.values()].filter((t) => props.kinds === undefined || props.kinds.includes(t.kind)).sort((a, b) => b.id - a.id);
  const kinds = [...new Set(all.map((t) => t.kind))].sort();
  const shown = all.filter((t) => (state === '' || t.state === state) && (kind === '' || t.kind === kind) && (text === '' || t.target.includes(text) || String(t.id) === text));
  const title = props.title ?? 'Tasks';
  return (
    <section aria-labelledby="tasks-title">
      <h1 id="tasks-title">{title}</h1>
      <form class="filters" role="search" aria-label="filter tasks" onSubmit={(e) => { e.preventDefault(); }}>
        <label>State <select value={state} onChange={(e) => { setState(e.currentTarget.value); }}><option value="">any</option>{STATES.map((s) => <option key={s} value={s}>{s}</option>)}</select></label>
        <label>Kind <select value={kind} onChange={(e) => { setKind(e.currentTarget.value); }}><option value="">any</option>{kinds.map((k) => <option key={k} value={k}>{k}</option>)}</select></label>
        <label>Target or id <input type="search" value={text} onInput={(e) => { setText(e.currentTarget.value); }} placeholder="vm:demo" /></label>
      </form>
      <p class="muted">{shown.length} of {all.length} tasks{shown.length > MAX_TASK_ROWS ? `, the newest ${MAX_TASK_ROWS} shown` : ''}</p>
      <div class="table-wrap">
        <table aria-label={title}>
          <thead><tr><th scope="col">Task</th><th scope="col">Kind</th><th scope="col">Target</th><th scope="col">State</th><th scope="col">Phase or why it waits</th><th scope="col">Progress</th><th scope="col">Created</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
          <tbody>
            {shown.slice(0, MAX_TASK_ROWS).map((t) => (
              <tr key={t.id} data-task={t.id} data-kind={t.kind}>
                <td><a href={`#/task/${t.id}`}>#{t.id}</a></td><td>{t.kind}</td><td>{t.target}</td><td><Badge state={t.state} /></td>
                <td>{t.state === 'queued' && t.waitingReason !== null ? <span class="why">waits: {t.waitingReason}</span> : t.error !== null ? <span class="error">{t.error.message}</span> : t.phase}</td>
                <td><Progress value={f.progressOf(t)} label={`task ${t.id} progress`} /></td><td>{when(t.createdAtMs)}</td>
                <td>{!FINISHED.has(t.state) && <Action label={`Cancel task ${t.id}`} kind="danger" disabled={t.cancelRequested} run={async () => { await api.cancelTask(t.id); f.refresh(`task:${t.id}`); }}>Cancel</Action>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
