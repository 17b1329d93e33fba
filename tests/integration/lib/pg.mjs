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

/** The accounts schema the SQL-connector tests provision into. */
export const ACCOUNTS_SCHEMA = `
CREATE TABLE accounts (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE, display_name text, email text,
  department varchar(64), active boolean NOT NULL DEFAULT true,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE account_groups (account_key text NOT NULL REFERENCES accounts(key) ON DELETE CASCADE ON UPDATE CASCADE,
  group_name text NOT NULL, PRIMARY KEY (account_key, group_name));`;

/** A "type": "sql" target on ACCOUNTS_SCHEMA in pg; extra members are merged in. */
export function accountsSqlTarget(pg, extra = {}) {
  return {
    type: 'sql',
    key: 'login',
    attributes: { login: '${username}', display_name: '${name}', email: '${email}', department: '${department}' },
    connector: {
      conninfo: `host=127.0.0.1 port=${pg.port} dbname=postgres user=postgres`,
      timeout_ms: 3000,
      statements: {
        lookup: 'SELECT id, key, display_name, email, department, active FROM accounts WHERE key = :key',
        create: 'INSERT INTO accounts (key, display_name, email, department, active) VALUES (:key, :attr.display_name, :attr.email, :attr.department, :active)',
        update: 'UPDATE accounts SET display_name = :attr.display_name, email = :attr.email, department = :attr.department WHERE key = :key',
        disable: 'UPDATE accounts SET active = false WHERE key = :key',
        enable: 'UPDATE accounts SET active = true WHERE key = :key',
        delete: 'DELETE FROM accounts WHERE key = :key',
        list: 'SELECT a.id, a.key, a.display_name, a.email, a.department, a.active, a.updated_at AS modified, (SELECT coalesce(json_agg(g.group_name ORDER BY g.group_name), \'[]\') FROM account_groups g WHERE g.account_key = a.key) AS groups FROM accounts a WHERE a.key > :after AND a.updated_at >= :since ORDER BY a.key LIMIT :limit',
        group_list: 'SELECT group_name AS "group" FROM account_groups WHERE account_key = :key',
        group_add: 'INSERT INTO account_groups (account_key, group_name) VALUES (:key, :group) ON CONFLICT DO NOTHING',
        group_remove: 'DELETE FROM account_groups WHERE account_key = :key AND group_name = :group',
      },
    },
    ...extra,
  };
}
