/**
 * Failpoints: named places where a test can make a real Ferry process misbehave on purpose — hang,
 * pause, crash (SIGKILL itself) or drop a connection — to prove the failure handling around them.
 * They are configured only through the FERRY_FAILPOINTS environment variable of that process,
 * e.g. `FERRY_FAILPOINTS="target.prepare=delay:2000,target.commit=crash"`, and cost one Map lookup
 * when unset. Production code paths never set them.
 *
 * Actions: `delay:<ms>` (wait, then continue), `hang` (never continue), `crash` (SIGKILL this
 * process), `error` (throw), `drop:<n>` (true on the n-th hit: the caller drops its connection).
 *
 * Every hit is announced on stderr (`failpoint <name> hit: <action>`) before it acts, so a test
 * waits for that line — the proof that the fault landed where it names — instead of sleeping.
 */
import { writeSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from './errors.js';

export const FAILPOINTS_ENV = 'FERRY_FAILPOINTS';

type Action = { kind: 'delay'; ms: number } | { kind: 'hang' } | { kind: 'crash' } | { kind: 'error' } | { kind: 'drop'; nth: number };

function parse(spec: string | undefined): Map<string, Action> {
  const out = new Map<string, Action>();
  if (spec === undefined || spec.trim() === '') return out;
  for (const item of spec.split(',')) {
    const [name, action] = item.split('=').map((x) => x.trim());
    const [kind, arg] = (action ?? '').split(':');
    if (name === undefined || name === '') continue;
    if (kind === 'delay') out.set(name, { kind, ms: Number(arg) });
    else if (kind === 'drop') out.set(name, { kind, nth: Number(arg ?? '1') });
    else if (kind === 'hang' || kind === 'crash' || kind === 'error') out.set(name, { kind });
    else throw new FerryError('INVALID_ARGUMENT', `${FAILPOINTS_ENV}: unknown action "${action ?? ''}" for ${name}`);
  }
  return out;
}

const points = parse(process.env[FAILPOINTS_ENV]);
const hits = new Map<string, number>();

/** Runs the failpoint `name` if configured: may delay, hang, crash the process or throw. */
export async function failpoint(name: string): Promise<void> {
  const action = points.get(name);
  if (action === undefined) return;
  announce(name, action.kind);
  switch (action.kind) {
    case 'delay': await sleep(action.ms); return;
    case 'hang': await new Promise<never>(() => undefined); return;
    case 'crash': process.kill(process.pid, 'SIGKILL'); await new Promise<never>(() => undefined); return;
    case 'error': throw new FerryError('INTERNAL', `failpoint ${name}`);
    case 'drop': return;
  }
}

/** True when the `drop:<n>` failpoint `name` fires on this hit (the n-th). */
export function failpointDrop(name: string): boolean {
  const action = points.get(name);
  if (action?.kind !== 'drop') return false;
  const n = (hits.get(name) ?? 0) + 1;
  hits.set(name, n);
  if (n !== action.nth) return false;
  announce(name, 'drop');
  return true;
}

/** The line a test waits for. Written synchronously: a `crash` must not lose it. */
export function failpointHitLine(name: string, kind: string): string {
  return `failpoint ${name} hit: ${kind}`;
}

function announce(name: string, kind: string): void {
  writeSync(2, `${failpointHitLine(name, kind)}\n`);
}
