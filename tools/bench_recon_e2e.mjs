// make bench (reconciliation part; also `make bench-recon`): a full no-op
// reconciliation of N accounts (default 100,000; BENCH_RECON_N) through
// build/provgated against a real OpenLDAP slapd, timed from the POST
// /reconcile to the report, in accounts per second (target >= 1,200/s,
// docs/performance.md).
//
// Loading. Two template people are imported for real (an HR export polled
// by the sidecar; the outbox consumer creates their LDAP entries and group
// memberships and records the accounts on their identities). Their
// identity hash (<p>id:<iid>: attrs, acct:<t>, ents:<t>, ...), their HR
// index key and their LDAP entry are then read back and copied N times with
// the login and the identity id substituted: the identities go into Redis
// with redis-cli --pipe, the entries into slapd with slapadd (slapd stopped
// for it) and the memberships with one ldapmodify per group. So the data
// has exactly the layout the sidecar writes, and the reconciliation must
// find nothing (findings must be 0, checked).
//
// BENCH_RECON_TARGETS=ldap,scim also loads the SCIM peer (tests/peers
// scim-server.mjs) the same way, by writing its storage file before it
// starts, and runs a SCIM reconciliation against it ("scim"). That peer
// (Node + SCIMMY) spends about 1 ms of CPU per User it serves, so it bounds
// that rate; the same Users are then also served as static ListResponse
// pages by a plain nginx ("scim-static": the pages are built from the
// peer's own answers for the two templates, ids and logins substituted),
// which measures provgate's side of a SCIM run. A sidecar that answers 404
// for a SCIM target is reported as such.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import {
  cleanupAll, until, freePort, startNginx, nginxConf, tempDir,
} from '../tests/integration/lib/harness.mjs';
import { SUFFIX, GROUPS } from '../tests/integration/lib/slapd.mjs';
import {
  startBenchEnv, ldapTarget, scimTarget, birthright, hrRow, hrHash, cpuSeconds, resp, redisPipe, machine,
} from './bench_sidecar_env.mjs';

const N = Number(process.env.BENCH_RECON_N || 100000);
const TARGETS = String(process.env.BENCH_RECON_TARGETS || 'ldap').split(',').map((s) => s.trim()).filter(Boolean);
const RUNS = Number(process.env.BENCH_RECON_RUNS || 2);
for (const t of TARGETS) if (!['ldap', 'scim'].includes(t)) throw new Error(`BENCH_RECON_TARGETS: unknown ${t}`);
const REPORT_ONLY = { orphaned: 'report', rogue: 'report', missing: 'report', drift: 'report', sod: 'report' };
// two templates: department eng (groups staff + eng) and sales (staff)
const TEMPLATES = [{ emp: 'T-zqa00000', login: 'zqa00000', dept: 'eng' }, { emp: 'T-zqb00000', login: 'zqb00000', dept: 'sales' }];
const login = (i) => `b${String(i).padStart(7, '0')}`;
const LIST_SCHEMA = 'urn:ietf:params:scim:api:messages:2.0:ListResponse';
const USER_SCHEMA = 'urn:ietf:params:scim:schemas:core:2.0:User';
const STATIC_PAGE = 200;

const sec = (ms) => (ms / 1000).toFixed(2);
const log = (s) => process.stderr.write(`${s}\n`);

