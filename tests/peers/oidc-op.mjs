#!/usr/bin/env node
// A real OpenID Provider for provgate integration tests, built on the
// `oidc-provider` package. Authorization code flow only, PKCE S256 required,
// RP-initiated logout enabled. Login uses our own plain HTML form (no
// JavaScript needed) driven through the provider's interaction API; consent
// is granted automatically for whatever the client requested.
//
//   node oidc-op.mjs --port 0 --issuer http://127.0.0.1:PORT \
//        --clients clients.json --users users.json --keys jwks.json
//
// Env fallbacks: OIDC_OP_PORT, OIDC_OP_ISSUER, OIDC_OP_CLIENTS,
// OIDC_OP_USERS, OIDC_OP_KEYS.
//
// Without --issuer the issuer is http://127.0.0.1:<bound port> (so --port 0
// works); with --issuer, give the matching --port.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { Provider } from 'oidc-provider';
import * as jose from 'jose';
import {
  options, portOption, fail, readJson, writeFileAtomic, listenReady,
  readBody, parseForm, sendHtml, escapeHtml, LOOPBACK,
} from './lib/common.mjs';

const opt = options({
  port: { default: '0' },
  issuer: {},
  clients: {},
  users: {},
  keys: {},
  'exit-on-stdin-close': { type: 'boolean', default: false },
  'session-ttl': { default: String(8 * 3600) },
  quiet: { type: 'boolean', default: false },
}, 'OIDC_OP');

const port = portOption(opt.port);
if (!opt.clients) fail('--clients FILE is required');
if (!opt.users) fail('--users FILE is required');
if (!opt.keys) fail('--keys FILE is required (created if missing)');

const clients = readJson(opt.clients, 'clients');
const users = readJson(opt.users, 'users');
if (!Array.isArray(clients)) fail('clients file must hold a JSON array of client metadata');
if (!users || typeof users !== 'object') fail('users file must hold a JSON object');

// ---------------------------------------------------------------------------
// Signing keys: RS256 + ES256, generated once and kept in --keys.

async function generateJwks() {
  const out = [];
  for (const alg of ['RS256', 'ES256']) {
    const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
    const jwk = await jose.exportJWK(privateKey);
    jwk.kid = await jose.calculateJwkThumbprint(jwk);
    jwk.alg = alg;
    jwk.use = 'sig';
    out.push(jwk);
  }
  return { keys: out };
}

async function loadJwks(file) {
  if (fs.existsSync(file)) {
    const jwks = readJson(file, 'keys');
    if (!Array.isArray(jwks.keys) || !jwks.keys.length) fail(`keys file ${file} has no keys`);
    return jwks;
  }
  const jwks = await generateJwks();
  writeFileAtomic(file, JSON.stringify(jwks, null, 2));
  return jwks;
}

const jwks = await loadJwks(opt.keys);

// ---------------------------------------------------------------------------
// Accounts. The account id is claims.sub (falls back to the username).

const accountsBySub = new Map();
for (const [username, u] of Object.entries(users)) {
  const claims = { ...(u.claims || {}) };
  if (!claims.sub) claims.sub = username;
  if (!claims.preferred_username) claims.preferred_username = username;
  accountsBySub.set(claims.sub, { username, password: String(u.password ?? ''), claims });
}

function findUser(username) {
  const u = users[username];
  if (!u) return null;
  const sub = u.claims?.sub || username;
  return accountsBySub.get(sub);
}

function passwordOk(expected, given) {
  const a = crypto.createHash('sha256').update(String(expected)).digest();
  const b = crypto.createHash('sha256').update(String(given)).digest();
  return crypto.timingSafeEqual(a, b);
}

// ---------------------------------------------------------------------------
// Provider configuration.

let issuer = opt.issuer;

const CLAIMS = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: ['name', 'given_name', 'family_name', 'preferred_username', 'nickname', 'locale', 'zoneinfo', 'updated_at'],
  groups: ['groups'],
  employee: ['employee_type', 'department', 'employee_number'],
};

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}label{display:block;margin:.6em 0}
input[type=text],input[type=password]{width:100%;padding:.3em}.err{color:#b00}</style>
</head><body>
${body}
</body></html>`;
}

function loginPage(uid, details, error) {
  const client = details.params.client_id;
  const hint = details.params.login_hint || '';
  return page('Sign in', `<h1>Sign in</h1>
<p>to continue to <b>${escapeHtml(client)}</b></p>
${error ? `<p class="err" id="error">${escapeHtml(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${encodeURIComponent(uid)}/login" autocomplete="off">
<input type="hidden" name="uid" value="${escapeHtml(uid)}">
<label>Username <input type="text" name="username" value="${escapeHtml(hint)}" autofocus></label>
<label>Password <input type="password" name="password"></label>
<button type="submit" id="submit">Sign in</button>
</form>
<form id="abort" method="post" action="/interaction/${encodeURIComponent(uid)}/abort">
<button type="submit">Cancel</button>
</form>`);
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  const rows = Object.entries(out).map(([k, v]) => `<p><b>${escapeHtml(k)}</b>: <span class="${escapeHtml(k)}">${escapeHtml(v)}</span></p>`);
  ctx.body = page('OP error', `<h1>OP error</h1>${rows.join('\n')}`);
}

