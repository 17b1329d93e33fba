// `nginx -t` validates the provgate configuration: a bad file fails with the
// file, the JSON path or line, and the reason; bad directives fail with the
// nginx.conf line.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { tempDir, nginxConf, nginxTest, cleanupAll } from './lib/harness.mjs';
import { MODULE, DEFAULT_POLICIES, nginxEnv } from './gw/env.mjs';

function baseConfig() {
  return {
    redis: { host: '127.0.0.1', port: 6399 },
    session: { key_file: 'session.key', cookie_secure: false },
    idps: {
      main: {
        type: 'oidc', issuer: 'http://127.0.0.1:9000', client_id: 'c', client_secret: 's',
        redirect_uri: 'http://127.0.0.1:8080/provgate/callback', scopes: ['openid', 'email'],
      },
    },
    targets: {
      demoapp: {
        type: 'scim', base_url: 'http://127.0.0.1:9100/scim/v2', auth: { type: 'bearer', token: 't' },
        attributes: { userName: '${username}' },
      },
    },
    policy_files: ['policies.json'],
  };
}

function setup(cfg, { server = '', top = null, raw = null } = {}) {
  const dir = tempDir('pg-cfg-');
  fs.writeFileSync(path.join(dir, 'session.key'), crypto.randomBytes(48).toString('hex'));
  fs.writeFileSync(path.join(dir, 'policies.json'), JSON.stringify(DEFAULT_POLICIES));
  const file = path.join(dir, 'provgate.json');
  fs.writeFileSync(file, raw !== null ? raw : JSON.stringify(cfg, null, 2));
  const http = top !== null ? top : `provgate_config ${file};
    server {
        listen 127.0.0.1:1;
        location = /cb { provgate_callback; }
        location / { provgate oidc:main; provgate_app demoapp; return 204; }
        ${server}
    }`;
  const prefix = path.join(dir, 'nginx');
  const conf = nginxConf({ prefix, modules: [MODULE], http });
  const r = nginxTest(conf, { prefix, env: nginxEnv(prefix) });
  return { ...r, file, confFile: path.join(prefix, 'conf', 'nginx.conf') };
}

describe('nginx -t validates provgate configuration', () => {
  after(cleanupAll);

  test('a good configuration passes', () => {
    const r = setup(baseConfig());
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /test is successful/);
  });

  test('JSON syntax error: file, line and column', () => {
    const r = setup(null, { raw: '{\n  "redis": {\n    "port": 63,\n  }\n}\n' });
    assert.notEqual(r.code, 0);
    assert.ok(r.output.includes(`${r.file}:4:`), r.output);
    assert.ok(r.output.includes(`${r.confFile}:`), r.output);
  });

  test('unknown field: JSON path', () => {
    const c = baseConfig();
    c.idps.main.client_secrett = 'x';
    const r = setup(c);
    assert.notEqual(r.code, 0);
    assert.ok(r.output.includes(r.file), r.output);
    assert.match(r.output, /\$\.idps\.main\.client_secrett/);
  });

  test('alg none is refused', () => {
    const c = baseConfig();
    c.idps.main.allowed_algs = ['none'];
    const r = setup(c);
    assert.notEqual(r.code, 0);
    assert.match(r.output, /allowed_algs/);
  });

  test('a policy naming an unknown target is refused', () => {
    const c = baseConfig();
    delete c.targets.demoapp;
    c.targets.other = baseConfig().targets.demoapp;
    const r = setup(c, { server: '' , top: null });
    assert.notEqual(r.code, 0);
    assert.match(r.output, /demoapp/);
  });

  test('provgate names an undefined identity provider', () => {
    const r = setup(baseConfig(), { server: 'location /x { provgate oidc:nope; }' });
    assert.notEqual(r.code, 0);
    assert.match(r.output, /identity provider "nope" is not defined/);
    assert.match(r.output, /nginx\.conf:\d+/);
  });

  test('provgate_app names an undefined target', () => {
    const r = setup(baseConfig(), { server: 'location /y { provgate oidc:main; provgate_app nope; }' });
    assert.notEqual(r.code, 0);
    assert.match(r.output, /target "nope" is not defined/);
  });

  test('bad provgate argument', () => {
    const r = setup(baseConfig(), { server: 'location /z { provgate saml; }' });
    assert.notEqual(r.code, 0);
    assert.match(r.output, /expected "oidc:<idp>", "saml:<idp>" or "off"/);
  });

  test('provgate before provgate_config', () => {
    const r = setup(baseConfig(), {
      top: 'server { listen 127.0.0.1:1; location / { provgate oidc:main; } }',
    });
    assert.notEqual(r.code, 0);
    assert.match(r.output, /must come before/);
  });

  test('a missing config file names the file', () => {
    const r = setup(baseConfig(), { top: 'provgate_config /nonexistent/provgate.json;' });
    assert.notEqual(r.code, 0);
    assert.match(r.output, /\/nonexistent\/provgate\.json/);
  });
});
