// Integration-test harness for provgate: child processes (redis, nginx, the
// test peers in tests/peers/), free ports, temp dirs, a scripted browser with
// a cookie jar, and an OIDC login driver. Node built-ins only.
//
// Every child is started in its own process group and remembered; groups
// are killed when the test process exits for any reason (normal end, failed
// assertion, uncaught exception, SIGINT/SIGTERM), so nothing is left behind.
// Node peers are also started with --exit-on-stdin-close, so they exit even
// if this process is SIGKILLed.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const PEERS_DIR = path.join(REPO_ROOT, 'tests', 'peers');
export const NGINX_BIN = process.env.PG_NGINX_BIN || '/usr/sbin/nginx';
export const REDIS_BIN = process.env.PG_REDIS_BIN || '/usr/bin/redis-server';
export const LOOPBACK = '127.0.0.1';

const KEEP_TMP = /^(1|true|yes)$/i.test(process.env.PG_KEEP_TMP || '');
const MAX_OUTPUT = 256 * 1024;

// ---------------------------------------------------------------------------
// Global cleanup.

const liveProcs = new Set();
const tempDirs = new Set();

function killGroupSync(pid, signal = 'SIGKILL') {
  if (!pid) return;
  // Every child is spawned detached, i.e. leads its own process group.
  try { process.kill(-pid, signal); } catch { /* group already gone */ }
}

function emergencyCleanup() {
  for (const p of liveProcs) killGroupSync(p.pid, 'SIGKILL');
  liveProcs.clear();
  if (!KEEP_TMP) {
    for (const d of tempDirs) {
      try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* ignore */ }
    }
  }
  tempDirs.clear();
}

// Watchdog: a tiny detached node process reading our pipe. It learns every
// process group we start ("add <pgid>") or reap ("del <pgid>") and, when
// the pipe closes because this process died -- even by SIGKILL, where no
// exit hook runs -- it SIGKILLs the groups still registered.
const WATCHDOG_SRC = `
const groups = new Set();
let buf = '';
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});
process.stdin.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const [op, id] = buf.slice(0, i).split(' ');
    buf = buf.slice(i + 1);
    if (op === 'add') groups.add(Number(id)); else if (op === 'del') groups.delete(Number(id));
  }
});
const end = () => {
  for (const g of groups) { try { process.kill(-g, 'SIGKILL'); } catch {} }
  process.exit(0);
};
process.stdin.on('end', end);
process.stdin.on('error', end);
`;
let watchdog = null;

function watchdogSend(line) {
  try {
    if (!watchdog) {
      watchdog = spawn(process.execPath, ['-e', WATCHDOG_SRC], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
      watchdog.on('error', () => { /* best effort */ });
      watchdog.stdin.on('error', () => { /* watchdog gone */ });
      watchdog.unref();
      watchdog.stdin.unref?.();
    }
    watchdog.stdin.write(`${line}\n`);
  } catch { /* best effort */ }
}

process.on('exit', emergencyCleanup);
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]]) {
  process.on(sig, () => {
    emergencyCleanup();
    process.exit(code);
  });
}

/** Stop every process started through this harness (use in after()). */
export async function cleanupAll() {
  await Promise.all([...liveProcs].map((p) => p.stop().catch(() => {})));
}

/** Register `fn` to run after the test/suite `t` (if given). */
function onCleanup(t, fn) {
  if (t && typeof t.after === 'function') t.after(fn);
}

/**
 * Create a temp directory under os.tmpdir(); removed when the process
 * exits (unless PG_KEEP_TMP=1), or after `t` when a test context is given.
 */
export function tempDir(prefix = 'pg-it-', t) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(d);
  onCleanup(t, () => {
    if (!KEEP_TMP) fs.rmSync(d, { recursive: true, force: true });
    tempDirs.delete(d);
  });
  return d;
}

export const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

/** Poll fn (every 100 ms) until it returns something truthy and return
 * that; after ms, fail the test naming what was awaited. */
