/**
 * A VM's console as the host keeps it: the last CONSOLE_LOG_BYTES bytes of its text (as UTF-8, the
 * encoding the guest wrote and clients read), cut only between characters, plus live followers.
 */
export const CONSOLE_LOG_BYTES = 64 * 1024;
/** Live followers of one console (each is an open HTTP stream); more are refused with BUSY. */
export const MAX_CONSOLE_FOLLOWERS = 32;

import { FerryError } from '../lib/errors.js';

const isHighSurrogate = (unit: number): boolean => unit >= 0xd800 && unit <= 0xdbff;
const isLowSurrogate = (unit: number): boolean => unit >= 0xdc00 && unit <= 0xdfff;

/** UTF-8 size of a code point (a lone surrogate is written as U+FFFD: 3 bytes, as Buffer does). */
function utf8CodePointBytes(codePoint: number): number {
  return codePoint < 0x80 ? 1 : codePoint < 0x800 ? 2 : codePoint < 0x10000 ? 3 : 4;
}

export class ConsoleLog {
  private text = '';
  /** Buffer.byteLength(this.text), kept up to date instead of re-encoding the whole log per append. */
  private bytes = 0;
  private readonly followers = new Map<(text: string) => void, () => void>();
  private closed = false;

  append(chunk: string): void {
    if (chunk.length === 0) return;
    // A surrogate pair split across two appends: counted as two lone surrogates (3 + 3 bytes) so
    // far, it is one 4-byte character once joined.
    const joinsPair = isHighSurrogate(this.text.charCodeAt(this.text.length - 1)) && isLowSurrogate(chunk.charCodeAt(0));
    this.text += chunk;
    this.bytes += Buffer.byteLength(chunk, 'utf8') - (joinsPair ? 2 : 0);
    if (this.bytes > CONSOLE_LOG_BYTES) this.trimFront();
    for (const f of this.followers.keys()) f(chunk);
  }

  snapshot(): string { return this.text; }

  /**
   * Calls `listener` with every later chunk until the returned function is called or the console
   * closes (its VM was deleted or left by migration), which calls `onClose`.
   */
  follow(listener: (text: string) => void, onClose: () => void = () => undefined): () => void {
    if (this.closed) { onClose(); return () => undefined; }
    if (this.followers.size >= MAX_CONSOLE_FOLLOWERS) {
      throw new FerryError('BUSY', `this console already has ${MAX_CONSOLE_FOLLOWERS} followers; close one first`);
    }
    this.followers.set(listener, onClose);
    return () => { this.followers.delete(listener); };
  }

  /** The VM is gone from this host: every follower's stream ends. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const ends = [...this.followers.values()];
    this.followers.clear();
    for (const end of ends) end();
  }

  /** Drops whole characters from the front until the log fits; the work is proportional to what is dropped. */
  private trimFront(): void {
    let start = 0;
    while (this.bytes > CONSOLE_LOG_BYTES) {
      const codePoint = this.text.codePointAt(start) ?? 0;
      this.bytes -= utf8CodePointBytes(codePoint);
      start += codePoint > 0xffff ? 2 : 1;
    }
    this.text = this.text.slice(start);
  }
}
