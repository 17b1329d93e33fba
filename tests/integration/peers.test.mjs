// Self-test of the integration harness and the third-party peers, with no
// provgate code involved. Run from the repository root:
//   node --test tests/integration/peers.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';

import {
  freePort, startProcess, startRedis, stopRedis, restartRedis, redisCommand,
  startOidcOp, startRogueOp, startScim, startEcho, startNginx, nginxTest, nginxConf,
  Browser, oidcLogin, oidcLogout, parseForms, parseSetCookie, pkcePair, decodeJwt,
  verifyJwt, basicAuth, tempDir, cleanupAll, sleep, jsonRequest,
} from './lib/harness.mjs';
import { USERS, ALL_SCOPES, oidcClient } from './lib/fixtures.mjs';

after(cleanupAll);

// Alive = exists and is not a zombie (an orphaned grandchild may stay a
// zombie for a while when PID 1 of the container does not reap).
function isAlive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------

describe('harness basics', () => {
  it('freePort returns a bindable loopback port', async () => {
    const port = await freePort();
    assert.ok(port > 0 && port < 65536);
    const srv = net.createServer();
    await new Promise((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, '127.0.0.1', resolve);
    });
    await new Promise((r) => { srv.close(r); });
  });

  it('startProcess waits for readyRegex and stop() kills the whole process group', async () => {
    const p = await startProcess('/bin/sh', ['-c', 'sleep 30 & echo "child=$!"; echo ready; wait'], {
      readyRegex: /^ready$/m,
    });
    const childPid = Number(/child=(\d+)/.exec(p.output)[1]);
    assert.ok(isAlive(p.pid));
    assert.ok(isAlive(childPid));
    await p.stop();
    assert.equal(isAlive(p.pid), false);
    // The background grandchild was in the same group and is gone too
    // (give the kernel a moment to reap it).
    for (let i = 0; i < 50 && isAlive(childPid); i += 1) await sleep(20);
    assert.equal(isAlive(childPid), false);
  });

  it('startProcess rejects with the output when the process exits before ready', async () => {
    await assert.rejects(
      startProcess(process.execPath, ['-e', 'console.log("boom-output"); process.exit(3)'], { readyRegex: /never/ }),
      (e) => /exited \(code 3/.test(e.message) && /boom-output/.test(e.message),
    );
  });

  it('startProcess waitPort waits for a listening port', async () => {
    const port = await freePort();
    const p = await startProcess(process.execPath, ['-e',
      `setTimeout(() => require('net').createServer().listen(${port}, '127.0.0.1'), 150)`], { waitPort: port });
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    assert.equal(ok, true);
    await p.stop();
  });

  it('parseSetCookie reads Path, Max-Age and Expires', () => {
    const now = Date.UTC(2030, 0, 1);
    const a = parseSetCookie('sid=abc; Path=/app; Max-Age=60; HttpOnly; SameSite=Lax', now);
    assert.deepEqual([a.name, a.value, a.path, a.expires, a.httpOnly, a.sameSite], ['sid', 'abc', '/app', now + 60000, true, 'Lax']);
    const b = parseSetCookie('x=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT', now);
    assert.equal(b.expires, 0);
    assert.equal(parseSetCookie('novalue', now), null);
  });

  it('parseForms extracts action, method, hidden fields and decodes entities', () => {
    const html = `<html><form id="f1" method="post" action="/a/b?x=1&amp;y=2">
      <input type="hidden" name="xsrf" value="t&quot;ok">
      <input type="text" name="username" value="">
      <input type='password' name='password'>
      <input type="checkbox" name="remember" value="1">
      <button type="submit" name="go" value="yes">Go</button></form>
      <form action="http://other.test/z"><input name="q" value="v"></form></html>`;
    const forms = parseForms(html, 'http://127.0.0.1:1234/start/page');
    assert.equal(forms.length, 2);
    assert.equal(forms[0].id, 'f1');
    assert.equal(forms[0].method, 'POST');
    assert.equal(forms[0].action, 'http://127.0.0.1:1234/a/b?x=1&y=2');
    assert.deepEqual(forms[0].fields, { xsrf: 't"ok', username: '', password: '' });
    assert.equal(forms[1].method, 'GET');
    assert.deepEqual(forms[1].fields, { q: 'v' });
  });

  describe('Browser against a cookie-setting server', () => {
    let server;
    let base;
    before(async () => {
      server = http.createServer((req, res) => {
        const u = new URL(req.url, 'http://x');
        const send = (status, headers, body = '') => { res.writeHead(status, headers); res.end(body); };
        switch (u.pathname) {
          case '/set':
            send(200, { 'set-cookie': ['root=r1; Path=/', 'app=a1; Path=/app', 'dflt=d1', 'short=s; Max-Age=1'] });
            return;
          case '/del':
            send(200, { 'set-cookie': ['root=; Path=/; Max-Age=0', 'app=; Path=/app; Expires=Thu, 01 Jan 1970 00:00:00 GMT'] });
            return;
          case '/r1': send(302, { location: '/r2' }); return;
          case '/r2': send(303, { location: `${base}/echo?from=r2`, 'set-cookie': 'hop=1; Path=/' }); return;
          case '/loop': send(302, { location: '/loop' }); return;
          case '/p307': send(307, { location: '/echo' }); return;
          default: {
            let body = '';
            req.on('data', (c) => { body += c; });
            req.on('end', () => send(200, { 'content-type': 'application/json' }, JSON.stringify({
              method: req.method, url: req.url, cookie: req.headers.cookie || '', body,
            })));
          }
        }
      });
      await new Promise((r) => { server.listen(0, '127.0.0.1', r); });
      base = `http://127.0.0.1:${server.address().port}`;
    });
    after(() => new Promise((r) => { server.close(r); }));

    it('honours cookie Path (explicit and default) and deletion', async () => {
      const b = new Browser();
      await b.get(`${base}/set`);
      assert.equal((await b.get(`${base}/echo`)).json().cookie, 'root=r1; dflt=d1; short=s');
      const appCookies = (await b.get(`${base}/app/x`)).json().cookie.split('; ').sort();
      assert.deepEqual(appCookies, ['app=a1', 'dflt=d1', 'root=r1', 'short=s']);
      assert.equal((await b.get(`${base}/application`)).json().cookie.includes('app=a1'), false);
      await sleep(1100);
      assert.equal(b.getCookie(`${base}/`, 'short'), undefined);
      await b.get(`${base}/del`);
      assert.equal((await b.get(`${base}/app/x`)).json().cookie, 'dflt=d1');
    });

    it('scopes cookies per host:port by default', async () => {
      const b = new Browser();
      await b.get(`${base}/set`);
      const other = base.replace('127.0.0.1', 'localhost');
      assert.equal(b.getCookie(`${other}/`, 'root'), undefined);
      assert.equal(b.getCookie(`${base}/`, 'root'), 'r1');
    });

    it('follows redirects, turns 302/303 into GET, keeps POST on 307, stops at stopAt and at 20 hops', async () => {
      const b = new Browser();
      const r = await b.get(`${base}/r1`);
      assert.equal(r.status, 200);
      assert.deepEqual(r.redirects, [`${base}/r2`, `${base}/echo?from=r2`]);
      assert.equal(r.json().cookie, 'hop=1');
      const p = await b.post(`${base}/p307`, { a: '1' });
      assert.equal(p.json().method, 'POST');
      assert.equal(p.json().body, 'a=1');
      const s = await b.get(`${base}/r1`, { stopAt: `${base}/echo` });
      assert.equal(s.status, 303);
      assert.equal(s.location, `${base}/echo?from=r2`);
      await assert.rejects(b.get(`${base}/loop`), /too many redirects/);
    });
  });
});

