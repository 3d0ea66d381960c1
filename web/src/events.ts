/**
 * The center's event stream (GET /api/v1/events) read with fetch, so that it carries the bearer header
 * (a browser's EventSource cannot). Resumed after a break with Last-Event-ID = the last id seen, so
 * nothing is missed; a resume the center can no longer serve starts with an `events.lost` event.
 * Either way the fleet store refetches what it shows when the stream opens again (./fleet.ts).
 */
import type { CenterEvent } from '../../src/api/center-v1.js';
import { API_PREFIX, authHeaders } from './api.js';

export type { CenterEvent };
export const EVENTS_LOST_KIND = 'events.lost';
/** Reconnects back off from this to the max, doubling: a restarting center is not hammered. */
export const RECONNECT_MIN_MS = 250;
export const RECONNECT_MAX_MS = 5_000;
/** A longer event than this ends the stream (the center's own bound is MAX_SSE_EVENT_BYTES, 16 MiB). */
const MAX_EVENT_CHARS = 16 * 1024 * 1024;

export type StreamStatus = 'connecting' | 'live' | 'reconnecting';

export interface StreamHandlers {
  readonly onEvent: (e: CenterEvent) => void;
  /** The stream is open (again): `resumed` when it goes on after an id seen before. */
  readonly onOpen: (resumed: boolean) => void;
  readonly onStatus: (s: StreamStatus, why: string | null) => void;
}

export class EventStream {
  #lastId: number | null = null;
  #stopped = false;
  #abort: AbortController | null = null;
  constructor(private readonly h: StreamHandlers) {}

  get lastId(): number | null { return this.#lastId; }

  #wake: (() => void) | null = null;

  start(): void {
    // A browser that goes offline drops the stream at once (a half-dead connection could hang for
    // minutes) and reconnects the moment it is back, without waiting out the backoff.
    addEventListener('offline', () => { this.#abort?.abort(); });
    addEventListener('online', () => { this.#wake?.(); });
    void this.run();
  }

  stop(): void { this.#stopped = true; this.#abort?.abort(); this.#wake?.(); }

  private async run(): Promise<void> {
    let backoffMs = RECONNECT_MIN_MS;
    while (!this.#stopped) {
      const ac = new AbortController();
      this.#abort = ac;
      try {
        const headers: Record<string, string> = { ...authHeaders(), ...(this.#lastId !== null ? { 'last-event-id': String(this.#lastId) } : {}) };
        const res = await fetch(`${API_PREFIX}/events`, { headers, signal: ac.signal });
        if (!res.ok || res.body === null) throw new Error(`the event stream answered HTTP ${res.status}`);
        this.h.onStatus('live', null);
        this.h.onOpen(this.#lastId !== null);
        backoffMs = RECONNECT_MIN_MS;
        await this.read(res.body);
        throw new Error('the center ended the event stream');
      } catch (err) {
        if (this.#stopped) return;
        this.h.onStatus('reconnecting', err instanceof Error ? err.message : String(err));
        await new Promise<void>((r) => {
          const timer = setTimeout(() => { this.#wake = null; r(); }, backoffMs);
          this.#wake = () => { clearTimeout(timer); this.#wake = null; r(); };
        });
        backoffMs = Math.min(RECONNECT_MAX_MS, backoffMs * 2);
      }
    }
  }

  private read(body: ReadableStream<Uint8Array>): Promise<void> {
    return readEvents(body, (id, e) => {
      if (id !== null) this.#lastId = id;
      this.h.onEvent(e);
      return true;
    });
  }
}

/** Parses an event stream, each event to `on` (its id, if it has one) until `on` answers false or the stream ends. */
async function readEvents(body: ReadableStream<Uint8Array>, on: (id: number | null, e: CenterEvent) => boolean): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let sep: number;
      while ((sep = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, sep);
        buffer = buffer.slice(sep + 2);
        const parsed = parseBlock(block);
        if (parsed !== null && !on(parsed.id, parsed.event)) return;
      }
      if (buffer.length > MAX_EVENT_CHARS) throw new Error('an event longer than the UI accepts');
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

function parseBlock(block: string): { id: number | null; event: CenterEvent } | null {
  let data = '';
  let id: number | null = null;
  for (const line of block.split('\n')) {
    if (line.startsWith('id: ')) id = Number(line.slice(4));
    else if (line.startsWith('data: ')) data += line.slice(6);
  }
  if (data === '') return null; // a comment (the opening line, keepalives)
  try {
    return { id: id !== null && Number.isSafeInteger(id) ? id : null, event: JSON.parse(data) as CenterEvent };
  } catch { return null; }
}

/** Events replayed at most to rebuild a view opened late (a migration's rounds): the log can be long. */
export const MAX_REPLAY_EVENTS = 50_000;

/**
 * The stored events after `afterId` up to `untilId` (the live stream's position), each to `on` until it
 * answers false: how a page opened after an operation began gets the progress it missed. Ends early
 * past MAX_REPLAY_EVENTS (answers false then).
 */
export async function replayEvents(afterId: number, untilId: number, on: (e: CenterEvent) => boolean, signal: AbortSignal): Promise<boolean> {
  if (untilId <= afterId) return true;
  const res = await fetch(`${API_PREFIX}/events?after=${afterId}`, { headers: authHeaders(), signal });
  if (!res.ok || res.body === null) throw new Error(`the event log answered HTTP ${res.status}`);
  let n = 0;
  let complete = false;
  await readEvents(res.body, (id, e) => {
    if (!on(e) || (id !== null && id >= untilId)) { complete = true; return false; }
    return ++n < MAX_REPLAY_EVENTS;
  });
  return complete;
}
