// provgatectl identity show / list against a real provgated (real Redis,
// the SCIM peer, PostgreSQL) and the gateway (real nginx with the module):
// a person who signed in through the gateway and was then imported by HR
// is one identity with the accounts of both; lookups by id, HR key, email
// and subject; an unknown id is 404 (exit 1); an email two identities carry
// is 409 with both candidates; a leaver shows as left; nothing secret
// (session ids, the session cookie) is ever printed; reads are audited.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import {
  cleanupAll, freePort, startProcess, waitForPort, sleep, REPO_ROOT, jsonRequest, until,
} from './lib/harness.mjs';
import { startPostgres, ACCOUNTS_SCHEMA, accountsSqlTarget } from './lib/pg.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const CTL = path.join(REPO_ROOT, 'build', 'provgatectl');
const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const ADMIN_TOKEN = 'identity-admin-token-0123456789';

const POLICIES = {
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'db-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'staff' }] }] },
    { id: 'eng-admins-jit', kind: 'birthright', who: { attr: 'department', eq: 'eng' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'admins', jit: { scope: 'app', lifetime_s: 3600 } }] }] },
    { id: 'payroll-approval', kind: 'approval', who: { attr: 'department', eq: 'finance' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'payroll' }] }],
      approvers: { group: 'payroll-approvers' }, request_expires_s: 3600 },
  ],
};

const GIL = {
  password: 'gil-pw',
  claims: {
    sub: 'sub-gil', email: 'gil@example.com', email_verified: true, preferred_username: 'gil', name: 'Gil Test',
    given_name: 'Gil', family_name: 'Test', groups: ['staff'], employee_type: 'employee', department: 'finance',
  },
};

