#!/usr/bin/env node
// A real SAML 2.0 Identity Provider for provgate integration tests, built on
// the `samlify` package (AuthnRequest parsing + schema validation, XML-DSig
// signing, assertion encryption, IdP metadata). HTTP-Redirect AuthnRequests
// in, HTTP-POST Responses out (auto-submitting HTML form), plus
// IdP-initiated (unsolicited) SSO and an admin API for fault injection.
// Single Logout (HTTP-Redirect both ways, signed by samlify): the SP's
// LogoutRequest at /slo is verified and answered with a signed
// LogoutResponse; /slo/idp-init makes the IdP start logout with a signed
// (or, for negative tests, unsigned) LogoutRequest to the SP's SLO URL,
// and the SP's LogoutResponse comes back to /slo.
//
//   node saml-idp.mjs --port 0 --sp-metadata sp.xml --users users.json \
//        [--entity-id URL] [--key idp-key.pem --cert idp-cert.pem] \
//        [--sign assertion|response|both] [--encrypt]
//
// Env fallbacks: SAML_IDP_PORT, SAML_IDP_ENTITY_ID, SAML_IDP_SP_METADATA,
// SAML_IDP_USERS, SAML_IDP_KEY, SAML_IDP_CERT, SAML_IDP_SIGN,
// SAML_IDP_ENCRYPT.
//
// Schema validation (samlify refuses to parse anything without a schema
// validator): Debian's xmllint (libxml2-utils) run per message with the
// SAML 2.0 protocol/assertion and W3C xmldsig/xenc XSDs that
// @authenio/samlify-node-xmllint ships. That package's own validator (libxml2
// compiled to JavaScript) works too, but costs 2.5-10 s of CPU to load per
// process, enough to time out a first login on a busy machine; the CLI
// takes milliseconds. @authenio/samlify-xsd-schema-validator was not used:
// it needs Java.
//
// What is real and what is mocked: every response in mode "good" is built,
// signed and (with --encrypt) encrypted by samlify's own IdP code path
// (IdentityProvider.createLoginResponse). Fault modes change only the values
// the IdP puts into the response (times, audience, recipient, destination,
// status) and are still signed by samlify; mode "unsigned" alone bypasses
// samlify's signing step, because no real IdP can be told to send an
// unsigned response.

import { execFile, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import * as samlify from 'samlify';
import {
  options, portOption, fail, readJson, listenReady,
  readBody, parseForm, sendHtml, sendJson, escapeHtml, LOOPBACK,
} from './lib/common.mjs';

const require = createRequire(import.meta.url);
const libsaml = require('samlify/build/src/libsaml').default;

const opt = options({
  port: { default: '0' },
  'entity-id': {},
  'sp-metadata': {},
  users: {},
  key: {},
  cert: {},
  sign: { default: 'assertion' },
  encrypt: { type: 'boolean', default: false },
  'session-ttl': { default: String(8 * 3600) },
  'exit-on-stdin-close': { type: 'boolean', default: false },
  quiet: { type: 'boolean', default: false },
}, 'SAML_IDP');

const port = portOption(opt.port);
if (!opt['sp-metadata']) fail('--sp-metadata FILE is required');
if (!opt.users) fail('--users FILE is required');
if (!['assertion', 'response', 'both'].includes(opt.sign)) fail('--sign must be assertion, response or both');
const SIGN_ASSERTION = opt.sign === 'assertion' || opt.sign === 'both';
const SIGN_RESPONSE = opt.sign === 'response' || opt.sign === 'both';
const SESSION_TTL_S = Number(opt['session-ttl']);

let spMetadataXml;
try {
  spMetadataXml = fs.readFileSync(opt['sp-metadata'], 'utf8');
} catch (e) {
  fail(`cannot read SP metadata ${opt['sp-metadata']}: ${e.message}`);
}
const users = readJson(opt.users, 'users');
if (!users || typeof users !== 'object' || Array.isArray(users)) fail('users file must hold a JSON object');

// ---------------------------------------------------------------------------
// Schema validator for samlify: xmllint CLI + the packaged XSDs.

const XSD_FILES = ['saml-schema-protocol-2.0.xsd', 'saml-schema-assertion-2.0.xsd',
  'xmldsig-core-schema.xsd', 'xenc-schema.xsd', 'XMLSchema.dtd', 'datatypes.dtd'];

function xmllintSchemaValidator() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'saml-idp-xsd-'));
  for (const f of XSD_FILES) {
    fs.writeFileSync(path.join(dir, f), require(`@authenio/samlify-node-xmllint/build/schemas/${f}.js`).default);
  }
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const schema = path.join(dir, 'saml-schema-protocol-2.0.xsd');
  return {
    validate: (xml) => new Promise((resolve, reject) => {
      const child = execFile('xmllint', ['--noout', '--nonet', '--schema', schema, '-'],
        { timeout: 10000, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
          if (!err) { resolve('SUCCESS_VALIDATE_XML'); return; }
          if (err.code === 'ENOENT') reject(new Error('xmllint not found: install Debian libxml2-utils'));
          else reject(new Error(`ERR_EXCEPTION_VALIDATE_XML: ${String(stderr).trim().slice(0, 2000)}`));
        });
      child.stdin.on('error', () => { /* xmllint exited early; the callback reports */ });
      child.stdin.end(xml);
    }),
  };
}

