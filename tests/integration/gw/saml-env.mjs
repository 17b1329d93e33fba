// A gateway with a SAML IdP ("corp") wired to the real samlify IdP peer.
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { freePort, tempDir, parseForms, submitForm } from '../lib/harness.mjs';
import { startSamlIdp } from '../lib/saml.mjs';
import { startEnv, provgateConfig } from './env.mjs';

export const FIX = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../unit/fixtures/saml');

/* IdP metadata for the samlify peer that will run on port (fixture cert);
 * slo: with its HTTP-Redirect SingleLogoutService. */
export function idpMetadata(port, { slo = false } = {}) {
  const cert = fs.readFileSync(path.join(FIX, 'idp-cert.pem'), 'utf8')
    .split('\n').filter((l) => l && !l.startsWith('-----')).join('');
  const base = `http://127.0.0.1:${port}`;
  return `<?xml version="1.0"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="${base}/metadata">
  <md:IDPSSODescriptor WantAuthnRequestsSigned="false" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="signing"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>${cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    ${slo ? `<md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="${base}/slo"/>` : ''}
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


/* Start the gateway (SAML provider "corp" on /sapp/) and the IdP peer.
 * slo: Single Logout configured (slo_url /saml/slo, provgate_saml_slo,
 * provgate_logout at /saml/logout) and published in the IdP metadata;
 * workers: nginx worker processes; corpExtra / mainExtra: more fields of the
 * "corp" / "main" IdP objects; extraServer: more nginx server{} lines. */
export async function startSamlEnv({
  slo = false, workers = 1, corpExtra = {}, mainExtra = {}, extraServer = '',
} = {}) {
  const idpPort = await freePort();
  const dir = tempDir('pg-saml-login-');
  const mdFile = path.join(dir, 'idp-metadata.xml');
  fs.writeFileSync(mdFile, idpMetadata(idpPort, { slo }));
  const e = await startEnv(undefined, {
    workers,
    cfgOver: (env) => ({
      idps: {
        ...provgateConfig(env).idps,
        main: { ...provgateConfig(env).idps.main, ...mainExtra },
        corp: {
          type: 'saml',
          sp_entity_id: `${env.base}/saml/sp`,
          acs_url: `${env.base}/saml/acs`,
          sp_key_file: path.join(FIX, 'sp-key.pem'),
          sp_cert_file: path.join(FIX, 'sp-cert.pem'),
          idp_metadata_file: mdFile,
          ...(slo ? { slo_url: `${env.base}/saml/slo` } : {}),
          ...corpExtra,
        },
      },
    }),
    extraServer: `
        location = /saml/metadata { provgate_saml_metadata corp; }
        location = /saml/acs { provgate_saml_acs; }
        location /sapp/ { provgate saml:corp; provgate_app demoapp; proxy_pass http://echo; }${slo ? `
        location = /saml/slo { provgate_saml_slo corp; }
        location = /saml/logout { provgate_logout; }` : ''}
        ${extraServer}`,
  });
  const sp = await e.browser().request('GET', `${e.base}/saml/metadata`);
  assert.equal(sp.status, 200);
  const idp = await startSamlIdp({
    port: idpPort, spMetadataXml: sp.body, users: SAML_USERS,
    keyFile: path.join(FIX, 'idp-key.pem'), certFile: path.join(FIX, 'idp-cert.pem'),
    entityId: `http://127.0.0.1:${idpPort}/metadata`,
  });
  return { e, idp, idpPort, dir };
}

/* Sign in at the IdP; returns the browser and the auto-submit form that
 * would POST the SAML response to our ACS. */
export async function toAcs(e, user = 'sam', startPath = '/sapp/hello') {
  const b = e.browser();
  const page = await b.get(`${e.base}${startPath}`);
  const login = parseForms(page.body, page.url).find((f) => f.inputs.some((i) => i.type === 'password'));
  assert.ok(login, page.body.slice(0, 300));
  const posted = await submitForm(b, login, { username: user, password: SAML_USERS[user].password });
  const acs = parseForms(posted.body, posted.url).find((f) => f.action === `${e.base}/saml/acs`);
  assert.ok(acs, `auto-submit form to our ACS expected: ${posted.status} ${posted.body.slice(0, 300)}`);
  return { b, acs };
}
