// make bench (leave part; also `make bench-leave`): the time from a leave
// event to the person's account being disabled in every target (target:
// p95 <= 1 s, docs/performance.md).
//
// build/provgated with three real targets: the SCIM server of tests/peers
// ("app"), PostgreSQL through the SQL connector ("hrdb") and OpenLDAP slapd
// through the LDAP connector ("dir", disable = move to ou=disabled). N
// people (BENCH_LEAVE_N, default 100, plus 5 warm-up) join through an HR
// export and are provisioned in all three. Then, one at a time, a leave
// event is sent (POST /events, the webhook; BENCH_LEAVE_VIA=stream: XADD
// to the JML Redis stream) and two moments are taken:
//
//   targets  the moment the last of the three targets was seen to show the
//            account disabled: SCIM GET /Users?filter (active false), psql
//            (active false, one psql session kept open), ldapsearch in
//            ou=disabled; each target is polled in its own loop, one check
//            after the other with 5 ms between checks; a check takes about
//            1-10 ms (SCIM, SQL) and 10-50 ms (ldapsearch is a new process
//            each time), so this is an upper bound, late by at most one
//            check and 5 ms;
//   audit    the latest `provision.deprovision` success audit event of the
//            three targets (written by the outbox consumer once the target
//            answered the disable; millisecond timestamps, same clock).
//
// Both are printed as p50 / p95 / max from the moment before the event was
// sent. The audit time is exact to the millisecond but is the sidecar's own
// word; the target time is what an observer of the targets sees.
import fs from 'node:fs';
import { execFile, spawn } from 'node:child_process';
import { cleanupAll, until, sleep } from '../tests/integration/lib/harness.mjs';
import { ROOTDN, ROOTPW, DISABLED } from '../tests/integration/lib/slapd.mjs';
import {
  startBenchEnv, ldapTarget, scimTarget, birthright, hrRow, cpuSeconds, machine,
} from './bench_sidecar_env.mjs';

const N = Number(process.env.BENCH_LEAVE_N || 100);
const WARMUP = 5;
const VIA = process.env.BENCH_LEAVE_VIA || 'webhook';
if (!['webhook', 'stream'].includes(VIA)) throw new Error('BENCH_LEAVE_VIA: webhook or stream');
const TIMEOUT_MS = 30000;
const TARGET_NAMES = ['app', 'hrdb', 'dir'];

const run = (cmd, args) => new Promise((resolve, reject) => {
  execFile(cmd, args, { encoding: 'utf8' }, (err, out) => (err ? reject(err) : resolve(out)));
});
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};

