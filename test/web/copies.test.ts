/**
 * The copy view in Chromium: a network file copy through a center (in-process, SQLite) by real host
 * processes mounting shared temporary datastores, rate-capped so it runs for a few seconds. The copy's
 * view shows it live on its first host; "Hand off to another host" moves it; the view shows the second
 * part on the other host, and at the end the segments each host copied, verified. The copies page
 * lists it. Then with one host in maintenance, entering maintenance on the other while it copies stays
 * entering-maintenance, and the hosts page says which copy holds it; cancelled from the task list, and
 * both hosts exit maintenance by click. Every wait is on visible state and bounded; hosts, center, browser and files go at the end.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Browser, Page } from 'playwright-core';
import { MiB } from '../../src/lib/units.js';
import { startTestCenter, type TestCenter } from '../helpers/center.js';
import { removeHostData, stopHost, type TestHost } from '../helpers/hosts.js';
import { COPY_TASK_TIMEOUT_MS, copyDirs, startCopyHost, writeSourceFiles, type CopyDirs, type CopyResult } from '../helpers/copy-fleet.js';
import { launchChromium, logIn, newUiContext, screenshot } from '../helpers/browser.js';

/** 12 MiB at 2 MiB/s: about 6 s, long enough to hand it off while it runs. */
const FILE = { path: 'disk.img', sizeBytes: 12 * MiB, holeBytes: 2 * MiB };
/** A second file (a copy never overwrites one): copied at the slowest cap while its host drains. */
const HELD_FILE = { path: 'held.img', sizeBytes: 12 * MiB };
const RATE = 2 * MiB;
/** The slowest cap (MIN_RATE_BYTES_PER_SEC): the copy is surely still running while the host drains. */
const MIN_RATE = MiB;
/** A part under way on its host, seen by the page, on a loaded machine. */
const PART_WAIT_MS = 30_000;

describe('web UI: a copy and its hand-off, live (Chromium)', () => {
  let tc: TestCenter;
  let fs: CopyDirs;
  const hosts: TestHost[] = [];
  let browser: Browser | null = null;
  let page: Page;
  const shots = process.env.FERRY_UI_SCREENSHOTS ?? null;

  before(async () => {
    tc = await startTestCenter({ taskLeaseMs: 3000, heartbeatIntervalMs: 500, missedHeartbeats: 40 });
    fs = await copyDirs(['src', 'dst']);
    await writeSourceFiles(fs.dir('src'), [FILE, HELD_FILE]);
    const shared = new Map([['src', fs.dir('src')], ['dst', fs.dir('dst')]]);
    for (const name of ['ca', 'cb']) hosts.push(await startCopyHost(tc.admin, (t) => tc.hostArgs(t), name, shared, await tc.center.store.latestEventId()));
    browser = await launchChromium();
    page = await (await newUiContext(browser)).newPage();
  });
  after(async () => {
    await browser?.close().catch(() => undefined);
    for (const h of hosts) { await stopHost(h, 'SIGKILL').catch(() => undefined); await removeHostData(h); }
    await tc.close();
    await fs.remove();
  });

  it('shows the copy on its host, hands it off by click, and ends with both hosts\' segments, verified', async () => {
    await logIn(page, tc.url, tc.center.adminToken);
    const task = await tc.admin.copy({ files: [FILE.path], from: 'src', to: 'dst', via: 'ca', rateBytesPerSec: RATE });
    await page.goto(`${tc.url}/#/task/${task.id}`);
    await page.locator('[aria-label="parts"] li[data-part-host="ca"]').waitFor({ timeout: PART_WAIT_MS });
    await page.getByRole('button', { name: 'Hand off to another host' }).click();
    await page.locator('[aria-label="parts"] li[data-part-host="cb"]').waitFor({ timeout: PART_WAIT_MS });
    if (shots !== null) await screenshot(page, shots, '9-copy-handoff');
    await page.locator('h1 .badge[data-state="succeeded"]').waitFor({ timeout: COPY_TASK_TIMEOUT_MS });
    for (const h of ['ca', 'cb']) await page.locator(`table[aria-label="segments"] tr[data-segment-host="${h}"]`).waitFor();
    await page.getByText('yes: digests match').waitFor();
    const r = (await tc.admin.task(task.id)).result as CopyResult;
    assert.deepEqual([r.verified, r.handoffs, r.segments.map((s) => s.host)], [true, 1, ['ca', 'cb']]);

    await page.getByRole('link', { name: 'Copies' }).click();
    await page.locator(`tr[data-task="${task.id}"] .badge[data-state="succeeded"]`).waitFor();
  });

  it('a host whose copy no other host can take stays entering-maintenance, and the hosts page says why; cancel from the task list', async () => {
    await page.goto(`${tc.url}/#/hosts`);
    // ca out of service first: then cb's copy has nowhere to go.
    await page.locator('article[data-host="ca"]').getByRole('button', { name: 'Enter maintenance' }).click();
    await page.locator('article[data-host="ca"][data-state="in-maintenance"]').waitFor();
    const task = await tc.admin.copy({ files: [HELD_FILE.path], from: 'src', to: 'dst', via: 'cb', rateBytesPerSec: MIN_RATE });
    await page.goto(`${tc.url}/#/task/${task.id}`);
    await page.locator('[aria-label="parts"] li[data-part-host="cb"]').waitFor({ timeout: PART_WAIT_MS });
    await page.getByRole('link', { name: 'Hosts' }).click();
    const cb = page.locator('article[data-host="cb"]');
    await cb.getByRole('button', { name: 'Enter maintenance' }).click();
    await cb.locator('.error', { hasText: /Did not finish: host cb stays entering-maintenance: 1 copy task\(s\) cannot hand off/ }).waitFor({ timeout: PART_WAIT_MS });
    assert.equal(await cb.getAttribute('data-state'), 'entering-maintenance');
    if (shots !== null) await screenshot(page, shots, '10-maintenance-blocked');

    await page.getByRole('link', { name: 'Tasks' }).click();
    await page.locator(`tr[data-task="${task.id}"]`).getByRole('button', { name: 'Cancel' }).click();
    await page.locator(`tr[data-task="${task.id}"] .badge[data-state="cancelled"]`).waitFor({ timeout: PART_WAIT_MS });
    await page.getByRole('link', { name: 'Hosts' }).click();
    for (const h of ['ca', 'cb']) {
      await page.locator(`article[data-host="${h}"]`).getByRole('button', { name: 'Exit maintenance' }).click();
      await page.locator(`article[data-host="${h}"][data-state="connected"]`).waitFor();
    }
  });
});

