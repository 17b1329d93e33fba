// Reconciliation end to end against a real PostgreSQL (SQL connector): the
// sidecar (build/provgated) provisions people from an HR export, then hand
// changes in the database (a rogue account, a deleted account, a changed
// attribute, an extra group, a re-enabled leaver, an unlinked account) are
// found by POST /reconcile, reported (JSON and CSV files, GET /reconcile,
// audit events), and repaired through the outbox by the configured actions
// (revert, adopt, disable) after a SIGHUP reload. Then the same against a
// real OpenLDAP slapd (tests/integration/lib/slapd.mjs).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  cleanupAll, freePort, startProcess, waitForPort, sleep, REPO_ROOT, jsonRequest, until,
} from './lib/harness.mjs';
import { startPostgres, ACCOUNTS_SCHEMA, accountsSqlTarget } from './lib/pg.mjs';
import {
  startSlapd, ROOTDN, ROOTPW, PEOPLE, GROUPS, DISABLED,
} from './lib/slapd.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const ADMIN_TOKEN = 'recon-admin-token-0123456789';

const SCHEMA = ACCOUNTS_SCHEMA;

function sqlTarget(pg, reconcile) {
  return accountsSqlTarget(pg, { reconcile });
}

const POLICIES = {
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'db-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'staff' }] }] },
    { id: 'db-eng', kind: 'birthright', who: { attr: 'department', eq: 'eng' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'eng-tools' }] }] },
    { id: 'sod-db-eng-staff', kind: 'sod', action: 'detect',
      conflict: [{ target: 'hrdb', type: 'group', value: 'staff' }, { target: 'hrdb', type: 'group', value: 'eng-tools' }] },
  ],
};

const REPORT_ONLY = { orphaned: 'report', rogue: 'report', missing: 'report', drift: 'report', sod: 'report' };
const REPAIR = { orphaned: 'disable', rogue: 'adopt', missing: 'revert', drift: 'revert', sod: 'report' };

const HEADER = 'emp_id,login,email,name,given,family,dept,type,end_date';
const row = (id, login, dept) => `${id},${login},${login}@example.com,${login} Person,${login},Person,${dept},employee,`;
const hrHash = (key) => crypto.createHash('sha256').update(key).digest('base64url');

