/**
 * A client of a host agent's JSON control API (bearer token; an error answer becomes a FerryError
 * with the host's code). Used by the CLI and by a migration source talking to its target.
 */
import { FerryError, errorMessage, type FerryErrorCode } from './errors.js';

/** Ordinary requests time out; streams (console follow, migration events) do not. */
export const API_TIMEOUT_MS = 30_000;

export class ApiClient {
  constructor(readonly baseUrl: string, private readonly token: string) {
    try {
      const u = new URL(baseUrl);
      if (u.protocol !== 'http:') throw new Error('only http:// host URLs are supported');
    } catch (err) {
      throw new FerryError('INVALID_ARGUMENT', `"${baseUrl}" is not a host URL like http://127.0.0.1:7000 (${errorMessage(err)})`);
    }
  }

  async call<T = Record<string, unknown>>(method: string, path: string, body?: unknown, timeoutMs: number = API_TIMEOUT_MS): Promise<T> {
    const res = await this.fetch(method, path, body, AbortSignal.timeout(timeoutMs));
    return (await res.json()) as T;
  }

  /** Returns the response for the caller to stream (SSE, console follow). */
  async stream(path: string, signal?: AbortSignal): Promise<Response> {
    return this.fetch('GET', path, undefined, signal);
  }

  private async fetch(method: string, path: string, body: unknown, signal: AbortSignal | undefined): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(new URL(path, this.baseUrl), {
        method,
        headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json' },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        ...(signal !== undefined ? { signal } : {}),
      });
    } catch (err) {
      throw new FerryError('HOST_UNREACHABLE', `host ${this.baseUrl} is unreachable: ${errorMessage(err)}`);
    }
    if (!res.ok) {
      const payload = (await res.json().catch(() => ({}))) as { error?: { code?: string; message?: string } };
      const code = (payload.error?.code ?? 'HOST_ERROR') as FerryErrorCode;
      throw new FerryError(code, payload.error?.message ?? `host answered ${res.status} ${res.statusText}`, { status: res.status });
    }
    return res;
  }
}

