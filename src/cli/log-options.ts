/** `--log-level` and `--log-format` of the long-running commands (`ferry host`, `ferry center`). */
import { Option, type Command } from 'commander';
import { DEFAULT_LOG_LEVEL, LOG_FORMATS, LOG_LEVELS, createLogger, type LogBindings, type LogFormat, type LogLevel, type Logger } from '../lib/logger.js';

export interface LogOptions { logLevel: LogLevel; logFormat?: LogFormat }

export function withLogOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--log-level <level>', 'least severe log lines written').choices(LOG_LEVELS).default(DEFAULT_LOG_LEVEL))
    .addOption(new Option('--log-format <format>', 'log lines on stderr: JSON lines, or one human-readable line each (default: pretty on a terminal, json otherwise)').choices(LOG_FORMATS));
}

/** The process's logger on stderr, as the options say. */
export function loggerFor(o: LogOptions, bindings?: LogBindings): Logger {
  return createLogger({ level: o.logLevel, ...(o.logFormat !== undefined ? { format: o.logFormat } : {}), ...(bindings !== undefined ? { bindings } : {}) });
}
