// Self-test of the SAML 2.0 IdP peer (tests/peers/saml-idp.mjs) with no
// provgate code involved: a tiny HTTP server in this process is the SP's
// ACS; samlify's SP side builds the AuthnRequest and parses the Response;
// xmlsec1 checks the XML signatures against the IdP certificate
// independently; xmllint checks well-formedness. Run from the repo root:
//   node --test tests/integration/saml-idp.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';

import {
  LOOPBACK, Browser, oidcLogin, parseForms, tempDir, cleanupAll,
} from './lib/harness.mjs';
import { startSamlIdp, samlSchemaValidator, peerRequire } from './lib/saml.mjs';

after(cleanupAll);

const samlify = peerRequire('samlify');
samlify.setSchemaValidator(samlSchemaValidator());

const NS_ASSERTION = 'urn:oasis:names:tc:SAML:2.0:assertion';
const NS_PROTOCOL = 'urn:oasis:names:tc:SAML:2.0:protocol';
const SUCCESS = 'urn:oasis:names:tc:SAML:2.0:status:Success';
const POST = 'urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST';

const USERS = {
  alice: {
    password: 'alice-pw',
    nameid: 'alice@example.test',
    nameid_format: 'urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress',
    attributes: {
      email: ['alice@example.test'],
      groups: ['staff', 'engineering & <ops>'],
      displayName: ['Alice Example'],
    },
  },
};

const SP_ENTITY = 'https://sp.provgate.test/saml/metadata';

function openssl(args) {
  execFileSync('openssl', args, { stdio: 'pipe' });
}

function xmllintWellFormed(file) {
  const r = spawnSync('xmllint', ['--noout', '--nonet', file], { encoding: 'utf8' });
  if (r.error && r.error.code === 'ENOENT') {
    throw new Error('xmllint not installed: add Debian libxml2-utils (tools/deps.sh)');
  }
  return r;
}

// xmlsec1 verifies the first ds:Signature of the document with the given
// certificate only; the ID attributes of Response and Assertion are
// declared so same-document references resolve.
function xmlsecVerify(xml, certFile, dir) {
  const f = path.join(dir, `verify-${Date.now()}-${Math.random().toString(16).slice(2)}.xml`);
  fs.writeFileSync(f, xml);
  const r = spawnSync('xmlsec1', ['--verify', '--pubkey-cert-pem', certFile,
    '--id-attr:ID', `${NS_PROTOCOL}:Response`, '--id-attr:ID', `${NS_ASSERTION}:Assertion`, f], { encoding: 'utf8' });
  if (r.error && r.error.code === 'ENOENT') throw new Error('xmlsec1 not installed (Debian package xmlsec1)');
  return r.status === 0;
}

const attr = (xml, el, name) => {
  const m = new RegExp(`<(?:\\w+:)?${el}\\b[^>]*\\s${name}="([^"]*)"`).exec(xml);
  return m ? m[1] : null;
};
const text = (xml, el) => {
  const m = new RegExp(`<(?:\\w+:)?${el}\\b[^>]*>([^<]*)</`).exec(xml);
  return m ? m[1] : null;
};
const count = (xml, re) => (xml.match(re) || []).length;

// ---------------------------------------------------------------------------
// The SP: key/cert, an ACS server, metadata, samlify SP objects.

let dir;
let acsServer;
let acsUrl;
let spCertFile;
let spKey;
let spMetadataXml;

before(async () => {
  dir = tempDir('pg-saml-it-');
  const spKeyFile = path.join(dir, 'sp-key.pem');
  spCertFile = path.join(dir, 'sp-cert.pem');
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', spKeyFile, '-out', spCertFile,
    '-days', '2', '-subj', '/CN=provgate-test-sp']);
  spKey = fs.readFileSync(spKeyFile, 'utf8');

  acsServer = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      // Echo what the ACS received (tests run concurrently, so each one
      // reads its own POST from the response).
      const post = { method: req.method, url: req.url, body: Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString())) };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(post));
    });
  });
  await new Promise((r) => { acsServer.listen(0, LOOPBACK, r); });
  acsUrl = `http://${LOOPBACK}:${acsServer.address().port}/saml/acs`;

  const cert = fs.readFileSync(spCertFile, 'utf8');
  spMetadataXml = samlify.ServiceProvider({
    entityID: SP_ENTITY,
    assertionConsumerService: [{ Binding: POST, Location: acsUrl }],
    signingCert: cert,
    encryptCert: cert,
    wantAssertionsSigned: true,
    authnRequestsSigned: false,
    nameIDFormat: ['urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress'],
  }).getMetadata();
});

