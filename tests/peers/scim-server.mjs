#!/usr/bin/env node
// A real SCIM 2.0 service provider for provgate integration tests, built on
// SCIMMY (protocol, schemas, filters, PatchOp) and SCIMMY Routers (Express
// endpoints). We only supply the storage handlers (ingress / egress /
// degress) against a JSON file, bearer-token auth, ETags and a fault
// injection / inspection admin API under /_admin (no auth, loopback only).
//
//   node scim-server.mjs --port 0 --data /tmp/scim.json --token secret \
//        --groups staff,engineering,admins
//
// Env fallbacks: SCIM_PORT, SCIM_DATA, SCIM_TOKEN, SCIM_GROUPS.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import express from 'express';
import SCIMMY from 'scimmy';
import SCIMMYRouters from 'scimmy-routers';
import {
  options, portOption, fail, writeFileAtomic, listenReady,
} from './lib/common.mjs';

const opt = options({
  port: { default: '0' },
  data: {},
  token: {},
  groups: { default: 'staff,engineering,admins' },
  'base-path': { default: '/scim/v2' },
  dialect: { default: 'standard' },
  'exit-on-stdin-close': { type: 'boolean', default: false },
  quiet: { type: 'boolean', default: false },
}, 'SCIM');

const port = portOption(opt.port);
if (!opt.data) fail('--data FILE is required');
if (!opt.token) fail('--token is required (bearer token clients must present)');
const BASE = opt['base-path'].replace(/\/$/, '');
// --dialect: "standard" (default: PATCH and ETags, as SCIMMY does them) or
// "legacy", a second SCIM dialect for discovery tests: its
// /ServiceProviderConfig says PATCH and ETags are not supported, every
// PATCH answers 501, responses carry no ETag header and If-Match is not
// honoured; changes are made with PUT of the whole resource.
// /_admin/config can still switch PATCH and ETags on.
if (!['standard', 'legacy'].includes(opt.dialect)) fail('--dialect must be standard or legacy');
const LEGACY = opt.dialect === 'legacy';
const ENTERPRISE = 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User';

// ---------------------------------------------------------------------------
// JSON file store. Shape: {users: {id: user}, groups: {id: group}}. Users and
// groups are stored in their SCIM form (without "groups" on users, which is
// derived from group membership on the way out).

function loadStore(file) {
  if (!fs.existsSync(file)) return { users: {}, groups: {} };
  const raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  return { users: raw.users || {}, groups: raw.groups || {} };
}

const store = loadStore(opt.data);

// user id -> the groups it is a member of (membershipIndex); rebuilt after
// a change: every change goes through persist()
let memberIdx = null;
let usersArr = null;           // Object.values(store.users), cached likewise

function persist() {
  memberIdx = null;
  usersArr = null;            // every change goes through here
  writeFileAtomic(opt.data, JSON.stringify(store, null, 2));
}

function newMeta(resourceType) {
  const now = new Date().toISOString();
  return { resourceType, created: now, lastModified: now, version: versionTag() };
}

function versionTag() {
  return `W/"${crypto.randomBytes(8).toString('hex')}"`;
}

function touch(meta) {
  // lastModified must strictly increase across writes so tests (and
  // provgate) can tell a change happened even within one millisecond.
  let now = Date.now();
  const prev = Date.parse(meta.lastModified || 0);
  if (now <= prev) now = prev + 1;
  meta.lastModified = new Date(now).toISOString();
  meta.version = versionTag();
}

for (const name of String(opt.groups).split(',').map((s) => s.trim()).filter(Boolean)) {
  const exists = Object.values(store.groups).some((g) => g.displayName.toLowerCase() === name.toLowerCase());
  if (!exists) {
    const id = crypto.randomUUID();
    store.groups[id] = { id, displayName: name, members: [], meta: newMeta('Group') };
  }
}
persist();

// ---------------------------------------------------------------------------
// SCIMMY resource handlers.

function scimError(status, scimType, detail) {
  return new SCIMMY.Types.Error(status, scimType, detail);
}

/** Convert a SCIMMY schema instance into a plain JSON object. */
function plain(instance) {
  return JSON.parse(JSON.stringify(instance));
}

