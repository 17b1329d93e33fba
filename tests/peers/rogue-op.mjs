#!/usr/bin/env node
// FAULT-INJECTION OpenID provider (a deliberate mock). A real OP cannot be
// made to emit broken ID tokens, so this one mints them with `jose`
// according to a switchable mode, to prove the relying party rejects them.
//
//   node rogue-op.mjs --port 0 [--issuer URL] [--client-id ID]
//        [--client-secret S] [--sub SUB]
//
// Endpoints: /.well-known/openid-configuration, /jwks, /authorize (redirects
// straight back with code+state), /token, /userinfo, /logout.
// Admin (no auth): POST /_admin/mode, GET /_admin/stats, POST /_admin/reset,
// GET /_admin/last-token. See tests/peers/README.md for the modes.
//
// Env fallbacks: ROGUE_OP_PORT, ROGUE_OP_ISSUER, ROGUE_OP_CLIENT_ID, ...

import crypto from 'node:crypto';
import http from 'node:http';
import * as jose from 'jose';
import {
  options, portOption, listenReady, readBody, parseForm, sendJson, sendHtml, LOOPBACK,
} from './lib/common.mjs';

const opt = options({
  port: { default: '0' },
  issuer: {},
  'client-id': { default: 'rogue-client' },
  'client-secret': {},
  sub: { default: 'rogue-user-1' },
  'exit-on-stdin-close': { type: 'boolean', default: false },
}, 'ROGUE_OP');

const port = portOption(opt.port);
let issuer = opt.issuer;

const MODES = [
  'good', 'good_es256', 'bad_iss', 'bad_aud', 'bad_nonce', 'no_nonce', 'alg_none',
  'hs256_pubkey', 'unknown_kid', 'wrong_key', 'expired', 'future_iat', 'no_sub',
  'multi_aud_no_azp', 'multi_aud_azp', 'no_iat', 'bad_signature', 'rotate',
  'token_error', 'token_500', 'authorize_error', 'bad_iss_param',
];

// ---------------------------------------------------------------------------
// Keys. Published: the current RSA key(s) and one EC key. Never published:
// the "wrong" key (signs under a published kid) and the "unknown" key.

async function newKey(alg, kid) {
  const { privateKey, publicKey } = await jose.generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
  const pub = await jose.exportJWK(publicKey);
  Object.assign(pub, { kid, alg, use: 'sig' });
  // PEM exactly as node/openssl write it (64-column lines, final newline),
  // i.e. what an attacker would download as "the public key file".
  const spki = crypto.KeyObject.from(publicKey).export({ type: 'spki', format: 'pem' });
  return { kid, alg, privateKey, publicKey, pub, spki };
}

const keys = {
  rsa: [await newKey('RS256', 'rogue-rsa-1')],
  ec: await newKey('ES256', 'rogue-ec-1'),
  wrong: await newKey('RS256', 'wrong-key-unpublished'),
  unknown: await newKey('RS256', `unknown-${crypto.randomBytes(6).toString('hex')}`),
};
let rotations = 0;

function currentRsa() {
  return keys.rsa[keys.rsa.length - 1];
}

function publishedJwks() {
  return { keys: [...keys.rsa.map((k) => k.pub), keys.ec.pub] };
}

// ---------------------------------------------------------------------------
// State.

let mode = 'good';
let modeOpts = {};
const codes = new Map();
let stats;
let lastToken = null;

function resetStats() {
  stats = {
    jwks_fetches: 0,
    token_requests: 0,
    authorize_requests: 0,
    discovery_fetches: 0,
    userinfo_requests: 0,
    logout_requests: 0,
    last_authorize: null,
    last_token_request: null,
    last_logout: null,
  };
}
resetStats();

function discovery() {
  return {
    issuer,
    authorization_endpoint: `${issuer}/authorize`,
    token_endpoint: `${issuer}/token`,
    userinfo_endpoint: `${issuer}/userinfo`,
    jwks_uri: `${issuer}/jwks`,
    end_session_endpoint: `${issuer}/logout`,
    response_types_supported: ['code'],
    response_modes_supported: ['query'],
    grant_types_supported: ['authorization_code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256', 'ES256'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    code_challenge_methods_supported: ['S256'],
    scopes_supported: ['openid', 'email', 'profile', 'groups'],
    claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'nonce', 'email', 'email_verified', 'name', 'preferred_username', 'groups'],
    authorization_response_iss_parameter_supported: true,
    ...(modeOpts.discovery || {}),
  };
}

