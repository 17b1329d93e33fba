// Leave with retention: a leaver's accounts are disabled at once (lock) and
// deleted once the target's "delete_after_s" has passed, through the
// durable outbox, in a real SCIM server, a real PostgreSQL and a real
// OpenLDAP slapd (disabled = moved to ou=disabled). A rehire
// within the retention keeps the accounts; a sidecar restart between the
// leave and the deadline still deletes them; two sidecars delete once; a
// bad retention key stops provgated at start with its JSON path.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  cleanupAll, freePort, startProcess, waitForPort, sleep, REPO_ROOT, jsonRequest, until,
} from './lib/harness.mjs';
import { startPostgres, ACCOUNTS_SCHEMA, accountsSqlTarget } from './lib/pg.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';
import {
  startSlapd, ROOTDN, ROOTPW, PEOPLE, GROUPS, DISABLED,
} from './lib/slapd.mjs';

const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const ADMIN_TOKEN = 'sidecar-admin-token-0123456789';
const RETAIN_S = 4;

const POLICIES = {
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'db-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'staff' }] }] },
    { id: 'dir-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'dir', entitlements: [{ type: 'group', value: 'staff' }] }] },
  ],
};
const TARGETS = ['demoapp', 'dir', 'hrdb'];

const person = (login) => ({
  username: login, email: `${login}@example.com`, name: `${login} Person`, given_name: login,
  family_name: 'Person', department: 'sales', employee_type: 'employee',
});

