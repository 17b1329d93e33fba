// SAML identity providers in the gateway's configuration: the SP metadata
// endpoint (imported by a real IdP), and nginx -t refusing mixed-up types.
// SAML sign-in itself is not wired into the gateway yet.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { cleanupAll, nginxConf, tempDir } from './lib/harness.mjs';
import { startSamlIdp } from './lib/saml.mjs';
import { startEnv, provgateConfig, httpBlock, MODULE, sanitizerReports } from './gw/env.mjs';

const FIX = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../unit/fixtures/saml');

function samlIdp(e) {
  return {
    type: 'saml',
    sp_entity_id: `${e.base}/saml/sp`,
    acs_url: `${e.base}/saml/acs`,
    sp_key_file: path.join(FIX, 'sp-key.pem'),
    sp_cert_file: path.join(FIX, 'sp-cert.pem'),
    idp_metadata_file: path.join(FIX, 'idp-metadata.xml'),
  };
}

describe('SAML identity providers in the configuration', () => {
  let e;
  before(async () => {
    e = await startEnv(undefined, {
      workers: 1,
      cfgOver: (env) => ({ idps: { ...provgateConfig(env).idps, corp: samlIdp(env) } }),
      extraServer: 'location = /saml/metadata { provgate_saml_metadata corp; }',
    });
  });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  test('the SP metadata endpoint serves well-formed metadata a real IdP imports', async () => {
    const r = await e.browser().request('GET', `${e.base}/saml/metadata`);
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^application\/samlmetadata\+xml/);
    assert.match(r.body, new RegExp(`entityID="${e.base}/saml/sp"`));
    assert.ok(r.body.includes(`Location="${e.base}/saml/acs"`), r.body);
    const certB64 = fs.readFileSync(path.join(FIX, 'sp-cert.pem'), 'utf8')
      .split('\n').filter((l) => l && !l.startsWith('-----')).join('');
    assert.ok(r.body.replace(/\s/g, '').includes(certB64), 'the SP certificate is published');
    const dir = tempDir('pg-saml-md-');
    const file = path.join(dir, 'sp.xml');
    fs.writeFileSync(file, r.body);
    const lint = spawnSync('xmllint', ['--noout', '--nonet', file], { encoding: 'utf8' });
    assert.equal(lint.status, 0, lint.stderr);
    // valid against the OASIS SAML 2.0 metadata schema (Debian opensaml-schemas,
    // imports resolved offline through a catalog to xmltooling-schemas)
    const catalog = path.join(dir, 'catalog.xml');
    const W3 = [
      ['http://www.w3.org/TR/2002/REC-xmldsig-core-20020212/xmldsig-core-schema.xsd', 'xmldsig-core-schema.xsd'],
      ['http://www.w3.org/TR/2002/REC-xmlenc-core-20021210/xenc-schema.xsd', 'xenc-schema.xsd'],
      ['http://www.w3.org/2001/xml.xsd', 'xml.xsd'],
    ];
    fs.writeFileSync(catalog, `<?xml version="1.0"?>
<catalog xmlns="urn:oasis:names:tc:entity:xmlns:xml:catalog">
${W3.map(([u, f]) => `  <system systemId="${u}" uri="file:///usr/share/xml/xmltooling/${f}"/>`).join('\n')}
</catalog>`);
    const xsd = (f) => spawnSync('xmllint', ['--noout', '--nonet', '--schema',
      '/usr/share/xml/opensaml/saml-schema-metadata-2.0.xsd', f],
    { encoding: 'utf8', env: { ...process.env, XML_CATALOG_FILES: catalog } });
    const v = xsd(file);
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stderr, /validates/);
    // control: the same check refuses metadata without its entityID
    const broken = path.join(dir, 'broken.xml');
    fs.writeFileSync(broken, r.body.replace(/ entityID="[^"]*"/, ''));
    assert.notEqual(xsd(broken).status, 0, 'the schema check bites');
    // a real SAML IdP (samlify) loads it as its service provider
    const idp = await startSamlIdp({
      spMetadataFile: file,
      users: { alice: { password: 'pw', nameid: 'alice@example.com', attributes: { email: ['alice@example.com'] } } },
    });
    assert.ok(idp.port > 0);
    await idp.stop();
  });

  test('nginx -t refuses a SAML provider where OIDC is expected, and the reverse', () => {
    const bad = (extra) => {
      const prefix = path.join(tempDir('pg-saml-t-'), 'nginx');
      const conf = nginxConf({ prefix, modules: [MODULE], http: httpBlock(e, extra) });
      fs.mkdirSync(path.join(prefix, 'conf'), { recursive: true });
      fs.mkdirSync(path.join(prefix, 'logs'), { recursive: true });
      const f = path.join(prefix, 'conf', 'nginx.conf');
      fs.writeFileSync(f, conf);
      return spawnSync('/usr/sbin/nginx', ['-t', '-p', `${prefix}/`, '-c', f, '-e', path.join(prefix, 'logs', 'error.log')],
        { encoding: 'utf8', env: { ...process.env, ...(process.env.PROVGATE_NGINX_PRELOAD ? { LD_PRELOAD: process.env.PROVGATE_NGINX_PRELOAD, ASAN_OPTIONS: 'detect_leaks=0' } : {}) } });
    };
    const a = bad('location /s { provgate oidc:corp; }');
    assert.notEqual(a.status, 0);
    assert.match(a.stderr, /"corp" is not an OpenID Connect provider/);
    const c = bad('location /s2 { provgate saml:main; }');
    assert.notEqual(c.status, 0);
    assert.match(c.stderr, /"main" is not a SAML provider/);
    const b = bad('location = /m { provgate_saml_metadata main; }');
    assert.notEqual(b.status, 0);
    assert.match(b.stderr, /"main" is not a SAML identity provider/);
  });
});
