/**
 * The UI's one way to the center: the public REST API (src/api/center-v1.ts) with the API token as a
 * bearer header, kept in sessionStorage by the login page (src/center/web-ui.ts). The session cookie
 * only admits the UI's files; the API never reads it.
 */
import type {
  CenterHostDetail, CenterHostView, CenterMigrateRequest, CenterTaskView, CenterVmView, MaintenanceRequest,
} from '../../src/api/center-v1.js';
import type { DiskChainView } from '../../src/api/disk-v1.js';

export type { CenterHostDetail, CenterHostView, CenterTaskView, CenterVmView, CenterMigrateRequest, DiskChainView };
export interface SiteView { readonly name: string; readonly description: string; readonly virtualSubnet: string | null }

export const TOKEN_KEY = 'ferry.token';
export const API_PREFIX = '/api/v1';
/** Every ordinary request gives up after this (the event stream and the console have none). */
export const REQUEST_TIMEOUT_MS = 30_000;
/** Pages of a list the UI reads at most (1000 items each): beyond, it shows the first and says so. */
export const MAX_LIST_PAGES = 10;
const PAGE_LIMIT = 1000;

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) { super(message); }
}

export function token(): string | null { return sessionStorage.getItem(TOKEN_KEY); }

/** The session has no token (a form login without script, a new tab): log in again. */
export function relogin(why: string): never {
  sessionStorage.removeItem(TOKEN_KEY);
  location.href = `/ui/logout?why=${encodeURIComponent(why)}`;
  throw new ApiError(401, 'UNAUTHORIZED', why);
}

export function authHeaders(): Record<string, string> {
  const t = token();
  if (t === null) relogin('log in again: this tab has no API token');
  return { authorization: `Bearer ${t}` };
}

export async function apiFetch(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
  const res = await fetch(`${API_PREFIX}${path}`, {
    method,
    headers: { ...authHeaders(), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: signal ?? AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  if (res.ok) return res;
  let code = 'HTTP_ERROR';
  let message = `${method} ${path}: HTTP ${res.status}`;
  try {
    const j = await res.json() as { error?: { code?: string; message?: string } };
    code = j.error?.code ?? code;
    message = j.error?.message ?? message;
  } catch { /* not JSON: keep the status line */ }
  if (res.status === 401) relogin(message);
  throw new ApiError(res.status, code, message);
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  return await (await apiFetch(method, path, body)).json() as T;
}

/** Every page of a keyset-paged list, up to MAX_LIST_PAGES. */
async function pages<T, K extends string | number>(path: string, key: string, query: Record<string, string> = {}): Promise<T[]> {
  const out: T[] = [];
  let after: K | null = null;
  for (let i = 0; i < MAX_LIST_PAGES; i++) {
    const q: URLSearchParams = new URLSearchParams({ ...query, limit: String(PAGE_LIMIT), ...(after !== null ? { after: String(after) } : {}) });
    const page: Record<string, unknown> & { next: K | null } = await api<Record<string, unknown> & { next: K | null }>('GET', `${path}?${q.toString()}`);
    out.push(...(page[key] as T[]));
    if (page.next === null) break;
    after = page.next;
  }
  return out;
}

const enc = encodeURIComponent;
export const listSites = (): Promise<SiteView[]> => pages<SiteView, string>('/sites', 'sites');
export const listHosts = (): Promise<CenterHostView[]> => pages<CenterHostView, string>('/hosts', 'hosts');
export const getHost = (name: string): Promise<CenterHostDetail> => api('GET', `/hosts/${enc(name)}`);
export const listVms = (): Promise<CenterVmView[]> => pages<CenterVmView, string>('/vms', 'vms');
export const getVm = (name: string): Promise<CenterVmView> => api('GET', `/vms/${enc(name)}`);
export const listTasks = (): Promise<CenterTaskView[]> => pages<CenterTaskView, number>('/tasks', 'tasks');
export const getTask = (id: number): Promise<CenterTaskView> => api('GET', `/tasks/${id}`);
export const cancelTask = (id: number): Promise<CenterTaskView> => api('POST', `/tasks/${id}/cancel`);
export const startVm = (name: string): Promise<CenterTaskView> => api('POST', `/vms/${enc(name)}/start`);
export const stopVm = (name: string): Promise<CenterTaskView> => api('POST', `/vms/${enc(name)}/stop`);
export const migrateVm = (name: string, req: CenterMigrateRequest): Promise<CenterTaskView> => api('POST', `/vms/${enc(name)}/migrate`, req);
/** Hand a running copy to another host (`to`, or one the center picks). */
export const moveTask = (id: number, to?: string): Promise<CenterTaskView> => api('POST', `/tasks/${id}/move`, to !== undefined ? { to } : {});
export const maintenance = (host: string, action: MaintenanceRequest['action']): Promise<CenterTaskView> => api('POST', `/hosts/${enc(host)}/maintenance`, { action });
/** The console relayed by the center from the VM's host; `follow` streams it. */
export const vmDiskChain = (name: string): Promise<DiskChainView> => api('GET', `/vms/${enc(name)}/disk/chain`);
export const consoleStream = (name: string, signal: AbortSignal): Promise<Response> => apiFetch('GET', `/vms/${enc(name)}/console?follow=1`, undefined, signal);