samlify.setSchemaValidator(xmllintSchemaValidator());

const NS = {
  protocol: 'urn:oasis:names:tc:SAML:2.0:protocol',
  assertion: 'urn:oasis:names:tc:SAML:2.0:assertion',
};
const BINDING_REDIRECT = 'urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect';
const NAMEID_UNSPECIFIED = 'urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified';
const NAMEID_ENTITY = 'urn:oasis:names:tc:SAML:2.0:nameid-format:entity';
const STATUS_SUCCESS = 'urn:oasis:names:tc:SAML:2.0:status:Success';
const STATUS_RESPONDER = 'urn:oasis:names:tc:SAML:2.0:status:Responder';
const STATUS_AUTHN_FAILED = 'urn:oasis:names:tc:SAML:2.0:status:AuthnFailed';
const MODES = ['good', 'expired', 'wrong_audience', 'wrong_recipient', 'wrong_destination', 'unsigned', 'status_fail'];
// Fault modes for the LogoutResponse the IdP sends (SP-initiated logout).
const SLO_MODES = ['good', 'unsigned', 'status_fail', 'wrong_destination', 'wrong_issuer', 'expired'];
const STATUS_PARTIAL_LOGOUT = 'urn:oasis:names:tc:SAML:2.0:status:PartialLogout';

// ---------------------------------------------------------------------------
// Signing key + certificate: given files, or a fresh self-signed pair made
// with the openssl CLI (written to --key/--cert when those name missing
// files, else to a temp dir removed at exit).

function loadOrCreateKeyPair() {
  const keyFile = opt.key;
  const certFile = opt.cert;
  if (keyFile && certFile && fs.existsSync(keyFile) && fs.existsSync(certFile)) {
    return { key: fs.readFileSync(keyFile, 'utf8'), cert: fs.readFileSync(certFile, 'utf8') };
  }
  if (!keyFile !== !certFile) fail('give both --key and --cert, or neither');
  if (keyFile && (fs.existsSync(keyFile) || fs.existsSync(certFile))) {
    fail('--key and --cert must both exist, or both be missing (then a pair is generated there)');
  }
  const dir = keyFile ? null : fs.mkdtempSync(path.join(os.tmpdir(), 'saml-idp-'));
  const kf = keyFile || path.join(dir, 'key.pem');
  const cf = certFile || path.join(dir, 'cert.pem');
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256',
      '-keyout', kf, '-out', cf, '-days', '3650', '-subj', '/CN=provgate-test-saml-idp'], { stdio: 'pipe' });
  } catch (e) {
    fail(`openssl could not create the IdP key pair: ${e.stderr || e.message}`);
  }
  const pair = { key: fs.readFileSync(kf, 'utf8'), cert: fs.readFileSync(cf, 'utf8') };
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  return pair;
}

const keyPair = loadOrCreateKeyPair();

// ---------------------------------------------------------------------------
// The SP, from its metadata (entity id, ACS URLs, certificates).

const sp = samlify.ServiceProvider({ metadata: spMetadataXml });
const spEntityId = sp.entityMeta.getEntityID();
const spAcsList = [].concat(sp.entityMeta.getAssertionConsumerService('post') || []).filter(Boolean);
if (!spEntityId) fail('SP metadata has no entityID');
if (!spAcsList.length) fail('SP metadata has no HTTP-POST AssertionConsumerService');
const spWantsSignedRequests = sp.entityMeta.isAuthnRequestSigned();
if (opt.encrypt && !sp.entityMeta.getX509Certificate('encryption')) {
  fail('--encrypt needs an encryption KeyDescriptor (or one without use) in the SP metadata');
}
const spNameIdFormats = [].concat(sp.entityMeta.getNameIDFormat?.() || []).filter(Boolean);

// samlify decides what to sign from the SP: the assertion when the SP
// metadata says WantAssertionsSigned, the Response when the SP setting
// wantMessageSigned is on or the assertion is not signed. This view of
// the same SP (prototype-chained, nothing mutated) applies --sign.
function spView(signAssertion, signResponse) {
  const meta = Object.create(sp.entityMeta);
  meta.isWantAssertionsSigned = () => signAssertion;
  const view = Object.create(sp);
  view.entityMeta = meta;
  view.entitySetting = { ...sp.entitySetting, wantMessageSigned: signResponse };
  return view;
}

let idp;
let entityId;
let baseUrl;