export async function until(what, fn, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await fn();
    if (v) return v;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// ---------------------------------------------------------------------------
// Ports.

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, LOOPBACK, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolve once 127.0.0.1:port accepts a TCP connection. */
export async function waitForPort(port, { timeoutMs = 10000, host = LOOPBACK } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ port, host });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${port} not accepting connections after ${timeoutMs} ms`);
    await sleep(25);
  }
}

// ---------------------------------------------------------------------------
// Managed child processes.

export class ManagedProcess {
  constructor(name, child, logStream) {
    this.name = name;
    this.child = child;
    this.pid = child.pid;
    this.output = '';
    this.exitCode = null;
    this.exitSignal = null;
    this.logStream = logStream;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitCode = code;
        this.exitSignal = signal;
        liveProcs.delete(this);
        // Reap anything left in the group (e.g. nginx workers) right away,
        // while the group id cannot have been recycled.
        this.groupReaped = true;
        killGroupSync(this.pid, 'SIGKILL');
        watchdogSend(`del ${this.pid}`);
        resolve({ code, signal });
      });
    });
    const onData = (chunk) => {
      const s = chunk.toString('utf8');
      this.output += s;
      if (this.output.length > MAX_OUTPUT) this.output = this.output.slice(-MAX_OUTPUT);
      if (this.logStream) this.logStream.write(chunk);
      for (const w of this.watchers) w();
    };
    this.watchers = new Set();
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
  }

  get running() {
    return this.exitCode === null && this.exitSignal === null;
  }

  /** Send `signal` to the whole process group. */
  kill(signal = 'SIGTERM') {
    if (this.running) killGroupSync(this.pid, signal);
  }

  /**
   * Stop the process group: `signal`, then SIGKILL after timeoutMs.
   * Resolves with {code, signal} once the leader has exited.
   */
  async stop({ signal = 'SIGTERM', timeoutMs = 5000 } = {}) {
    if (this.running) {
      this.kill(signal);
      const timer = setTimeout(() => this.kill('SIGKILL'), timeoutMs);
      await this.exited;
      clearTimeout(timer);
    }
    // Leftovers in the group (e.g. nginx workers) go too -- once, right
    // after the leader exited, so a recycled pid can never be hit later.
    if (!this.groupReaped) {
      this.groupReaped = true;
      killGroupSync(this.pid, 'SIGKILL');
    }
    this.detach();
    return this.exited;
  }

  detach() {
    this.child.stdin?.destroy();
    this.child.stdout?.destroy();
    this.child.stderr?.destroy();
    if (this.logStream) {
      this.logStream.end();
      this.logStream = null;
    }
  }

  /** Resolve when `re` matches the accumulated output. */
  waitForOutput(re, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = re.exec(this.output);
        if (m) { done(); resolve(m); return true; }
        if (!this.running) {
          done();
          reject(new Error(`${this.name} exited (code ${this.exitCode}, signal ${this.exitSignal}) before ${re}:\n${this.output.slice(-4000)}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name}: no ${re} within ${timeoutMs} ms:\n${this.output.slice(-4000)}`));
      }, timeoutMs);
      const onExit = () => check();
      const done = () => {
        clearTimeout(timer);
        this.watchers.delete(check);
        this.child.removeListener('exit', onExit);
      };
      if (check()) return;
      this.watchers.add(check);
      this.child.once('exit', onExit);
    });
  }
}

/**
 * Start `cmd args` in its own process group and wait until it is ready:
 * `readyRegex` matched against stdout+stderr, and/or `waitPort` (a port or
 * list of ports) accepting connections. `logFile` receives all output.
 * With `t` (a node:test context) the process is stopped after that test.
 * Rejects (after killing the process) if it exits early or times out.
 */
export async function startProcess(cmd, args = [], {
  readyRegex, waitPort, env, cwd, logFile, t, name, timeoutMs = 15000, stdin = 'pipe',
} = {}) {
  const logStream = logFile ? fs.createWriteStream(logFile, { flags: 'a' }) : null;
  const child = spawn(cmd, args, {
    cwd,
    env: { ...process.env, ...(env || {}) },
    detached: true,
    stdio: [stdin, 'pipe', 'pipe'],
  });
  const proc = new ManagedProcess(name || path.basename(cmd), child, logStream);
  await new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  liveProcs.add(proc);
  watchdogSend(`add ${proc.pid}`);
  onCleanup(t, () => proc.stop());
  try {
    if (readyRegex) await proc.waitForOutput(readyRegex, timeoutMs);
    const ports = waitPort === undefined ? [] : [].concat(waitPort);
    for (const p of ports) {
      await Promise.race([
        waitForPort(p, { timeoutMs }),
        proc.exited.then(() => { throw new Error(`${proc.name} exited before port ${p} opened:\n${proc.output.slice(-4000)}`); }),
      ]);
    }
  } catch (e) {
    await proc.stop({ signal: 'SIGKILL' });
    throw e;
  }
  // Forgotten processes must not keep the test runner alive; the exit
  // hook still kills them.
  child.unref();
  child.stdout?.unref?.();
  child.stderr?.unref?.();
  child.stdin?.unref?.();
  return proc;
}

// ---------------------------------------------------------------------------
// Redis.

/**
 * Start redis-server on 127.0.0.1 (AOF on by default, RDB snapshots off).
 * Returns a handle {port, dir, proc, url, command(...args), stop(), restart()}.
 */
export async function startRedis({ dir, port, aof = true, t, extraArgs = [], logFile } = {}) {
  const h = {
    dir: dir || tempDir('pg-redis-', t),
    port: port || await freePort(),
    aof,
    extraArgs,
    logFile,
    proc: null,
  };
  fs.mkdirSync(h.dir, { recursive: true });
  h.url = `redis://${LOOPBACK}:${h.port}`;
  h.command = (...args) => redisCommand(h.port, ...args);
  h.stop = (opts) => stopRedis(h, opts);
  h.restart = (opts) => restartRedis(h, opts);
  await launchRedis(h);
  onCleanup(t, () => stopRedis(h));
  return h;
}

async function launchRedis(h) {
  h.proc = await startProcess(REDIS_BIN, [
    '--port', String(h.port),
    '--bind', LOOPBACK,
    '--dir', h.dir,
    '--appendonly', h.aof ? 'yes' : 'no',
    '--appendfsync', 'always',
    '--save', '',
    '--daemonize', 'no',
    '--logfile', '',
    ...h.extraArgs,
  ], {
    name: `redis:${h.port}`, readyRegex: /Ready to accept connections/, logFile: h.logFile,
  });
}

/** Stop redis (SIGTERM = clean shutdown; pass {signal:'SIGKILL'} for a crash). */
export async function stopRedis(h, { signal = 'SIGTERM' } = {}) {
  if (h.proc) await h.proc.stop({ signal });
}

