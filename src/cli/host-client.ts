/** A thin client of a host agent's control API (bearer token, JSON, errors with their codes). */
import { FerryError, errorMessage, type FerryErrorCode } from '../lib/errors.js';

/** Ordinary requests time out; streams (console follow, migration events) do not. */
export const API_TIMEOUT_MS = 30_000;

export class HostClient {
  constructor(readonly baseUrl: string, private readonly token: string) {
    try {
      const u = new URL(baseUrl);
      if (u.protocol !== 'http:') throw new Error('only http:// host URLs are supported');
    } catch (err) {
      throw new FerryError('INVALID_ARGUMENT', `--host: "${baseUrl}" is not a host URL like http://127.0.0.1:7000 (${errorMessage(err)})`);
    }
  }

  async call<T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.fetch(method, path, body, AbortSignal.timeout(API_TIMEOUT_MS));
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

/** Parses a server-sent-events stream into (event, data) pairs. */
export async function* readEvents(res: Response): AsyncGenerator<{ event: string; data: unknown }> {
  if (res.body === null) return;
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let sep: number;
    while ((sep = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, sep);
      buffer = buffer.slice(sep + 2);
      let event = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data += line.slice(6);
      }
      try { yield { event, data: JSON.parse(data) as unknown }; } catch { /* skip a malformed event */ }
    }
  }
}
