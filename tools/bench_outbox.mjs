// make bench (outbox part; also `make bench-outbox`): measure, in one run
// and on this machine,
//   1. provisioning operations per second through the outbox: N ensure
//      operations are put into <prefix>outbox at once (redis-cli --pipe)
//      and the gateway's consumers apply them (lease, SCIM lookup + create
//      + group lookup + group PATCH, record, finish) against a fast SCIM
//      target: a plain nginx answering canned SCIM JSON with `return`.
//      The rate is taken from the ids (Redis ms clock) of the first and the
//      last outcome on <prefix>outbox:events.
//   2. the latency a first login pays for outbox delivery when the target
//      answers at once: full OIDC first logins of distinct people through
//      a target with "delivery": "outbox" and one with "delivery": "direct"
//      (the baseline), interleaved, one at a time; p50/p95 of the whole
//      login and of its callback request (where provisioning happens).
// Prints the numbers and the ratios against the baseline measured in the
// same run; targets are in docs/performance.md.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  cleanupAll, freePort, startNginx, nginxConf, tempDir, parseForms,
} from '../tests/integration/lib/harness.mjs';
import { startEnv } from '../tests/integration/gw/env.mjs';

// at most 10000: <prefix>outbox:events keeps about the last 10000 outcomes
const OPS = Math.min(10000, Number(process.env.BENCH_OUTBOX_OPS || 10000));
const WORKERS = Number(process.env.BENCH_OUTBOX_WORKERS || 2);
const LOGINS = Number(process.env.BENCH_OUTBOX_LOGINS || 200); // per mode
const WARMUP = 10;

// ---- the fast SCIM target: canned answers from a separate plain nginx ----
const LIST_EMPTY = JSON.stringify({
  schemas: ['urn:ietf:params:scim:api:messages:2.0:ListResponse'], totalResults: 0, Resources: [],
});
const CREATED = JSON.stringify({
  schemas: ['urn:ietf:params:scim:schemas:core:2.0:User'], id: 'u-bench', userName: 'x',
});
const GROUPS = JSON.stringify({
  schemas: ['urn:ietf:params:scim:api:messages:2.0:ListResponse'],
  totalResults: 1,
  Resources: [{ id: 'g-staff', displayName: 'staff', members: [] }],
});
const q = (s) => `'${s}'`; // nginx single-quoted string (the JSON has no ')

const tPort = await freePort();
const tPrefix = tempDir('pg-bench-scim-');
const target = await startNginx({
  prefix: tPrefix,
  workers: 1,
  waitPort: tPort,
  errorLogLevel: 'error',
  conf: nginxConf({
    prefix: tPrefix,
    http: `server {
        listen 127.0.0.1:${tPort} backlog=1024;
        access_log off;
        keepalive_requests 100000;
        default_type application/scim+json;
        location = /scim/v2/Users {
            if ($request_method = POST) { return 201 ${q(CREATED)}; }
            return 200 ${q(LIST_EMPTY)};
        }
        location = /scim/v2/Groups { return 200 ${q(GROUPS)}; }
        location /scim/v2/Groups/ { return 204; }
        location /scim/v2/ { return 404; }
    }`,
  }),
});
const fastUrl = `http://127.0.0.1:${tPort}/scim/v2`;

const people = {};
for (let i = 0; i < 2 * (LOGINS + WARMUP); i++) {
  people[`ob${i}`] = {
    password: `pw${i}`,
    claims: {
      sub: `sub-ob-${i}`, email: `ob${i}@example.com`, email_verified: true,
      preferred_username: `ob${i}`, name: `Ob ${i}`, given_name: 'Ob', family_name: `N${i}`,
      groups: ['staff'], employee_type: 'employee', department: 'ops', employee_number: `8${i}`,
    },
  };
}
const policies = {
  policies: [{
    id: 'employees', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
    grants: ['fast', 'fastdirect'].map((t) => ({ target: t, entitlements: [{ type: 'group', value: 'staff' }] })),
  }],
};

const e = await startEnv(undefined, {
  workers: WORKERS,
  users: people,
  policies,
  cfgOver: (env) => {
    const base = env.baseConfig();
    const fast = {
      ...base.targets.demoapp, base_url: fastUrl, timeout_ms: 2000, wait_ms: 5000,
    };
    return {
      targets: { ...base.targets, fast, fastdirect: { ...fast, delivery: 'direct' } },
      outbox: { ...base.outbox, batch: 64, claim_idle_ms: 30000 },
    };
  },
  extraServer: `
        location /ob/ { access_log off; provgate oidc:main; provgate_app fast; proxy_pass http://echo; }
        location /direct/ { access_log off; provgate oidc:main; provgate_app fastdirect; proxy_pass http://echo; }`,
});

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;

