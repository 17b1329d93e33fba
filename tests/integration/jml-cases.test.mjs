// Correlation cases: an HR record that two identities match (its HR key
// names one, its verified email another) is not guessed: it becomes a case
// for an admin (GET /cases), who links it to one of them, makes it a new
// identity, or dismisses it (POST /cases/<id>). Real sidecar, real gateway
// logins, real SCIM peer.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  cleanupAll, freePort, startProcess, waitForPort, REPO_ROOT, jsonRequest, until,
} from './lib/harness.mjs';
import { startEnv } from './gw/env.mjs';

const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const ADMIN_TOKEN = 'cases-admin-token-0123456789abcdef';
const CTL = path.join(REPO_ROOT, 'build', 'provgatectl');
const HEADER = 'emp_id,login,email,name,given,family,dept,type,end_date';
const row = (id, login, email, dept) => `${id},${login},${email},${login} Person,${login},Person,${dept},employee,`;
const hrHash = (key) => crypto.createHash('sha256').update(key).digest('base64url');

describe('correlation cases for an admin', () => {
  let e;
  let sc;
  let scPort;
  let hrFile;
  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
  const url = (p) => `http://127.0.0.1:${scPort}${p}`;

  const writeHr = (rows) => {
    const tmp = `${hrFile}.tmp`;
    fs.writeFileSync(tmp, `${[HEADER, ...rows].join('\n')}\n`);
    fs.renameSync(tmp, hrFile);
  };
  const imports = () => e.audit().filter((x) => x.type === 'jml.import' && x.outcome === 'success');
  const waitImports = (n) => until(`${n} imports`, () => imports().length >= n, 20000);
  const cases = async () => (await jsonRequest('GET', url('/cases'), undefined, auth)).json.cases;
  const identityOf = async (user) => {
    const { res } = await e.login(user, '/app/who');
    assert.equal(res.status, 200);
    const raw = JSON.parse(res.body).rawHeaders;
    return raw[raw.findIndex((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-provgate-identity') + 1];
  };

  before(async () => {
    e = await startEnv(undefined, {
      workers: 1,
      cfgOver: (env) => {
        hrFile = path.join(env.dir, 'hr.csv');
        return {
          hr_source: {
            file: hrFile,
            poll_s: 1,
            lease_s: 5,
            feed: {
              key_column: 'emp_id',
              attributes: {
                login: 'username', email: 'email', name: 'name', given: 'given_name', family: 'family_name',
                dept: 'department', type: 'employee_type',
              },
              max_leave_pct: 100,
            },
            correlation: [{ attr: 'email', index: 'email' }],
          },
        };
      },
    });
    fs.writeFileSync(path.join(e.dir, 'admin.token'), ADMIN_TOKEN);
    scPort = await freePort();
    sc = await startProcess(BIN, ['--config', e.cfgFile, '--listen', `127.0.0.1:${scPort}`, '--log-level', 'info',
      '--admin-token-file', path.join(e.dir, 'admin.token')], { name: 'provgated-cases' });
    await waitForPort(scPort);
  });
  after(async () => {
    if (sc) {
      const { code, signal } = await sc.stop();
      assert.equal(signal, null);
      assert.equal(code, 0, sc.output.slice(-2000));
      assert.doesNotMatch(sc.output, /Sanitizer|runtime error/);
    }
    if (e) await e.nginx.stop();
    await cleanupAll();
  });

  let A; // alice's identity (gateway login)
  let B; // the identity HR record 2001 made
  let caseId;

  test('an HR record matching two identities becomes a case; nothing is applied to either', async () => {
    A = await identityOf('alice');
    writeHr([row('2001', 'alx', 'alx@example.com', 'eng')]);
    await waitImports(1);
    B = await e.redisCmd('GET', `pg:idx:hr:${hrHash('2001')}`);
    assert.ok(B && B !== A);
    // 2001's email becomes alice's: the HR key says B, the email says A
    writeHr([row('2001', 'alx', 'alice@example.com', 'sales')]);
    await waitImports(2);
    const ev = e.audit().filter((x) => x.type === 'jml.case' && x.outcome === 'deferred');
    assert.equal(ev.length, 1);
    assert.deepEqual([...ev[0].candidates].sort(), [A, B].sort());
    const list = await until('the case listed', async () => {
      const c = await cases();
      return c.length === 1 ? c : null;
    });
    caseId = list[0].id;
    assert.match(caseId, /^c[A-Za-z0-9_-]{22}$/);
    assert.equal(list[0].hr_key, '2001');
    assert.equal(list[0].kind, 'move');
    assert.equal(list[0].source, 'import');
    assert.deepEqual([...list[0].candidates].sort(), [A, B].sort());
    assert.equal(list[0].attributes.email, 'alice@example.com');
    // neither identity got the record's attributes
    assert.doesNotMatch(await e.redisCmd('HGET', `pg:id:${A}`, 'attrs'), /"hr_key"/);
    assert.match(await e.redisCmd('HGET', `pg:id:${B}`, 'attrs'), /alx@example\.com/);
  });

  test('the API: admin token, unknown case, a non-candidate identity, a bad action', async () => {
    assert.equal((await jsonRequest('GET', url('/cases'))).status, 401);
    assert.equal((await jsonRequest('POST', url(`/cases/${caseId}?action=dismiss`), {})).status, 401);
    const unknown = await jsonRequest('POST', url('/cases/cAAAAAAAAAAAAAAAAAAAAAA?action=dismiss'), {}, auth);
    assert.equal(unknown.status, 404);
    const stranger = await jsonRequest('POST', url(`/cases/${caseId}?action=link&identity=someone-else`), {}, auth);
    assert.equal(stranger.status, 400);
    assert.equal(stranger.json.error, 'not_a_candidate');
    const bad = await jsonRequest('POST', url(`/cases/${caseId}?action=merge`), {}, auth);
    assert.equal(bad.status, 400);
    assert.equal((await cases()).length, 1, 'the case is still open');
  });

  test('dismiss forgets the case; the next change of the record makes it again', async () => {
    const r = await jsonRequest('POST', url(`/cases/${caseId}?action=dismiss`), {}, auth);
    assert.equal(r.status, 202, r.text);
    await until('dismissed', async () => (await cases()).length === 0);
    assert.ok(e.audit().some((x) => x.type === 'jml.case' && x.reason === 'dismissed' && x.case === caseId));
    writeHr([row('2001', 'alx', 'alice@example.com', 'eng')]);
    await waitImports(3);
    await until('the case again', async () => (await cases()).length === 1);
    assert.equal((await cases())[0].id, caseId, 'same record, same case id');
  });

  test('link (with provgatectl): the record is applied to the chosen identity, and later changes follow it without a new case', async () => {
    const ctl = (...args) => spawnSync(CTL, ['--sidecar', url(''), '--token-file', path.join(e.dir, 'admin.token'), ...args],
      { encoding: 'utf8', timeout: 20000, env: { PATH: process.env.PATH } });
    const list = ctl('cases', 'list');
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, new RegExp(`^${caseId}\t2001\tmove\t`, 'm'));
    const json = ctl('--json', 'cases', 'list');
    assert.equal(JSON.parse(json.stdout).cases[0].id, caseId);
    const stranger = ctl('cases', 'link', caseId, '--identity', 'nobody');
    assert.equal(stranger.status, 1, stranger.stderr);
    const r = ctl('cases', 'link', caseId, '--identity', A);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /link accepted/);
    await until('linked', async () => (await cases()).length === 0);
    assert.ok(e.audit().some((x) => x.type === 'jml.case' && x.reason === 'linked' && x.identity === A));
    await until('applied to alice', async () => /"hr_key":"2001"/.test(await e.redisCmd('HGET', `pg:id:${A}`, 'attrs')));
    assert.equal(await e.redisCmd('GET', `pg:idx:hr:${hrHash('2001')}`), A);
    assert.ok(e.audit().some((x) => x.type === 'jml.join' && x.identity === A && x.hr_key === '2001'));
    const before = e.audit().filter((x) => x.type === 'jml.case' && x.outcome === 'deferred').length;
    writeHr([row('2001', 'alx', 'alice@example.com', 'sales')]);
    await waitImports(4);
    await until('the move applied to alice', () => e.audit().some((x) => x.type === 'jml.move' && x.identity === A));
    assert.equal(e.audit().filter((x) => x.type === 'jml.case' && x.outcome === 'deferred').length, before,
      'no new case: the admin decision holds');
  });

  test('new: the record becomes an identity of its own', async () => {
    const D = await identityOf('dave');
    writeHr([row('2001', 'alx', 'alice@example.com', 'sales'), row('2002', 'dvx', 'dvx@example.com', 'eng')]);
    await waitImports(5);
    const C = await e.redisCmd('GET', `pg:idx:hr:${hrHash('2002')}`);
    writeHr([row('2001', 'alx', 'alice@example.com', 'sales'), row('2002', 'dvx', 'dave@example.com', 'eng')]);
    await waitImports(6);
    const c = await until('a case for 2002', async () => (await cases()).find((x) => x.hr_key === '2002'));
    assert.deepEqual([...c.candidates].sort(), [C, D].sort());
    const r = await jsonRequest('POST', url(`/cases/${c.id}?action=new`), {}, auth);
    assert.equal(r.status, 202, r.text);
    await until('resolved', async () => !(await cases()).some((x) => x.hr_key === '2002'));
    const N = await until('a new identity for 2002', async () => {
      const v = await e.redisCmd('GET', `pg:idx:hr:${hrHash('2002')}`);
      return v && v !== C ? v : null;
    });
    assert.notEqual(N, D);
    await until('applied to it', async () => /dave@example\.com/.test(await e.redisCmd('HGET', `pg:id:${N}`, 'attrs') || ''));
    assert.ok(e.audit().some((x) => x.type === 'jml.case' && x.reason === 'new_identity' && x.case === c.id));
  });
});