const env = await startBenchEnv({ ldap: true, scim: true, sql: true });
try {
  const people = Array.from({ length: N + WARMUP }, (_, i) => ({
    emp: `L${100000 + i}`, login: `leaver${String(i).padStart(5, '0')}`,
  }));
  env.writeHr(people.map((p, i) => hrRow(p.emp, p.login, i % 2 ? 'sales' : 'eng')));
  await env.startSidecar({
    app: scimTarget(env.scim), hrdb: env.sqlTarget(), dir: ldapTarget(env.ldap),
  }, [...birthright('app', 'staff'), ...birthright('hrdb', 'staff'), ...birthright('dir', 'staff')], {
    hrSource: VIA === 'stream' ? { event_stream: { enabled: true } } : {},
  });

  // ---- everyone joined and provisioned in all three ----------------------
  const t0 = Date.now();
  for (const p of people) {
    p.iid = await until(`${p.login} imported`, () => env.iidOf(p.emp), 120000);
  }
  for (const p of people) {
    await until(`${p.login} provisioned`, async () => {
      const f = await env.redisCmd('HMGET', `pg:id:${p.iid}`, ...TARGET_NAMES.map((t) => `acct:${t}`));
      return f.every(Boolean);
    }, 120000);
  }
  process.stderr.write(`${people.length} people joined and provisioned in 3 targets in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);

  // ---- the targets, polled in parallel ------------------------------------
  // one psql session kept open (a query is then about 1 ms; a new psql
  // process per check would take 100+ ms): one query, one line back
  const psql = spawn('psql', ['-h', '127.0.0.1', '-p', String(env.pg.port), '-U', 'postgres', '-d', 'postgres', '-At', '-q'],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  let pending = [];
  let outBuf = '';
  psql.stdout.on('data', (d) => {
    outBuf += d;
    let nl;
    while ((nl = outBuf.indexOf('\n')) >= 0) {
      const lineText = outBuf.slice(0, nl);
      outBuf = outBuf.slice(nl + 1);
      const w = pending.shift();
      if (w) w(lineText.trim());
    }
  });
  const sql = (q) => new Promise((resolve) => { pending.push(resolve); psql.stdin.write(`${q}\n`); });
  const disabledIn = {
    app: async (p) => {
      const r = await env.scim.request('GET', `/Users?filter=${encodeURIComponent(`userName eq "${p.login}"`)}`);
      const u = r.json && r.json.Resources && r.json.Resources[0];
      return !!u && u.active === false;
    },
    hrdb: async (p) => (await sql(`SELECT coalesce((SELECT active::text FROM accounts WHERE key = '${p.login}'), 'none');`)) === 'false',
    dir: async (p) => /^dn: /m.test(await run('ldapsearch', ['-LLL', '-x', '-H', env.ldap.url, '-D', ROOTDN, '-w', ROOTPW,
      '-b', DISABLED, `(uid=${p.login})`, 'uid'])),
  };

  const sendLeave = async (p, i) => {
    const ev = { id: `bench-leave-${i}-${Date.now()}`, type: 'leave', key: p.emp };
    if (VIA === 'stream') {
      await env.redisCmd('XADD', 'pg:jml:events', '*', 'event', JSON.stringify(ev));
    } else {
      const r = await env.admin('POST', '/events', ev);
      if (r.status !== 202) throw new Error(`POST /events: ${r.status} ${r.text}`);
    }
  };

  const pids = {
    provgated: env.sc.pid, redis: env.redis.proc.pid, slapd: env.ldap.proc.pid, scim: env.scim.proc.pid,
  };
  const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid)]));
  const res = {
    targets: [], audit: [], leave: [], per: { app: [], hrdb: [], dir: [] }, seen: { app: [], hrdb: [], dir: [] }, rounds: [],
  };
  const slow = [];
  for (let i = 0; i < people.length; i++) {
    const p = people[i];
    // the account must be active everywhere before: otherwise the polling
    // below would time nothing
    for (const t of TARGET_NAMES) if (await disabledIn[t](p)) throw new Error(`${p.login} disabled in ${t} before leaving`);
    const auditOffset = fs.existsSync(env.auditFile) ? fs.statSync(env.auditFile).size : 0;
    const s0 = Date.now();
    await sendLeave(p, i);
    // each target polled in its own loop, back to back: the moment is the
    // answer of the first check that saw it disabled (at most one check's
    // duration late)
    const seen = {};
    let rounds = 0;
    await Promise.all(TARGET_NAMES.map(async (t) => {
      for (;;) {
        if (Date.now() - s0 > TIMEOUT_MS) throw new Error(`${p.login}: not disabled in ${t} after ${TIMEOUT_MS} ms`);
        const ok = await disabledIn[t](p);
        rounds++;
        if (ok) { seen[t] = Date.now() - s0; return; }
        await sleep(5); // leave the cores to the sidecar and the targets
      }
    }));
    const tTargets = Math.max(...Object.values(seen));
    // the audit events of this person's three disables
    let ev = [];
    let leaveEv = null;
    await until(`${p.login} audited`, () => {
      const fd = fs.openSync(env.auditFile, 'r');
      const size = fs.fstatSync(fd).size;
      const buf = Buffer.alloc(size - auditOffset);
      fs.readSync(fd, buf, 0, buf.length, auditOffset);
      fs.closeSync(fd);
      const all = buf.toString('utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
      ev = all.filter((x) => x.type === 'provision.deprovision' && x.outcome === 'success' && x.identity === p.iid);
      leaveEv = all.find((x) => x.type === 'jml.leave');
      return leaveEv && TARGET_NAMES.every((t) => ev.some((x) => x.app === t));
    }, 10000);
    const at = Object.fromEntries(TARGET_NAMES.map((t) => [t, Date.parse(ev.find((x) => x.app === t).ts) - s0]));
    const tAudit = Math.max(...Object.values(at));
    const tLeave = Date.parse(leaveEv.ts) - s0;
    if (i >= WARMUP) {
      res.targets.push(tTargets);
      res.audit.push(tAudit);
      res.leave.push(tLeave);
      res.rounds.push(rounds);
      for (const t of TARGET_NAMES) { res.per[t].push(at[t]); res.seen[t].push(seen[t]); }
      if (tTargets > 1000) slow.push({ login: p.login, targets: seen, audit: at });
    }
  }
  const cpu = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, (cpuSeconds(pid) - cpu0[k]) / people.length]));
  const line = (name, xs) => `  ${name.padEnd(34)} p50 ${pct(xs, 50)} ms, p95 ${pct(xs, 95)} ms, max ${Math.max(...xs)} ms`;
  console.log('');
  console.log(`provgate leave bench (${N} leave events one at a time via ${VIA === 'stream' ? 'the JML Redis stream' : 'POST /events'}, after ${WARMUP} warm-up; targets SCIM peer, PostgreSQL, slapd; ${machine()})`);
  console.log(line('disabled everywhere (targets)', res.targets) + '  (target p95 <= 1000 ms)');
  console.log(line('disabled everywhere (audit)', res.audit));
  console.log(line('  leave applied (jml.leave audit)', res.leave));
  for (const t of TARGET_NAMES) console.log(`${line(`  ${t} disabled (audit)`, res.per[t])}; seen on the target: p50 ${pct(res.seen[t], 50)}, p95 ${pct(res.seen[t], 95)} ms`);
  console.log(`  checks per event (3 targets): p50 ${pct(res.rounds, 50)}, max ${Math.max(...res.rounds)}`);
  console.log(`  CPU ms per leave: ${Object.entries(cpu).map(([k, v]) => `${k} ${(v * 1000).toFixed(1)}`).join(', ')} (includes the polling)`);
  if (slow.length) console.log(`  over 1 s: ${slow.length}; first: ${JSON.stringify(slow.slice(0, 3))}`);
  console.log(`  after: ${machine()}`);
  psql.stdin.end();
  pending = [];
} finally {
  await env.stopSidecar();
  await cleanupAll();
}
