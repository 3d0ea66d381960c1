/** The CLI's view of a host agent: the shared API client, plus server-sent-event parsing. */
export { ApiClient as HostClient, API_TIMEOUT_MS } from '../lib/api-client.js';

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
