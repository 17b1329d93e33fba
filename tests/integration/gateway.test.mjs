// End-to-end: OIDC login through the real OP, JIT provisioning into the real
// SCIM server, identity headers to the echo upstream, all through Debian's
// nginx loading ngx_http_provgate_module.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import {
  cleanupAll, stopRedis, restartRedis, sleep, parseForms, oidcLogout,
} from './lib/harness.mjs';
import { startEnv } from './gw/env.mjs';

/** Values of header `name` (any case) the echo upstream received. */
function echoed(res, name) {
  const body = typeof res.json === 'function' ? res.json() : JSON.parse(res.body);
  const raw = body.rawHeaders;
  const out = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i].toLowerCase().replace(/_/g, '-') === name.toLowerCase()) out.push(raw[i + 1]);
  }
  return out;
}

function countRequests(state, method, re) {
  return state.requests.filter((r) => r.method === method && re.test(r.path)).length;
}

/** Drive a login up to the point where the OP redirects to our callback. */
async function loginUntilCallback(e, user, startPath = '/app/x') {
  const b = e.browser();
  const stopAt = `${e.base}/provgate/callback`;
  const first = await b.get(`${e.base}${startPath}`, { stopAt });
  const form = parseForms(first.body, first.url).find((f) => f.inputs.some((i) => i.type === 'password'));
  assert.ok(form, `login form expected, got ${first.status} ${first.url}`);
  const userInput = form.inputs.find((i) => i.name && ['text', 'email'].includes(i.type));
  const passInput = form.inputs.find((i) => i.type === 'password');
  const res = await b.request('POST', form.action, {
    form: { ...form.fields, [userInput.name]: user, [passInput.name]: e.users[user].password },
  });
  const cb = await b.follow(res, { stopAt });
  assert.ok(cb.location && cb.location.startsWith(stopAt), `expected redirect to callback, got ${cb.status} ${cb.location}`);
  return { b, callbackUrl: cb.location };
}

function sessionCookie(b, e) {
  return b.getCookie(`${e.base}/app/`, 'provgate_session');
}

