/** The UI's shell: navigation, the event stream's state, and the page the location's hash names. */
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { fleet, useFleet } from './fleet.js';
import { token, relogin } from './api.js';
import { Inventory } from './inventory.js';
import { VmPage } from './vm.js';
import { TaskPage } from './task.js';
import { TasksPage } from './tasks.js';
import { HostsPage } from './hosts.js';
import './styles.css';

const COPY_KINDS = ['copy', 'vm.prepare-migration'] as const;

function useHash(): string {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = (): void => { setHash(location.hash); };
    addEventListener('hashchange', on);
    return () => { removeEventListener('hashchange', on); };
  }, []);
  return hash;
}

function Page(props: { hash: string }) {
  const parts = props.hash.replace(/^#\/?/, '').split('/').map((p) => decodeURIComponent(p));
  const [what, arg] = parts;
  if (what === 'vm' && arg !== undefined) return <VmPage name={arg} />;
  if (what === 'task' && arg !== undefined) return <TaskPage id={Number(arg)} />;
  if (what === 'tasks') return <TasksPage />;
  if (what === 'hosts') return <HostsPage focus={arg ?? null} />;
  if (what === 'copies') return <TasksPage kinds={COPY_KINDS} title="Copies and cross-site preparations" />;
  return <Inventory />;
}

const NAV = [['#/', 'Inventory'], ['#/hosts', 'Hosts'], ['#/tasks', 'Tasks'], ['#/copies', 'Copies']] as const;

function App() {
  const f = useFleet();
  const hash = useHash();
  const section = hash.replace(/^#\/?/, '').split('/')[0] ?? '';
  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header class="top">
        <span class="brand">Ferry</span>
        <nav aria-label="main">
          {NAV.map(([href, label]) => {
            const here = href.slice(2) === section || (href === '#/' && section === '');
            return <a key={href} href={href} aria-current={here ? 'page' : undefined}>{label}</a>;
          })}
        </nav>
        <span id="stream-status" role="status" data-status={f.status} data-refetches={f.refetches} title={f.statusWhy ?? ''}>
          {f.status === 'live' ? '● live' : f.status === 'connecting' ? '○ connecting…' : `○ reconnecting (${f.statusWhy ?? ''})`}
        </span>
        <a href="/ui/logout" class="logout">Log out</a>
      </header>
      {f.error !== null && <p class="error banner" role="alert">{f.error}</p>}
      <main id="main" tabIndex={-1}><Page hash={hash} /></main>
    </>
  );
}

if (token() === null) relogin('log in to use the UI in this tab');
fleet.start();
const root = document.getElementById('app');
if (root !== null) render(<App />, root);