function buildIdp(boundPort) {
  baseUrl = `http://${LOOPBACK}:${boundPort}`;
  entityId = opt['entity-id'] || `${baseUrl}/metadata`;
  idp = samlify.IdentityProvider({
    entityID: entityId,
    signingCert: keyPair.cert,
    privateKey: keyPair.key,
    wantAuthnRequestsSigned: spWantsSignedRequests,
    isAssertionEncrypted: !!opt.encrypt,
    nameIDFormat: [
      'urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress',
      'urn:oasis:names:tc:SAML:2.0:nameid-format:persistent',
      'urn:oasis:names:tc:SAML:2.0:nameid-format:transient',
      NAMEID_UNSPECIFIED,
    ],
    singleSignOnService: [{ Binding: BINDING_REDIRECT, Location: `${baseUrl}/sso` }],
    singleLogoutService: [{ Binding: BINDING_REDIRECT, Location: `${baseUrl}/slo` }],
    // Logout messages from the SP must be signed (Profiles 4.4.4.1/4.4.4.2).
    wantLogoutRequestSigned: true,
    wantLogoutResponseSigned: true,
  });
}

// ---------------------------------------------------------------------------
// State.

const state = {
  mode: 'good',
  pending: new Map(), // uid -> {requestId, relayState, acs, nameIdFormat, created}
  last: null, // {xml, base64, relayState, acs, mode, inResponseTo, user, ts}
  stats: {
    authn_requests: 0, logins: 0, failed_logins: 0, responses: 0,
    logout_requests: 0, logout_responses_sent: 0, idp_logout_requests: 0,
    logout_responses_received: 0, slo_errors: 0,
  },
  sloMode: 'good',
  // SAML sessions handed out at login: sessionIndex -> {user, nameId, nameIdFormat, sessionIndex, created}
  sessions: new Map(),
  // IdP-initiated logout requests awaiting the SP's LogoutResponse: id -> {user, sessionIndex, created}
  idpLogouts: new Map(),
  lastLogout: null, // SP-initiated: {requestId, nameId, sessionIndex, matched, relayState, responseId, mode, ts}
  lastLogoutResponse: null, // IdP-initiated: {inResponseTo, status, matched, relayState, ts}
  lastSloError: null,
};
const PENDING_TTL_MS = 10 * 60 * 1000;

function prunePending() {
  const now = Date.now();
  for (const [uid, p] of state.pending) if (now - p.created > PENDING_TTL_MS) state.pending.delete(uid);
  while (state.pending.size > 1000) state.pending.delete(state.pending.keys().next().value);
}

function passwordOk(expected, given) {
  const a = crypto.createHash('sha256').update(String(expected)).digest();
  const b = crypto.createHash('sha256').update(String(given)).digest();
  return crypto.timingSafeEqual(a, b);
}

function findUser(username, password) {
  if (!Object.prototype.hasOwnProperty.call(users, username)) return null;
  const u = users[username];
  if (!u || !passwordOk(u.password ?? '', password)) return null;
  return { username, ...u };
}

// ---------------------------------------------------------------------------
// Response XML. Values are XML-escaped; the structure follows SAML Core
// schema order (Issuer, Signature slot, Subject, Conditions, statements).