describe('leave with retention: lock, then delete later', () => {
  let e;
  let pg;
  let ldap;
  let sc;
  let scPort;
  let seq = 0;

  const startSidecar = async (port, name = 'provgated') => startProcess(BIN, ['--config', e.cfgFile, '--listen',
    `127.0.0.1:${port}`, '--log-level', 'info', '--admin-token-file', path.join(e.dir, 'admin.token')], { name });
  const post = async (body) => {
    let r;
    for (let i = 0; i < 100; i++) {
      r = await jsonRequest('POST', `http://127.0.0.1:${scPort}/events`, body, { authorization: `Bearer ${ADMIN_TOKEN}` });
      if (r.status !== 503) break;
      await sleep(100); // another event or import is being applied
    }
    assert.equal(r.status, 202, JSON.stringify(r.json));
    return r;
  };
  const join = (key, login) => post({ id: `evt-${++seq}`, type: 'join', key, attributes: person(login) });
  const leave = (key) => post({ id: `evt-${++seq}`, type: 'leave', key });
  const dbRow = (login) => {
    const out = pg.psql(`SELECT active FROM accounts WHERE key = '${login}'`);
    return out ? { active: out === 't' } : null;
  };
  const scimUser = async (login) => (await e.scimUsers(login))[0] || null;
  // in LDAP: null (no entry), true (under ou=people), false (moved to ou=disabled)
  const ldapActive = (login) => {
    const x = ldap.entry(login);
    return x ? !x.dn[0].endsWith(DISABLED) : null;
  };
  const iidOf = (key) => e.audit().find((x) => x.type === 'jml.join' && x.hr_key === key).identity;
  const joined = async (key, login) => {
    await join(key, login);
    await until(`${login} provisioned`, async () => dbRow(login)?.active && (await scimUser(login))?.active
      && ldapActive(login) === true);
    return iidOf(key);
  };
  const leftAndLocked = async (key, login) => {
    await leave(key);
    await until(`${login} disabled`, async () => dbRow(login)?.active === false
      && (await scimUser(login))?.active === false && ldapActive(login) === false);
  };

  before(async () => {
    pg = await startPostgres();
    pg.psql(ACCOUNTS_SCHEMA);
    ldap = await startSlapd({ groups: ['staff'] });
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      cfgOver: (env) => {
        const base = env.baseConfig();
        return {
          targets: {
            demoapp: { ...base.targets.demoapp, delete_after_s: RETAIN_S },
            hrdb: accountsSqlTarget(pg, { leave: 'disable', delete_after_s: RETAIN_S }),
            dir: {
              type: 'ldap',
              key: 'uid',
              attributes: { uid: '${username}', cn: '${name}', sn: '${family_name}', mail: '${email}' },
              delete_after_s: RETAIN_S,
              connector: {
                url: ldap.url, bind_dn: ROOTDN, bind_password: ROOTPW, base_dn: PEOPLE, timeout_ms: 3000,
                groups: { base_dn: GROUPS },
                disable: { mode: 'move', disabled_ou: DISABLED },
              },
            },
          },
          expiry: { sweep_s: 1 },
          hr_source: {
            file: path.join(env.dir, 'hr.csv'),
            poll_s: 3600,
            feed: { key_column: 'emp_id', attributes: { emp_id: 'employee_id' } },
            correlation: [{ attr: 'email', index: 'email' }],
          },
        };
      },
    });
    fs.writeFileSync(path.join(e.dir, 'admin.token'), ADMIN_TOKEN);
    scPort = await freePort();
    sc = await startSidecar(scPort);
    await waitForPort(scPort);
  });
  after(async () => {
    if (sc) await sc.stop();
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    if (ldap) await ldap.stop();
    await cleanupAll();
  });

  test('a leaver is disabled at once and deleted in SCIM and PostgreSQL after the retention', async () => {
    const iid = await joined('3001', 'lena');
    const leftAt = Date.now();
    await leftAndLocked('3001', 'lena');
    // the leave time is recorded on the identity
    const left = Number(await e.redisCmd('HGET', `pg:id:${iid}`, 'left'));
    assert.ok(Math.abs(left * 1000 - leftAt) < 3000, `left=${left}`);
    // locked, not deleted, while the retention runs
    await sleep(1500);
    assert.deepEqual(dbRow('lena'), { active: false });
    assert.equal((await scimUser('lena')).active, false);
    assert.equal(ldapActive('lena'), false);
    await until('lena deleted in PostgreSQL', () => dbRow('lena') === null, 20000);
    await until('lena deleted in SCIM', async () => (await scimUser('lena')) === null, 20000);
    await until('lena deleted in LDAP', () => ldapActive('lena') === null, 20000);
    assert.ok(Date.now() - leftAt >= RETAIN_S * 1000 - 1000, 'not before the retention');
    const ret = e.audit().filter((x) => x.type === 'jml.retention' && x.identity === iid && x.outcome === 'success');
    assert.deepEqual(ret.map((x) => x.target).sort(), TARGETS);
    assert.ok(ret.every((x) => x.operation === 'delete' && x.left === left && x.delete_after_s === RETAIN_S
      && x.idem.startsWith('retain:')), JSON.stringify(ret));
    assert.ok(e.audit().some((x) => x.type === 'provision.deprovision' && x.app === 'hrdb' && x.reason === 'removed'
      && x.identity === iid));
    assert.ok(e.audit().some((x) => x.type === 'provision.deprovision' && x.app === 'demoapp' && x.reason === 'deleted'
      && x.identity === iid));
    assert.ok(e.audit().some((x) => x.type === 'provision.deprovision' && x.app === 'dir' && x.reason === 'removed'
      && x.identity === iid));
    assert.equal(await e.redisCmd('HGET', `pg:id:${iid}`, 'retained:hrdb'), String(left));
    // later sweeps do not delete again
    await sleep(2500);
    assert.equal(e.audit().filter((x) => x.type === 'jml.retention' && x.identity === iid).length, TARGETS.length);
    // re-hired after the deletion: the accounts are created anew
    await join('3001', 'lena');
    await until('lena provisioned again', async () => dbRow('lena')?.active && (await scimUser('lena'))?.active
      && ldapActive('lena') === true);
  });

  test('a person re-hired within the retention is not deleted', async () => {
    const iid = await joined('3002', 'mika');
    await leftAndLocked('3002', 'mika');
    await sleep(1000);
    await join('3002', 'mika'); // rehired before the deadline
    await until('mika re-enabled', async () => dbRow('mika')?.active && (await scimUser('mika'))?.active
      && ldapActive('mika') === true);
    assert.equal(await e.redisCmd('HEXISTS', `pg:id:${iid}`, 'left'), 0);
    await sleep((RETAIN_S + 3) * 1000); // well past the old deadline
    assert.deepEqual(dbRow('mika'), { active: true });
    assert.equal((await scimUser('mika')).active, true);
    assert.equal(ldapActive('mika'), true);
    assert.ok(!e.audit().some((x) => x.type === 'jml.retention' && x.identity === iid), 'no deletion queued');
  });

  test('a sidecar restarted between the leave and the deadline still deletes', async () => {
    const iid = await joined('3003', 'nils');
    await leftAndLocked('3003', 'nils');
    await sc.stop();
    sc = null;
    await sleep((RETAIN_S + 1) * 1000); // the deadline passes while no sidecar runs
    assert.deepEqual(dbRow('nils'), { active: false });
    sc = await startSidecar(scPort, 'provgated-restarted');
    await waitForPort(scPort);
    await until('nils deleted in PostgreSQL', () => dbRow('nils') === null, 20000);
    await until('nils deleted in SCIM', async () => (await scimUser('nils')) === null, 20000);
    await until('nils deleted in LDAP', () => ldapActive('nils') === null, 20000);
    assert.equal(e.audit().filter((x) => x.type === 'jml.retention' && x.identity === iid).length, TARGETS.length);
  });

  test('two sidecars: each deletion is queued and applied once', async () => {
    const port2 = await freePort();
    const sc2 = await startSidecar(port2, 'provgated-2');
    try {
      await waitForPort(port2);
      const iid = await joined('3004', 'olga');
      await leftAndLocked('3004', 'olga');
      await until('olga deleted', async () => dbRow('olga') === null && (await scimUser('olga')) === null
        && ldapActive('olga') === null, 20000);
      await sleep(2500); // both sidecars have swept several times since
      const del = e.audit().filter((x) => x.type === 'provision.deprovision' && x.identity === iid
        && (x.reason === 'removed' || x.reason === 'deleted' || x.reason === 'already_gone'));
      assert.equal(del.length, TARGETS.length, JSON.stringify(del)); // one per target
      const created = e.audit().filter((x) => x.type === 'jml.retention' && x.identity === iid && x.reason === 'enqueued');
      assert.equal(created.length, TARGETS.length, JSON.stringify(created));
    } finally {
      await sc2.stop();
    }
  });

  test('a bad retention setting: provgated refuses to start with the JSON path', async () => {
    const cfg = JSON.parse(fs.readFileSync(e.cfgFile, 'utf8'));
    const bad = path.join(e.cfgDir, 'bad.json');
    const run = () => spawnSync(BIN, ['--config', bad, '--listen', '127.0.0.1:1'], { encoding: 'utf8', timeout: 5000 });
    const lastError = (r) => JSON.parse(r.stderr.trim().split('\n').pop()).error;

    cfg.targets.hrdb.leave = 'delete';
    fs.writeFileSync(bad, JSON.stringify(cfg));
    let r = run();
    assert.equal(r.status, 1, r.stderr);
    assert.ok(lastError(r).startsWith(`${bad}: $.targets.hrdb.delete_after_s: only with "leave": "disable"`), r.stderr);

    cfg.targets.hrdb.leave = 'disable';
    cfg.targets.demoapp.delete_after_days = 30;
    fs.writeFileSync(bad, JSON.stringify(cfg));
    r = run();
    assert.equal(r.status, 1, r.stderr);
    assert.ok(lastError(r).startsWith(`${bad}: $.targets.demoapp.delete_after_s: not together with delete_after_days`),
      r.stderr);

    delete cfg.targets.demoapp.delete_after_s;
    cfg.targets.demoapp.delete_after_days = -1;
    fs.writeFileSync(bad, JSON.stringify(cfg));
    r = run();
    assert.equal(r.status, 1, r.stderr);
    assert.ok(lastError(r).startsWith(`${bad}: $.targets.demoapp.delete_after_days: must be between 0 and 3650`),
      r.stderr);
  });
});
