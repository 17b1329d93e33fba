// A policy account rule (docs/policies.md "Accounts") decides how the
// account is built when the gateway provisions it: the username template,
// attribute transforms and required attributes reach the real SCIM app.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll } from './lib/harness.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const ENTERPRISE = 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User';

const POLICIES = {
  ...DEFAULT_POLICIES,
  accounts: [{
    target: 'demoapp',
    description: 'jdoe-style names; the department from a lookup table; created disabled',
    initial_state: 'disabled',
    required: ['displayName', `${ENTERPRISE}:employeeNumber`],
    username: {
      concat: [
        { attr: 'given_name', transforms: [{ substring: { start: 0, length: 1 } }] },
        { attr: 'family_name' }],
      transforms: ['trim', 'lower', { replace: { regex: '[^a-z0-9]', with: '' } }],
      max_length: 16,
      collision: { start: 2, max_tries: 3 },
    },
    attributes: {
      displayName: { template: '${family_name}, ${given_name}' },
      title: { attr: 'title', transforms: ['trim', { default: 'Staff' }] },
      [`${ENTERPRISE}:department`]: {
        attr: 'department',
        transforms: [{ lookup: { table: { eng: 'Engineering', ops: 'Operations' }, default: 'Other' } }],
      },
      [`${ENTERPRISE}:employeeNumber`]: { concat: [{ value: 'E-' }, { attr: 'employee_number' }] },
    },
  }],
};

// an employee without an employee number
const GUS = {
  password: 'gus-pw',
  claims: {
    sub: 'sub-gus-0007', email: 'gus@example.com', email_verified: true,
    preferred_username: 'gus', name: 'Gus Grey', given_name: 'Gus', family_name: 'Grey',
    groups: ['staff'], employee_type: 'employee', department: 'ops',
  },
};

// more people called D. Doe: their usernames collide with dave's
const doe = (name, n) => ({
  password: `${name}-pw`,
  claims: {
    sub: `sub-${name}-00${n}`, email: `${name}@example.com`, email_verified: true,
    preferred_username: name, name: `${name[0].toUpperCase()}${name.slice(1)} Doe`,
    given_name: `${name[0].toUpperCase()}${name.slice(1)}`, family_name: 'Doe',
    groups: ['staff'], employee_type: 'employee', department: 'eng', employee_number: `70${n}`,
  },
});

describe('account rules shape the provisioned account', () => {
  let e;
  before(async () => { e = await startEnv(undefined, { policies: POLICIES, users: { gus: GUS, dan: doe('dan', 1), deb: doe('deb', 2), dora: doe('dora', 3) } }); });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  test('the username template, transforms and lookups reach the SCIM account', async () => {
    const { res } = await e.login('dave', '/app/hello');
    assert.equal(res.status, 200, res.body.slice(0, 300));
    assert.deepEqual(await e.scimUsers('dave'), [], 'not named after the login name');
    const [u] = await e.scimUsers('ddoe');
    assert.ok(u, 'the account is named by the rule: d + doe');
    assert.equal(u.displayName, 'Doe, Dave', 'the rule overrides the target mapping');
    assert.equal(u.title, 'Staff', 'a default for a missing attribute');
    assert.equal(u[ENTERPRISE]?.department, 'Engineering', 'looked up');
    assert.equal(u[ENTERPRISE]?.employeeNumber, 'E-4004', 'concatenated');
    assert.equal(u.emails[0].value, 'dave@example.com', 'the target mapping still applies elsewhere');
    const ok = e.audit().find((x) => x.type === 'provision.account' && x.outcome === 'success');
    assert.ok(ok, 'provisioning audited');
  });

  test('a second login finds the same account: no second one', async () => {
    const { res } = await e.login('dave', '/app/again');
    assert.equal(res.status, 200, JSON.stringify(e.audit().filter((x) => x.type === 'provision.account').slice(-2)));
    assert.equal((await e.scimUsers('ddoe')).length, 1);
  });

  test('initial_state "disabled": created inactive; once someone enables it, logins leave it enabled', async () => {
    const [u] = await e.scimUsers('ddoe');
    assert.equal(u.active, false, 'created disabled, although the target mapping says active: true');
    const r = await e.scim.request('PATCH', `/Users/${u.id}`, {
      schemas: ['urn:ietf:params:scim:api:messages:2.0:PatchOp'],
      Operations: [{ op: 'replace', path: 'active', value: true }],
    });
    assert.equal(r.status, 200, r.text);
    assert.equal((await e.login('dave', '/app/later')).res.status, 200);
    const [after] = await e.scimUsers('ddoe');
    assert.equal(after.active, true, 'not disabled again by the next login');
  });

  test('a username taken by another person gets the next candidate, checked against the target', async () => {
    const [dave] = await e.scimUsers('ddoe');
    const { res } = await e.login('dan', '/app/hello');
    assert.equal(res.status, 200, res.body.slice(0, 300));
    const [dan] = await e.scimUsers('ddoe2');
    assert.ok(dan, 'dan Doe became ddoe2');
    assert.equal(dan.displayName, 'Doe, Dan');
    assert.notEqual(dan.externalId, dave.externalId);
    const [still] = await e.scimUsers('ddoe');
    assert.equal(still.displayName, 'Doe, Dave', "dave's account is untouched");
    const a = e.audit().filter((x) => x.type === 'provision.account' && x.outcome === 'success' && x.username_collisions).pop();
    assert.equal(a?.username_collisions, 1);
    // dan again: his own account, by its remembered id; no third one
    assert.equal((await e.login('dan', '/app/x')).res.status, 200);
    assert.equal((await e.scimUsers()).filter((u) => u.userName.startsWith('ddoe')).length, 2);
  });

  test('when every candidate is taken, the account is refused, not merged into someone else\'s', async () => {
    assert.equal((await e.login('deb', '/app/hello')).res.status, 200);
    assert.ok((await e.scimUsers('ddoe3'))[0], 'deb Doe became ddoe3');
    const { res } = await e.login('dora', '/app/hello');
    assert.equal(res.status, 502, res.body.slice(0, 300));
    const f = e.audit().filter((x) => x.type === 'provision.account' && x.reason === 'username_taken').pop();
    assert.ok(f, 'audited with reason username_taken');
    const does = (await e.scimUsers()).filter((u) => u.userName.startsWith('ddoe'));
    assert.equal(does.length, 3);
    assert.ok(!does.some((u) => u.displayName === 'Doe, Dora'), 'nobody\'s account was taken over');
  });

  test('a required attribute that cannot be built refuses the account: 403, nothing provisioned', async () => {
    // gus has no employee_number: employeeNumber cannot be built
    const { res } = await e.login('gus', '/app/hello');
    assert.equal(res.status, 403, `${res.url} ${res.body.slice(0, 600)}`);
    const d = e.audit().filter((x) => x.type === 'policy.decision' && x.outcome === 'denied').pop();
    assert.ok(d, 'the refusal is audited');
    assert.ok(JSON.stringify(d.explanation).includes('employeeNumber'), JSON.stringify(d.explanation));
    assert.deepEqual(await e.scimUsers('ggrey'), []);
  });
});
