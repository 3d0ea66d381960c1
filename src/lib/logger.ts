/**
 * Ferry's structured log: JSON lines (pino) by default, one object per line with `time`, `level`,
 * `msg` and the bindings of the operation it belongs to (`host`, `migrationId`, `taskId`, `vm`, …), so
 * that one operation can be followed across processes with a grep or a log store; a human-readable
 * line when the log goes to a terminal (or `--log-format pretty`). docs/design/observability.md lists
 * the fields.
 *
 * Code that does something on behalf of an operation logs through `logger.child({ … })`: every line of
 * it then carries the operation's ids without repeating them. Deep code that still takes a
 * `(line: string) => void` gets `lineLog(logger)`.
 */
import { pino, type DestinationStream, type Logger as PinoLogger } from 'pino';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
/** The default level: what an operator wants to see without asking (lifecycle, migrations, trouble). */
export const DEFAULT_LOG_LEVEL: LogLevel = 'info';

/** What ties a line to the operation it belongs to. Every field is optional; a child adds to its parent's. */
export interface LogBindings {
  /** The host agent that wrote the line. */
  readonly host?: string;
  /** The center that wrote the line. */
  readonly center?: string;
  /** A migration's id as the source, the API and the center know it: the same on both hosts. */
  readonly migrationId?: string;
  /** The target host's own id of an incoming migration (its ticket; what the source asks the outcome of). */
  readonly incomingId?: string;
  /** A mobility operation's virtual path (its first 8 hex digits: enough to find it, not a secret). */
  readonly pathId?: string;
  /** Which side of a migration this host is. */
  readonly role?: 'source' | 'target';
  /** A network file copy's id (the same on every host that takes part in it). */
  readonly copyId?: string;
  /** The hand-off generation a host's part of a copy runs under. */
  readonly epoch?: number;
  /** A center task's id. */
  readonly taskId?: number | string;
  readonly vm?: string;
  /** A part of a process (center-link, sweeper, …) where the host or center alone says too little. */
  readonly component?: string;
}

/** Extra fields of one line (numbers stay numbers in the JSON). */
export type LogFields = Readonly<Record<string, string | number | boolean | null>>;

