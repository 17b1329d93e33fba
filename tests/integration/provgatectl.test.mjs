// provgatectl policy check / explain, run as a real command.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const CTL = path.join(ROOT, 'build', 'provgatectl');
const EXAMPLES = fs.readdirSync(path.join(ROOT, 'policies/examples')).map((f) => path.join(ROOT, 'policies/examples', f));

function ctl(...args) {
  const r = spawnSync(CTL, args, { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function tmp(name, text) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-ctl-'));
  const f = path.join(d, name);
  fs.writeFileSync(f, text);
  return f;
}

test('check accepts every shipped policy file', () => {
  const r = ctl('policy', 'check', path.join(ROOT, 'policies/birthright.json'), ...EXAMPLES);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^ok: \d+ files, \d+ policies, \d+ roles/);
});

test('check reports file, JSON path and reason, exit 1', () => {
  const f = tmp('bad.json', JSON.stringify({ policies: [{ id: 'x', kind: 'birthright', who: { attr: 'a', eq: 'b' }, grants: [], colour: 'red' }] }));
  const r = ctl('policy', 'check', f);
  assert.equal(r.code, 1);
  assert.ok(r.err.includes(`${f}: $.policies[0].colour`), r.err);
});

test('check finds role cycles', () => {
  const f = tmp('cycle.json', JSON.stringify({
    roles: [
      { id: 'A', kind: 'business', includes: ['B'] },
      { id: 'B', kind: 'business', includes: ['A'] },
    ],
    policies: [],
  }));
  const r = ctl('policy', 'check', f);
  assert.equal(r.code, 1);
  assert.match(r.err, /cycle|undefined|includes|kind/i, r.err);
});

test('explain prints the decision and its explanation; usage errors exit 2', () => {
  const id = tmp('alice.json', JSON.stringify({ username: 'alice', employee_type: 'employee', department: 'engineering', groups: ['staff'] }));
  const r = ctl('policy', 'explain', '--identity', id, '--app', 'demoapp', path.join(ROOT, 'policies/birthright.json'));
  assert.equal(r.code, 0, r.err);
  const d = JSON.parse(r.out);
  assert.equal(d.has_account, true);
  assert.deepEqual(d.entitlements.map((x) => x.value).sort(), ['engineering', 'staff']);
  assert.ok(d.explanation.some((x) => x.policy === 'engineering-demoapp' && x.result === 'match'));
  const contractor = tmp('bob.json', JSON.stringify({ username: 'bob', employee_type: 'contractor' }));
  const r2 = ctl('policy', 'explain', '--identity', contractor, '--app', 'demoapp', path.join(ROOT, 'policies/birthright.json'));
  assert.equal(r2.code, 0, r2.err);
  assert.equal(JSON.parse(r2.out).has_account, false);
  assert.equal(ctl('policy', 'explain').code, 2);
  assert.equal(ctl('policy', 'check', '--help').code, 0);
});
