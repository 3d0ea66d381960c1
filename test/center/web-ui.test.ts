/**
 * The web UI's server side (src/center/web-ui.ts) over a real center on HTTPS: without a session only
 * the login page is served; a bad token is refused with a message; a good one gets a session cookie
 * (HttpOnly, Secure, SameSite=Strict) that admits the index and the built assets (content types, cache
 * headers) but never the API; nothing outside the build is reachable; logout ends the session. The
 * session map is bounded and expires.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpsRequest } from 'node:https';
import { Agent, fetch } from 'undici';
import { startTestCenter, type TestCenter } from '../helpers/center.js';
import { WEB_UI_SESSION_COOKIE, WebSessions } from '../../src/center/web-ui.js';

describe('web UI: login, session cookie, static files', () => {
  let tc: TestCenter;
  let agent: Agent;
  before(async () => {
    tc = await startTestCenter();
    agent = new Agent({ connect: { ca: tc.caPem } });
  });
  after(async () => {
    await agent.close();
    await tc.close();
  });

  const get = (path: string, cookie?: string, init: { method?: string; body?: string; headers?: Record<string, string> } = {}) =>
    fetch(new URL(path, tc.url), {
      method: init.method ?? 'GET', redirect: 'manual', dispatcher: agent,
      headers: { ...(cookie !== undefined ? { cookie } : {}), ...(init.headers ?? {}) }, ...(init.body !== undefined ? { body: init.body } : {}),
    });
  const login = async (token: string) => get('/ui/session', undefined, { method: 'POST', body: JSON.stringify({ token }), headers: { 'content-type': 'application/json' } });
  const sessionCookie = (res: Response): string => {
    const set = res.headers.get('set-cookie') ?? '';
    const m = new RegExp(`${WEB_UI_SESSION_COOKIE}=([^;]+)`).exec(set);
    assert.ok(m !== null, `a session cookie: ${set}`);
    return `${WEB_UI_SESSION_COOKIE}=${m[1] ?? ''}`;
  };
  /** The asset paths index.html names (vite's hashed bundles). */
  const assetsOf = (html: string): string[] => [...html.matchAll(/(?:src|href)="(\/ui\/assets\/[^"]+)"/g)].map((m) => m[1] ?? '');
  /** A request whose path goes out exactly as written (fetch would normalize dot segments away). */
  const rawGet = (path: string, cookie: string): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
    const u = new URL(tc.url);
    const req = httpsRequest({ host: u.hostname, port: u.port, path, ca: tc.caPem, headers: { cookie } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }); });
    });
    req.on('error', reject);
    req.end();
  });

  it('serves nothing but the login page without a session', async () => {
    const page = await get('/ui/login');
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    const html = await page.text();
    assert.match(html, /<label for="token">API token<\/label>/);
    assert.match(html, /<form id="login" method="post" action="\/ui\/session">/);
    for (const path of ['/', '/index.html', '/ui/assets/index.js', '/ui/anything']) {
      const res = await get(path);
      assert.equal(res.status, 303, path);
      assert.equal(res.headers.get('location'), '/ui/login', path);
      assert.equal(await res.text(), '', `${path}: no content without a session`);
    }
  });

  it('refuses a bad token with a message a person can act on, and sets no cookie', async () => {
    const res = await login('ferry-api-not-a-real-token');
    assert.equal(res.status, 401);
    assert.equal(res.headers.get('set-cookie'), null);
    const body = await res.json() as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'UNAUTHORIZED');
    assert.match(body.error.message, /not logged in: .*admin\.token/);
    // A login posted from another site's page is refused, even with a good token.
    const csrf = await get('/ui/session', undefined, { method: 'POST', body: JSON.stringify({ token: tc.center.adminToken }), headers: { 'content-type': 'application/json', origin: 'https://evil.example' } });
    assert.equal(csrf.status, 401);
    assert.equal(csrf.headers.get('set-cookie'), null);
    assert.match(((await csrf.json()) as { error: { message: string } }).error.message, /a login from https:\/\/evil\.example is refused/);
    // The form post (no script) lands back on the login page with the reason shown.
    const form = await get('/ui/session', undefined, { method: 'POST', body: 'token=nope', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assert.equal(form.status, 303);
    const back = form.headers.get('location') ?? '';
    assert.match(back, /^\/ui\/login\?why=/);
    assert.match(await (await get(back)).text(), /<p id="why" role="alert">not logged in: /);
  });

  it('admits a good token: cookie → index and assets with their types and cache headers; the cookie is no API credential', async () => {
    const res = await login(tc.center.adminToken);
    assert.equal(res.status, 200);
    const set = res.headers.get('set-cookie') ?? '';
    assert.match(set, /HttpOnly/i);
    assert.match(set, /Secure/i);
    assert.match(set, /SameSite=Strict/i);
    assert.match(set, /Path=\//);
    const cookie = sessionCookie(res);

    const index = await get('/', cookie);
    assert.equal(index.status, 200);
    assert.match(index.headers.get('content-type') ?? '', /^text\/html/);
    assert.equal(index.headers.get('cache-control'), 'no-cache');
    const assets = assetsOf(await index.text());
    assert.ok(assets.some((a) => a.endsWith('.js')) && assets.some((a) => a.endsWith('.css')), `index names a script and a style: ${assets.join(' ')}`);
    for (const a of assets) {
      const r = await get(a, cookie);
      assert.equal(r.status, 200, a);
      assert.match(r.headers.get('content-type') ?? '', a.endsWith('.js') ? /^text\/javascript/ : /^text\/css/, a);
      assert.match(r.headers.get('cache-control') ?? '', /immutable/, a);
      assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
      assert.ok((await r.arrayBuffer()).byteLength > 0, a);
    }
    assert.equal((await get('/ui/assets/no-such-file.js', cookie)).status, 404);
    // The API stays bearer-only: the cookie alone is refused.
    const api = await get('/api/v1/vms', cookie);
    assert.equal(api.status, 401);
    // The form login works too (303 to the UI with a cookie).
    const form = await get('/ui/session', undefined, { method: 'POST', body: `token=${encodeURIComponent(tc.center.adminToken)}`, headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assert.equal(form.status, 303);
    assert.equal(form.headers.get('location'), '/');
    assert.equal((await get('/', sessionCookie(form))).status, 200);
  });

  it('reaches no file outside the build, however the path is spelled', async () => {
    const cookie = sessionCookie(await login(tc.center.adminToken));
    for (const path of ['/ui/../package.json', '/ui/assets/../../package.json', '/ui/assets/..%2f..%2fpackage.json', '/ui/assets/%2e%2e/%2e%2e/src/center/web-ui.js', '/ui/..%5c..%5cpackage.json', '/ui//etc/passwd']) {
      const r = await rawGet(path, cookie);
      // 401: a path the URL parser folds out of /ui/ is an API path, which wants a bearer.
      assert.ok([303, 401, 404].includes(r.status), `${path}: ${r.status}`);
      assert.doesNotMatch(r.body, /"name": "ferry"|root:x:0|mountWebUi/, path);
    }
  });

  it('logout ends the session: the old cookie no longer admits anything', async () => {
    const cookie = sessionCookie(await login(tc.center.adminToken));
    assert.equal((await get('/', cookie)).status, 200);
    const out = await get('/ui/logout', cookie);
    assert.equal(out.status, 303);
    assert.match(out.headers.get('location') ?? '', /^\/ui\/login\?why=logged%20out/);
    assert.match(out.headers.get('set-cookie') ?? '', new RegExp(`${WEB_UI_SESSION_COOKIE}=;`));
    const again = await get('/', cookie);
    assert.equal(again.status, 303);
    assert.equal(again.headers.get('location'), '/ui/login');
  });
});

describe('web UI: the session map', () => {
  it('is bounded (the oldest goes) and sessions expire after their TTL', () => {
    let now = 1000;
    const s = new WebSessions(() => now, 5000, 2);
    const a = s.open('token-a');
    const b = s.open('token-b');
    const c = s.open('token-c');
    assert.equal(s.size, 2);
    assert.equal(s.token(a), null, 'the oldest session was dropped');
    assert.equal(s.token(b), 'token-b');
    assert.equal(s.token(c), 'token-c');
    assert.equal(s.token(undefined), null);
    assert.equal(s.token('not-an-id'), null);
    now += 5000;
    assert.equal(s.token(b), null, 'expired');
    assert.equal(s.size, 1);
    assert.notEqual(a, b);
    assert.match(a, /^[A-Za-z0-9_-]{43}$/);
  });
});
