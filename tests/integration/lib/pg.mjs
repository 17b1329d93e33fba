// A private PostgreSQL 15 for integration tests: initdb into a temp dir
// (as the "postgres" user when the tests run as root: initdb refuses root),
// started on 127.0.0.1 at a free port, stopped and removed at the end.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { freePort, startProcess, tempDir, waitForPort } from './harness.mjs';

const PGBIN = process.env.PG_PGBIN || '/usr/lib/postgresql/15/bin';

function asUser(cmd, args) {
  if (process.getuid && process.getuid() === 0) return ['runuser', ['-u', 'postgres', '--', cmd, ...args]];
  return [cmd, args];
}

/** Start PostgreSQL; returns {port, host, dir, psql(sql) -> stdout, stop()}. */
export async function startPostgres({ t } = {}) {
  const dir = tempDir('pg-sql-', t);
  const data = path.join(dir, 'data');
  if (process.getuid && process.getuid() === 0) {
    fs.chmodSync(dir, 0o755);
    execFileSync('chown', ['postgres', dir]);
  }
  const [c1, a1] = asUser(path.join(PGBIN, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']);
  execFileSync(c1, a1, { stdio: 'pipe' });
  const port = await freePort();
  const [c2, a2] = asUser(path.join(PGBIN, 'postgres'), [
    '-D', data, '-p', String(port), '-k', dir, '-h', '127.0.0.1',
    '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off',
    '-c', 'max_connections=40', '-c', 'shared_buffers=16MB',
  ]);
  const proc = await startProcess(c2, a2, { name: 'postgres', t });
  await waitForPort(port, { timeoutMs: 15000 });
  const h = { port, host: '127.0.0.1', dir, proc };
  h.psql = (sql) => execFileSync('psql', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres',
    '-v', 'ON_ERROR_STOP=1', '-At', '-c', sql], { encoding: 'utf8' }).trim();
  h.stop = () => proc.stop({ signal: 'SIGINT', timeoutMs: 10000 });
  // psql may connect before the server accepts queries
  for (let i = 0; i < 100; i++) {
    try { h.psql('SELECT 1'); break; } catch { await new Promise((r) => { setTimeout(r, 100); }); }
  }
  return h;
}