// ---------------------------------------------------------------------------
// ID token minting.

function b64url(obj) {
  return Buffer.from(JSON.stringify(obj)).toString('base64url');
}

async function sign(payload, key, headerExtra = {}) {
  return new jose.SignJWT(payload)
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...headerExtra })
    .sign(key.privateKey);
}

async function mintIdToken(codeInfo) {
  const now = Math.floor(Date.now() / 1000);
  const clientId = codeInfo.client_id;
  const payload = {
    iss: issuer,
    sub: opt.sub,
    aud: clientId,
    iat: now,
    exp: now + 300,
    auth_time: now,
    email: 'rogue@example.com',
    email_verified: true,
    preferred_username: 'rogue',
    name: 'Rogue User',
    groups: ['staff'],
  };
  if (codeInfo.nonce !== undefined) payload.nonce = codeInfo.nonce;
  for (const [k, v] of Object.entries(modeOpts.claims || {})) {
    if (v === null) delete payload[k]; else payload[k] = v;
  }

  switch (mode) {
    case 'good':
    case 'rotate':
      return sign(payload, currentRsa());
    case 'good_es256':
      return sign(payload, keys.ec);
    case 'bad_iss':
      payload.iss = `${issuer}/not-the-issuer`;
      return sign(payload, currentRsa());
    case 'bad_aud':
      payload.aud = 'some-other-client';
      return sign(payload, currentRsa());
    case 'bad_nonce':
      payload.nonce = `forged-${crypto.randomBytes(8).toString('hex')}`;
      return sign(payload, currentRsa());
    case 'no_nonce':
      delete payload.nonce;
      return sign(payload, currentRsa());
    case 'alg_none':
      return `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(payload)}.`;
    case 'hs256_pubkey': {
      // Classic key-confusion attack: HMAC keyed with the public key bytes.
      const form = modeOpts.secret_form === 'jwk' ? 'jwk' : 'pem';
      const secret = form === 'jwk'
        ? Buffer.from(JSON.stringify(currentRsa().pub))
        : Buffer.from(currentRsa().spki);
      return new jose.SignJWT(payload)
        .setProtectedHeader({ alg: 'HS256', kid: currentRsa().kid, typ: 'JWT' })
        .sign(new Uint8Array(secret));
    }
    case 'unknown_kid':
      return sign(payload, keys.unknown);
    case 'wrong_key':
      // Published kid, but signed by an unpublished key.
      return new jose.SignJWT(payload)
        .setProtectedHeader({ alg: 'RS256', kid: currentRsa().kid, typ: 'JWT' })
        .sign(keys.wrong.privateKey);
    case 'bad_signature': {
      const t = await sign(payload, currentRsa());
      const [h, p, s] = t.split('.');
      const sig = Buffer.from(s, 'base64url');
      sig[sig.length - 1] ^= 0x01;
      return `${h}.${p}.${sig.toString('base64url')}`;
    }
    case 'expired':
      payload.iat = now - 1200;
      payload.auth_time = now - 1200;
      payload.exp = now - 600;
      return sign(payload, currentRsa());
    case 'future_iat':
      payload.iat = now + 3600;
      payload.exp = now + 7200;
      return sign(payload, currentRsa());
    case 'no_iat':
      delete payload.iat;
      return sign(payload, currentRsa());
    case 'no_sub':
      delete payload.sub;
      return sign(payload, currentRsa());
    case 'multi_aud_no_azp':
      payload.aud = [clientId, 'another-audience'];
      delete payload.azp;
      return sign(payload, currentRsa());
    case 'multi_aud_azp':
      payload.aud = [clientId, 'another-audience'];
      payload.azp = clientId;
      return sign(payload, currentRsa());
    default:
      return sign(payload, currentRsa());
  }
}

