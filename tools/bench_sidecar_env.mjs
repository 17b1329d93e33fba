// Shared set-up of the sidecar benchmarks (tools/bench_recon_e2e.mjs,
// tools/bench_leave.mjs): redis-server, the real targets the brief names
// (OpenLDAP slapd, the SCIM server of tests/peers, PostgreSQL) and
// build/provgated with an HR export (hr_source) and an admin token. No
// nginx: the sidecar alone applies the outbox, imports HR and reconciles.
// Everything is started through tests/integration/lib/*, so it is stopped
// by cleanupAll() and the harness's exit hook.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import {
  freePort, startProcess, startRedis, startScim, tempDir, waitForPort, redisCommand, jsonRequest, REPO_ROOT,
} from '../tests/integration/lib/harness.mjs';
import { startSlapd, ROOTDN, ROOTPW, PEOPLE, GROUPS, DISABLED } from '../tests/integration/lib/slapd.mjs';
import { startPostgres, ACCOUNTS_SCHEMA, accountsSqlTarget } from '../tests/integration/lib/pg.mjs';

export const ADMIN_TOKEN = 'bench-admin-token-0123456789';
export const HR_HEADER = 'emp_id,login,email,name,given,family,dept,type,end_date';
export const hrRow = (id, login, dept) => `${id},${login},${login}@example.com,${login} Person,${login},Person,${dept},employee,`;
export const hrHash = (key) => crypto.createHash('sha256').update(key).digest('base64url');
export const BIN = process.env.PG_PROVGATED_BIN || path.join(REPO_ROOT, 'build/provgated');

/** The LDAP target of the benches (the one of recon.test.mjs). */
export function ldapTarget(ldap, reconcile) {
  return {
    type: 'ldap',
    key: 'uid',
    attributes: { uid: '${username}', cn: '${name}', sn: '${family_name}', mail: '${email}' },
    ...(reconcile ? { reconcile } : {}),
    connector: {
      url: ldap.url, bind_dn: ROOTDN, bind_password: ROOTPW, base_dn: PEOPLE, timeout_ms: 10000,
      groups: { base_dn: GROUPS },
      disable: { mode: 'move', disabled_ou: DISABLED },
    },
  };
}

/** The SCIM target (the tests/peers server), as the gateway tests use it. */
export function scimTarget(scim) {
  return {
    type: 'scim',
    base_url: scim.baseUrl,
    auth: { type: 'bearer', token: scim.token },
    timeout_ms: 5000,
    connect_timeout_ms: 1000,
    wait_ms: 5000,
    attributes: {
      userName: '${username}', 'name.givenName': '${given_name}', 'name.familyName': '${family_name}',
      displayName: '${name}', emails: '${email}', externalId: '${identity_id}', active: true,
    },
  };
}

/** A birthright policy granting target group `group` to every employee
 * (and group `eng` to department eng when eng is true). */
export function birthright(target, group, eng) {
  const p = [{ id: `${target}-${group}`, kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
    grants: [{ target, entitlements: [{ type: 'group', value: group }] }] }];
  if (eng) {
    p.push({ id: `${target}-eng`, kind: 'birthright', who: { attr: 'department', eq: 'eng' },
      grants: [{ target, entitlements: [{ type: 'group', value: eng }] }] });
  }
  return p;
}

/**
 * Start redis and the peers named in `peers` ({ldap, scim, sql}: true or
 * options) and return an env {dir, redis, ldap, scim, pg, redisCmd, ...}.
 * Then env.startSidecar(targets(env), policies, {hrSource, outbox}) writes
 * the configuration and starts provgated.
 */
