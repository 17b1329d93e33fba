// provgated (sidecar/provgated.c), run as a real daemon against a real
// redis-server: /healthz with Redis up and down, /metrics, SIGHUP reloads
// (broken and good), SIGTERM, start-up with a bad configuration, audit
// events in the file and in the Redis stream.
//
// Binary: $PG_PROVGATED_BIN, else build/provgated (build/asan-bin/provgated
// when PROVGATE_ASAN is set), made with `make <that path>` when missing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  REPO_ROOT, startRedis, freePort, tempDir, startProcess, waitForPort, sleep,
} from './lib/harness.mjs';
import { FIX } from './gw/saml-env.mjs';

const TARGET = process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated';
const BIN = process.env.PG_PROVGATED_BIN || path.join(REPO_ROOT, TARGET);

function ensureBinary() {
  if (fs.existsSync(BIN)) return;
  const r = spawnSync('make', ['-C', REPO_ROOT, TARGET], { encoding: 'utf8' });
  assert.ok(fs.existsSync(BIN), `provgated binary missing and \`make ${TARGET}\` failed:\n${r.stdout}${r.stderr}`);
}

// A valid configuration (minimal: session key + one OIDC IdP) in dir.
function writeConfig(dir, { redisPort, auditFile, name = 'provgate.json' }) {
  const key = path.join(dir, 'session.key');
  if (!fs.existsSync(key)) fs.writeFileSync(key, Buffer.alloc(48, 7));
  const cfg = {
    instance: 'it-provgated',
    redis: { host: '127.0.0.1', port: redisPort, connect_timeout_ms: 300, command_timeout_ms: 300 },
    audit: { file: auditFile },
    session: { key_file: key },
    idps: {
      corp: {
        type: 'oidc',
        issuer: 'https://idp.example.test',
        client_id: 'provgate',
        client_secret: 's3cret',
        redirect_uri: 'https://app.example.test/callback',
      },
    },
  };
  const f = path.join(dir, name);
  fs.writeFileSync(f, JSON.stringify(cfg, null, 2));
  return f;
}

async function get(port, p) {
  const r = await fetch(`http://127.0.0.1:${port}${p}`);
  return { status: r.status, type: r.headers.get('content-type'), body: await r.text() };
}

