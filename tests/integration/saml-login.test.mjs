// SAML 2.0 sign-in through the gateway against a real SAML IdP (samlify).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { cleanupAll, parseForms } from './lib/harness.mjs';
import { sanitizerReports } from './gw/env.mjs';
import { startSamlEnv, toAcs } from './gw/saml-env.mjs';

describe('SAML sign-in through the gateway', () => {
  let e;
  let idp;
  before(async () => {
    ({ e, idp } = await startSamlEnv());
  });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  test('a protected SAML location sends the browser to the IdP with an AuthnRequest it accepts', async () => {
    const b = e.browser();
    const r = await b.request('GET', `${e.base}/sapp/hello?x=1`);
    assert.equal(r.status, 302);
    const loc = new URL(r.location);
    assert.equal(loc.origin, idp.url);
    assert.ok(loc.searchParams.get('SAMLRequest'));
    const relay = loc.searchParams.get('RelayState');
    assert.match(relay, /^[A-Za-z0-9_-]{24}$/, 'RelayState is an opaque reference, not the URL');
    const rec = JSON.parse(await e.redisCmd('GET', `pg:saml:relay:${relay}`));
    assert.equal(rec.return_to, '/sapp/hello?x=1');
    assert.equal(rec.idp, 'corp');
    assert.match(rec.request_id, /^_?[A-Za-z0-9_-]+$/);
    assert.ok(b.allCookies().some((c) => c.name.startsWith('provgate_session_st_')), 'bound to this browser');
    // the real IdP parses and accepts our AuthnRequest: it shows its login form
    const page = await b.get(r.location);
    assert.equal(page.status, 200, page.body.slice(0, 300));
    assert.ok(parseForms(page.body, page.url).some((f) => f.inputs.some((i) => i.type === 'password')));
  });

  test('SAML sign-in provisions the account and forwards with identity headers', async () => {
    await e.scim.resetLog();
    const { b, acs } = await toAcs(e);
    const r = await b.request('POST', acs.action, { form: acs.fields });
    assert.equal(r.status, 302, r.body.slice(0, 400));
    assert.equal(new URL(r.location, e.base).pathname, '/sapp/hello');
    const page = await b.get(`${e.base}/sapp/hello`);
    assert.equal(page.status, 200);
    const body = JSON.parse(page.body);
    const h = (n) => body.headers[Object.keys(body.headers).find((k) => k.toLowerCase() === n)];
    assert.equal(h('x-provgate-user'), 'sam');
    assert.equal(h('x-provgate-email'), 'sam@example.com');
    assert.equal(h('x-provgate-groups'), 'staff,engineering');
    const [u] = await e.scimUsers('sam');
    assert.ok(u, 'the SCIM account exists');
    assert.equal(u.name.givenName, 'Sam');
    const ok = e.audit().find((x) => x.type === 'login.success' && x.idp === 'corp');
    assert.ok(ok);
    assert.ok(Number.isInteger(ok.saml_verify_us) && ok.saml_verify_us > 0, 'verification time recorded');
    assert.equal(ok.saml_verify_offloaded, true, 'verified on the thread pool, not the event loop');
    assert.ok(!fs.readFileSync(e.auditFile, 'utf8').includes(acs.fields.SAMLResponse.slice(0, 40)), 'no raw assertion in the audit');
  });

  test('two parallel POSTs of one response give exactly one session', async () => {
    const { b, acs } = await toAcs(e);
    const [r1, r2] = await Promise.all([
      b.request('POST', acs.action, { form: acs.fields }),
      b.request('POST', acs.action, { form: acs.fields }),
    ]);
    const statuses = [r1.status, r2.status].sort();
    assert.deepEqual(statuses, [302, 400], `${r1.status} ${r2.status}`);
    const loser = r1.status === 400 ? r1 : r2;
    assert.match(loser.body, /state_unknown|replay/);
  });

  test('a response for another audience is refused: no session, nothing provisioned, audited', async () => {
    await idp.setMode('wrong_audience');
    try {
      const { b, acs } = await toAcs(e);
      const r = await b.request('POST', acs.action, { form: acs.fields });
      assert.equal(r.status, 401, r.body.slice(0, 300));
      const reason = /id="reason">([^<]+)</.exec(r.body)[1];
      assert.match(reason, /audience/);
      assert.equal(b.getCookie(`${e.base}/sapp/`, 'provgate_session'), undefined);
      assert.ok(e.audit().some((x) => x.type === 'login.failure' && x.reason === reason));
    } finally {
      await idp.setMode('good');
    }
  });

  test('an unsolicited (IdP-initiated) response is refused', async () => {
    const b = e.browser();
    const page = await b.get(`${idp.url}/idp-init?user=sam&password=sam-pw`);
    const acs = parseForms(page.body, page.url).find((f) => f.action === `${e.base}/saml/acs`);
    assert.ok(acs, page.body.slice(0, 300));
    const r = await b.request('POST', acs.action, { form: acs.fields });
    assert.equal(r.status, 400);
    assert.match(r.body, /unsolicited|state_not_bound/);
    assert.equal(b.getCookie(`${e.base}/sapp/`, 'provgate_session'), undefined);
  });
});