/** Stop and start redis again on the same port and data dir. */
export async function restartRedis(h, { signal = 'SIGTERM' } = {}) {
  await stopRedis(h, { signal });
  await launchRedis(h);
  return h;
}

function encodeResp(args) {
  const parts = [`*${args.length}\r\n`];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
    parts.push(`$${b.length}\r\n`, b, '\r\n');
  }
  return Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p))));
}

// Parse one RESP2 value at `pos`; returns {value, pos} or null if incomplete.
function parseResp(buf, pos = 0) {
  const nl = buf.indexOf('\r\n', pos);
  if (nl < 0) return null;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.toString('utf8', pos + 1, nl);
  const next = nl + 2;
  switch (type) {
    case '+': return { value: line, pos: next };
    case '-': {
      const e = new Error(line);
      e.redisError = true;
      return { value: e, pos: next };
    }
    case ':': return { value: Number(line), pos: next };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, pos: next };
      if (buf.length < next + n + 2) return null;
      return { value: buf.toString('utf8', next, next + n), pos: next + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, pos: next };
      const arr = [];
      let p = next;
      for (let i = 0; i < n; i += 1) {
        const r = parseResp(buf, p);
        if (!r) return null;
        arr.push(r.value);
        p = r.pos;
      }
      return { value: arr, pos: p };
    }
    default:
      throw new Error(`bad RESP type byte ${JSON.stringify(type)}`);
  }
}

/**
 * Send one command over a fresh raw TCP connection (RESP2) and resolve with
 * the parsed reply (string, number, null, array). Redis errors reject.
 */
export function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: LOOPBACK });
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => { sock.destroy(); reject(new Error('redis command timed out')); }, 5000);
    sock.on('connect', () => sock.write(encodeResp(args)));
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      let r;
      try {
        r = parseResp(buf);
      } catch (e) {
        clearTimeout(timer); sock.destroy(); reject(e); return;
      }
      if (!r) return;
      clearTimeout(timer);
      sock.destroy();
      if (r.value instanceof Error) reject(r.value); else resolve(r.value);
    });
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

// ---------------------------------------------------------------------------
// Test peers (tests/peers/*.mjs).

function peerScript(name) {
  const script = path.join(PEERS_DIR, name);
  if (!fs.existsSync(path.join(PEERS_DIR, 'node_modules'))) {
    throw new Error(`peer dependencies missing: run "cd ${PEERS_DIR} && npm install --no-audit --no-fund"`);
  }
  return script;
}

function startPeer(file, args, { t, logFile, env, name }) {
  return startProcess(process.execPath, [peerScript(file), ...args, '--exit-on-stdin-close'], {
    name, readyRegex: /^ready\b/m, t, logFile, env, cwd: PEERS_DIR,
  });
}