// ---------------------------------------------------------------------------
// Handlers.

function pkceOk(info, verifier) {
  if (!info.code_challenge) return true;
  if (!verifier) return false;
  if ((info.code_challenge_method || 'plain') !== 'S256') return false;
  const expect = crypto.createHash('sha256').update(verifier).digest('base64url');
  return expect === info.code_challenge;
}

function clientAuth(req, form) {
  const auth = req.headers.authorization || '';
  const m = /^Basic\s+(.+)$/i.exec(auth);
  if (m) {
    const dec = Buffer.from(m[1], 'base64').toString('utf8');
    const i = dec.indexOf(':');
    if (i < 0) return { method: 'client_secret_basic', id: null, secret: null };
    return {
      method: 'client_secret_basic',
      id: decodeURIComponent(dec.slice(0, i).replace(/\+/g, ' ')),
      secret: decodeURIComponent(dec.slice(i + 1).replace(/\+/g, ' ')),
    };
  }
  if (form.client_secret !== undefined) {
    return { method: 'client_secret_post', id: form.client_id, secret: form.client_secret };
  }
  return { method: 'none', id: form.client_id, secret: null };
}

async function handleAuthorize(req, res, url) {
  stats.authorize_requests += 1;
  const p = Object.fromEntries(url.searchParams);
  stats.last_authorize = p;
  const redirect = p.redirect_uri;
  if (!redirect) {
    sendHtml(res, 400, '<h1>missing redirect_uri</h1>');
    return;
  }
  const to = new URL(redirect);
  if (p.response_type !== 'code' || p.client_id !== opt['client-id']) {
    to.searchParams.set('error', p.response_type !== 'code' ? 'unsupported_response_type' : 'unauthorized_client');
    if (p.state !== undefined) to.searchParams.set('state', p.state);
  } else if (mode === 'authorize_error') {
    to.searchParams.set('error', 'access_denied');
    to.searchParams.set('error_description', 'injected authorization error');
    if (p.state !== undefined) to.searchParams.set('state', p.state);
    to.searchParams.set('iss', issuer);
  } else {
    const code = crypto.randomBytes(24).toString('base64url');
    codes.set(code, {
      client_id: p.client_id,
      redirect_uri: redirect,
      nonce: p.nonce,
      scope: p.scope,
      code_challenge: p.code_challenge,
      code_challenge_method: p.code_challenge_method,
      created: Date.now(),
    });
    to.searchParams.set('code', code);
    if (p.state !== undefined) to.searchParams.set('state', p.state);
    to.searchParams.set('iss', mode === 'bad_iss_param' ? 'http://127.0.0.1:1/mix-up' : issuer);
  }
  res.writeHead(302, { location: to.href, 'cache-control': 'no-store', 'content-length': 0 });
  res.end();
}

async function handleToken(req, res) {
  stats.token_requests += 1;
  const form = parseForm(await readBody(req, 64 * 1024));
  const auth = clientAuth(req, form);
  stats.last_token_request = {
    grant_type: form.grant_type,
    code: form.code,
    redirect_uri: form.redirect_uri,
    code_verifier: form.code_verifier,
    client_id: form.client_id,
    auth_method: auth.method,
    auth_client_id: auth.id,
  };
  if (modeOpts.token_delay_ms) await new Promise((r) => { setTimeout(r, Number(modeOpts.token_delay_ms)); });
  if (mode === 'token_500') {
    sendJson(res, 500, { error: 'server_error' });
    return;
  }
  if (mode === 'token_error') {
    sendJson(res, 400, { error: 'invalid_grant', error_description: 'injected token error' });
    return;
  }
  if (form.grant_type !== 'authorization_code') {
    sendJson(res, 400, { error: 'unsupported_grant_type' });
    return;
  }
  if (opt['client-secret'] !== undefined
      && (auth.id !== opt['client-id'] || auth.secret !== opt['client-secret'])) {
    sendJson(res, 401, { error: 'invalid_client' }, { 'www-authenticate': 'Basic realm="rogue-op"' });
    return;
  }
  const info = codes.get(form.code || '');
  codes.delete(form.code || '');
  if (!info || Date.now() - info.created > 120000) {
    sendJson(res, 400, { error: 'invalid_grant', error_description: 'unknown or expired code' });
    return;
  }
  if (info.redirect_uri !== form.redirect_uri) {
    sendJson(res, 400, { error: 'invalid_grant', error_description: 'redirect_uri mismatch' });
    return;
  }
  if (!pkceOk(info, form.code_verifier)) {
    sendJson(res, 400, { error: 'invalid_grant', error_description: 'PKCE verification failed' });
    return;
  }
  const idToken = await mintIdToken(info);
  lastToken = { mode, id_token: idToken, nonce: info.nonce };
  sendJson(res, 200, {
    access_token: crypto.randomBytes(24).toString('base64url'),
    token_type: 'Bearer',
    expires_in: 300,
    scope: info.scope,
    id_token: idToken,
  });
}