describe('IdP-initiated SAML sign-in, where the provider allows it', () => {
  let e;
  let idp;
  before(async () => {
    ({ e, idp } = await startSamlEnv({ corpExtra: { allow_unsolicited: true } }));
  });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  async function idpInit(b, relay) {
    const q = relay === undefined ? '' : `&relay_state=${encodeURIComponent(relay)}`;
    const page = await b.get(`${idp.url}/idp-init?user=sam&password=sam-pw${q}`);
    const acs = parseForms(page.body, page.url).find((f) => f.action === `${e.base}/saml/acs`);
    assert.ok(acs, page.body.slice(0, 300));
    assert.ok(!('InResponseTo' in acs.fields));
    return acs;
  }

  test('an unsolicited response signs in, lands on its RelayState path and provisions on arrival', async () => {
    await e.scim.resetLog();
    const b = e.browser();
    const acs = await idpInit(b, '/sapp/hello?from=idp');
    const r = await b.request('POST', acs.action, { form: acs.fields });
    assert.equal(r.status, 302, r.body.slice(0, 400));
    assert.equal(new URL(r.location, e.base).pathname + new URL(r.location, e.base).search, '/sapp/hello?from=idp');
    assert.ok(b.getCookie(`${e.base}/sapp/`, 'provgate_session'), 'a session');
    const page = await b.get(`${e.base}/sapp/hello?from=idp`);
    assert.equal(page.status, 200, page.body.slice(0, 300));
    const body = JSON.parse(page.body);
    const h = (n) => body.headers[Object.keys(body.headers).find((k) => k.toLowerCase() === n)];
    assert.equal(h('x-provgate-user'), 'sam');
    const [u] = await e.scimUsers('sam');
    assert.ok(u, 'the SCIM account exists');
    const audit = e.audit();
    assert.ok(audit.some((x) => x.type === 'login.start' && x.reason === 'idp_initiated' && x.idp === 'corp'));
    assert.ok(audit.some((x) => x.type === 'login.success' && x.idp === 'corp'));
  });

  test('the same unsolicited response twice gives one session: the replay is refused', async () => {
    const acs = await idpInit(e.browser(), '/sapp/hello');
    const [r1, r2] = await Promise.all([
      e.browser().request('POST', acs.action, { form: acs.fields }),
      e.browser().request('POST', acs.action, { form: acs.fields }),
    ]);
    assert.deepEqual([r1.status, r2.status].sort(), [302, 400], `${r1.status} ${r2.status}`);
    const loser = r1.status === 400 ? r1 : r2;
    assert.match(loser.body, /id="reason">replay</);
  });

  test('a RelayState that is not a local path lands on "/", never off-site', async () => {
    for (const relay of ['https://evil.example/x', '//evil.example/x', undefined]) {
      const b = e.browser();
      const acs = await idpInit(b, relay);
      const r = await b.request('POST', acs.action, { form: acs.fields });
      assert.equal(r.status, 302, r.body.slice(0, 300));
      assert.equal(r.location.replace(e.base, ''), '/', String(relay));
    }
  });

  test('a solicited response posted from another browser is still refused', async () => {
    // the response answers an AuthnRequest (InResponseTo): without the
    // browser's state cookie it is not turned into an unsolicited one
    const { acs } = await toAcs(e);
    const other = e.browser();
    const r = await other.request('POST', acs.action, { form: acs.fields });
    assert.equal(r.status, 401, r.body.slice(0, 300));
    assert.match(r.body, /id="reason">in_response_to_mismatch</);
    assert.equal(other.getCookie(`${e.base}/sapp/`, 'provgate_session'), undefined);
    assert.ok(e.audit().some((x) => x.type === 'login.failure' && x.reason === 'in_response_to_mismatch'));
  });

  test('an unsigned unsolicited response is refused like any other', async () => {
    await idp.setMode('unsigned');
    try {
      const b = e.browser();
      const acs = await idpInit(b, '/sapp/hello');
      const r = await b.request('POST', acs.action, { form: acs.fields });
      assert.equal(r.status, 401, r.body.slice(0, 300));
      assert.equal(b.getCookie(`${e.base}/sapp/`, 'provgate_session'), undefined);
    } finally {
      await idp.setMode('good');
    }
  });
});
