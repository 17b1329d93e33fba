// SAML IdP metadata from a URL (idp_metadata_url): fetched by the worker
// without blocking, retried quickly while the metadata server is down,
// refreshed every metadata_refresh_s, and a refused refresh (DOCTYPE,
// oversized, another entityID, HTTP error) keeps the last good copy.
// The metadata server is a real HTTP server on 127.0.0.1 serving the real
// samlify IdP's metadata; the IdP, Redis, SCIM and nginx are real too.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { cleanupAll, freePort, nginxConf, sleep } from './lib/harness.mjs';
import { startSamlIdp } from './lib/saml.mjs';
import { startEnv, provgateConfig, httpBlock, MODULE, nginxEnv, sanitizerReports } from './gw/env.mjs';
import { FIX, idpMetadata, SAML_USERS, toAcs } from './gw/saml-env.mjs';

const REFRESH_S = 1;

/* The IdP metadata server: mode picks what GET /md answers. Not listening
 * until start() (the IdP is "down" when the gateway starts). */
function metadataServer(port, idpPort) {
  const good = idpMetadata(idpPort, { slo: true });
  const otherCert = fs.readFileSync(path.join(FIX, 'other-cert.pem'), 'utf8')
    .split('\n').filter((l) => l && !l.startsWith('-----')).join('');
  const goodCert = fs.readFileSync(path.join(FIX, 'idp-cert.pem'), 'utf8')
    .split('\n').filter((l) => l && !l.startsWith('-----')).join('');
  const bodies = {
    good,
    doctype: good.replace('<md:EntityDescriptor',
      '<!DOCTYPE md:EntityDescriptor [<!ENTITY x "y">]>\n<md:EntityDescriptor'),
    big: good.replace('</md:EntityDescriptor>', `<!--${'a'.repeat(600 * 1024)}--></md:EntityDescriptor>`),
    other_entity: good.replace(/entityID="[^"]*"/, 'entityID="https://evil.example.test/metadata"'),
    other_key: good.replace(goodCert, otherCert),
    // the same metadata, other bytes: applied as a new SP on each switch
    good_alt: `${good}<!-- another copy -->\n`,
  };
  const s = {
    mode: 'good', hits: 0, server: null,
    start: () => new Promise((resolve) => {
      s.server = http.createServer((req, res) => {
        s.hits += 1;
        if (s.mode === 'error') {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end('down');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/samlmetadata+xml' });
        res.end(bodies[s.mode]);
      });
      s.server.listen(port, '127.0.0.1', resolve);
    }),
    stop: () => new Promise((resolve) => { if (s.server) s.server.close(resolve); else resolve(); }),
    /* serve mode and wait until the gateway has fetched at least once
     * after the change (two more requests: the first one after the switch
     * has been answered and handled) */
    serve: async (mode) => {
      s.mode = mode;
      const want = s.hits + 2;
      const end = Date.now() + 4 * REFRESH_S * 1000 + 5000;
      while (s.hits < want) {
        if (Date.now() > end) throw new Error(`no metadata fetch after switching to ${mode}`);
        await sleep(50);
      }
    },
  };
  return s;
}

function samlCorp(env, mdPort) {
  return {
    type: 'saml',
    sp_entity_id: `${env.base}/saml/sp`,
    acs_url: `${env.base}/saml/acs`,
    slo_url: `${env.base}/saml/slo`,
    sp_key_file: path.join(FIX, 'sp-key.pem'),
    sp_cert_file: path.join(FIX, 'sp-cert.pem'),
    idp_metadata_url: `http://127.0.0.1:${mdPort}/md`,
    metadata_refresh_s: REFRESH_S,
    http_timeout_ms: 2000,
  };
}

describe('SAML IdP metadata from idp_metadata_url', () => {
  let e;
  let idp;
  let md;
  let mdPort;
  before(async () => {
    const idpPort = await freePort();
    mdPort = await freePort();
    md = metadataServer(mdPort, idpPort);
    e = await startEnv(undefined, {
      workers: 1,
      cfgOver: (env) => ({ idps: { ...provgateConfig(env).idps, corp: samlCorp(env, mdPort) } }),
      extraServer: `
        location = /saml/metadata { provgate_saml_metadata corp; }
        location = /saml/acs { provgate_saml_acs; }
        location = /saml/slo { provgate_saml_slo corp; }
        location = /saml/logout { provgate_logout; }
        location /sapp/ { provgate saml:corp; provgate_app demoapp; proxy_pass http://echo; }`,
    });
    // the SP metadata endpoint needs no IdP metadata: the IdP imports it
    const sp = await e.browser().request('GET', `${e.base}/saml/metadata`);
    assert.equal(sp.status, 200);
    assert.match(sp.body, new RegExp(`entityID="${e.base}/saml/sp"`));
    idp = await startSamlIdp({
      port: idpPort, spMetadataXml: sp.body, users: SAML_USERS,
      keyFile: path.join(FIX, 'idp-key.pem'), certFile: path.join(FIX, 'idp-cert.pem'),
      entityId: `http://127.0.0.1:${idpPort}/metadata`,
    });
  });
  after(async () => {
    const reports = e ? sanitizerReports(e.prefix) : [];
    if (md) await md.stop();
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  const signIn = async () => {
    const { b, acs } = await toAcs(e);
    const r = await b.request('POST', acs.action, { form: acs.fields });
    return { b, r };
  };

  test('while the metadata server is down, SAML sign-in and SLO answer 503 idp_unavailable (audited), nginx stays up', async () => {
    await sleep(1500); // a few failed fetches (connection refused) have happened
    const b = e.browser();
    const r = await b.request('GET', `${e.base}/sapp/hello`, { headers: { accept: 'text/html' } });
    assert.equal(r.status, 503, r.body.slice(0, 300));
    assert.match(r.body, /idp_unavailable/);
    const a = e.audit().find((x) => x.type === 'login.start' && x.reason === 'idp_unavailable');
    assert.ok(a, 'audited like other login.start failures');
    assert.equal(a.idp, 'corp');
    const slo = await b.request('GET', `${e.base}/saml/slo?SAMLRequest=abc`);
    assert.equal(slo.status, 503, slo.body.slice(0, 300));
    assert.match(slo.body, /idp_unavailable/);
    // the SP metadata endpoint still works
    assert.equal((await b.request('GET', `${e.base}/saml/metadata`)).status, 200);
    assert.match(e.nginx.errorLog(), /\[warn\].*saml idp corp: metadata fetch failed/);
    assert.doesNotMatch(e.nginx.errorLog(), /\[(alert|emerg)\]|signal \d+/);
  });

  test('once the metadata server is up, sign-in works end-to-end within the retry interval', async () => {
    const t0 = Date.now();
    await md.start();
    let r;
    for (;;) {
      r = await e.browser().request('GET', `${e.base}/sapp/hello`, { headers: { accept: 'text/html' } });
      if (r.status === 302 || Date.now() - t0 > REFRESH_S * 1000 + 3000) break;
      await sleep(100);
    }
    assert.equal(r.status, 302, `still ${r.status} after ${Date.now() - t0} ms`);
    assert.ok(Date.now() - t0 <= REFRESH_S * 1000 + 3000);
    assert.equal(new URL(r.location).origin, idp.url);
    assert.match(e.nginx.errorLog(), /saml idp corp: metadata loaded from http:\/\/127\.0\.0\.1:\d+\/md \(entityID /);
    const { b, r: acs } = await signIn();
    assert.equal(acs.status, 302, acs.body.slice(0, 400));
    const page = await b.get(`${e.base}/sapp/hello`);
    assert.equal(page.status, 200);
    assert.ok(e.audit().some((x) => x.type === 'login.success' && x.idp === 'corp'));
    // Single Logout was set up from the fetched metadata: a signed
    // LogoutRequest to the IdP's SingleLogoutService
    const out = await b.request('GET', `${e.base}/saml/logout`);
    assert.equal(out.status, 302, out.body.slice(0, 300));
    const loc = new URL(out.location);
    assert.equal(`${loc.origin}${loc.pathname}`, `${idp.url}/slo`);
    assert.ok(loc.searchParams.get('SAMLRequest'));
    assert.ok(loc.searchParams.get('Signature'));
  });

  test('sign-ins keep working while refreshes swap the SP under them', async () => {
    const swapsBefore = (e.nginx.errorLog().match(/metadata loaded from/g) || []).length;
    let stop = false;
    const flipper = (async () => {
      let alt = true;
      while (!stop) {
        md.mode = alt ? 'good_alt' : 'good';
        alt = !alt;
        await sleep(REFRESH_S * 1000 + 100);
      }
      md.mode = 'good';
    })();
    const results = [];
    const worker = async () => {
      const end = Date.now() + 3 * REFRESH_S * 1000 + 1000;
      while (Date.now() < end) {
        const { r } = await signIn();
        results.push(r.status);
      }
    };
    try {
      await Promise.all([worker(), worker(), worker()]);
    } finally {
      stop = true;
      await flipper;
    }
    assert.ok(results.length >= 6, `only ${results.length} sign-ins`);
    assert.deepEqual([...new Set(results)], [302], results.join(' '));
    const swaps = (e.nginx.errorLog().match(/metadata loaded from/g) || []).length - swapsBefore;
    assert.ok(swaps >= 2, `the SP was swapped ${swaps} times`);
    assert.doesNotMatch(e.nginx.errorLog(), /\[(alert|emerg)\]|signal \d+/);
  });

  for (const [mode, why] of [
    ['doctype', /metadata refused: IdP metadata: DOCTYPE or NUL refused \(keeping the last good metadata\)/],
    ['big', /metadata fetch failed: too_large \(document over the size cap\) \(keeping the last good metadata\)/],
    ['other_entity', /metadata refused: IdP metadata: entityID "https:\/\/evil\.example\.test\/metadata" is not the expected/],
    ['error', /metadata URL answered HTTP 500 \(keeping the last good metadata\)/],
  ]) {
    test(`a refresh serving ${mode} is refused and the last good metadata stays in use`, async () => {
      const off = e.nginx.errorLogSize();
      try {
        await md.serve(mode);
        assert.match(e.nginx.errorLogSince(off), why);
        const { r } = await signIn();
        assert.equal(r.status, 302, r.body.slice(0, 400));
      } finally {
        await md.serve('good');
      }
    });
  }

  test('a good refresh is really applied: a rotated (wrong) signing key refuses the IdP\'s answers, the right one restores them', async () => {
    try {
      await md.serve('other_key');
      const { r } = await signIn();
      assert.equal(r.status, 401, r.body.slice(0, 400));
      assert.match(r.body, /signature/);
    } finally {
      await md.serve('good');
    }
    const { r } = await signIn();
    assert.equal(r.status, 302, r.body.slice(0, 400));
    assert.doesNotMatch(e.nginx.errorLog(), /\[(alert|emerg)\]|signal \d+/);
  });

  test('nginx -t: URL-only passes without fetching; neither source, or a bad URL, is a clear config error', () => {
    let n = 0;
    const check = (corp) => {
      n += 1;
      // next to the real one: its relative paths (session key, ...) resolve
      const cfgFile = path.join(e.cfgDir, `saml-url-t-${n}.json`);
      const cfg = JSON.parse(fs.readFileSync(e.cfgFile, 'utf8'));
      cfg.idps.corp = corp;
      fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));
      const prefix = path.join(e.dir, 'nginx-t'); // as e.nginxTest() uses
      const conf = nginxConf({
        prefix,
        modules: [MODULE],
        http: httpBlock({ ...e, cfgFile }, `
          location = /saml/metadata { provgate_saml_metadata corp; }
          location = /saml/slo { provgate_saml_slo corp; }`),
      });
      return e.nginxTest(conf);
    };
    const base = samlCorp(e, mdPort);
    // unreachable URL: nginx -t does not fetch, it checks keys, cert and URL form
    const ok = check({ ...base, idp_metadata_url: 'http://127.0.0.1:9/never-fetched' });
    assert.equal(ok.code, 0, ok.output);
    const { idp_metadata_url: _u, ...neither } = base;
    const { metadata_refresh_s: _r, http_timeout_ms: _h, ...bare } = neither;
    const none = check(bare);
    assert.notEqual(none.code, 0);
    assert.match(none.output, /\$\.idps\.corp: one of idp_metadata_file and idp_metadata_url is required/);
    const bad = check({ ...base, idp_metadata_url: 'ftp://127.0.0.1/md' });
    assert.notEqual(bad.code, 0);
    assert.match(bad.output, /\$\.idps\.corp\.idp_metadata_url: must be an absolute http:\/\/ or https:\/\/ URL/);
    const rel = check({ ...base, idp_metadata_url: '/md.xml' });
    assert.notEqual(rel.code, 0);
    assert.match(rel.output, /\$\.idps\.corp\.idp_metadata_url/);
    const orphan = check({ ...bare, idp_metadata_file: path.join(FIX, 'idp-metadata.xml'), metadata_refresh_s: 5 });
    assert.notEqual(orphan.code, 0);
    assert.match(orphan.output, /metadata_refresh_s: only meaningful with idp_metadata_url/);
    // a bad key is still caught without any IdP metadata
    const key = check({ ...base, sp_key_file: path.join(FIX, 'sp-cert.pem') });
    assert.notEqual(key.code, 0);
    assert.match(key.output, /\$\.idps\.corp/);
  });
});
