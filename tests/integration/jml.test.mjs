// Joiners, movers and leavers from an HR export, end to end: the sidecar
// (build/provgated) imports a CSV, and the accounts appear in a real SCIM
// server and a real PostgreSQL through the durable outbox; a department
// change moves access; a removed row disables every account and ends the
// person's gateway session at once.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  cleanupAll, freePort, startProcess, waitForPort, sleep, REPO_ROOT, jsonRequest, until,
} from './lib/harness.mjs';
import { startPostgres, ACCOUNTS_SCHEMA, accountsSqlTarget } from './lib/pg.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const ADMIN_TOKEN = 'sidecar-admin-token-0123456789';

const SCHEMA = ACCOUNTS_SCHEMA;

function sqlTarget(pg) {
  return accountsSqlTarget(pg);
}

const POLICIES = {
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'db-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'staff' }] }] },
    { id: 'db-eng', kind: 'birthright', who: { attr: 'department', eq: 'eng' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'eng-tools' }] }] },
  ],
};

const HEADER = 'emp_id,login,email,name,given,family,dept,type,end_date';
const row = (id, login, dept, end = '') => `${id},${login},${login}@example.com,${login} Person,${login},Person,${dept},employee,${end}`;

describe('JML from an HR export through the sidecar', () => {
  let e;
  let pg;
  let sc;
  let scPort;
  let hrFile;

  const writeHr = (rows) => {
    const tmp = `${hrFile}.tmp`;
    fs.writeFileSync(tmp, `${[HEADER, ...rows].join('\n')}\n`);
    fs.renameSync(tmp, hrFile);
  };
  const lastImport = async () => (await jsonRequest('GET', `http://127.0.0.1:${scPort}/import`)).json;
  const waitImport = async (pred, ms = 15000) => {
    const end = Date.now() + ms;
    let last;
    while (Date.now() < end) {
      last = await lastImport();
      if (last && pred(last)) return last;
      await sleep(100);
    }
    assert.fail(`import not seen: ${JSON.stringify(last)}`);
    return last;
  };
  const scimGroups = async (userName) => {
    const st = await e.scim.state();
    const u = st.users.find((x) => x.userName === userName);
    return u ? st.groups.filter((g) => g.members.some((m) => m.value === u.id)).map((g) => g.displayName).sort() : null;
  };
  const dbRow = (login) => {
    const out = pg.psql(`SELECT active, department, coalesce((SELECT string_agg(group_name, ',' ORDER BY group_name) FROM account_groups WHERE account_key = a.key), '') FROM accounts a WHERE key = '${login}'`);
    if (!out) return null;
    const [active, dept, groups] = out.split('|');
    return { active: active === 't', dept, groups: groups ? groups.split(',') : [] };
  };

  before(async () => {
    pg = await startPostgres();
    pg.psql(SCHEMA);
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      cfgOver: (env) => {
        hrFile = path.join(env.dir, 'hr.csv');
        return {
          targets: { ...env.baseConfig().targets, hrdb: sqlTarget(pg) },
          hr_source: {
            file: hrFile,
            poll_s: 1,
            // a short JML lease: the kill -9 test waits for it to lapse
            lease_s: 5,
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
    fs.writeFileSync(path.join(e.dir, 'admin.token'), ADMIN_TOKEN);
    scPort = await freePort();
    sc = await startProcess(BIN, ['--config', e.cfgFile, '--listen', `127.0.0.1:${scPort}`, '--log-level', 'info',
      '--admin-token-file', path.join(e.dir, 'admin.token')], { name: 'provgated' });
    await waitForPort(scPort);
  });
  after(async () => {
    if (sc) await sc.stop();
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('joiners: accounts appear in SCIM and PostgreSQL; a person who logged in before is not duplicated', async () => {
    const { res } = await e.login('alice', '/app/before-hr');
    assert.equal(res.status, 200);
    const raw = JSON.parse(res.body).rawHeaders;
    const aliceId = raw[raw.findIndex((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-provgate-identity') + 1];
    assert.ok(aliceId);
    writeHr([row('1001', 'nora', 'eng'), row('1002', 'otto', 'sales'), row('1003', 'alice', 'eng'),
      '1004,too,few', row('1005', 'pia', 'sales')]);
    const s = await waitImport((x) => x.status === 'ok' && x.joins === 4);
    assert.equal(s.malformed, 1);
    assert.ok(s.errors.some((x) => x.line === 5), JSON.stringify(s.errors));
    await until('nora in PostgreSQL', () => dbRow('nora'));
    await until('all accounts', async () => dbRow('otto') && dbRow('pia') && (await scimGroups('otto')));
    assert.deepEqual(dbRow('nora'), { active: true, dept: 'eng', groups: ['eng-tools', 'staff'] });
    assert.deepEqual(dbRow('otto').groups, ['staff']);
    assert.deepEqual(await scimGroups('nora'), ['engineering', 'staff']);
    // alice's HR record joined the identity her login created
    const link = await e.redisCmd('GET', `pg:idx:email:${(await import('node:crypto')).createHash('sha256').update('alice@example.com').digest('base64url')}`);
    assert.equal(link, aliceId, 'correlated by the verified email: one identity');
    assert.ok(e.audit().some((x) => x.type === 'jml.join' && x.reason === 'existing_identity' && x.identity === aliceId));
  });

  test('a mover: access follows the new department, common birthright access stays', async () => {
    writeHr([row('1001', 'nora', 'sales'), row('1002', 'otto', 'eng'), row('1003', 'alice', 'eng'),
      row('1005', 'pia', 'sales')]);
    const s = await waitImport((x) => x.status === 'ok' && x.moves === 2);
    assert.equal(s.joins, 0);
    await until('otto moved', () => dbRow('otto').groups.includes('eng-tools'));
    await until('nora moved', () => !dbRow('nora').groups.includes('eng-tools'));
    assert.deepEqual(dbRow('nora'), { active: true, dept: 'sales', groups: ['staff'] });
    assert.deepEqual(dbRow('otto').groups, ['eng-tools', 'staff']);
    assert.ok(e.audit().some((x) => x.type === 'jml.move' && x.hr_key === '1002'
      && x.changes.some((c) => c.attr === 'department' && c.old === 'sales' && c.new === 'eng')));
  });

  test('a leaver: every account disabled and the gateway session ended at once', async () => {
    const { b, res } = await e.login('alice', '/app/leaving');
    assert.equal(res.status, 200);
    writeHr([row('1001', 'nora', 'sales'), row('1002', 'otto', 'eng'), row('1005', 'pia', 'sales')]);
    await waitImport((x) => x.status === 'ok' && x.leaves === 1);
    // the very next request is refused (redirected to sign in)
    const next = await b.request('GET', `${e.base}/app/leaving`);
    assert.equal(next.status, 302, 'session ended');
    await until('alice disabled in PostgreSQL', () => dbRow('alice') && !dbRow('alice').active);
    await until('alice disabled in SCIM', async () => (await e.scimUsers('alice'))[0].active === false);
    assert.ok(e.audit().some((x) => x.type === 'jml.leave' && x.reason === 'left'));
    assert.ok(e.audit().some((x) => x.type === 'provision.deprovision' && x.app === 'hrdb'));
  });

  test('webhook events: join and leave one person, idempotent by event id, malformed refused', async () => {
    const post = (body, token = ADMIN_TOKEN) => jsonRequest('POST', `http://127.0.0.1:${scPort}/events`, body,
      token ? { authorization: `Bearer ${token}` } : {});
    const join = {
      id: 'evt-join-quinn-1', type: 'join', key: '2001',
      attributes: {
        username: 'quinn', email: 'quinn@example.com', name: 'Quinn Person', given_name: 'Quinn',
        family_name: 'Person', department: 'eng', employee_type: 'employee',
      },
    };
    assert.equal((await post(join, null)).status, 401);
    const bad = await post({ id: 'evt-bad', type: 'hire', key: 'x', attributes: {} });
    assert.equal(bad.status, 400);
    assert.match(bad.json.detail, /type/);
    assert.equal((await post(join)).status, 202);
    await until('quinn in PostgreSQL', () => dbRow('quinn'));
    assert.deepEqual(dbRow('quinn'), { active: true, dept: 'eng', groups: ['eng-tools', 'staff'] });
    // the same event again: accepted, nothing applied twice
    const auditBefore = e.audit().filter((x) => x.type === 'jml.operation').length;
    let again;
    for (let i = 0; i < 50; i++) {
      again = await post(join);
      if (again.status === 202) break;
      await sleep(100); // 503 busy while the first one finishes
    }
    assert.equal(again.status, 202);
    await until('duplicate recorded', () => e.audit().some((x) => x.type === 'jml.event' && x.duplicate === true));
    assert.equal(e.audit().filter((x) => x.type === 'jml.operation').length, auditBefore, 'no operation enqueued again');
    let left;
    for (let i = 0; i < 50; i++) {
      left = await post({ id: 'evt-leave-quinn-1', type: 'leave', key: '2001' });
      if (left.status === 202) break;
      await sleep(100);
    }
    assert.equal(left.status, 202);
    await until('quinn disabled', () => dbRow('quinn') && !dbRow('quinn').active);
  });

  test('the import endpoint needs the admin token; a re-import of the same file changes nothing', async () => {
    const r = await jsonRequest('POST', `http://127.0.0.1:${scPort}/import`, {});
    assert.equal(r.status, 401);
    const ok = await jsonRequest('POST', `http://127.0.0.1:${scPort}/import`, {}, { authorization: `Bearer ${ADMIN_TOKEN}` });
    assert.equal(ok.status, 202);
    const s = await waitImport((x) => x.status === 'ok' && x.unchanged === 3 && x.joins === 0 && x.leaves === 0);
    assert.equal(s.operations, 0);
  });

  test('two sidecars share the work: one export is applied once', async () => {
    const port2 = await freePort();
    const sc2 = await startProcess(BIN, ['--config', e.cfgFile, '--listen', `127.0.0.1:${port2}`, '--log-level', 'info',
      '--admin-token-file', path.join(e.dir, 'admin.token')], { name: 'provgated-2' });
    try {
      await waitForPort(port2);
      writeHr([row('1001', 'nora', 'sales'), row('1002', 'otto', 'eng'), row('1005', 'pia', 'sales'),
        row('1006', 'rex', 'eng')]);
      await until('rex in PostgreSQL', () => dbRow('rex'));
      await sleep(2500); // both sidecars have polled the new file by now
      const joins = e.audit().filter((x) => x.type === 'jml.join' && x.hr_key === '1006');
      assert.equal(joins.length, 1, 'exactly one sidecar applied the join');
      const imports = e.audit().filter((x) => x.type === 'jml.import' && x.outcome === 'success' && x.joins === 1);
      assert.equal(imports.length, 1, 'the export was applied once');
      assert.equal(pg.psql("SELECT count(*) FROM accounts WHERE key = 'rex'"), '1');
    } finally {
      await sc2.stop();
    }
  });
  test('a sidecar killed in the middle of an import: after a restart it completes, nothing doubled', async () => {
    const N = 300;
    const ks = Array.from({ length: N }, (_, i) => `k${String(i + 1).padStart(4, '0')}`);
    writeHr([row('1001', 'nora', 'sales'), row('1002', 'otto', 'eng'), row('1005', 'pia', 'sales'),
      row('1006', 'rex', 'eng'), ...ks.map((k, i) => row(String(5000 + i), k, 'sales'))]);
    const kCount = () => Number(pg.psql("SELECT count(*) FROM accounts WHERE key LIKE 'k0%'"));
    await until('the import under way', async () => e.audit().filter((x) => x.type === 'jml.operation'
      && /^5\d{3}$/.test(x.hr_key)).length >= 5, 30000);
    await sc.stop({ signal: 'SIGKILL' });
    const atKill = e.audit().filter((x) => x.type === 'jml.import' && x.outcome === 'success' && x.joins >= N);
    assert.equal(atKill.length, 0, 'killed before the import finished');
    // restarted on the same port: the lease of the dead one expires, the
    // snapshot was never committed, so the whole export is applied again
    sc = await startProcess(BIN, ['--config', e.cfgFile, '--listen', `127.0.0.1:${scPort}`, '--log-level', 'info',
      '--admin-token-file', path.join(e.dir, 'admin.token')], { name: 'provgated-restarted' });
    await waitForPort(scPort);
    await waitImport((x) => x.status === 'ok' && x.joins >= N, 120000);
    await until(`${N} accounts in PostgreSQL`, async () => kCount() === N, 120000);
    await until(`${N} accounts in SCIM`, async () => (await e.scimUsers()).filter((u) => u.userName.startsWith('k0')).length === N, 120000);
    const users = (await e.scimUsers()).filter((u) => u.userName.startsWith('k0'));
    assert.equal(new Set(users.map((u) => u.userName)).size, N, 'one SCIM account per person');
    assert.equal(new Set(users.map((u) => u.externalId)).size, N, 'one identity per person');
    assert.equal(Number(await e.redisCmd('XLEN', 'pg:outbox:dead')), 0, 'no dead letters');
  });
});