describe('reconciliation of a PostgreSQL target through the sidecar', () => {
  let e;
  let pg;
  let sc;
  let scPort;
  let hrFile;
  let scCfgFile;
  let reconDir;
  let baseCfg;

  const writeHr = (rows) => {
    const tmp = `${hrFile}.tmp`;
    fs.writeFileSync(tmp, `${[HEADER, ...rows].join('\n')}\n`);
    fs.renameSync(tmp, hrFile);
  };
  const writeScCfg = (reconcile) => {
    const cfg = JSON.parse(JSON.stringify(baseCfg));
    cfg.targets.hrdb.reconcile = reconcile;
    fs.writeFileSync(scCfgFile, JSON.stringify(cfg, null, 2));
  };
  const dbRow = (login) => {
    const out = pg.psql(`SELECT active, email, coalesce((SELECT string_agg(group_name, ',' ORDER BY group_name) FROM account_groups WHERE account_key = a.key), '') FROM accounts a WHERE key = '${login}'`);
    if (!out) return null;
    const [active, email, groups] = out.split('|');
    return { active: active === 't', email, groups: groups ? groups.split(',') : [] };
  };
  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
  const lastRun = async () => {
    const r = await jsonRequest('GET', `http://127.0.0.1:${scPort}/reconcile?target=hrdb`);
    return r.status === 200 ? r.json : null;
  };
  const reconcile = async () => {
    const prev = await lastRun();
    const r = await jsonRequest('POST', `http://127.0.0.1:${scPort}/reconcile?target=hrdb`, {}, auth);
    assert.equal(r.status, 202, JSON.stringify(r.json));
    return until('reconciliation report', async () => {
      const x = await lastRun();
      return x && x.status && (!prev || x.run !== prev.run) ? x : null;
    });
  };
  const iidOf = (empId) => e.redisCmd('GET', `pg:idx:hr:${hrHash(empId)}`);
  const find = (rep, kind, account) => rep.findings.filter((f) => f.kind === kind && f.account === account);

  before(async () => {
    pg = await startPostgres();
    pg.psql(SCHEMA);
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      cfgOver: (env) => {
        hrFile = path.join(env.dir, 'hr.csv');
        return {
          targets: { ...env.baseConfig().targets, hrdb: sqlTarget(pg, REPORT_ONLY) },
          hr_source: {
            file: hrFile,
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
            correlation: [{ attr: 'email', index: 'email' }],
          },
        };
      },
    });
    baseCfg = JSON.parse(fs.readFileSync(e.cfgFile, 'utf8'));
    scCfgFile = path.join(e.cfgDir, 'sidecar.json');
    writeScCfg(REPORT_ONLY);
    reconDir = path.join(e.dir, 'recon');
    fs.mkdirSync(reconDir);
    fs.writeFileSync(path.join(e.dir, 'admin.token'), ADMIN_TOKEN);
    scPort = await freePort();
    sc = await startProcess(BIN, ['--config', scCfgFile, '--listen', `127.0.0.1:${scPort}`, '--log-level', 'info',
      '--admin-token-file', path.join(e.dir, 'admin.token'), '--recon-dir', reconDir], { name: 'provgated' });
    await waitForPort(scPort);
  });
  after(async () => {
    if (sc) {
      // a clean stop: exit 0 and no sanitizer report (ASan build: leaks too)
      const { code, signal } = await sc.stop();
      assert.equal(signal, null);
      assert.equal(code, 0, sc.output.slice(-2000));
      assert.doesNotMatch(sc.output, /Sanitizer|runtime error/);
    }
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('the API needs the admin token and a known target', async () => {
    assert.equal((await jsonRequest('POST', `http://127.0.0.1:${scPort}/reconcile?target=hrdb`, {})).status, 401);
    assert.equal((await jsonRequest('POST', `http://127.0.0.1:${scPort}/reconcile?target=nope`, {}, auth)).status, 404);
    // SCIM targets (demoapp here) are reconciled too: recon-scim.test.mjs
  });

  test('a bad "reconcile" object is refused at start with its JSON path', async () => {
    const cfg = JSON.parse(JSON.stringify(baseCfg));
    cfg.targets.hrdb.reconcile = { drift: 'adopt' };
    const bad = path.join(e.cfgDir, 'bad-recon.json');
    fs.writeFileSync(bad, JSON.stringify(cfg));
    const p = spawnSync(BIN, ['--config', bad, '--listen', '127.0.0.1:0'], { encoding: 'utf8', timeout: 10000 });
    assert.equal(p.status, 1);
    assert.match(p.stdout + p.stderr, /\$\.targets\.hrdb\.reconcile\.drift: \\?"adopt\\?" is only valid for rogue/);
  });

  test('in sync after the HR import: only the detected toxic combination', async () => {
    writeHr([row('1001', 'nora', 'eng'), row('1002', 'otto', 'sales'), row('1003', 'pia', 'sales'),
      row('1004', 'quinn', 'eng'), row('1005', 'rex', 'sales')]);
    await until('accounts provisioned', () => ['nora', 'otto', 'pia', 'quinn', 'rex'].every((k) => dbRow(k))
      && dbRow('quinn').groups.length === 2);
    await until('pia recorded', async () => (await e.redisCmd('HGET', `pg:id:${await iidOf('1003')}`, 'acct:hrdb')));
    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.equal(rep.mode, 'full');
    assert.equal(rep.accounts, 5);
    assert.ok(rep.identities >= 5);
    assert.deepEqual(rep.counts, { orphaned: 0, rogue: 0, missing: 0, drift: 0, sod: 2 }, JSON.stringify(rep.findings));
    assert.deepEqual(rep.findings.filter((f) => f.kind === 'sod').map((f) => f.account).sort(), ['nora', 'quinn']);
    assert.equal(find(rep, 'sod', 'nora')[0].policy, 'sod-db-eng-staff');
  });

  test('hand changes are found and only reported (action report)', async () => {
    // a leaver: the import disables rex; then someone re-enables him by hand
    writeHr([row('1001', 'nora', 'eng'), row('1002', 'otto', 'sales'), row('1003', 'pia', 'sales'),
      row('1004', 'quinn', 'eng')]);
    await until('rex disabled', () => dbRow('rex') && !dbRow('rex').active);
    pg.psql("UPDATE accounts SET active = true WHERE key = 'rex'");
    pg.psql("INSERT INTO accounts (key, display_name, email, department) VALUES ('mallory', 'M', 'm@evil', 'ops')");
    pg.psql("DELETE FROM accounts WHERE key = 'otto'");
    pg.psql("UPDATE accounts SET email = 'nora@evil.example' WHERE key = 'nora'");
    pg.psql("INSERT INTO account_groups VALUES ('quinn', 'admins')");
    const piaIid = await iidOf('1003');
    await e.redisCmd('HDEL', `pg:id:${piaIid}`, 'acct:hrdb');
    const auditBefore = e.audit().length;

    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.deepEqual(rep.counts, { orphaned: 1, rogue: 3, missing: 1, drift: 1, sod: 2 }, JSON.stringify(rep.findings));
    assert.equal(find(rep, 'orphaned', 'rex')[0].reason, 'identity_left');
    assert.equal(find(rep, 'rogue', 'mallory')[0].reason, 'no_identity');
    const pia = find(rep, 'rogue', 'pia')[0];
    assert.equal(pia.reason, 'unlinked');
    assert.equal(pia.candidate, piaIid);
    const q = find(rep, 'rogue', 'quinn')[0];
    assert.equal(q.reason, 'entitlements');
    assert.deepEqual(q.extra_groups, ['admins']);
    const m = rep.findings.find((f) => f.kind === 'missing');
    assert.equal(m.account, 'otto');
    assert.equal(m.reason, 'account_gone');
    assert.equal(m.identity, await iidOf('1002'));
    const d = find(rep, 'drift', 'nora')[0];
    assert.equal(d.reason, 'attributes');
    assert.deepEqual(d.attrs, [{ attr: 'email', desired: 'nora@example.com', actual: 'nora@evil.example' }]);
    assert.ok(rep.findings.every((f) => f.action === 'report' && f.action_outcome === 'reported'));
    assert.deepEqual(rep.actions, { enqueued: 0, adopted: 0, reported: 8, skipped: 0, failed: 0 });

    // the report files
    const json = JSON.parse(fs.readFileSync(path.join(reconDir, rep.files.json), 'utf8'));
    assert.deepEqual(json.counts, rep.counts);
    const csv = fs.readFileSync(path.join(reconDir, rep.files.csv), 'utf8').trim().split('\r\n');
    assert.equal(csv[0], 'kind,reason,account,account_id,identity,action,action_outcome,detail');
    assert.equal(csv.length, 1 + rep.findings.length);
    assert.ok(csv.some((l) => l.startsWith('rogue,no_identity,mallory,')));
    // GET /reconcile lists it
    const all = (await jsonRequest('GET', `http://127.0.0.1:${scPort}/reconcile`)).json;
    assert.equal(all.reports.hrdb.run, rep.run);

    // audited: one recon.finding and one recon.action per finding, one run
    const ev = e.audit().slice(auditBefore).filter((x) => x.run === rep.run);
    assert.equal(ev.filter((x) => x.type === 'recon.finding').length, 8);
    assert.equal(ev.filter((x) => x.type === 'recon.action' && x.reason === 'reported').length, 8);
    assert.ok(ev.some((x) => x.type === 'recon.finding' && x.kind === 'missing' && x.account === 'otto'));
    assert.ok(ev.some((x) => x.type === 'recon.run' && x.counts.rogue === 3));
    // nothing was changed
    assert.equal(dbRow('otto'), null);
    assert.equal(dbRow('rex').active, true);
  });

  test('revert, adopt and disable repair the target through the outbox', async () => {
    writeScCfg(REPAIR);
    const reloadsBefore = e.audit().filter((x) => x.type === 'config.reload').length;
    sc.kill('SIGHUP');
    await until('reloaded', () => e.audit().filter((x) => x.type === 'config.reload' && x.outcome === 'success').length
      > reloadsBefore);
    const piaIid = await iidOf('1003');

    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.deepEqual(rep.counts, { orphaned: 1, rogue: 3, missing: 1, drift: 1, sod: 2 });
    assert.equal(find(rep, 'orphaned', 'rex')[0].action, 'disable');
    assert.match(find(rep, 'orphaned', 'rex')[0].action_outcome, /^(enqueued|already_pending)$/);
    assert.equal(find(rep, 'rogue', 'pia')[0].action_outcome, 'adopted');
    assert.equal(find(rep, 'rogue', 'mallory')[0].action_outcome, 'skipped');
    assert.equal(find(rep, 'rogue', 'quinn')[0].action_outcome, 'skipped');
    assert.equal(find(rep, 'drift', 'nora')[0].action, 'revert');
    assert.equal(rep.actions.enqueued, 3);
    assert.equal(rep.actions.adopted, 1);
    assert.equal(rep.actions.skipped, 2);
    assert.equal(rep.actions.reported, 2);

    await until('rex disabled again', () => dbRow('rex') && !dbRow('rex').active);
    await until('otto re-created', () => dbRow('otto') && dbRow('otto').groups.includes('staff'));
    await until('nora email restored', () => dbRow('nora').email === 'nora@example.com');
    assert.ok(await e.redisCmd('HGET', `pg:id:${piaIid}`, 'acct:hrdb'), 'pia linked again');
    assert.ok(e.audit().some((x) => x.type === 'recon.action' && x.reason === 'adopted' && x.candidate === piaIid));

    // converged: what remains is what provgate must not touch on its own
    const again = await until('converged', async () => {
      const r = await reconcile();
      return r.counts.missing === 0 && r.counts.drift === 0 && r.counts.orphaned === 0 ? r : null;
    });
    assert.deepEqual(again.counts, { orphaned: 0, rogue: 2, missing: 0, drift: 0, sod: 2 });
  });

  test('an incremental run lists only what changed since the last run', async () => {
    await sleep(50);
    pg.psql("UPDATE accounts SET department = 'hacked', updated_at = clock_timestamp() WHERE key = 'pia'");
    const prev = await lastRun();
    const r = await jsonRequest('POST', `http://127.0.0.1:${scPort}/reconcile?target=hrdb&mode=incremental`, {}, auth);
    assert.equal(r.status, 202);
    const rep = await until('incremental report', async () => {
      const x = await lastRun();
      return x && x.run !== prev.run ? x : null;
    });
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.equal(rep.mode, 'incremental');
    assert.equal(rep.since_ms, Number(prev.run));
    assert.equal(rep.accounts, 1, 'only pia was modified');
    assert.deepEqual(rep.counts, { orphaned: 0, rogue: 0, missing: 0, drift: 1, sod: 0 });
    assert.deepEqual(rep.findings[0].attrs, [{ attr: 'department', desired: 'sales', actual: 'hacked' }]);
    assert.equal(rep.findings[0].action_outcome, 'enqueued');
    await until('pia repaired', () => pg.psql("SELECT department FROM accounts WHERE key = 'pia'") === 'sales');
  });
});

