// Manual work items through the gateway's admin API: a login to an app
// whose target has no interface queues a work item for a human; an admin
// lists it, marks it done (then the account counts as provisioned) or
// rejects it; everyone else is refused; every move is audited.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { cleanupAll, REPO_ROOT } from './lib/harness.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const POLICIES = {
  roles: [
    { id: 'provgate-admin', type: 'business', includes: ['provgate-console'] },
    { id: 'provgate-console', type: 'technical', description: 'provgate admin API' },
  ],
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'ledger-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'ledger', entitlements: [{ type: 'group', value: 'clerks' }] }] },
    { id: 'it-admins', kind: 'role', who: { group: 'it-admins' }, roles: ['provgate-admin'] },
  ],
};

const ada = {
  password: 'ada-pw',
  claims: {
    sub: 'sub-ada-work', email: 'ada@example.com', email_verified: true, preferred_username: 'ada',
    name: 'Ada Admin', given_name: 'Ada', family_name: 'Admin', groups: ['staff', 'it-admins'],
    employee_type: 'employee', department: 'ops',
  },
};

const CTL = path.join(REPO_ROOT, 'build/provgatectl');

// run provgatectl without blocking this process's event loop
function ctl(args, env = {}) {
  return new Promise((resolve) => {
    const p = spawn(CTL, args, { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

describe('manual work items through the admin API', () => {
  let e;
  let admin;
  const api = async (b, method, p) => {
    const r = await b.request(method, `${e.base}/provgate/admin/${p}`, { headers: { accept: 'application/json' } });
    let json = null;
    try { json = JSON.parse(r.body); } catch { /* not JSON */ }
    return { status: r.status, json, body: r.body };
  };

  before(async () => {
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      users: { ada },
      cfgOver: (env) => ({
        targets: {
          ...env.baseConfig().targets,
          ledger: {
            type: 'manual',
            connector: { instructions: 'Open the ledger console and create the user.' },
            attributes: { username: '${username}', email: '${email}' },
            key: 'username',
            wait_ms: 4000,
          },
        },
      }),
      extraServer: `location /provgate/admin/ { provgate_admin; }
        location /ledger/ { provgate oidc:main; provgate_app ledger; proxy_pass http://echo; }`,
    });
    ({ b: admin } = await e.login('ada', '/app/x'));
  });
  after(async () => {
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('a login queues a work item; an admin lists it with what to do and why', async () => {
    const { res } = await e.login('alice', '/ledger/home');
    assert.equal(res.status, 200, res.body.slice(0, 300));
    const r = await api(admin, 'GET', 'work/ledger');
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.target, 'ledger');
    const mine = r.json.items.filter((i) => i.key === 'alice');
    assert.equal(mine.length, 1, JSON.stringify(r.json.items));
    assert.equal(mine[0].status, 'open');
    assert.equal(mine[0].outcome, 'created');
    assert.match(mine[0].summary, /alice/);
    assert.match(mine[0].instructions, /ledger console/);
    assert.deepEqual(mine[0].desired.groups, ['clerks']);
    // the same login again: the same item, not a second one
    await e.login('alice', '/ledger/again');
    const again = (await api(admin, 'GET', 'work/ledger')).json.items.filter((i) => i.key === 'alice');
    assert.equal(again.length, 1);
  });

  test('only admins see or resolve work items; unknown targets and items are clear errors', async () => {
    assert.equal((await api(e.browser(), 'GET', 'work/ledger')).status, 401);
    const { b: bob } = await e.login('carol', '/app/x');
    assert.equal((await api(bob, 'GET', 'work/ledger')).status, 403);
    const [item] = (await api(admin, 'GET', 'work/ledger')).json.items;
    assert.equal((await api(bob, 'POST', `work/ledger/${item.id}/done`)).status, 403);
    assert.equal((await api(admin, 'GET', 'work/demoapp')).status, 404, 'not a manual target');
    assert.equal((await api(admin, 'GET', 'work/nosuch')).status, 404);
    assert.equal((await api(admin, 'POST', 'work/ledger/AAAAnotanitem/done')).status, 404);
  });

  test('done: the item closes, is audited, and the account counts as provisioned', async () => {
    const [item] = (await api(admin, 'GET', 'work/ledger')).json.items.filter((i) => i.key === 'alice');
    const r = await api(admin, 'POST', `work/ledger/${item.id}/done`);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.status, 'done');
    assert.equal((await api(admin, 'POST', `work/ledger/${item.id}/done`)).status, 409, 'not open any more');
    assert.equal((await api(admin, 'GET', 'work/ledger')).json.items.filter((i) => i.key === 'alice').length, 0);
    assert.ok(e.audit().some((x) => x.type === 'manual.item' && x.reason === 'done' && x.item === item.id));
    // the next login finds the account provisioned: no new item
    assert.equal((await e.login('alice', '/ledger/after')).res.status, 200);
    assert.equal((await api(admin, 'GET', 'work/ledger')).json.items.filter((i) => i.key === 'alice').length, 0);
  });

  test('reject: the item closes without effect, audited', async () => {
    assert.equal((await e.login('carol', '/ledger/home')).res.status, 200);
    const [item] = (await api(admin, 'GET', 'work/ledger')).json.items.filter((i) => i.key === 'carol');
    assert.ok(item);
    const r = await api(admin, 'POST', `work/ledger/${item.id}/reject`);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.status, 'rejected');
    assert.ok(e.audit().some((x) => x.type === 'manual.item' && x.reason === 'rejected' && x.item === item.id));
  });
  test('provgatectl work list/done/reject against the same API', async () => {
    assert.equal((await e.login('dave', '/ledger/home')).res.status, 200);
    const env = {
      PROVGATE_GATEWAY: `${e.base}/provgate/admin/`,
      PROVGATE_SESSION_COOKIE: `provgate_session=${admin.getCookie(`${e.base}/provgate/admin/`, 'provgate_session')}`,
    };
    const help = await ctl(['work', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.out, /work list TARGET/);
    assert.equal((await ctl(['work', 'list'], env)).code, 2, 'usage error');
    const list = await ctl(['work', 'list', 'ledger'], env);
    assert.equal(list.code, 0, list.err);
    assert.match(list.out, /^ID\tKEY\tOP\tOUTCOME\tSUMMARY$/m);
    const js = await ctl(['--json', 'work', 'list', 'ledger'], env);
    const item = JSON.parse(js.out).items.find((i) => i.key === 'dave');
    assert.ok(item, js.out);
    assert.match(list.out, new RegExp(`^${item.id}\tdave\tensure\tcreated\t`, 'm'));
    const done = await ctl(['work', 'done', 'ledger', item.id], env);
    assert.equal(done.code, 0, done.err);
    assert.equal(done.out.trim(), `${item.id}: done`);
    const again = await ctl(['work', 'reject', 'ledger', item.id], env);
    assert.equal(again.code, 1);
    assert.match(again.err, /HTTP 409: .*not_open/);
  });
});