// ---------------------------------------------------------------------------

describe('redis', () => {
  let redis;
  before(async () => {
    redis = await startRedis({ aof: true });
  });
  after(() => stopRedis(redis));

  it('answers PING over a raw RESP exchange', async () => {
    const reply = await new Promise((resolve, reject) => {
      const s = net.connect(redis.port, '127.0.0.1', () => s.write('*1\r\n$4\r\nPING\r\n'));
      let buf = '';
      s.on('data', (d) => {
        buf += d;
        if (buf.endsWith('\r\n')) { s.destroy(); resolve(buf); }
      });
      s.on('error', reject);
    });
    assert.equal(reply, '+PONG\r\n');
  });

  it('redisCommand parses replies and errors', async () => {
    assert.equal(await redisCommand(redis.port, 'SET', 'k1', 'v 1'), 'OK');
    assert.equal(await redisCommand(redis.port, 'GET', 'k1'), 'v 1');
    assert.equal(await redisCommand(redis.port, 'GET', 'missing'), null);
    assert.equal(await redisCommand(redis.port, 'RPUSH', 'l', 'a', 'b'), 2);
    assert.deepEqual(await redisCommand(redis.port, 'LRANGE', 'l', '0', '-1'), ['a', 'b']);
    await assert.rejects(redisCommand(redis.port, 'NOSUCHCMD'), /unknown command/i);
    assert.equal(await redisCommand(redis.port, 'CONFIG', 'GET', 'bind').then((r) => r[1]), '127.0.0.1');
  });

  it('keeps data across a clean restart and a SIGKILL crash (AOF)', async () => {
    await redis.command('SET', 'persist', 'yes');
    const oldPid = redis.proc.pid;
    await restartRedis(redis);
    assert.notEqual(redis.proc.pid, oldPid);
    assert.equal(await redis.command('GET', 'persist'), 'yes');
    await redis.command('SET', 'crash', 'survives');
    await restartRedis(redis, { signal: 'SIGKILL' });
    assert.equal(await redis.command('GET', 'crash'), 'survives');
    assert.ok(fs.existsSync(path.join(redis.dir, 'appendonlydir')));
  });

  it('is unreachable while stopped', async () => {
    await stopRedis(redis);
    await assert.rejects(redisCommand(redis.port, 'PING'), /ECONNREFUSED/);
    await restartRedis(redis);
    assert.equal(await redis.command('PING'), 'PONG');
  });
});

// ---------------------------------------------------------------------------