// The same against a real OpenLDAP slapd (LDAP connector, groups, disable by
// moving to ou=disabled): a hand-made entry (rogue), a deleted entry
// (missing), a changed mail and a removed membership (drift), repaired by
// revert through the outbox.
describe('reconciliation of an LDAP target (real slapd) through the sidecar', () => {
  let e;
  let ldap;
  let sc;
  let scPort;
  let hrFile;

  const ldapTarget = () => ({
    type: 'ldap',
    key: 'uid',
    attributes: { uid: '${username}', cn: '${name}', sn: '${family_name}', mail: '${email}' },
    reconcile: { orphaned: 'disable', rogue: 'adopt', missing: 'revert', drift: 'revert', sod: 'report' },
    connector: {
      url: ldap.url, bind_dn: ROOTDN, bind_password: ROOTPW, base_dn: PEOPLE, timeout_ms: 3000,
      groups: { base_dn: GROUPS },
      disable: { mode: 'move', disabled_ou: DISABLED },
    },
  });
  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
  const lastRun = async () => {
    const r = await jsonRequest('GET', `http://127.0.0.1:${scPort}/reconcile?target=dir`);
    return r.status === 200 ? r.json : null;
  };
  const reconcile = async () => {
    const prev = await lastRun();
    const r = await jsonRequest('POST', `http://127.0.0.1:${scPort}/reconcile?target=dir`, {}, auth);
    assert.equal(r.status, 202, JSON.stringify(r.json));
    return until('reconciliation report', async () => {
      const x = await lastRun();
      return x && x.status && (!prev || x.run !== prev.run) ? x : null;
    });
  };

  before(async () => {
    ldap = await startSlapd({ groups: ['staff', 'eng'] });
    e = await startEnv(undefined, {
      workers: 1,
      policies: {
        policies: [
          ...DEFAULT_POLICIES.policies,
          { id: 'dir-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
            grants: [{ target: 'dir', entitlements: [{ type: 'group', value: 'staff' }] }] },
          { id: 'dir-eng', kind: 'birthright', who: { attr: 'department', eq: 'eng' },
            grants: [{ target: 'dir', entitlements: [{ type: 'group', value: 'eng' }] }] },
        ],
      },
      cfgOver: (env) => {
        hrFile = path.join(env.dir, 'hr.csv');
        return {
          targets: { ...env.baseConfig().targets, dir: ldapTarget() },
          hr_source: {
            file: hrFile,
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
    if (sc) {
      const { code, signal } = await sc.stop();
      assert.equal(signal, null);
      assert.equal(code, 0, sc.output.slice(-2000));
      assert.doesNotMatch(sc.output, /Sanitizer|runtime error/);
    }
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    if (ldap) await ldap.stop();
    await cleanupAll();
  });

  test('rogue, missing and drift found in slapd and reverted', async () => {
    const tmp = `${hrFile}.tmp`;
    fs.writeFileSync(tmp, `${[HEADER, row('2001', 'nora', 'eng'), row('2002', 'otto', 'sales')].join('\n')}\n`);
    fs.renameSync(tmp, hrFile);
    const noraDn = `uid=nora,${PEOPLE}`;
    await until('accounts in LDAP', () => ldap.entry('nora') && ldap.entry('otto')
      && ldap.members('eng').includes(noraDn));
    const clean = await reconcile();
    assert.equal(clean.status, 'ok', JSON.stringify(clean));
    assert.equal(clean.accounts, 2);
    assert.deepEqual(clean.counts, { orphaned: 0, rogue: 0, missing: 0, drift: 0, sod: 0 }, JSON.stringify(clean.findings));
    // the duration of each phase, in order, adding up to the run
    assert.deepEqual(Object.keys(clean.phases_ms), ['identities', 'list', 'compare', 'act']);
    assert.ok(Object.values(clean.phases_ms).every((v) => Number.isInteger(v) && v >= 0), JSON.stringify(clean.phases_ms));
    assert.equal(Object.values(clean.phases_ms).reduce((a, b) => a + b, 0), clean.finished_ms - clean.started_ms);

    ldap.ldif(`dn: uid=mallory,${PEOPLE}\nobjectClass: inetOrgPerson\nuid: mallory\ncn: M\nsn: M\n\n`);
    ldap.del(`uid=otto,${PEOPLE}`);
    ldap.modify(`dn: ${noraDn}\nchangetype: modify\nreplace: mail\nmail: nora@evil.example\n-\n\n`
      + `dn: cn=eng,${GROUPS}\nchangetype: modify\ndelete: member\nmember: ${noraDn}\n-\n\n`);

    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.deepEqual(rep.counts, { orphaned: 0, rogue: 1, missing: 1, drift: 2, sod: 0 }, JSON.stringify(rep.findings));
    const by = (kind, reason) => rep.findings.find((f) => f.kind === kind && f.reason === reason);
    assert.equal(by('rogue', 'no_identity').account, 'mallory');
    assert.equal(by('rogue', 'no_identity').action_outcome, 'skipped');
    assert.equal(by('missing', 'account_gone').account, 'otto');
    assert.deepEqual(by('drift', 'attributes').attrs,
      [{ attr: 'mail', desired: 'nora@example.com', actual: 'nora@evil.example' }]);
    assert.deepEqual(by('drift', 'entitlements').missing_groups, ['eng']);
    assert.equal(rep.actions.enqueued, 3);

    await until('otto re-created', () => ldap.entry('otto'));
    await until('nora repaired', () => ldap.entry('nora').mail[0] === 'nora@example.com'
      && ldap.members('eng').includes(noraDn));
    assert.ok(ldap.entry('mallory'), 'a rogue account without identity is never touched');
    assert.ok(e.audit().some((x) => x.type === 'recon.finding' && x.kind === 'rogue' && x.account === 'mallory'));
  });

  test('scheduled runs: every schedule_s, incremental', async () => {
    const prev = await lastRun();
    const cfg = JSON.parse(fs.readFileSync(e.cfgFile, 'utf8'));
    cfg.targets.dir.reconcile = { ...cfg.targets.dir.reconcile, schedule_s: 1 };
    fs.writeFileSync(e.cfgFile, JSON.stringify(cfg, null, 2));
    sc.kill('SIGHUP');
    const runs = new Set();
    await until('two scheduled runs', async () => {
      const x = await lastRun();
      if (x && x.run !== prev.run && x.status === 'ok') runs.add(x.run);
      return runs.size >= 2;
    }, 20000);
    const x = await lastRun();
    // the first run after a reload is full (no earlier run is known), later
    // ones only list what changed (nothing: no account)
    assert.equal(x.mode, 'incremental');
    assert.equal(x.accounts, 0);
    assert.ok(e.audit().some((ev) => ev.type === 'recon.run' && ev.reason === 'incremental'));
  });
});
