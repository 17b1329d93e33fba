// SAML 2.0 Single Logout through the gateway against the real samlify IdP
// peer: SP-initiated (provgate_logout -> IdP -> provgate_saml_slo) and
// IdP-initiated (signed LogoutRequest -> sessions ended -> signed
// LogoutResponse), with the peer's fault modes and replays.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import {
  cleanupAll, parseForms, stopRedis, restartRedis, sleep, jsonRequest, nginxTest, tempDir,
} from './lib/harness.mjs';
import { sanitizerReports, nginxEnv } from './gw/env.mjs';
import { startSamlEnv, toAcs, idpMetadata, FIX } from './gw/saml-env.mjs';
import { peerRequire } from './lib/saml.mjs';

const COOKIE = 'provgate_session';
const reasonOf = (body) => (/id="reason">([^<]+)</.exec(body) || [])[1];

describe('SAML Single Logout through the gateway', () => {
  let e;
  let idp;
  let idpPort;
  let dir;
  const idpAdmin = async (method, p, body) => {
    const r = await jsonRequest(method, `${idp.url}${p}`, body);
    assert.ok(r.status < 400, `${p}: ${r.status} ${r.text}`);
    return r.json;
  };
  const setSloMode = (mode) => idpAdmin('POST', '/_admin/slo-mode', { mode });

  /* A signed-in SAML browser: {b, sid cookie value, session index}. */
  async function signIn() {
    const { b, acs } = await toAcs(e);
    const r = await b.request('POST', acs.action, { form: acs.fields });
    assert.equal(r.status, 302, r.body.slice(0, 300));
    const ok = await b.request('GET', `${e.base}/sapp/hello`);
    assert.equal(ok.status, 200);
    const slo = await idpAdmin('GET', '/_admin/slo');
    const last = slo.sessions[slo.sessions.length - 1];
    return { b, cookie: b.getCookie(`${e.base}/sapp/`, COOKIE), sessionIndex: last.session_index };
  }

  /* The old cookie is no longer a session: the browser is sent to sign in. */
  async function assertSignedOut(cookie) {
    const fresh = e.browser();
    fresh.setCookie(e.base, COOKIE, cookie);
    const r = await fresh.request('GET', `${e.base}/sapp/hello`);
    assert.equal(r.status, 302, `expected a new sign-in, got ${r.status}`);
    assert.equal(new URL(r.location).origin, idp.url);
    // and the IdP asks for the password again (no IdP session is reused)
    const page = await fresh.request('GET', r.location);
    assert.equal(page.status, 200);
    assert.ok(parseForms(page.body, page.url).some((f) => f.inputs.some((i) => i.type === 'password')));
  }

  async function assertStillSignedIn(cookie) {
    const fresh = e.browser();
    fresh.setCookie(e.base, COOKIE, cookie);
    const r = await fresh.request('GET', `${e.base}/sapp/hello`);
    assert.equal(r.status, 200, 'the session is still valid');
  }

  /* nginx -t of the running nginx.conf with another provgate config (next
   * to the real one, so its relative file names resolve the same). */
  let nth = 0;
  function nginxTestWith(cfg) {
    nth += 1;
    const cfgFile = path.join(e.cfgDir, `provgate-t${nth}.json`);
    fs.writeFileSync(cfgFile, JSON.stringify(cfg));
    const prefix = path.join(tempDir('pg-slo-t-'), 'nginx');
    return nginxTest(e.conf.split(e.cfgFile).join(cfgFile), { prefix, env: nginxEnv(prefix) });
  }

  before(async () => {
    ({ e, idp, idpPort, dir } = await startSamlEnv({ slo: true }));
  });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  test('our metadata publishes the SLO endpoint the IdP uses', async () => {
    const slo = await idpAdmin('GET', '/_admin/slo');
    assert.equal(slo.sp_slo_url, `${e.base}/saml/slo`);
  });

  test('a SAML login stores NameID and SessionIndex with the session and indexes the NameID', async () => {
    const { b, sessionIndex } = await signIn();
    assert.ok(b);
    const keys = await e.redisCmd('KEYS', 'pg:saml:nameid:corp:*');
    assert.equal(keys.length, 1, 'one index key for one NameID');
    assert.doesNotMatch(keys[0], /sam@example\.com/, 'the NameID is hashed in the key');
    const sids = await e.redisCmd('SMEMBERS', keys[0]);
    assert.ok(sids.length >= 1);
    const ttl = await e.redisCmd('TTL', keys[0]);
    assert.ok(ttl > 0, 'the index expires with the sessions');
    const recs = await Promise.all(sids.map((s) => e.redisCmd('GET', `pg:sess:${s}`)));
    const mine = recs.filter(Boolean).map((x) => JSON.parse(x)).find((s) => s.saml.session_index === sessionIndex);
    assert.ok(mine, 'the session record has the SAML subject');
    assert.equal(mine.saml.name_id, 'sam@example.com');
    assert.ok(mine.saml.format);
  });

  test('SP-initiated: the session ends here and at the IdP; the response is single use', async () => {
    const { b, cookie, sessionIndex } = await signIn();
    const r = await b.request('GET', `${e.base}/saml/logout`);
    assert.equal(r.status, 302, r.body.slice(0, 300));
    const to = new URL(r.location);
    assert.equal(`${to.origin}${to.pathname}`, `${idp.url}/slo`);
    assert.ok(to.searchParams.get('SAMLRequest') && to.searchParams.get('Signature'));
    assert.equal(b.getCookie(`${e.base}/sapp/`, COOKIE), undefined, 'cookie cleared at once');
    assert.ok(e.audit().some((x) => x.type === 'session.end' && x.reason === 'logout'));
    const pending = await e.redisCmd('KEYS', 'pg:saml:logout:*');
    assert.equal(pending.length, 1);
    const ttl = await e.redisCmd('TTL', pending[0]);
    assert.ok(ttl > 0 && ttl <= 300);

    // the IdP verifies our signed LogoutRequest and ends its session
    const atIdp = await b.request('GET', r.location);
    assert.equal(atIdp.status, 302, atIdp.body.slice(0, 300));
    const slo = await idpAdmin('GET', '/_admin/slo');
    assert.equal(slo.last_logout.matched, true, 'the IdP found the session of our NameID/SessionIndex');
    assert.ok(!slo.sessions.some((s) => s.session_index === sessionIndex), 'IdP session ended');
    assert.equal(new URL(atIdp.location).pathname, '/saml/slo');

    const done = await b.request('GET', atIdp.location);
    assert.equal(done.status, 200, done.body.slice(0, 300));
    assert.match(done.body, /Signed out/);
    assert.deepEqual(await e.redisCmd('KEYS', 'pg:saml:logout:*'), [], 'the pending request is consumed');
    assert.ok(e.audit().some((x) => x.type === 'logout.success' && x.saml_slo === 'sp_initiated'));
    await assertSignedOut(cookie);

    // the same LogoutResponse again: no pending request any more
    const again = await b.request('GET', atIdp.location);
    assert.equal(again.status, 400);
    assert.equal(reasonOf(again.body), 'unknown_request');
    assert.ok(e.audit().some((x) => x.type === 'logout.failure' && x.reason === 'unknown_request'));
    assert.ok(!fs.readFileSync(e.auditFile, 'utf8').includes(new URL(atIdp.location).searchParams.get('SAMLResponse').slice(0, 40)),
      'no raw message in the audit');
  });

  test('a LogoutResponse whose InResponseTo we never sent is refused', async () => {
    const { b } = await signIn();
    const r = await b.request('GET', `${e.base}/saml/logout`);
    const atIdp = await b.request('GET', r.location);
    assert.equal(atIdp.status, 302);
    // forget the pending request: the (authentic) response is now unknown
    const pending = await e.redisCmd('KEYS', 'pg:saml:logout:*');
    assert.equal(pending.length, 1);
    await e.redisCmd('DEL', pending[0]);
    const done = await b.request('GET', atIdp.location);
    assert.equal(done.status, 400);
    assert.equal(reasonOf(done.body), 'unknown_request');
  });

  for (const [mode, reason] of [['wrong_destination', 'bad_destination'], ['wrong_issuer', 'bad_issuer'],
    ['expired', 'expired'], ['unsigned', 'unsigned']]) {
    test(`SP-initiated: a LogoutResponse with fault "${mode}" is refused (${reason})`, async () => {
      await setSloMode(mode);
      try {
        const { b, cookie } = await signIn();
        const r = await b.request('GET', `${e.base}/saml/logout`);
        const atIdp = await b.request('GET', r.location);
        assert.equal(atIdp.status, 302, atIdp.body.slice(0, 200));
        const done = await b.request('GET', atIdp.location);
        assert.equal(done.status, 400, done.body.slice(0, 300));
        assert.equal(reasonOf(done.body), reason);
        assert.ok(e.audit().some((x) => x.type === 'logout.failure' && x.reason === reason
          && x.saml_slo === 'sp_initiated'));
        // the local session was ended before the IdP was asked
        await assertSignedOut(cookie);
        // the pending request was not consumed by the refused response
        assert.equal((await e.redisCmd('KEYS', 'pg:saml:logout:*')).length, 1);
        await e.redisCmd('DEL', ...(await e.redisCmd('KEYS', 'pg:saml:logout:*')));
      } finally {
        await setSloMode('good');
      }
    });
  }

  test('SP-initiated: an IdP failure status consumes the request and says so', async () => {
    await setSloMode('status_fail');
    try {
      const { b } = await signIn();
      const r = await b.request('GET', `${e.base}/saml/logout`);
      const atIdp = await b.request('GET', r.location);
      const done = await b.request('GET', atIdp.location);
      assert.equal(done.status, 200, done.body.slice(0, 300));
      assert.match(done.body, /not every sign-out succeeded/);
      assert.ok(e.audit().some((x) => x.type === 'logout.failure' && x.reason === 'status_not_success'));
      assert.deepEqual(await e.redisCmd('KEYS', 'pg:saml:logout:*'), []);
    } finally {
      await setSloMode('good');
    }
  });

  test('IdP-initiated: a signed LogoutRequest ends the session everywhere and gets a signed answer', async () => {
    const { cookie, sessionIndex } = await signIn();
    const before = (await e.redisCmd('XLEN', 'pg:revoked')) || 0;
    const lr = await idpAdmin('GET', `/_admin/logout-request?session_index=${encodeURIComponent(sessionIndex)}&relay_state=rs-1`);
    assert.equal(lr.signed, true);
    // a fresh browser: the IdP's request carries no cookie of ours
    const nb = e.browser();
    const r = await nb.request('GET', lr.url);
    assert.equal(r.status, 302, r.body.slice(0, 300));
    const back = new URL(r.location);
    assert.equal(`${back.origin}${back.pathname}`, `${idp.url}/slo`);
    assert.equal(back.searchParams.get('RelayState'), 'rs-1');
    const atIdp = await nb.request('GET', r.location);
    assert.equal(atIdp.status, 200, `the IdP accepts our LogoutResponse: ${atIdp.body.slice(0, 300)}`);
    assert.match(atIdp.body, /id="signed-out"/);
    const slo = await idpAdmin('GET', '/_admin/slo');
    assert.equal(slo.last_logout_response.inResponseTo, lr.id);

    await assertSignedOut(cookie);
    const ends = e.audit().filter((x) => x.type === 'session.end' && x.reason === 'saml_slo');
    assert.ok(ends.length >= 1);
    assert.ok(ends.every((x) => x.identity && x.idp === 'corp'));
    assert.ok((await e.redisCmd('XLEN', 'pg:revoked')) > before, 'announced on the revocation feed');
    assert.ok(e.audit().some((x) => x.type === 'logout.success' && x.saml_slo === 'idp_initiated'));

    // the same request again is a replay
    const again = await e.browser().request('GET', lr.url);
    assert.equal(again.status, 400);
    assert.equal(reasonOf(again.body), 'replay');
    assert.ok(e.audit().some((x) => x.type === 'logout.failure' && x.reason === 'replay'));
  });

  test('IdP-initiated with a SessionIndex ends only that session', async () => {
    const one = await signIn();
    const two = await signIn();
    assert.notEqual(one.sessionIndex, two.sessionIndex);
    const lr = await idpAdmin('GET', `/_admin/logout-request?session_index=${encodeURIComponent(one.sessionIndex)}`);
    const r = await e.browser().request('GET', lr.url);
    assert.equal(r.status, 302, r.body.slice(0, 300));
    await assertSignedOut(one.cookie);
    await assertStillSignedIn(two.cookie);
  });

  test('IdP-initiated: an unsigned LogoutRequest is refused and the session stays', async () => {
    const { cookie, sessionIndex } = await signIn();
    const lr = await idpAdmin('GET', `/_admin/logout-request?session_index=${encodeURIComponent(sessionIndex)}&unsigned=1`);
    assert.equal(lr.signed, false);
    const r = await e.browser().request('GET', lr.url);
    assert.equal(r.status, 400, r.body.slice(0, 300));
    assert.equal(reasonOf(r.body), 'unsigned');
    assert.match(r.body, /not signed/);
    assert.ok(e.audit().some((x) => x.type === 'logout.failure' && x.reason === 'unsigned'
      && x.saml_slo === 'idp_initiated'));
    await assertStillSignedIn(cookie);
  });

  test('HTTP-POST binding: an unsigned LogoutRequest form is refused too', async () => {
    const { cookie, sessionIndex } = await signIn();
    const slo = await idpAdmin('GET', '/_admin/slo');
    const s = slo.sessions.find((x) => x.session_index === sessionIndex);
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const xml = `<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_post1" Version="2.0" IssueInstant="${now}" Destination="${e.base}/saml/slo"><saml:Issuer>${idp.entityId}</saml:Issuer><saml:NameID>${s.name_id}</saml:NameID></samlp:LogoutRequest>`;
    const r = await e.browser().request('POST', `${e.base}/saml/slo`, {
      form: { SAMLRequest: Buffer.from(xml).toString('base64') },
    });
    assert.equal(r.status, 400, r.body.slice(0, 300));
    assert.equal(reasonOf(r.body), 'unsigned');
    await assertStillSignedIn(cookie);
  });

  /* An IdP LogoutRequest for the HTTP-POST binding, signed (enveloped
   * XML signature, IdP fixture key) by xml-crypto; edit() changes the
   * signed XML afterwards. */
  function postLogoutRequest(nameId, sessionIndex, id, edit = (x) => x, {
    destination = `${e.base}/saml/slo`, issuer = idp.entityId, ageMs = 0,
  } = {}) {
    const { SignedXml } = peerRequire('xml-crypto');
    const now = new Date(Date.now() - ageMs).toISOString().replace(/\.\d+Z$/, 'Z');
    const xml = `<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="${id}" Version="2.0" IssueInstant="${now}" Destination="${destination}"><saml:Issuer>${issuer}</saml:Issuer><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">${nameId}</saml:NameID><samlp:SessionIndex>${sessionIndex}</samlp:SessionIndex></samlp:LogoutRequest>`;
    const sig = new SignedXml({
      privateKey: fs.readFileSync(path.join(FIX, 'idp-key.pem')),
      canonicalizationAlgorithm: 'http://www.w3.org/2001/10/xml-exc-c14n#',
      signatureAlgorithm: 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',
    });
    sig.addReference({
      xpath: "/*[local-name(.)='LogoutRequest']",
      transforms: ['http://www.w3.org/2000/09/xmldsig#enveloped-signature', 'http://www.w3.org/2001/10/xml-exc-c14n#'],
      digestAlgorithm: 'http://www.w3.org/2001/04/xmlenc#sha256',
    });
    sig.computeSignature(xml, {
      location: { reference: "/*[local-name(.)='LogoutRequest']/*[local-name(.)='Issuer']", action: 'after' },
    });
    return Buffer.from(edit(sig.getSignedXml())).toString('base64');
  }

  test('HTTP-POST binding: a signed LogoutRequest ends the session; one edited after signing does not', async () => {
    const one = await signIn();
    const slo = await idpAdmin('GET', '/_admin/slo');
    const s = slo.sessions.find((x) => x.session_index === one.sessionIndex);
    const tampered = postLogoutRequest(s.name_id, s.session_index, '_post-t1',
      (x) => x.replace(`>${s.session_index}<`, '>_another-session<'));
    const bad = await e.browser().request('POST', `${e.base}/saml/slo`, { form: { SAMLRequest: tampered } });
    assert.equal(bad.status, 400, bad.body.slice(0, 300));
    assert.equal(reasonOf(bad.body), 'bad_signature');
    await assertStillSignedIn(one.cookie);

    const good = postLogoutRequest(s.name_id, s.session_index, '_post-g1');
    const r = await e.browser().request('POST', `${e.base}/saml/slo`, { form: { SAMLRequest: good, RelayState: 'rs-post' } });
    assert.equal(r.status, 302, r.body.slice(0, 300));
    const back = new URL(r.location);
    assert.equal(`${back.origin}${back.pathname}`, `${idp.url}/slo`);
    assert.ok(back.searchParams.get('SAMLResponse') && back.searchParams.get('Signature'));
    assert.equal(back.searchParams.get('RelayState'), 'rs-post');
    const xml = zlib.inflateRawSync(Buffer.from(back.searchParams.get('SAMLResponse'), 'base64')).toString();
    assert.match(xml, /InResponseTo="_post-g1"/);
    assert.match(xml, /urn:oasis:names:tc:SAML:2\.0:status:Success/);
    await assertSignedOut(one.cookie);
    // and the same POST again is a replay
    const again = await e.browser().request('POST', `${e.base}/saml/slo`, { form: { SAMLRequest: good } });
    assert.equal(again.status, 400);
    assert.equal(reasonOf(again.body), 'replay');
  });

  for (const [what, opts, reason] of [
    ['another Destination', (b) => ({ destination: `${b}/saml/slo-other` }), 'bad_destination'],
    ['another Issuer', () => ({ issuer: 'urn:provgate:test:wrong-issuer' }), 'bad_issuer'],
    ['an IssueInstant 20 minutes old', () => ({ ageMs: 20 * 60 * 1000 }), 'expired'],
  ]) {
    test(`IdP-initiated: a signed LogoutRequest with ${what} is refused (${reason})`, async () => {
      const one = await signIn();
      const slo = await idpAdmin('GET', '/_admin/slo');
      const s = slo.sessions.find((x) => x.session_index === one.sessionIndex);
      const msg = postLogoutRequest(s.name_id, s.session_index, `_post-${reason}`, undefined, opts(e.base));
      const r = await e.browser().request('POST', `${e.base}/saml/slo`, { form: { SAMLRequest: msg } });
      assert.equal(r.status, 400, r.body.slice(0, 300));
      assert.equal(reasonOf(r.body), reason);
      assert.ok(e.audit().some((x) => x.type === 'logout.failure' && x.reason === reason
        && x.saml_slo === 'idp_initiated'));
      await assertStillSignedIn(one.cookie);
    });
  }

  test('garbage and empty SLO messages are refused, never parsed into a session change', async () => {
    const b = e.browser();
    const empty = await b.request('GET', `${e.base}/saml/slo`);
    assert.equal(empty.status, 400);
    assert.equal(reasonOf(empty.body), 'bad_slo');
    const deflated = zlib.deflateRawSync(Buffer.from('<x/>')).toString('base64');
    const junk = await b.request('GET', `${e.base}/saml/slo?SAMLRequest=${encodeURIComponent(deflated)}`);
    assert.equal(junk.status, 400);
    assert.equal(reasonOf(junk.body), 'unsigned');
  });

  test('nginx -t refuses slo_url when the IdP metadata has no Redirect SingleLogoutService', () => {
    const cfg = JSON.parse(fs.readFileSync(e.cfgFile, 'utf8'));
    const md = path.join(dir, 'idp-metadata-noslo.xml');
    fs.writeFileSync(md, idpMetadata(idpPort, { slo: false }));
    cfg.idps.corp.idp_metadata_file = md;
    const r = nginxTestWith(cfg);
    assert.notEqual(r.code, 0, r.output);
    assert.match(r.output, /idps\.corp\/slo_url: Single Logout cannot be set up/);
    assert.ok(r.output.includes('idp-metadata-noslo.xml'), r.output);
  });

  test('nginx -t refuses provgate_saml_slo for an IdP without slo_url', () => {
    const cfg = JSON.parse(fs.readFileSync(e.cfgFile, 'utf8'));
    assert.equal(nginxTestWith(cfg).code, 0, 'the running configuration passes');
    delete cfg.idps.corp.slo_url;
    const r = nginxTestWith(cfg);
    assert.notEqual(r.code, 0, r.output);
    assert.match(r.output, /SAML identity provider "corp" has no "slo_url"/);
  });

  test('Redis down: a clear 503, no crash; SLO works again when Redis is back', async () => {
    const { cookie, sessionIndex } = await signIn();
    const lr = await idpAdmin('GET', `/_admin/logout-request?session_index=${encodeURIComponent(sessionIndex)}`);
    await stopRedis(e.redis);
    try {
      const r = await e.browser().request('GET', lr.url);
      assert.equal(r.status, 503, r.body.slice(0, 300));
      assert.equal(reasonOf(r.body), 'identity_store_unavailable');
    } finally {
      await restartRedis(e.redis);
    }
    let ok;
    for (let i = 0; i < 20; i++) {
      ok = await e.browser().request('GET', lr.url);
      if (ok.status !== 503) break;
      await sleep(150);
    }
    assert.equal(ok.status, 302, ok.body.slice(0, 300));
    await assertSignedOut(cookie);
  });
});