after(() => acsServer?.close());

/** samlify SP objects bound to one IdP's metadata. */
function spFor(idpMetadataXml, { encrypted = false, spMetadata = spMetadataXml } = {}) {
  const sp = samlify.ServiceProvider({
    metadata: spMetadata,
    privateKey: spKey,
    encPrivateKey: spKey,
    isAssertionEncrypted: encrypted,
  });
  const idp = samlify.IdentityProvider({ metadata: idpMetadataXml, isAssertionEncrypted: encrypted });
  return { sp, idp };
}

/**
 * SP-initiated login through the browser: AuthnRequest (Redirect), login
 * form, auto-submit form, POST to our ACS. Returns {requestId, form,
 * acsPost, loginPage}.
 */
async function spInitiatedLogin(h, {
  username = 'alice', password = USERS.alice.password, relayState = 'rs-123', spMetadata, mangleUrl,
} = {}) {
  const { sp, idp } = spFor(await h.metadataXml(), { spMetadata });
  const { id, context } = sp.createLoginRequest(idp, 'redirect', relayState ? { relayState } : undefined);
  const url = mangleUrl ? mangleUrl(context) : context;
  const browser = new Browser();
  const res = await oidcLogin(browser, url, username, password);
  const form = parseForms(res.body, res.url).find((f) => f.id === 'saml-post');
  let acsPost = null;
  if (form) {
    const r = await browser.post(form.action, form.fields);
    assert.equal(r.status, 200);
    acsPost = r.json();
    assert.equal(acsPost.method, 'POST');
    assert.equal(acsPost.url, new URL(acsUrl).pathname);
  }
  return {
    requestId: id, res, form, acsPost, loginPage: res.loginPage,
  };
}

async function idpInitiated(h, relayState) {
  const u = new URL(`${h.url}/idp-init`);
  u.searchParams.set('user', 'alice');
  u.searchParams.set('password', USERS.alice.password);
  if (relayState) u.searchParams.set('relay_state', relayState);
  const r = await new Browser().get(u.href);
  assert.equal(r.status, 200, r.body);
  const form = parseForms(r.body, r.url).find((f) => f.id === 'saml-post');
  assert.ok(form, 'auto-submit form');
  return { form, xml: Buffer.from(form.fields.SAMLResponse, 'base64').toString('utf8') };
}

// ---------------------------------------------------------------------------
// Three peers (one per describe) run side by side; tests inside one
// describe share a peer (and its mode) and run one at a time.

const SEQ = { concurrency: false };

