#!/usr/bin/env node
// Echo upstream for provgate integration tests and the demo: answers any
// request with JSON {method, url, headers, rawHeaders, body} where
// `headers` keeps header names exactly as received (req.rawHeaders;
// repeated names become arrays). If Accept includes text/html it returns a
// small HTML page listing the X-Provgate-* headers instead.
//
//   node echo-upstream.mjs --port 0
//
// Admin: GET /_echo/log (recent requests), POST /_echo/reset.
// Env fallback: ECHO_PORT.

import http from 'node:http';
import {
  options, portOption, listenReady, readBody, sendJson, sendHtml, escapeHtml,
} from './lib/common.mjs';

const opt = options({
  port: { default: '0' },
  name: { default: 'echo-upstream' },
  'exit-on-stdin-close': { type: 'boolean', default: false },
}, 'ECHO');

const port = portOption(opt.port);
const log = [];
const MAX_LOG = 1000;
const MAX_BODY = 64 * 1024;

function headerObject(raw) {
  const out = {};
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i];
    const value = raw[i + 1];
    if (Object.prototype.hasOwnProperty.call(out, name)) {
      out[name] = [].concat(out[name], value);
    } else {
      out[name] = value;
    }
  }
  return out;
}

function htmlPage(rec) {
  const rows = [];
  for (let i = 0; i + 1 < rec.rawHeaders.length; i += 2) {
    if (/^x-provgate-/i.test(rec.rawHeaders[i])) {
      rows.push(`<tr><th>${escapeHtml(rec.rawHeaders[i])}</th><td>${escapeHtml(rec.rawHeaders[i + 1])}</td></tr>`);
    }
  }
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(opt.name)}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style>
</head><body>
<h1>${escapeHtml(opt.name)}</h1>
<p>${escapeHtml(rec.method)} <code>${escapeHtml(rec.url)}</code></p>
<h2>Identity headers from provgate</h2>
${rows.length ? `<table id="provgate-headers">${rows.join('\n')}</table>` : '<p id="no-provgate-headers">No X-Provgate-* headers were received.</p>'}
</body></html>`;
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.url === '/_echo/log' && req.method === 'GET') {
      sendJson(res, 200, { requests: log });
      return;
    }
    if (req.url === '/_echo/reset' && req.method === 'POST') {
      log.length = 0;
      sendJson(res, 200, { ok: true });
      return;
    }
    let body = await readBody(req, MAX_BODY).catch(() => null);
    body = body === null ? '<body too large>' : body.toString('utf8');
    const rec = {
      method: req.method,
      url: req.url,
      httpVersion: req.httpVersion,
      headers: headerObject(req.rawHeaders),
      rawHeaders: req.rawHeaders,
      body,
      ts: Date.now(),
    };
    log.push(rec);
    if (log.length > MAX_LOG) log.shift();
    if (/text\/html/i.test(req.headers.accept || '')) {
      sendHtml(res, 200, htmlPage(rec));
    } else {
      sendJson(res, 200, rec);
    }
  } catch (e) {
    if (!res.headersSent) sendJson(res, 500, { error: e.message });
  }
});

listenReady(server, port, { name: opt.name, exitOnStdinClose: opt['exit-on-stdin-close'] });
