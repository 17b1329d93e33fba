// A SCIM target's "auth": {"type": "oauth2"} and "retry" through the
// gateway, against the SCIM peer (tests/peers/scim-server.mjs: its own
// client-credentials token endpoint and fault switches). The targets use
// "delivery": "direct" so that what is seen is the SCIM client's own
// behaviour within one login, not the outbox's later retries.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll, jsonRequest } from './lib/harness.mjs';
import { startEnv, sanitizerReports } from './gw/env.mjs';

const NAMES = ['oa', 'ob', 'oc', 'ra', 'rb', 'rc', 'rd', 'ba', 'sb'];
const PEOPLE = {};
for (const [i, name] of NAMES.entries()) {
  PEOPLE[name] = {
    password: `${name}-pw`,
    claims: {
      sub: `sub-${name}-authretry`, email: `${name}@example.com`, email_verified: true,
      preferred_username: `${name}-ar`, name: `${name} AuthRetry`, given_name: name, family_name: 'AuthRetry',
      groups: ['staff'], employee_type: 'employee', department: 'eng', employee_number: `77${i}`,
    },
  };
}
const TARGETS = ['oauthapp', 'badoauth', 'retryapp', 'noretry', 'bulkapp'];
const POLICIES = {
  policies: [{
    id: 'employees',
    kind: 'birthright',
    who: { attr: 'employee_type', eq: 'employee' },
    grants: TARGETS.map((target) => ({
      target,
      entitlements: [{ type: 'group', value: 'staff' },
        ...(target === 'bulkapp' ? [{ type: 'group', value: 'engineering' }] : [])],
    })),
  }],
};

const userPosts = (log) => log.filter((r) => r.method === 'POST' && /\/Users$/.test(r.path));

