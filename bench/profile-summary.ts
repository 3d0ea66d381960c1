/**
 * Self time by function of V8 CPU profiles (`.cpuprofile` files, e.g. from FERRY_HOST_NODE_ARGS="--cpu-prof
 * --cpu-prof-dir=DIR" npm run bench:migrate): `node dist/bench/profile-summary.js DIR [top]`. One table per
 * file (each thread of each host writes its own), the top functions by self time with their share.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';

interface ProfileNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }
interface Profile { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }

/** Rows shown per profile unless asked otherwise. */
const DEFAULT_TOP = 15;

async function summarize(file: string, top: number): Promise<string> {
  const p = JSON.parse(await readFile(file, 'utf8')) as Profile;
  const byNode = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<string, number>();
  for (const [i, id] of p.samples.entries()) {
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

const [dir, topText] = process.argv.slice(2);
if (dir === undefined) { process.stderr.write('usage: node dist/bench/profile-summary.js DIR [top]\n'); process.exit(2); }
const top = topText !== undefined ? Number(topText) : DEFAULT_TOP;
for (const f of (await readdir(dir)).filter((x) => x.endsWith('.cpuprofile')).sort()) process.stdout.write(`${await summarize(join(dir, f), top)}\n\n`);