describe('SAML Single Logout with several workers (session caches)', () => {
  let e;
  let idp;
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  test('an IdP-initiated logout reaches every worker\'s session cache at once', async () => {
    ({ e, idp } = await startSamlEnv({ slo: true, workers: 2 }));
    const { b, acs } = await toAcs(e);
    assert.equal((await b.request('POST', acs.action, { form: acs.fields })).status, 302);
    const cookie = b.getCookie(`${e.base}/sapp/`, COOKIE);
    // warm the caches of both workers (new connection per request)
    for (let i = 0; i < 12; i++) {
      assert.equal((await b.request('GET', `${e.base}/sapp/hello`)).status, 200);
    }
    const r0 = await jsonRequest('GET', `${idp.url}/_admin/logout-request?user=sam`);
    assert.equal(r0.status, 200, r0.text);
    const r = await e.browser().request('GET', r0.json.url);
    assert.equal(r.status, 302, r.body.slice(0, 300));
    await sleep(100); // the feed's latency is milliseconds
    // well within session.cache_ms (5 s): no worker may still serve it
    for (let i = 0; i < 12; i++) {
      const fresh = e.browser();
      fresh.setCookie(e.base, COOKIE, cookie);
      const x = await fresh.request('GET', `${e.base}/sapp/hello`);
      assert.equal(x.status, 302, `request ${i} was still allowed`);
    }
  });
});