function xmlEscape(s) {
  return String(s)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
const newId = () => `_${crypto.randomBytes(20).toString('hex')}`;

function attributeStatement(attrs) {
  const entries = Object.entries(attrs || {});
  if (!entries.length) return '';
  const items = entries.map(([name, values]) => {
    const vals = [].concat(values).map((v) => `<saml:AttributeValue xsi:type="xs:string">${xmlEscape(v)}</saml:AttributeValue>`).join('');
    return `<saml:Attribute Name="${xmlEscape(name)}" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic">${vals}</saml:Attribute>`;
  });
  return `<saml:AttributeStatement>${items.join('')}</saml:AttributeStatement>`;
}

/**
 * The values a response carries, then bent by the fault mode.
 * ctx: {user, acs, inResponseTo (or null), nameIdFormat, mode}.
 */
function responseValues(ctx) {
  const now = Date.now();
  const v = {
    id: newId(),
    assertionId: newId(),
    issueInstant: iso(now),
    destination: ctx.acs,
    recipient: ctx.acs,
    audience: spEntityId,
    inResponseTo: ctx.inResponseTo,
    notBefore: iso(now - 30 * 1000),
    notOnOrAfter: iso(now + 5 * 60 * 1000),
    authnInstant: iso(now),
    sessionIndex: newId(),
    sessionNotOnOrAfter: iso(now + SESSION_TTL_S * 1000),
    status: STATUS_SUCCESS,
    subStatus: null,
    withAssertion: true,
  };
  switch (ctx.mode) {
    case 'expired':
      v.issueInstant = iso(now - 20 * 60 * 1000);
      v.authnInstant = v.issueInstant;
      v.notBefore = iso(now - 20 * 60 * 1000);
      v.notOnOrAfter = iso(now - 10 * 60 * 1000);
      break;
    case 'wrong_audience': v.audience = 'urn:provgate:test:wrong-audience'; break;
    case 'wrong_recipient': v.recipient = `${ctx.acs}/wrong-recipient`; break;
    case 'wrong_destination': v.destination = `${ctx.acs}/wrong-destination`; break;
    case 'status_fail':
      v.status = STATUS_RESPONDER;
      v.subStatus = STATUS_AUTHN_FAILED;
      v.withAssertion = false;
      break;
    default: break;
  }
  return v;
}

function renderResponse(v, user, nameIdFormat) {
  const irt = v.inResponseTo ? ` InResponseTo="${xmlEscape(v.inResponseTo)}"` : '';
  const status = v.subStatus
    ? `<samlp:Status><samlp:StatusCode Value="${v.status}"><samlp:StatusCode Value="${v.subStatus}"/></samlp:StatusCode><samlp:StatusMessage>Authentication failed</samlp:StatusMessage></samlp:Status>`
    : `<samlp:Status><samlp:StatusCode Value="${v.status}"/></samlp:Status>`;
  const assertion = !v.withAssertion ? '' : [
    `<saml:Assertion xmlns:saml="${NS.assertion}" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ID="${v.assertionId}" Version="2.0" IssueInstant="${v.issueInstant}">`,
    `<saml:Issuer Format="${NAMEID_ENTITY}">${xmlEscape(entityId)}</saml:Issuer>`,
    '<saml:Subject>',
    // qualified like Shibboleth's persistent ids: a LogoutRequest must echo the qualifier
    `<saml:NameID Format="${xmlEscape(nameIdFormat)}" SPNameQualifier="${xmlEscape(spEntityId)}">${xmlEscape(user.nameid ?? user.username)}</saml:NameID>`,
    '<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">',
    `<saml:SubjectConfirmationData NotOnOrAfter="${v.notOnOrAfter}" Recipient="${xmlEscape(v.recipient)}"${irt}/>`,
    '</saml:SubjectConfirmation></saml:Subject>',
    `<saml:Conditions NotBefore="${v.notBefore}" NotOnOrAfter="${v.notOnOrAfter}">`,
    `<saml:AudienceRestriction><saml:Audience>${xmlEscape(v.audience)}</saml:Audience></saml:AudienceRestriction>`,
    '</saml:Conditions>',
    `<saml:AuthnStatement AuthnInstant="${v.authnInstant}" SessionIndex="${v.sessionIndex}" SessionNotOnOrAfter="${v.sessionNotOnOrAfter}">`,
    '<saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext>',
    '</saml:AuthnStatement>',
    attributeStatement(user.attributes),
    '</saml:Assertion>',
  ].join('');
  return `<samlp:Response xmlns:samlp="${NS.protocol}" xmlns:saml="${NS.assertion}" ID="${v.id}" Version="2.0" IssueInstant="${v.issueInstant}" Destination="${xmlEscape(v.destination)}"${irt}>`
    + `<saml:Issuer Format="${NAMEID_ENTITY}">${xmlEscape(entityId)}</saml:Issuer>${status}${assertion}</samlp:Response>`;
}

/**
 * Build the base64 SAMLResponse for ctx with samlify (sign, encrypt), and
 * remember it as the last response.
 */
async function buildResponse(ctx) {
  const mode = state.mode;
  const v = responseValues({ ...ctx, mode });
  const xml = renderResponse(v, ctx.user, ctx.nameIdFormat);
  let base64;
  if (mode === 'unsigned') {
    // Mock path: samlify always signs; send the same XML unsigned
    // (encrypted with samlify's own routine when --encrypt).
    base64 = opt.encrypt ? await libsaml.encryptAssertion(idp, sp, xml) : Buffer.from(xml).toString('base64');
  } else {
    // status_fail carries no assertion, so only the Response can be signed.
    const signAssertion = v.withAssertion && SIGN_ASSERTION;
    const signResponse = !v.withAssertion || SIGN_RESPONSE;
    const target = spView(signAssertion, signResponse);
    const idpForThis = v.withAssertion ? idp : Object.assign(Object.create(idp), {
      entitySetting: { ...idp.entitySetting, isAssertionEncrypted: false },
    });
    const out = await idpForThis.createLoginResponse(target, null, 'post', {}, {
      customTagReplacement: () => ({ id: v.id, context: xml }),
      // Encrypt first, then sign the Response: a Response signature made
      // before encryption would no longer match.
      encryptThenSign: true,
    });
    base64 = out.context;
  }
  const finalXml = Buffer.from(base64, 'base64').toString('utf8');
  state.stats.responses += 1;
  if (v.withAssertion) {
    state.sessions.set(v.sessionIndex, {
      user: ctx.user.username,
      nameId: String(ctx.user.nameid ?? ctx.user.username),
      nameIdFormat: ctx.nameIdFormat,
      sessionIndex: v.sessionIndex,
      created: Date.now(),
    });
    while (state.sessions.size > 1000) state.sessions.delete(state.sessions.keys().next().value);
  }
  state.last = {
    xml: finalXml,
    base64,
    mode,
    acs: ctx.acs,
    relayState: ctx.relayState ?? null,
    inResponseTo: ctx.inResponseTo ?? null,
    user: ctx.user.username,
    responseId: v.id,
    assertionId: v.withAssertion ? v.assertionId : null,
    ts: Date.now(),
  };
  return base64;
}

// ---------------------------------------------------------------------------
// Single Logout.

/** The SP's HTTP-Redirect SingleLogoutService from its metadata, or null. */
function spSloUrl() {
  const u = sp.entityMeta.getSingleLogoutService('redirect');
  return typeof u === 'string' && u ? u : null;
}

/** The SP as the target of a logout message, with samlify's signing switch
 * (it signs Redirect logout messages when the *target* asks for it). */
function sloTarget(signed) {
  const view = Object.create(sp);
  view.entitySetting = { ...sp.entitySetting, wantLogoutRequestSigned: signed, wantLogoutResponseSigned: signed };
  return view;
}

/** Raw Redirect query -> samlify's {query, octetString} (Bindings 3.4.4.1:
 * the parameters exactly as received, in protocol order). */
function redirectEnvelope(url, msgParam) {
  const raw = new Map(url.search.slice(1).split('&').map((kv) => {
    const i = kv.indexOf('=');
    return i < 0 ? [kv, ''] : [kv.slice(0, i), kv.slice(i + 1)];
  }));
  const octetString = [msgParam, 'RelayState', 'SigAlg']
    .filter((k) => raw.has(k)).map((k) => `${k}=${raw.get(k)}`).join('&');
  return { query: Object.fromEntries(url.searchParams), octetString };
}

function sloError(res, status, msg) {
  state.stats.slo_errors += 1;
  state.lastSloError = { message: msg, ts: Date.now() };
  return errorPage(res, status, msg);
}

/** Our LogoutResponse XML for an SP LogoutRequest, bent by the SLO mode. */
function renderLogoutResponse(id, inResponseTo, mode) {
  const now = Date.now();
  const issueInstant = iso(mode === 'expired' ? now - 20 * 60 * 1000 : now);
  const dest = mode === 'wrong_destination' ? `${spSloUrl()}/wrong-destination` : spSloUrl();
  const issuer = mode === 'wrong_issuer' ? 'urn:provgate:test:wrong-issuer' : entityId;
  const status = mode === 'status_fail'
    ? `<samlp:Status><samlp:StatusCode Value="${STATUS_RESPONDER}"><samlp:StatusCode Value="${STATUS_PARTIAL_LOGOUT}"/></samlp:StatusCode></samlp:Status>`
    : `<samlp:Status><samlp:StatusCode Value="${STATUS_SUCCESS}"/></samlp:Status>`;
  return `<samlp:LogoutResponse xmlns:samlp="${NS.protocol}" xmlns:saml="${NS.assertion}" ID="${id}" Version="2.0" IssueInstant="${issueInstant}" Destination="${xmlEscape(dest)}" InResponseTo="${xmlEscape(inResponseTo)}">`
    + `<saml:Issuer>${xmlEscape(issuer)}</saml:Issuer>${status}</samlp:LogoutResponse>`;
}

/** SP-initiated logout: verify the SP's signed LogoutRequest, end the
 * matching session, answer with a (signed) LogoutResponse redirect. */
async function handleSloRequest(req, res, url) {
  let parsed;
  try {
    parsed = await idp.parseLogoutRequest(sp, 'redirect', redirectEnvelope(url, 'SAMLRequest'));
  } catch (e) {
    return sloError(res, 400, `invalid LogoutRequest: ${e.message || e}`);
  }
  const ex = parsed.extract || {};
  const reqInfo = ex.request || {};
  const issuer = typeof ex.issuer === 'string' ? ex.issuer : '';
  if (issuer !== spEntityId) return sloError(res, 400, `LogoutRequest issuer ${issuer || '(none)'} is not ${spEntityId}`);
  if (!reqInfo.id) return sloError(res, 400, 'LogoutRequest has no ID');
  if (reqInfo.destination !== `${baseUrl}/slo`) {
    return sloError(res, 400, `LogoutRequest Destination ${reqInfo.destination || '(none)'} is not this endpoint`);
  }
  if (!spSloUrl()) return sloError(res, 400, 'SP metadata has no HTTP-Redirect SingleLogoutService');
  const nameId = typeof ex.nameID === 'string' ? ex.nameID : (ex.nameID?.['#text'] ?? '');
  const sessionIndexes = [].concat(ex.sessionIndex ?? []).map(String);
  // the NameID must be the one issued, qualifier included (SAML core 3.6.1)
  const nidTag = /<(?:[A-Za-z0-9_-]+:)?NameID\b([^>]*)>/.exec(String(parsed.samlContent || ''));
  const spnq = nidTag ? (/\sSPNameQualifier="([^"]*)"/.exec(nidTag[1]) || [])[1] : undefined;
  let matched = false;
  for (const [si, sess] of state.sessions) {
    if (sess.nameId === nameId && spnq === spEntityId
        && (sessionIndexes.length === 0 || sessionIndexes.includes(si))) {
      state.sessions.delete(si);
      matched = true;
    }
  }
  state.stats.logout_requests += 1;
  const mode = state.sloMode;
  const relayState = url.searchParams.get('RelayState') ?? '';
  const responseId = newId();
  const out = idp.createLogoutResponse(sloTarget(mode !== 'unsigned'), parsed, 'redirect', {
    relayState,
    customTagReplacement: () => ({ id: responseId, context: renderLogoutResponse(responseId, reqInfo.id, mode) }),
  });
  state.stats.logout_responses_sent += 1;
  state.lastLogout = {
    requestId: reqInfo.id, nameId, sessionIndex: sessionIndexes, matched, relayState: relayState || null,
    responseId, mode, url: out.context, ts: Date.now(),
  };
  res.writeHead(302, { location: out.context, 'cache-control': 'no-store', 'content-length': 0 });
  return res.end();
}

