/**
 * A throwaway PostgreSQL cluster for tests: Debian's real server (never an imitation), initdb'd in a
 * temporary directory and started on a free loopback port with its socket in that directory, so it
 * touches no system cluster. Run as the `postgres` user when the tests run as root (the server refuses
 * to run as root), as the current user otherwise. stop() stops it and removes the directory; if the
 * process exits without calling stop (a failed hook, an uncaught error, SIGINT/SIGTERM), a handler does it.
 *
 * Durability is switched off (fsync, synchronous_commit, full_page_writes): the cluster dies with the
 * test, and it keeps the suite fast. Locking, MVCC and SKIP LOCKED are the server's own.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chown, mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

const PG_LIB_DIR = '/usr/lib/postgresql';
/** The one command that makes this helper work, printed when the server is missing. */
export const POSTGRES_INSTALL_HINT = 'sudo apt-get update && sudo apt-get install -y postgresql   (or, as root: bash scripts/system-packages.sh)';
/** pg_ctl waits this long for the server to accept connections. */
const START_TIMEOUT_S = 30;
/** A free port can be taken by someone else between probing and binding: try a few. */
const START_ATTEMPTS = 3;

export interface PostgresCluster {
  readonly port: number;
  /** A new, empty database; answers its postgres:// URL. */
  createDatabase(): Promise<string>;
  /** Stop the server and remove its directory (idempotent). */
  stop(): Promise<void>;
}

/** The newest installed server's bin directory (FERRY_PG_BINDIR overrides), or null. */
export function findPostgresBinDir(): string | null {
  const override = process.env.FERRY_PG_BINDIR;
  if (override !== undefined && override !== '') return existsSync(join(override, 'initdb')) ? override : null;
  if (!existsSync(PG_LIB_DIR)) return null;
  const versions = readdirSync(PG_LIB_DIR).filter((v) => /^\d+$/.test(v) && existsSync(join(PG_LIB_DIR, v, 'bin', 'initdb')) && existsSync(join(PG_LIB_DIR, v, 'bin', 'pg_ctl')));
  versions.sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? null : join(PG_LIB_DIR, versions[0], 'bin');
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function run(argv: readonly string[], asPostgres: boolean): Promise<{ code: number; output: string }> {
  const [cmd, ...args] = asPostgres ? ['runuser', '-u', 'postgres', '--', ...argv] : argv;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd ?? '', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => { output += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { output += d.toString(); });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, output }));
  });
}

function postgresIds(): { uid: number; gid: number } {
  const uid = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (uid.status !== 0 || gid.status !== 0) throw new Error(`the tests run as root, and the PostgreSQL server refuses root; there is no 'postgres' user to run it as. Install the server package, which creates it: ${POSTGRES_INSTALL_HINT}`);
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

export async function startPostgres(): Promise<PostgresCluster> {
  const bin = findPostgresBinDir();
  if (bin === null) throw new Error(`the PostgreSQL server (initdb, pg_ctl) is not installed; the store tests run against a real one. Install it with: ${POSTGRES_INSTALL_HINT}`);
  const asPostgres = process.getuid?.() === 0;
  const dir = await mkdtemp(join(tmpdir(), 'ferry-pg-'));
  const data = join(dir, 'data');
  const log = join(dir, 'server.log');
  let running = false;
  let stopped = false;

  const stopSync = (): void => {
    if (stopped) return;
    stopped = true;
    if (running) {
      const argv = [join(bin, 'pg_ctl'), '-D', data, '-m', 'immediate', '-w', 'stop'];
      if (asPostgres) spawnSync('runuser', ['-u', 'postgres', '--', ...argv], { stdio: 'ignore' });
      else spawnSync(argv[0] ?? '', argv.slice(1), { stdio: 'ignore' });
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // Also when the run is interrupted (Ctrl-C, the runner's SIGTERM): stop, then die of the same signal.
  const onSignal = (signal: NodeJS.Signals): void => {
    stopSync();
    process.kill(process.pid, signal);
  };
  const unhook = (): void => {
    process.removeListener('exit', stopSync);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  };
  process.once('exit', stopSync);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    if (asPostgres) {
      const { uid, gid } = postgresIds();
      await chown(dir, uid, gid);
    }
    const init = await run([join(bin, 'initdb'), '-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--no-locale'], asPostgres);
    if (init.code !== 0) throw new Error(`initdb failed (exit ${init.code}):\n${init.output}`);
    let port = 0;
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60`;
      const start = await run([join(bin, 'pg_ctl'), '-D', data, '-l', log, '-w', '-t', String(START_TIMEOUT_S), '-o', opts, 'start'], asPostgres);
      if (start.code === 0) break;
      const serverLog = await readFile(log, 'utf8').catch(() => '');
      if (attempt >= START_ATTEMPTS || !/could not bind|Address already in use/.test(serverLog)) {
        throw new Error(`pg_ctl start failed (exit ${start.code}):\n${start.output}\n${serverLog}`);
      }
    }
    running = true;

    let databases = 0;
    const url = (db: string): string => `postgres://postgres@127.0.0.1:${port}/${db}`;
    return {
      port,
      async createDatabase(): Promise<string> {
        const name = `ferry_test_${++databases}`;
        const client = new pg.Client({ connectionString: url('postgres') });
        await client.connect();
        try {
          await client.query(`create database ${name}`);
        } finally {
          await client.end();
        }
        return url(name);
      },
      async stop(): Promise<void> {
        if (stopped) return;
        unhook();
        stopped = true;
        await run([join(bin, 'pg_ctl'), '-D', data, '-m', 'fast', '-w', 'stop'], asPostgres);
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    unhook();
    stopSync();
    throw err;
  }
}