describe('oidc-op (real OpenID provider) with an inline test RP', () => {
  let op;
  let echo;
  let meta;
  let jwks;
  let client;
  let esClient;
  let callback;

  before(async () => {
    echo = await startEcho();
    callback = `${echo.url}/callback`;
    client = oidcClient({ redirectUris: [callback], postLogoutUris: [`${echo.url}/bye`] });
    esClient = oidcClient({
      clientId: 'es-client', clientSecret: 'es-client-secret-0123456789abcdefgh', redirectUris: [callback], idTokenAlg: 'ES256',
    });
    op = await startOidcOp({ clients: [client, esClient], users: USERS });
    meta = (await jsonRequest('GET', op.discoveryUrl)).json;
    jwks = (await jsonRequest('GET', meta.jwks_uri)).json;
  });
  after(async () => {
    await op?.stop();
    await echo?.stop();
  });

  function authUrl({
    c = client, scope = ALL_SCOPES, state, nonce, challenge, extra = {},
  }) {
    const u = new URL(meta.authorization_endpoint);
    const params = {
      response_type: 'code', client_id: c.client_id, redirect_uri: callback, scope, state, nonce, ...extra,
    };
    if (challenge) Object.assign(params, { code_challenge: challenge, code_challenge_method: 'S256' });
    for (const [k, v] of Object.entries(params)) if (v !== undefined) u.searchParams.set(k, v);
    return u.href;
  }

  async function redeem(code, verifier, c = client) {
    const r = await fetch(meta.token_endpoint, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: basicAuth(c.client_id, c.client_secret),
      },
      body: new URLSearchParams({
        grant_type: 'authorization_code', code, redirect_uri: callback, code_verifier: verifier,
      }),
    });
    return { status: r.status, json: await r.json() };
  }

  function callbackParams(res) {
    // The redirect chain ends at the echo upstream's /callback.
    assert.equal(res.status, 200, `expected echo callback, got ${res.status} at ${res.url}: ${res.body.slice(0, 500)}`);
    const u = new URL(res.url);
    assert.equal(u.origin, echo.url);
    assert.equal(u.pathname, '/callback');
    return Object.fromEntries(u.searchParams);
  }

  it('publishes discovery for code flow with S256 PKCE and end_session', () => {
    assert.equal(meta.issuer, op.issuer);
    assert.deepEqual(meta.response_types_supported, ['code']);
    assert.deepEqual(meta.code_challenge_methods_supported, ['S256']);
    assert.ok(meta.end_session_endpoint.startsWith(op.issuer));
    assert.ok(meta.scopes_supported.includes('groups'));
    assert.deepEqual(jwks.keys.map((k) => k.alg).sort(), ['ES256', 'RS256']);
    assert.ok(jwks.keys.every((k) => k.d === undefined), 'JWKS must not leak private keys');
    assert.ok(fs.existsSync(op.keysFile));
  });

  it('logs alice in through the HTML form and issues an ID token with all claims (PKCE S256, client_secret_basic)', async () => {
    const b = new Browser();
    const { verifier, challenge } = pkcePair();
    const state = crypto.randomBytes(8).toString('hex');
    const nonce = crypto.randomBytes(8).toString('hex');
    const res = await oidcLogin(b, authUrl({ state, nonce, challenge }), 'alice', USERS.alice.password);
    assert.match(res.loginPage.body, /<form id="login"/);
    const q = callbackParams(res);
    assert.equal(q.state, state);
    assert.equal(q.iss, op.issuer);
    assert.ok(q.code);

    const tok = await redeem(q.code, verifier);
    assert.equal(tok.status, 200, JSON.stringify(tok.json));
    assert.equal(tok.json.token_type, 'Bearer');
    const v = verifyJwt(tok.json.id_token, jwks);
    assert.equal(v.reason, 'ok');
    assert.equal(v.header.alg, 'RS256');
    const c = v.payload;
    assert.equal(c.iss, op.issuer);
    assert.equal(c.aud, client.client_id);
    assert.equal(c.nonce, nonce);
    assert.equal(c.sub, USERS.alice.claims.sub);
    assert.equal(c.email, 'alice@example.com');
    assert.equal(c.email_verified, true);
    assert.equal(c.preferred_username, 'alice');
    assert.equal(c.name, 'Alice Anders');
    assert.deepEqual(c.groups, ['staff', 'engineering']);
    assert.equal(c.employee_type, 'employee');
    assert.equal(c.department, 'eng');
    assert.equal(c.employee_number, '1001');
    assert.ok(c.exp > c.iat);

    // The code is single-use.
    const again = await redeem(q.code, verifier);
    assert.equal(again.status, 400);
    assert.equal(again.json.error, 'invalid_grant');

    // SSO: a second authorization in the same browser skips the form.
    const pk2 = pkcePair();
    const res2 = await oidcLogin(b, authUrl({ state: 's2', nonce: 'n2', challenge: pk2.challenge }), 'alice', 'unused');
    assert.equal(res2.loginPage, undefined);
    const q2 = callbackParams(res2);
    assert.equal(q2.state, 's2');
    const tok2 = await redeem(q2.code, pk2.verifier);
    assert.equal(decodeJwt(tok2.json.id_token).payload.nonce, 'n2');

    // RP-initiated logout back to the registered URI, then login is needed again.
    const end = new URL(meta.end_session_endpoint);
    end.searchParams.set('id_token_hint', tok2.json.id_token);
    end.searchParams.set('post_logout_redirect_uri', `${echo.url}/bye`);
    end.searchParams.set('state', 'bye-state');
    const out = await oidcLogout(b, end.href);
    assert.equal(out.status, 200);
    const bye = (await echo.log()).at(-1);
    assert.equal(new URL(bye.url, echo.url).pathname, '/bye');
    assert.equal(new URL(bye.url, echo.url).searchParams.get('state'), 'bye-state');
    assert.equal(new URL(out.url).pathname, '/bye');
    const pk3 = pkcePair();
    const relog = await b.get(authUrl({ state: 's3', nonce: 'n3', challenge: pk3.challenge }));
    assert.match(relog.body, /<form id="login"/);
  });

  it('rejects a wrong password with 401 and shows the form again', async () => {
    const b = new Browser();
    const { challenge } = pkcePair();
    const res = await oidcLogin(b, authUrl({ state: 's', nonce: 'n', challenge }), 'alice', 'wrong');
    assert.equal(res.status, 401);
    assert.match(res.body, /Invalid username or password/);
    assert.equal(parseForms(res.body, res.url).some((f) => f.id === 'login'), true);
  });

  it('requires PKCE and checks the verifier', async () => {
    const b = new Browser();
    const noPkce = await b.get(authUrl({ state: 'np', nonce: 'n' }));
    const q = callbackParams(noPkce);
    assert.equal(q.error, 'invalid_request');
    assert.match(q.error_description, /PKCE/);
    assert.equal(q.state, 'np');

    const { challenge } = pkcePair();
    const res = await oidcLogin(b, authUrl({ state: 'wv', nonce: 'n', challenge }), 'bob', USERS.bob.password);
    const tok = await redeem(callbackParams(res).code, pkcePair().verifier);
    assert.equal(tok.status, 400);
    assert.equal(tok.json.error, 'invalid_grant');
  });

  it('only releases the claims of the requested scopes, and signs ES256 for an ES256 client', async () => {
    const b = new Browser();
    const { verifier, challenge } = pkcePair();
    const res = await oidcLogin(b, authUrl({
      c: esClient, scope: 'openid email', state: 'es', nonce: 'n-es', challenge,
    }), 'carol', USERS.carol.password);
    const tok = await redeem(callbackParams(res).code, verifier, esClient);
    assert.equal(tok.status, 200, JSON.stringify(tok.json));
    const v = verifyJwt(tok.json.id_token, jwks);
    assert.equal(v.header.alg, 'ES256');
    assert.equal(v.reason, 'ok');
    assert.equal(v.payload.email, 'carol@example.com');
    assert.equal(v.payload.email_verified, false);
    assert.equal(v.payload.groups, undefined);
    assert.equal(v.payload.department, undefined);
    assert.equal(v.payload.aud, 'es-client');
  });

  it('rejects a wrong client secret at the token endpoint', async () => {
    const b = new Browser();
    const { verifier, challenge } = pkcePair();
    const res = await oidcLogin(b, authUrl({ state: 'cs', nonce: 'n', challenge }), 'alice', USERS.alice.password);
    const tok = await redeem(callbackParams(res).code, verifier, { ...client, client_secret: 'nope' });
    assert.equal(tok.status, 401);
    assert.equal(tok.json.error, 'invalid_client');
  });

  it('lets the user abort the login (access_denied back to the RP)', async () => {
    const b = new Browser();
    const { challenge } = pkcePair();
    const page = await b.get(authUrl({ state: 'ab', nonce: 'n', challenge }));
    const abort = parseForms(page.body, page.url).find((f) => f.id === 'abort');
    const res = await b.post(abort.action, abort.fields);
    const q = callbackParams(res);
    assert.equal(q.error, 'access_denied');
    assert.equal(q.state, 'ab');
  });
});

