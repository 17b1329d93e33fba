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
//   targets  the end of the first polling round in which all three targets
//            show the account disabled: SCIM GET /Users?filter (active
//            false), psql (active = f), ldapsearch in ou=disabled; the three
//            are asked in parallel, a round takes about 10-30 ms (psql and
//            ldapsearch are processes), so this is an upper bound;
//   audit    the latest `provision.deprovision` success audit event of the
//            three targets (written by the outbox consumer once the target
//            answered the disable; millisecond timestamps, same clock).
//
// Both are printed as p50 / p95 / max from the moment before the event was
// sent. The audit time is exact to the millisecond but is the sidecar's own
// word; the target time is what an observer of the targets sees.
import fs from 'node:fs';
import { execFile } from 'node:child_process';
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
  const disabledIn = {
    app: async (p) => {
      const r = await env.scim.request('GET', `/Users?filter=${encodeURIComponent(`userName eq "${p.login}"`)}`);
      const u = r.json && r.json.Resources && r.json.Resources[0];
      return !!u && u.active === false;
    },
    hrdb: async (p) => (await run('psql', ['-h', '127.0.0.1', '-p', String(env.pg.port), '-U', 'postgres', '-d', 'postgres',
      '-At', '-c', `SELECT active FROM accounts WHERE key = '${p.login}'`])).trim() === 'f',
    dir: async (p) => /^dn: /m.test(await run('ldapsearch', ['-LLL', '-x', '-H', env.ldap.url, '-D', ROOTDN, '-w', ROOTPW,
      '-b', DISABLED, `(uid=${p.login})`, 'uid'])),
  };
  for (const p of people.slice(0, 1)) {
    for (const t of TARGET_NAMES) if (await disabledIn[t](p)) throw new Error(`${p.login} disabled in ${t} before leaving`);
  }

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
  const res = { targets: [], audit: [], per: { app: [], hrdb: [], dir: [] }, rounds: [] };
  let slow = [];
  for (let i = 0; i < people.length; i++) {
    const p = people[i];
    const auditOffset = fs.existsSync(env.auditFile) ? fs.statSync(env.auditFile).size : 0;
    const s0 = Date.now();
    await sendLeave(p, i);
    const seen = {};
    let rounds = 0;
    while (Object.keys(seen).length < TARGET_NAMES.length) {
      if (Date.now() - s0 > TIMEOUT_MS) throw new Error(`${p.login}: not disabled everywhere after ${TIMEOUT_MS} ms (${JSON.stringify(seen)})`);
      const left = TARGET_NAMES.filter((t) => !(t in seen));
      const ok = await Promise.all(left.map((t) => disabledIn[t](p)));
      const now = Date.now();
      rounds++;
      left.forEach((t, k) => { if (ok[k]) seen[t] = now - s0; });
    }
    const tTargets = Math.max(...Object.values(seen));
    // the audit events of this person's three disables
    let ev = [];
    await until(`${p.login} audited`, () => {
      const fd = fs.openSync(env.auditFile, 'r');
      const size = fs.fstatSync(fd).size;
      const buf = Buffer.alloc(size - auditOffset);
      fs.readSync(fd, buf, 0, buf.length, auditOffset);
      fs.closeSync(fd);
      ev = buf.toString('utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
        .filter((x) => x.type === 'provision.deprovision' && x.outcome === 'success' && x.identity === p.iid);
      return TARGET_NAMES.every((t) => ev.some((x) => x.app === t));
    }, 10000);
    const at = Object.fromEntries(TARGET_NAMES.map((t) => [t, Date.parse(ev.find((x) => x.app === t).ts) - s0]));
    const tAudit = Math.max(...Object.values(at));
    if (i >= WARMUP) {
      res.targets.push(tTargets);
      res.audit.push(tAudit);
      res.rounds.push(rounds);
      for (const t of TARGET_NAMES) res.per[t].push(at[t]);
      if (tTargets > 1000) slow.push({ login: p.login, targets: seen, audit: at });
    }
  }
  const cpu = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, (cpuSeconds(pid) - cpu0[k]) / people.length]));
  // nothing else was disabled: the ones who did not leave are still active
  const line = (name, xs) => `  ${name.padEnd(34)} p50 ${pct(xs, 50)} ms, p95 ${pct(xs, 95)} ms, max ${Math.max(...xs)} ms`;
  console.log('');
  console.log(`provgate leave bench (${N} leave events one at a time via ${VIA === 'stream' ? 'the JML Redis stream' : 'POST /events'}, after ${WARMUP} warm-up; targets SCIM peer, PostgreSQL, slapd; ${machine()})`);
  console.log(line('disabled everywhere (targets)', res.targets) + '  (target p95 <= 1000 ms)');
  console.log(line('disabled everywhere (audit)', res.audit));
  for (const t of TARGET_NAMES) console.log(line(`  ${t} disabled (audit)`, res.per[t]));
  console.log(`  polling rounds per event: p50 ${pct(res.rounds, 50)}, max ${Math.max(...res.rounds)}`);
  console.log(`  CPU ms per leave: ${Object.entries(cpu).map(([k, v]) => `${k} ${(v * 1000).toFixed(1)}`).join(', ')} (includes the polling)`);
  if (slow.length) console.log(`  over 1 s: ${slow.length}; first: ${JSON.stringify(slow.slice(0, 3))}`);
  console.log(`  after: ${machine()}`);
  slow = null;
} finally {
  if (env.sc) await env.sc.stop();
  await cleanupAll();
}
await sleep(0);