/** The SP's LogoutResponse to an IdP-initiated logout. */
async function handleSloResponse(req, res, url) {
  let parsed;
  try {
    parsed = await idp.parseLogoutResponse(sp, 'redirect', redirectEnvelope(url, 'SAMLResponse'));
  } catch (e) {
    return sloError(res, 400, `invalid LogoutResponse: ${e.message || e}`);
  }
  const ex = parsed.extract || {};
  const resp = ex.response || {};
  const issuer = typeof ex.issuer === 'string' ? ex.issuer : '';
  if (issuer !== spEntityId) return sloError(res, 400, `LogoutResponse issuer ${issuer || '(none)'} is not ${spEntityId}`);
  if (resp.destination !== `${baseUrl}/slo`) {
    return sloError(res, 400, `LogoutResponse Destination ${resp.destination || '(none)'} is not this endpoint`);
  }
  const pending = state.idpLogouts.get(resp.inResponseTo || '');
  if (!pending) return sloError(res, 400, 'LogoutResponse InResponseTo matches no IdP-initiated logout');
  state.idpLogouts.delete(resp.inResponseTo);
  // samlify refuses a non-Success status (ERR_FAILED_STATUS, reported above).
  const status = STATUS_SUCCESS;
  state.stats.logout_responses_received += 1;
  state.lastLogoutResponse = {
    inResponseTo: resp.inResponseTo, status, user: pending.user, sessionIndex: pending.sessionIndex,
    relayState: url.searchParams.get('RelayState'), ts: Date.now(),
  };
  return sendHtml(res, 200, page('Signed out', `<h1 id="signed-out">Signed out</h1><p id="slo-status">${escapeHtml(status)}</p>`));
}