function ctlAsync(args) {
  return new Promise((resolve) => {
    const p = spawn(CTL, args, { env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

function identityOf(res) {
  const raw = JSON.parse(res.body).rawHeaders;
  return raw[raw.findIndex((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-provgate-identity') + 1];
}

describe('provgatectl identity against a real sidecar and gateway', () => {
  let e;
  let pg;
  let sc;
  let sidecar;
  let tokenFile;
  let alice; // { iid, b, cookie }
  let daveId;
  let seq = 0;

  const admin = (...args) => ctlAsync(['--sidecar', sidecar, '--token-file', tokenFile, ...args]);
  const api = (p, token = ADMIN_TOKEN) => jsonRequest('GET', `${sidecar}${p}`, undefined,
    token ? { authorization: `Bearer ${token}` } : {});
  const event = async (body) => {
    let r;
    for (let i = 0; i < 100; i++) {
      r = await jsonRequest('POST', `${sidecar}/events`, { id: `evt-id-${++seq}`, ...body },
        { authorization: `Bearer ${ADMIN_TOKEN}` });
      if (r.status !== 503) break;
      await sleep(100);
    }
    assert.equal(r.status, 202, JSON.stringify(r.json));
  };
  const hrPerson = (login, empno, dept = 'eng') => ({
    username: login, email: `${login.split('.')[0]}@example.com`, name: `${login} Person`, given_name: login,
    family_name: 'Person', department: dept, employee_type: 'employee', employee_number: empno,
  });
  const dbRow = (login) => pg.psql(`SELECT active FROM accounts WHERE key = '${login}'`);

  before(async () => {
    pg = await startPostgres();
    pg.psql(ACCOUNTS_SCHEMA);
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      users: { gil: GIL },
      cfgOver: (env) => {
        const base = env.baseConfig();
        return {
          targets: { ...base.targets, hrdb: accountsSqlTarget(pg) },
          // logins link by a verified email and by the employee number;
          // the HR import by the employee number and (its own index) the email
          identity: {
            ...base.identity,
            correlation: [...base.identity.correlation, { claim: 'employee_number', index: 'empno' }],
          },
          hr_source: {
            file: path.join(env.dir, 'hr.csv'),
            poll_s: 3600,
            feed: { key_column: 'emp_id', attributes: { emp_id: 'employee_number' } },
            correlation: [{ attr: 'employee_number', index: 'empno' }, { attr: 'email', index: 'hr_email' }],
          },
        };
      },
    });
    tokenFile = path.join(e.dir, 'admin.token');
    fs.writeFileSync(tokenFile, `${ADMIN_TOKEN}\n`);
    const port = await freePort();
    sidecar = `http://127.0.0.1:${port}`;
    sc = await startProcess(BIN, ['--config', e.cfgFile, '--listen', `127.0.0.1:${port}`, '--log-level', 'info',
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

  test('signed in through the gateway, then imported: one identity with both accounts, no secrets shown', async () => {
    const { b, res } = await e.login('alice', '/app/hello');
    assert.equal(res.status, 200);
    const iid = identityOf(res);
    const cookie = b.getCookie(`${e.base}/`, 'provgate_session');
    assert.ok(iid && cookie);
    alice = { iid, b, cookie };
    await event({ type: 'join', key: '1001', attributes: hrPerson('alice', '1001') });
    await until('alice in PostgreSQL', () => dbRow('alice') === 't');
    assert.ok(e.audit().some((x) => x.type === 'jml.join' && x.hr_key === '1001' && x.identity === iid
      && x.reason === 'existing_identity'), 'the import joined the login identity');

    const r = await admin('--json', 'identity', 'show', iid);
    assert.equal(r.code, 0, r.err);
    const v = JSON.parse(r.out);
    assert.equal(v.id, iid);
    assert.equal(v.state, 'active');
    assert.equal(v.left_at, null);
    assert.equal(v.attributes.hr_key, '1001');
    assert.equal(v.attributes.email, 'alice@example.com');
    assert.deepEqual(v.login, { issuer: e.op.issuer, subject: 'sub-alice-0001' });
    assert.equal(v.sessions.live, 1);
    assert.deepEqual(Object.keys(v.accounts).sort(), ['demoapp', 'hrdb']);
    assert.equal(v.accounts.hrdb.username, 'alice');
    assert.equal(v.accounts.hrdb.state, 'active');
    assert.deepEqual(v.accounts.hrdb.entitlements.map((x) => x.value), ['staff']);
    const scimId = (await e.scimUsers('alice'))[0].id;
    assert.equal(v.accounts.demoapp.id, scimId);
    assert.equal(v.accounts.demoapp.username, 'alice');
    assert.ok(v.accounts.demoapp.entitlements.some((x) => x.value === 'admins'));
    // the jit grant of the login, with its expiry
    const jit = v.jit.find((x) => x.target === 'demoapp' && x.value === 'admins');
    assert.ok(jit, JSON.stringify(v.jit));
    assert.equal(jit.lifetime_s, 3600);
    assert.ok(jit.expires_at >= jit.granted_at + 3600 && jit.expires_at <= Math.floor(Date.now() / 1000) + 3600 + 1);
    assert.deepEqual(v.access_requests, []);

    // never a session id or the cookie, in JSON, text or the raw API
    const sids = await e.redisCmd('SMEMBERS', `pg:idsess:${iid}`);
    assert.equal(sids.length, 1);
    const text = await admin('identity', 'show', iid);
    assert.equal(text.code, 0, text.err);
    const raw = await api(`/identities/${iid}`);
    assert.equal(raw.status, 200);
    for (const out of [r.out, r.err, text.out, text.err, JSON.stringify(raw.json)]) {
      for (const s of [...sids, cookie]) assert.ok(!out.includes(s), 'no session id / cookie value in the output');
    }
    assert.match(text.out, new RegExp(`^identity +${iid}$`, 'm'));
    assert.match(text.out, /^state +active$/m);
    assert.match(text.out, /^sessions +1 live$/m);
    assert.match(text.out, /^ {2}hrdb\t\d+\talice\tactive\tstaff$/m);
    assert.match(text.out, /^ {2}demoapp\t.*\tadmins\t\d{4}-\d\d-\d\dT/m);

    // the same identity by HR key, email and subject
    for (const args of [['--hr-key', '1001'], ['--email', 'Alice@Example.com'], ['--sub', 'sub-alice-0001'],
      ['--sub', 'sub-alice-0001', '--iss', e.op.issuer]]) {
      const x = await admin('--json', 'identity', 'show', ...args);
      assert.equal(x.code, 0, `${args}: ${x.err}`);
      assert.equal(JSON.parse(x.out).id, iid, args.join(' '));
    }
    // audited, by identity id only (not the looked-up value)
    const reads = e.audit().filter((x) => x.type === 'admin.read' && x.outcome === 'success' && x.reason === 'identity');
    assert.ok(reads.some((x) => x.lookup === 'email' && x.identities.includes(iid)));
    assert.ok(!JSON.stringify(reads).includes('alice@example.com'));
    assert.ok(!JSON.stringify(reads).toLowerCase().includes('alice@example.com'));
  });

  test('an open access request is shown', async () => {
    const { res } = await e.login('gil', '/app/payroll');
    assert.equal(res.status, 200, 'birthright access does not wait for the approval');
    const r = await admin('--json', 'identity', 'show', '--email', 'gil@example.com');
    assert.equal(r.code, 0, r.err);
    const v = JSON.parse(r.out);
    assert.equal(v.access_requests.length, 1, JSON.stringify(v.access_requests));
    assert.equal(v.access_requests[0].target, 'demoapp');
    assert.equal(v.access_requests[0].value, 'payroll');
    assert.equal(v.access_requests[0].state, 'pending');
  });

  test('unknown identity: 404, exit 1; bad or missing token; bad id is a usage error', async () => {
    let r = await admin('identity', 'show', 'no-such-identity');
    assert.equal(r.code, 1);
    assert.match(r.err, /GET \/identities\/no-such-identity: HTTP 404: \{"error":"not_found"\}/);
    r = await admin('identity', 'show', '--hr-key', '424242');
    assert.equal(r.code, 1);
    assert.match(r.err, /HTTP 404/);
    assert.equal((await api('/identities/x', null)).status, 401);
    assert.equal((await api('/identities/x', 'wrong-token-0123456789')).status, 401);
    assert.equal((await api('/identities?hr_key=')).status, 400);
    r = await ctlAsync(['--sidecar', sidecar, 'identity', 'show', alice.iid]);
    assert.equal(r.code, 2, 'no admin token: usage error, nothing sent');
    r = await admin('identity', 'show', 'bad/id');
    assert.equal(r.code, 2);
    r = await admin('identity', 'show');
    assert.equal(r.code, 2);
    r = await admin('identity', 'show', 'x', '--iss', 'y');
    assert.equal(r.code, 2);
    for (const h of [['identity', '--help'], ['identity', 'show', '--help'], ['identity', 'list', '-h']]) {
      const x = await ctlAsync(h);
      assert.equal(x.code, 0);
      assert.match(x.out, /^usage: provgatectl/);
    }
  });

  test('an email two identities carry: 409 with both candidates, exit 1', async () => {
    const { res } = await e.login('dave', '/app/hello');
    assert.equal(res.status, 200);
    daveId = identityOf(res);
    // HR has another employee number for dave: neither index links the record
    await event({ type: 'join', key: '9009', attributes: hrPerson('dave.hr', '9009') });
    await until('dave.hr in PostgreSQL', () => dbRow('dave.hr') === 't');
    const hrId = e.audit().find((x) => x.type === 'jml.join' && x.hr_key === '9009').identity;
    assert.notEqual(hrId, daveId);
    const raw = await api('/identities?email=dave%40example.com');
    assert.equal(raw.status, 409);
    assert.equal(raw.json.error, 'ambiguous');
    assert.deepEqual(raw.json.candidates, [daveId, hrId].sort());
    const r = await admin('identity', 'show', '--email', 'dave@example.com');
    assert.equal(r.code, 1);
    assert.match(r.err, /HTTP 409/);
    assert.ok(r.err.includes(daveId) && r.err.includes(hrId), r.err);
    // each one is still found by what is its own
    assert.equal(JSON.parse((await admin('--json', 'identity', 'show', '--hr-key', '9009')).out).id, hrId);
    assert.equal(JSON.parse((await admin('--json', 'identity', 'show', '--sub', 'sub-dave-0004')).out).id, daveId);
    assert.ok(e.audit().some((x) => x.type === 'admin.read' && x.reason === 'ambiguous'));
  });

  test('a leaver shows as left (accounts disabled); list, --left and --limit', async () => {
    await event({ type: 'leave', key: '1001' });
    await until('alice disabled', () => dbRow('alice') === 'f');
    const r = await admin('--json', 'identity', 'show', '--hr-key', '1001');
    assert.equal(r.code, 0, r.err);
    const v = JSON.parse(r.out);
    assert.equal(v.state, 'left');
    assert.ok(Math.abs(v.left_at - Date.now() / 1000) < 30);
    assert.equal(v.sessions.live, 0, 'the leave ended the session');
    assert.equal(v.accounts.hrdb.state, 'disabled');
    const text = await admin('identity', 'show', '--hr-key', '1001');
    assert.match(text.out, /^state +left since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/m);

    const all = await admin('--json', 'identity', 'list');
    assert.equal(all.code, 0, all.err);
    const ids = JSON.parse(all.out).identities;
    assert.ok(ids.length >= 4, all.out);
    assert.ok(ids.some((x) => x.id === alice.iid && x.state === 'left' && x.hr_key === '1001'));
    assert.ok(ids.some((x) => x.id === daveId && x.state === 'active' && x.username === 'dave'));
    const left = JSON.parse((await admin('--json', 'identity', 'list', '--left')).out).identities;
    assert.deepEqual(left.map((x) => x.id), [alice.iid]);
    const one = await admin('identity', 'list', '--limit', '1');
    assert.equal(one.code, 0, one.err);
    assert.equal(one.out.trim().split('\n').length, 2, one.out); // header + 1
    assert.match(one.out, /^ID\tSTATE\tLEFT_AT\tUSERNAME\tEMAIL\tHR_KEY\n/);
    assert.equal((await admin('identity', 'list', '--limit', '0')).code, 2);
  });
});
