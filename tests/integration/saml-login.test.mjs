// SAML 2.0 sign-in through the gateway against a real SAML IdP (samlify).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { cleanupAll, freePort, tempDir, parseForms, submitForm } from './lib/harness.mjs';
import { startSamlIdp } from './lib/saml.mjs';
import { startEnv, provgateConfig, sanitizerReports } from './gw/env.mjs';

const FIX = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../unit/fixtures/saml');

/* IdP metadata for the samlify peer that will run on port (fixture cert). */
function idpMetadata(port) {
  const cert = fs.readFileSync(path.join(FIX, 'idp-cert.pem'), 'utf8')
    .split('\n').filter((l) => l && !l.startsWith('-----')).join('');
  const base = `http://127.0.0.1:${port}`;
  return `<?xml version="1.0"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="${base}/metadata">
  <md:IDPSSODescriptor WantAuthnRequestsSigned="false" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="signing"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>${cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="${base}/sso"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>
`;
}

export const SAML_USERS = {
  sam: {
    password: 'sam-pw',
    nameid: 'sam@example.com',
    attributes: {
      email: ['sam@example.com'], preferred_username: ['sam'], given_name: ['Sam'], family_name: ['Saml'],
      name: ['Sam Saml'], groups: ['staff', 'engineering'], employee_type: ['employee'], department: ['eng'],
    },
  },
};

describe('SAML sign-in through the gateway', () => {
  let e;
  let idp;
  before(async () => {
    const idpPort = await freePort();
    const dir = tempDir('pg-saml-login-');
    const mdFile = path.join(dir, 'idp-metadata.xml');
    fs.writeFileSync(mdFile, idpMetadata(idpPort));
    e = await startEnv(undefined, {
      workers: 1,
      cfgOver: (env) => ({
        idps: {
          ...provgateConfig(env).idps,
          corp: {
            type: 'saml',
            sp_entity_id: `${env.base}/saml/sp`,
            acs_url: `${env.base}/saml/acs`,
            sp_key_file: path.join(FIX, 'sp-key.pem'),
            sp_cert_file: path.join(FIX, 'sp-cert.pem'),
            idp_metadata_file: mdFile,
          },
        },
      }),
      extraServer: `
        location = /saml/metadata { provgate_saml_metadata corp; }
        location = /saml/acs { provgate_saml_acs; }
        location /sapp/ { provgate saml:corp; provgate_app demoapp; proxy_pass http://echo; }`,
    });
    const sp = await e.browser().request('GET', `${e.base}/saml/metadata`);
    assert.equal(sp.status, 200);
    idp = await startSamlIdp({
      port: idpPort, spMetadataXml: sp.body, users: SAML_USERS,
      keyFile: path.join(FIX, 'idp-key.pem'), certFile: path.join(FIX, 'idp-cert.pem'),
      entityId: `http://127.0.0.1:${idpPort}/metadata`,
    });
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

  /* Sign in at the IdP; returns the browser and the auto-submit form that
   * would POST the SAML response to our ACS. */
  async function toAcs(user = 'sam', startPath = '/sapp/hello') {
    const b = e.browser();
    const page = await b.get(`${e.base}${startPath}`);
    const login = parseForms(page.body, page.url).find((f) => f.inputs.some((i) => i.type === 'password'));
    assert.ok(login, page.body.slice(0, 300));
    const posted = await submitForm(b, login, { username: user, password: SAML_USERS[user].password });
    const acs = parseForms(posted.body, posted.url).find((f) => f.action === `${e.base}/saml/acs`);
    assert.ok(acs, `auto-submit form to our ACS expected: ${posted.status} ${posted.body.slice(0, 300)}`);
    return { b, acs };
  }

  test('SAML sign-in provisions the account and forwards with identity headers', async () => {
    await e.scim.resetLog();
    const { b, acs } = await toAcs();
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
    assert.ok(e.audit().some((x) => x.type === 'login.success' && x.idp === 'corp'));
    assert.ok(!fs.readFileSync(e.auditFile, 'utf8').includes(acs.fields.SAMLResponse.slice(0, 40)), 'no raw assertion in the audit');
  });

  test('two parallel POSTs of one response give exactly one session', async () => {
    const { b, acs } = await toAcs();
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
      const { b, acs } = await toAcs();
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
