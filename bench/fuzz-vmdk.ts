/**
 * The long VMDK fuzz run (npm test runs 400 cases; this runs many more):
 *   npm run fuzz:vmdk -- [cases=20000] [seed=1]
 * Prints the outcome counts; exits 1 at the first outcome that is not success or a FerryError.
 */
import { buildCorpus, fuzzOne, type FuzzOutcome } from '../test/helpers/vmdk-fuzz.js';
import { withTempDir } from '../test/helpers/vmdk.js';

const DEFAULT_CASES = 20_000;
const REPORT_EVERY = 1000;

const cases = Number(process.argv[2] ?? DEFAULT_CASES);
const firstSeed = Number(process.argv[3] ?? 1);

await withTempDir(async (dir) => {
  const corpus = await buildCorpus(dir);
  const targets = [...corpus.keys()];
  const outcome: FuzzOutcome = { ok: 0, refused: new Map() };
  const started = Date.now();
  for (let i = 0; i < cases; i++) {
    const seed = firstSeed + i;
    await fuzzOne(corpus, targets[seed % targets.length] as string, seed, outcome);
    if ((i + 1) % REPORT_EVERY === 0) console.log(`${i + 1} cases, ${((Date.now() - started) / 1000).toFixed(1)} s, ok ${outcome.ok}, refused ${JSON.stringify(Object.fromEntries(outcome.refused))}`);
  }
  console.log(JSON.stringify({ cases, seconds: (Date.now() - started) / 1000, ok: outcome.ok, refused: Object.fromEntries(outcome.refused) }));
});
