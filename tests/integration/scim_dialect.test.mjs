// A second SCIM dialect through the gateway: the "legacy" SCIM peer
// (tests/peers/scim-server.mjs --dialect legacy) has no PATCH (501) and no
// ETags, and says so in /ServiceProviderConfig. A target with
// "discovery": true reads that once per process and provisions with PUT
// (users and group memberships), never PATCH and never If-Match; the
// "dialect": {"force_put": true} switch does the same without discovery;
// a target with neither PATCHes and fails against this server.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll } from './lib/harness.mjs';
import { startEnv, sanitizerReports } from './gw/env.mjs';

const PEOPLE = {};
for (const [i, name] of ['dia', 'dib', 'dic', 'did', 'die'].entries()) {
  PEOPLE[name] = {
    password: `${name}-pw`,
    claims: {
      sub: `sub-${name}-dialect`, email: `${name}@example.com`, email_verified: true,
      preferred_username: name, name: `${name} Dialect`, given_name: name, family_name: 'Dialect',
      groups: ['staff'], employee_type: 'employee', department: 'eng', employee_number: `66${i}`,
    },
  };
}

const POLICIES = {
  policies: [{
    id: 'employees',
    kind: 'birthright',
    who: { attr: 'employee_type', eq: 'employee' },
    grants: ['demoapp', 'forceput', 'nodisc', 'extdisc', 'extnodisc'].map((target) => ({
      target, entitlements: [{ type: 'group', value: 'staff' }, { type: 'group', value: 'engineering' }],
    })),
  }],
};

const isSpc = (r) => /\/ServiceProviderConfig$/.test(r.path);
const ENT = 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User';

