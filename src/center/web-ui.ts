/**
 * The web UI's server side (docs/design/web-ui.md): the center serves the single-page UI built at
 * install (`npm run build:web`, vite, into dist/web) to a browser that logged in with an API token.
 *
 * - GET /ui/login: the login page, the only thing served without a session.
 * - POST /ui/session (form or JSON `{ token }`): the token is checked by the center's own auth, then a
 *   session cookie (HttpOnly, Secure, SameSite=Strict) carries a random id mapped, in this process's
 *   memory only, to the token. Every page load checks the token again, so a revoked or expired token
 *   ends its sessions at once.
 * - GET /ui/logout: the session is forgotten, the cookie cleared.
 * - `/` (the UI) and /ui/assets/* only with a live session, else a redirect to the login page.
 *
 * The UI itself calls the REST API with the token as a bearer header (kept in sessionStorage): the API
 * stays bearer-only, and the cookie (SameSite=Strict) admits nothing but these static files.
 * Only files found in the build's directory are served, by exact name: no path from a request ever
 * reaches the file system, so there is nothing to traverse.
 */
import type { OpenAPIHono } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { getCookie, setCookie, deleteCookie } from 'hono/cookie';
import { randomBytes } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { extname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import type { CenterAuth } from './auth.js';

export const WEB_UI_LOGIN_PATH = '/ui/login';
export const WEB_UI_SESSION_PATH = '/ui/session';
export const WEB_UI_LOGOUT_PATH = '/ui/logout';
/** Where vite puts the hashed bundles (web/vite.config.ts: base /ui/, assetsDir assets). */
export const WEB_UI_ASSETS_PREFIX = '/ui/assets/';
export const WEB_UI_SESSION_COOKIE = 'ferry_session';
/** A session lives 12 hours (a working day), then the browser logs in again. */
export const WEB_UI_SESSION_TTL_MS = 12 * 60 * 60_000;
/** Sessions one center keeps at most: the oldest goes first (each is a few hundred bytes). */
export const MAX_WEB_UI_SESSIONS = 1000;
/** A session id's random bytes: 32, as unguessable as the tokens themselves. */
const SESSION_ID_BYTES = 32;
/** A hashed asset never changes under its name: cached for a year (the session still gates the first load). */
const IMMUTABLE_MAX_AGE_S = 365 * 24 * 60 * 60;
/** Built files the UI serves at most (a vite build is a handful): a directory that holds more is not a build. */
const MAX_WEB_UI_FILES = 256;
/** A reason shown on the login page is cut to this (it comes from a query string). */
const MAX_REASON_CHARS = 500;
/** The build, next to the compiled center: dist/web (this file is dist/src/center/web-ui.js). */
export const DEFAULT_WEB_UI_DIR = fileURLToPath(new URL('../../web/', import.meta.url));

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.ico': 'image/x-icon', '.json': 'application/json', '.map': 'application/json',
  '.woff2': 'font/woff2', '.txt': 'text/plain; charset=utf-8',
};

/** Is this a path the UI serves (so the API's bearer check does not apply to it)? */
export function isWebUiPath(path: string): boolean {
  return path === '/' || path === '/index.html' || path.startsWith('/ui/');
}

interface Session { readonly token: string; readonly expiresAtMs: number }

/** Sessions by id, oldest first (a Map keeps insertion order): bounded, each with its deadline. */
export class WebSessions {
  readonly #byId = new Map<string, Session>();
  constructor(private readonly clock: () => number = Date.now, private readonly ttlMs = WEB_UI_SESSION_TTL_MS, private readonly max = MAX_WEB_UI_SESSIONS) {}

