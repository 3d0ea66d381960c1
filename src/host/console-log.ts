/** A VM's console as the host keeps it: the last CONSOLE_LOG_BYTES of text, plus live followers. */
export const CONSOLE_LOG_BYTES = 64 * 1024;

export class ConsoleLog {
  private text = '';
  private readonly followers = new Set<(text: string) => void>();

  append(chunk: string): void {
    this.text += chunk;
    if (this.text.length > CONSOLE_LOG_BYTES) this.text = this.text.slice(this.text.length - CONSOLE_LOG_BYTES);
    for (const f of this.followers) f(chunk);
  }

  snapshot(): string { return this.text; }

  follow(listener: (text: string) => void): () => void {
    this.followers.add(listener);
    return () => { this.followers.delete(listener); };
  }
}