async function handleAdminMode(req, res) {
  let body;
  try {
    body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}');
  } catch {
    sendJson(res, 400, { error: 'invalid JSON' });
    return;
  }
  if (!MODES.includes(body.mode)) {
    sendJson(res, 400, { error: `unknown mode ${body.mode}`, modes: MODES });
    return;
  }
  mode = body.mode;
  modeOpts = {
    claims: body.claims,
    secret_form: body.secret_form,
    token_delay_ms: body.token_delay_ms,
    discovery: body.discovery,
  };
  if (mode === 'rotate') {
    rotations += 1;
    const k = await newKey('RS256', `rogue-rsa-${rotations + 1}`);
    if (body.drop_old) keys.rsa = [k]; else keys.rsa.push(k);
  }
  sendJson(res, 200, { mode, kid: currentRsa().kid, published: publishedJwks().keys.map((k) => k.kid) });
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  try {
    switch (`${req.method} ${url.pathname}`) {
      case 'GET /.well-known/openid-configuration':
        stats.discovery_fetches += 1;
        sendJson(res, 200, discovery());
        return;
      case 'GET /jwks':
        stats.jwks_fetches += 1;
        sendJson(res, 200, publishedJwks());
        return;
      case 'GET /authorize':
        await handleAuthorize(req, res, url);
        return;
      case 'POST /token':
        await handleToken(req, res);
        return;
      case 'GET /userinfo':
        stats.userinfo_requests += 1;
        if (!/^Bearer\s+\S+/i.test(req.headers.authorization || '')) {
          sendJson(res, 401, { error: 'invalid_token' });
          return;
        }
        sendJson(res, 200, { sub: opt.sub, email: 'rogue@example.com' });
        return;
      case 'GET /logout': {
        stats.logout_requests += 1;
        const p = Object.fromEntries(url.searchParams);
        stats.last_logout = p;
        if (p.post_logout_redirect_uri) {
          const to = new URL(p.post_logout_redirect_uri);
          if (p.state !== undefined) to.searchParams.set('state', p.state);
          res.writeHead(302, { location: to.href, 'content-length': 0 });
          res.end();
        } else {
          sendHtml(res, 200, '<h1 id="signed-out">Signed out</h1>');
        }
        return;
      }
      case 'POST /_admin/mode':
        await handleAdminMode(req, res);
        return;
      case 'GET /_admin/stats':
        sendJson(res, 200, { mode, kid: currentRsa().kid, ...stats });
        return;
      case 'POST /_admin/reset':
        resetStats();
        mode = 'good';
        modeOpts = {};
        sendJson(res, 200, { ok: true });
        return;
      case 'GET /_admin/last-token':
        sendJson(res, lastToken ? 200 : 404, lastToken || { error: 'no token issued yet' });
        return;
      default:
        sendJson(res, 404, { error: 'not found' });
    }
  } catch (e) {
    process.stderr.write(`rogue-op: ${e.stack || e}\n`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: e.message });
    else res.destroy();
  }
});

listenReady(server, port, {
  name: 'rogue-op',
  exitOnStdinClose: opt['exit-on-stdin-close'],
  beforeReady: async (bound) => {
    if (!issuer) issuer = `http://${LOOPBACK}:${bound}`;
    process.stdout.write(`issuer ${issuer}\n`);
  },
});