/** A full first login; returns {total, callback} in ms (callback: the
 *  request to /provgate/callback up to the app's answer). */
async function timedLogin(user, startPath) {
  const b = e.browser();
  const stopAt = `${e.base}/provgate/callback`;
  const t0 = process.hrtime.bigint();
  const first = await b.get(`${e.base}${startPath}`, { stopAt });
  const form = parseForms(first.body, first.url).find((f) => f.inputs.some((i) => i.type === 'password'));
  if (!form) throw new Error(`${user}: no login form (${first.status})`);
  const posted = await b.request('POST', form.action, {
    form: { ...form.fields, username: user, password: e.users[user].password },
  });
  const cb = await b.follow(posted, { stopAt });
  if (!cb.location || !cb.location.startsWith(stopAt)) throw new Error(`${user}: no callback (${cb.status})`);
  const t1 = process.hrtime.bigint();
  const res = await b.get(cb.location);
  const callback = ms(t1);
  const total = ms(t0);
  if (res.status !== 200) throw new Error(`${user} ${startPath}: ${res.status} ${String(res.body).slice(0, 200)}`);
  return { total, callback };
}

/** CPU time (user + system, ms) used so far by each pid. */
const HZ = 100;
function cpuMs(pids) {
  let sum = 0;
  for (const pid of pids) {
    try {
      const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
      sum += ((Number(f[11]) + Number(f[12])) * 1000) / HZ; // utime, stime
    } catch { /* gone */ }
  }
  return sum;
}

/** RESP encoding of one command for redis-cli --pipe. */
function resp(args) {
  let s = `*${args.length}\r\n`;
  for (const a of args) s += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return s;
}