describe('SCIM targets: OAuth 2.0 client credentials and retries', () => {
  after(cleanupAll);
  let e;
  const oauthAdmin = async (method, body) => {
    const r = await jsonRequest(method, `${e.scim.origin}/_admin/oauth`, body);
    assert.ok(r.status < 400, r.text);
    return r.json;
  };

  test('setup', async () => {
    e = await startEnv(undefined, {
      workers: 1,
      users: PEOPLE,
      policies: POLICIES,
      cfgOver: (env) => {
        const t = { ...env.baseConfig().targets.demoapp, delivery: 'direct', timeout_ms: 2000 };
        delete t.wait_ms;
        const oauth = {
          type: 'oauth2', token_url: `${env.scim.origin}/oauth/token`, client_id: 'gw-client',
          client_secret: 'gw-client-secret', scope: 'scim.write',
        };
        return {
          targets: {
            demoapp: env.baseConfig().targets.demoapp,
            oauthapp: { ...t, auth: oauth },
            badoauth: { ...t, auth: { ...oauth, client_secret: 'not-the-secret' } },
            retryapp: { ...t, retry: { max_attempts: 3, base_ms: 50, max_ms: 3000 } },
            noretry: { ...t },
            bulkapp: { ...t, discovery: true, bulk: true },
          },
        };
      },
      extraServer: TARGETS.map((a) => `
        location /${a}/ { provgate oidc:main; provgate_app ${a}; proxy_pass http://echo; }`).join(''),
    });
    await oauthAdmin('POST', { client_id: 'gw-client', client_secret: 'gw-client-secret', expires_in: 3600 });
  });

  test('oauth2: one token fetched with basic client auth and the scope; every SCIM call carries it', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('oa', '/oauthapp/x');
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    const o = await oauthAdmin('GET');
    assert.equal(o.token_requests, 1);
    assert.equal(o.last_auth, 'basic');
    assert.equal(o.last_scope, 'scim.write');
    const log = (await e.scim.state()).requests;
    assert.ok(userPosts(log).length === 1 && userPosts(log)[0].status === 201, 'account created');
    assert.ok(log.length >= 3);
    assert.deepEqual(log.filter((r) => r.auth !== 'oauth').map((r) => `${r.method} ${r.path} ${r.auth}`), [],
      'no call went out with the static token or without one');
    assert.equal((await e.scimUsers('oa-ar')).length, 1);
  });

  test('oauth2: the next login reuses the cached token', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('ob', '/oauthapp/x');
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    assert.equal((await oauthAdmin('GET')).token_requests, 1, 'no second token request');
    const log = (await e.scim.state()).requests;
    assert.ok(log.length >= 3 && log.every((r) => r.auth === 'oauth'));
  });

  test('oauth2: a wrong client secret fails closed: no SCIM call, no account, audited', async () => {
    await e.scim.resetLog();
    const before = (await oauthAdmin('GET')).token_requests;
    const { res } = await e.login('oc', '/badoauth/x');
    assert.notEqual(res.status, 200);
    assert.ok(res.status < 500 || res.status === 502 || res.status === 503, `status ${res.status}`);
    assert.equal((await oauthAdmin('GET')).token_requests, before + 1, 'the token endpoint was asked');
    assert.deepEqual((await e.scim.state()).requests, [], 'nothing reached the SCIM API');
    assert.deepEqual(await e.scimUsers('oc-ar'), []);
    const ev = e.audit().filter((a) => a.type === 'provision.account' && a.target === 'badoauth');
    assert.ok(ev.length >= 1, 'audited');
    assert.equal(ev.at(-1).outcome, 'failure');
    assert.equal(ev.at(-1).reason, 'target_auth');
    assert.ok(!JSON.stringify(ev).includes('not-the-secret'), 'no secret in the audit');
  });

  test('retry: two 503s, then the account is created within the same login', async () => {
    await e.scim.resetLog();
    await e.scim.setFaults({ fail_status: 503, fail_count: 2, fail_method: 'POST', fail_paths: '/Users$' });
    const { res } = await e.login('ra', '/retryapp/x');
    await e.scim.clearFaults();
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    const posts = userPosts((await e.scim.state()).requests);
    assert.deepEqual(posts.map((r) => r.status), [503, 503, 201]);
    // exponential backoff: the second wait is not shorter than half the base
    assert.ok(posts[1].ts - posts[0].ts >= 25, `waited ${posts[1].ts - posts[0].ts} ms`);
    assert.equal((await e.scimUsers('ra-ar')).length, 1, 'exactly one account');
  });

  test("retry: a 429's Retry-After is waited for", async () => {
    await e.scim.resetLog();
    await e.scim.setFaults({
      fail_status: 429, retry_after: 1, fail_count: 1, fail_method: 'POST', fail_paths: '/Users$',
    });
    const { res } = await e.login('rb', '/retryapp/x');
    await e.scim.clearFaults();
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    const posts = userPosts((await e.scim.state()).requests);
    assert.deepEqual(posts.map((r) => r.status), [429, 201]);
    assert.ok(posts[1].ts - posts[0].ts >= 900, `waited ${posts[1].ts - posts[0].ts} ms, Retry-After 1 s`);
  });

  test('retry: a 400 is never retried', async () => {
    await e.scim.resetLog();
    await e.scim.setFaults({ fail_status: 400, fail_count: 1, fail_method: 'POST', fail_paths: '/Users$' });
    const { res } = await e.login('rc', '/retryapp/x');
    await e.scim.clearFaults();
    assert.notEqual(res.status, 200);
    assert.deepEqual(userPosts((await e.scim.state()).requests).map((r) => r.status), [400]);
    assert.deepEqual(await e.scimUsers('rc-ar'), []);
  });

  test('no "retry": the first 503 fails the login', async () => {
    await e.scim.resetLog();
    await e.scim.setFaults({ fail_status: 503, fail_count: 1, fail_method: 'POST', fail_paths: '/Users$' });
    const { res } = await e.login('rd', '/noretry/x');
    await e.scim.clearFaults();
    assert.notEqual(res.status, 200);
    assert.deepEqual(userPosts((await e.scim.state()).requests).map((r) => r.status), [503]);
    assert.deepEqual(await e.scimUsers('rd-ar'), []);
  });

  test('"bulk": both group memberships of a first login in one POST /Bulk', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('ba', '/bulkapp/x');
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    const log = (await e.scim.state()).requests;
    const bulk = log.filter((r) => r.method === 'POST' && /\/Bulk$/.test(r.path));
    assert.equal(bulk.length, 1);
    assert.equal(bulk[0].status, 200);
    assert.deepEqual(bulk[0].body.Operations.map((o) => o.method), ['PATCH', 'PATCH']);
    assert.deepEqual(log.filter((r) => r.method === 'PATCH'), [], 'no PATCH outside the Bulk');
    const [acct] = await e.scimUsers('ba-ar');
    const { groups } = await e.scim.state();
    for (const g of ['staff', 'engineering']) {
      assert.ok(groups.find((x) => x.displayName === g).members.some((m) => m.value === acct.id), `member of ${g}`);
    }
  });

  test('a slow body: the call times out as a whole, fails closed and audited; others are not held up', async () => {
    await e.scim.resetLog();
    // headers and one byte at once, the rest after 5 s; the target's
    // timeout_ms is 2000 for the whole call
    await e.scim.setFaults({ slow_body_ms: 5000, slow_body_paths: '/Users' });
    const t0 = Date.now();
    const login = e.login('sb', '/noretry/x');
    // meanwhile the same worker answers others at once
    await new Promise((r) => { setTimeout(r, 300); });
    const o0 = Date.now();
    const other = await jsonRequest('GET', `${e.base}/public/ping`);
    const otherMs = Date.now() - o0;
    const { res } = await login;
    const took = Date.now() - t0;
    await e.scim.clearFaults();
    assert.equal(other.status, 200);
    assert.ok(otherMs < 1000, `an unrelated request took ${otherMs} ms`);
    assert.notEqual(res.status, 200);
    assert.ok(took < 4900, `the login took ${took} ms: the 2 s call timeout did not fire`);
    const ev = e.audit().filter((a) => a.type === 'provision.account' && a.target === 'noretry'
      && a.identity && a.outcome === 'failure');
    assert.equal(ev.at(-1).reason, 'target_timeout');
    assert.deepEqual(userPosts((await e.scim.state()).requests), [], 'nothing created');
    assert.deepEqual(await e.scimUsers('sb-ar'), []);
  });

  test('nginx stops cleanly, no sanitizer reports', async () => {
    await e.nginx.stop();
    assert.deepEqual(sanitizerReports(e.prefix), []);
  });
});
