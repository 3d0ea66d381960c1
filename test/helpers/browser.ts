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
