// make bench: measure, in one run and on this machine,
//   1. bare proxy_pass to a fast upstream (the baseline),
//   2. the same upstream through provgate with an authenticated session,
//   3. first logins per second through the real OIDC provider and SCIM app.
// Prints the ratios against the baseline; targets are in docs/performance.md.
import { execFileSync } from 'node:child_process';
import {
  cleanupAll, oidcLogin, freePort, startNginx, nginxConf, tempDir,
} from '../tests/integration/lib/harness.mjs';
import { startEnv } from '../tests/integration/gw/env.mjs';

const DURATION = process.env.BENCH_DURATION || '8s';
const CONNS = process.env.BENCH_CONNS || '32';
const LOGINS = Number(process.env.BENCH_LOGINS || 200);
const LOGIN_CONC = Number(process.env.BENCH_LOGIN_CONCURRENCY || 8);

function wrk(url, headers = []) {
  const args = ['-t1', `-c${CONNS}`, `-d${DURATION}`, '--latency'];
  for (const h of headers) args.push('-H', h);
  args.push(url);
  const out = execFileSync('wrk', args, { encoding: 'utf8' });
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)[1]);
  const unit = (v, u) => Number(v) * ({ us: 0.001, ms: 1, s: 1000 }[u]);
  const pct = (p) => {
    const m = new RegExp(`\\s${p}%\\s+([\\d.]+)(us|ms|s)`).exec(out);
    return m ? unit(m[1], m[2]) : NaN;
  };
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(out);
  const errors = /Socket errors:.*/.exec(out);
  return { rps, p50: pct(50), p99: pct(99), non2xx: non2xx ? Number(non2xx[1]) : 0, errors: errors ? errors[0] : '' };
}

const users = {};
for (let i = 0; i < LOGINS; i++) {
  users[`bench${i}`] = {
    password: `pw${i}`,
    claims: {
      sub: `sub-bench-${i}`, email: `bench${i}@example.com`, email_verified: true,
      preferred_username: `bench${i}`, name: `Bench ${i}`, given_name: 'Bench', family_name: `N${i}`,
      groups: ['staff'], employee_type: 'employee', department: 'eng', employee_number: `9${i}`,
    },
  };
}

// the fast upstream: a separate plain nginx (no provgate), one worker
const upPort = await freePort();
const upPrefix = tempDir('pg-bench-up-');
await startNginx({
  prefix: upPrefix,
  workers: 1,
  waitPort: upPort,
  errorLogLevel: 'error',
  conf: nginxConf({
    prefix: upPrefix,
    http: `server { listen 127.0.0.1:${upPort}; access_log off; location / { return 200 "ok\\n"; } }`,
  }),
});

const e = await startEnv(undefined, {
  workers: 1,
  users,
  extraHttp: () => `upstream fast { server 127.0.0.1:${upPort}; keepalive 32; }`,
  extraServer: `
        location /bare/ { access_log off; proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /gated/ {
            access_log off;
            provgate oidc:main; provgate_app demoapp;
            proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection "";
        }`,
});

try {
  const { b, res } = await e.login('alice', '/gated/warmup');
  if (res.status !== 200 || !/^ok/.test(res.body)) throw new Error(`login failed: ${res.status} ${res.body}`);
  const cookie = `provgate_session=${b.getCookie(`${e.base}/gated/`, 'provgate_session')}`;

  // warm up both paths, then measure them back to back
  wrk(`${e.base}/bare/x`);
  const bare = wrk(`${e.base}/bare/x`);
  const gated = wrk(`${e.base}/gated/x`, [`Cookie: ${cookie}`]);
  if (gated.non2xx > 0) throw new Error(`gated run had ${gated.non2xx} non-2xx responses`);

  // first logins: distinct people, LOGIN_CONC at a time, each a full
  // OIDC code flow through the real provider plus SCIM provisioning
  let next = 0;
  let failed = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: LOGIN_CONC }, async () => {
    while (next < LOGINS) {
      const i = next++;
      const r = await oidcLogin(e.browser(), `${e.base}/app/first`, `bench${i}`, `pw${i}`);
      if (r.status !== 200) failed++;
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const scimUsers = (await e.scimUsers()).filter((u) => u.userName.startsWith('bench')).length;

  const f = (x) => x.toFixed(2);
  console.log('');
  console.log(`provgate bench (wrk -t1 -c${CONNS} -d${DURATION}; gateway nginx 1 worker; upstream: separate nginx, 1 worker; ${new Date().toISOString()})`);
  console.log(`  bare proxy_pass          ${bare.rps.toFixed(0).padStart(8)} req/s   p50 ${f(bare.p50)} ms   p99 ${f(bare.p99)} ms`);
  console.log(`  provgate session         ${gated.rps.toFixed(0).padStart(8)} req/s   p50 ${f(gated.p50)} ms   p99 ${f(gated.p99)} ms`);
  console.log(`  ratio session/bare       ${f(gated.rps / bare.rps)}  (target >= 0.90)`);
  console.log(`  added p99                ${f(gated.p99 - bare.p99)} ms  (target <= 0.20 ms)`);
  console.log(`  first logins             ${f(LOGINS / secs)} logins/s  (${LOGINS} people, ${LOGIN_CONC} at a time, ${failed} failed, ${scimUsers} SCIM accounts created)`);
  if (bare.errors || gated.errors) console.log(`  socket errors: bare "${bare.errors}" gated "${gated.errors}"`);
  if (failed > 0 || scimUsers !== LOGINS) process.exitCode = 1;
} finally {
  await cleanupAll();
}