// user id -> its "groups" entries, built once per request that lists
// users (a per-user scan of every group's members would make listing
// 100,000 users quadratic).
function membershipIndex() {
  if (memberIdx) return memberIdx;
  const idx = new Map();
  for (const g of Object.values(store.groups)) {
    for (const m of g.members || []) {
      if (!idx.has(m.value)) idx.set(m.value, []);
      idx.get(m.value).push({ value: g.id, display: g.displayName, $ref: `${BASE}/Groups/${g.id}`, type: 'direct' });
    }
  }
  memberIdx = idx;
  return idx;
}

// /_admin/config {"user_groups": false}: Users are served without their
// "groups" attribute (a server that keeps memberships on Groups only).
let userGroups = true;

function userOut(u, idx = membershipIndex(), withGroups = userGroups) {
  const groups = withGroups ? idx.get(u.id) || [] : [];
  return { ...u, ...(groups.length ? { groups } : {}) };
}

// every user as served (/_admin/state: always with its groups)
function usersOut(withGroups = userGroups) {
  const idx = membershipIndex();
  return Object.values(store.users).map((u) => userOut(u, idx, withGroups));
}

function matchFilter(resource, list) {
  if (!resource.filter) return list;
  return resource.filter.match(list);
}

// The filter matcher compares strings case-sensitively; SCIM says userName,
// emails.value and displayName are caseExact=false. Pre-filter with a
// case-insensitive comparison for the simple `attr eq "v"` form provgate uses.
function simpleEq(resource) {
  const expr = resource.filter?.expression;
  const m = /^\s*([A-Za-z.]+)\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$/.exec(expr || '');
  if (!m) return null;
  return { attr: m[1], value: m[2].replace(/\\(.)/g, '$1') };
}

const CASE_INSENSITIVE = new Set(['username', 'emails.value', 'displayname']);

function getPath(obj, dotted) {
  const parts = dotted.split('.');
  let cur = [obj];
  for (const p of parts) {
    const next = [];
    for (const c of cur) {
      if (c == null) continue;
      const key = Object.keys(c).find((k) => k.toLowerCase() === p.toLowerCase());
      if (key === undefined) continue;
      const v = c[key];
      if (Array.isArray(v)) next.push(...v); else next.push(v);
    }
    cur = next;
  }
  return cur;
}

function filterList(resource, list) {
  const eq = simpleEq(resource);
  if (eq && CASE_INSENSITIVE.has(eq.attr.toLowerCase())) {
    const want = eq.value.toLowerCase();
    return list.filter((r) => getPath(r, eq.attr).some((v) => typeof v === 'string' && v.toLowerCase() === want));
  }
  return matchFilter(resource, list);
}

function assertUniqueUserName(userName, exceptId) {
  const clash = Object.values(store.users).find((u) => u.id !== exceptId
    && String(u.userName).toLowerCase() === String(userName).toLowerCase());
  if (clash) throw scimError(409, 'uniqueness', `userName "${userName}" is already in use`);
}

function assertUniqueGroupName(displayName, exceptId) {
  const clash = Object.values(store.groups).find((g) => g.id !== exceptId
    && String(g.displayName).toLowerCase() === String(displayName).toLowerCase());
  if (clash) throw scimError(409, 'uniqueness', `displayName "${displayName}" is already in use`);
}

function withoutDerived(obj) {
  const out = plain(obj);
  delete out.groups;
  delete out.meta;
  delete out.schemas;
  delete out.id;
  delete out.password;
  return out;
}

