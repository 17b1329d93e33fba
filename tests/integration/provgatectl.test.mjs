// provgatectl policy check / explain, run as a real command; and the admin
// commands against a real provgated (real Redis, SCIM peer, PostgreSQL) and
// the gateway's admin API (real nginx with the module).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import {
  cleanupAll, freePort, startProcess, waitForPort, sleep, REPO_ROOT, until,
} from './lib/harness.mjs';
import { startPostgres, ACCOUNTS_SCHEMA, accountsSqlTarget } from './lib/pg.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const CTL = path.join(ROOT, 'build', 'provgatectl');
const EXAMPLES = fs.readdirSync(path.join(ROOT, 'policies/examples')).map((f) => path.join(ROOT, 'policies/examples', f));

function ctl(...args) {
  const r = spawnSync(CTL, args, { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function tmp(name, text) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-ctl-'));
  const f = path.join(d, name);
  fs.writeFileSync(f, text);
  return f;
}

test('check accepts every shipped policy file', () => {
  const r = ctl('policy', 'check', path.join(ROOT, 'policies/birthright.json'), ...EXAMPLES);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^ok: \d+ files, \d+ policies, \d+ roles/);
});

test('check reports file, JSON path and reason, exit 1', () => {
  const f = tmp('bad.json', JSON.stringify({ policies: [{ id: 'x', kind: 'birthright', who: { attr: 'a', eq: 'b' }, grants: [], colour: 'red' }] }));
  const r = ctl('policy', 'check', f);
  assert.equal(r.code, 1);
  assert.ok(r.err.includes(`${f}: $.policies[0].colour`), r.err);
});

test('check finds role cycles', () => {
  const f = tmp('cycle.json', JSON.stringify({
    roles: [
      { id: 'A', kind: 'business', includes: ['B'] },
      { id: 'B', kind: 'business', includes: ['A'] },
    ],
    policies: [],
  }));
  const r = ctl('policy', 'check', f);
  assert.equal(r.code, 1);
  assert.match(r.err, /cycle|undefined|includes|kind/i, r.err);
});

test('explain prints the decision and its explanation; usage errors exit 2', () => {
  const id = tmp('alice.json', JSON.stringify({ username: 'alice', employee_type: 'employee', department: 'engineering', groups: ['staff'] }));
  const r = ctl('policy', 'explain', '--identity', id, '--app', 'demoapp', path.join(ROOT, 'policies/birthright.json'));
  assert.equal(r.code, 0, r.err);
  const d = JSON.parse(r.out);
  assert.equal(d.has_account, true);
  assert.deepEqual(d.entitlements.map((x) => x.value).sort(), ['engineering', 'staff']);
  assert.ok(d.explanation.some((x) => x.policy === 'engineering-demoapp' && x.result === 'match'));
  const contractor = tmp('bob.json', JSON.stringify({ username: 'bob', employee_type: 'contractor' }));
  const r2 = ctl('policy', 'explain', '--identity', contractor, '--app', 'demoapp', path.join(ROOT, 'policies/birthright.json'));
  assert.equal(r2.code, 0, r2.err);
  assert.equal(JSON.parse(r2.out).has_account, false);
  assert.equal(ctl('policy', 'explain').code, 2);
  assert.equal(ctl('policy', 'check', '--help').code, 0);
});

// ---- the admin commands against real services ------------------------------

const PROVGATED = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const ADMIN_TOKEN = 'ctl-admin-token-0123456789';

// The peers (SCIM, IdP) run in this process: run provgatectl without
// blocking the event loop.
function ctlAsync(args, { env = {}, input } = {}) {
  return new Promise((resolve) => {
    const p = spawn(CTL, args, { env: { PATH: process.env.PATH, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('close', (code) => resolve({ code, out, err }));
    // a usage error exits before reading stdin: EPIPE is not a failure
    p.stdin.on('error', () => {});
    p.stdin.end(input ?? '');
  });
}

function ctlUser(name, groups, department = 'ops') {
  return {
    password: `${name}-pw`,
    claims: {
      sub: `sub-${name}`, email: `${name}@example.com`, email_verified: true, preferred_username: name,
      name: `${name} Test`, given_name: name, family_name: 'Test', groups, employee_type: 'employee', department,
    },
  };
}

const CTL_POLICIES = {
  roles: [
    { id: 'provgate-admin', type: 'business', includes: ['provgate-console'] },
    { id: 'provgate-console', type: 'technical', description: 'provgate admin API' },
  ],
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'db-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'staff' }] }] },
    { id: 'it-admins', kind: 'role', who: { group: 'it-admins' }, roles: ['provgate-admin'] },
    { id: 'payroll-approval', kind: 'approval', who: { attr: 'department', eq: 'finance' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'payroll' }] }],
      approvers: { group: 'payroll-approvers' }, request_expires_s: 3600 },
  ],
};
const HEADER = 'emp_id,login,email,name,given,family,dept,type,end_date';
const hrRow = (id, login, dept) => `${id},${login},${login}@example.com,${login} Person,${login},Person,${dept},employee,`;

