/**
 * The process's own metrics (CPU, memory, event loop lag, GC, handles: prom-client's defaults), in one
 * Registry per process, shared by every host agent and center the process runs. They describe the
 * process, not one agent; and collecting them starts an event-loop monitor that is never stopped, so
 * it is started once, not once per agent (tests start dozens in one process).
 */
import { Registry, collectDefaultMetrics } from 'prom-client';

let registry: Registry | null = null;

export function processMetricsRegistry(): Registry {
  if (registry === null) {
    registry = new Registry();
    collectDefaultMetrics({ register: registry });
  }
  return registry;
}

/** `own`'s metrics followed by the process's, in the text exposition format (their names do not overlap). */
export async function metricsText(own: Registry): Promise<string> {
  return `${await own.metrics()}\n${await processMetricsRegistry().metrics()}`;
}
