// The durable provisioning outbox through the real gateway: process kills
// in the middle of provisioning (an nginx worker, the whole of nginx, Redis
// with AOF) never lose the operation and never create a second account.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  cleanupAll, parseForms, sleep, startNginx, restartRedis,
} from './lib/harness.mjs';
import { startEnv, sanitizerReports, nginxEnv } from './gw/env.mjs';

const FRESH = {};
for (const [i, name] of ['kim', 'lee', 'max', 'ned'].entries()) {
  FRESH[name] = {
    password: `${name}-pw`,
    claims: {
      sub: `sub-${name}-10${i}`, email: `${name}@example.com`, email_verified: true,
      preferred_username: name, name: `${name} Test`, given_name: name, family_name: 'Test',
      groups: ['staff'], employee_type: 'employee', department: 'engineering', employee_number: `90${i}`,
    },
  };
}

/** Run a login up to the provider's redirect back to the callback. */
async function untilCallback(e, user, startPath) {
  const b = e.browser();
  const stopAt = `${e.base}/provgate/callback`;
  const first = await b.get(`${e.base}${startPath}`, { stopAt });
  const form = parseForms(first.body, first.url).find((f) => f.inputs.some((i) => i.type === 'password'));
  assert.ok(form, `login form expected, got ${first.status}`);
  const posted = await b.request('POST', form.action, {
    form: { ...form.fields, username: user, password: e.users[user].password },
  });
  const cb = await b.follow(posted, { stopAt });
  assert.ok(cb.location && cb.location.startsWith(stopAt), `callback expected, got ${cb.status}`);
  return { b, callbackUrl: cb.location };
}

/** Log in again until it succeeds (the reclaimed operation finishes). */
async function loginUntilOk(e, user, startPath, ms = 40000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = (await e.login(user, startPath)).res;
      if (last.status === 200) return last;
    } catch (err) {
      last = { status: 0, body: String(err) };
    }
    await sleep(500);
  }
  assert.fail(`no successful login within ${ms} ms: ${last.status} ${String(last.body).slice(0, 300)}\n${e.nginx.errorLog().split("\n").filter((l) => /outbox|provgate|signal/.test(l)).slice(-30).join("\n")}`);
  return last;
}

async function pendingCount(e) {
  const s = await e.redisCmd('XPENDING', 'pg:outbox', 'provgate');
  return Number(s[0]);
}

/** Start a login whose provisioning is slow, and return when the target
 *  has the operation in hand (its user lookup is being answered). */
async function startSlowLogin(e, user, path) {
  await e.scim.resetLog();
  await e.scim.setFaults({ latency_ms: 1500, latency_paths: '/Users' });
  const { b, callbackUrl } = await untilCallback(e, user, path);
  const pending = b.request('GET', callbackUrl).catch((err) => ({ status: 0, body: String(err) }));
  const end = Date.now() + 5000;
  while (Date.now() < end) {
    const st = await e.scim.state();
    if (st.requests && st.requests.some((r) => /\/Users/.test(r.path || r.url || ''))) break;
    await sleep(50);
  }
  await sleep(300);
  return pending;
}

describe('durable outbox through the gateway', () => {
  after(cleanupAll);
  let e;

  test('setup', async () => {
    e = await startEnv(undefined, { workers: 1, users: FRESH });
  });

  test('a worker killed mid-provisioning: the operation completes exactly once after the respawn', async () => {
    const [worker] = e.nginx.workerPids();
    const pending = startSlowLogin(e, 'kim', '/app/kill-worker');
    await sleep(200);
    await (async () => { await sleep(800); process.kill(worker, 'SIGKILL'); })();
    const dead = await pending;
    assert.notEqual(dead.status, 200, 'the killed worker could not answer');
    await e.scim.clearFaults();
    const end = Date.now() + 5000;
    while (Date.now() < end && e.nginx.workerPids().every((p) => p === worker)) await sleep(50);
    assert.ok(e.nginx.workerPids().some((p) => p !== worker), 'the master started a new worker');
    // the entry the dead worker held is reclaimed (claim_idle_ms 2000) and
    // applied once the dead worker's lease on the person (4 x timeout_ms +
    // 1 s = 13 s) has expired
    const res = await loginUntilOk(e, 'kim', '/app/kill-worker');
    assert.equal(res.status, 200);
    assert.equal((await e.scimUsers('kim')).length, 1, 'exactly one account');
    assert.equal(await pendingCount(e), 0, 'nothing left pending');
    assert.match(e.nginx.errorLog(), /outbox: applying \S+ again \(attempt \d+, reclaimed\)/);
  });

  test('nginx killed outright (master and worker) mid-provisioning: completes once after a restart', async () => {
    const pids = [e.nginx.pid, ...e.nginx.workerPids()];
    const pending = startSlowLogin(e, 'lee', '/app/kill-nginx');
    await sleep(1000);
    for (const p of pids) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
    await pending;
    await e.scim.clearFaults();
    await sleep(200);
    e.nginx = await startNginx({
      conf: e.conf, prefix: e.prefix, workers: 1, waitPort: e.port, env: nginxEnv(e.prefix),
    });
    const res = await loginUntilOk(e, 'lee', '/app/kill-nginx');
    assert.equal(res.status, 200);
    assert.equal((await e.scimUsers('lee')).length, 1, 'exactly one account');
    assert.equal(await pendingCount(e), 0);
  });

  test('Redis killed (AOF, fsync always) mid-provisioning: the operation survives and completes once', async () => {
    const pending = startSlowLogin(e, 'max', '/app/kill-redis');
    await sleep(400);
    await restartRedis(e.redis, { signal: 'SIGKILL' });
    await pending;
    await e.scim.clearFaults();
    const res = await loginUntilOk(e, 'max', '/app/kill-redis');
    assert.equal(res.status, 200);
    assert.equal((await e.scimUsers('max')).length, 1, 'exactly one account');
    const end = Date.now() + 5000;
    while (Date.now() < end && await pendingCount(e) > 0) await sleep(200);
    assert.equal(await pendingCount(e), 0);
  });

  test('"on_slow": "proceed" forwards at once and finishes in the background', async () => {
    await e.nginx.stop();
    e = await startEnv(undefined, {
      workers: 1,
      users: FRESH,
      cfgOver: (env) => {
        const base = env.baseConfig();
        return { targets: { demoapp: { ...base.targets.demoapp, wait_ms: 300, on_slow: 'proceed' } } };
      },
    });
    await e.scim.setFaults({ latency_ms: 1000, latency_paths: '/Users' });
    const t0 = Date.now();
    const { res } = await e.login('ned', '/app/proceed');
    const took = Date.now() - t0;
    assert.equal(res.status, 200, res.body.slice(0, 300));
    assert.ok(took < 2500, `forwarded after ${took} ms`);
    assert.ok(e.audit().some((x) => x.type === 'provision.deferred' && x.reason === 'proceed'));
    await e.scim.clearFaults();
    const end = Date.now() + 10000;
    while (Date.now() < end && (await e.scimUsers('ned')).length === 0) await sleep(200);
    assert.equal((await e.scimUsers('ned')).length, 1, 'the account was made in the background');
    await e.nginx.stop();
    assert.deepEqual(sanitizerReports(e.prefix), []);
  });
});

