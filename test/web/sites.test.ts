/**
 * The web UI's cross-site views in Chromium against `ferry up --sites 2` (a center, a host on site-a and
 * one on site-b, each site with its own datastore, the demo VM with a small disk on site-a's): the ready
 * text names the UI's URL; the inventory shows each datastore's space; the VM page shows the disk chain its host has (top first, with CIDs); the
 * migrate dialog offers "Any host of site site-b"; a `vm.prepare-migration` started through the API shows
 * its progress on its task page and, when done, the seeds' CIDs — the CIDs the VM page's chain, read
 * again on the task's changes, now shows below its new top.
 *
 * Every wait is on visible state and bounded; the browser, the fleet and the temp files go at the end,
 * also on failure.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { CenterClient } from '../../src/api/center-client.js';
import { prepareMigrationResultSchema } from '../../src/api/center-v1.js';
import { startFerry } from '../helpers/cli.js';
import { launchChromium, logIn, newUiContext, upReady, childPids, stopUp, RECORD_PROGRESS } from '../helpers/browser.js';

const UP_LIFETIME_MS = 120_000;
/** The preparation of the demo VM's small disk (snapshot, copy of its base to site-b, seed record). */
const PREPARE_WAIT_MS = 30_000;

describe('web UI: cross-site views in Chromium against ferry up --sites 2', () => {
  let dir = '';
  let up: ReturnType<typeof startFerry> | null = null;
  let children: number[] = [];
  let browser: Browser | null = null;
  let page: Page;
  let url = '';
  let client: CenterClient | null = null;
  const api = (): CenterClient => { assert.ok(client !== null); return client; };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-web-sites-'));
    const dataDir = join(dir, 'fleet');
    up = startFerry(['up', '--sites', '2', '--listen', '127.0.0.1:0', '--data-dir', dataDir], { env: { FERRY_CONFIG: join(dir, 'config.json'), FERRY_CENTER_TOKEN: '' }, timeoutMs: UP_LIFETIME_MS });
    const ready = await upReady(up);
    url = ready.url;
    children = await childPids(up.child.pid ?? 0);
    const token = (await readFile(ready.tokenFile, 'utf8')).trim();
    client = new CenterClient(url, token, { caPem: await readFile(join(dataDir, 'center-ca.pem'), 'utf8') });
    browser = await launchChromium();
    page = await (await newUiContext(browser)).newPage();
    await logIn(page, url, token);
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await client?.close().catch(() => undefined);
    await stopUp(up, children);
    if (dir !== '') await rm(dir, { recursive: true, force: true });
  });

  it('ferry up\'s ready text names the UI\'s URL', () => {
    assert.ok(up !== null);
    assert.ok(up.stdout().includes(`  web UI   ${url}/ `), up.stdout());
  });

  it('the inventory shows each datastore\'s space as its host reports it', async () => {
    await page.goto(`${url}/#/`);
    for (const h of (await api().listHosts()).hosts) {
      for (const d of (await api().host(h.name)).datastores) {
        assert.ok(d.freeBytes !== null && d.capacityBytes !== null, `${h.name} reported ${d.mountName}'s space`);
        await page.locator(`tr[data-datastore="${d.id}"] li[data-space-host="${h.name}"]`).filter({ hasText: / free of / }).waitFor();
      }
    }
  });

  it('the VM page shows the disk chain its host has, top first with its CID; the migrate dialog offers any host of site-b', async () => {
    const chain = await api().vmDiskChain('demo');
    const top = chain.chain[0];
    assert.ok(top !== undefined);
    await page.goto(`${url}/#/vm/demo`);
    const row = page.locator(`table[aria-label="disk chain, top first"] tr[data-chain-path="${top.path}"][data-role="top"]`);
    await row.getByText(top.cid, { exact: true }).waitFor();
    await page.getByRole('button', { name: 'Migrate…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByRole('radio', { name: /Any host of site site-b/ }).waitFor();
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
  });

  it('a prepare-migration shows its progress and, when done, the seeds\' CIDs; the VM page\'s chain follows its snapshot', async () => {
    await page.goto(`${url}/#/vm/demo`);
    await page.locator('table[aria-label="disk chain, top first"] tr[data-role="top"]').waitFor();
    const task = await api().prepareMigration('demo', { toSite: 'site-b' });
    // The VM page, left open, reads the chain again as the task changes: the snapshot appears below a new top.
    await page.locator('table[aria-label="disk chain, top first"] tr[data-role="snapshot"]').first().waitFor({ timeout: PREPARE_WAIT_MS });
    await page.goto(`${url}/#/task/${task.id}`);
    await page.locator('#task-title').filter({ hasText: `Task #${task.id} vm.prepare-migration` }).waitFor();
    await page.evaluate(RECORD_PROGRESS);
    await page.locator('#task-title .badge[data-state="succeeded"]').waitFor({ timeout: PREPARE_WAIT_MS });
    const done = await api().task(task.id);
    const seeds = prepareMigrationResultSchema.parse(done.result).seeds;
    assert.ok(seeds.length >= 1);
    const table = page.locator('table[aria-label="seeds"]');
    for (const s of seeds) await table.locator('tr', { hasText: s.path }).getByText(s.cid, { exact: true }).waitFor();
    await page.locator('.facts .progress-text', { hasText: '100%' }).waitFor();
    const seen = await page.evaluate<number[]>('window.seenProgress');
    for (let i = 1; i < seen.length; i++) assert.ok((seen[i] ?? 0) >= (seen[i - 1] ?? 0), `progress ran backwards: ${seen.join(', ')}`);
    // The VM page's chain: the seeds are its bases, with the same CIDs.
    await page.goto(`${url}/#/vm/demo`);
    for (const s of seeds) await page.locator(`table[aria-label="disk chain, top first"] tr[data-role="snapshot"]`).getByText(s.cid, { exact: true }).first().waitFor();
  });
});
