// Segregation of duties at login: a prevent rule keeps the toxic
// combination out of the target; the person still gets everything else,
// and the decision (with what was refused and why) is audited.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll } from './lib/harness.mjs';
import { startEnv, sanitizerReports } from './gw/env.mjs';

const POLICIES = {
  policies: [
    { id: 'staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'staff' }] }] },
    { id: 'eng', kind: 'birthright', who: { attr: 'department', eq: 'eng' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'engineering' }] }] },
    { id: 'admins', kind: 'birthright', who: { group: 'admins' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'admins' }] }] },
    { id: 'sod-eng-admin', kind: 'sod', description: 'Engineers do not administer production.',
      conflict: [
        { target: 'demoapp', type: 'group', value: 'engineering' },
        { target: 'demoapp', type: 'group', value: 'admins' },
      ],
      action: 'prevent' },
  ],
};

const USERS = {
  mallory: {
    password: 'mallory-pw',
    claims: {
      sub: 'sub-mallory', email: 'mallory@example.com', email_verified: true, preferred_username: 'mallory',
      name: 'Mallory M', given_name: 'Mallory', family_name: 'M', groups: ['staff', 'admins'],
      employee_type: 'employee', department: 'eng',
    },
  },
};

describe('segregation of duties at login', () => {
  let e;
  before(async () => { e = await startEnv(undefined, { workers: 1, policies: POLICIES, users: USERS }); });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  test('a prevent rule keeps the toxic pair out of the target and is audited', async () => {
    const { res } = await e.login('mallory', '/app/sod');
    assert.equal(res.status, 200, res.body);
    const [u] = await e.scimUsers('mallory');
    assert.ok(u, 'the account was still created');
    const state = await e.scim.state();
    const member = (g) => state.groups.find((x) => x.displayName === g).members.some((m) => m.value === u.id);
    assert.ok(member('staff'), 'non-conflicting access is granted');
    assert.ok(!(member('engineering') && member('admins')), 'never both halves of the toxic pair');
    const ev = e.audit().filter((x) => x.type === 'policy.decision' && x.target === 'demoapp');
    const last = ev[ev.length - 1];
    assert.ok(last.denied.length >= 1, JSON.stringify(last));
    assert.ok(last.denied.every((d) => d.denied_by === 'sod-eng-admin'), JSON.stringify(last.denied));
    assert.ok(last.explanation.some((x) => x.policy === 'sod-eng-admin'));
  });
});
