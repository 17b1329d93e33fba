// Deprovisioning that nobody has to remember, end to end through the real
// gateway (nginx + module), the real SCIM server and the sidecar
// (build/provgated): the account a login provisioned is disabled when the
// last session ended (expiry or logout) and the grace period passed; a jit
// entitlement is revoked after its lifetime; an unused app loses its
// entitlements after the inactivity threshold. Everything goes through the
// durable outbox and is audited (deprovision.*).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  cleanupAll, freePort, startProcess, waitForPort, sleep, REPO_ROOT,
} from './lib/harness.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');

// eng people also get "admins" just in time, for 60 s (1 s with the
// test-only expiry.test_time_divisor of 60)
const POLICIES = {
  policies: [
    ...DEFAULT_POLICIES.policies,
    {
      id: 'eng-admins-jit',
      kind: 'birthright',
      who: { attr: 'department', eq: 'eng' },
      grants: [{
        target: 'demoapp',
        entitlements: [{ type: 'group', value: 'admins', jit: { scope: 'app', lifetime_s: 60 } }],
      }],
    },
  ],
};

async function until(what, fn, ms = 20000) {
  const end = Date.now() + ms;
  let v;
  while (Date.now() < end) {
    v = await fn();
    if (v) return v;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}`);
  return v;
}

function identityOf(res) {
  const raw = JSON.parse(res.body).rawHeaders;
  return raw[raw.findIndex((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-provgate-identity') + 1];
}

async function startSidecar(e) {
  const port = await freePort();
  const sc = await startProcess(BIN, ['--config', e.cfgFile, '--listen', `127.0.0.1:${port}`, '--log-level', 'info'],
    { name: 'provgated' });
  await waitForPort(port);
  return sc;
}

async function scimGroups(e, userName) {
  const st = await e.scim.state();
  const u = st.users.find((x) => x.userName === userName);
  return u ? st.groups.filter((g) => g.members.some((m) => m.value === u.id)).map((g) => g.displayName).sort() : null;
}

describe('expiry: short sessions, jit lifetime', () => {
  let e;
  let sc;

  before(async () => {
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      cfgOver: (env) => {
        const base = env.baseConfig();
        return {
          session: { ...base.session, ttl_s: 3 },
          targets: {
            demoapp: { ...base.targets.demoapp, deprovision_on_session_end: { grace_s: 1, action: 'disable' } },
          },
          expiry: { sweep_s: 1, test_time_divisor: 60 },
        };
      },
    });
    sc = await startSidecar(e);
  });
  after(async () => {
    if (sc) await sc.stop();
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('the session expires: after the grace period the SCIM account is disabled', async () => {
    const { res } = await e.login('carol', '/app/expiring');
    assert.equal(res.status, 200);
    const iid = identityOf(res);
    assert.ok(iid);
    const [u] = await e.scimUsers('carol');
    assert.equal(u.active, true);
    assert.ok(await e.redisCmd('HGET', `pg:id:${iid}`, 'jit_at:demoapp'), 'the login recorded jit_at');
    // still live (TTL 3 s): not touched
    await sleep(1500);
    assert.equal((await e.scimUsers('carol'))[0].active, true, 'not disabled while the session lives');
    await until('carol disabled in SCIM', async () => (await e.scimUsers('carol'))[0].active === false);
    assert.ok(await e.redisCmd('HGET', `pg:id:${iid}`, 'last_session_end'), 'last_session_end recorded');
    const ev = e.audit().find((x) => x.type === 'deprovision.session_end' && x.identity === iid);
    assert.ok(ev, 'audited by the sidecar');
    assert.equal(ev.operation, 'disable');
    assert.ok(e.audit().some((x) => x.type === 'provision.deprovision' && x.reason === 'disabled'));
    // a new login re-enables the account
    const again = await e.login('carol', '/app/back');
    assert.equal(again.res.status, 200);
    await until('carol active again', async () => (await e.scimUsers('carol'))[0].active === true, 5000);
  });

  test('a jit entitlement is revoked after its lifetime; birthright access stays', async () => {
    const { res } = await e.login('alice', '/app/jit');
    assert.equal(res.status, 200);
    const iid = identityOf(res);
    const groups = await scimGroups(e, 'alice');
    assert.ok(groups.includes('admins'), `jit group granted at login: ${groups}`);
    await until('admins revoked', async () => !(await scimGroups(e, 'alice')).includes('admins'), 10000);
    assert.deepEqual(await scimGroups(e, 'alice'), ['engineering', 'staff']);
    const ev = e.audit().find((x) => x.type === 'deprovision.grant_expired' && x.identity === iid);
    assert.ok(ev, 'audited');
    assert.deepEqual(ev.removed.map((x) => x.value), ['admins']);
    const ents = JSON.parse(await e.redisCmd('HGET', `pg:id:${iid}`, 'ents:demoapp'));
    assert.deepEqual(ents.map((x) => x.value).sort(), ['engineering', 'staff']);
  });
});

function sidecarSuite(title, cfgOver, body) {
  describe(title, () => {
    const ctx = {};

    before(async () => {
      ctx.e = await startEnv(undefined, { workers: 1, cfgOver });
      ctx.sc = await startSidecar(ctx.e);
    });
    after(async () => {
      if (ctx.sc) await ctx.sc.stop();
      if (ctx.e) {
        await ctx.e.nginx.stop();
        assert.deepEqual(sanitizerReports(ctx.e.prefix), []);
      }
      await cleanupAll();
    });
    body(ctx);
  });
}

// sweep_s 60: after the start-up sweep, only the keyspace notification of
// the deleted session key can make the sidecar look again in time
sidecarSuite('expiry: logout, through keyspace notifications', (env) => {
  const base = env.baseConfig();
  return {
    targets: { demoapp: { ...base.targets.demoapp, deprovision_on_session_end: { grace_s: 1, action: 'disable' } } },
    expiry: { sweep_s: 60 },
  };
}, (ctx) => {
  test('logout ends the last session: the account is disabled after the grace period', async () => {
    const { e } = ctx;
    const { b, res } = await e.login('carol', '/app/bye');
    assert.equal(res.status, 200);
    const iid = identityOf(res);
    const flags = await e.redisCmd('CONFIG', 'GET', 'notify-keyspace-events');
    assert.match(flags[1], /E/, 'the sidecar enabled keyevent notifications');
    assert.match(flags[1], /x/);
    assert.match(flags[1], /g/);
    assert.equal(await e.redisCmd('HLEN', 'pg:sessowner'), 1, 'the login recorded the session owner');
    await sleep(1500);
    assert.equal((await e.scimUsers('carol'))[0].active, true, 'a live session: untouched');
    const out = await b.request('GET', `${e.base}/provgate/logout`);
    assert.ok(out.status === 200 || out.status === 302, `logout: ${out.status}`);
    const t0 = Date.now();
    await until('carol disabled in SCIM', async () => (await e.scimUsers('carol'))[0].active === false, 10000);
    assert.ok(Date.now() - t0 < 8000, 'well before the next periodic sweep');
    assert.equal(await e.redisCmd('HLEN', 'pg:sessowner'), 0, 'the owner was looked up (targeted) and forgotten');
    const ev = e.audit().find((x) => x.type === 'deprovision.session_end' && x.identity === iid);
    assert.ok(ev);
    assert.equal(ev.operation, 'disable');
  });
});

sidecarSuite('expiry: inactivity', (env) => {
  const base = env.baseConfig();
  return {
    targets: { demoapp: { ...base.targets.demoapp, inactivity_s: 3 } },
    expiry: { sweep_s: 1 },
  };
}, (ctx) => {
  test('an app not used for inactivity_s loses its entitlements; the account stays', async () => {
    const { e } = ctx;
    const { res } = await e.login('alice', '/app/idle');
    assert.equal(res.status, 200);
    const iid = identityOf(res);
    assert.deepEqual(await scimGroups(e, 'alice'), ['engineering', 'staff']);
    assert.ok(await e.redisCmd('HGET', `pg:id:${iid}`, 'used:demoapp'), 'the request recorded the last use');
    await until('alice loses her groups', async () => (await scimGroups(e, 'alice')).length === 0, 15000);
    assert.equal((await e.scimUsers('alice'))[0].active, true, 'the account itself stays');
    const ev = e.audit().find((x) => x.type === 'deprovision.inactive' && x.identity === iid);
    assert.ok(ev, 'audited');
    assert.deepEqual(ev.removed.map((x) => x.value).sort(), ['engineering', 'staff']);
  });
});
