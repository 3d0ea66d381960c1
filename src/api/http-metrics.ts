/**
 * Counting HTTP requests by route and status, for the host's and the center's `/metrics`. The route
 * label is the declared route's template (`/v1/vms/{name}`), never the raw path, so a client cannot
 * create label values: a path no route matches is counted as `unmatched`.
 */
import type { MiddlewareHandler } from 'hono';
import { routePath } from 'hono/route';
import { Counter, type Registry } from 'prom-client';

/** Labels of the request counter; each takes a bounded set of values (methods, declared routes, statuses). */
export type HttpRequestLabels = 'method' | 'route' | 'status';

/** The counter `<prefix>_http_requests_total{method,route,status}` in `registry`. */
export function httpRequestCounter(registry: Registry, prefix: string): Counter<HttpRequestLabels> {
  return new Counter({
    name: `${prefix}_http_requests_total`, help: 'HTTP requests answered, by method, declared route and status',
    labelNames: ['method', 'route', 'status'], registers: [registry],
  });
}

/** The standard methods; any other is counted as OTHER (the method is the client's to choose). */
const METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** Middleware (register it first: it then sees refusals and errors too) counting every answered request. */
export function countRequests(counter: Counter<HttpRequestLabels>): MiddlewareHandler {
  return async (c, next) => {
    await next();
    // The last matched route is the handler's (middlewares come first); only wildcard middlewares: no route.
    const route = routePath(c, -1);
    const method = METHODS.has(c.req.method) ? c.req.method : 'OTHER';
    counter.inc({ method, route: route === '' || route.includes('*') ? 'unmatched' : route.replace(/:(\w+)/g, '{$1}'), status: String(c.res.status) });
  };
}