describe('saml-idp peer', { concurrency: true }, () => {
  describe('saml-idp peer: signed assertions (default)', SEQ, () => {
    let h;
    before(async () => {
      h = await startSamlIdp({ spMetadataXml, users: USERS });
    });

    it('serves well-formed IdP metadata with its signing cert and SSO endpoint', async () => {
      const xml = await h.metadataXml();
      const f = path.join(dir, 'idp-metadata.xml');
      fs.writeFileSync(f, xml);
      const r = xmllintWellFormed(f);
      assert.equal(r.status, 0, r.stderr);
      assert.match(xml, new RegExp(`entityID="${h.entityId.replace(/[.]/g, '\\.')}"`));
      assert.equal(h.entityId, `${h.url}/metadata`);
      assert.match(xml, /<IDPSSODescriptor\b/);
      assert.match(xml, new RegExp(`SingleSignOnService[^>]*Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"[^>]*Location="${h.ssoUrl}"`));
      const pem = fs.readFileSync(h.certFile, 'utf8').replace(/-----[^-]+-----|\s/g, '');
      assert.ok(xml.replace(/\s/g, '').includes(pem), 'metadata carries the IdP signing certificate');
    });

    it('SP-initiated login: form, signed assertion, attributes, InResponseTo, RelayState', async () => {
      const { requestId, form, acsPost, loginPage } = await spInitiatedLogin(h);
      assert.ok(parseForms(loginPage.body, loginPage.url).some((f) => f.id === 'login'));
      assert.ok(form, 'auto-submit form returned after login');
      assert.equal(form.action, acsUrl);
      assert.equal(form.method, 'POST');
      assert.equal(form.fields.RelayState, 'rs-123');
      assert.equal(acsPost.body.RelayState, 'rs-123');
      assert.equal(acsPost.body.SAMLResponse, form.fields.SAMLResponse);

      const xml = Buffer.from(acsPost.body.SAMLResponse, 'base64').toString('utf8');
      assert.equal(await h.lastResponse(), xml);
      assert.equal(attr(xml, 'Response', 'InResponseTo'), requestId);
      assert.equal(attr(xml, 'SubjectConfirmationData', 'InResponseTo'), requestId);
      assert.equal(attr(xml, 'Response', 'Destination'), acsUrl);
      assert.equal(attr(xml, 'SubjectConfirmationData', 'Recipient'), acsUrl);
      assert.equal(text(xml, 'Audience'), SP_ENTITY);
      assert.equal(attr(xml, 'StatusCode', 'Value'), SUCCESS);
      assert.ok(attr(xml, 'AuthnStatement', 'SessionIndex'));
      // --sign assertion: one signature, inside the Assertion.
      assert.equal(count(xml, /<ds:Signature\b/g), 1);
      assert.match(xml, /<saml:Assertion\b[^>]*>\s*<saml:Issuer\b[^>]*>[^<]*<\/saml:Issuer>\s*<ds:Signature\b/);

      const f = path.join(dir, 'resp.xml');
      fs.writeFileSync(f, xml);
      assert.equal(xmllintWellFormed(f).status, 0);
      assert.equal(xmlsecVerify(xml, h.certFile, dir), true, 'signature verifies with the IdP cert');
      assert.equal(xmlsecVerify(xml, spCertFile, dir), false, 'signature does not verify with another cert');
      const tampered = xml.replace('engineering &amp; &lt;ops&gt;', 'admins');
      assert.notEqual(tampered, xml);
      assert.equal(xmlsecVerify(tampered, h.certFile, dir), false, 'tampered attribute breaks the signature');

      const { sp, idp } = spFor(await h.metadataXml());
      const { extract } = await sp.parseLoginResponse(idp, 'post', { body: acsPost.body });
      assert.equal(extract.nameID, 'alice@example.test');
      assert.equal(extract.response.inResponseTo, requestId);
      assert.equal(extract.issuer, h.entityId);
      assert.equal(extract.attributes.email, 'alice@example.test');
      assert.deepEqual(extract.attributes.groups, ['staff', 'engineering & <ops>']);
      assert.equal(extract.attributes.displayName, 'Alice Example');
      assert.equal(extract.audience, SP_ENTITY);
    });

    it('wrong password: 401 and the login form again, no response issued', async () => {
      const statsBefore = await h.stats();
      const { res, form } = await spInitiatedLogin(h, { password: 'nope' });
      assert.equal(res.status, 401);
      assert.equal(form, undefined);
      assert.match(res.body, /id="error"/);
      assert.ok(parseForms(res.body, res.url).some((f) => f.id === 'login'));
      const stats = await h.stats();
      assert.equal(stats.responses, statsBefore.responses);
      assert.equal(stats.failed_logins, statsBefore.failed_logins + 1);
    });

    it('refuses an AuthnRequest from an unknown SP and a garbage SAMLRequest', async () => {
      const other = samlify.ServiceProvider({
        entityID: 'https://evil.test/sp',
        assertionConsumerService: [{ Binding: POST, Location: 'https://evil.test/acs' }],
      });
      const { idp } = spFor(await h.metadataXml());
      const { context } = other.createLoginRequest(idp, 'redirect');
      const r1 = await new Browser().get(context);
      assert.equal(r1.status, 400);
      assert.match(r1.body, /issuer/i);
      const r2 = await new Browser().get(`${h.ssoUrl}?SAMLRequest=bm90IHNhbWw%3D`);
      assert.equal(r2.status, 400);
      // Well-formed but schema-invalid (no ID, Version, IssueInstant),
      // Redirect-encoded by hand: refused by the xmllint schema check.
      const bad = `<samlp:AuthnRequest xmlns:samlp="${NS_PROTOCOL}" xmlns:saml="${NS_ASSERTION}"><saml:Issuer>${SP_ENTITY}</saml:Issuer></samlp:AuthnRequest>`;
      const enc = zlib.deflateRawSync(Buffer.from(bad)).toString('base64');
      const r3 = await new Browser().get(`${h.ssoUrl}?SAMLRequest=${encodeURIComponent(enc)}`);
      assert.equal(r3.status, 400);
      assert.match(r3.body, /ERR_INVALID_XML/);
      // The same request with the required attributes passes the schema.
      const good = bad.replace('<samlp:AuthnRequest ', `<samlp:AuthnRequest ID="_hand1" Version="2.0" IssueInstant="${new Date().toISOString()}" `);
      const enc2 = zlib.deflateRawSync(Buffer.from(good)).toString('base64');
      const r4 = await new Browser().get(`${h.ssoUrl}?SAMLRequest=${encodeURIComponent(enc2)}`);
      assert.equal(r4.status, 200, r4.body);
      assert.ok(parseForms(r4.body, r4.url).some((f) => f.id === 'login'));
    });

    it('fault modes change exactly what the response claims', async () => {
      const { sp, idp } = spFor(await h.metadataXml());
      const parse = (form) => sp.parseLoginResponse(idp, 'post', { body: form.fields });
      const now = Date.now();

      await h.setMode('good');
      const good = await idpInitiated(h, 'idp-rs');
      assert.equal(good.form.fields.RelayState, 'idp-rs');
      assert.equal(attr(good.xml, 'Response', 'InResponseTo'), null, 'unsolicited: no InResponseTo');
      assert.equal(attr(good.xml, 'SubjectConfirmationData', 'InResponseTo'), null);
      assert.ok(Date.parse(attr(good.xml, 'Conditions', 'NotOnOrAfter')) > now);
      assert.equal(xmlsecVerify(good.xml, h.certFile, dir), true);
      const ok = await parse(good.form);
      assert.equal(ok.extract.nameID, 'alice@example.test');

      const expectations = {
        expired: (xml) => {
          assert.ok(Date.parse(attr(xml, 'Conditions', 'NotOnOrAfter')) < now);
          assert.ok(Date.parse(attr(xml, 'SubjectConfirmationData', 'NotOnOrAfter')) < now);
        },
        wrong_audience: (xml) => assert.notEqual(text(xml, 'Audience'), SP_ENTITY),
        wrong_recipient: (xml) => {
          assert.notEqual(attr(xml, 'SubjectConfirmationData', 'Recipient'), acsUrl);
          assert.equal(attr(xml, 'Response', 'Destination'), acsUrl);
        },
        wrong_destination: (xml) => {
          assert.notEqual(attr(xml, 'Response', 'Destination'), acsUrl);
          assert.equal(attr(xml, 'SubjectConfirmationData', 'Recipient'), acsUrl);
        },
        unsigned: (xml) => assert.equal(count(xml, /Signature\b/g), 0),
        status_fail: (xml) => {
          assert.equal(attr(xml, 'StatusCode', 'Value'), 'urn:oasis:names:tc:SAML:2.0:status:Responder');
          assert.equal(count(xml, /<saml:Assertion\b/g), 0);
        },
      };
      for (const [mode, check] of Object.entries(expectations)) {
        assert.deepEqual(await h.setMode(mode), { mode });
        const { form, xml } = await idpInitiated(h);
        assert.equal(await h.lastResponse(), xml, mode);
        check(xml);
        if (mode !== 'unsigned') {
          assert.equal(xmlsecVerify(xml, h.certFile, dir), true, `${mode}: still signed by the IdP`);
        }
        if (['expired', 'unsigned', 'status_fail'].includes(mode)) {
          await assert.rejects(parse(form), `${mode}: samlify SP refuses it`);
        }
        // Everything not under test stays as in a good response.
        if (mode !== 'wrong_audience' && mode !== 'status_fail') assert.equal(text(xml, 'Audience'), SP_ENTITY, mode);
      }
      await assert.rejects(h.setMode('bogus'), /400/);
      await h.setMode('good');
      assert.equal((await h.stats()).mode, 'good');
    });
  });

  describe('saml-idp peer: --sign both --encrypt', SEQ, () => {
    let h;
    before(async () => {
      h = await startSamlIdp({ spMetadataXml, users: USERS, sign: 'both', encrypt: true });
    });

    it('encrypts the signed assertion for the SP and signs the Response', async () => {
      const { requestId, acsPost } = await spInitiatedLogin(h, { relayState: '' });
      assert.ok(acsPost);
      assert.equal(acsPost.body.RelayState, undefined);
      const xml = Buffer.from(acsPost.body.SAMLResponse, 'base64').toString('utf8');
      assert.equal(count(xml, /<saml:Assertion\b/g), 0);
      assert.equal(count(xml, /EncryptedAssertion\b/g), 2);
      assert.doesNotMatch(xml, /alice@example\.test/);
      assert.equal(attr(xml, 'Response', 'InResponseTo'), requestId);
      assert.match(xml, /<samlp:Response\b[^>]*>\s*<saml:Issuer\b[^>]*>[^<]*<\/saml:Issuer>\s*<ds:Signature\b/);
      assert.equal(xmlsecVerify(xml, h.certFile, dir), true, 'Response signature verifies');

      // xmlsec1 decrypts with the SP key; the plaintext assertion is signed too.
      const encFile = path.join(dir, 'enc.xml');
      fs.writeFileSync(encFile, xml);
      const dec = spawnSync('xmlsec1', ['--decrypt', '--privkey-pem', path.join(dir, 'sp-key.pem'), encFile], { encoding: 'utf8' });
      assert.equal(dec.status, 0, dec.stderr);
      const plain = dec.stdout;
      assert.match(plain, /<saml:Assertion\b/);
      assert.equal(count(plain, /<ds:Signature\b/g), 2);

      const { sp, idp } = spFor(await h.metadataXml(), { encrypted: true });
      const { extract } = await sp.parseLoginResponse(idp, 'post', { body: acsPost.body });
      assert.equal(extract.nameID, 'alice@example.test');
      assert.deepEqual(extract.attributes.groups, ['staff', 'engineering & <ops>']);
      assert.equal(extract.response.inResponseTo, requestId);
    });
  });

  describe('saml-idp peer: signed AuthnRequests (SP metadata AuthnRequestsSigned="true")', SEQ, () => {
    let h;
    let signedSpMetadata;
    before(async () => {
      // Shaped like provgate's own pg_saml_sp_metadata() output (md:
      // prefix, XML declaration, SLO, both KeyDescriptors).
      const b64 = fs.readFileSync(spCertFile, 'utf8').replace(/-----[^-]+-----|\s/g, '');
      const kd = (use) => `    <md:KeyDescriptor use="${use}"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>${b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>\n`;
      signedSpMetadata = '<?xml version="1.0" encoding="UTF-8"?>\n'
        + `<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="${SP_ENTITY}">\n`
        + `  <md:SPSSODescriptor AuthnRequestsSigned="true" WantAssertionsSigned="true" protocolSupportEnumeration="${NS_PROTOCOL}">\n`
        + `${kd('signing')}${kd('encryption')}`
        + `    <md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="${acsUrl.replace('/acs', '/slo')}"/>\n`
        + '    <md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>\n'
        + `    <md:AssertionConsumerService index="0" isDefault="true" Binding="${POST}" Location="${acsUrl}"/>\n`
        + '  </md:SPSSODescriptor>\n</md:EntityDescriptor>\n';
      h = await startSamlIdp({ spMetadataXml: signedSpMetadata, users: USERS, sign: 'response' });
    });

    it('publishes WantAuthnRequestsSigned and verifies the Redirect signature', async () => {
      assert.match(await h.metadataXml(), /WantAuthnRequestsSigned="true"/);
      const { requestId, acsPost, res } = await spInitiatedLogin(h, { spMetadata: signedSpMetadata, relayState: 'signed-rs' });
      assert.ok(acsPost, res.body);
      assert.equal(acsPost.body.RelayState, 'signed-rs');
      const xml = Buffer.from(acsPost.body.SAMLResponse, 'base64').toString('utf8');
      assert.equal(attr(xml, 'Response', 'InResponseTo'), requestId);
      assert.equal(text(xml, 'Audience'), SP_ENTITY);
      assert.equal(attr(xml, 'Response', 'Destination'), acsUrl);
      // alice has her own nameid_format; the SP's persistent one is not used.
      assert.equal(attr(xml, 'NameID', 'Format'), USERS.alice.nameid_format);
      // --sign response: one signature, on the Response.
      assert.equal(count(xml, /<ds:Signature\b/g), 1);
      assert.match(xml, /<samlp:Response\b[^>]*>\s*<saml:Issuer\b[^>]*>[^<]*<\/saml:Issuer>\s*<ds:Signature\b/);
      assert.equal(xmlsecVerify(xml, h.certFile, dir), true);
    });

    it('refuses a Redirect request whose RelayState was changed after signing, or that is unsigned', async () => {
      const changed = await spInitiatedLogin(h, {
        spMetadata: signedSpMetadata,
        relayState: 'orig',
        mangleUrl: (u) => u.replace('RelayState=orig', 'RelayState=evil'),
      });
      assert.equal(changed.res.status, 400);
      assert.match(changed.res.body, /SIGNATURE/);
      const unsigned = await spInitiatedLogin(h, {
        spMetadata: signedSpMetadata,
        mangleUrl: (u) => { const x = new URL(u); x.searchParams.delete('Signature'); x.searchParams.delete('SigAlg'); return x.href; },
      });
      assert.equal(unsigned.res.status, 400);
      assert.match(unsigned.res.body, /SIG_ALG|SIGNATURE/);
    });
  });
});