// ---------------------------------------------------------------------------

describe('scim-server (SCIMMY)', () => {
  let scim;
  const user = (userName, extra = {}) => ({
    schemas: ['urn:ietf:params:scim:schemas:core:2.0:User'],
    userName,
    active: true,
    emails: [{ value: `${userName}@example.com`, type: 'work', primary: true }],
    ...extra,
  });

  before(async () => {
    scim = await startScim({ token: 'tok-123' });
  });
  after(() => scim.stop());

  it('seeds the configured groups and requires the bearer token', async () => {
    const g = await scim.request('GET', '/Groups');
    assert.equal(g.status, 200);
    assert.deepEqual(g.json.Resources.map((r) => r.displayName).sort(), ['admins', 'engineering', 'staff']);
    const noAuth = await jsonRequest('GET', `${scim.baseUrl}/Users`);
    assert.equal(noAuth.status, 401);
    const badAuth = await jsonRequest('GET', `${scim.baseUrl}/Users`, undefined, { authorization: 'Bearer wrong' });
    assert.equal(badAuth.status, 401);
    assert.match(g.headers.get('content-type'), /application\/scim\+json/);
  });

  it('creates, looks up (userName/externalId/emails), patches, PUTs and deletes a user', async () => {
    const c = await scim.request('POST', '/Users', user('dave', {
      externalId: 'ext-dave',
      schemas: ['urn:ietf:params:scim:schemas:core:2.0:User', 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'],
      'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User': { employeeNumber: '42', department: 'eng' },
    }));
    assert.equal(c.status, 201, c.text);
    const { id } = c.json;
    assert.ok(id);
    assert.ok(c.json.meta.lastModified);
    assert.equal(c.headers.get('etag'), c.json.meta.version);

    for (const filter of ['userName eq "dave"', 'userName eq "DAVE"', 'externalId eq "ext-dave"', 'emails.value eq "dave@example.com"']) {
      const l = await scim.request('GET', `/Users?filter=${encodeURIComponent(filter)}`);
      assert.equal(l.status, 200);
      assert.equal(l.json.totalResults, 1, filter);
      assert.equal(l.json.Resources[0].id, id);
    }
    const none = await scim.request('GET', `/Users?filter=${encodeURIComponent('userName eq "nobody"')}`);
    assert.equal(none.json.totalResults, 0);

    const got = await scim.request('GET', `/Users/${id}`);
    assert.equal(got.status, 200);
    assert.equal(got.json['urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'].employeeNumber, '42');
    assert.equal(got.headers.get('etag'), got.json.meta.version);

    await sleep(5);
    const p = await scim.request('PATCH', `/Users/${id}`, {
      schemas: ['urn:ietf:params:scim:api:messages:2.0:PatchOp'],
      Operations: [
        { op: 'replace', path: 'displayName', value: 'Dave D' },
        { op: 'add', path: 'title', value: 'Engineer' },
        { op: 'remove', path: 'externalId' },
        { op: 'replace', value: { active: false } },
      ],
    });
    assert.equal(p.status, 200, p.text);
    assert.equal(p.json.displayName, 'Dave D');
    assert.equal(p.json.title, 'Engineer');
    assert.equal(p.json.active, false);
    assert.equal(p.json.externalId, undefined);
    assert.ok(Date.parse(p.json.meta.lastModified) > Date.parse(c.json.meta.lastModified));
    assert.notEqual(p.json.meta.version, c.json.meta.version);

    const stale = await scim.request('PUT', `/Users/${id}`, user('dave'), { 'if-match': c.json.meta.version });
    assert.equal(stale.status, 412);
    const put = await scim.request('PUT', `/Users/${id}`, user('dave', { displayName: 'Put Dave' }), { 'if-match': p.json.meta.version });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.json.displayName, 'Put Dave');
    assert.equal(put.json.title, undefined);

    const del = await scim.request('DELETE', `/Users/${id}`);
    assert.equal(del.status, 204);
    assert.equal((await scim.request('GET', `/Users/${id}`)).status, 404);
  });

  it('refuses a duplicate userName with 409 scimType uniqueness', async () => {
    assert.equal((await scim.request('POST', '/Users', user('erin'))).status, 201);
    const dup = await scim.request('POST', '/Users', user('Erin'));
    assert.equal(dup.status, 409);
    assert.equal(dup.json.scimType, 'uniqueness');
    assert.deepEqual(dup.json.schemas, ['urn:ietf:params:scim:api:messages:2.0:Error']);
  });

  it('adds and removes group members with PATCH; the user shows its groups', async () => {
    const u = (await scim.request('POST', '/Users', user('frank'))).json;
    const g = (await scim.request('GET', `/Groups?filter=${encodeURIComponent('displayName eq "engineering"')}`)).json.Resources[0];
    const add = await scim.request('PATCH', `/Groups/${g.id}`, {
      schemas: ['urn:ietf:params:scim:api:messages:2.0:PatchOp'],
      Operations: [{ op: 'add', path: 'members', value: [{ value: u.id }] }],
    });
    assert.equal(add.status, 200, add.text);
    assert.deepEqual(add.json.members.map((m) => m.value), [u.id]);
    const withGroups = (await scim.request('GET', `/Users/${u.id}`)).json;
    assert.deepEqual(withGroups.groups.map((x) => x.display), ['engineering']);

    const bad = await scim.request('PATCH', `/Groups/${g.id}`, {
      schemas: ['urn:ietf:params:scim:api:messages:2.0:PatchOp'],
      Operations: [{ op: 'add', path: 'members', value: [{ value: 'no-such-user' }] }],
    });
    assert.equal(bad.status, 400);

    const rm = await scim.request('PATCH', `/Groups/${g.id}`, {
      schemas: ['urn:ietf:params:scim:api:messages:2.0:PatchOp'],
      Operations: [{ op: 'remove', path: `members[value eq "${u.id}"]` }],
    });
    assert.equal(rm.status, 200, rm.text);
    assert.deepEqual(rm.json.members, []);
    assert.equal((await scim.request('GET', `/Users/${u.id}`)).json.groups, undefined);
  });

  it('latency faults are asynchronous: a parallel request is not delayed', async () => {
    await scim.setFaults({ latency_ms: 1200, latency_paths: '/Users' });
    try {
      const t0 = Date.now();
      let slowDone = 0;
      const slow = scim.request('GET', '/Users').then((r) => { slowDone = Date.now() - t0; return r; });
      await sleep(50);
      const fast = await scim.request('GET', '/Groups');
      const fastDone = Date.now() - t0;
      assert.equal(fast.status, 200);
      assert.equal(slowDone, 0, 'slow request finished before the fast one');
      assert.ok(fastDone < 900, `parallel request took ${fastDone} ms (would be >= 1200 if serialised)`);
      assert.equal((await slow).status, 200);
      assert.ok(slowDone >= 1180, `delayed request took only ${slowDone} ms`);
    } finally {
      await scim.clearFaults();
    }
  });

  it('fail_count 2 gives two injected 500s then success; fail_method filters', async () => {
    await scim.setFaults({ fail_status: 500, fail_count: 2, fail_method: 'POST' });
    const get = await scim.request('GET', '/Users');
    assert.equal(get.status, 200, 'GET is not affected by a POST-only fault');
    const r1 = await scim.request('POST', '/Users', user('gina'));
    const r2 = await scim.request('POST', '/Users', user('gina'));
    const r3 = await scim.request('POST', '/Users', user('gina'));
    assert.deepEqual([r1.status, r2.status, r3.status], [500, 500, 201]);
    assert.equal(r1.json.schemas[0], 'urn:ietf:params:scim:api:messages:2.0:Error');
  });

  it('injects 429 with Retry-After, 409 uniqueness and connection resets', async () => {
    await scim.setFaults({ fail_status: 429, retry_after: 7 });
    const r = await scim.request('GET', '/Users');
    assert.equal(r.status, 429);
    assert.equal(r.headers.get('retry-after'), '7');
    assert.equal((await scim.request('GET', '/Users')).status, 200, 'fail_count defaults to 1');

    await scim.setFaults({ fail_status: 409, fail_count: 1 });
    const c = await scim.request('POST', '/Users', user('hank'));
    assert.equal(c.status, 409);
    assert.equal(c.json.scimType, 'uniqueness');

    await scim.setFaults({ reset: true, fail_count: 1, fail_paths: '/Groups' });
    await assert.rejects(scim.request('GET', '/Groups'), /fetch failed/);
    assert.equal((await scim.request('GET', '/Groups')).status, 200);
    const log = (await scim.state()).requests;
    assert.ok(log.some((e) => e.path === '/scim/v2/Groups' && e.reset === true && e.status === 0));
  });

  it('records requests, clears state, and persists to the data file across restarts', async () => {
    await scim.resetLog();
    await scim.request('GET', `/Users?filter=${encodeURIComponent('userName eq "frank"')}`);
    const st = await scim.state();
    assert.equal(st.requests.length, 1);
    assert.deepEqual(
      { method: st.requests[0].method, path: st.requests[0].path, status: st.requests[0].status },
      { method: 'GET', path: '/scim/v2/Users', status: 200 },
    );
    assert.equal(typeof st.requests[0].ts, 'number');
    assert.ok(st.users.some((u) => u.userName === 'frank'));

    const onDisk = JSON.parse(fs.readFileSync(scim.dataFile, 'utf8'));
    assert.ok(Object.values(onDisk.users).some((u) => u.userName === 'frank'));
    await scim.restart();
    const after = await scim.request('GET', `/Users?filter=${encodeURIComponent('userName eq "frank"')}`);
    assert.equal(after.json.totalResults, 1);
    const groupsAfter = (await scim.state()).groups;
    assert.equal(groupsAfter.length, 3, 'seeded groups are not duplicated on restart');

    await scim.clear();
    const cleared = await scim.state();
    assert.equal(cleared.users.length, 0);
    assert.ok(cleared.groups.every((g) => g.members.length === 0));
    assert.equal(cleared.groups.length, 3);
  });
});