describe('OIDC login with JIT SCIM provisioning', () => {
  let e;
  before(async () => { e = await startEnv(undefined, { workers: 1 }); });
  after(async () => {
    const reports = e ? e.sanitizerReports() : [];
    await cleanupAll();
    assert.deepEqual(reports, [], `sanitizer reports:\n${reports.join('\n')}`);
  });

  test('first login provisions the account before the request reaches the app', async () => {
    await e.scim.resetLog();
    const { b, res } = await e.login('alice', '/app/hello?x=1');
    assert.equal(res.status, 200, res.body);
    assert.equal(new URL(res.url).pathname, '/app/hello');
    assert.equal(new URL(res.url).search, '?x=1');
    assert.deepEqual(echoed(res, 'x-provgate-user'), ['alice']);
    assert.deepEqual(echoed(res, 'x-provgate-email'), ['alice@example.com']);
    assert.deepEqual(echoed(res, 'x-provgate-groups'), ['staff,engineering']);
    const ents = echoed(res, 'x-provgate-entitlements')[0].split(',').sort();
    assert.deepEqual(ents, ['engineering', 'staff']);
    const iid = echoed(res, 'x-provgate-identity')[0];
    assert.match(iid, /^[A-Za-z0-9_-]{16,}$/);

    const users = await e.scimUsers('alice');
    assert.equal(users.length, 1);
    assert.equal(users[0].name.givenName, 'Alice');
    assert.equal(users[0].externalId, iid);
    assert.equal(users[0].emails[0].value, 'alice@example.com');
    const state = await e.scim.state();
    const staff = state.groups.find((g) => g.displayName === 'staff');
    const eng = state.groups.find((g) => g.displayName === 'engineering');
    assert.ok(staff.members.some((m) => m.value === users[0].id));
    assert.ok(eng.members.some((m) => m.value === users[0].id));
    assert.equal(countRequests(state, 'POST', /\/Users$/), 1);

    // the cookie is HttpOnly + SameSite=Lax and the identity record remembers the account
    const setCookie = res.redirects.length >= 0 && b.allCookies().find((c) => c.name === 'provgate_session');
    assert.ok(setCookie, 'session cookie set');
    assert.equal(await e.redisCmd('HGET', `pg:id:${iid}`, 'acct:demoapp'), users[0].id);

    // audit: login, decision, provisioning calls, all without secrets
    const ev = e.audit();
    for (const type of ['login.start', 'policy.decision', 'provision.call', 'provision.account', 'login.success']) {
      assert.ok(ev.some((x) => x.type === type), `audit has ${type}`);
    }
    const text = fs.readFileSync(e.auditFile, 'utf8');
    assert.ok(!text.includes(e.scim.token), 'no SCIM token in audit');
    assert.ok(!text.includes(e.clients[0].client_secret), 'no client secret in audit');
    assert.ok(!/eyJ[A-Za-z0-9_-]+\.eyJ/.test(text), 'no JWT in audit');
    const stream = await e.redisCmd('XLEN', 'pg:audit');
    assert.ok(stream >= ev.length - 1, `audit stream has events (${stream})`);

    // a second request with the session goes straight through
    const again = await b.get(`${e.base}/app/again`);
    assert.equal(again.status, 200);
    assert.deepEqual(echoed(again, 'x-provgate-user'), ['alice']);
  });

  test('a returning user is not created again', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('alice', '/app/back');
    assert.equal(res.status, 200, res.body);
    const state = await e.scim.state();
    assert.equal(countRequests(state, 'POST', /\/Users$/), 0);
    assert.equal(countRequests(state, 'PATCH', /\/Users\//), 0, 'nothing changed, no PATCH');
    assert.equal((await e.scimUsers('alice')).length, 1);
  });

  test('a verified email links a second account to the same identity; an unverified one never does', async () => {
    const { res: a } = await e.login('alice', '/app/corr');
    const aliceId = echoed(a, 'x-provgate-identity')[0];
    const { res: a2 } = await e.login('alice2', '/app/corr');
    assert.equal(a2.status, 200, a2.body);
    assert.equal(echoed(a2, 'x-provgate-identity')[0], aliceId, 'linked by verified email');
    assert.ok(e.audit().some((x) => x.type === 'identity.correlation' && x.reason === 'correlated'));
    // carol's email is not verified: a second subject with it gets its own identity
    const { res: c1 } = await e.login('carol', '/app/corr');
    const { res: c2 } = await e.login('carol2', '/app/corr');
    assert.notEqual(echoed(c2, 'x-provgate-identity')[0], echoed(c1, 'x-provgate-identity')[0]);
  });

  test('a changed attribute is PATCHed on the next login', async () => {
    await e.op.stop();
    const users = JSON.parse(JSON.stringify(e.users));
    users.alice.claims.name = 'Alice Anders-Smith';
    users.alice.claims.family_name = 'Anders-Smith';
    await e.startOp(users);
    await e.scim.resetLog();
    const { res } = await e.login('alice', '/app/moved');
    assert.equal(res.status, 200, res.body);
    const state = await e.scim.state();
    assert.equal(countRequests(state, 'POST', /\/Users$/), 0);
    assert.equal(countRequests(state, 'PATCH', /\/Users\//), 1);
    const [u] = await e.scimUsers('alice');
    assert.equal(u.displayName, 'Alice Anders-Smith');
    assert.equal(u.name.familyName, 'Anders-Smith');
    await e.op.stop();
    await e.startOp();
  });

  test('a move removes access no longer justified and keeps common birthright access', async () => {
    const { res: before1 } = await e.login('alice', '/app/move0');
    assert.equal(before1.status, 200, before1.body);
    const [u0] = await e.scimUsers('alice');
    const groupsOf = async (id) => (await e.scim.state()).groups
      .filter((g) => g.members.some((m) => m.value === id)).map((g) => g.displayName).sort();
    assert.deepEqual(await groupsOf(u0.id), ['engineering', 'staff']);
    // HR moves alice from engineering to sales
    await e.op.stop();
    const users = JSON.parse(JSON.stringify(e.users));
    users.alice.claims.department = 'sales';
    await e.startOp(users);
    try {
      const { res } = await e.login('alice', '/app/moved-dept');
      assert.equal(res.status, 200, res.body);
      assert.deepEqual(await groupsOf(u0.id), ['staff'], 'engineering removed, staff kept');
      assert.deepEqual(echoed(res, 'x-provgate-entitlements'), ['staff']);
      assert.ok(e.audit().some((x) => x.type === 'provision.revoke' && x.group === 'engineering'
        && x.reason === 'no_longer_justified'));
    } finally {
      await e.op.stop();
      await e.startOp();
    }
    // moving back grants it again
    const { res: back } = await e.login('alice', '/app/move-back');
    assert.equal(back.status, 200);
    assert.deepEqual(await groupsOf(u0.id), ['engineering', 'staff']);
  });

  test('concurrent first logins give one identity and one account', async () => {
    await e.scim.resetLog();
    await e.scim.setFaults({ latency_ms: 400, latency_paths: '/Users' });
    const [l1, l2] = await Promise.all([loginUntilCallback(e, 'dave'), loginUntilCallback(e, 'dave')]);
    const [r1, r2] = await Promise.all([l1.b.get(l1.callbackUrl), l2.b.get(l2.callbackUrl)]);
    await e.scim.clearFaults();
    assert.equal(r1.status, 200, r1.body);
    assert.equal(r2.status, 200, r2.body);
    assert.equal(echoed(r1, 'x-provgate-identity')[0], echoed(r2, 'x-provgate-identity')[0]);
    const state = await e.scim.state();
    assert.equal(countRequests(state, 'POST', /\/Users$/), 1, 'exactly one POST /Users');
    assert.equal((await e.scimUsers('dave')).length, 1);
    const subKeys = await e.redisCmd('KEYS', 'pg:idx:sub:*');
    const ids = await Promise.all(subKeys.map((k) => e.redisCmd('GET', k)));
    assert.equal(ids.filter((id) => id === echoed(r1, 'x-provgate-identity')[0]).length, 1);
  });

  test('client_secret_post works as token endpoint authentication', async () => {
    const { res } = await e.login('alice', '/post/x');
    assert.equal(res.status, 200, res.body);
    assert.deepEqual(echoed(res, 'x-provgate-user'), ['alice']);
  });

  test('a tampered session cookie is no session', async () => {
    const { b } = await e.login('alice', '/app/t');
    const good = sessionCookie(b, e);
    const flipped = good.slice(0, 10) + (good[10] === 'A' ? 'B' : 'A') + good.slice(11);
    b.setCookie(`${e.base}/`, 'provgate_session', flipped);
    const r = await b.request('GET', `${e.base}/app/t`);
    assert.equal(r.status, 302);
    assert.ok(r.location.startsWith(e.op.issuer), r.location);
    assert.ok(e.audit().some((x) => x.type === 'session.invalid' && x.reason === 'cookie_invalid'));
    // API clients get 401, not a redirect
    const api = await b.request('GET', `${e.base}/app/t`, { headers: { accept: 'application/json' } });
    assert.equal(api.status, 401);
    assert.equal(JSON.parse(api.body).error, 'login_required');
  });

  test('state must be bound to the browser and single-use', async () => {
    const { b, callbackUrl } = await loginUntilCallback(e, 'alice');
    // another browser presenting the same callback URL: not bound
    const thief = e.browser();
    const stolen = await thief.request('GET', callbackUrl);
    assert.equal(stolen.status, 400);
    assert.match(stolen.body, /state_not_bound/);
    // the rightful browser completes it once
    const ok = await b.get(callbackUrl);
    assert.equal(ok.status, 200, ok.body);
    // replay of the same callback: the state is consumed
    b.setCookie(`${e.base}/`, 'provgate_session', 'x');
    const replay = await b.request('GET', callbackUrl);
    assert.equal(replay.status, 400);
    // unknown state with a forged binding cookie is refused too
    const forged = await e.browser().request('GET', `${e.base}/provgate/callback?state=abc&code=def`);
    assert.equal(forged.status, 400);
    assert.equal(forged.headers['set-cookie'], undefined);
  });

  test('an error from the provider gives a clear 401 page', async () => {
    const r = await e.browser().request('GET', `${e.base}/provgate/callback?error=access_denied&state=x`);
    assert.equal(r.status, 401);
    assert.match(r.body, /idp_error/);
  });

  test('spoofed identity headers never reach the upstream', async () => {
    const spoof = {
      'X-Provgate-User': 'root', 'x-provgate-email': 'root@evil', 'X_PROVGATE_GROUPS': 'admins',
      'x-Provgate-Entitlements': 'all', 'X-PROVGATE-IDENTITY': 'someone',
    };
    const pub = await e.browser().request('GET', `${e.base}/public/p`, { headers: spoof });
    assert.equal(pub.status, 200);
    for (const h of Object.keys(spoof)) assert.deepEqual(echoed(pub, h.replace(/_/g, '-')), [], h);
    const { b } = await e.login('alice', '/app/s');
    const r = await b.request('GET', `${e.base}/app/s`, { headers: spoof });
    assert.equal(r.status, 200);
    assert.deepEqual(echoed(r, 'x-provgate-user'), ['alice']);
    assert.deepEqual(echoed(r, 'x-provgate-email'), ['alice@example.com']);
    assert.deepEqual(echoed(r, 'x-provgate-identity').length, 1);
    assert.notDeepEqual(echoed(r, 'x-provgate-identity'), ['someone']);
  });

  test('a subrequest into a protected location never bypasses it (auth_request)', async () => {
    // /authcheck/ asks the protected /app/ location through auth_request
    const anon = await e.browser().request('GET', `${e.base}/authcheck/x`);
    assert.equal(anon.status, 403, 'no session: the subrequest is refused, not waved through');
    const { b } = await e.login('alice', '/app/sr');
    const ok = await b.request('GET', `${e.base}/authcheck-main/x`);
    assert.equal(ok.status, 200, 'allowed main request: its subrequest passes');
  });

  test('CR, LF and NUL in claims never become extra headers', async () => {
    const { res } = await e.login('eve', '/app/crlf');
    assert.equal(res.status, 200, res.body);
    assert.deepEqual(echoed(res, 'x-injected'), []);
    const groups = echoed(res, 'x-provgate-groups');
    assert.equal(groups.length, 1);
    assert.ok(!/[\r\n\0]/.test(groups[0]));
  });

  test('a NUL byte inside a claim fails closed', async () => {
    const { b, res } = await e.login('nul', '/app/nul');
    assert.equal(res.status, 401);
    assert.match(res.body, /id="reason">malformed</);
    assert.equal(sessionCookie(b, e), undefined);
    assert.equal((await e.scimUsers()).filter((u) => u.userName.startsWith('nul')).length, 0);
  });

  test('return URLs are same-origin paths only', async () => {
    for (const raw of ['//evil.example/x', '/\\evil.example/x', 'http://evil.example/x']) {
      const loc = await new Promise((resolve, reject) => {
        const s = net.connect(e.port, '127.0.0.1', () => {
          s.write(`GET ${raw} HTTP/1.1\r\nHost: 127.0.0.1:${e.port}\r\nConnection: close\r\n\r\n`);
        });
        let buf = '';
        s.on('data', (d) => { buf += d; });
        s.on('end', () => resolve(buf));
        s.on('error', reject);
      });
      // either nginx refuses the request line, or we redirect to the IdP;
      // in the latter case the stored return path must be "/"
      if (/^HTTP\/1\.1 302/.test(loc)) {
        const state = /[?&]state=([^&\s]+)/.exec(loc)[1];
        const rec = JSON.parse(await e.redisCmd('GET', `pg:state:${state}`));
        // nginx reduces an absolute-form request line to its path, which is
        // ours; anything that could leave the origin becomes "/"
        if (raw.startsWith('http:')) assert.equal(rec.return_to, '/x');
        else assert.equal(rec.return_to, '/', `${raw} -> ${rec.return_to}`);
      } else {
        assert.match(loc, /^HTTP\/1\.1 4\d\d/, loc.slice(0, 100));
      }
    }
  });

  test('a person no policy entitles gets 403 and nothing is provisioned', async () => {
    await e.scim.resetLog();
    const { res } = await e.login('bob', '/app/nope');
    assert.equal(res.status, 403);
    assert.match(res.body, /not_entitled/);
    assert.equal((await e.scimUsers('bob')).length, 0);
    assert.ok(e.audit().some((x) => x.type === 'policy.decision' && x.reason === 'not_entitled'));
  });

  test('logout ends the session and signs out at the provider', async () => {
    const { b } = await e.login('alice', '/app/out');
    const sid = sessionCookie(b, e);
    assert.ok(sid);
    const r = await b.request('GET', `${e.base}/provgate/logout`);
    assert.equal(r.status, 302);
    const u = new URL(r.location);
    assert.equal(u.origin, e.op.issuer);
    assert.ok(u.searchParams.get('id_token_hint'));
    assert.equal(sessionCookie(b, e), undefined, 'cookie cleared');
    b.setCookie(`${e.base}/`, 'provgate_session', sid);
    const after1 = await b.request('GET', `${e.base}/app/out`);
    assert.equal(after1.status, 302, 'old cookie no longer works');
    assert.ok(e.audit().some((x) => x.type === 'session.end' && x.reason === 'logout'));
  });

  test('RP-initiated logout ends the session at the provider too', async () => {
    const { b } = await e.login('alice', '/app/rp');
    // while signed in at the provider, a new app session needs no password
    b.setCookie(`${e.base}/`, 'provgate_session', 'gone');
    const sso = await b.get(`${e.base}/app/rp`);
    assert.equal(sso.status, 200, 'single sign-on without a login form');
    const r = await b.request('GET', `${e.base}/provgate/logout`);
    const done = await oidcLogout(b, r.location);
    assert.equal(done.status, 200, done.body);
    assert.equal(new URL(done.url).pathname, '/signed-out', 'back at post_logout_redirect_uri');
    // the provider's session is gone: the next sign-in shows its login form
    const again = await b.get(`${e.base}/app/rp`);
    assert.match(again.body, /type="password"/, 'the provider asks for the password again');
  });

  test('target down: a clear "being prepared" page, no session; done once the target is back', async () => {
    await e.scim.setFaults({ fail_status: 503, fail_count: 1000 });
    const { b, res } = await e.login('carol', '/app/down');
    assert.equal(res.status, 503, res.body.slice(0, 300));
    assert.match(res.body, /account_pending/);
    assert.match(res.body, /http-equiv="refresh" content="3;url=\/app\/down"/, 'the page refreshes to the app');
    assert.equal(res.headers['retry-after'], '3');
    assert.equal(sessionCookie(b, e), undefined);
    assert.ok(e.audit().some((x) => x.type === 'provision.account' && x.reason === 'target_unavailable'),
      'the failed attempt is audited');
    assert.ok(e.audit().some((x) => x.type === 'provision.pending' && x.app === 'demoapp'));
    // the operation is durable: it is retried in the background
    await e.scim.clearFaults();
    const ok = await e.login('carol', '/app/down');
    assert.equal(ok.res.status, 200, ok.res.body);
    assert.equal((await e.scimUsers('carol')).length, 1, 'exactly one account');
  });

  test('a permanent target error dead-letters the operation and explains it (502)', async () => {
    await e.scim.setFaults({ fail_status: 400, fail_count: 1000 });
    try {
      const { b, res } = await e.login('dave', '/app/rejected');
      assert.equal(res.status, 502, res.body.slice(0, 300));
      assert.match(res.body, /provisioning_failed/);
      assert.equal(sessionCookie(b, e), undefined);
      const dead = await e.redisCmd('XRANGE', 'pg:outbox:dead', '-', '+');
      assert.ok(dead.length >= 1, 'a dead letter exists');
      assert.ok(e.audit().some((x) => x.type === 'provision.account' && x.reason === 'provisioning_failed'));
    } finally {
      await e.scim.clearFaults();
    }
  });

  test('a slow target does not slow other users', async () => {
    const { b } = await e.login('alice', '/app/fast');
    await e.scim.setFaults({ latency_ms: 2000 });
    const slow = loginUntilCallback(e, 'carol', '/app/slow').then(({ b: b2, callbackUrl }) => b2.get(callbackUrl));
    await sleep(300);
    const times = [];
    const until = Date.now() + 1200;
    while (Date.now() < until) {
      const t0 = process.hrtime.bigint();
      const r = await b.request('GET', `${e.base}/app/fast`);
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      assert.equal(r.status, 200);
    }
    const done = await slow;
    await e.scim.clearFaults();
    // the slow login either finished or got the "being prepared" page once
    // its wait budget (wait_ms 2500) was spent; either way nobody else waited
    assert.ok(done.status === 200 || (done.status === 503 && /account_pending/.test(done.body)),
      `${done.status} ${done.body.slice(0, 200)}`);
    times.sort((x, y) => x - y);
    assert.ok(times.length >= 10, `served ${times.length} requests while the target was slow`);
    assert.ok(times[times.length - 1] < 500, `max latency ${times[times.length - 1]} ms`);
  });

  test('a client that leaves during provisioning is cleaned up: lease released, worker healthy', async () => {
    const pids = e.nginx.workerPids();
    const sessionsOf = async () => {
      const keys = await e.redisCmd('KEYS', 'pg:sess:*');
      const vals = await Promise.all(keys.map((k) => e.redisCmd('GET', k)));
      return vals.filter((v) => v && JSON.parse(v).attrs.username === 'dave').length;
    };
    const before1 = await sessionsOf();
    await e.scim.setFaults({ latency_ms: 3000 });
    const { callbackUrl, b } = await loginUntilCallback(e, 'dave', '/app/gone');
    const u = new URL(callbackUrl);
    const cookieHdr = b.cookiesFor(callbackUrl).map((c) => `${c.name}=${c.value}`).join('; ');
    await new Promise((resolve) => {
      const s = net.connect(e.port, '127.0.0.1', () => {
        s.write(`GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nCookie: ${cookieHdr}\r\n\r\n`);
        setTimeout(() => { s.destroy(); resolve(); }, 400); // gone while the target is slow
      });
    });
    await sleep(100);
    await e.scim.clearFaults();
    // With outbox delivery the abandoned login's operation goes on without
    // it: its worker's own consumer applies it at once, so its first target
    // call is the slow one (target timeout 3 s, then a retry after ~0.3 s).
    // The next login joins that operation: it may get the "being prepared"
    // page once, and succeeds as soon as the operation is done. Nothing of
    // the gone login holds it up (a stuck lease would last 4 x 3 s + 1 s).
    const t0 = Date.now();
    let again;
    for (;;) {
      again = await e.login('dave', '/app/gone');
      if (again.res.status === 200 || Date.now() - t0 > 12000) break;
      assert.match(again.res.body, /account_pending/, `${again.res.status}`);
      await sleep(200);
    }
    assert.equal(again.res.status, 200, again.res.body);
    assert.ok(Date.now() - t0 < 8000, `second login succeeded after ${Date.now() - t0} ms`);
    // the abandoned login never completes: only the second one made a session
    await sleep(3000);
    assert.equal(await sessionsOf(), before1 + 1);
    assert.deepEqual(e.nginx.workerPids(), pids, 'no worker died');
    assert.ok(!/\[alert\]|exited on signal/.test(e.nginx.errorLog()));
    assert.match(e.nginx.errorLog(), /client prematurely closed|499|closed/i);
  });

  test('the session cache answers without Redis, and a revocation evicts it at once', async () => {
    const { b } = await e.login('alice', '/app/c');
    const sealed = sessionCookie(b, e);
    assert.equal((await b.request('GET', `${e.base}/app/c`)).status, 200); // now cached
    const keys = await e.redisCmd('KEYS', 'pg:sess:*');
    // find this browser's session by its identity and newest creation
    const recs = await Promise.all(keys.map(async (k) => [k, JSON.parse(await e.redisCmd('GET', k))]));
    const [key] = recs.filter(([, v]) => v.attrs.username === 'alice').sort((x, y) => y[1].created - x[1].created)[0];
    const sid = key.slice('pg:sess:'.length);
    // deleted behind provgate's back: the cache still answers (it is used)
    await e.redisCmd('DEL', key);
    assert.equal((await b.request('GET', `${e.base}/app/c`)).status, 200);
    // a revocation on the feed evicts it: the next request needs a login
    await e.redisCmd('XADD', 'pg:revoked', '*', 'sid', sid);
    let r;
    for (let i = 0; i < 20; i++) {
      r = await b.request('GET', `${e.base}/app/c`);
      if (r.status === 302) break;
      await sleep(10);
    }
    assert.equal(r.status, 302, 'revoked session is not served from the cache');
    assert.ok(sealed);
  });

  test('revoking an identity evicts all its cached sessions', async () => {
    const one = await e.login('carol', '/app/k');
    const two = await e.login('carol', '/app/k');
    for (const x of [one, two]) assert.equal((await x.b.request('GET', `${e.base}/app/k`)).status, 200);
    const iid = echoed(one.res, 'x-provgate-identity')[0];
    const sids = await e.redisCmd('SMEMBERS', `pg:idsess:${iid}`);
    for (const sid of sids) await e.redisCmd('DEL', `pg:sess:${sid}`);
    await e.redisCmd('XADD', 'pg:revoked', '*', 'iid', iid);
    await sleep(50);
    for (const x of [one, two]) assert.equal((await x.b.request('GET', `${e.base}/app/k`)).status, 302);
  });

  test('logout on one worker is honoured by every worker at once', async () => {
    const e2 = await startEnv(undefined, { workers: 2, cfgOver: () => ({}) });
    try {
      const { b } = await e2.login('alice', '/app/w');
      // warm both workers' caches: many short connections spread over workers
      for (let i = 0; i < 30; i++) assert.equal((await b.request('GET', `${e2.base}/app/w`)).status, 200);
      const sid = sessionCookie(b, e2);
      // 302 to the provider's end_session_endpoint, or the local "signed
      // out" page when this worker could not reach the provider in time
      // (a loaded machine); the session ends either way
      const out = await b.request('GET', `${e2.base}/provgate/logout`);
      assert.ok([200, 302].includes(out.status), `logout: ${out.status}`);
      b.setCookie(`${e2.base}/`, 'provgate_session', sid);
      for (let i = 0; i < 30; i++) {
        const r = await b.request('GET', `${e2.base}/app/w`);
        assert.equal(r.status, 302, `request ${i} after logout was served`);
      }
      assert.deepEqual(e2.sanitizerReports(), []);
    } finally {
      await e2.nginx.stop();
    }
  });

  test('identity provider down: a clear 503 at sign-in; works again when it is back', async () => {
    // a fresh worker state is not needed: metadata is cached, but the
    // token endpoint is not, so the callback fails too
    const { b: b0, callbackUrl } = await loginUntilCallback(e, 'alice', '/app/idp');
    await e.op.stop();
    const r = await b0.get(callbackUrl);
    assert.equal(r.status, 503, r.body.slice(0, 300));
    assert.match(r.body, /id="reason">idp_unavailable</);
    assert.equal(sessionCookie(b0, e), undefined);
    await e.startOp();
    const ok = await e.login('alice', '/app/idp');
    assert.equal(ok.res.status, 200, ok.res.body);
  });

  test('a reload with a broken config is refused and the old one keeps serving', async () => {
    const { b } = await e.login('alice', '/app/reload');
    const good = fs.readFileSync(e.cfgFile, 'utf8');
    fs.writeFileSync(e.cfgFile, good.replace('"instance": "it"', '"instance": "it", "bogus": 1'));
    try {
      await assert.rejects(e.nginx.reload(), /bogus/);
      const r = await b.request('GET', `${e.base}/app/reload`);
      assert.equal(r.status, 200);
    } finally {
      fs.writeFileSync(e.cfgFile, good);
    }
    await e.nginx.reload();
    assert.equal((await b.request('GET', `${e.base}/app/reload`)).status, 200, 'sessions survive a reload (Redis)');
  });

  test('a reload while the old worker lingers: logins are provisioned at once', async () => {
    // A half-sent request keeps the old worker alive after the reload. Its
    // outbox read, blocked since before the reload, is first in line for
    // the next operation: the old worker must apply what it is handed
    // (not leave it pending for the lease to lapse) and fetch no more.
    const sock = net.connect(e.port, '127.0.0.1');
    await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
    sock.on('error', () => {});
    sock.write('GET /app/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n');
    try {
      await sleep(200);
      await e.nginx.reload();
      for (const user of ['alice', 'carol', 'alice']) {
        const { res } = await e.login(user, `/app/after-reload-${user}`);
        assert.equal(res.status, 200, `${user}: ${res.status} ${res.body.slice(0, 300)}`);
      }
    } finally {
      sock.destroy();
    }
  });

  test('Redis down: 503 and audited; back when Redis returns (AOF)', async () => {
    const { b, res: first } = await e.login('alice', '/app/r');
    assert.equal(first.status, 200, first.body.slice(0, 300));
    assert.ok(sessionCookie(b, e), 'signed in before Redis goes down');
    await stopRedis(e.redis);
    // the worker learns that Redis is gone from its revocation feed (and
    // stops trusting its session cache) within milliseconds
    let r;
    for (let i = 0; i < 20; i++) {
      r = await b.request('GET', `${e.base}/app/r`);
      if (r.status !== 200) break;
      await sleep(50);
    }
    assert.equal(r.status, 503);
    assert.match(r.body, /identity_store_unavailable/);
    assert.ok(e.audit().some((x) => x.reason === 'identity_store_unavailable'));
    await restartRedis(e.redis);
    let ok;
    for (let i = 0; i < 40; i++) {
      ok = await b.request('GET', `${e.base}/app/r`);
      if (ok.status === 200) break;
      await sleep(250);
    }
    assert.equal(ok.status, 200, 'the session survived the Redis restart');
  });
});
