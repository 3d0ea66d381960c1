/**
 * The web UI's browser tests drive Debian's Chromium (scripts/system-packages.sh installs it) with
 * playwright-core: never a downloaded browser. The center's certificate is signed by its own CA, which
 * the browser does not know, so the test context ignores certificate errors (what a person does by
 * trusting the CA in their browser).
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { startFerry } from './cli.js';

export const CHROMIUM_PATH = '/usr/bin/chromium';
/** A page's wait for something a person would see, on a loaded 2-core machine. */
export const UI_WAIT_MS = 20_000;
export const DESKTOP = { width: 1280, height: 800 } as const;
export const NARROW = { width: 390, height: 844 } as const;

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM_PATH)) throw new Error(`${CHROMIUM_PATH} is missing: run scripts/system-packages.sh as root (apt-get install chromium)`);
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: ['--headless', '--no-sandbox', '--disable-gpu'] });
}

export async function newUiContext(browser: Browser): Promise<BrowserContext> {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { ...DESKTOP } });
  ctx.setDefaultTimeout(UI_WAIT_MS);
  return ctx;
}

/** Screenshots of the main screens: into `dir` (FERRY_UI_SCREENSHOTS to keep them, else a temp dir). */
export async function screenshot(page: Page, dir: string, name: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = join(dir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  return file;
}

/** Logs in through the login page (the token goes to the tab's sessionStorage) and waits for the UI's stream. */
export async function logIn(page: Page, centerUrl: string, token: string): Promise<void> {
  await page.goto(`${centerUrl}/ui/login`);
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#stream-status[data-status="live"]').waitFor();
}

/** ferry up's start-up (a center, its hosts, the demo VM) on a loaded 2-core machine. */
export const UP_READY_TIMEOUT_MS = 60_000;

/** Waits for `ferry up`'s machine-readable ready line: the center's URL and its token file. */
export function upReady(up: ReturnType<typeof startFerry>, timeoutMs = UP_READY_TIMEOUT_MS): Promise<{ url: string; tokenFile: string }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`ferry up not ready within ${timeoutMs} ms:\n${up.stdout()}\n${up.stderr()}`)); }, timeoutMs);
    const check = (): void => {
      const m = /ferry up ready url=(\S+) token-file=(\S+) /.exec(up.stdout());
      if (m === null) return;
      clearTimeout(timer);
      up.child.stdout?.off('data', check);
      resolve({ url: m[1] ?? '', tokenFile: m[2] ?? '' });
    };
    up.child.stdout?.on('data', check);
    up.child.once('exit', () => { clearTimeout(timer); reject(new Error(`ferry up exited before it was ready:\n${up.stdout()}\n${up.stderr()}`)); });
    check();
  });
}

/** The center's and hosts' pids (ferry up's children), killed at the end should ferry up leave them. */
export async function childPids(pid: number): Promise<number[]> {
  const { stdout } = await promisify(execFile)('ps', ['-o', 'pid=', '--ppid', String(pid)]);
  return stdout.split('\n').map((l) => Number(l.trim())).filter((n) => n > 0);
}

/** How long `ferry up` gets to save its demo fleet after SIGTERM before it is killed. */
export const UP_STOP_TIMEOUT_MS = 30_000;

/**
 * Stops a `ferry up` (SIGTERM, SIGKILL after UP_STOP_TIMEOUT_MS) and then kills any of its children
 * (`childPids` taken at start) that it left behind.
 */
export async function stopUp(up: ReturnType<typeof startFerry> | null, children: readonly number[]): Promise<void> {
  if (up !== null) {
    up.child.kill('SIGTERM');
    const timer = setTimeout(() => { up.child.kill('SIGKILL'); }, UP_STOP_TIMEOUT_MS);
    await up.done;
    clearTimeout(timer);
  }
  for (const pid of children) { try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ } }
}

/** Runs in the page (this file compiles without DOM types): records every percentage the task's bar shows. */
export const RECORD_PROGRESS = `(() => {
  const seen = [];
  window.seenProgress = seen;
  const read = () => { const t = document.querySelector('.facts .progress-text'); if (t && t.textContent) seen.push(Number(t.textContent.replace('%', ''))); };
  new MutationObserver(read).observe(document.body, { subtree: true, childList: true, characterData: true });
  read();
})()`;
