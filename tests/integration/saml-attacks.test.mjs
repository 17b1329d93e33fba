// SAML attacks through the gateway: the real IdP's signed response is
// tampered with (a mock could not produce these), or the IdP's fault modes
// are used. Every case must end in a 4xx page with a reason, no session,
// nothing provisioned, and an audit event.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll } from './lib/harness.mjs';
import { sanitizerReports } from './gw/env.mjs';
import { startSamlEnv, toAcs } from './gw/saml-env.mjs';

const ASSERTION = /<saml:Assertion\b[\s\S]*?<\/saml:Assertion>/;
const SIGNATURE = /<ds:Signature\b[\s\S]*?<\/ds:Signature>/;

const dec = (f) => Buffer.from(f.SAMLResponse, 'base64').toString('utf8');
const enc = (xml) => Buffer.from(xml, 'utf8').toString('base64');

/* Each case: a name, how to tamper (xml -> xml, or fields -> fields),
 * the expected status and a regexp for the reason code. */
const TAMPER = [
  ['stripped signature', (x) => x.replace(SIGNATURE, ''), 401, /signature|unsigned/],
  ['emptied SignatureValue', (x) => x.replace(/<ds:SignatureValue>[^<]*</, '<ds:SignatureValue><'), 401, /signature/],
  ['NameID changed after signing', (x) => x.replace(/(<saml:NameID\b[^>]*>)[^<]*/, '$1admin@example.com'), 401, /signature|digest/],
  ['attribute added after signing', (x) => x.replace(/(<saml:AttributeStatement>)/, '$1<saml:Attribute Name="groups"><saml:AttributeValue>admins</saml:AttributeValue></saml:Attribute>'), 401, /signature|digest/],
  ['XSW: an unsigned evil assertion before the signed one', (x) => {
    const a = ASSERTION.exec(x)[0];
    const evil = a.replace(SIGNATURE, '').replace(/ID="[^"]*"/, 'ID="_evil1"').replace(/(<saml:NameID\b[^>]*>)[^<]*/, '$1admin@example.com');
    return x.replace(a, evil + a);
  }, 401, /assertion_count|signature/],
  ['XSW: signed assertion hidden in Extensions, evil one in its place', (x) => {
    const a = ASSERTION.exec(x)[0];
    const evil = a.replace(SIGNATURE, '').replace(/ID="[^"]*"/, 'ID="_evil2"').replace(/(<saml:NameID\b[^>]*>)[^<]*/, '$1admin@example.com');
    return x.replace(a, evil).replace(/(<samlp:Status>)/, `<samlp:Extensions>${a}</samlp:Extensions>$1`);
  }, 401, /assertion_count|signature|unsigned|structure|extensions|placement/],
  ['DOCTYPE / XXE', (x) => `<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>${x.replace(/(<saml:NameID\b[^>]*>)[^<]*/, '$1&x;')}`, 401, /doctype/],
  ['comment inside NameID', (x) => x.replace(/(<saml:NameID\b[^>]*>)([^<@]*)@/, '$1$2<!---->@'), 401, /signature|nameid|digest/],
];

describe('SAML attacks through the gateway', () => {
  let e;
  let idp;
  before(async () => { ({ e, idp } = await startSamlEnv()); });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  async function expectRefused(b, fields, status, reasonRe) {
    const before1 = e.audit().length;
    const r = await b.request('POST', `${e.base}/saml/acs`, { form: fields });
    assert.equal(r.status, status, r.body.slice(0, 400));
    if (status !== 413) {
      const m = /id="reason">([^<]+)</.exec(r.body);
      assert.ok(m, r.body.slice(0, 300));
      assert.match(m[1], reasonRe);
      assert.ok(e.audit().slice(before1).some((x) => x.type === 'login.failure' && x.reason === m[1]));
    }
    assert.equal(b.getCookie(`${e.base}/sapp/`, 'provgate_session'), undefined, 'no session');
  }

  for (const [name, tamper, status, reasonRe] of TAMPER) {
    test(`refused: ${name}`, async () => {
      const { b, acs } = await toAcs(e, 'sam', `/sapp/${name.length}`);
      await expectRefused(b, { ...acs.fields, SAMLResponse: enc(tamper(dec(acs.fields))) }, status, reasonRe);
    });
  }

  test('refused: an oversized body (before any parsing)', async () => {
    const { b, acs } = await toAcs(e);
    await expectRefused(b, { ...acs.fields, SAMLResponse: 'A'.repeat(300 * 1024) }, 413, /./);
  });

  test('refused: a response for another login of the same browser (InResponseTo)', async () => {
    const first = await toAcs(e, 'sam', '/sapp/one');
    // a second login in the same browser gets its own request and RelayState
    const b = first.b;
    const page = await b.get(`${e.base}/sapp/two`);
    const relay2 = new URL(page.redirects.find((u) => u.includes('RelayState=')) || page.url).searchParams.get('RelayState');
    assert.ok(relay2, 'second RelayState');
    await expectRefused(b, { SAMLResponse: first.acs.fields.SAMLResponse, RelayState: relay2 }, 401, /in_response_to|inresponseto/i);
  });

  for (const [mode, reasonRe] of [
    ['expired', /expired|not_on_or_after|time/],
    ['wrong_recipient', /recipient/],
    ['wrong_destination', /destination/],
    ['unsigned', /unsigned|signature/],
    ['status_fail', /status/],
  ]) {
    test(`refused: IdP mode ${mode}`, async () => {
      await idp.setMode(mode);
      try {
        const { b, acs } = await toAcs(e, 'sam', `/sapp/${mode}`);
        await expectRefused(b, acs.fields, 401, reasonRe);
      } finally {
        await idp.setMode('good');
      }
    });
  }

  test('nothing was provisioned by any refused response', async () => {
    const state = await e.scim.state();
    assert.equal(state.users.filter((u) => u.userName === 'sam' || u.userName === 'admin').length, 0);
  });
});