const OWN = {};
for (const [i, name] of ['oa', 'ob', 'oc', 'od', 'oe', 'of', 'og', 'oh'].entries()) {
  OWN[name] = {
    password: `${name}-pw`,
    claims: {
      sub: `sub-own-${i}`, email: `${name}@example.com`, email_verified: true,
      preferred_username: name, name: `${name} Own`, given_name: name, family_name: 'Own',
      groups: ['staff'], employee_type: 'employee', department: 'engineering', employee_number: `95${i}`,
    },
  };
}

const OWN_BY_SUB = Object.fromEntries(Object.entries(OWN).map(([n, u]) => [u.claims.sub, n]));

describe('the worker that enqueued a login\'s operation applies it (2 workers)', () => {
  after(cleanupAll);
  let e;

  test('setup', async () => {
    e = await startEnv(undefined, { workers: 2, users: OWN });
  });

  test('every first login\'s operation is handed to its own worker\'s consumer by the enqueue', async () => {
    const names = Object.keys(OWN).slice(0, 6);
    // in parallel, so that both workers take logins
    const results = await Promise.all(names.map((u) => e.login(u, `/app/own-${u}`)));
    for (const { res } of results) assert.equal(res.status, 200, res.body.slice(0, 300));
    const ev = e.audit();
    const queued = ev.filter((x) => x.type === 'provision.queued' && x.reason === 'enqueued');
    assert.equal(queued.length, names.length);
    for (const q of queued) {
      assert.equal(q.own, true, `delivered by the enqueue: ${JSON.stringify(q)}`);
      assert.match(q.consumer, /:\d+$/);
      // every event of the apply names the same worker's consumer
      const applied = ev.filter((x) => x.request_id === q.idem && x.consumer !== undefined);
      assert.ok(applied.some((x) => x.type === 'provision.call'), `apply events for ${q.idem}`);
      for (const a of applied) {
        assert.equal(a.consumer, q.consumer, `${a.type} applied by ${a.consumer}, enqueued by ${q.consumer}`);
        assert.equal(a.own, true);
      }
    }
    // the worker that applied it woke its login at once, with the account id
    const succ = ev.filter((x) => x.type === 'login.success' && names.includes(OWN_BY_SUB[x.subject]));
    assert.equal(succ.length, names.length);
    for (const x of succ) {
      assert.equal(x.outbox_wake, 'local', JSON.stringify(x));
      assert.ok(x.account, `account id on the session: ${JSON.stringify(x)}`);
    }
    for (const u of names) assert.equal((await e.scimUsers(u)).length, 1, `one account for ${u}`);
    assert.equal(await pendingCount(e), 0);
    assert.equal(Number(await e.redisCmd('XLEN', 'pg:outbox')), 0);
  });

  test('after SCRIPT FLUSH a first login still works: NOSCRIPT falls back to EVAL', async () => {
    await e.redisCmd('CONFIG', 'RESETSTAT');
    await e.redisCmd('SCRIPT', 'FLUSH');
    // each worker's consumer runs its promote script every block_ms (1 s)
    // on a connection that loaded it long ago: EVALSHA -> NOSCRIPT -> EVAL
    await sleep(1500);
    const info = String(await e.redisCmd('INFO', 'errorstats'));
    const m = /errorstat_NOSCRIPT:count=(\d+)/.exec(info);
    assert.ok(m && Number(m[1]) >= 2, `NOSCRIPT replies (one per worker at least): ${info}`);
    // and a first login after the flush works (its scripts load again)
    await e.redisCmd('SCRIPT', 'FLUSH');
    const { res } = await e.login('og', '/app/own-flush');
    assert.equal(res.status, 200, res.body.slice(0, 300));
    assert.equal((await e.scimUsers('og')).length, 1);
    const stats = String(await e.redisCmd('INFO', 'commandstats'));
    assert.match(stats, /cmdstat_evalsha:calls=\d+/);
    await e.nginx.stop();
    assert.deepEqual(sanitizerReports(e.prefix), []);
  });
});