// The legacy dialect has no schema extensions: its /ResourceTypes lists
// none for User, and a User carrying the enterprise extension is refused.
SCIMMY.Resources.declare(SCIMMY.Resources.User, {
  extensions: LEGACY ? [] : [{ schema: SCIMMY.Schemas.EnterpriseUser, required: false }],
  egress(resource) {
    if (resource.id) {
      const u = store.users[resource.id];
      if (!u) throw scimError(404, null, `Resource ${resource.id} not found`);
      return userOut(u);
    }
    // An unfiltered, unsorted page is cut here, so that listing a large
    // store page by page costs one page per request, not the whole store.
    // SCIMMY's ListResponse re-offsets a result when 1 < startIndex <= its
    // length: those requests (never the ones provgate makes: startIndex 1
    // or past a whole page) take the whole-list path.
    const c = resource.constraints || {};
    const start = c.startIndex || 1;
    if (!resource.filter && !c.sortBy && Number.isInteger(c.count) && (start === 1 || start > c.count)) {
      if (!usersArr) usersArr = Object.values(store.users);
      const all = usersArr;
      const idx = membershipIndex();
      c.totalResults = all.length;
      resource.constraints = c;
      return all.slice(start - 1, start - 1 + c.count).map((u) => userOut(u, idx, userGroups));
    }
    return filterList(resource, usersOut());
  },
  ingress(resource, instance) {
    const data = withoutDerived(instance);
    if (resource.id) {
      const cur = store.users[resource.id];
      if (!cur) throw scimError(404, null, `Resource ${resource.id} not found`);
      assertUniqueUserName(data.userName, cur.id);
      const meta = { ...cur.meta };
      touch(meta);
      store.users[cur.id] = { id: cur.id, ...data, meta };
      persist();
      return userOut(store.users[cur.id]);
    }
    assertUniqueUserName(data.userName, null);
    const id = crypto.randomUUID();
    store.users[id] = { id, ...data, meta: newMeta('User') };
    persist();
    return userOut(store.users[id]);
  },
  degress(resource) {
    if (!store.users[resource.id]) throw scimError(404, null, `Resource ${resource.id} not found`);
    delete store.users[resource.id];
    for (const g of Object.values(store.groups)) {
      const before = (g.members || []).length;
      g.members = (g.members || []).filter((m) => m.value !== resource.id);
      if (g.members.length !== before) touch(g.meta);
    }
    persist();
  },
});

function normaliseMembers(members) {
  const out = [];
  const seen = new Set();
  for (const m of members || []) {
    if (!m || typeof m.value !== 'string' || !m.value) continue;
    if (seen.has(m.value)) continue;
    seen.add(m.value);
    const u = store.users[m.value];
    const g = store.groups[m.value];
    if (!u && !g) throw scimError(400, 'invalidValue', `member "${m.value}" does not exist`);
    out.push({
      value: m.value,
      display: u ? (u.displayName || u.userName) : g.displayName,
      type: u ? 'User' : 'Group',
      $ref: `${BASE}/${u ? 'Users' : 'Groups'}/${m.value}`,
    });
  }
  return out;
}

SCIMMY.Resources.declare(SCIMMY.Resources.Group, {
  egress(resource) {
    if (resource.id) {
      const g = store.groups[resource.id];
      if (!g) throw scimError(404, null, `Resource ${resource.id} not found`);
      return g;
    }
    return filterList(resource, Object.values(store.groups));
  },
  ingress(resource, instance) {
    const data = withoutDerived(instance);
    data.members = normaliseMembers(data.members);
    if (resource.id) {
      const cur = store.groups[resource.id];
      if (!cur) throw scimError(404, null, `Resource ${resource.id} not found`);
      assertUniqueGroupName(data.displayName, cur.id);
      const meta = { ...cur.meta };
      touch(meta);
      store.groups[cur.id] = { id: cur.id, ...data, meta };
      persist();
      return store.groups[cur.id];
    }
    assertUniqueGroupName(data.displayName, null);
    const id = crypto.randomUUID();
    store.groups[id] = { id, ...data, meta: newMeta('Group') };
    persist();
    return store.groups[id];
  },
  degress(resource) {
    if (!store.groups[resource.id]) throw scimError(404, null, `Resource ${resource.id} not found`);
    delete store.groups[resource.id];
    persist();
  },
});

// ---------------------------------------------------------------------------
// Request log and fault injection.

const requestLog = [];
const MAX_LOG = 5000;
let faults = {};

function compileFaults(f) {
  const out = { ...f };
  out.latencyRe = f.latency_paths ? new RegExp(f.latency_paths) : null;
  out.failRe = f.fail_paths ? new RegExp(f.fail_paths) : null;
  out.slowRe = f.slow_body_paths ? new RegExp(f.slow_body_paths) : null;
  out.remaining = f.fail_count !== undefined ? Number(f.fail_count)
    : ((f.fail_status || f.reset) ? 1 : 0);
  return out;
}

function failMatches(req) {
  if (!(faults.remaining > 0)) return false;
  if (faults.fail_method && faults.fail_method.toUpperCase() !== req.method) return false;
  if (faults.failRe && !faults.failRe.test(req.originalUrl)) return false;
  return true;
}

const app = express();
app.disable('x-powered-by');
app.set('etag', false);

