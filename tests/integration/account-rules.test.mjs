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
    description: 'jdoe-style names; the department from a lookup table',
    required: ['displayName', `${ENTERPRISE}:employeeNumber`],
    username: {
      concat: [
        { attr: 'given_name', transforms: [{ substring: { start: 0, length: 1 } }] },
        { attr: 'family_name' }],
      transforms: ['trim', 'lower', { replace: { regex: '[^a-z0-9]', with: '' } }],
      max_length: 16,
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

describe('account rules shape the provisioned account', () => {
  let e;
  before(async () => { e = await startEnv(undefined, { policies: POLICIES, users: { gus: GUS } }); });
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
