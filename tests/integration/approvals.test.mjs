// Approvals and the admin API through the real gateway: a login that needs
// approval gets the "awaiting approval" page, an approver approves through
// the admin API, the account is provisioned, and the next login succeeds.
// Denials, expiry, authorisation of the admin API and the outbox's dead
// letters (list, retry, discard) are covered too.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll, sleep } from './lib/harness.mjs';
import { startEnv, sanitizerReports } from './gw/env.mjs';

const POLICIES = {
  roles: [
    { id: 'provgate-admin', type: 'business', includes: ['provgate-console'] },
    { id: 'provgate-console', type: 'technical', description: 'provgate admin API' },
  ],
  policies: [
    { id: 'staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'staff' }] }] },
    { id: 'payroll-approval', kind: 'approval', who: { attr: 'department', eq: 'finance' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'payroll' }] }],
      approvers: { group: 'payroll-approvers' }, request_expires_s: 3600 },
    { id: 'it-admins', kind: 'role', who: { group: 'it-admins' }, roles: ['provgate-admin'] },
  ],
};

function user(name, { type = 'employee', dept = 'ops', groups = ['staff'] } = {}) {
  return {
    password: `${name}-pw`,
    claims: {
      sub: `sub-${name}`, email: `${name}@example.com`, email_verified: true, preferred_username: name,
      name: `${name} Test`, given_name: name, family_name: 'Test', groups, employee_type: type, department: dept,
    },
  };
}

const USERS = {
  fay: user('fay', { type: 'contractor', dept: 'finance', groups: [] }),
  gil: user('gil', { dept: 'finance' }),
  gus: user('gus', { groups: ['staff', 'payroll-approvers'] }),
  ada: user('ada', { groups: ['staff', 'it-admins'] }),
  hal: user('hal'),
  ivy: user('ivy'),
};

const ADMIN_LOCATION = 'location /provgate/admin/ { provgate_admin; }';