async function logoutSource(ctx, form) {
  // `form` is the provider's confirm form (with its xsrf input). Put the
  // "logout=yes" choice inside it so a plain form submission signs out.
  const inner = form.replace('</form>', '<input type="hidden" name="logout" value="yes">\n<button type="submit" id="logout">Yes, sign me out</button>\n</form>');
  ctx.body = page('Sign out', `<h1>Sign out from ${escapeHtml(ctx.host)}?</h1>\n${inner}`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<h1 id="signed-out">Signed out</h1><p>Your sign-out was successful.</p>');
}

function buildProvider() {
  const configuration = {
    clients: clients.map((c) => ({
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...c,
    })),
    jwks,
    findAccount: async (ctx, sub) => {
      const acc = accountsBySub.get(sub);
      if (!acc) return undefined;
      return {
        accountId: sub,
        async claims() { return { ...acc.claims, sub }; },
      };
    },
    claims: CLAIMS,
    scopes: ['openid', 'offline_access', ...Object.keys(CLAIMS).filter((s) => s !== 'openid')],
    conformIdTokenClaims: false,
    responseTypes: ['code'],
    pkce: { methods: ['S256'], required: () => true },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      resourceIndicators: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      revocation: { enabled: true },
      introspection: { enabled: false },
      userinfo: { enabled: true },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    cookies: {
      names: {
        session: 'op_session',
        interaction: 'op_interaction',
        resume: 'op_interaction_resume',
      },
      long: { secure: false, httpOnly: true, sameSite: 'lax' },
      short: { secure: false, httpOnly: true, sameSite: 'lax' },
      keys: [crypto.randomBytes(32).toString('base64url')],
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 600,
      Session: Number(opt['session-ttl']),
      Grant: Number(opt['session-ttl']),
      RefreshToken: 86400,
    },
    renderError,
    clockTolerance: 5,
  };
  const provider = new Provider(issuer, configuration);
  provider.proxy = false;
  if (!opt.quiet) {
    provider.on('server_error', (ctx, err) => process.stderr.write(`oidc-op server_error: ${err.stack || err}\n`));
  }
  return provider;
}

// ---------------------------------------------------------------------------
// Interaction pages.

async function grantConsent(provider, details) {
  const { prompt, params, session } = details;
  const accountId = session?.accountId || details.result?.login?.accountId;
  let grant;
  if (details.grantId) grant = await provider.Grant.find(details.grantId);
  if (!grant) grant = new provider.Grant({ accountId, clientId: params.client_id });
  const d = prompt.details || {};
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  if (d.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  return grant.save();
}

async function handleInteraction(provider, req, res, url) {
  const m = /^\/interaction\/([^/]+)(?:\/(login|abort))?$/.exec(url.pathname);
  if (!m) return false;
  const uid = decodeURIComponent(m[1]);
  const action = m[2];
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    sendHtml(res, 400, page('Interaction error', `<h1>Interaction error</h1><p id="error">${escapeHtml(e.message)}</p>`));
    return true;
  }
  if (details.uid !== uid) {
    sendHtml(res, 400, page('Interaction error', '<h1>Interaction error</h1><p id="error">interaction id mismatch</p>'));
    return true;
  }

  if (req.method === 'GET' && !action) {
    if (details.prompt.name === 'login') {
      sendHtml(res, 200, loginPage(uid, details));
      return true;
    }
    if (details.prompt.name === 'consent') {
      const grantId = await grantConsent(provider, details);
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return true;
    }
    sendHtml(res, 400, page('Interaction error', `<h1>Unsupported prompt ${escapeHtml(details.prompt.name)}</h1>`));
    return true;
  }

  if (req.method === 'POST' && action === 'login') {
    const form = parseForm(await readBody(req, 64 * 1024));
    const acc = findUser(form.username || '');
    if (!acc || !passwordOk(acc.password, form.password || '')) {
      sendHtml(res, 401, loginPage(uid, details, 'Invalid username or password'));
      return true;
    }
    await provider.interactionFinished(req, res, {
      login: { accountId: acc.claims.sub, amr: ['pwd'], remember: true },
    }, { mergeWithLastSubmission: false });
    return true;
  }

  if (req.method === 'POST' && action === 'abort') {
    await readBody(req, 64 * 1024);
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return true;
  }

  sendHtml(res, 405, page('Method not allowed', '<h1>Method not allowed</h1>'));
  return true;
}

// ---------------------------------------------------------------------------
// HTTP server: our interaction routes first, everything else to the
// provider (a Koa application).

let provider;
let providerCallback;

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  try {
    if (url.pathname === '/_health') {
      sendHtml(res, 200, 'ok');
      return;
    }
    if (await handleInteraction(provider, req, res, url)) return;
    providerCallback(req, res);
  } catch (e) {
    if (!opt.quiet) process.stderr.write(`oidc-op: ${e.stack || e}\n`);
    if (!res.headersSent) sendHtml(res, 500, page('Error', `<h1>Internal error</h1><p id="error">${escapeHtml(e.message)}</p>`));
    else res.destroy();
  }
});

listenReady(server, port, {
  name: 'oidc-op',
  exitOnStdinClose: opt['exit-on-stdin-close'],
  beforeReady: async (boundPort) => {
    if (!issuer) issuer = `http://${LOOPBACK}:${boundPort}`;
    provider = buildProvider();
    providerCallback = provider.callback();
    process.stdout.write(`issuer ${issuer}\n`);
  },
});
