/**
 * The web UI in a real browser (Debian's Chromium through playwright-core) against a real fleet:
 * `ferry up` as a child process (a center and two hosts, each a process, and the demo VM) on a temp
 * data directory. Log in (a bad token is refused with its reason), see the inventory, open the demo
 * VM and its console, enter maintenance on the other host (the migrate dialog then refuses it and
 * says why), exit it, migrate the VM by clicking and watch the live view reach "succeeded" with its
 * round charts drawn, the downtime (engine, guest, and each part of the switch-over) shown and its
 * progress never running backwards, cancel a slow migration and see the
 * VM still running on its source, and after the event stream breaks and comes back, see what the API
 * says, not what was shown before. Screenshots of the main screens are saved (FERRY_UI_SCREENSHOTS
 * keeps them in that directory; else a temp directory, removed).
 *
 * Every wait is on visible state and bounded; the browser, the fleet and the temp files go at the
 * end, also on failure.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { CenterClient } from '../../src/api/center-client.js';
import { startFerry } from '../helpers/cli.js';
import { NARROW, DESKTOP, launchChromium, newUiContext, upReady, childPids, stopUp, screenshot, RECORD_PROGRESS } from '../helpers/browser.js';

const UP_LIFETIME_MS = 170_000;
/** A migration at 16 MiB/s of the 64 MiB demo VM, with its rounds, on a loaded machine. */
const MIGRATION_WAIT_MS = 40_000;
/** Slow enough that the migration is surely still in pre-copy when the test cancels it (64 MiB at 1 MiB/s). */
const SLOW_MIB_PER_SEC = '1';
const FAST_MIB_PER_SEC = '16';


interface Fleet { url: string; token: string; client: CenterClient; dataDir: string }

