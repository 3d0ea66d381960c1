/**
 * How every Ferry HTTP server (host agent, center) answers an error: `{ error: { code, message,
 * details? } }` with the status of ./http-status.ts. One place, so both APIs refuse alike.
 */
import type { Hook } from '@hono/zod-openapi';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import type { Context, MiddlewareHandler } from 'hono';
import type { BlankEnv } from 'hono/types';
import { FerryError, errorMessage, isFerryError } from '../lib/errors.js';
import type { ErrorBody } from './host-v1.js';
import { httpStatusFor } from './http-status.js';

export function errorBody(err: unknown): { status: number; body: ErrorBody } {
  if (isFerryError(err)) {
    const details = Object.keys(err.details).length > 0 ? { details: { ...err.details } } : {};
    return { status: httpStatusFor(err.code), body: { error: { code: err.code, message: err.message, ...details } } };
  }
  return { status: 500, body: { error: { code: 'INTERNAL', message: `internal error: ${errorMessage(err)}` } } };
}

/** Only the JSON writer of a context: hono's middleware contexts carry `any` input types. */
type JsonWriter = Pick<Context, 'json'>;

export function sendError(c: JsonWriter, err: unknown): Response {
  const { status, body } = errorBody(err);
  return c.json(body, status as 400);
}

/** Validation failures of path, query, headers or body: BAD_REQUEST with every issue, field by field. */
export const validationHook: Hook<unknown, BlankEnv, string, unknown> = (result, c) => {
  if (result.success) return undefined;
  const issues = result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
  const where = result.target === 'json' ? 'request body' : result.target === 'param' ? 'path' : result.target;
  return sendError(c, new FerryError('BAD_REQUEST', `invalid ${where}: ${issues.map((i) => `${i.path === '' ? '(root)' : i.path}: ${i.message}`).join('; ')}`, { issues }));
};

/** app.onError: hono's own refusals (malformed JSON, wrong content type) become Ferry error bodies too. */
export function onAppError(err: Error, c: JsonWriter): Response {
  if (err instanceof HTTPException) {
    const why = err.status === 415 ? 'the request body must be JSON, sent with Content-Type: application/json' : (err.message || 'bad request');
    return sendError(c, new FerryError('BAD_REQUEST', why));
  }
  return sendError(c, err);
}

/** Refuses a body over `maxSize` bytes with REQUEST_TOO_LARGE, before it is read whole. */
export function limitBody(maxSize: number): MiddlewareHandler {
  return bodyLimit({
    maxSize,
    onError: (c) => sendError(c, new FerryError('REQUEST_TOO_LARGE', `request body exceeds the ${maxSize}-byte limit of ${c.req.method} ${c.req.path}`)),
  });
}
