// SAML helpers for provgate integration tests: start the real SAML IdP
// peer (tests/peers/saml-idp.mjs) and talk to its admin API. Built on the
// process management of harness.mjs (process groups, cleanup, watchdog).

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import {
  PEERS_DIR, LOOPBACK, freePort, startProcess, tempDir, jsonRequest,
} from './harness.mjs';

/** require() resolving from tests/peers (samlify and friends live there). */
export const peerRequire = createRequire(path.join(PEERS_DIR, 'package.json'));

const XSD_FILES = ['saml-schema-protocol-2.0.xsd', 'saml-schema-assertion-2.0.xsd',
  'xmldsig-core-schema.xsd', 'xenc-schema.xsd', 'XMLSchema.dtd', 'datatypes.dtd'];

/**
 * A samlify schema validator ({validate(xml) -> Promise}) that runs Debian's
 * xmllint (libxml2-utils) against the SAML 2.0 protocol schema; the XSDs
 * come from @authenio/samlify-node-xmllint (written to a temp dir). Same
 * validator as the IdP peer uses. Pass to samlify.setSchemaValidator().
 */
export function samlSchemaValidator(t) {
  const dir = tempDir('pg-saml-xsd-', t);
  for (const f of XSD_FILES) {
    fs.writeFileSync(path.join(dir, f), peerRequire(`@authenio/samlify-node-xmllint/build/schemas/${f}.js`).default);
  }
  const schema = path.join(dir, 'saml-schema-protocol-2.0.xsd');
  return {
    validate: (xml) => new Promise((resolve, reject) => {
      const child = execFile('xmllint', ['--noout', '--nonet', '--schema', schema, '-'],
        { timeout: 10000, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
          if (!err) { resolve('SUCCESS_VALIDATE_XML'); return; }
          if (err.code === 'ENOENT') reject(new Error('xmllint not found: install Debian libxml2-utils'));
          else reject(new Error(`ERR_EXCEPTION_VALIDATE_XML: ${String(stderr).trim().slice(0, 2000)}`));
        });
      child.stdin.on('error', () => { /* reported by the callback */ });
      child.stdin.end(xml);
    }),
  };
}

/**
 * Start the SAML 2.0 IdP peer.
 *   port            listen port (default: a free one)
 *   spMetadataFile  path of the SP metadata, or
 *   spMetadataXml   the SP metadata text (written to a temp file)
 *   users           {username: {password, nameid, nameid_format?, attributes: {name: [values]}}}
 *   sign            'assertion' (default) | 'response' | 'both'
 *   encrypt         encrypt assertions for the SP (needs its encryption cert)
 *   entityId        IdP entity id (default http://127.0.0.1:PORT/metadata)
 *   keyFile/certFile IdP signing key/cert (PEM); generated there if missing
 *   t, logFile, dir as for the other peers.
 * Returns {proc, port, url, entityId, metadataUrl, ssoUrl, dir,
 * metadataXml(), setMode(mode), lastResponse(), stats(), stop()}.
 * lastResponse() resolves with the XML text of the last Response (base64
 * decoded; after encryption and signing), or null if none was issued yet.
 */
export async function startSamlIdp({
  port, spMetadataFile, spMetadataXml, users = {}, sign = 'assertion', encrypt = false,
  entityId, keyFile, certFile, dir, t, logFile,
} = {}) {
  if (!fs.existsSync(path.join(PEERS_DIR, 'node_modules', 'samlify'))) {
    throw new Error(`peer dependencies missing: run "cd ${PEERS_DIR} && npm install --no-audit --no-fund"`);
  }
  const d = dir || tempDir('pg-saml-idp-', t);
  const p = port || await freePort();
  const url = `http://${LOOPBACK}:${p}`;
  const eid = entityId || `${url}/metadata`;
  let spFile = spMetadataFile;
  if (!spFile) {
    if (!spMetadataXml) throw new Error('startSamlIdp: spMetadataFile or spMetadataXml is required');
    spFile = path.join(d, 'sp-metadata.xml');
    fs.writeFileSync(spFile, spMetadataXml);
  }
  const usersFile = path.join(d, 'users.json');
  fs.writeFileSync(usersFile, JSON.stringify(users, null, 2));
  const args = [
    path.join(PEERS_DIR, 'saml-idp.mjs'),
    '--port', String(p), '--entity-id', eid,
    '--sp-metadata', spFile, '--users', usersFile, '--sign', sign,
    '--key', keyFile || path.join(d, 'idp-key.pem'),
    '--cert', certFile || path.join(d, 'idp-cert.pem'),
    '--exit-on-stdin-close',
  ];
  if (encrypt) args.push('--encrypt');
  const proc = await startProcess(process.execPath, args, {
    name: `saml-idp:${p}`, readyRegex: /^ready\b/m, t, logFile, cwd: PEERS_DIR,
  });
  const admin = async (method, p2, body) => {
    const r = await jsonRequest(method, `${url}${p2}`, body);
    if (r.status >= 400) throw new Error(`saml-idp ${p2}: ${r.status} ${r.text}`);
    return r.json;
  };
  return {
    proc,
    port: p,
    url,
    entityId: eid,
    metadataUrl: `${url}/metadata`,
    ssoUrl: `${url}/sso`,
    dir: d,
    keyFile: keyFile || path.join(d, 'idp-key.pem'),
    certFile: certFile || path.join(d, 'idp-cert.pem'),
    metadataXml: async () => {
      const r = await fetch(`${url}/metadata`);
      if (!r.ok) throw new Error(`saml-idp metadata: ${r.status}`);
      return r.text();
    },
    setMode: (mode) => admin('POST', '/_admin/mode', { mode }),
    stats: () => admin('GET', '/_admin/stats'),
    lastResponse: async () => {
      const r = await fetch(`${url}/_admin/last-response`);
      if (r.status === 404) return null;
      if (!r.ok) throw new Error(`saml-idp last-response: ${r.status}`);
      return r.text();
    },
    stop: () => proc.stop(),
  };
}