describe('web UI in Chromium against ferry up', () => {
  const dirs: string[] = [];
  let up: ReturnType<typeof startFerry> | null = null;
  let children: number[] = [];
  let browser: Browser | null = null;
  let ctx: BrowserContext;
  let page: Page;
  let fleet: Fleet;
  let shots: string;
  let source = '';
  let other = '';

  before(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-web-'));
    dirs.push(dir);
    shots = process.env.FERRY_UI_SCREENSHOTS ?? join(dir, 'screenshots');
    const dataDir = join(dir, 'fleet');
    up = startFerry(['up', '--hosts', '2', '--listen', '127.0.0.1:0', '--data-dir', dataDir], { env: { FERRY_CONFIG: join(dir, 'config.json'), FERRY_CENTER_TOKEN: '' }, timeoutMs: UP_LIFETIME_MS });
    const ready = await upReady(up);
    children = await childPids(up.child.pid ?? 0);
    const token = (await readFile(ready.tokenFile, 'utf8')).trim();
    const client = new CenterClient(ready.url, token, { caPem: await readFile(join(dataDir, 'center-ca.pem'), 'utf8') });
    fleet = { url: ready.url, token, client, dataDir };
    const demo = await client.vm('demo');
    source = demo.host ?? '';
    other = source === 'alpha' ? 'beta' : 'alpha';
    browser = await launchChromium();
    ctx = await newUiContext(browser);
    page = await ctx.newPage();
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await fleet?.client.close().catch(() => undefined);
    await stopUp(up, children);
    // FERRY_UI_SCREENSHOTS is outside these: kept.
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('serves only the login page without a session; a bad token is refused with its reason; a good one shows the inventory', async () => {
    const res = await page.goto(`${fleet.url}/`);
    assert.ok(res !== null);
    assert.match(page.url(), /\/ui\/login$/);
    await page.getByLabel('API token').fill('ferry-api-wrong');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').filter({ hasText: 'not logged in' }).waitFor();
    await screenshot(page, shots, '0-login');
    await page.getByLabel('API token').fill(fleet.token);
    await page.getByLabel('API token').press('Enter');
    await page.getByRole('heading', { name: 'Inventory' }).waitFor();
    await page.locator('#stream-status[data-status="live"]').waitFor();
    for (const h of ['alpha', 'beta']) await page.locator(`li.host[data-host="${h}"] .badge[data-state="connected"]`).first().waitFor();
    await page.locator(`li.host[data-host="${source}"] li[data-vm="demo"] .badge[data-state="running"]`).waitFor();
    await page.locator('table[aria-label="datastores"] td', { hasText: 'shared' }).first().waitFor();
    await screenshot(page, shots, '1-inventory');
  });

  it('opens the demo VM: state, host, configuration and its live console', async () => {
    await page.getByRole('link', { name: 'demo', exact: true }).click();
    await page.getByRole('heading', { name: /VM demo/ }).waitFor();
    assert.equal(await page.getByTestId('vm-host').textContent(), source);
    await page.getByLabel('console of demo').filter({ hasText: 'dirtier' }).waitFor();
    await screenshot(page, shots, '2-vm');
  });

  it('enters maintenance on a host; the migrate dialog then refuses that host and says why; exits maintenance', async () => {
    await page.getByRole('link', { name: 'Hosts' }).click();
    const card = page.locator(`article[data-host="${other}"]`);
    await card.getByRole('button', { name: 'Enter maintenance' }).click();
    await page.locator(`article[data-host="${other}"][data-state="in-maintenance"]`).waitFor();
    await card.locator('[data-task-state="succeeded"]').waitFor();
    await screenshot(page, shots, '3-hosts-maintenance');

    await page.goto(`${fleet.url}/#/vm/demo`);
    const migrate = page.getByRole('button', { name: 'Migrate…' });
    // By keyboard: focus, Enter opens the dialog, Escape closes it.
    await migrate.focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog');
    const refused = dialog.locator(`[data-target="${other}"].refused`);
    await refused.filter({ hasText: `host ${other} is in-maintenance` }).waitFor();
    assert.equal(await dialog.getByRole('radio', { name: new RegExp(`^ ?${other}`) }).isDisabled(), true);
    await screenshot(page, shots, '4-migrate-refused');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });

    await page.getByRole('link', { name: 'Hosts' }).click();
    await card.getByRole('button', { name: 'Exit maintenance' }).click();
    await page.locator(`article[data-host="${other}"][data-state="connected"]`).waitFor();
  });

  it('migrates the VM by clicking; the live view reaches "succeeded" with its round charts drawn; progress never runs backwards', async () => {
    await page.goto(`${fleet.url}/#/vm/demo`);
    await page.getByRole('button', { name: 'Migrate…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.locator(`[data-target="${other}"].ok`).waitFor();
    await dialog.getByRole('radio', { name: new RegExp(`^ ?${other}`) }).check();
    await dialog.getByLabel(/Bandwidth limit/).fill(FAST_MIB_PER_SEC);
    await dialog.getByRole('button', { name: 'Start migration' }).click();
    await page.locator('section.migration').waitFor();
    // Every percentage the task's bar shows, as the page draws it.
    await page.evaluate(RECORD_PROGRESS);
    await page.locator('[data-testid="migration-outcome"]', { hasText: 'succeeded' }).waitFor({ timeout: MIGRATION_WAIT_MS });
    await page.locator('li[data-phase="release"][data-state="done"]').waitFor();
    await page.getByTestId('engine-downtime').filter({ hasText: /\d/ }).waitFor();
    // Engine vs guest downtime, and where the engine's went: each part of the switch-over.
    await page.getByTestId('guest-downtime').filter({ hasText: /\d/ }).waitFor();
    for (const part of ['pauseMs', 'finalRoundMs', 'stateMs', 'commitMs']) await page.getByTestId(`downtime-${part}`).filter({ hasText: /\d/ }).waitFor();
    const charts = page.locator('figure.chart');
    assert.equal(await charts.count(), 5, 'bytes sent, dirty bytes, dirty rate, throughput, throttle');
    for (const i of [0, 1, 2, 3, 4]) {
      const fig = charts.nth(i);
      assert.ok(Number(await fig.getAttribute('data-points')) >= 1, `chart ${i} has points`);
      assert.equal(await fig.locator('canvas').count(), 1, `chart ${i} is drawn on a canvas`);
      assert.ok(await fig.locator('.u-series').count() >= 2, `chart ${i} has its uPlot series`);
    }
    const seen = await page.evaluate<number[]>('window.seenProgress');
    assert.ok(seen.length >= 1);
    for (let i = 1; i < seen.length; i++) assert.ok((seen[i] ?? 0) >= (seen[i - 1] ?? 0), `progress ran backwards: ${seen.join(', ')}`);
    await screenshot(page, shots, '5-migration-succeeded');
    // Opened again later (a reload), the view replays the rounds from the event log: the same charts.
    const points = await charts.first().getAttribute('data-points');
    await page.reload();
    await page.locator('[data-testid="migration-outcome"]', { hasText: 'succeeded' }).waitFor();
    await page.locator(`figure.chart[data-points="${points ?? ''}"]`).first().waitFor();
    assert.equal(await page.locator('figure.chart canvas').count(), 5);
    const vm = await fleet.client.vm('demo');
    assert.deepEqual([vm.host, vm.state], [other, 'running']);

    await page.getByRole('link', { name: 'Tasks' }).click();
    await page.getByLabel('Kind').selectOption('vm.migrate');
    await page.locator('tr[data-kind="vm.migrate"] .badge[data-state="succeeded"]').waitFor();
    assert.equal(await page.locator('tbody tr:not([data-kind="vm.migrate"])').count(), 0, 'the filter shows migrations only');
    await screenshot(page, shots, '6-tasks');
  });

  it('cancels a running migration from its live view: the VM stays running on its source', async () => {
    // The VM is on `other` now: migrate it back, slowly, and cancel in pre-copy.
    await page.goto(`${fleet.url}/#/vm/demo`);
    await page.getByRole('button', { name: 'Migrate…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByRole('radio', { name: new RegExp(`^ ?${source}`) }).check();
    await dialog.getByLabel(/Bandwidth limit/).fill(SLOW_MIB_PER_SEC);
    await dialog.getByRole('button', { name: 'Start migration' }).click();
    await page.locator('li[data-phase="precopy"][data-state="current"]').waitFor({ timeout: MIGRATION_WAIT_MS });
    await screenshot(page, shots, '7-migration-running');
    await page.getByRole('button', { name: 'Cancel task' }).click();
    await page.locator('h1 .badge[data-state="cancelled"]').waitFor({ timeout: MIGRATION_WAIT_MS });
    const vm = await fleet.client.vm('demo');
    assert.deepEqual([vm.host, vm.state], [other, 'running'], 'the VM runs where it ran before');
    await page.goto(`${fleet.url}/#/vm/demo`);
    await page.locator('h1 .badge[data-state="running"]').waitFor();
    assert.equal(await page.getByTestId('vm-host').textContent(), other);
  });

  it('reads well in a narrow window (no sideways scrolling of the page)', async () => {
    await page.setViewportSize({ ...NARROW });
    await page.goto(`${fleet.url}/#/`);
    await page.getByRole('heading', { name: 'Inventory' }).waitFor();
    const overflow = await page.evaluate<number>('document.documentElement.scrollWidth - window.innerWidth');
    assert.ok(overflow <= 1, `the page is ${overflow} px wider than the window`);
    await screenshot(page, shots, '8-narrow');
    await page.setViewportSize({ ...DESKTOP });
  });

  it('never shows stale state after the event stream breaks and comes back', async () => {
    await page.goto(`${fleet.url}/#/`);
    await page.locator('#stream-status[data-status="live"]').waitFor();
    await page.locator('li[data-vm="demo"] .badge[data-state="running"]').waitFor();
    const refetches = Number(await page.locator('#stream-status').getAttribute('data-refetches'));
    // The stream drops (the browser goes offline) and its reconnects are refused for a while.
    await page.route('**/api/v1/events**', (r) => r.abort());
    await ctx.setOffline(true);
    await page.locator('#stream-status[data-status="reconnecting"]').waitFor();
    // Meanwhile the fleet changes.
    const stop = await fleet.client.stopVm('demo');
    assert.equal((await fleet.client.waitForTask(stop.id, { timeoutMs: MIGRATION_WAIT_MS })).state, 'succeeded');
    assert.notEqual((await fleet.client.vm('demo')).state, 'running');
    await ctx.setOffline(false);
    assert.equal(await page.locator('li[data-vm="demo"] .badge').getAttribute('data-state'), 'running', 'still the old state while the stream is down');
    await page.unroute('**/api/v1/events**');
    await page.locator('#stream-status[data-status="live"]').waitFor();
    // What is shown is what the API says, VM by VM and host by host. A stopped VM's row may still move
    // on (its host's next heartbeat): the API is read again until the page shows what it says.
    await shownMatchesApi(page, fleet.client);
    assert.notEqual(await page.locator('li[data-vm="demo"] .badge').getAttribute('data-state'), 'running', 'the stop is shown');
    assert.ok(Number(await page.locator('#stream-status').getAttribute('data-refetches')) > refetches, 'everything was read again');
    const start = await fleet.client.startVm('demo');
    assert.equal((await fleet.client.waitForTask(start.id, { timeoutMs: MIGRATION_WAIT_MS })).state, 'succeeded');
    await page.locator('li[data-vm="demo"] .badge[data-state="running"]').waitFor();
  });
});

/** How long the page may take to show what the API says, and one look at it. */
const SETTLE_MS = 20_000;
const LOOK_MS = 2_000;

/** Waits (bounded) until every VM's and host's state on the inventory page is the API's, read twice the same around the look. */
async function shownMatchesApi(page: Page, client: CenterClient): Promise<void> {
  const deadline = performance.now() + SETTLE_MS;
  const states = async (): Promise<string> => JSON.stringify([(await client.listVms()).vms.map((v) => [v.name, v.state]), (await client.listHosts()).hosts.map((h) => [h.name, h.state])]);
  for (;;) {
    const before = await states();
    const [vms, hosts] = JSON.parse(before) as [[string, string][], [string, string][]];
    try {
      for (const [name, state] of vms) await page.locator(`li[data-vm="${name}"] .badge[data-state="${state}"]`).waitFor({ timeout: LOOK_MS });
      for (const [name, state] of hosts) await page.locator(`li.host[data-host="${name}"] > .badge[data-state="${state}"]`).waitFor({ timeout: LOOK_MS });
      if (await states() === before) return;
      if (performance.now() > deadline) throw new Error(`the API's states kept changing for ${SETTLE_MS} ms`);
    } catch (err) {
      if (performance.now() > deadline) throw new Error(`the page does not show what the API says (${before}): ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}