// ---------------------------------------------------------------------------

describe('rogue-op (fault-injection OP)', () => {
  let rogue;
  const redirectUri = 'http://127.0.0.1:9/cb';

  before(async () => {
    rogue = await startRogueOp({ clientId: 'rp-x', clientSecret: 'rp-x-secret' });
  });
  after(() => rogue.stop());

  const jwksNow = async () => (await jsonRequest('GET', `${rogue.issuer}/jwks`)).json;

  async function getToken(mode, extra = {}) {
    if (mode) await rogue.setMode(mode, extra);
    const b = new Browser();
    const { verifier, challenge } = pkcePair();
    const nonce = crypto.randomBytes(6).toString('hex');
    const u = new URL(`${rogue.issuer}/authorize`);
    for (const [k, v] of Object.entries({
      response_type: 'code', client_id: 'rp-x', redirect_uri: redirectUri, state: 'st', nonce, scope: 'openid', code_challenge: challenge, code_challenge_method: 'S256',
    })) u.searchParams.set(k, v);
    const r = await b.get(u.href, { stopAt: redirectUri });
    assert.equal(r.status, 302);
    const q = new URL(r.location).searchParams;
    const tr = await fetch(`${rogue.issuer}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basicAuth('rp-x', 'rp-x-secret') },
      body: new URLSearchParams({
        grant_type: 'authorization_code', code: q.get('code'), redirect_uri: redirectUri, code_verifier: verifier,
      }),
    });
    const body = await tr.json();
    return {
      status: tr.status, body, nonce, q, token: body.id_token,
    };
  }

  it('serves discovery and counts JWKS and token requests', async () => {
    await rogue.reset();
    const d = (await jsonRequest('GET', rogue.discoveryUrl)).json;
    assert.equal(d.issuer, rogue.issuer);
    assert.deepEqual(d.code_challenge_methods_supported, ['S256']);
    await jwksNow();
    await jwksNow();
    await getToken('good');
    const s = await rogue.stats();
    assert.equal(s.jwks_fetches, 2);
    assert.equal(s.token_requests, 1);
    assert.equal(s.discovery_fetches, 1);
    assert.equal(s.last_token_request.auth_method, 'client_secret_basic');
  });

  it('good: valid RS256 token with the nonce of its own authorization request', async () => {
    // Two authorizations in flight; each code remembers its own nonce.
    const a = await getToken('good');
    const b = await getToken(null);
    const jwks = await jwksNow();
    for (const t of [a, b]) {
      assert.equal(t.status, 200);
      const v = verifyJwt(t.token, jwks);
      assert.equal(v.reason, 'ok');
      assert.equal(v.payload.iss, rogue.issuer);
      assert.equal(v.payload.aud, 'rp-x');
      assert.equal(v.payload.nonce, t.nonce);
      assert.ok(v.payload.sub);
      assert.ok(v.payload.exp > Date.now() / 1000);
    }
    assert.notEqual(a.nonce, b.nonce);
    assert.equal(a.q.get('state'), 'st');
    assert.equal(a.q.get('iss'), rogue.issuer);
  });

  it('checks PKCE, client secret and single-use codes', async () => {
    await rogue.setMode('good');
    const b = new Browser();
    const u = new URL(`${rogue.issuer}/authorize`);
    const { challenge } = pkcePair();
    for (const [k, v] of Object.entries({
      response_type: 'code', client_id: 'rp-x', redirect_uri: redirectUri, state: 's', nonce: 'n', code_challenge: challenge, code_challenge_method: 'S256',
    })) u.searchParams.set(k, v);
    const code = new URL((await b.get(u.href, { stopAt: redirectUri })).location).searchParams.get('code');
    const post = (secret, verifier) => fetch(`${rogue.issuer}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basicAuth('rp-x', secret) },
      body: new URLSearchParams({
        grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier,
      }),
    });
    assert.equal((await post('wrong', 'x')).status, 401);
    const r = await post('rp-x-secret', pkcePair().verifier);
    assert.equal(r.status, 400);
    assert.equal((await r.json()).error, 'invalid_grant');
  });

  it('bad_iss / bad_aud / bad_nonce / no_nonce / no_sub / expired / future_iat / multi_aud_no_azp', async () => {
    const jwks = await jwksNow();
    const now = Math.floor(Date.now() / 1000);
    const check = async (mode, fn) => {
      const t = await getToken(mode);
      assert.equal(t.status, 200, mode);
      const v = verifyJwt(t.token, jwks);
      assert.equal(v.reason, 'ok', `${mode} is validly signed`);
      fn(v.payload, t);
    };
    await check('bad_iss', (p) => assert.notEqual(p.iss, rogue.issuer));
    await check('bad_aud', (p) => { assert.notEqual(p.aud, 'rp-x'); assert.ok(!([].concat(p.aud)).includes('rp-x')); });
    await check('bad_nonce', (p, t) => { assert.ok(p.nonce); assert.notEqual(p.nonce, t.nonce); });
    await check('no_nonce', (p) => assert.equal('nonce' in p, false));
    await check('no_sub', (p) => assert.equal('sub' in p, false));
    await check('expired', (p) => assert.ok(p.exp < now - 60));
    await check('future_iat', (p) => assert.ok(p.iat > now + 600));
    await check('multi_aud_no_azp', (p) => {
      assert.ok(Array.isArray(p.aud) && p.aud.length === 2 && p.aud.includes('rp-x'));
      assert.equal('azp' in p, false);
    });
  });

  it('alg_none, hs256_pubkey, unknown_kid, wrong_key', async () => {
    const jwks = await jwksNow();
    const none = await getToken('alg_none');
    const dn = decodeJwt(none.token);
    assert.equal(dn.header.alg, 'none');
    assert.equal(dn.signature, '');
    assert.equal(dn.payload.nonce, none.nonce);
    assert.equal(verifyJwt(none.token, jwks).reason, 'alg_not_allowed');

    const hs = await getToken('hs256_pubkey');
    const dh = decodeJwt(hs.token);
    assert.equal(dh.header.alg, 'HS256');
    const rsaJwk = jwks.keys.find((k) => k.kid === dh.header.kid);
    assert.ok(rsaJwk, 'HS256 token names the published RSA kid');
    const pem = crypto.createPublicKey({ key: rsaJwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    const [h, p] = hs.token.split('.');
    const mac = crypto.createHmac('sha256', pem).update(`${h}.${p}`).digest('base64url');
    assert.equal(mac, dh.signature, 'HMAC keyed with the public key PEM');

    const hsJwk = await getToken('hs256_pubkey', { secret_form: 'jwk' });
    const [h2, p2, s2] = hsJwk.token.split('.');
    assert.equal(crypto.createHmac('sha256', JSON.stringify(rsaJwk)).update(`${h2}.${p2}`).digest('base64url'), s2);

    const uk = await getToken('unknown_kid');
    assert.equal(verifyJwt(uk.token, jwks).reason, 'unknown_kid');
    assert.equal(verifyJwt(uk.token, await jwksNow()).reason, 'unknown_kid', 'never published');

    const wk = await getToken('wrong_key');
    const vw = verifyJwt(wk.token, jwks);
    assert.equal(vw.reason, 'bad_signature');
    assert.ok(jwks.keys.some((k) => k.kid === vw.header.kid));
  });

  it('rotate: the new kid appears in the JWKS only after rotation', async () => {
    await rogue.reset();
    const before = await jwksNow();
    const r = await rogue.setMode('rotate');
    assert.ok(!before.keys.some((k) => k.kid === r.kid));
    const t = await getToken(null);
    const dt = decodeJwt(t.token);
    assert.equal(dt.header.kid, r.kid);
    assert.equal(verifyJwt(t.token, before).reason, 'unknown_kid');
    const afterJwks = await jwksNow();
    assert.equal(verifyJwt(t.token, afterJwks).reason, 'ok');
    assert.equal((await rogue.stats()).jwks_fetches, 2);
    assert.equal(afterJwks.keys.length, before.keys.length + 1, 'old key kept for overlap');
  });

  it('token_error / authorize_error / good_es256 / claim overrides', async () => {
    const te = await getToken('token_error');
    assert.equal(te.status, 400);
    assert.equal(te.body.error, 'invalid_grant');

    await rogue.setMode('authorize_error');
    const b = new Browser();
    const r = await b.get(`${rogue.issuer}/authorize?response_type=code&client_id=rp-x&redirect_uri=${encodeURIComponent(redirectUri)}&state=zz`, { stopAt: redirectUri });
    const q = new URL(r.location).searchParams;
    assert.equal(q.get('error'), 'access_denied');
    assert.equal(q.get('state'), 'zz');

    const es = await getToken('good_es256');
    const v = verifyJwt(es.token, await jwksNow());
    assert.equal(v.header.alg, 'ES256');
    assert.equal(v.reason, 'ok');

    const cl = await getToken('good', { claims: { email: 'x@example.org', groups: ['admins'], name: null } });
    const pc = decodeJwt(cl.token).payload;
    assert.equal(pc.email, 'x@example.org');
    assert.deepEqual(pc.groups, ['admins']);
    assert.equal('name' in pc, false);
    const last = await rogue.lastToken();
    assert.equal(last.id_token, cl.token);
  });

  it('bad_signature / no_iat / multi_aud_azp / token_500 / bad_iss_param / discovery override', async () => {
    const jwks = await jwksNow();
    const bs = await getToken('bad_signature');
    const vb = verifyJwt(bs.token, jwks);
    assert.equal(vb.reason, 'bad_signature');
    assert.ok(jwks.keys.some((k) => k.kid === vb.header.kid));

    const ni = await getToken('no_iat');
    assert.equal(verifyJwt(ni.token, jwks).reason, 'ok');
    assert.equal('iat' in decodeJwt(ni.token).payload, false);

    const ma = decodeJwt((await getToken('multi_aud_azp')).token).payload;
    assert.equal(ma.azp, 'rp-x');
    assert.equal(ma.aud.length, 2);

    assert.equal((await getToken('token_500')).status, 500);

    const bi = await getToken('bad_iss_param');
    assert.notEqual(bi.q.get('iss'), rogue.issuer);
    assert.equal(bi.status, 200);

    await rogue.setMode('good', { discovery: { issuer: 'http://127.0.0.1:1/evil' } });
    assert.equal((await jsonRequest('GET', rogue.discoveryUrl)).json.issuer, 'http://127.0.0.1:1/evil');
    await rogue.setMode('good');
    assert.equal((await jsonRequest('GET', rogue.discoveryUrl)).json.issuer, rogue.issuer);
  });

  it('rejects unknown modes', async () => {
    await assert.rejects(rogue.setMode('bogus'), /400/);
  });
});

