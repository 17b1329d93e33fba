'use strict';
/*
 * Fault injection and bearer auth in front of json-server (the REST target
 * of tests/unit/test_rest.c). Resource behaviour is json-server's own;
 * this file only decides whether a request reaches it.
 *
 *   json-server db.json --host 127.0.0.1 --port P --quiet --no-gzip \
 *       --middlewares tests/peers/rest-target/middleware.cjs
 *
 * Environment:
 *   REST_TARGET_TOKEN         bearer token every resource request needs
 *                             (default "rest-target-token"); missing or
 *                             wrong: 401 {"error": "..."}
 *   REST_TARGET_BASIC         optional "user:password": HTTP basic with
 *                             these credentials is accepted as well
 *   REST_TARGET_EXIT_ON_STDIN_CLOSE=1   exit when stdin closes
 *
 * Admin routes (no auth, never faulted, not logged):
 *   POST /_admin/faults  replace the fault set ({} clears):
 *        status       answer this status instead (e.g. 429, 500)
 *        retry_after  Retry-After header value (with status)
 *        delay_ms     wait this long first (then fault or pass on)
 *        count        next n matching requests (default 1)
 *        method       only this method (e.g. "POST")
 *        path         only URLs matching this regex
 *   GET  /_admin/log     {requests: [{method, url, auth, body, status}]}
 *                        url is the raw request target as received
 *   POST /_admin/reset   clear the log and the faults
 */
const TOKEN = process.env.REST_TARGET_TOKEN || 'rest-target-token';
const BASIC = process.env.REST_TARGET_BASIC
  ? `Basic ${Buffer.from(process.env.REST_TARGET_BASIC).toString('base64')}`
  : null;
let faults = null;
let log = [];

if (process.env.REST_TARGET_EXIT_ON_STDIN_CLOSE === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}

function matches(f, req) {
  if (!f || f.count <= 0) return false;
  if (f.method && f.method !== req.method) return false;
  if (f.path && !new RegExp(f.path).test(req.originalUrl)) return false;
  return true;
}

module.exports = (req, res, next) => {
  if (req.path.startsWith('/_admin/')) {
    if (req.method === 'POST' && req.path === '/_admin/faults') {
      const b = req.body || {};
      faults = Object.keys(b).length === 0 ? null : {
        status: b.status | 0,
        retry_after: b.retry_after,
        delay_ms: b.delay_ms | 0,
        count: b.count === undefined ? 1 : b.count | 0,
        method: b.method,
        path: b.path,
      };
      return res.status(200).json({ ok: true });
    }
    if (req.method === 'GET' && req.path === '/_admin/log') {
      return res.status(200).json({ requests: log });
    }
    if (req.method === 'POST' && req.path === '/_admin/reset') {
      faults = null;
      log = [];
      return res.status(200).json({ ok: true });
    }
    return res.status(404).json({ error: 'no such admin route' });
  }

  const entry = {
    method: req.method,
    url: req.originalUrl,
    auth: req.headers.authorization === `Bearer ${TOKEN}`
      || (BASIC !== null && req.headers.authorization === BASIC),
    body: req.body,
    status: 0,
  };
  log.push(entry);
  res.on('finish', () => { entry.status = res.statusCode; });

  const proceed = () => {
    if (!entry.auth) {
      // the same answer for missing, wrong bearer and wrong basic
      return res.status(401).json({ error: 'missing or bad bearer token' });
    }
    return next();
  };

  if (matches(faults, req)) {
    const f = faults;
    f.count -= 1;
    const act = () => {
      if (f.status) {
        if (f.retry_after !== undefined) {
          res.setHeader('Retry-After', String(f.retry_after));
        }
        return res.status(f.status).json({ error: `injected ${f.status}` });
      }
      return proceed();
    };
    if (f.delay_ms > 0) {
      return setTimeout(act, f.delay_ms);
    }
    return act();
  }
  return proceed();
};