// Admin API first: never logged, never faulted, no auth.
app.use('/_admin', express.json());
app.post('/_admin/faults', (req, res) => {
  try {
    faults = compileFaults(req.body || {});
  } catch (e) {
    res.status(400).json({ error: e.message });
    return;
  }
  const { latencyRe, failRe, slowRe, ...shown } = faults;
  res.json({ faults: shown });
});
app.get('/_admin/faults', (req, res) => {
  const { latencyRe, failRe, slowRe, ...shown } = faults;
  res.json({ faults: shown });
});
app.get('/_admin/state', (req, res) => {
  res.json({
    users: usersOut(true),
    groups: Object.values(store.groups),
    requests: requestLog,
  });
});
app.post('/_admin/reset-log', (req, res) => {
  requestLog.length = 0;
  res.json({ ok: true });
});
app.post('/_admin/clear', (req, res, next) => {
  resetSpc();
  next();
});
app.post('/_admin/clear', (req, res) => {
  store.users = {};
  for (const g of Object.values(store.groups)) {
    g.members = [];
    touch(g.meta);
  }
  persist();
  requestLog.length = 0;
  faults = {};
  res.json({ ok: true });
});
// Advertised ServiceProviderConfig (additive): {"patch": bool, "etag": bool,
// "filter": bool (filter.supported; only what is advertised: filters are
// still evaluated), "filter_max_results": n, "bulk": bool,
// "bulk_max_operations": n, "bulk_max_payload": bytes}. patch=false also makes PATCH answer 501, so a
// client must fall back to PUT. Reset by /_admin/clear.
let spcOverride = {};
function applySpc(o) {
  const cur = SCIMMY.Config.get();
  const set = {};
  if (o.patch !== undefined) set.patch = { supported: Boolean(o.patch) };
  if (o.etag !== undefined) set.etag = { supported: Boolean(o.etag) };
  if (o.filter_max_results !== undefined || o.filter !== undefined) {
    set.filter = {
      supported: o.filter !== undefined ? Boolean(o.filter) : cur.filter.supported,
      maxResults: o.filter_max_results !== undefined ? Number(o.filter_max_results) : cur.filter.maxResults,
    };
  }
  if (o.bulk !== undefined || o.bulk_max_operations !== undefined || o.bulk_max_payload !== undefined) {
    set.bulk = {
      supported: o.bulk !== undefined ? Boolean(o.bulk) : cur.bulk.supported,
      maxOperations: o.bulk_max_operations !== undefined ? Number(o.bulk_max_operations) : cur.bulk.maxOperations,
      maxPayloadSize: o.bulk_max_payload !== undefined ? Number(o.bulk_max_payload) : cur.bulk.maxPayloadSize,
    };
  }
  if (Object.keys(set).length) SCIMMY.Config.set(set);
}
let spcDefaults = null;
function resetSpc() {
  if (spcDefaults !== null) applySpc(spcDefaults);
  spcOverride = {};
  userGroups = true;
  oauth = null;
}
app.post('/_admin/config', (req, res) => {
  try {
    if (spcDefaults === null) {
      const c = SCIMMY.Config.get();
      spcDefaults = {
        patch: c.patch.supported, etag: c.etag.supported, filter: c.filter.supported, filter_max_results: c.filter.maxResults,
        bulk: c.bulk.supported, bulk_max_operations: c.bulk.maxOperations, bulk_max_payload: c.bulk.maxPayloadSize,
      };
    }
    const { user_groups: ug, ...spc } = req.body || {};
    if (ug !== undefined) userGroups = Boolean(ug);
    spcOverride = { ...spcOverride, ...spc };
    applySpc(spcOverride);
  } catch (e) {
    res.status(400).json({ error: e.message });
    return;
  }
  res.json({ config: spcOverride });
});