describe('SCIM dialects through the gateway (legacy peer: no PATCH, no ETags)', () => {
  after(cleanupAll);
  let e;

  test('setup', async () => {
    e = await startEnv(undefined, {
      workers: 1,
      users: PEOPLE,
      policies: POLICIES,
      scimDialect: 'legacy',
      cfgOver: (env) => {
        const base = env.baseConfig();
        const t = base.targets.demoapp;
        return {
          targets: {
            demoapp: { ...t, discovery: true },
            forceput: { ...t, dialect: { force_put: true, no_etag: true } },
            nodisc: { ...t },
            extdisc: { ...t, discovery: true, attributes: { ...t.attributes, [`${ENT}:department`]: '${department}' } },
            extnodisc: {
              ...t, dialect: { force_put: true }, attributes: { ...t.attributes, [`${ENT}:department`]: '${department}' },
            },
          },
        };
      },
      extraServer: `
        location /forceput/ { provgate oidc:main; provgate_app forceput; proxy_pass http://echo; }
        location /nodisc/ { provgate oidc:main; provgate_app nodisc; proxy_pass http://echo; }
        location /extdisc/ { provgate oidc:main; provgate_app extdisc; proxy_pass http://echo; }
        location /extnodisc/ { provgate oidc:main; provgate_app extnodisc; proxy_pass http://echo; }`,
    });
    const spc = await e.scim.request('GET', '/ServiceProviderConfig');
    assert.equal(spc.json.patch.supported, false, 'the peer advertises no PATCH');
    assert.equal(spc.json.etag.supported, false, 'the peer advertises no ETags');
  });

  test('discovery: the first login reads /ServiceProviderConfig and provisions with PUT only', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('dia', '/app/dialect');
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    const log = (await e.scim.state()).requests;
    assert.equal(log.filter(isSpc).length, 1, 'discovery read once');
    assert.ok(log.findIndex(isSpc) < log.findIndex((r) => r.method === 'POST'), 'before the first write');
    assert.deepEqual(log.filter((r) => r.method === 'PATCH'), [], 'no PATCH sent');
    assert.deepEqual(log.filter((r) => r.if_match), [], 'no If-Match sent');
    const [acct] = await e.scimUsers('dia');
    assert.ok(acct, 'account created');
    const puts = log.filter((r) => r.method === 'PUT' && /\/Groups\//.test(r.path));
    assert.equal(puts.length, 2, 'both memberships added by PUT of the group');
    for (const p of puts) assert.equal(p.status, 200);
    const groups = (await e.scim.state()).groups;
    for (const g of ['staff', 'engineering']) {
      const grp = groups.find((x) => x.displayName === g);
      assert.ok((grp.members || []).some((m) => m.value === acct.id), `member of ${g}`);
    }
  });

  test('discovery is cached: a changed account is put right with PUT /Users, no second discovery', async () => {
    const [acct] = await e.scimUsers('dia');
    const changed = await e.scim.request('PUT', `/Users/${acct.id}`, {
      ...acct, displayName: 'Changed Elsewhere', meta: undefined,
    });
    assert.equal(changed.status, 200);
    await e.scim.resetLog();
    const { res } = await e.login('dia', '/app/dialect-again');
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    const log = (await e.scim.state()).requests;
    assert.equal(log.filter(isSpc).length, 0, 'capabilities reused');
    assert.deepEqual(log.filter((r) => r.method === 'PATCH'), []);
    const put = log.filter((r) => r.method === 'PUT' && r.path.endsWith(`/Users/${acct.id}`));
    assert.equal(put.length, 1, 'the user was replaced with PUT');
    assert.equal(put[0].status, 200);
    assert.equal((await e.scimUsers('dia'))[0].displayName, 'dia Dialect', 'desired state restored');
    // the other members of the groups were kept by the group PUTs
    assert.equal((await e.scimUsers('dia')).length, 1);
  });

  test('"dialect": {"force_put": true} without discovery: PUT only, no discovery read', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('dib', '/forceput/x');
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    const log = (await e.scim.state()).requests;
    assert.equal(log.filter(isSpc).length, 0);
    assert.deepEqual(log.filter((r) => r.method === 'PATCH'), []);
    const [acct] = await e.scimUsers('dib');
    const groups = (await e.scim.state()).groups;
    for (const g of ['staff', 'engineering']) {
      const members = groups.find((x) => x.displayName === g).members || [];
      assert.ok(members.some((m) => m.value === acct.id), `dib in ${g}`);
      const dia = (await e.scimUsers('dia'))[0];
      assert.ok(members.some((m) => m.value === dia.id), `dia still in ${g} (PUT kept the members)`);
    }
  });

  test('neither discovery nor a dialect: the gateway PATCHes, gets 501 and the login fails', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('dic', '/nodisc/x');
    assert.notEqual(res.status, 200);
    const log = (await e.scim.state()).requests;
    const patches = log.filter((r) => r.method === 'PATCH');
    assert.ok(patches.length >= 1, 'PATCH was tried');
    for (const p of patches) assert.equal(p.status, 501);
  });

  test('discovery reads /ResourceTypes and /Schemas too: an extension the target does not list is not sent', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('did', '/extdisc/x');
    assert.equal(res.status, 200, String(res.body).slice(0, 300));
    const log = (await e.scim.state()).requests;
    assert.equal(log.filter((r) => /\/ResourceTypes$/.test(r.path)).length, 1);
    assert.equal(log.filter((r) => /\/Schemas$/.test(r.path)).length, 1);
    const post = log.find((r) => r.method === 'POST' && /\/Users$/.test(r.path));
    assert.equal(post.status, 201);
    assert.equal(post.body[ENT], undefined, 'the enterprise extension was left out');
    assert.deepEqual(post.body.schemas, ['urn:ietf:params:scim:schemas:core:2.0:User']);
    assert.equal((await e.scimUsers('did')).length, 1);
  });

  test('without discovery the same mapping sends the extension and this target refuses it', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('die', '/extnodisc/x');
    assert.notEqual(res.status, 200);
    const post = (await e.scim.state()).requests.find((r) => r.method === 'POST' && /\/Users$/.test(r.path));
    assert.equal(post.status, 400);
    assert.equal(post.body[ENT].department, 'eng');
    assert.deepEqual(await e.scimUsers('die'), []);
  });

  test('nginx stops cleanly, no sanitizer reports', async () => {
    await e.nginx.stop();
    assert.deepEqual(sanitizerReports(e.prefix), []);
  });
});