export async function startBenchEnv(peers) {
  const env = { dir: tempDir('pg-bench-sc-') };
  env.redis = await startRedis({ dir: path.join(env.dir, 'redis'), aof: true });
  env.redisCmd = (...a) => redisCommand(env.redis.port, ...a);
  if (peers.ldap) env.ldap = await startSlapd({ groups: ['staff', 'eng'], ...(peers.ldap === true ? {} : peers.ldap) });
  if (peers.scim) {
    env.scim = await startScim({ dataFile: path.join(env.dir, 'scim.json'), groups: ['staff', 'eng'] });
  }
  if (peers.sql) {
    env.pg = await startPostgres();
    env.pg.psql(ACCOUNTS_SCHEMA);
    env.sqlTarget = (extra) => accountsSqlTarget(env.pg, extra);
  }
  env.hrFile = path.join(env.dir, 'hr.csv');
  env.writeHr = (rows) => {
    const tmp = `${env.hrFile}.tmp`;
    fs.writeFileSync(tmp, `${[HR_HEADER, ...rows].join('\n')}\n`);
    fs.renameSync(tmp, env.hrFile);
  };
  env.auditFile = path.join(env.dir, 'audit.jsonl');
  env.audit = () => (fs.existsSync(env.auditFile)
    ? fs.readFileSync(env.auditFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []);
  env.startSidecar = async (targets, policies, { hrSource = {}, outbox = {}, args = [] } = {}) => {
    fs.writeFileSync(path.join(env.dir, 'session.key'), crypto.randomBytes(48).toString('base64'));
    fs.writeFileSync(path.join(env.dir, 'policies.json'), JSON.stringify({ policies }, null, 2));
    fs.writeFileSync(path.join(env.dir, 'admin.token'), ADMIN_TOKEN);
    env.cfg = {
      instance: 'bench',
      redis: {
        host: '127.0.0.1', port: env.redis.port, key_prefix: 'pg:', connect_timeout_ms: 1000, command_timeout_ms: 10000,
      },
      session: { key_file: 'session.key' },
      audit: { file: 'audit.jsonl' },
      idps: {
        corp: {
          type: 'oidc', issuer: 'https://idp.example.test', client_id: 'provgate', client_secret: 's3cret',
          redirect_uri: 'https://app.example.test/callback',
        },
      },
      targets,
      outbox: { claim_idle_ms: 5000, backoff_base_ms: 300, backoff_max_ms: 2000, max_attempts: 6, ...outbox },
      policy_files: ['policies.json'],
      hr_source: {
        file: env.hrFile,
        poll_s: 1,
        feed: {
          key_column: 'emp_id',
          attributes: {
            login: 'username', email: 'email', name: 'name', given: 'given_name', family: 'family_name',
            dept: 'department', type: 'employee_type',
          },
          termination_column: 'end_date',
          max_leave_pct: 100,
          max_malformed_pct: 50,
        },
        ...hrSource,
      },
    };
    env.cfgFile = path.join(env.dir, 'provgate.json');
    fs.writeFileSync(env.cfgFile, JSON.stringify(env.cfg, null, 2));
    env.scPort = await freePort();
    env.sc = await startProcess(BIN, ['--config', env.cfgFile, '--listen', `127.0.0.1:${env.scPort}`,
      '--log-level', 'warn', '--admin-token-file', path.join(env.dir, 'admin.token'), ...args], { name: 'provgated' });
    await waitForPort(env.scPort);
    env.scUrl = `http://127.0.0.1:${env.scPort}`;
  };
  // stop provgated; with an ASan build (PG_PROVGATED_BIN) any sanitizer
  // report or a bad exit fails the bench
  env.stopSidecar = async () => {
    if (!env.sc) return;
    const { code, signal } = await env.sc.stop();
    if (code !== 0 || signal !== null || /Sanitizer|runtime error/.test(env.sc.output)) {
      process.exitCode = 1;
      console.log(`provgated: exit ${code} signal ${signal}\n${env.sc.output.slice(-4000)}`);
    }
  };
  env.admin = (method, p, body) => jsonRequest(method, `${env.scUrl}${p}`, body, { authorization: `Bearer ${ADMIN_TOKEN}` });
  env.iidOf = (empId) => env.redisCmd('GET', `pg:idx:hr:${hrHash(empId)}`);
  return env;
}

/** CPU seconds (user + system) used so far by pid (0 once it is gone). */
export function cpuSeconds(pid) {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in USER_HZ (100)
  } catch {
    return 0;
  }
}

/** RESP encoding of one command for redis-cli --pipe. */
export function resp(args) {
  let s = `*${args.length}\r\n`;
  for (const a of args) s += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return s;
}

/** Send a file of RESP commands with redis-cli --pipe; rejects on any error. */
export function redisPipe(port, file) {
  return new Promise((resolve, reject) => {
    const p = spawn('redis-cli', ['-h', '127.0.0.1', '-p', String(port), '--pipe'], {
      stdio: [fs.openSync(file, 'r'), 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.on('exit', (code) => (code === 0 && /errors: 0/.test(out) ? resolve(out) : reject(new Error(`redis-cli: ${out}`))));
  });
}

/** The machine's load average and the time, to print with every result. */
export function machine() {
  const [l1, l5] = fs.readFileSync('/proc/loadavg', 'utf8').split(' ');
  return `load average ${l1} (1 min), ${l5} (5 min); ${new Date().toISOString()}`;
}