/**
 * IdP-initiated logout of a user's latest session (or of session_index):
 * a LogoutRequest signed by samlify (or unsigned when asked, for negative
 * tests) as an HTTP-Redirect URL to the SP's SLO endpoint.
 * Returns {id, url, user, nameId, sessionIndex} or throws with .status.
 */
function makeIdpLogout(params) {
  const sloUrl = spSloUrl();
  if (!sloUrl) throw Object.assign(new Error('SP metadata has no HTTP-Redirect SingleLogoutService'), { status: 409 });
  const wantSi = params.get('session_index');
  const wantUser = params.get('user');
  let sess = null;
  for (const s of state.sessions.values()) {
    if ((wantSi && s.sessionIndex === wantSi) || (!wantSi && s.user === wantUser)) sess = s;
  }
  if (!sess) throw Object.assign(new Error('no SAML session for that user / session_index'), { status: 404 });
  const unsigned = /^(1|true|yes)$/i.test(params.get('unsigned') || '');
  const relayState = params.get('relay_state') ?? params.get('RelayState') ?? '';
  const id = newId();
  const now = Date.now();
  const xml = `<samlp:LogoutRequest xmlns:samlp="${NS.protocol}" xmlns:saml="${NS.assertion}" ID="${id}" Version="2.0" IssueInstant="${iso(now)}" NotOnOrAfter="${iso(now + 5 * 60 * 1000)}" Destination="${xmlEscape(sloUrl)}">`
    + `<saml:Issuer>${xmlEscape(entityId)}</saml:Issuer>`
    + `<saml:NameID Format="${xmlEscape(sess.nameIdFormat)}" SPNameQualifier="${xmlEscape(spEntityId)}">${xmlEscape(sess.nameId)}</saml:NameID>`
    + `<samlp:SessionIndex>${xmlEscape(sess.sessionIndex)}</samlp:SessionIndex></samlp:LogoutRequest>`;
  const out = idp.createLogoutRequest(sloTarget(!unsigned), 'redirect', { logoutNameID: sess.nameId, sessionIndex: sess.sessionIndex }, {
    relayState,
    customTagReplacement: () => ({ id, context: xml }),
  });
  state.idpLogouts.set(id, { user: sess.user, sessionIndex: sess.sessionIndex, created: now });
  while (state.idpLogouts.size > 1000) state.idpLogouts.delete(state.idpLogouts.keys().next().value);
  state.stats.idp_logout_requests += 1;
  return { id, url: out.context, user: sess.user, nameId: sess.nameId, sessionIndex: sess.sessionIndex, signed: !unsigned };
}

async function handleIdpLogout(req, res, url) {
  let r;
  try {
    r = makeIdpLogout(url.searchParams);
  } catch (e) {
    return errorPage(res, e.status || 500, e.message);
  }
  res.writeHead(302, { location: r.url, 'cache-control': 'no-store', 'content-length': 0 });
  return res.end();
}

// ---------------------------------------------------------------------------
// Pages.

