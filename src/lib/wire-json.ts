/**
 * JSON payloads of Ferry's wire protocols (the migration's, the network file copy's): UTF-8 (no BOM), a
 * JSON object, and exactly what its zod schema says (schemas are strict: unknown keys are rejected).
 * Anything else is PROTOCOL_BAD_PAYLOAD. Encoders run the same schemas on what they are about to send,
 * so a peer running this code never receives a payload it rejects.
 *
 * `label` names the payload in messages: the command ("HELLO"), so an operator reads
 * "HELLO payload: ticket must be 64 lowercase hex digits".
 */
import { z } from 'zod';
import { FerryError, errorMessage } from './errors.js';

/** Reply to a request: a JSON object (its shape is the request's business). */
export type OkBody = Readonly<Record<string, unknown>>;

/** An ERROR reply: `code` is a stable code of ./errors.ts, so the peer can rethrow it as itself. */
export interface ErrorBody {
  readonly code: string;
  readonly message: string;
}

/** Longest code an ERROR may carry (the stable codes of ./errors.ts are far shorter). */
export const MAX_ERROR_CODE_CHARS = 64;
/** Longest ERROR message: room for a path, an address and what to do; a longer one is clipped (clipMessage). */
export const MAX_ERROR_MESSAGE_CHARS = 4096;

export const errorBodySchema = z.object({
  code: z.string().min(1).max(MAX_ERROR_CODE_CHARS),
  message: z.string().max(MAX_ERROR_MESSAGE_CHARS),
}).strict();

/** The ERROR body for a thrown value: a FerryError keeps its stable code, anything else is INTERNAL; the message clipped to its bound. */
export function errorBodyOf(err: unknown): ErrorBody {
  return { code: err instanceof FerryError ? err.code : 'INTERNAL', message: errorMessage(err) };
}

/** An ERROR body as UTF-8 JSON; a message longer than the bound is shortened (with an ellipsis) rather than refused. */
export function encodeErrorPayload(label: string, body: ErrorBody, details: Record<string, unknown> = {}): Buffer {
  return encodeJsonPayload(label, errorBodySchema, { code: body.code, message: clipMessage(body.message, MAX_ERROR_MESSAGE_CHARS) }, details);
}

/** A decoded message: its command, the requestId it carried, its typed body. */
export interface Envelope<C extends number, B> {
  readonly command: C;
  readonly requestId: number;
  readonly body: B;
}

/** The first few zod issues as one line ("path message; …"). */
export function describeIssues(error: z.ZodError): string {
  const shown = error.issues.slice(0, 5).map((i) => `${i.path.length > 0 ? i.path.join('.') : '(root)'} ${i.message}`);
  const more = error.issues.length > shown.length ? ` (and ${error.issues.length - shown.length} more)` : '';
  return shown.join('; ') + more;
}

export function badPayload(label: string, message: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('PROTOCOL_BAD_PAYLOAD', `${label} payload: ${message}`, details);
}

export function cannotEncode(label: string, message: string, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('PROTOCOL_BAD_PAYLOAD', `cannot encode ${label}: ${message}`, { ...details, direction: 'encode' });
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** UTF-8 bytes -> a parsed JSON object (not an array, not null); PROTOCOL_BAD_PAYLOAD otherwise. */
export function parseJsonObject(label: string, bytes: Uint8Array, details: Record<string, unknown> = {}): object {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw badPayload(label, 'is not valid UTF-8', details);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw badPayload(label, `is not JSON (${errorMessage(err)})`, details);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw badPayload(label, `must be a JSON object, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`, details);
  }
  return value;
}

/** A decoded value checked against its schema; PROTOCOL_BAD_PAYLOAD naming the first issues otherwise. */
export function validatePayload<S extends z.ZodTypeAny>(label: string, schema: S, value: unknown, details: Record<string, unknown> = {}): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) throw badPayload(label, describeIssues(result.error), details);
  return result.data;
}

/** A JSON payload: parsed, then validated. */
export function decodeJsonPayload<S extends z.ZodTypeAny>(label: string, schema: S, bytes: Uint8Array, details: Record<string, unknown> = {}): z.output<S> {
  return validatePayload(label, schema, parseJsonObject(label, bytes, details), details);
}

/** Validates a wire object before sending it; returns its UTF-8 JSON. */
export function encodeJsonPayload(label: string, schema: z.ZodTypeAny, wire: unknown, details: Record<string, unknown> = {}): Buffer {
  const result = schema.safeParse(wire);
  if (!result.success) throw cannotEncode(label, describeIssues(result.error), details);
  return Buffer.from(JSON.stringify(wire), 'utf8');
}

/**
 * Any plain JSON-serialisable object as UTF-8 JSON (a reply whose schema is the request's business);
 * sent as JSON.stringify renders it (undefined members are dropped).
 */
export function encodeObjectPayload(label: string, body: unknown, details: Record<string, unknown> = {}): Buffer {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw cannotEncode(label, 'the body must be an object', details);
  let json: string | undefined;
  try {
    json = JSON.stringify(body);
  } catch (err) {
    throw cannotEncode(label, `the body is not JSON-serialisable (${errorMessage(err)})`, details);
  }
  if (json?.startsWith('{') !== true) throw cannotEncode(label, 'the body does not serialise to a JSON object', details);
  return Buffer.from(json, 'utf8');
}

/** A message cut to `maxChars` (with an ellipsis) rather than refused: an ERROR reply must always go out. */
export function clipMessage(message: string, maxChars: number): string {
  return message.length > maxChars ? `${message.slice(0, maxChars - 1)}…` : message;
}
