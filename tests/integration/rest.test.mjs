// The generic REST connector through the gateway: a login provisions an
// account in a real REST API (json-server 0.17.4, tests/peers/rest-target)
// through the durable outbox, with the same idempotency and move semantics
// as SCIM, and a bad connector config fails `nginx -t` with the path.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  cleanupAll, freePort, startProcess, tempDir, waitForPort, PEERS_DIR, jsonRequest,
} from './lib/harness.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const TOKEN = 'crm-token-0123456789';

async function startRestTarget(t) {
  const dir = tempDir('pg-rest-', t);
  fs.copyFileSync(path.join(PEERS_DIR, 'rest-target', 'db.json'), path.join(dir, 'db.json'));
  const port = await freePort();
  const proc = await startProcess(path.join(PEERS_DIR, 'node_modules', '.bin', 'json-server'), [
    path.join(dir, 'db.json'), '--host', '127.0.0.1', '--port', String(port), '--quiet', '--no-gzip',
    '--no-cors', '--middlewares', path.join(PEERS_DIR, 'rest-target', 'middleware.cjs'),
  ], { name: 'json-server', env: { REST_TARGET_TOKEN: TOKEN }, t });
  await waitForPort(port);
  const base = `http://127.0.0.1:${port}`;
  const auth = { authorization: `Bearer ${TOKEN}` };
  return {
    proc,
    base,
    users: async (username) => (await jsonRequest('GET', `${base}/users?username=${encodeURIComponent(username)}`, undefined, auth)).json,
    log: async () => (await jsonRequest('GET', `${base}/_admin/log`)).json.requests,
    reset: () => jsonRequest('POST', `${base}/_admin/reset`, {}),
    faults: (f) => jsonRequest('POST', `${base}/_admin/faults`, f),
  };
}

function crmTarget(base) {
  return {
    type: 'rest',
    connector: {
      base_url: base,
      auth: { type: 'bearer', token: TOKEN },
      timeout_ms: 3000,
      operations: {
        lookup: {
          path: '/users?username={key}', id_path: 'id', error_path: 'error',
          map: { key: 'username', active: 'active', groups: 'groups', attrs: { email: 'email', name: 'name' } },
        },
        create: {
          path: '/users', id_path: 'id', error_path: 'error',
          body: {
            username: '${key}', email: '${attrs.email}', name: '${attrs.name}', active: '${active}', groups: '${groups}',
          },
        },
        update: {
          method: 'PATCH', path: '/users/{id}', error_path: 'error',
          body: { email: '${attrs.email}', name: '${attrs.name}', active: '${active}', groups: '${groups}' },
        },
        disable: { method: 'PATCH', path: '/users/{id}', body: { active: false } },
        delete: { path: '/users/{id}' },
      },
    },
    attributes: { username: '${username}', email: '${email}', name: '${name}' },
    key: 'username',
    wait_ms: 4000,
  };
}

const POLICIES = {
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'crm-everyone', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'crm', entitlements: [{ type: 'group', value: 'crm-user' }] }] },
    { id: 'crm-eng', kind: 'birthright', who: { attr: 'department', eq: 'eng' },
      grants: [{ target: 'crm', entitlements: [{ type: 'group', value: 'crm-eng' }] }] },
  ],
};

describe('REST connector through the gateway', () => {
  let e;
  let crm;
  before(async () => {
    crm = await startRestTarget();
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      cfgOver: (env) => ({ targets: { ...env.baseConfig().targets, crm: crmTarget(crm.base) } }),
      extraServer: 'location /crm/ { provgate oidc:main; provgate_app crm; proxy_pass http://echo; }',
    });
  });
  after(async () => {
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('a login creates the REST account with mapped attributes and groups', async () => {
    const { res } = await e.login('alice', '/crm/home');
    assert.equal(res.status, 200, res.body.slice(0, 300));
    const [u] = await crm.users('alice');
    assert.ok(u, 'account created');
    assert.equal(u.email, 'alice@example.com');
    assert.equal(u.active, true);
    assert.deepEqual([...u.groups].sort(), ['crm-eng', 'crm-user']);
    assert.ok(e.audit().some((x) => x.type === 'provision.account' && x.app === 'crm' && x.reason === 'created'));
  });

  test('the next login changes nothing (no second POST), and a move revokes only what is no longer justified', async () => {
    await crm.reset();
    const { res } = await e.login('alice', '/crm/again');
    assert.equal(res.status, 200);
    const log = await crm.log();
    assert.equal(log.filter((r) => r.method === 'POST').length, 0, 'no second create');
    assert.equal((await crm.users('alice')).length, 1);
    await e.op.stop();
    const users = JSON.parse(JSON.stringify(e.users));
    users.alice.claims.department = 'sales';
    await e.startOp(users);
    try {
      const { res: moved } = await e.login('alice', '/crm/moved');
      assert.equal(moved.status, 200, moved.body.slice(0, 300));
      const [u] = await crm.users('alice');
      assert.deepEqual(u.groups, ['crm-user'], 'crm-eng revoked, crm-user kept');
    } finally {
      await e.op.stop();
      await e.startOp();
    }
  });

  test('the target refusing the token: dead letter and a clear 502, no session', async () => {
    await crm.faults({ status: 401, count: 100, path: '/users' });
    try {
      const { b, res } = await e.login('dave', '/crm/denied');
      assert.equal(res.status, 502, res.body.slice(0, 300));
      assert.equal(b.getCookie(`${e.base}/crm/`, 'provgate_session'), undefined);
      assert.ok(e.audit().some((x) => x.type === 'provision.account' && x.app === 'crm' && x.reason === 'target_rejected'));
    } finally {
      await crm.faults({});
    }
  });

  test('a bad connector object fails nginx -t with the file, the JSON path and the reason', async () => {
    const cfg = JSON.parse(fs.readFileSync(e.cfgFile, 'utf8'));
    cfg.targets.crm.connector.operations.lookup.bogus = 1;
    const bad = path.join(path.dirname(e.cfgFile), 'bad.json');
    fs.writeFileSync(bad, JSON.stringify(cfg));
    const r = e.nginxTest(fs.readFileSync(e.nginx.confFile, 'utf8').replace(e.cfgFile, bad));
    assert.notEqual(r.code, 0);
    assert.match(r.output, /bad\.json: \$\.targets\.crm\.connector\.operations\.lookup\.bogus: unknown field/);
  });
});