describe('approvals and the admin API', () => {
  let e;
  const api = async (b, method, p) => {
    const r = await b.request(method, `${e.base}/provgate/admin/${p}`, { headers: { accept: 'application/json' } });
    let json = null;
    try { json = JSON.parse(r.body); } catch { /* not JSON */ }
    return { status: r.status, json, body: r.body };
  };
  const groupsOf = async (userName) => {
    const [u] = await e.scimUsers(userName);
    if (!u) return null;
    return (await e.scim.state()).groups.filter((g) => g.members.some((m) => m.value === u.id))
      .map((g) => g.displayName).sort();
  };

  before(async () => {
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      users: USERS,
      extraServer: ADMIN_LOCATION,
      // the payroll group does not exist in the app yet
      cfgOver: (env) => {
        const t = env.baseConfig().targets;
        return { targets: { ...t, demoapp: { ...t.demoapp, create_missing_groups: true } } };
      },
    });
  });
  after(async () => {
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('nothing granted yet: a clear "awaiting approval" page, not an error, and a request', async () => {
    const { b, res } = await e.login('fay', '/app/payroll');
    assert.equal(res.status, 202, res.body.slice(0, 300));
    assert.match(res.body, /awaiting approval/i);
    assert.match(res.body, /id="reason">awaiting_approval</);
    assert.equal(b.getCookie(`${e.base}/app/`, 'provgate_session'), undefined, 'no session');
    assert.equal(await groupsOf('fay'), null, 'nothing provisioned');
    assert.ok(e.audit().some((x) => x.type === 'access.request' && x.reason === 'approval_required'));
    // logging in again does not file a second request
    await e.login('fay', '/app/payroll');
    const keys = await e.redisCmd('ZRANGE', 'pg:reqs:pending', '0', '-1');
    assert.equal(keys.length, 1);
  });

  test('the admin API needs a session, and only approvers/admins see requests', async () => {
    const anon = e.browser();
    assert.equal((await api(anon, 'GET', 'requests')).status, 401);
    const { b: ivy } = await e.login('ivy', '/app/x');
    const mine = await api(ivy, 'GET', 'requests');
    assert.equal(mine.status, 200);
    assert.deepEqual(mine.json.requests, [], 'not an approver: sees nothing');
    assert.equal((await api(ivy, 'GET', 'dead')).status, 403, 'dead letters: admins only');
    const { b: gus } = await e.login('gus', '/app/x');
    const list = await api(gus, 'GET', 'requests');
    assert.equal(list.status, 200);
    assert.equal(list.json.requests.length, 1);
    const [r] = list.json.requests;
    assert.equal(r.user, 'fay');
    assert.equal(r.value, 'payroll');
    assert.deepEqual(r.approvers, { kind: 'group', group: 'payroll-approvers' });
    // a non-approver cannot decide it
    const no = await api(ivy, 'POST', `requests/${r.rid}/approve`);
    assert.equal(no.status, 403);
    assert.equal(no.json.error, 'not_an_approver');
    assert.ok(e.audit().some((x) => x.type === 'admin.request' && x.reason === 'not_an_approver'));
    assert.equal((await api(gus, 'GET', 'nope')).status, 404);
  });

  test('approve -> recorded, audited, provisioned; the next login succeeds', async () => {
    const { b: gus } = await e.login('gus', '/app/x');
    const [r] = (await api(gus, 'GET', 'requests')).json.requests;
    const ok = await api(gus, 'POST', `requests/${r.rid}/approve`);
    assert.equal(ok.status, 200, ok.body);
    assert.equal(ok.json.request.state, 'approved');
    assert.equal(ok.json.request.decided_by, 'gus');
    assert.ok(ok.json.provisioning && ok.json.provisioning.idem, JSON.stringify(ok.json));
    assert.ok(e.audit().some((x) => x.type === 'approval.decision' && x.outcome === 'approved'
      && x.request === r.rid && x.decided_by === 'gus'));
    // provisioned in the background by the outbox
    const end = Date.now() + 10000;
    while (Date.now() < end && !(await groupsOf('fay') || []).includes('payroll')) await sleep(100);
    assert.deepEqual(await groupsOf('fay'), ['payroll']);
    // deciding twice is refused
    assert.equal((await api(gus, 'POST', `requests/${r.rid}/deny`)).status, 409);
    const { res } = await e.login('fay', '/app/payroll');
    assert.equal(res.status, 200, res.body.slice(0, 300));
    const raw = JSON.parse(res.body).rawHeaders;
    const ents = raw[raw.findIndex((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-provgate-entitlements') + 1];
    assert.equal(ents, 'payroll');
  });

  test('deny -> recorded and audited; birthright access stays; no new request', async () => {
    const { res } = await e.login('gil', '/app/gil');
    assert.equal(res.status, 200, 'birthright access does not wait for the approval');
    assert.deepEqual(await groupsOf('gil'), ['staff']);
    const { b: ada } = await e.login('ada', '/app/x');
    const list = await api(ada, 'GET', 'requests');
    const r = list.json.requests.find((x) => x.user === 'gil');
    assert.ok(r, 'an admin sees every request');
    const no = await api(ada, 'POST', `requests/${r.rid}/deny`);
    assert.equal(no.status, 200, no.body);
    assert.equal(no.json.request.state, 'denied');
    assert.ok(e.audit().some((x) => x.type === 'approval.decision' && x.outcome === 'denied' && x.request === r.rid));
    await e.login('gil', '/app/gil');
    assert.deepEqual(await groupsOf('gil'), ['staff'], 'never provisioned');
    assert.ok(!(await api(ada, 'GET', 'requests')).json.requests.some((x) => x.user === 'gil'), 'not asked again');
  });

  test('a request past its expiry is expired, audited and cannot be approved', async () => {
    const { b: ada } = await e.login('ada', '/app/x');
    // ivy moves to finance: her next login files a request
    await e.op.stop();
    const users = JSON.parse(JSON.stringify(e.users));
    users.ivy.claims.department = 'finance';
    await e.startOp(users);
    try {
      await e.login('ivy', '/app/ivy');
      const pending = await e.redisCmd('ZRANGE', 'pg:reqs:pending', '0', '-1');
      assert.equal(pending.length, 1);
      // time passes: the request's expiry is now in the past
      const past = String(Math.floor(Date.now() / 1000) - 10);
      await e.redisCmd('HSET', `pg:req:${pending[0]}`, 'expires_at', past);
      await e.redisCmd('ZADD', 'pg:reqs:pending', past, pending[0]);
      const list = await api(ada, 'GET', 'requests');
      assert.deepEqual(list.json.requests, []);
      assert.equal(await e.redisCmd('HGET', `pg:req:${pending[0]}`, 'state'), 'expired');
      assert.ok(e.audit().some((x) => x.type === 'approval.decision' && x.outcome === 'expired'));
      assert.equal((await api(ada, 'POST', `requests/${pending[0]}/approve`)).status, 409);
    } finally {
      await e.op.stop();
      await e.startOp();
    }
  });

  test('dead letters: an admin lists, retries (then it is applied) and discards them', async () => {
    await e.scim.setFaults({ fail_status: 400, fail_count: 1000 });
    try {
      const { res } = await e.login('hal', '/app/hal');
      assert.equal(res.status, 502);
    } finally {
      await e.scim.clearFaults();
    }
    const { b: ada } = await e.login('ada', '/app/x');
    const dead = await api(ada, 'GET', 'dead');
    assert.equal(dead.status, 200, dead.body);
    const d = dead.json.dead.find((x) => x.state && x.state.attrs && x.state.attrs.username === 'hal');
    assert.ok(d, JSON.stringify(dead.json).slice(0, 500));
    assert.match(d.reason, /provisioning_failed|target/);
    const retried = await api(ada, 'POST', `dead/${d.id}/retry`);
    assert.equal(retried.status, 200, retried.body);
    assert.ok(e.audit().some((x) => x.type === 'outbox.dead' && x.reason === 'retried'));
    const end = Date.now() + 10000;
    while (Date.now() < end && (await e.scimUsers('hal')).length === 0) await sleep(100);
    assert.equal((await e.scimUsers('hal')).length, 1, 'applied after the retry');
    assert.equal((await api(ada, 'POST', `dead/${d.id}/retry`)).status, 404, 'gone from the dead letters');
    // another one, discarded
    await e.scim.setFaults({ fail_status: 400, fail_count: 1000 });
    try {
      await e.op.stop();
      const users = JSON.parse(JSON.stringify(e.users));
      users.hal.claims.name = 'Hal Renamed';
      await e.startOp(users);
      await e.login('hal', '/app/hal');
    } finally {
      await e.scim.clearFaults();
      await e.op.stop();
      await e.startOp();
    }
    const d2 = (await api(ada, 'GET', 'dead')).json.dead[0];
    assert.ok(d2);
    const gone = await api(ada, 'POST', `dead/${d2.id}/discard`);
    assert.equal(gone.status, 200);
    assert.ok(e.audit().some((x) => x.type === 'outbox.dead' && x.reason === 'discarded'));
    assert.ok(!(await api(ada, 'GET', 'dead')).json.dead.some((x) => x.id === d2.id));
  });
});