const env = await startBenchEnv({
  ldap: TARGETS.includes('ldap') ? { maxsize: 4 * 1024 * 1024 * 1024 } : false,
  scim: TARGETS.includes('scim'),
});
let fast = null;
try {
  const targets = {};
  let policies = [];
  if (env.ldap) { targets.dir = ldapTarget(env.ldap, REPORT_ONLY); policies = policies.concat(birthright('dir', 'staff', 'eng')); }
  // the static SCIM server: canned answers for the templates' provisioning,
  // then the pages of Users written below (nginx reads them per request)
  if (env.scim) {
    targets.app = scimTarget(env.scim);
    policies = policies.concat(birthright('app', 'staff', 'eng'));
    fast = { port: await freePort(), prefix: tempDir('pg-bench-scim-static-') };
    fs.mkdirSync(path.join(fast.prefix, 'pages'));
    const list = (n, res) => JSON.stringify({ schemas: [LIST_SCHEMA], totalResults: n, Resources: res });
    const q = (x) => `'${x}'`;
    fast.nginx = await startNginx({
      prefix: fast.prefix,
      workers: 1,
      waitPort: fast.port,
      errorLogLevel: 'error',
      conf: nginxConf({
        prefix: fast.prefix,
        http: `server {
        listen 127.0.0.1:${fast.port} backlog=1024;
        access_log off;
        keepalive_requests 100000;
        default_type application/scim+json;
        root ${fast.prefix};
        location = /scim/v2/Users {
            if ($request_method = POST) { return 201 ${q(JSON.stringify({ schemas: [USER_SCHEMA], id: 'static-new', userName: 'x' }))}; }
            if ($arg_startIndex = "") { return 200 ${q(list(0, []))}; }
            try_files /pages/$arg_startIndex.json =404;
        }
        location = /scim/v2/Groups { return 200 ${q(list(1, [{ id: 'g-static', displayName: 'staff', members: [] }]))}; }
        location /scim/v2/Groups/ { return 204; }
        location /scim/v2/ { return 404; }
    }`,
      }),
    });
    targets.appstatic = {
      ...scimTarget(env.scim), base_url: `http://127.0.0.1:${fast.port}/scim/v2`, reconcile: { ...REPORT_ONLY, page_size: STATIC_PAGE },
    };
    policies = policies.concat(birthright('appstatic', 'staff', 'eng'));
  }
  env.writeHr(TEMPLATES.map((t) => hrRow(t.emp, t.login, t.dept)));
  await env.startSidecar(targets, policies);

  // ---- the templates, provisioned for real -------------------------------
  const tpl = [];
  for (const t of TEMPLATES) {
    const iid = await until(`${t.login} imported`, () => env.iidOf(t.emp), 30000);
    await until(`${t.login} provisioned`, async () => {
      const f = await env.redisCmd('HGETALL', `pg:id:${iid}`);
      return Object.keys(targets).every((name) => f.includes(`acct:${name}`)) ? f : null;
    }, 30000);
    const fields = await env.redisCmd('HGETALL', `pg:id:${iid}`);
    tpl.push({ ...t, iid, fields });
  }
  // the substitution of template -> person i (logins and identity ids are
  // plain tokens: letters/digits, uuid)
  const people = Array.from({ length: N }, (_, i) => ({ i, login: login(i), iid: crypto.randomUUID(), t: tpl[i % 2] }));
  const subst = (text, p) => text.split(p.t.login).join(p.login).split(p.t.iid).join(p.iid);

  // ---- Redis: the identities and the HR index, with redis-cli --pipe -------
  let t0 = Date.now();
  const respFile = path.join(env.dir, 'identities.resp');
  const fd = fs.openSync(respFile, 'w');
  let chunk = '';
  for (const p of people) {
    const args = ['HSET', `pg:id:${p.iid}`];
    for (let k = 0; k < p.t.fields.length; k += 2) args.push(p.t.fields[k], subst(p.t.fields[k + 1], p));
    chunk += resp(args) + resp(['SET', `pg:idx:hr:${hrHash(subst(p.t.emp, p))}`, p.iid]);
    if (chunk.length > 1 << 20) { fs.writeSync(fd, chunk); chunk = ''; }
  }
  fs.writeSync(fd, chunk);
  fs.closeSync(fd);
  await redisPipe(env.redis.port, respFile);
  const redisLoad = Date.now() - t0;

  // ---- LDAP: slapadd of the entries, ldapmodify of the memberships ---------
  let ldapLoad = 0;
  if (env.ldap) {
    t0 = Date.now();
    const entry = {};
    const groupsOf = {};
    for (const t of tpl) {
      entry[t.login] = env.ldap.search(SUFFIX, `(uid=${t.login})`, ['*']).trim();
      if (!entry[t.login]) throw new Error(`template ${t.login} not in LDAP`);
      const dn = /^dn: (.*)$/m.exec(entry[t.login])[1];
      groupsOf[t.login] = ['staff', 'eng'].filter((g) => env.ldap.members(g).includes(dn));
    }
    const ldif = path.join(env.dir, 'people.ldif');
    const lfd = fs.openSync(ldif, 'w');
    let out = '';
    const members = { staff: [], eng: [] };
    for (const p of people) {
      const text = subst(entry[p.t.login], p);
      out += `${text}\n\n`;
      const dn = /^dn: (.*)$/m.exec(text)[1];
      for (const g of groupsOf[p.t.login]) members[g].push(dn);
      if (out.length > 1 << 20) { fs.writeSync(lfd, out); out = ''; }
    }
    fs.writeSync(lfd, out);
    fs.closeSync(lfd);
    await env.ldap.bulkAdd(ldif);
    for (const [g, dns] of Object.entries(members)) {
      if (dns.length === 0) continue;
      const mod = `dn: cn=${g},${GROUPS}\nchangetype: modify\nadd: member\n${dns.map((d) => `member: ${d}`).join('\n')}\n-\n\n`;
      env.ldap.modify(mod);
    }
    ldapLoad = Date.now() - t0;
  }

  // ---- SCIM: the peer's storage file, written while it is stopped ----------
  let scimLoad = 0;
  if (env.scim) {
    t0 = Date.now();
    await env.scim.proc.stop();
    const store = JSON.parse(fs.readFileSync(env.scim.dataFile, 'utf8'));
    const tUser = {};
    for (const t of tpl) {
      tUser[t.login] = Object.values(store.users).find((u) => u.userName === t.login);
      if (!tUser[t.login]) throw new Error(`template ${t.login} not in the SCIM peer`);
    }
    // the groups each template is a member of (looked up once: the member
    // lists grow to N)
    const tGroups = Object.fromEntries(tpl.map((t) => [t.login, Object.values(store.groups)
      .filter((g) => (g.members || []).some((m) => m.value === tUser[t.login].id))]));
    for (const p of people) {
      const u = tUser[p.t.login];
      const id = crypto.randomUUID();
      const copy = JSON.parse(subst(JSON.stringify(u), p).split(u.id).join(id));
      store.users[id] = copy;
      for (const g of tGroups[p.t.login]) g.members.push({ value: id, display: p.login });
      p.scimId = id;
    }
    fs.writeFileSync(env.scim.dataFile, JSON.stringify(store));
    await env.scim.restart();
    // the identities must point at these accounts (acct:app = SCIM id; the
    // static server serves the same Users: acct:appstatic too)
    const fix = path.join(env.dir, 'scim-acct.resp');
    fs.writeFileSync(fix, people.map((p) => resp(['HSET', `pg:id:${p.iid}`, 'acct:app', p.scimId, 'acct:appstatic', p.scimId]))
      .join('') + tpl.map((t) => resp(['HSET', `pg:id:${t.iid}`, 'acct:appstatic', tUser[t.login].id])).join(''));
    await redisPipe(env.redis.port, fix);
    // the static pages: each template as the peer serves it (GET
    // /Users/<id>: groups, meta, schemas), copied for every person
    const served = {};
    for (const t of tpl) {
      const r = await env.scim.request('GET', `/Users/${tUser[t.login].id}`);
      if (r.status !== 200) throw new Error(`GET template ${t.login}: ${r.status}`);
      served[t.login] = JSON.stringify(r.json);
    }
    const all = tpl.map((t) => served[t.login]);
    for (const p of people) all.push(subst(served[p.t.login], p).split(tUser[p.t.login].id).join(p.scimId));
    for (let start = 1; start <= all.length; start += STATIC_PAGE) {
      const page = all.slice(start - 1, start - 1 + STATIC_PAGE);
      fs.writeFileSync(path.join(fast.prefix, 'pages', `${start}.json`), `{"schemas":["${LIST_SCHEMA}"],`
        + `"totalResults":${all.length},"startIndex":${start},"itemsPerPage":${page.length},"Resources":[${page.join(',')}]}`);
    }
    scimLoad = Date.now() - t0;
  }
  const nIdent = await env.redisCmd('EVAL', "return #redis.call('KEYS', ARGV[1])", '0', 'pg:id:*');
  log(`loaded ${N} people (+ ${tpl.length} templates): Redis ${sec(redisLoad)} s, LDAP ${sec(ldapLoad)} s${env.scim ? `, SCIM ${sec(scimLoad)} s` : ''}; ${nIdent} identities`);

  // ---- the runs ----------------------------------------------------------
  const pids = { provgated: env.sc.pid, redis: env.redis.proc.pid };
  if (env.ldap) pids.slapd = env.ldap.proc.pid;
  if (env.scim) pids.scim = env.scim.proc.pid;
  if (fast) [pids.static] = fast.nginx.workerPids();
  const lastRun = async (target) => {
    const r = await env.admin('GET', `/reconcile?target=${target}`);
    return r.status === 200 ? r.json : null;
  };
  console.log('');
  console.log(`provgate reconciliation bench (${N} accounts + ${tpl.length} templates, no-op, full runs; sidecar + redis + peers on this machine; ${machine()})`);
  let failed = false;
  for (const [kind, target] of [['ldap', 'dir'], ['scim', 'app'], ['scim-static', 'appstatic']]) {
    if (!TARGETS.includes(kind.replace('-static', ''))) continue;
    for (let run = 0; run < RUNS; run++) {
      const prev = await lastRun(target);
      // BENCH_RECON_PERF=FILE: perf record of provgated during the first run
      const perf = process.env.BENCH_RECON_PERF && run === 0
        ? spawn('perf', ['record', '-e', 'cpu-clock', '-g', '-o', process.env.BENCH_RECON_PERF, '-p', String(env.sc.pid)],
          { stdio: 'ignore' }) : null;
      const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid)]));
      const w0 = Date.now();
      const r = await env.admin('POST', `/reconcile?target=${target}`);
      if (r.status === 404 && kind.startsWith('scim')) {
        console.log(`  ${kind}: SCIM reconciliation not available in this build (POST /reconcile?target=${target}: 404)`);
        break;
      }
      if (r.status !== 202) throw new Error(`POST /reconcile ${target}: ${r.status} ${r.text}`);
      const rep = await until(`${target} report`, async () => {
        const x = await lastRun(target);
        return x && x.status && (!prev || x.run !== prev.run) ? x : null;
      }, 3600000);
      const wall = Date.now() - w0;
      if (perf) {
        perf.kill('SIGINT');
        await new Promise((r) => { perf.on('exit', r); });
      }
      const cpu = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid) - cpu0[k]]));
      const span = rep.finished_ms - rep.started_ms;
      const nFind = Object.values(rep.counts || {}).reduce((a, b) => a + b, 0);
      const ph = rep.phases_ms ? ` phases: ${Object.entries(rep.phases_ms).map(([k, v]) => `${k} ${sec(v)} s`).join(', ')};` : '';
      console.log(`  ${kind} run ${run + 1}: ${rep.status}, ${rep.accounts} accounts, ${rep.identities} identities in ${sec(span)} s (report; ${sec(wall)} s POST to report seen)`
        + ` = ${(rep.accounts / (span / 1000)).toFixed(0)} accounts/s by the report, ${(rep.accounts / (wall / 1000)).toFixed(0)}/s POST to report seen (target >= 1200);${ph}`
        + ` findings ${nFind} (must be 0); CPU s: ${Object.entries(cpu).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}`);
      if (rep.status !== 'ok' || nFind !== 0 || rep.accounts < N) {
        failed = true;
        console.log(`    NOT a clean no-op: counts ${JSON.stringify(rep.counts)} error ${rep.error || ''}; first findings ${JSON.stringify((rep.findings || []).slice(0, 3))}`);
      }
    }
  }
  console.log(`  after: ${machine()}`);
  if (failed) process.exitCode = 1;
} finally {
  await env.stopSidecar();
  if (fast && fast.nginx) await fast.nginx.stop();
  await cleanupAll();
}