// OAuth 2.0 client credentials token endpoint (additive; off until
// POST /_admin/oauth {"client_id", "client_secret", "expires_in"?,
// "latency_ms"?}). Tokens it issues are accepted as bearer tokens (besides
// --token) until they expire. GET /_admin/oauth -> {token_requests,
// last_scope, last_auth}. Reset by /_admin/clear.
let oauth = null;
app.post('/_admin/oauth', (req, res) => {
  const b = req.body || {};
  oauth = {
    client_id: String(b.client_id || ''),
    client_secret: String(b.client_secret || ''),
    expires_in: b.expires_in !== undefined ? Number(b.expires_in) : 3600,
    latency_ms: Number(b.latency_ms || 0),
    token_requests: 0,
    last_scope: null,
    last_auth: null,
    tokens: new Map(),
  };
  res.json({ ok: true });
});
app.get('/_admin/oauth', (req, res) => {
  res.json(oauth ? { token_requests: oauth.token_requests, last_scope: oauth.last_scope, last_auth: oauth.last_auth } : {});
});
app.post('/oauth/token', express.urlencoded({ extended: false }), (req, res) => {
  if (!oauth) { res.status(404).json({ error: 'not_found' }); return; }
  oauth.token_requests += 1;
  const o = oauth;
  const answer = () => {
    const m = /^Basic\s+(.+)$/i.exec(req.headers.authorization || '');
    const [id, secret] = m ? Buffer.from(m[1], 'base64').toString().split(':').map(decodeURIComponent) : [];
    o.last_auth = m ? 'basic' : null;
    o.last_scope = req.body?.scope ?? null;
    if (req.body?.grant_type !== 'client_credentials') {
      res.status(400).json({ error: 'unsupported_grant_type' });
      return;
    }
    if (id !== o.client_id || secret !== o.client_secret) {
      res.status(401).json({ error: 'invalid_client' });
      return;
    }
    const token = crypto.randomBytes(16).toString('hex');
    o.tokens.set(token, Date.now() + o.expires_in * 1000);
    res.json({ access_token: token, token_type: 'Bearer', expires_in: o.expires_in });
  };
  if (o.latency_ms > 0) setTimeout(answer, o.latency_ms); else answer();
});

app.use('/_admin', (req, res) => res.status(404).json({ error: 'unknown admin endpoint' }));

// Parse SCIM bodies ourselves so the log can record them (SCIMMY Routers'
// own parser skips an already-parsed body).
app.use(express.json({ type: ['application/scim+json', 'application/json'], limit: '1mb' }));

// Which credential a request carried (never the credential itself):
// "oauth" (a token from /oauth/token), "static" (--token), "other", "none".
function authKind(h) {
  const m = /^Bearer\s+(.+)$/i.exec(h || '');
  if (!h) return 'none';
  if (!m) return 'other';
  if (oauth?.tokens.has(m[1])) return 'oauth';
  return m[1] === opt.token ? 'static' : 'other';
}

// Log every SCIM request with its final status.
app.use((req, res, next) => {
  const entry = {
    method: req.method,
    path: req.path,
    url: req.originalUrl,
    status: 0,
    ts: Date.now(),
    ...(req.body !== undefined && Object.keys(req.body || {}).length ? { body: req.body } : {}),
    ...(req.headers['if-match'] ? { if_match: req.headers['if-match'] } : {}),
    auth: authKind(req.headers.authorization),
  };
  requestLog.push(entry);
  if (requestLog.length > MAX_LOG) requestLog.shift();
  res.on('finish', () => { entry.status = res.statusCode; });
  res.on('close', () => {
    if (!res.writableFinished) { entry.status = 0; entry.reset = true; }
  });
  next();
});

// The legacy dialect knows no schema extensions and refuses a User that
// carries one (as strict servers do), instead of dropping it silently.
app.use((req, res, next) => {
  if (LEGACY && ['POST', 'PUT'].includes(req.method) && /\/Users(\/[^/]+)?$/.test(req.path)
      && req.body && typeof req.body === 'object'
      && Object.keys(req.body).some((k) => /^urn:/i.test(k))) {
    res.status(400).type('application/scim+json').send(JSON.stringify({
      schemas: ['urn:ietf:params:scim:api:messages:2.0:Error'],
      status: '400',
      scimType: 'invalidSyntax',
      detail: 'schema extensions are not supported',
    }));
    return;
  }
  next();
});

// PATCH switched off through /_admin/config: 501 like a server without it.
app.use((req, res, next) => {
  const patchOff = spcOverride.patch !== undefined ? spcOverride.patch === false : LEGACY;
  if (req.method === 'PATCH' && patchOff) {
    res.status(501).type('application/scim+json').send(JSON.stringify({
      schemas: ['urn:ietf:params:scim:api:messages:2.0:Error'],
      status: '501',
      detail: 'PATCH is not supported',
    }));
    return;
  }
  next();
});