export interface Logger {
  readonly level: LogLevel;
  error(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  debug(msg: string, fields?: LogFields): void;
  /** A logger whose every line also carries `bindings`. */
  child(bindings: LogBindings): Logger;
}

/** Where lines go: anything with a synchronous write of one whole line (pino's destination contract). */
export interface LogSink {
  write(line: string): void;
}

export interface LoggerOptions {
  readonly level?: LogLevel;
  /** Default: pretty when `destination` (or stderr) is a terminal, JSON lines otherwise. */
  readonly format?: LogFormat;
  /** Default: stderr (fd 2), written synchronously so no line is lost when the process exits or crashes. */
  readonly destination?: LogSink & { readonly isTTY?: boolean };
  /** Colours in the pretty form (default: when the destination is a terminal). */
  readonly color?: boolean;
  readonly bindings?: LogBindings;
}

class FerryLogger implements Logger {
  constructor(private readonly p: PinoLogger) {}
  get level(): LogLevel { return this.p.level as LogLevel; }
  error(msg: string, fields?: LogFields): void { if (fields === undefined) this.p.error(msg); else this.p.error(fields, msg); }
  warn(msg: string, fields?: LogFields): void { if (fields === undefined) this.p.warn(msg); else this.p.warn(fields, msg); }
  info(msg: string, fields?: LogFields): void { if (fields === undefined) this.p.info(msg); else this.p.info(fields, msg); }
  debug(msg: string, fields?: LogFields): void { if (fields === undefined) this.p.debug(msg); else this.p.debug(fields, msg); }
  child(bindings: LogBindings): Logger { return new FerryLogger(this.p.child(bindings)); }
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const isTTY = options.destination !== undefined ? options.destination.isTTY === true : process.stderr.isTTY;
  const format = options.format ?? (isTTY ? 'pretty' : 'json');
  const out: LogSink = options.destination ?? pino.destination({ fd: 2, sync: true });
  const destination: DestinationStream = format === 'pretty' ? prettySink(out, options.color ?? isTTY) : out;
  const p = pino({
    level: options.level ?? DEFAULT_LOG_LEVEL,
    // The level as its name: readable in the raw JSON and by any log store without Ferry's numbers.
    formatters: { level: (label) => ({ level: label }) },
    timestamp: pino.stdTimeFunctions.isoTime,
    // pid tells apart two runs of one host; the machine's hostname is not the host's name (that is `host`).
    base: { pid: process.pid },
  }, destination);
  return new FerryLogger(options.bindings !== undefined ? p.child(options.bindings) : p);
}

/** A logger that writes nothing (tests, tools that do not log). */
export function silentLogger(): Logger {
  return createLogger({ level: 'silent', destination: { write: () => undefined } });
}

/**
 * A Logger over an old `(line) => void` callback: each line's message goes to it, bindings and fields
 * dropped. For callers (tests, embedders) that still hand a host or center a line callback.
 */
export function loggerFromLines(log: (line: string) => void, level: LogLevel = DEFAULT_LOG_LEVEL): Logger {
  return createLogger({ level, format: 'json', destination: { write: (json) => { log(parseLine(json).msg); } } });
}

/** What in a free-text line says it is trouble: such lines are warnings, the rest information. */
const TROUBLE = /\b(cannot|failed|NOT removed|IN DOUBT|INTERNAL ERROR)\b/;

/** The `(line) => void` that deep code still takes, writing to `logger` (a warning when the line says it is trouble). */
export function lineLog(logger: Logger): (line: string) => void {
  return (line) => { if (TROUBLE.test(line)) logger.warn(line); else logger.info(line); };
}

// ---- the human-readable form ------------------------------------------------------------------

interface ParsedLine {
  readonly time: string;
  readonly level: string;
  readonly msg: string;
  /** The bindings present, in BINDING_ORDER. */
  readonly bindings: [string, unknown][];
  /** The line's other fields, in the order they came. */
  readonly fields: [string, unknown][];
}

/** Fields every line has, shown in their own places (or not at all: pid). */
const FIXED_FIELDS: ReadonlySet<string> = new Set(['time', 'level', 'msg', 'pid']);
/** The bindings, shown before the message and in this order: what the line belongs to, then what it says. */
const BINDING_ORDER: readonly string[] = ['center', 'host', 'component', 'role', 'taskId', 'migrationId', 'incomingId', 'vm'];

function parseLine(json: string): ParsedLine {
  const o = JSON.parse(json) as Record<string, unknown>;
  const str = (v: unknown): string => (typeof v === 'string' ? v : v === undefined ? '' : JSON.stringify(v));
  const rest = Object.entries(o).filter(([k]) => !FIXED_FIELDS.has(k));
  const bindings = BINDING_ORDER.flatMap((k): [string, unknown][] => (k in o ? [[k, o[k]]] : []));
  return { time: str(o.time), level: str(o.level), msg: str(o.msg), bindings, fields: rest.filter(([k]) => !BINDING_ORDER.includes(k)) };
}

const LEVEL_COLORS: Readonly<Record<string, string>> = { fatal: '\x1b[35m', error: '\x1b[31m', warn: '\x1b[33m', info: '\x1b[32m', debug: '\x1b[36m', trace: '\x1b[90m' };
const RESET = '\x1b[0m';
const DIM = '\x1b[2m';

/** Ids shown shortened on a terminal, as the messages name migrations (the JSON keeps them whole). */
const SHORT_IDS: ReadonlySet<string> = new Set(['migrationId', 'incomingId']);
/** How many leading characters of such an id a terminal shows. */
const SHORT_ID_CHARS = 8;

const pairs = (kv: [string, unknown][]): string => kv.map(([k, v]) => {
  const text = typeof v === 'string' ? v : JSON.stringify(v);
  return `${k}=${SHORT_IDS.has(k) ? text.slice(0, SHORT_ID_CHARS) : text}`;
}).join(' ');

/** `12:03:04.567 INFO  host=a migrationId=6dae5135 the message bytes=123`: time of day, level, bindings (ids shortened), message, other fields. */
export function formatPretty(json: string, color = false): string {
  const l = parseLine(json);
  const clock = /T(\d\d:\d\d:\d\d\.\d+)/.exec(l.time)?.[1] ?? l.time;
  const level = l.level.toUpperCase().padEnd(5);
  const [dim, reset, hue] = color ? [DIM, RESET, LEVEL_COLORS[l.level] ?? ''] : ['', '', ''];
  const bindings = l.bindings.length === 0 ? '' : `${dim}${pairs(l.bindings)}${reset} `;
  const fields = l.fields.length === 0 ? '' : ` ${dim}${pairs(l.fields)}${reset}`;
  return `${dim}${clock}${reset} ${hue}${level}${reset} ${bindings}${l.msg}${fields}\n`;
}

function prettySink(out: LogSink, color: boolean): DestinationStream {
  return { write: (json: string) => { out.write(formatPretty(json, color)); } };
}