function page(title, body, extraHead = '') {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>${extraHead}
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}label{display:block;margin:.6em 0}
input[type=text],input[type=password]{width:100%;padding:.3em}.err{color:#b00}</style>
</head><body>
${body}
</body></html>`;
}

function loginPage(uid, error) {
  return page('Sign in', `<h1>Sign in</h1>
<p>to continue to <b>${escapeHtml(spEntityId)}</b></p>
${error ? `<p class="err" id="error">${escapeHtml(error)}</p>` : ''}
<form id="login" method="post" action="/sso/login" autocomplete="off">
<input type="hidden" name="uid" value="${escapeHtml(uid)}">
<label>Username <input type="text" name="username" autofocus></label>
<label>Password <input type="password" name="password"></label>
<button type="submit" id="submit">Sign in</button>
</form>`);
}

function postFormPage(acs, samlResponse, relayState) {
  const rs = relayState != null && relayState !== ''
    ? `\n<input type="hidden" name="RelayState" value="${escapeHtml(relayState)}">` : '';
  return page('Continue', `<form id="saml-post" method="post" action="${escapeHtml(acs)}">
<input type="hidden" name="SAMLResponse" value="${escapeHtml(samlResponse)}">${rs}
<noscript><button type="submit">Continue</button></noscript>
</form>
<script>document.getElementById('saml-post').submit();</script>`);
}

function errorPage(res, status, msg) {
  sendHtml(res, status, page('SAML error', `<h1>SAML error</h1><p id="error">${escapeHtml(msg)}</p>`));
}

// ---------------------------------------------------------------------------
// Handlers.

async function handleSso(req, res, url) {
  const q = Object.fromEntries(url.searchParams);
  if (!q.SAMLRequest) return errorPage(res, 400, 'missing SAMLRequest');
  // The signed octet string of the Redirect binding is the raw query in
  // the order SAMLRequest, RelayState, SigAlg (Bindings 3.4.4.1).
  const raw = new Map(url.search.slice(1).split('&').map((kv) => {
    const i = kv.indexOf('=');
    return i < 0 ? [kv, ''] : [kv.slice(0, i), kv.slice(i + 1)];
  }));
  const octetString = ['SAMLRequest', 'RelayState', 'SigAlg']
    .filter((k) => raw.has(k)).map((k) => `${k}=${raw.get(k)}`).join('&');
  let parsed;
  try {
    parsed = await idp.parseLoginRequest(sp, 'redirect', { query: q, octetString });
  } catch (e) {
    return errorPage(res, 400, `invalid AuthnRequest: ${e.message || e}`);
  }
  const ex = parsed.extract || {};
  const reqInfo = ex.request || {};
  const issuer = typeof ex.issuer === 'string' ? ex.issuer : '';
  if (issuer !== spEntityId) return errorPage(res, 400, `AuthnRequest issuer ${issuer || '(none)'} is not ${spEntityId}`);
  if (!reqInfo.id) return errorPage(res, 400, 'AuthnRequest has no ID');
  if (reqInfo.destination && reqInfo.destination !== `${baseUrl}/sso`) {
    return errorPage(res, 400, `AuthnRequest Destination ${reqInfo.destination} is not this endpoint`);
  }
  let acs = spAcsList[0];
  if (reqInfo.assertionConsumerServiceUrl) {
    if (!spAcsList.includes(reqInfo.assertionConsumerServiceUrl)) {
      return errorPage(res, 400, 'AssertionConsumerServiceURL is not in the SP metadata');
    }
    acs = reqInfo.assertionConsumerServiceUrl;
  }
  const policyFormat = ex.nameIDPolicy?.format;
  state.stats.authn_requests += 1;
  prunePending();
  const uid = crypto.randomBytes(16).toString('base64url');
  state.pending.set(uid, {
    requestId: reqInfo.id,
    relayState: q.RelayState,
    acs,
    policyFormat: policyFormat && policyFormat !== NAMEID_UNSPECIFIED ? policyFormat : null,
    created: Date.now(),
  });
  return sendHtml(res, 200, loginPage(uid));
}

function nameIdFormatFor(user, policyFormat) {
  return user.nameid_format || policyFormat || spNameIdFormats[0] || NAMEID_UNSPECIFIED;
}

async function handleLogin(req, res) {
  const form = parseForm(await readBody(req, 64 * 1024));
  const p = state.pending.get(form.uid || '');
  if (!p) return errorPage(res, 400, 'unknown or expired login request');
  const user = findUser(form.username || '', form.password || '');
  if (!user) {
    state.stats.failed_logins += 1;
    return sendHtml(res, 401, loginPage(form.uid, 'Invalid username or password'));
  }
  state.pending.delete(form.uid);
  state.stats.logins += 1;
  const samlResponse = await buildResponse({
    user, acs: p.acs, inResponseTo: p.requestId, relayState: p.relayState, nameIdFormat: nameIdFormatFor(user, p.policyFormat),
  });
  return sendHtml(res, 200, postFormPage(p.acs, samlResponse, p.relayState));
}

async function handleIdpInit(req, res, url) {
  const user = findUser(url.searchParams.get('user') || '', url.searchParams.get('password') || '');
  if (!user) {
    state.stats.failed_logins += 1;
    return errorPage(res, 401, 'Invalid username or password');
  }
  state.stats.logins += 1;
  const relayState = url.searchParams.get('relay_state') ?? url.searchParams.get('RelayState');
  const samlResponse = await buildResponse({
    user, acs: spAcsList[0], inResponseTo: null, relayState, nameIdFormat: nameIdFormatFor(user, null),
  });
  return sendHtml(res, 200, postFormPage(spAcsList[0], samlResponse, relayState));
}

async function handleAdmin(req, res, url) {
  if (req.method === 'POST' && url.pathname === '/_admin/mode') {
    let body;
    try {
      body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}');
    } catch {
      return sendJson(res, 400, { error: 'body must be JSON' });
    }
    if (!MODES.includes(body.mode)) return sendJson(res, 400, { error: `mode must be one of ${MODES.join(', ')}` });
    state.mode = body.mode;
    return sendJson(res, 200, { mode: state.mode });
  }
  if (req.method === 'POST' && url.pathname === '/_admin/slo-mode') {
    let body;
    try {
      body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}');
    } catch {
      return sendJson(res, 400, { error: 'body must be JSON' });
    }
    if (!SLO_MODES.includes(body.mode)) return sendJson(res, 400, { error: `mode must be one of ${SLO_MODES.join(', ')}` });
    state.sloMode = body.mode;
    return sendJson(res, 200, { mode: state.sloMode });
  }
  if (req.method === 'GET' && url.pathname === '/_admin/logout-request') {
    try {
      const r = makeIdpLogout(url.searchParams);
      return sendJson(res, 200, {
        id: r.id, url: r.url, user: r.user, name_id: r.nameId, session_index: r.sessionIndex, signed: r.signed,
      });
    } catch (e) {
      return sendJson(res, e.status || 500, { error: e.message });
    }
  }
  if (req.method === 'GET' && url.pathname === '/_admin/slo') {
    return sendJson(res, 200, {
      slo_mode: state.sloMode,
      sp_slo_url: spSloUrl(),
      sessions: [...state.sessions.values()].map((s) => ({
        user: s.user, name_id: s.nameId, name_id_format: s.nameIdFormat, session_index: s.sessionIndex,
      })),
      pending_idp_logouts: [...state.idpLogouts.keys()],
      last_logout: state.lastLogout,
      last_logout_response: state.lastLogoutResponse,
      last_error: state.lastSloError,
    });
  }
  if (req.method === 'GET' && url.pathname === '/_admin/last-response') {
    if (!state.last) return sendJson(res, 404, { error: 'no response issued yet' });
    const xml = state.last.xml;
    res.writeHead(200, {
      'content-type': 'application/xml; charset=utf-8',
      'content-length': Buffer.byteLength(xml),
      'cache-control': 'no-store',
      'x-saml-mode': state.last.mode,
      'x-saml-relay-state': encodeURIComponent(state.last.relayState ?? ''),
    });
    return res.end(xml);
  }
  if (req.method === 'GET' && url.pathname === '/_admin/stats') {
    const { xml, base64, ...last } = state.last || {};
    return sendJson(res, 200, {
      mode: state.mode,
      sign: opt.sign,
      encrypt: !!opt.encrypt,
      slo_mode: state.sloMode,
      sessions: state.sessions.size,
      entity_id: entityId,
      sp_entity_id: spEntityId,
      pending: state.pending.size,
      ...state.stats,
      last: state.last ? last : null,
    });
  }
  return sendJson(res, 404, { error: 'unknown admin endpoint' });
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  try {
    if (url.pathname.startsWith('/_admin/')) return await handleAdmin(req, res, url);
    if (req.method === 'GET' && url.pathname === '/_health') return sendHtml(res, 200, 'ok');
    if (req.method === 'GET' && url.pathname === '/metadata') {
      const xml = idp.getMetadata();
      res.writeHead(200, {
        'content-type': 'application/samlmetadata+xml; charset=utf-8',
        'content-length': Buffer.byteLength(xml),
      });
      return res.end(xml);
    }
    if (req.method === 'GET' && url.pathname === '/sso') return await handleSso(req, res, url);
    if (req.method === 'POST' && url.pathname === '/sso/login') return await handleLogin(req, res);
    if (req.method === 'GET' && url.pathname === '/idp-init') return await handleIdpInit(req, res, url);
    if (req.method === 'GET' && url.pathname === '/slo') {
      if (url.searchParams.has('SAMLRequest')) return await handleSloRequest(req, res, url);
      if (url.searchParams.has('SAMLResponse')) return await handleSloResponse(req, res, url);
      return sloError(res, 400, 'missing SAMLRequest or SAMLResponse');
    }
    if (req.method === 'GET' && url.pathname === '/slo/idp-init') return await handleIdpLogout(req, res, url);
    return errorPage(res, 404, 'not found');
  } catch (e) {
    if (!opt.quiet) process.stderr.write(`saml-idp: ${e.stack || e}\n`);
    if (!res.headersSent) return errorPage(res, e.status || 500, e.message || String(e));
    return res.destroy();
  }
});

listenReady(server, port, {
  name: 'saml-idp',
  exitOnStdinClose: opt['exit-on-stdin-close'],
  beforeReady: async (boundPort) => {
    buildIdp(boundPort);
    process.stdout.write(`entity-id ${entityId}\n`);
  },
});

