/** Small pieces every page uses: state badges, progress bars, action buttons that say what went wrong. */
import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { percent } from './format.js';

export function Badge(props: { state: string }) {
  return <span class={`badge badge-${props.state}`} data-state={props.state}>{props.state}</span>;
}

export function Progress(props: { value: number; label: string }) {
  return (
    <span class="progress">
      <progress max={1} value={props.value} aria-label={props.label} />
      <span class="progress-text">{percent(props.value)}</span>
    </span>
  );
}

/** A button that runs an action, is disabled while it runs, and shows its error next to it. */
export function Action(props: { label: string; run: () => Promise<unknown>; disabled?: boolean; kind?: 'primary' | 'danger'; children?: ComponentChildren }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const click = async (): Promise<void> => {
    setBusy(true);
    setError(null);
    try { await props.run(); } catch (err) { setError(err instanceof Error ? err.message : String(err)); } finally { setBusy(false); }
  };
  return (
    <span class="action">
      <button type="button" class={props.kind ?? ''} disabled={busy || props.disabled === true} onClick={() => { void click(); }}>{props.children ?? props.label}</button>
      {error !== null && <span class="error" role="alert">{error}</span>}
    </span>
  );
}

export const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);

export function Kv(props: { rows: readonly (readonly [string, ComponentChildren])[]; compact?: boolean }) {
  // compact: the pairs flow in rows (a live view keeps its charts above the fold at 1280×800).
  if (props.compact === true) return <dl class="facts">{props.rows.map(([k, v]) => <div key={k}><dt>{k}</dt><dd>{v}</dd></div>)}</dl>;
  return <dl class="kv">{props.rows.map(([k, v]) => [<dt key={`${k}-k`}>{k}</dt>, <dd key={`${k}-v`}>{v}</dd>])}</dl>;
}