// Latency first (async: other requests keep flowing), then failures.
app.use((req, res, next) => {
  const ms = Number(faults.latency_ms || 0);
  if (ms > 0 && (!faults.latencyRe || faults.latencyRe.test(req.originalUrl))) {
    setTimeout(next, ms);
  } else {
    next();
  }
});
// Slow body ("slow_body_ms", optional "slow_body_paths" regex): the status,
// headers and first byte of the answer go out at once, the rest of the body
// slow_body_ms later, so a client's whole-call timeout (not its connect or
// first-byte timeout) is what must fire.
app.use((req, res, next) => {
  const ms = Number(faults.slow_body_ms || 0);
  if (!(ms > 0) || (faults.slowRe && !faults.slowRe.test(req.originalUrl))) { next(); return; }
  const end = res.end.bind(res);
  res.end = (chunk, enc, cb) => {
    const buf = chunk === undefined || chunk === null ? Buffer.alloc(0)
      : (Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, typeof enc === 'string' ? enc : 'utf8'));
    if (buf.length < 2) return end(chunk, enc, cb);
    res.write(buf.subarray(0, 1));
    setTimeout(() => { if (!res.destroyed) end(buf.subarray(1)); }, ms);
    return res;
  };
  next();
});
app.use((req, res, next) => {
  if (!failMatches(req)) { next(); return; }
  faults.remaining -= 1;
  if (faults.reset) {
    req.socket.destroy();
    return;
  }
  const status = Number(faults.fail_status || 500);
  if (faults.retry_after !== undefined) res.set('Retry-After', String(faults.retry_after));
  res.status(status).type('application/scim+json').send(JSON.stringify({
    schemas: ['urn:ietf:params:scim:api:messages:2.0:Error'],
    status: String(status),
    ...(status === 409 ? { scimType: 'uniqueness' } : {}),
    detail: `injected fault (${status})`,
  }));
});

// ETag: mirror meta.version of a single resource in the response header,
// and honour If-Match on writes (412 on mismatch).
app.use(BASE, (req, res, next) => {
  if (LEGACY && spcOverride.etag !== true) { next(); return; }
  const m = /^\/(Users|Groups)\/([^/]+)$/.exec(req.path);
  const ifMatch = req.headers['if-match'];
  if (m && ifMatch && ifMatch !== '*' && ['PUT', 'PATCH', 'DELETE'].includes(req.method)) {
    const coll = m[1] === 'Users' ? store.users : store.groups;
    const cur = coll[m[2]];
    const tags = ifMatch.split(',').map((s) => s.trim());
    if (cur && !tags.includes(cur.meta.version)) {
      res.status(412).type('application/scim+json').send(JSON.stringify({
        schemas: ['urn:ietf:params:scim:api:messages:2.0:Error'],
        status: '412',
        detail: 'If-Match precondition failed',
      }));
      return;
    }
  }
  const send = res.send.bind(res);
  res.send = (body) => {
    if (body && typeof body === 'object' && body.meta?.version && !Array.isArray(body.Resources)) {
      res.set('ETag', body.meta.version);
    }
    return send(body);
  };
  next();
});

app.use(BASE, new SCIMMYRouters({
  type: 'bearer',
  docUri: 'https://datatracker.ietf.org/doc/html/rfc6750',
  handler: (req) => {
    const auth = req.headers.authorization || '';
    const m = /^Bearer\s+(.+)$/i.exec(auth);
    if (!m) throw new Error('Authorization header with a Bearer token required');
    const exp = oauth?.tokens.get(m[1]);
    if (exp !== undefined && exp > Date.now()) return 'admin';
    const a = Buffer.from(m[1]);
    const b = Buffer.from(opt.token);
    if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) throw new Error('Invalid bearer token');
    return 'admin';
  },
  baseUri: (req) => `http://${req.headers.host}`,
}));
// the legacy dialect's capabilities (after the router, which sets its own)
if (LEGACY) applySpc({ patch: false, etag: false });

app.use((req, res) => {
  res.status(404).json({ error: 'not found' });
});
// Errors thrown past the SCIM router (e.g. JSON parse errors).
app.use((err, req, res, next) => {
  const status = err.status || err.statusCode || 500;
  if (!opt.quiet && status >= 500) process.stderr.write(`scim-server: ${err.stack || err}\n`);
  if (res.headersSent) { next(err); return; }
  res.status(status).type('application/scim+json').send(JSON.stringify({
    schemas: ['urn:ietf:params:scim:api:messages:2.0:Error'],
    status: String(status),
    ...(err.scimType ? { scimType: err.scimType } : {}),
    detail: err.message,
  }));
});

const server = http.createServer(app);
server.keepAliveTimeout = 5000;
listenReady(server, port, { name: 'scim-server', exitOnStdinClose: opt['exit-on-stdin-close'] });