async function pipe(text) {
  const file = path.join(e.dir, 'bench-ops.resp');
  fs.writeFileSync(file, text);
  await new Promise((resolve, reject) => {
    const p = spawn('redis-cli', ['-h', '127.0.0.1', '-p', String(e.redisPort), '--pipe'], {
      stdio: [fs.openSync(file, 'r'), 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.on('exit', (code) => (code === 0 && /errors: 0/.test(out) ? resolve() : reject(new Error(`redis-cli: ${out}`))));
  });
}

try {
  // ---- 2. first-login latency: outbox vs direct (the baseline) ----------
  const lat = { ob: [], direct: [] };
  for (let i = 0; i < LOGINS + WARMUP; i++) {
    // interleave, alternating which goes first
    const order = i % 2 === 0 ? ['ob', 'direct'] : ['direct', 'ob'];
    for (const mode of order) {
      const user = `ob${2 * i + (mode === 'ob' ? 0 : 1)}`;
      const r = await timedLogin(user, `/${mode}/first`);
      if (i >= WARMUP) lat[mode].push(r);
    }
  }
  // the gateway's own measure: policy decision + provisioning, from
  // pg_provision_start to login.success ("provision_us" in the audit)
  for (const ev of e.audit()) {
    if (ev.type !== 'login.success' || typeof ev.provision_us !== 'number') continue;
    const mode = ev.app === 'fast' ? 'ob' : ev.app === 'fastdirect' ? 'direct' : null;
    const m = /^sub-ob-(\d+)$/.exec(ev.subject || '');
    if (mode === null || !m || Number(m[1]) < 2 * WARMUP) continue;
    lat[mode].srv = lat[mode].srv || [];
    lat[mode].srv.push(ev.provision_us / 1000);
  }
  const stat = (mode, k) => {
    const xs = k === 'srv' ? (lat[mode].srv || [NaN]) : lat[mode].map((r) => r[k]);
    return { p50: pct(xs, 50), p95: pct(xs, 95), n: xs.length };
  };

  // ---- 1. operations per second through the outbox ----------------------
  await e.redisCmd('DEL', 'pg:outbox:events');
  let text = '';
  const now = Date.now();
  for (let i = 0; i < OPS; i++) {
    const iid = `bench-op-${i}`;
    const state = JSON.stringify({
      iid, app: 'fast',
      attrs: {
        username: `op${i}`, email: `op${i}@example.com`, given_name: 'Op', family_name: `N${i}`,
        name: `Op ${i}`, identity_id: iid,
      },
      entitlements: [{ type: 'group', value: 'staff' }],
    });
    text += resp(['XADD', 'pg:outbox', '*', 'idem', `bench-${now}-${i}`, 'identity', iid, 'target', 'fast',
      'kind', 'ensure', 'state', state, 'attempt', '0', 'last_error', '', 'created_ms', String(now)]);
  }
  const who = {
    gateway: e.nginx.workerPids(), redis: [e.redis.proc.pid], target: target.workerPids(),
  };
  const redisCalls = async () => {
    const info = String(await e.redisCmd('INFO', 'commandstats'));
    const calls = {};
    for (const m of info.matchAll(/cmdstat_([a-z|]+):calls=(\d+)/g)) calls[m[1]] = Number(m[2]);
    return calls;
  };
  const calls0 = await redisCalls();
  const cpu0 = Object.fromEntries(Object.entries(who).map(([k, v]) => [k, cpuMs(v)]));
  const t0 = Date.now();
  await pipe(text);
  let n = 0;
  const end = Date.now() + 600000;
  while (Date.now() < end) {
    n = Number(await e.redisCmd('XLEN', 'pg:outbox:events'));
    if (n >= OPS) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const wall = (Date.now() - t0) / 1000;
  const cpu = Object.fromEntries(Object.entries(who).map(([k, v]) => [k, (cpuMs(v) - cpu0[k]) / Math.max(1, OPS)]));
  const cpuTotal = cpu.gateway + cpu.redis + cpu.target;
  const calls1 = await redisCalls();
  const perOp = Object.entries(calls1).map(([k, v]) => [k, (v - (calls0[k] || 0)) / OPS])
    .filter(([, v]) => v >= 0.05).sort((a, b) => b[1] - a[1]);
  const perOpTotal = perOp.reduce((a, [, v]) => a + v, 0);
  const first = await e.redisCmd('XRANGE', 'pg:outbox:events', '-', '+', 'COUNT', '1');
  const last = await e.redisCmd('XREVRANGE', 'pg:outbox:events', '+', '-', 'COUNT', '1');
  const idMs = (x) => Number(String(x[0][0]).split('-')[0]);
  const span = (idMs(last) - idMs(first)) / 1000;
  const events = await e.redisCmd('XRANGE', 'pg:outbox:events', '-', '+', 'COUNT', String(OPS + 10));
  const notDone = events.filter((ev) => {
    const f = ev[1];
    return f[f.indexOf('status') + 1] !== 'done';
  }).length;
  const rate = (n - 1) / span;

  const f = (x) => x.toFixed(2);
  const ob = stat('ob', 'total'); const di = stat('direct', 'total');
  const obc = stat('ob', 'callback'); const dic = stat('direct', 'callback');
  console.log('');
  console.log(`provgate outbox bench (gateway nginx ${WORKERS} workers, each a consumer; fast SCIM target: separate nginx, 1 worker, canned answers; ${new Date().toISOString()})`);
  console.log(`  outbox ops applied       ${rate.toFixed(0).padStart(8)} ops/s  (${n} of ${OPS} in ${f(span)} s by the Redis clock, ${f(wall)} s wall; 4 SCIM calls each; ${notDone} not done)  (target >= 2000)`);
  console.log(`  CPU per operation        ${(cpuTotal * 1000).toFixed(0)} us  (gateway ${(cpu.gateway * 1000).toFixed(0)} us, Redis ${(cpu.redis * 1000).toFixed(0)} us, target ${(cpu.target * 1000).toFixed(0)} us; 2 idle cores -> about ${(2000 / cpuTotal).toFixed(0)} ops/s)`);
  const obs = stat('ob', 'srv'); const dis = stat('direct', 'srv');
  const row = (name, o, d) => {
    console.log(`  ${name.padEnd(24)} direct p50 ${f(d.p50)} p95 ${f(d.p95)} ms | outbox p50 ${f(o.p50)} p95 ${f(o.p95)} ms | ratio p50 ${f(o.p50 / d.p50)} p95 ${f(o.p95 / d.p95)} | added p50 ${f(o.p50 - d.p50)} p95 ${f(o.p95 - d.p95)} ms`);
  };
  console.log(`  Redis commands per op    ${perOpTotal.toFixed(1)}  (${perOp.map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}; includes the pipe's XADD)`);
  console.log(`  first logins (${LOGINS} people per mode, interleaved, one at a time; the target answers at once):`);
  row('provisioning (gateway)', obs, dis);
  row('callback request', obc, dic);
  row('whole login', ob, di);
  console.log(`  target: added p95 <= 5 ms ("provisioning (gateway)": pg_provision_start to login.success, audit provision_us; ${obs.n}/${dis.n} samples)`);
  if (n < OPS || notDone > 0) process.exitCode = 1;
} finally {
  await cleanupAll();
}