async function jsonRequest(method, url, body, headers = {}) {
  const res = await fetch(url, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json;
  try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
  return {
    status: res.status, headers: res.headers, text, json,
  };
}

/**
 * Start the real OpenID provider (tests/peers/oidc-op.mjs).
 * clients: array of client metadata; users: {username: {password, claims}}.
 * Returns {proc, port, issuer, discoveryUrl, dir, keysFile, stop()}.
 */
export async function startOidcOp({
  clients, users, keysFile, port, dir, t, logFile,
} = {}) {
  const d = dir || tempDir('pg-op-', t);
  const p = port || await freePort();
  const issuer = `http://${LOOPBACK}:${p}`;
  const clientsFile = path.join(d, 'clients.json');
  const usersFile = path.join(d, 'users.json');
  fs.writeFileSync(clientsFile, JSON.stringify(clients || [], null, 2));
  fs.writeFileSync(usersFile, JSON.stringify(users || {}, null, 2));
  const kf = keysFile || path.join(d, 'jwks.json');
  const proc = await startPeer('oidc-op.mjs', [
    '--port', String(p), '--issuer', issuer,
    '--clients', clientsFile, '--users', usersFile, '--keys', kf,
  ], { t, logFile, name: `oidc-op:${p}` });
  return {
    proc,
    port: p,
    issuer,
    discoveryUrl: `${issuer}/.well-known/openid-configuration`,
    dir: d,
    keysFile: kf,
    stop: () => proc.stop(),
  };
}

/**
 * Start the fault-injection OP (tests/peers/rogue-op.mjs).
 * Returns {proc, port, issuer, clientId, setMode(mode, extra), stats(),
 * reset(), lastToken(), stop()}.
 */
export async function startRogueOp({
  port, clientId = 'rogue-client', clientSecret, sub, t, logFile,
} = {}) {
  const p = port || await freePort();
  const issuer = `http://${LOOPBACK}:${p}`;
  const args = ['--port', String(p), '--issuer', issuer, '--client-id', clientId];
  if (clientSecret !== undefined) args.push('--client-secret', clientSecret);
  if (sub !== undefined) args.push('--sub', sub);
  const proc = await startPeer('rogue-op.mjs', args, { t, logFile, name: `rogue-op:${p}` });
  const admin = async (method, p2, body) => {
    const r = await jsonRequest(method, `${issuer}${p2}`, body);
    if (r.status >= 400 && p2 !== '/_admin/last-token') throw new Error(`rogue-op ${p2}: ${r.status} ${r.text}`);
    return r.json;
  };
  return {
    proc,
    port: p,
    issuer,
    clientId,
    clientSecret,
    discoveryUrl: `${issuer}/.well-known/openid-configuration`,
    setMode: (mode, extra = {}) => admin('POST', '/_admin/mode', { mode, ...extra }),
    stats: () => admin('GET', '/_admin/stats'),
    reset: () => admin('POST', '/_admin/reset', {}),
    lastToken: () => admin('GET', '/_admin/last-token'),
    stop: () => proc.stop(),
  };
}

/**
 * Start the SCIM 2.0 server (tests/peers/scim-server.mjs).
 * Returns {proc, port, baseUrl, token, dataFile, request(method, path, body,
 * headers), setFaults(f), clearFaults(), state(), resetLog(), clear(),
 * stop(), restart()}.
 */
export async function startScim({
  port, token = 'scim-test-token', dataFile, groups = ['staff', 'engineering', 'admins'], t, logFile,
  dialect = 'standard',
} = {}) {
  const h = {
    port: port || await freePort(),
    token,
    dataFile: dataFile || path.join(tempDir('pg-scim-', t), 'scim.json'),
    proc: null,
  };
  h.origin = `http://${LOOPBACK}:${h.port}`;
  h.baseUrl = `${h.origin}/scim/v2`;
  const launch = async () => {
    h.proc = await startPeer('scim-server.mjs', [
      '--port', String(h.port), '--data', h.dataFile, '--token', token, '--groups', groups.join(','),
      '--dialect', dialect,
    ], { t, logFile, name: `scim:${h.port}` });
  };
  const admin = async (method, p, body) => {
    const r = await jsonRequest(method, `${h.origin}${p}`, body);
    if (r.status >= 400) throw new Error(`scim admin ${p}: ${r.status} ${r.text}`);
    return r.json;
  };
  h.request = (method, p, body, headers = {}) => jsonRequest(method, `${h.baseUrl}${p}`, body, {
    authorization: `Bearer ${token}`,
    ...(body !== undefined ? { 'content-type': 'application/scim+json' } : {}),
    ...headers,
  });
  h.setFaults = (f) => admin('POST', '/_admin/faults', f);
  h.clearFaults = () => admin('POST', '/_admin/faults', {});
  h.state = () => admin('GET', '/_admin/state');
  h.resetLog = () => admin('POST', '/_admin/reset-log', {});
  h.clear = () => admin('POST', '/_admin/clear', {});
  h.stop = () => h.proc.stop();
  h.restart = async () => { await h.proc.stop(); await launch(); return h; };
  await launch();
  return h;
}

/** Start the echo upstream. Returns {proc, port, url, log(), reset(), stop()}. */
export async function startEcho({
  port, t, logFile, name = 'echo-upstream',
} = {}) {
  const p = port || await freePort();
  const proc = await startPeer('echo-upstream.mjs', ['--port', String(p), '--name', name], { t, logFile, name: `echo:${p}` });
  const url = `http://${LOOPBACK}:${p}`;
  return {
    proc,
    port: p,
    url,
    log: async () => (await jsonRequest('GET', `${url}/_echo/log`)).json.requests,
    reset: async () => (await jsonRequest('POST', `${url}/_echo/reset`, {})).json,
    stop: () => proc.stop(),
  };
}

// ---------------------------------------------------------------------------
// nginx.

function nginxGlobals(prefix, confText, { workers, errorLogLevel }) {
  const g = ['daemon off;', 'master_process on;'];
  if (!/^\s*pid\s/m.test(confText)) g.push(`pid ${path.join(prefix, 'logs', 'nginx.pid')};`);
  if (!/^\s*worker_processes\s/m.test(confText)) g.push(`worker_processes ${workers};`);
  g.push(`error_log ${path.join(prefix, 'logs', 'error.log')} ${errorLogLevel};`);
  return g.join(' ');
}

function resolveConf(conf, prefix) {
  if (/[{\n]/.test(conf)) {
    const file = path.join(prefix, 'conf', 'nginx.conf');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, conf);
    return { file, text: conf };
  }
  const file = path.resolve(conf);
  return { file, text: fs.readFileSync(file, 'utf8') };
}

function prepPrefix(prefix) {
  for (const sub of ['logs', 'conf', 'tmp']) fs.mkdirSync(path.join(prefix, sub), { recursive: true });
}

/**
 * A complete nginx.conf for tests: temp paths and access log inside
 * `prefix`, `user root` when running as root (so workers can use the 0700
 * temp dirs), optional load_module lines, and caller-provided main / events
 * / http blocks. Do not put daemon, master_process or pid in `main`:
 * startNginx() sets them.
 */
export function nginxConf({
  prefix, modules = [], main = '', events = '', http: httpBlock = '',
}) {
  const tmp = (n) => path.join(prefix, 'tmp', n);
  return `${modules.map((m) => `load_module ${m};`).join('\n')}
${process.getuid?.() === 0 ? 'user root;' : ''}
${main}
events {
    worker_connections 256;
    ${events}
}
http {
    access_log ${path.join(prefix, 'logs', 'access.log')};
    client_body_temp_path ${tmp('body')};
    proxy_temp_path ${tmp('proxy')};
    fastcgi_temp_path ${tmp('fastcgi')};
    uwsgi_temp_path ${tmp('uwsgi')};
    scgi_temp_path ${tmp('scgi')};
    ${httpBlock}
}
`;
}

function childPidsOf(ppid) {
  const out = [];
  for (const ent of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(ent)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${ent}/stat`, 'utf8');
      // pid (comm) state ppid ...; comm may contain spaces/parens.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[1]) === ppid && rest[0] !== 'Z') out.push(Number(ent));
    } catch { /* raced with exit */ }
  }
  return out;
}

/**
 * Run `nginx -p PREFIX -c CONF -g "daemon off; master_process on; ..."`.
 * conf: a file path or the config text (written to PREFIX/conf/nginx.conf).
 * The harness adds pid (PREFIX/logs/nginx.pid, unless conf sets pid),
 * worker_processes (`workers`, unless conf sets it) and a main error_log
 * PREFIX/logs/error.log at `errorLogLevel`. Waits for the pid file, the
 * workers and every port in `waitPort`.
 * Returns {proc, pid, prefix, confFile, errorLogPath, reload(), stop(),
 * errorLog(), errorLogSince(offset), errorLogSize(), workerPids()}.
 */
export async function startNginx({
  conf, prefix, workers = 1, errorLogLevel = 'info', waitPort, t, env, timeoutMs = 10000,
}) {
  if (!prefix) throw new Error('startNginx: prefix is required');
  prepPrefix(prefix);
  const { file, text } = resolveConf(conf, prefix);
  const errorLogPath = path.join(prefix, 'logs', 'error.log');
  const pidFile = path.join(prefix, 'logs', 'nginx.pid');
  try { fs.unlinkSync(pidFile); } catch { /* none */ }
  const globals = nginxGlobals(prefix, text, { workers, errorLogLevel });
  const proc = await startProcess(NGINX_BIN, ['-p', `${prefix}/`, '-c', file, '-e', errorLogPath, '-g', globals], {
    name: 'nginx', t, env, timeoutMs, logFile: path.join(prefix, 'logs', 'stderr.log'),
  });
  const h = {
    proc, pid: proc.pid, prefix, confFile: file, errorLogPath,
  };
  h.errorLog = () => { try { return fs.readFileSync(errorLogPath, 'utf8'); } catch { return ''; } };
  h.errorLogSize = () => { try { return fs.statSync(errorLogPath).size; } catch { return 0; } };
  h.errorLogSince = (offset) => {
    const all = (() => { try { return fs.readFileSync(errorLogPath); } catch { return Buffer.alloc(0); } })();
    return all.subarray(offset).toString('utf8');
  };
  h.workerPids = () => childPidsOf(proc.pid);
  const failEarly = () => new Error(`nginx exited (code ${proc.exitCode}, signal ${proc.exitSignal}):\n${proc.output}\n${h.errorLog().slice(-4000)}`);

  // Ready: pid file written and at least one worker running.
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!proc.running) { await proc.stop(); throw failEarly(); }
    if (fs.existsSync(pidFile) && h.workerPids().length > 0) break;
    if (Date.now() > deadline) { await proc.stop({ signal: 'SIGKILL' }); throw new Error(`nginx not ready in ${timeoutMs} ms:\n${h.errorLog().slice(-4000)}`); }
    await sleep(20);
  }
  for (const p of waitPort === undefined ? [] : [].concat(waitPort)) {
    await waitForPort(p, { timeoutMs });
  }

  /**
   * SIGHUP the master and wait until new workers run. Rejects (old config
   * stays active) if the error log reports [emerg]/[alert] instead.
   */
  h.reload = async ({ timeoutMs: tm = 10000 } = {}) => {
    const before = new Set(h.workerPids());
    const offset = h.errorLogSize();
    process.kill(proc.pid, 'SIGHUP');
    const end = Date.now() + tm;
    for (;;) {
      await sleep(25);
      if (!proc.running) throw failEarly();
      const since = h.errorLogSince(offset);
      if (/\[(emerg|alert)\]/.test(since)) throw new Error(`nginx reload failed:\n${since}`);
      // A failed reload keeps the old workers and starts none.
      if (h.workerPids().some((p) => !before.has(p))) return;
      if (Date.now() > end) throw new Error(`nginx reload not confirmed in ${tm} ms:\n${since}`);
    }
  };
  /** Stop nginx: fast (SIGTERM) by default, {graceful: true} for SIGQUIT. */
  h.stop = ({ graceful = false, timeoutMs: tm = 5000 } = {}) => proc.stop({ signal: graceful ? 'SIGQUIT' : 'SIGTERM', timeoutMs: tm });
  return h;
}

/**
 * `nginx -t` for `conf` (path or text) with the same -p/-e/-g as
 * startNginx. Second argument: a prefix string or {prefix, workers, env}.
 * Returns {code, output}.
 */
export function nginxTest(conf, opts = {}) {
  const o = typeof opts === 'string' ? { prefix: opts } : opts;
  const prefix = o.prefix || tempDir('pg-nginx-t-');
  prepPrefix(prefix);
  const { file, text } = resolveConf(conf, prefix);
  const errorLogPath = path.join(prefix, 'logs', 'error.log');
  const r = spawnSync(NGINX_BIN, ['-t', '-p', `${prefix}/`, '-c', file, '-e', errorLogPath,
    '-g', nginxGlobals(prefix, text, { workers: o.workers || 1, errorLogLevel: o.errorLogLevel || 'info' })], {
    encoding: 'utf8', timeout: 20000, env: { ...process.env, ...(o.env || {}) },
  });
  return { code: r.status, output: `${r.stdout || ''}${r.stderr || ''}` };
}

// ---------------------------------------------------------------------------
// Scripted browser.

function defaultCookiePath(pathname) {
  if (!pathname.startsWith('/')) return '/';
  const i = pathname.lastIndexOf('/');
  return i <= 0 ? '/' : pathname.slice(0, i);
}

function pathMatches(reqPath, cookiePath) {
  if (reqPath === cookiePath) return true;
  if (!reqPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith('/') || reqPath[cookiePath.length] === '/';
}

/** Parse one Set-Cookie header value. */
export function parseSetCookie(header, nowMs = Date.now()) {
  const parts = header.split(';');
  const first = parts.shift();
  const eq = first.indexOf('=');
  if (eq < 0) return null;
  const c = {
    name: first.slice(0, eq).trim(),
    value: first.slice(eq + 1).trim(),
    path: null,
    expires: null,
    secure: false,
    httpOnly: false,
    sameSite: null,
  };
  if (!c.name) return null;
  for (const p of parts) {
    const i = p.indexOf('=');
    const k = (i < 0 ? p : p.slice(0, i)).trim().toLowerCase();
    const v = i < 0 ? '' : p.slice(i + 1).trim();
    if (k === 'path' && v.startsWith('/')) c.path = v;
    else if (k === 'max-age' && /^-?\d+$/.test(v)) c.maxAge = Number(v);
    else if (k === 'expires') { const d = Date.parse(v); if (!Number.isNaN(d)) c.expiresAttr = d; }
    else if (k === 'secure') c.secure = true;
    else if (k === 'httponly') c.httpOnly = true;
    else if (k === 'samesite') c.sameSite = v;
  }
  if (c.maxAge !== undefined) c.expires = c.maxAge <= 0 ? 0 : nowMs + c.maxAge * 1000;
  else if (c.expiresAttr !== undefined) c.expires = c.expiresAttr;
  delete c.maxAge;
  delete c.expiresAttr;
  return c;
}

function absoluteUrl(location, base) {
  return new URL(location, base).href;
}

/**
 * A minimal browser for scripted flows: cookie jar (scoped per host:port by
 * default, or per host with {cookieScope: 'host'} like real browsers;
 * honours Path, Max-Age and Expires, deletes on expiry), manual redirect
 * following (max 20), fresh connection per request.
 *
 * Responses are plain objects: {status, url, headers (lower-case keys,
 * set-cookie as array), body (string), location (absolute or null),
 * redirects (URLs followed to get here), json()}.
 */
export class Browser {
  constructor({
    cookieScope = 'hostport', maxRedirects = 20, headers = {}, timeoutMs = 10000,
    userAgent = 'provgate-it-browser/1.0', honourSecure = false,
  } = {}) {
    this.cookieScope = cookieScope;
    this.maxRedirects = maxRedirects;
    this.extraHeaders = headers;
    this.timeoutMs = timeoutMs;
    this.userAgent = userAgent;
    this.honourSecure = honourSecure;
    this.jar = new Map(); // scope -> Map(name\0path -> cookie)
    this.last = null;
  }

  scopeOf(url) {
    const u = new URL(url);
    return this.cookieScope === 'host' ? u.hostname : u.host;
  }

  /** Store the Set-Cookie headers of a response from `url`. */
  storeCookies(url, setCookies) {
    const u = new URL(url);
    const scope = this.scopeOf(url);
    if (!this.jar.has(scope)) this.jar.set(scope, new Map());
    const bucket = this.jar.get(scope);
    const now = Date.now();
    for (const h of setCookies || []) {
      const c = parseSetCookie(h, now);
      if (!c) continue;
      if (!c.path) c.path = defaultCookiePath(u.pathname);
      const key = `${c.name}\0${c.path}`;
      if (c.expires !== null && c.expires <= now) bucket.delete(key);
      else bucket.set(key, c);
    }
  }

  /** Cookies that would be sent to `url`, longest path first. */
  cookiesFor(url) {
    const u = new URL(url);
    const bucket = this.jar.get(this.scopeOf(url));
    if (!bucket) return [];
    const now = Date.now();
    const out = [];
    for (const [key, c] of bucket) {
      if (c.expires !== null && c.expires <= now) { bucket.delete(key); continue; }
      if (!pathMatches(u.pathname, c.path)) continue;
      if (this.honourSecure && c.secure && u.protocol !== 'https:') continue;
      out.push(c);
    }
    return out.sort((a, b) => b.path.length - a.path.length);
  }

  /** Value of cookie `name` as it would be sent to `url`, or undefined. */
  getCookie(url, name) {
    return this.cookiesFor(url).find((c) => c.name === name)?.value;
  }

  /** Every cookie in the jar: [{scope, name, value, path, expires, ...}]. */
  allCookies() {
    const out = [];
    for (const [scope, bucket] of this.jar) for (const c of bucket.values()) out.push({ scope, ...c });
    return out;
  }

  setCookie(url, name, value, { path: p = '/' } = {}) {
    this.storeCookies(url, [`${name}=${value}; Path=${p}`]);
  }

  clearCookies() {
    this.jar.clear();
  }

  /**
   * One HTTP request, no redirect following. opts: {form (object ->
   * urlencoded), json, body (string/Buffer), headers}. Header names in
   * opts.headers / constructor headers replace defaults case-insensitively;
   * a null value removes a header; `host` may be overridden.
   */
  request(method, url, opts = {}) {
    const u = new URL(url);
    let body = null;
    // Header names are matched case-insensitively when overriding, but
    // sent with the spelling of the last setter.
    const headers = {};
    const setHeaders = (obj) => {
      for (const [k, v] of Object.entries(obj || {})) {
        for (const existing of Object.keys(headers)) {
          if (existing.toLowerCase() === k.toLowerCase()) delete headers[existing];
        }
        if (v !== undefined && v !== null) headers[k] = v;
      }
    };
    setHeaders({
      'user-agent': this.userAgent,
      accept: 'text/html,application/json;q=0.9,*/*;q=0.8',
    });
    setHeaders(this.extraHeaders);
    if (opts.form !== undefined) {
      body = Buffer.from(new URLSearchParams(opts.form).toString());
      setHeaders({ 'content-type': 'application/x-www-form-urlencoded' });
    } else if (opts.json !== undefined) {
      body = Buffer.from(JSON.stringify(opts.json));
      setHeaders({ 'content-type': 'application/json' });
    } else if (opts.body !== undefined && opts.body !== null) {
      body = Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(String(opts.body));
    }
    setHeaders(opts.headers);
    const has = (n) => Object.keys(headers).some((k) => k.toLowerCase() === n);
    const cookie = this.cookiesFor(url).map((c) => `${c.name}=${c.value}`).join('; ');
    if (cookie && !has('cookie')) headers.cookie = cookie;
    if (body) setHeaders({ 'content-length': String(body.length) });
    const mod = u.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request({
        method,
        hostname: u.hostname,
        port: u.port || (u.protocol === 'https:' ? 443 : 80),
        path: `${u.pathname}${u.search}`,
        headers,
        agent: false,
        rejectUnauthorized: false,
      }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const setCookies = [].concat(res.headers['set-cookie'] || []);
          this.storeCookies(url, setCookies);
          const text = Buffer.concat(chunks).toString('utf8');
          const loc = res.headers.location;
          const r = {
            status: res.statusCode,
            url,
            method,
            headers: res.headers,
            rawHeaders: res.rawHeaders,
            body: text,
            location: loc ? absoluteUrl(loc, url) : null,
            redirects: [],
            json() { return JSON.parse(text); },
          };
          this.last = r;
          resolve(r);
        });
        res.on('error', reject);
      });
      req.setTimeout(this.timeoutMs, () => req.destroy(new Error(`request to ${url} timed out`)));
      req.on('error', reject);
      if (body) req.write(body);
      req.end();
    });
  }

  /**
   * Follow redirects starting from response `res` (default: the last one).
   * opts.stopAt: string prefix, RegExp or predicate(url) -- a redirect whose
   * target matches is returned instead of followed.
   */
  async follow(res = this.last, opts = {}) {
    const redirects = [...(res.redirects || [])];
    let cur = res;
    let replay = res.replay;
    let count = 0;
    while (cur.location && [301, 302, 303, 307, 308].includes(cur.status)) {
      if (matchesStop(opts.stopAt, cur.location)) break;
      count += 1;
      if (count > this.maxRedirects) throw new Error(`too many redirects (>${this.maxRedirects}) from ${res.url}`);
      redirects.push(cur.location);
      // 307/308 repeat method and body; the others become a plain GET.
      const keep = (cur.status === 307 || cur.status === 308) && cur.method !== 'GET';
      if (!keep) replay = undefined;
      cur = await this.request(keep ? cur.method : 'GET', cur.location, keep ? replay : { headers: opts.headers });
    }
    cur.redirects = redirects;
    this.last = cur;
    return cur;
  }

  /** GET `url` and follow redirects. */
  async get(url, opts = {}) {
    const r = await this.request('GET', url, { headers: opts.headers });
    return opts.noFollow ? r : this.follow(r, opts);
  }

  /** POST `form` (object, urlencoded) to `url` and follow redirects. */
  async post(url, form = {}, opts = {}) {
    const reqOpts = { form, headers: opts.headers };
    const r = await this.request('POST', url, reqOpts);
    r.replay = reqOpts;
    return opts.noFollow ? r : this.follow(r, opts);
  }
}

function matchesStop(stopAt, url) {
  if (!stopAt) return false;
  if (typeof stopAt === 'string') return url.startsWith(stopAt);
  if (stopAt instanceof RegExp) return stopAt.test(url);
  if (typeof stopAt === 'function') return !!stopAt(url);
  return false;
}

// ---------------------------------------------------------------------------
// HTML forms and OIDC flows.

function decodeEntities(s) {
  return s.replace(/&(#x[0-9a-f]+|#\d+|amp|lt|gt|quot|apos|#39);/gi, (m, e) => {
    const l = e.toLowerCase();
    if (l === 'amp') return '&';
    if (l === 'lt') return '<';
    if (l === 'gt') return '>';
    if (l === 'quot') return '"';
    if (l === 'apos' || l === '#39') return "'";
    if (l.startsWith('#x')) return String.fromCodePoint(parseInt(l.slice(2), 16));
    return String.fromCodePoint(parseInt(l.slice(1), 10));
  });
}

function parseAttrs(tag) {
  const attrs = {};
  const re = /([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?/g;
  const inner = tag.replace(/^<\s*[a-zA-Z]+/, '').replace(/\/?>$/, '');
  let m;
  while ((m = re.exec(inner)) !== null) {
    attrs[m[1].toLowerCase()] = decodeEntities(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return attrs;
}

/**
 * Parse the <form>s of an HTML page with simple regexes. Returns
 * [{id, action (absolute URL), method, inputs: [{name, type, value}],
 * fields: {name: value} (every named input with its current value,
 * excluding unchecked checkboxes/radios and submit buttons)}].
 */
export function parseForms(html, baseUrl) {
  const forms = [];
  const formRe = /<form\b[^>]*>([\s\S]*?)<\/form\s*>/gi;
  let m;
  while ((m = formRe.exec(html)) !== null) {
    const openTag = /<form\b[^>]*>/i.exec(m[0])[0];
    const a = parseAttrs(openTag);
    const inputs = [];
    const inRe = /<(input|button)\b[^>]*>/gi;
    let im;
    while ((im = inRe.exec(m[1])) !== null) {
      const ia = parseAttrs(im[0]);
      const tag = im[1].toLowerCase();
      inputs.push({
        tag,
        name: ia.name,
        type: (ia.type || (tag === 'button' ? 'submit' : 'text')).toLowerCase(),
        value: ia.value ?? '',
        checked: 'checked' in ia,
      });
    }
    const fields = {};
    for (const i of inputs) {
      if (!i.name) continue;
      if (['submit', 'button', 'image', 'reset'].includes(i.type)) continue;
      if (['checkbox', 'radio'].includes(i.type) && !i.checked) continue;
      fields[i.name] = i.value;
    }
    forms.push({
      id: a.id,
      action: absoluteUrl(a.action || baseUrl, baseUrl),
      method: (a.method || 'get').toUpperCase(),
      inputs,
      fields,
    });
  }
  return forms;
}

/** Submit a parsed form with `overrides`, following redirects. */
export function submitForm(browser, form, overrides = {}, opts = {}) {
  const data = { ...form.fields, ...overrides };
  if (form.method === 'POST') return browser.post(form.action, data, opts);
  const u = new URL(form.action);
  for (const [k, v] of Object.entries(data)) u.searchParams.set(k, v);
  return browser.get(u.href, opts);
}

/**
 * Drive an OIDC login: GET startUrl following redirects; if the page holds
 * a login form (one with a password input), fill the username (first
 * text/email input) and password, submit it once, follow redirects back,
 * and return the final response. If no login form shows up (existing SSO
 * session) the response reached is returned as is; a wrong password
 * returns the OP's 401 page. opts.stopAt as in Browser.follow().
 */
export async function oidcLogin(browser, startUrl, username, password, opts = {}) {
  const first = await browser.get(startUrl, opts);
  const form = parseForms(first.body, first.url).find((f) => f.inputs.some((i) => i.type === 'password'));
  if (!form) return first;
  const userInput = form.inputs.find((i) => i.name && ['text', 'email'].includes(i.type));
  const passInput = form.inputs.find((i) => i.type === 'password');
  const fields = { [passInput.name]: password };
  if (userInput) fields[userInput.name] = username;
  const res = await submitForm(browser, form, fields, opts);
  res.redirects = [...first.redirects, first.url, ...res.redirects];
  res.loginPage = first;
  return res;
}

/**
 * RP-initiated logout: GET url following redirects; if the OP shows its
 * sign-out confirmation form, submit it and follow redirects again.
 */
export async function oidcLogout(browser, url, opts = {}) {
  const first = await browser.get(url, opts);
  const form = parseForms(first.body, first.url).find((f) => /logout/i.test(f.id || '') || /session\/end\/confirm/.test(f.action));
  if (!form) return first;
  return submitForm(browser, form, {}, opts);
}

/** PKCE pair: {verifier, challenge} (S256). */
export function pkcePair() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

/** Decode (without verifying) a compact JWS: {header, payload, signature}. */
export function decodeJwt(token) {
  const [h, p, s] = String(token).split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
    signature: s,
  };
}

/**
 * Verify a compact JWS against a JWKS with node:crypto (RS256 / ES256
 * only; anything else is refused). Returns {ok, reason, header, payload}
 * with reason one of "ok", "malformed", "alg_not_allowed", "unknown_kid",
 * "bad_signature". Claims are NOT checked.
 */
export function verifyJwt(token, jwks) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return { ok: false, reason: 'malformed' };
  let header;
  let payload;
  try {
    ({ header, payload } = decodeJwt(token));
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  const res = (ok, reason) => ({
    ok, reason, header, payload,
  });
  if (!['RS256', 'ES256'].includes(header.alg)) return res(false, 'alg_not_allowed');
  const jwk = (jwks.keys || []).find((k) => k.kid === header.kid);
  if (!jwk) return res(false, 'unknown_kid');
  const pub = { ...jwk };
  for (const k of ['d', 'p', 'q', 'dp', 'dq', 'qi']) delete pub[k];
  const key = crypto.createPublicKey({ key: pub, format: 'jwk' });
  const data = Buffer.from(`${parts[0]}.${parts[1]}`);
  const sig = Buffer.from(parts[2], 'base64url');
  const ok = header.alg === 'RS256'
    ? crypto.verify('sha256', data, key, sig)
    : crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
  return res(ok, ok ? 'ok' : 'bad_signature');
}

/** Build an HTTP Basic authorization header value (RFC 6749 2.3.1). */
export function basicAuth(id, secret) {
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${enc(id)}:${enc(secret)}`).toString('base64')}`;
}

/** fetch-based JSON helper: {status, headers, text, json}. */
export { jsonRequest };
