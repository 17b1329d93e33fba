// Several identity providers on one location (IdP discovery): the chooser
// page, choosing the real OpenID provider or the real SAML IdP (samlify),
// the remembered choice, and the nginx -t checks of the directive.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import {
  cleanupAll, parseForms, submitForm, oidcLogin, parseSetCookie,
} from './lib/harness.mjs';
import { sanitizerReports } from './gw/env.mjs';
import { startSamlEnv, SAML_USERS } from './gw/saml-env.mjs';

const CORP_LABEL = 'Corp <Staff> & "Partners"';
const CORP_ESCAPED = 'Corp &lt;Staff&gt; &amp; &quot;Partners&quot;';
const MULTI = `
        location /multi/ { provgate oidc:main saml:corp; provgate_app demoapp; proxy_pass http://echo; }`;

/* The chooser's links: [{idp, href (absolute), label (as in the HTML)}]. */
function choices(page) {
  const out = [];
  const ul = /<ul id="idp-choice">([\s\S]*?)<\/ul>/.exec(page.body);
  assert.ok(ul, `a chooser page expected: ${page.status} ${page.body.slice(0, 300)}`);
  const re = /<li><a href="([^"]*)" data-idp="([^"]*)">([^<]*)<\/a><\/li>/g;
  let m;
  while ((m = re.exec(ul[1])) !== null) {
    const href = m[1].replace(/&amp;/g, '&');
    out.push({ idp: m[2], href: new URL(href, page.url).href, label: m[3] });
  }
  return out;
}

function isChooser(r) {
  return r.status === 200 && /<ul id="idp-choice">/.test(r.body);
}

function header(res, name) {
  const h = JSON.parse(res.body).headers;
  return h[Object.keys(h).find((k) => k.toLowerCase() === name)];
}

describe('several identity providers on one location', () => {
  let e;
  let idp;
  before(async () => {
    ({ e, idp } = await startSamlEnv({
      corpExtra: { display_name: CORP_LABEL },
      mainExtra: { display_name: 'Main OIDC' },
      extraServer: MULTI,
    }));
  });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  test('a browser without a session gets the chooser: both IdPs, escaped, no-store, audited', async () => {
    const b = e.browser();
    const r = await b.request('GET', `${e.base}/multi/page?x=1&y=a%20b`);
    assert.equal(r.status, 200, r.body.slice(0, 300));
    assert.match(r.headers['content-type'], /^text\/html/);
    assert.match(r.headers['cache-control'] || '', /no-store/);
    assert.equal(r.location, null);
    const c = choices(r);
    assert.deepEqual(c.map((x) => x.idp), ['main', 'corp']);
    assert.equal(c[0].label, 'Main OIDC');
    assert.equal(c[1].label, CORP_ESCAPED, 'display_name is HTML-escaped');
    assert.ok(!r.body.includes(CORP_LABEL), 'no raw display name in the page');
    assert.equal(c[0].href, `${e.base}/multi/page?x=1&y=a%20b&provgate_idp=main`);
    assert.equal(c[1].href, `${e.base}/multi/page?x=1&y=a%20b&provgate_idp=corp`);
    // the gate's page template
    assert.match(r.body, /<!DOCTYPE html>[\s\S]*<style>body\{font-family:sans-serif/);
    assert.equal(b.getCookie(`${e.base}/multi/`, 'provgate_session_idp'), undefined);
    assert.ok(!b.allCookies().some((x) => x.name.startsWith('provgate_session_st_')), 'no login started');
    const ev = e.audit().filter((x) => x.type === 'login.start' && x.reason === 'idp_choice');
    assert.ok(ev.length >= 1, 'the chooser is audited');
    assert.deepEqual(ev.at(-1).idps, ['main', 'corp']);
    assert.equal(ev.at(-1).idp, undefined);
  });

  test('choosing OIDC signs in end to end and lands on the URL without provgate_idp; the choice is remembered', async () => {
    const b = e.browser();
    const page = await b.request('GET', `${e.base}/multi/page?x=1`);
    const main = choices(page).find((x) => x.idp === 'main');
    const r = await b.request('GET', main.href);
    assert.equal(r.status, 302, r.body.slice(0, 300));
    assert.ok(r.location.startsWith(e.op.issuer), r.location);
    const sc = [].concat(r.headers['set-cookie'] || []).map((h) => ({ h, c: parseSetCookie(h) }))
      .find((x) => x.c.name === 'provgate_session_idp');
    assert.ok(sc, 'the choice cookie is set');
    assert.equal(sc.c.value, 'main');
    assert.match(sc.h, /HttpOnly/i);
    assert.match(sc.h, /SameSite=Lax/i);
    assert.match(sc.h, /Max-Age=7776000/);
    assert.doesNotMatch(sc.h, /Secure/, 'cookie_secure is false in this environment');
    const res = await oidcLogin(b, r.location, 'alice', e.users.alice.password);
    assert.equal(res.status, 200, res.body.slice(0, 300));
    const landed = new URL(res.url);
    assert.equal(landed.pathname, '/multi/page');
    assert.equal(landed.search, '?x=1');
    assert.ok(!res.redirects.some((u) => u.startsWith(e.base) && u.includes('provgate_idp')),
      `no redirect back to a URL with provgate_idp: ${res.redirects.join(' ')}`);
    assert.equal(header(res, 'x-provgate-user'), 'alice');
    assert.equal(header(res, 'x-provgate-email'), 'alice@example.com');
    const start = e.audit().filter((x) => x.type === 'login.start' && x.reason === 'redirect_to_idp').at(-1);
    assert.equal(start.idp, 'main');
    assert.equal(start.idp_choice, 'parameter');

    // the OIDC session is accepted on the location, and on oidc:main ones
    const again = await b.request('GET', `${e.base}/multi/other`);
    assert.equal(again.status, 200);
    assert.equal(header(again, 'x-provgate-user'), 'alice');
    assert.equal((await b.request('GET', `${e.base}/app/x`)).status, 200);
    // a valid session passes even with the parameter (no new login)
    assert.equal((await b.request('GET', `${e.base}/multi/p?provgate_idp=corp`)).status, 200);

    // after logout, the remembered choice skips the chooser
    await b.get(`${e.base}/provgate/logout`, { stopAt: e.op.issuer });
    assert.equal(b.getCookie(`${e.base}/multi/`, 'provgate_session_idp'), 'main');
    const next = await b.request('GET', `${e.base}/multi/back`);
    assert.equal(next.status, 302, next.body.slice(0, 200));
    assert.ok(next.location.startsWith(e.op.issuer), next.location);
    const start2 = e.audit().filter((x) => x.type === 'login.start' && x.reason === 'redirect_to_idp').at(-1);
    assert.equal(start2.idp_choice, 'cookie');
    // "use another": provgate_idp=* shows the chooser despite the cookie
    const other = await b.request('GET', `${e.base}/multi/back?provgate_idp=*`);
    assert.ok(isChooser(other), `${other.status} ${other.body.slice(0, 200)}`);
    assert.equal(choices(other)[0].href, `${e.base}/multi/back?provgate_idp=main`);
    const empty = await b.request('GET', `${e.base}/multi/back?provgate_idp=`);
    assert.ok(isChooser(empty));
  });

  test('a remembered SAML choice goes straight to the SAML IdP; one not allowed here is ignored', async () => {
    const b = e.browser();
    b.setCookie(e.base, 'provgate_session_idp', 'corp');
    const r = await b.request('GET', `${e.base}/multi/s`);
    assert.equal(r.status, 302, r.body.slice(0, 200));
    assert.equal(new URL(r.location).origin, idp.url);
    const b2 = e.browser();
    b2.setCookie(e.base, 'provgate_session_idp', 'post');   // configured, not on /multi/
    assert.ok(isChooser(await b2.request('GET', `${e.base}/multi/s`)));
  });

  test('choosing SAML signs in through the real SAML IdP and returns without provgate_idp', async () => {
    const b = e.browser();
    const page = await b.request('GET', `${e.base}/multi/saml?y=2`);
    const corp = choices(page).find((x) => x.idp === 'corp');
    const r = await b.request('GET', corp.href);
    assert.equal(r.status, 302, r.body.slice(0, 300));
    const loc = new URL(r.location);
    assert.equal(loc.origin, idp.url);
    assert.ok(loc.searchParams.get('SAMLRequest'));
    const rec = JSON.parse(await e.redisCmd('GET', `pg:saml:relay:${loc.searchParams.get('RelayState')}`));
    assert.equal(rec.idp, 'corp');
    assert.equal(rec.return_to, '/multi/saml?y=2', 'the stored return URL has no provgate_idp');
    assert.equal(b.getCookie(`${e.base}/multi/`, 'provgate_session_idp'), 'corp');

    const loginPage = await b.get(r.location);
    const login = parseForms(loginPage.body, loginPage.url).find((f) => f.inputs.some((i) => i.type === 'password'));
    assert.ok(login, loginPage.body.slice(0, 300));
    const posted = await submitForm(b, login, { username: 'sam', password: SAML_USERS.sam.password });
    const acs = parseForms(posted.body, posted.url).find((f) => f.action === `${e.base}/saml/acs`);
    assert.ok(acs, posted.body.slice(0, 300));
    const back = await b.request('POST', acs.action, { form: acs.fields });
    assert.equal(back.status, 302, back.body.slice(0, 300));
    assert.equal(back.location, `${e.base}/multi/saml?y=2`);
    const res = await b.request('GET', back.location);
    assert.equal(res.status, 200);
    assert.equal(header(res, 'x-provgate-user'), 'sam');
    // the SAML session is accepted on the location (no forced re-login) ...
    assert.equal((await b.request('GET', `${e.base}/multi/again`)).status, 200);
    // ... but not on an oidc:main location: a login starts there, as before
    const app = await b.request('GET', `${e.base}/app/x`);
    assert.equal(app.status, 302);
    assert.ok(app.location.startsWith(e.op.issuer), app.location);
  });

  test('a session from an IdP not in the list is not accepted: the chooser again', async () => {
    const { b, res } = await e.login('alice', '/post/x');
    assert.equal(res.status, 200, res.body.slice(0, 200));
    const r = await b.request('GET', `${e.base}/multi/x`);
    assert.ok(isChooser(r), `${r.status} ${r.body.slice(0, 200)}`);
  });

  test('a parameter naming an IdP not allowed here is ignored: the chooser, no login, no cookie', async () => {
    for (const v of ['post', 'rogue', 'nope', 'MAIN', '%3Cscript%3E', 'main&provgate_idp=corp', 'x'.repeat(200)]) {
      const b = e.browser();
      const r = await b.request('GET', `${e.base}/multi/p?a=1&provgate_idp=${v}`);
      assert.ok(isChooser(r), `${v}: ${r.status} ${r.body.slice(0, 200)}`);
      assert.ok(!r.body.includes('<script>'));
      assert.equal(b.getCookie(`${e.base}/multi/`, 'provgate_session_idp'), undefined, v);
      assert.equal(choices(r)[0].href, `${e.base}/multi/p?a=1&provgate_idp=main`);
    }
  });

  test('an API client gets 401 login_required, not the chooser', async () => {
    const b = e.browser();
    for (const q of ['', '?provgate_idp=main', '?provgate_idp=*']) {
      const r = await b.request('GET', `${e.base}/multi/api${q}`, { headers: { accept: 'application/json' } });
      assert.equal(r.status, 401, r.body);
      assert.equal(r.json().error, 'login_required');
    }
    const post = await b.request('POST', `${e.base}/multi/api?provgate_idp=main`, { form: { a: 1 } });
    assert.equal(post.status, 401);
  });

  test('nginx -t refuses an unknown, repeated or off-mixed IdP list with file, line and reason', () => {
    const conf = fs.readFileSync(e.nginx.confFile, 'utf8');
    const line = 'provgate oidc:main saml:corp;';
    assert.ok(conf.includes(line));
    const cases = [
      ['provgate oidc:main saml:nope;', /identity provider "nope" is not defined in .*provgate\.json/],
      ['provgate oidc:main saml:corp oidc:main;', /identity provider "main" is listed twice/],
      ['provgate oidc:main off;', /"off" cannot be combined with identity providers/],
      ['provgate off oidc:main;', /"off" cannot be combined with identity providers/],
      ['provgate oidc:main oidc:corp;', /identity provider "corp" is not an OpenID Connect provider/],
      ['provgate oidc:main corp;', /expected "oidc:<idp>", "saml:<idp>" or "off", got "corp"/],
    ];
    for (const [bad, want] of cases) {
      const r = e.nginxTest(conf.replace(line, bad));
      assert.notEqual(r.code, 0, bad);
      assert.match(r.output, want, r.output);
      assert.match(r.output, /nginx\.conf:\d+/, r.output);
    }
    const ok = e.nginxTest(conf.replace(line, 'provgate oidc:main saml:corp oidc:post;'));
    assert.equal(ok.code, 0, ok.output);
  });
});
