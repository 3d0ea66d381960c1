/** Server-sent events: the one encoder the servers use and the one parser the clients use. */

/** Longest event a client accepts (a migration record with thousands of rounds fits well within it). */
export const MAX_SSE_EVENT_BYTES = 16 * 1024 * 1024;

export function encodeSse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** An event with an id: a client that reconnects sends the last one it saw as Last-Event-ID. */
export function encodeSseWithId(id: number, event: string, data: unknown): string {
  return `id: ${id}\n${encodeSse(event, data)}`;
}

export interface RawSseEvent {
  readonly event: string;
  readonly data: unknown;
  /** The event's `id:` field, if it had one. */
  readonly id?: string;
}

/** Parses an event stream into (event, JSON data) pairs; a malformed event is skipped, an oversized one ends the stream. */
export async function* readSse(body: AsyncIterable<Uint8Array>): AsyncGenerator<RawSseEvent> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let sep: number;
    while ((sep = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, sep);
      buffer = buffer.slice(sep + 2);
      let event = 'message';
      let data = '';
      let id: string | undefined;
      for (const line of block.split('\n')) {
        if (line.startsWith('id: ')) id = line.slice(4);
        else if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data += line.slice(6);
      }
      try { yield { event, data: JSON.parse(data) as unknown, ...(id !== undefined ? { id } : {}) }; } catch { /* skip a malformed event */ }
    }
    if (buffer.length > MAX_SSE_EVENT_BYTES) return;
  }
}