// ---------------------------------------------------------------------------

describe('echo-upstream', () => {
  let echo;
  before(async () => { echo = await startEcho(); });
  after(() => echo.stop());

  it('returns method, url and raw header names as received', async () => {
    const r = await new Promise((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: echo.port,
        method: 'POST',
        path: '/some/path?q=1',
        headers: {
          'X-Provgate-User': 'alice', 'x-provgate-groups': 'staff,eng', 'X-Dup': ['a', 'b'], 'Content-Type': 'text/plain',
        },
      }, (res) => {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(body) }));
      });
      req.on('error', reject);
      req.end('hello');
    });
    assert.equal(r.status, 200);
    assert.equal(r.json.method, 'POST');
    assert.equal(r.json.url, '/some/path?q=1');
    assert.equal(r.json.headers['X-Provgate-User'], 'alice');
    assert.equal(r.json.headers['x-provgate-groups'], 'staff,eng');
    assert.deepEqual(r.json.headers['X-Dup'], ['a', 'b']);
    assert.equal(r.json.body, 'hello');
    const log = await echo.log();
    assert.equal(log.at(-1).url, '/some/path?q=1');
  });

  it('Browser header overrides are case-insensitive (one Accept header sent)', async () => {
    const b = new Browser({ headers: { Accept: 'application/json' } });
    const r = await b.request('GET', `${echo.url}/h`, { headers: { 'X-Test': '1', 'user-agent': null } });
    const j = r.json();
    const names = j.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    assert.equal(names.filter((n) => n === 'accept').length, 1);
    assert.equal(j.headers.Accept, 'application/json');
    assert.equal(j.headers['X-Test'], '1');
    assert.equal(names.includes('user-agent'), false, 'null removes a default header');
  });

  it('renders the X-Provgate-* headers as HTML for browsers', async () => {
    const b = new Browser();
    const r = await b.request('GET', `${echo.url}/app`, {
      headers: { accept: 'text/html', 'X-Provgate-Email': 'a@b.c', 'X-Other': 'hidden' },
    });
    assert.match(r.headers['content-type'], /text\/html/);
    assert.match(r.body, /<table id="provgate-headers">/);
    assert.match(r.body, /X-Provgate-Email<\/th><td>a@b\.c/);
    assert.doesNotMatch(r.body, /X-Other/);
  });
});