// Poll until fn() is truthy (returns its value) or fail after ms.
async function until(what, fn, ms = 5000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// d.exited, failing after ms (the timer also keeps node's loop alive: the
// harness unrefs its children).
function waitExit(d, ms = 3000) {
  let timer;
  return Promise.race([
    d.exited.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${d.name} did not exit within ${ms} ms`)), ms); }),
  ]);
}

function metric(text, name) {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

function readLines(file) {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

test('provgated: health, metrics, SIGHUP reloads, Redis down/up, SIGTERM', async (t) => {
  ensureBinary();
  const dir = tempDir('pg-provgated-', t);
  const redis = await startRedis({ t, aof: false });
  const auditFile = path.join(dir, 'audit.log');
  const logFile = path.join(dir, 'provgated.log');
  const cfgFile = writeConfig(dir, { redisPort: redis.port, auditFile });
  const good = fs.readFileSync(cfgFile);
  const port = await freePort();
  const before = Date.now() / 1000;
  const d = await startProcess(BIN, [
    '--config', cfgFile, '--listen', `127.0.0.1:${port}`, '--log-file', logFile,
    '--log-level', 'debug', '--health-interval-ms', '100',
  ], { t, name: 'provgated' });
  await waitForPort(port);

  // Redis up: 200 and the exact body.
  let h = await until('healthz 200', async () => { const r = await get(port, '/healthz'); return r.status === 200 && r; });
  assert.equal(h.type, 'application/json');
  assert.deepEqual(JSON.parse(h.body), { status: 'ok', redis: 'up' });

  // Metrics: Prometheus text, every series with its TYPE.
  let m = await get(port, '/metrics');
  assert.equal(m.status, 200);
  assert.match(m.type, /^text\/plain; version=0\.0\.4/);
  for (const [name, type] of [['provgated_up', 'gauge'], ['provgated_redis_up', 'gauge'],
    ['provgated_config_reloads_total', 'counter'], ['provgated_config_reload_failures_total', 'counter'],
    ['process_start_time_seconds', 'gauge']]) {
    assert.match(m.body, new RegExp(`^# TYPE ${name} ${type}$`, 'm'), name);
  }
  assert.equal(metric(m.body, 'provgated_up'), 1);
  assert.equal(metric(m.body, 'provgated_redis_up'), 1);
  assert.equal(metric(m.body, 'provgated_config_reloads_total'), 0);
  assert.equal(metric(m.body, 'provgated_config_reload_failures_total'), 0);
  const started = metric(m.body, 'process_start_time_seconds');
  assert.ok(started >= before - 1 && started <= Date.now() / 1000 + 1, `start time ${started}`);
  assert.equal((await get(port, '/nope')).status, 404);

  // daemon.start reached the Redis stream too (default key pg:audit).
  const stream = await until('audit stream', async () => {
    const s = JSON.stringify(await redis.command('XRANGE', 'pg:audit', '-', '+'));
    return s.includes('daemon.start') && s;
  });
  assert.ok(stream.includes('it-provgated'));

  // SIGHUP with a broken file: still serving, failure counted, old config kept.
  fs.writeFileSync(cfgFile, '{"redis": {"port": "not a number"}}');
  d.kill('SIGHUP');
  m = await until('reload failure counted', async () => {
    const r = await get(port, '/metrics');
    return metric(r.body, 'provgated_config_reload_failures_total') === 1 && r;
  });
  assert.equal(metric(m.body, 'provgated_config_reloads_total'), 0);
  assert.ok(d.running);
  assert.equal((await get(port, '/healthz')).status, 200);
  const errLine = readLines(logFile).find((l) => l.event === 'config.reload' && l.level === 'error');
  assert.ok(errLine, 'reload error logged');
  assert.ok(errLine.error.startsWith(`${cfgFile}: $.redis`), errLine.error);

  // SIGHUP with a good file: reload counted, Redis client rebuilt and up.
  fs.writeFileSync(cfgFile, good);
  d.kill('SIGHUP');
  m = await until('reload counted', async () => {
    const r = await get(port, '/metrics');
    return metric(r.body, 'provgated_config_reloads_total') === 1 && r;
  });
  assert.equal(metric(m.body, 'provgated_config_reload_failures_total'), 1);
  await until('healthz 200 after reload', async () => (await get(port, '/healthz')).status === 200);

  // Redis down: 503 and redis_up 0; back up: 200 again (reconnect).
  await redis.stop();
  h = await until('healthz 503', async () => { const r = await get(port, '/healthz'); return r.status === 503 && r; });
  assert.deepEqual(JSON.parse(h.body), { status: 'unavailable', redis: 'down' });
  assert.equal(metric((await get(port, '/metrics')).body, 'provgated_redis_up'), 0);
  await redis.restart();
  await until('healthz 200 after Redis restart', async () => (await get(port, '/healthz')).status === 200);

  // SIGTERM: exits 0 promptly.
  const t0 = Date.now();
  d.kill('SIGTERM');
  const { code, signal } = await waitExit(d);
  assert.equal(signal, null);
  assert.equal(code, 0);
  assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`);

  // Log: JSON lines only; start and stop present.
  const logs = readLines(logFile);
  assert.ok(logs.every((l) => typeof l.ts === 'string' && typeof l.level === 'string' && typeof l.msg === 'string'));
  assert.ok(logs.some((l) => l.msg.startsWith('provgated started') && l.listen === `127.0.0.1:${port}`));
  assert.ok(logs.some((l) => l.msg === 'provgated stopped'));

  // Audit file: start, failed reload, good reload, stop -- in that order.
  const ev = readLines(auditFile).map((e) => `${e.type}/${e.outcome}`);
  assert.deepEqual(ev, ['daemon.start/info', 'config.reload/failure', 'config.reload/success', 'daemon.stop/info']);
  const failure = readLines(auditFile)[1];
  assert.equal(failure.reason, 'invalid_config');
  assert.equal(failure.instance, 'it-provgated');
});

test('provgated: SIGINT also stops cleanly', async (t) => {
  ensureBinary();
  const dir = tempDir('pg-provgated-', t);
  const redis = await startRedis({ t, aof: false });
  const cfgFile = writeConfig(dir, { redisPort: redis.port, auditFile: path.join(dir, 'audit.log') });
  const port = await freePort();
  const d = await startProcess(BIN, ['--config', cfgFile, '--listen', `127.0.0.1:${port}`], {
    t, name: 'provgated', readyRegex: /provgated started/,
  });
  await until('healthz 200', async () => (await get(port, '/healthz')).status === 200);
  d.kill('SIGINT');
  const { code } = await waitExit(d);
  assert.equal(code, 0);
  const types = readLines(path.join(dir, 'audit.log')).map((e) => e.type);
  assert.deepEqual(types, ['daemon.start', 'daemon.stop']);
  // stderr carries the JSON log lines
  assert.ok(d.output.split('\n').filter(Boolean).every((l) => JSON.parse(l).ts));
});

test('provgated: a bad configuration at start exits 1 with file and path', async (t) => {
  ensureBinary();
  const dir = tempDir('pg-provgated-', t);
  const port = await freePort();

  // missing file
  const missing = path.join(dir, 'missing.json');
  let r = spawnSync(BIN, ['--config', missing, '--listen', `127.0.0.1:${port}`], { encoding: 'utf8', timeout: 5000 });
  assert.equal(r.status, 1, r.stderr);
  assert.ok(r.stderr.includes(missing), r.stderr);

  // well-formed JSON, invalid field: "<file>: <json path>: <reason>"
  const cfgFile = writeConfig(dir, { redisPort: 6379, auditFile: path.join(dir, 'a.log') });
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  cfg.redis.port = 'x';
  fs.writeFileSync(cfgFile, JSON.stringify(cfg));
  r = spawnSync(BIN, ['--config', cfgFile, '--listen', `127.0.0.1:${port}`], { encoding: 'utf8', timeout: 5000 });
  assert.equal(r.status, 1, r.stderr);
  const line = JSON.parse(r.stderr.trim().split('\n').pop());
  assert.equal(line.level, 'error');
  assert.ok(line.error.startsWith(`${cfgFile}: $.redis.port`), line.error);
  assert.ok(!fs.existsSync(path.join(dir, 'a.log')), 'nothing audited for a config that never loaded');

  // syntax error: "<file>:<line>:<column>: ..."
  fs.writeFileSync(cfgFile, '{\n  "redis": {,\n}');
  r = spawnSync(BIN, ['--config', cfgFile], { encoding: 'utf8', timeout: 5000 });
  assert.equal(r.status, 1);
  assert.ok(JSON.parse(r.stderr.trim().split('\n').pop()).error.startsWith(`${cfgFile}:2:`), r.stderr);

  // usage errors are 2
  r = spawnSync(BIN, [], { encoding: 'utf8', timeout: 5000 });
  assert.equal(r.status, 2);
  writeConfig(dir, { redisPort: 6379, auditFile: path.join(dir, 'a.log') });
  for (const bad of ['nocolon', '127.0.0.1:70000', '127.0.0.1:1x', ':80']) {
    r = spawnSync(BIN, ['--config', cfgFile, '--listen', bad], { encoding: 'utf8', timeout: 5000 });
    assert.equal(r.status, 2, `${bad}: ${r.stderr}`);
    assert.match(r.stderr, /--listen/);
  }
});

// The sidecar serves no sign-in: a SAML IdP configured by metadata URL is
// the gateway's to fetch. provgated starts, is healthy, and never asks the
// metadata server (a gateway with the same configuration does: see
// saml-metadata-url.test.mjs).
test('provgated does not fetch SAML IdP metadata URLs', async (t) => {
  ensureBinary();
  const dir = tempDir('pg-provgated-saml-', t);
  const redis = await startRedis({ t, aof: false });
  const cfgFile = writeConfig(dir, { redisPort: redis.port, auditFile: path.join(dir, 'audit.log') });
  let hits = 0;
  const md = http.createServer((req, res) => { hits += 1; res.writeHead(500); res.end('no'); });
  const mdPort = await freePort();
  await new Promise((resolve) => { md.listen(mdPort, '127.0.0.1', resolve); });
  t.after(() => new Promise((resolve) => { md.close(resolve); }));
  const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  cfg.idps.saml = {
    type: 'saml',
    sp_entity_id: 'https://app.example.test/saml/sp',
    acs_url: 'https://app.example.test/saml/acs',
    sp_key_file: path.join(FIX, 'sp-key.pem'),
    sp_cert_file: path.join(FIX, 'sp-cert.pem'),
    idp_metadata_url: `http://127.0.0.1:${mdPort}/md`,
    metadata_refresh_s: 1,
    http_timeout_ms: 500,
  };
  fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));
  const port = await freePort();
  const d = await startProcess(BIN, ['--config', cfgFile, '--listen', `127.0.0.1:${port}`], { t, name: 'provgated-saml' });
  await waitForPort(port);
  await until('healthz 200', async () => (await get(port, '/healthz')).status === 200);
  await sleep(2500);  // a gateway would have tried (and backed off) by now
  assert.equal(hits, 0, 'the sidecar asked the metadata server');
  assert.equal((await get(port, '/healthz')).status, 200);
  d.kill('SIGTERM');
  await waitExit(d);
});