describe('provgatectl against a real sidecar and gateway', () => {
  let e;
  let pg;
  let sc;
  let sidecar;
  let hrFile;
  let tokenFile;
  let dir;

  const writeHr = (rows) => {
    fs.writeFileSync(`${hrFile}.tmp`, `${[HEADER, ...rows].join('\n')}\n`);
    fs.renameSync(`${hrFile}.tmp`, hrFile);
  };
  const admin = (...args) => ctlAsync(['--sidecar', sidecar, '--token-file', tokenFile, ...args]);
  const noCR = (r) => {
    assert.ok(!r.out.includes('\r') && !r.err.includes('\r'), 'no carriage returns outside a terminal');
    assert.ok(!r.out.includes('\x1b') && !r.err.includes('\x1b'), 'no escape sequences outside a terminal');
  };

  before(async () => {
    pg = await startPostgres();
    pg.psql(ACCOUNTS_SCHEMA);
    e = await startEnv(undefined, {
      workers: 1,
      policies: CTL_POLICIES,
      users: {
        ada: ctlUser('ada', ['staff', 'it-admins']), ivy: ctlUser('ivy', ['staff']),
        fay: ctlUser('fay', [], 'finance'), gil: ctlUser('gil', [], 'finance'),
      },
      extraServer: 'location /provgate/admin/ { provgate_admin; }',
      cfgOver: (env) => {
        hrFile = path.join(env.dir, 'hr.csv');
        const t = env.baseConfig().targets;
        return {
          targets: {
            ...t,
            demoapp: { ...t.demoapp, create_missing_groups: true },
            hrdb: accountsSqlTarget(pg, { reconcile: { orphaned: 'report', rogue: 'report', missing: 'report', drift: 'report', sod: 'report' } }),
          },
          hr_source: {
            file: hrFile,
            poll_s: 3600,
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
            correlation: [{ attr: 'email', index: 'email' }],
          },
        };
      },
    });
    dir = e.dir;
    tokenFile = path.join(dir, 'admin.token');
    fs.writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`);
    writeHr([]);
    const port = await freePort();
    sidecar = `http://127.0.0.1:${port}`;
    sc = await startProcess(PROVGATED, ['--config', e.cfgFile, '--listen', `127.0.0.1:${port}`, '--log-level', 'info',
      '--admin-token-file', tokenFile], { name: 'provgated' });
    await waitForPort(port);
  });
  after(async () => {
    if (sc) await sc.stop();
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('--help of every command and subcommand exits 0 with usage', async () => {
    const helps = [['--help'], ['-h'], ['status', '--help'], ['import', '--help'], ['import', 'status', '--help'],
      ['events', '--help'], ['events', 'send', '--help'], ['reconcile', '--help'], ['reconcile', 'start', '-h'],
      ['reconcile', 'status', '--help'], ['reconcile', 'findings', '--help'], ['requests', '--help'],
      ['requests', 'list', '--help'], ['requests', 'approve', '--help'], ['requests', 'deny', '--help'],
      ['dlq', '--help'], ['dlq', 'list', '--help'], ['dlq', 'retry', '--help'], ['dlq', 'discard', '--help'],
      ['identity', '--help'], ['identity', 'show', '--help'], ['identity', 'list', '--help'], ['policy', '--help']];
    for (const h of helps) {
      const r = await ctlAsync(h);
      assert.equal(r.code, 0, `${h.join(' ')}: ${r.err}`);
      assert.match(r.out, /^usage: provgatectl/, h.join(' '));
    }
  });

  test('usage errors exit 2; an unreachable sidecar exits 3', async () => {
    for (const a of [[], ['bogus'], ['reconcile'], ['reconcile', 'start'], ['reconcile', 'findings'],
      ['events', 'send'], ['import', 'some.csv'], ['import', '--nope'], ['requests', 'approve', 'bad/id'],
      ['dlq', 'list'], ['--timeout', 'x', 'status'], ['status', 'extra'], ['identity']]) {
      const r = await ctlAsync(a);
      assert.equal(r.code, 2, `${a.join(' ')}: ${r.out} ${r.err}`);
      assert.ok(r.err.length > 0);
    }
    // no admin token anywhere: a usage error, nothing sent
    assert.equal((await ctlAsync(['--sidecar', sidecar, 'import'])).code, 2);
    const port = await freePort();
    const r = await ctlAsync(['--sidecar', `http://127.0.0.1:${port}`, 'status']);
    assert.equal(r.code, 3, r.err);
    assert.match(r.err, /connect/i);
    assert.equal((await ctlAsync(['--sidecar', `http://127.0.0.1:${port}`, 'reconcile', 'status'])).code, 3);
    // identity show needs the admin token (identities are personal data)
    assert.equal((await ctlAsync(['--sidecar', `http://127.0.0.1:${port}`, 'identity', 'show', 'x'])).code, 2);
    assert.equal((await ctlAsync(['--sidecar', `http://127.0.0.1:${port}`, '--token-file', tokenFile, 'identity',
      'show', 'x'])).code, 3);
  });

  test('status: health and key metrics, text and --json', async () => {
    const r = await ctlAsync(['--sidecar', sidecar, 'status']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^health\s+ok$/m);
    assert.match(r.out, /^redis\s+up$/m);
    assert.match(r.out, /^reloads\s+0 \(failed 0\)$/m);
    const j = await ctlAsync(['--sidecar', sidecar, '--json', 'status']);
    assert.equal(j.code, 0, j.err);
    const s = JSON.parse(j.out);
    assert.deepEqual(s.health, { status: 'ok', redis: 'up' });
    assert.equal(s.metrics.provgated_up, 1);
    assert.equal(s.metrics.provgated_redis_up, 1);
    assert.equal(s.reconcile.runs, 0);
  });

  test('a bad admin token: exit 1 with the HTTP status and the API\'s error', async () => {
    const bad = path.join(dir, 'bad.token');
    fs.writeFileSync(bad, 'not-the-token');
    const r = await ctlAsync(['--sidecar', sidecar, '--token-file', bad, 'import']);
    assert.equal(r.code, 1);
    assert.match(r.err, /HTTP 401: \{"error":"unauthorized"\}/);
    assert.ok(!r.err.includes('not-the-token') && !r.out.includes('not-the-token'), 'the token is never printed');
    // the token from the environment works the same way
    const env = await ctlAsync(['--sidecar', sidecar, 'reconcile', 'start', '--target', 'nope'],
      { env: { PROVGATE_ADMIN_TOKEN: ADMIN_TOKEN } });
    assert.equal(env.code, 1);
    assert.match(env.err, /HTTP 404: \{"error":"no_such_connector_target"\}/);
  });

  test('import --wait changes the SCIM accounts; import status shows the summary', async () => {
    writeHr([hrRow('1001', 'nora', 'eng'), hrRow('1002', 'otto', 'sales')]);
    const r = await admin('import', '--wait');
    assert.equal(r.code, 0, r.err);
    noCR(r);
    assert.match(r.err, /^import: started$/m);
    assert.match(r.err, /^import: done \(/m);
    assert.match(r.out, /^joins\s+2$/m);
    await until('nora and otto in SCIM', async () => (await e.scimUsers('nora')).length === 1
      && (await e.scimUsers('otto')).length === 1);
    const st = await ctlAsync(['--sidecar', sidecar, '--json', 'import', 'status']);
    assert.equal(st.code, 0, st.err);
    assert.equal(JSON.parse(st.out).status, 'ok');
    // a leaver through a forced import
    writeHr([hrRow('1001', 'nora', 'eng')]);
    const f = await admin('--json', 'import', '--force', '--wait');
    assert.equal(f.code, 0, f.err);
    noCR(f);
    assert.equal(JSON.parse(f.out).leaves, 1);
    await until('otto disabled in SCIM', async () => (await e.scimUsers('otto'))[0].active === false);
  });

  test('events send FILE and - : accepted, idempotent; a malformed one exits 1 with the API detail', async () => {
    const ev = { id: 'ctl-join-pia-1', type: 'join', key: '2001',
      attributes: { username: 'pia', email: 'pia@example.com', name: 'Pia Person', given_name: 'Pia',
        family_name: 'Person', department: 'eng', employee_type: 'employee' } };
    const f = path.join(dir, 'event.json');
    fs.writeFileSync(f, JSON.stringify(ev));
    const r = await admin('events', 'send', f);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'event accepted\n');
    await until('pia in SCIM', async () => (await e.scimUsers('pia')).length === 1);
    const again = await ctlAsync(['--sidecar', sidecar, '--json', 'events', 'send', '-'],
      { env: { PROVGATE_ADMIN_TOKEN: ADMIN_TOKEN }, input: JSON.stringify(ev) });
    assert.equal(again.code, 0, again.err);
    assert.deepEqual(JSON.parse(again.out), { accepted: true });
    const bad = await ctlAsync(['--sidecar', sidecar, 'events', 'send', '-'],
      { env: { PROVGATE_ADMIN_TOKEN: ADMIN_TOKEN }, input: '{"id":"x","type":"hire","key":"k","attributes":{}}' });
    assert.equal(bad.code, 1);
    assert.match(bad.err, /HTTP 400: .*invalid_event.*type/);
  });

  test('reconcile start -> status -> findings, --json, plain progress lines', async () => {
    // a rogue account in the database nobody is entitled to
    pg.psql("INSERT INTO accounts (key, display_name, email) VALUES ('rogue1', 'Rogue', 'rogue1@evil.example')");
    const r = await admin('reconcile', 'start', '--target', 'hrdb', '--full');
    assert.equal(r.code, 0, r.err);
    noCR(r);
    assert.match(r.err, /^reconcile hrdb: started$/m);
    assert.match(r.err, /^reconcile hrdb: done \(/m);
    assert.match(r.out, /^hrdb: status=ok mode=full/m);
    const j = await admin('--json', 'reconcile', 'start', '--target', 'hrdb');
    assert.equal(j.code, 0, j.err);
    noCR(j);
    const rep = JSON.parse(j.out);
    assert.equal(rep.status, 'ok');
    assert.equal(rep.target, 'hrdb');
    assert.ok(rep.counts.rogue >= 1, j.out);
    const st = await ctlAsync(['--sidecar', sidecar, '--json', 'reconcile', 'status']);
    assert.equal(st.code, 0, st.err);
    const all = JSON.parse(st.out);
    assert.equal(all.running, null);
    assert.equal(all.runs, 2);
    assert.equal(all.reports.hrdb.run, rep.run);
    const fj = await ctlAsync(['--sidecar', sidecar, '--json', 'reconcile', 'findings', '--target', 'hrdb']);
    assert.equal(fj.code, 0, fj.err);
    const findings = JSON.parse(fj.out);
    assert.ok(findings.some((x) => x.kind === 'rogue' && x.account === 'rogue1'), fj.out);
    const ft = await ctlAsync(['--sidecar', sidecar, 'reconcile', 'findings', '--target', 'hrdb']);
    assert.equal(ft.code, 0, ft.err);
    assert.match(ft.out, /^rogue\t[^\t]+\trogue1\treport\t/m);
    const none = await ctlAsync(['--sidecar', sidecar, 'reconcile', 'findings', '--target', 'demoapp']);
    assert.equal(none.code, 1);
    assert.match(none.err, /HTTP 404: \{"error":"no_report"\}/);
  });

  test('requests and dlq through the gateway admin API with a session cookie', async () => {
    const gw = `${e.base}/provgate/admin/`;
    const anon = await ctlAsync(['--gateway', gw, 'requests', 'list']);
    assert.equal(anon.code, 1);
    assert.match(anon.err, /HTTP 401: .*login_required/);
    const { b } = await e.login('ada', '/app/x');
    const cookie = b.getCookie(`${e.base}/provgate/admin/`, 'provgate_session');
    assert.ok(cookie);
    const sess = path.join(dir, 'ada.session');
    fs.writeFileSync(sess, `provgate_session=${cookie}\n`);
    const list = await ctlAsync(['--gateway', gw, '--session-file', sess, '--json', 'requests', 'list']);
    assert.equal(list.code, 0, list.err);
    assert.deepEqual(JSON.parse(list.out), { requests: [] });
    const dl = await ctlAsync(['--gateway', gw, '--session-file', sess, 'dlq', 'list']);
    assert.equal(dl.code, 0, dl.err);
    assert.match(dl.out, /^ID\tIDENTITY/);
    const miss = await ctlAsync(['--gateway', gw, 'dlq', 'retry', 'nosuchid'],
      { env: { PROVGATE_SESSION_COOKIE: `provgate_session=${cookie}` } });
    assert.equal(miss.code, 1);
    // not an outbox id: the API's own error is shown
    assert.match(miss.err, /^provgatectl: POST dead\/nosuchid\/retry: HTTP 400: \{"error":"bad_id","reference":"[^"]+"\}$/m);
    const { b: ivyB } = await e.login('ivy', '/app/x');
    const ivy = await ctlAsync(['--gateway', gw, 'dlq', 'list'],
      { env: { PROVGATE_SESSION_COOKIE: `provgate_session=${ivyB.getCookie(`${e.base}/provgate/admin/`, 'provgate_session')}` } });
    assert.equal(ivy.code, 1);
    assert.match(ivy.err, /HTTP 403: .*not_an_admin/);
  });

  test('requests approve/deny through provgatectl: approved is provisioned, a second decision is refused', async () => {
    const gw = `${e.base}/provgate/admin/`;
    await e.login('fay', '/app/payroll');
    await e.login('gil', '/app/payroll');
    const { b } = await e.login('ada', '/app/x');
    const env = { PROVGATE_GATEWAY: gw, PROVGATE_SESSION_COOKIE: `provgate_session=${b.getCookie(gw, 'provgate_session')}` };
    const list = await ctlAsync(['--json', 'requests', 'list'], { env });
    assert.equal(list.code, 0, list.err);
    const reqs = JSON.parse(list.out).requests;
    const fay = reqs.find((r) => r.user === 'fay');
    const gil = reqs.find((r) => r.user === 'gil');
    assert.ok(fay && gil, list.out);
    const text = await ctlAsync(['requests', 'list'], { env });
    assert.match(text.out, new RegExp(`^${fay.rid}\tfay\tdemoapp\tgroup:payroll\tpending\t`, 'm'));
    const ok = await ctlAsync(['requests', 'approve', fay.rid], { env });
    assert.equal(ok.code, 0, ok.err);
    assert.equal(ok.out, `${fay.rid}: approve\n`);
    const no = await ctlAsync(['--json', 'requests', 'deny', gil.rid], { env });
    assert.equal(no.code, 0, no.err);
    assert.equal(JSON.parse(no.out).request.state, 'denied');
    const twice = await ctlAsync(['requests', 'deny', fay.rid], { env });
    assert.equal(twice.code, 1);
    assert.match(twice.err, /HTTP 409: .*not_pending/);
    await until('fay in payroll', async () => {
      const [u] = await e.scimUsers('fay');
      return u && (await e.scim.state()).groups.some((g) => g.displayName === 'payroll' && g.members.some((m) => m.value === u.id));
    });
  });
});