// ---------------------------------------------------------------------------

describe('nginx harness (stock nginx, no provgate module)', () => {
  let echo;
  let prefix;
  let port;
  const conf = (marker) => nginxConf({
    prefix,
    http: `
    upstream echo { server 127.0.0.1:${echo.port}; }
    server {
        listen 127.0.0.1:${port};
        location / {
            proxy_set_header X-Provgate-Marker ${marker};
            proxy_pass http://echo;
        }
    }`,
  });

  before(async () => {
    echo = await startEcho();
    prefix = tempDir('pg-nginx-');
    port = await freePort();
  });
  after(() => echo.stop());

  it('nginxTest accepts a valid config and reports an invalid one', () => {
    const ok = nginxTest(conf('one'), { prefix });
    assert.equal(ok.code, 0, ok.output);
    assert.match(ok.output, /test is successful/);
    const bad = nginxTest(`${conf('one')}\nno_such_directive on;\n`, { prefix });
    assert.notEqual(bad.code, 0);
    assert.match(bad.output, /unknown directive "no_such_directive"/);
  });

  it('starts, proxies, reloads, survives a bad reload, and stops', async () => {
    const ngx = await startNginx({
      conf: conf('one'), prefix, workers: 2, waitPort: port,
    });
    try {
      assert.equal(ngx.workerPids().length, 2);
      const get = async () => (await new Browser().request('GET', `http://127.0.0.1:${port}/x`, { headers: { accept: 'application/json' } })).json();
      assert.equal((await get()).headers['X-Provgate-Marker'], 'one');

      fs.writeFileSync(ngx.confFile, conf('two'));
      const oldWorkers = ngx.workerPids();
      await ngx.reload();
      assert.ok(ngx.workerPids().some((p) => !oldWorkers.includes(p)));
      let marker;
      for (let i = 0; i < 40; i += 1) {
        marker = (await get()).headers['X-Provgate-Marker'];
        if (marker === 'two') break;
        await sleep(25);
      }
      assert.equal(marker, 'two');

      fs.writeFileSync(ngx.confFile, `${conf('three')}\nbroken_directive;\n`);
      await assert.rejects(ngx.reload(), /reload failed/);
      assert.equal((await get()).headers['X-Provgate-Marker'], 'two', 'old config still serves');
      assert.match(ngx.errorLog(), /unknown directive "broken_directive"/);
    } finally {
      const workers = ngx.workerPids();
      await ngx.stop();
      assert.equal(ngx.proc.running, false);
      for (let i = 0; i < 50 && workers.some(isAlive); i += 1) await sleep(20);
      assert.equal(workers.some(isAlive), false, 'workers are gone');
    }
  });
});
