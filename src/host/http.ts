/** Small HTTP plumbing for the host's control API: bounded JSON bodies, errors as JSON with codes. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { FerryError, isFerryError, type FerryErrorCode } from '../lib/errors.js';

/** Largest request body: a guest image (64 MiB) base64-encoded in JSON, plus headroom. */
export const MAX_REQUEST_BODY_BYTES = 96 * 1024 * 1024;

const STATUS_BY_CODE: Partial<Record<FerryErrorCode, number>> = {
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  BUSY: 409,
  VM_STATE: 409,
  MIGRATION_REFUSED: 409,
  MIGRATION_IN_DOUBT: 409,
  REQUEST_TOO_LARGE: 413,
  CAPACITY: 507,
};

export function statusFor(err: unknown): number {
  if (!isFerryError(err)) return 500;
  const mapped = STATUS_BY_CODE[err.code];
  if (mapped !== undefined) return mapped;
  if (/^(INVALID_|IMAGE_|VM_CONFIG|BAD_REQUEST|GUEST_MEMORY|TICKET)/.test(err.code)) return 400;
  return 500;
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export function sendError(res: ServerResponse, err: unknown): void {
  const status = statusFor(err);
  const body = isFerryError(err)
    ? { error: { code: err.code, message: err.message } }
    : { error: { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) } };
  if (res.headersSent) { res.destroy(); return; }
  sendJson(res, status, body);
}

/** Reads and parses a JSON request body, refusing more than `limitBytes`. */
export async function readJsonBody(req: IncomingMessage, limitBytes = MAX_REQUEST_BODY_BYTES): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > limitBytes) throw new FerryError('REQUEST_TOO_LARGE', `request body of ${declared} bytes exceeds the ${limitBytes}-byte limit`);
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limitBytes) throw new FerryError('REQUEST_TOO_LARGE', `request body exceeds the ${limitBytes}-byte limit`);
    chunks.push(chunk);
  }
  if (total === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new FerryError('BAD_REQUEST', 'request body is not valid JSON');
  }
}
