/**
 * Self time by function of V8 CPU profiles (`.cpuprofile` files, e.g. from FERRY_HOST_NODE_ARGS="--cpu-prof
 * --cpu-prof-dir=DIR" npm run bench:migrate): `node dist/bench/profile-summary.js DIR [top]`. One table per
 * file (each thread of each host writes its own), the top functions by self time with their share.
 * `--window FROM-TO` (monotonic µs, as bench:migrate prints them) counts only the samples taken in it.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';

interface ProfileNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }
interface Profile { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }

/** Rows shown per profile unless asked otherwise. */
const DEFAULT_TOP = 15;

/** A span of the monotonic clock in µs (what V8 stamps samples with); everything when absent. */
interface Window { readonly fromUs: number; readonly toUs: number }

function parseWindow(text: string): Window {
  const m = /^(\d+)-(\d+)$/.exec(text);
  if (m === null) throw new Error(`--window wants FROM-TO in monotonic µs, got "${text}"`);
  return { fromUs: Number(m[1]), toUs: Number(m[2]) };
}

async function summarize(file: string, top: number, span: Window | null): Promise<string> {
  const p = JSON.parse(await readFile(file, 'utf8')) as Profile;
  const byNode = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<string, number>();
  let atUs = p.startTime;
  for (const [i, id] of p.samples.entries()) {
    atUs += p.timeDeltas[i] ?? 0;
    if (span !== null && (atUs < span.fromUs || atUs > span.toUs)) continue;
    const n = byNode.get(id);
    if (n === undefined) continue;
    const where = n.callFrame.url === '' ? '' : ` ${n.callFrame.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${n.callFrame.lineNumber + 1}`;
    const key = `${n.callFrame.functionName === '' ? '(anonymous)' : n.callFrame.functionName}${where}`;
    selfUs.set(key, (selfUs.get(key) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const rows = [...selfUs.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  const lines = rows.map(([k, us]) => `  ${(us / 1000).toFixed(0).padStart(7)} ms ${((100 * us) / Math.max(1, totalUs)).toFixed(1).padStart(5)}%  ${k}`);
  return [`${file}: ${(totalUs / 1000).toFixed(0)} ms sampled`, ...lines].join('\n');
}

const args = process.argv.slice(2);
const windowAt = args.indexOf('--window');
const span = windowAt >= 0 ? parseWindow(args.splice(windowAt, 2)[1] ?? '') : null;
const [dir, topText] = args;
if (dir === undefined) { process.stderr.write('usage: node dist/bench/profile-summary.js DIR [top] [--window FROM-TO]\n'); process.exit(2); }
const top = topText !== undefined ? Number(topText) : DEFAULT_TOP;
for (const f of (await readdir(dir)).filter((x) => x.endsWith('.cpuprofile')).sort()) process.stdout.write(`${await summarize(join(dir, f), top, span)}\n\n`);
