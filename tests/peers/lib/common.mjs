// Shared helpers for the test peers: option parsing (CLI flag, then
// environment variable, then default), loopback-only listening, small body
// reader, and "exit when the parent goes away".

import { parseArgs } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';

export const LOOPBACK = '127.0.0.1';

/**
 * Parse CLI options. `spec` maps option name -> {type: 'string'|'boolean',
 * default}. Each option may also come from env `${envPrefix}_${NAME}` (upper
 * case, '-' -> '_'). CLI wins over env, env over default.
 */
export function options(spec, envPrefix) {
  const parseSpec = {};
  for (const [name, s] of Object.entries(spec)) parseSpec[name] = { type: s.type || 'string' };
  const { values } = parseArgs({ options: parseSpec, strict: true, allowPositionals: false });
  const out = {};
  for (const [name, s] of Object.entries(spec)) {
    const envName = `${envPrefix}_${name.toUpperCase().replace(/-/g, '_')}`;
    let v = values[name];
    if (v === undefined && process.env[envName] !== undefined) {
      v = process.env[envName];
      if (s.type === 'boolean') v = /^(1|true|yes|on)$/i.test(v);
    }
    if (v === undefined) v = s.default;
    out[name] = v;
  }
  return out;
}

/** Parse a port option; exits with a message if invalid. */
export function portOption(v, name = 'port') {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    fail(`--${name} must be an integer 0..65535 (got ${v})`);
  }
  return n;
}

export function fail(msg) {
  process.stderr.write(`${path.basename(process.argv[1])}: ${msg}\n`);
  process.exit(2);
}

/** Read and parse a JSON file; exits with a message on error. */
export function readJson(file, what) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return fail(`cannot read ${what} file ${file}: ${e.message}`);
  }
}

/** Write a file atomically (temp file in the same directory + rename). */
export function writeFileAtomic(file, data) {
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

/**
 * Read a request body (capped at `limit` bytes; larger bodies reject with
 * an Error whose .status is 413).
 */
export function readBody(req, limit = 1024 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        const e = new Error('request body too large');
        e.status = 413;
        reject(e);
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Parse an application/x-www-form-urlencoded body into a plain object. */
export function parseForm(buf) {
  return Object.fromEntries(new URLSearchParams(buf.toString('utf8')));
}

export function sendJson(res, status, obj, headers = {}) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(body);
}

export function sendHtml(res, status, html, headers = {}) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': Buffer.byteLength(html),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(html);
}

export function escapeHtml(s) {
  return String(s)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/**
 * Listen on 127.0.0.1:port, run the optional async beforeReady(boundPort),
 * then print "ready <name> port=<port>" on stdout, and
 * close the server on SIGTERM/SIGINT. With exitOnStdinClose the process
 * also exits when its stdin reaches EOF, so a peer never outlives a harness
 * that was killed hard.
 */
export function listenReady(server, port, {
  name, exitOnStdinClose = false, onClose, beforeReady,
} = {}) {
  server.on('error', (e) => fail(`listen failed: ${e.message}`));
  server.listen(port, LOOPBACK, async () => {
    const addr = server.address();
    if (beforeReady) {
      try {
        await beforeReady(addr.port);
      } catch (e) {
        fail(`startup failed: ${e.stack || e}`);
      }
    }
    process.stdout.write(`ready ${name || ''} port=${addr.port}\n`);
  });
  const shutdown = () => {
    if (onClose) {
      try { onClose(); } catch { /* best effort */ }
    }
    server.close();
    server.closeAllConnections?.();
    setTimeout(() => process.exit(0), 200).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  if (exitOnStdinClose) {
    process.stdin.on('end', shutdown);
    process.stdin.on('error', shutdown);
    process.stdin.resume();
  }
}