  get size(): number { return this.#byId.size; }

  open(token: string): string {
    this.prune();
    while (this.#byId.size >= this.max) {
      const oldest = this.#byId.keys().next();
      if (oldest.done === true) break;
      this.#byId.delete(oldest.value);
    }
    const id = randomBytes(SESSION_ID_BYTES).toString('base64url');
    this.#byId.set(id, { token, expiresAtMs: this.clock() + this.ttlMs });
    return id;
  }

  /** The token of a live session, or null. */
  token(id: string | undefined): string | null {
    if (id === undefined) return null;
    const s = this.#byId.get(id);
    if (s === undefined) return null;
    if (s.expiresAtMs <= this.clock()) { this.#byId.delete(id); return null; }
    return s.token;
  }

  close(id: string | undefined): void { if (id !== undefined) this.#byId.delete(id); }

  private prune(): void {
    const now = this.clock();
    for (const [id, s] of this.#byId) if (s.expiresAtMs <= now) this.#byId.delete(id);
  }
}

/** The built files by URL path (`/ui/assets/index-abc.js`), read once when first asked for. */
async function listBuild(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const full = join(d, e.name);
      if (e.isDirectory()) await walk(full);
      else if (e.isFile()) {
        const rel = relative(dir, full).split(sep).join('/');
        out.set(rel === 'index.html' ? '/' : `/ui/${rel}`, full);
        if (out.size > MAX_WEB_UI_FILES) throw new FerryError('INVALID_ARGUMENT', `${dir} holds more than ${MAX_WEB_UI_FILES} files: not a web UI build`);
      }
    }
  };
  await walk(dir);
  if (!out.has('/')) throw new FerryError('NOT_FOUND', `${dir} has no index.html`);
  return out;
}

export interface WebUiOptions {
  readonly auth: CenterAuth;
  /** The vite build; default dist/web beside the compiled center. */
  readonly dir?: string;
  readonly sessions?: WebSessions;
}

/** Mounts the UI's routes on the center's app (before its API routes' auth applies: see isWebUiPath). */
export function mountWebUi(app: OpenAPIHono, o: WebUiOptions): void {
  const dir = o.dir ?? DEFAULT_WEB_UI_DIR;
  const sessions = o.sessions ?? new WebSessions();
  let build: Promise<Map<string, string>> | null = null;
  const files = (): Promise<Map<string, string>> => {
    build ??= listBuild(dir).catch((err: unknown) => {
      build = null;
      throw new FerryError('INTERNAL', `the web UI is not built (${errorMessage(err)}): run npm run build:web`);
    });
    return build;
  };
  /** The session's token, if it is live and its token still is (revoked, expired: the session ends). */
  const liveToken = async (c: Context): Promise<string | null> => {
    const id = getCookie(c, WEB_UI_SESSION_COOKIE);
    const token = sessions.token(id);
    if (token === null) return null;
    try {
      await o.auth.authenticate(`Bearer ${token}`, 'api');
      return token;
    } catch (err) {
      if (!isFerryError(err, 'UNAUTHORIZED')) throw err;
      sessions.close(id);
      return null;
    }
  };

  app.get(WEB_UI_LOGIN_PATH, (c) => page(c, loginPage(c.req.query('why') ?? null)));
  app.post(WEB_UI_SESSION_PATH, async (c) => {
    // A login posted from another site's page (login CSRF) is refused: a browser names the page's origin.
    const origin = c.req.header('origin');
    if (origin !== undefined && !sameOrigin(origin, c.req.url)) {
      return c.json({ error: { code: 'UNAUTHORIZED', message: `a login from ${origin.slice(0, MAX_REASON_CHARS)} is refused: log in on the center's own page (${WEB_UI_LOGIN_PATH})` } }, 401);
    }
    const form = (c.req.header('content-type') ?? '').startsWith('application/json') ? null : await c.req.parseBody();
    const given: unknown = form === null ? ((await c.req.json().catch(() => ({}))) as { token?: unknown }).token : form.token;
    const token = typeof given === 'string' ? given.trim() : '';
    try {
      await o.auth.authenticate(`Bearer ${token}`, 'api');
    } catch (err) {
      if (!isFerryError(err, 'UNAUTHORIZED')) throw err;
      const message = `not logged in: ${err.message}. Paste the API token from the center's admin.token file (ferry up prints where it is).`;
      if (form !== null) return c.redirect(`${WEB_UI_LOGIN_PATH}?why=${encodeURIComponent(message)}`, 303);
      return c.json({ error: { code: 'UNAUTHORIZED', message } }, 401);
    }
    const id = sessions.open(token);
    setCookie(c, WEB_UI_SESSION_COOKIE, id, { httpOnly: true, secure: true, sameSite: 'Strict', path: '/', maxAge: Math.floor(WEB_UI_SESSION_TTL_MS / 1000) });
    c.header('cache-control', 'no-store');
    return form !== null ? c.redirect('/', 303) : c.json({ ok: true }, 200);
  });
  app.get(WEB_UI_LOGOUT_PATH, (c) => {
    sessions.close(getCookie(c, WEB_UI_SESSION_COOKIE));
    deleteCookie(c, WEB_UI_SESSION_COOKIE, { path: '/', secure: true });
    // The UI sends a person here with the reason (its tab lost the token, the token was refused).
    const why = (c.req.query('why') ?? 'logged out').slice(0, MAX_REASON_CHARS);
    return c.redirect(`${WEB_UI_LOGIN_PATH}?why=${encodeURIComponent(why)}`, 303);
  });
  const serve = async (c: Context): Promise<Response> => {
    if (await liveToken(c) === null) return c.redirect(WEB_UI_LOGIN_PATH, 303);
    const path = c.req.path === '/index.html' ? '/' : c.req.path;
    const file = (await files()).get(path);
    if (file === undefined) throw new FerryError('NOT_FOUND', `the web UI has no file ${path}`);
    const type = CONTENT_TYPES[extname(file)] ?? 'application/octet-stream';
    const hashed = path.startsWith(WEB_UI_ASSETS_PREFIX);
    // private: the files are behind a session; index is revalidated so a new build is picked up.
    c.header('cache-control', hashed ? `private, max-age=${IMMUTABLE_MAX_AGE_S}, immutable` : 'no-cache');
    c.header('x-content-type-options', 'nosniff');
    return c.body(await readFile(file), 200, { 'content-type': type });
  };
  app.get('/', serve);
  app.get('/index.html', serve);
  app.get('/ui/*', serve);
}

function sameOrigin(origin: string, requestUrl: string): boolean {
  try { return new URL(origin).origin === new URL(requestUrl).origin; } catch { return false; }
}

function page(c: Context, html: string): Response {
  c.header('cache-control', 'no-store');
  c.header('x-content-type-options', 'nosniff');
  return c.html(html, 200);
}

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

/**
 * The login page: one labelled field. With script, it posts JSON and keeps the token in sessionStorage
 * (the UI's bearer); without, the form posts and the UI asks to log in again for its token.
 */
function loginPage(why: string | null): string {
  const note = why === null ? '' : `<p id="why" role="alert">${escapeHtml(why.slice(0, MAX_REASON_CHARS))}</p>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ferry — log in</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1f24;display:grid;place-items:center;min-height:100vh}
main{background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002;width:min(28rem,92vw)}
h1{margin:0 0 1rem;font-size:1.4rem}label{display:block;font-weight:600;margin-bottom:.3rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font:inherit;border:1px solid #8a929c;border-radius:4px}
button{margin-top:1rem;padding:.5rem 1.2rem;font:inherit;background:#0b5cad;color:#fff;border:0;border-radius:4px;cursor:pointer}
button:focus-visible,input:focus-visible{outline:3px solid #f0a500;outline-offset:2px}
#why{color:#a4161a;background:#fde8e8;padding:.5rem;border-radius:4px}
</style></head>
<body><main><h1>Ferry center</h1>${note}
<form id="login" method="post" action="${WEB_UI_SESSION_PATH}">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" required placeholder="ferry-api-…" autofocus>
<button type="submit">Log in</button>
</form></main>
<script>
sessionStorage.removeItem('ferry.token');
document.getElementById('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const token = document.getElementById('token').value.trim();
  const res = await fetch('${WEB_UI_SESSION_PATH}', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) });
  if (res.ok) { sessionStorage.setItem('ferry.token', token); location.href = '/'; return; }
  const body = await res.json().catch(() => ({}));
  let p = document.getElementById('why');
  if (!p) { p = document.createElement('p'); p.id = 'why'; p.setAttribute('role', 'alert'); document.querySelector('h1').after(p); }
  p.textContent = (body.error && body.error.message) || ('login failed: HTTP ' + res.status);
});
</script></body></html>`;
}
