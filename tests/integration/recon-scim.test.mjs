// Reconciliation of a SCIM target end to end: the sidecar (build/provgated)
// provisions people from an HR export into the real SCIM peer
// (tests/peers/scim-server.mjs, SCIMMY) through the outbox, then changes
// made by hand over the peer's SCIM API (a hand-made user, a deleted user,
// a changed attribute incl. an enterprise extension one, a removed and an
// added group membership, a re-enabled leaver, an unlinked account) are
// found by POST /reconcile, listed page by page (page_size 2), reported
// (JSON and CSV files, GET /reconcile, audit events) and repaired through
// the outbox by the configured actions after a SIGHUP reload; then a
// second run converges, an incremental run lists only the user changed
// since (filter=meta.lastModified gt ...), a target that does not
// advertise filtering gets a full run with a note, scheduled runs work,
// and provgatectl starts a run on the SCIM target.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  cleanupAll, freePort, startProcess, waitForPort, sleep, REPO_ROOT, jsonRequest, until,
} from './lib/harness.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const CTL = path.join(REPO_ROOT, 'build', 'provgatectl');
const ADMIN_TOKEN = 'recon-scim-admin-token-0123456789';
const ENT = 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User';
const DEPT = `${ENT}:department`;
const PATCH_OP = 'urn:ietf:params:scim:api:messages:2.0:PatchOp';

const POLICIES = {
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'sod-demoapp-eng-staff', kind: 'sod', action: 'detect',
      conflict: [{ target: 'demoapp', type: 'group', value: 'staff' },
        { target: 'demoapp', type: 'group', value: 'engineering' }] },
  ],
};

const REPORT_ONLY = { orphaned: 'report', rogue: 'report', missing: 'report', drift: 'report', sod: 'report' };
const REPAIR = { orphaned: 'disable', rogue: 'adopt', missing: 'revert', drift: 'revert', sod: 'report' };

const HEADER = 'emp_id,login,email,name,given,family,dept,type,end_date';
const row = (id, login, dept) => `${id},${login},${login}@example.com,${login} Person,${login},Person,${dept},employee,`;
const hrHash = (key) => crypto.createHash('sha256').update(key).digest('base64url');
const PEOPLE = [['3001', 'nora', 'eng'], ['3002', 'otto', 'sales'], ['3003', 'pia', 'sales'],
  ['3004', 'quinn', 'eng'], ['3005', 'rex', 'sales'], ['3006', 'sam', 'sales']];

function ctlAsync(args) {
  return new Promise((resolve) => {
    const p = spawn(CTL, args, { env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

describe('reconciliation of a SCIM target (real SCIM peer) through the sidecar', () => {
  let e;
  let sc;
  let scPort;
  let hrFile;
  let scCfgFile;
  let reconDir;
  let baseCfg;

  const writeHr = (people) => {
    const tmp = `${hrFile}.tmp`;
    fs.writeFileSync(tmp, `${[HEADER, ...people.map((p) => row(...p))].join('\n')}\n`);
    fs.renameSync(tmp, hrFile);
  };
  const writeScCfg = (reconcile) => {
    const cfg = JSON.parse(JSON.stringify(baseCfg));
    cfg.targets.demoapp.reconcile = reconcile;
    fs.writeFileSync(scCfgFile, JSON.stringify(cfg, null, 2));
  };
  const reload = async (reconcile) => {
    writeScCfg(reconcile);
    const before = e.audit().filter((x) => x.type === 'config.reload' && x.outcome === 'success').length;
    sc.kill('SIGHUP');
    await until('reloaded', () => e.audit().filter((x) => x.type === 'config.reload' && x.outcome === 'success').length
      > before);
  };
  const user = async (userName) => (await e.scimUsers(userName))[0] || null;
  const groupsOf = (u) => (u.groups || []).map((g) => g.display).sort();
  const groupId = async (name) => (await e.scim.state()).groups.find((g) => g.displayName === name).id;
  const scimOk = async (method, p, body) => {
    const r = await e.scim.request(method, p, body);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${p}: ${r.status} ${r.text}`);
    return r.json;
  };
  // a hand edit: GET, change, PUT the whole User (as an administrator would)
  const editUser = async (userName, fn) => {
    const u = await user(userName);
    const cur = await scimOk('GET', `/Users/${u.id}`);
    delete cur.meta;
    delete cur.groups;
    fn(cur);
    await scimOk('PUT', `/Users/${u.id}`, cur);
  };
  const members = async (group, op, uid) => scimOk('PATCH', `/Groups/${await groupId(group)}`, {
    schemas: [PATCH_OP],
    Operations: [op === 'add' ? { op: 'add', path: 'members', value: [{ value: uid }] }
      : { op: 'remove', path: `members[value eq "${uid}"]` }],
  });
  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
  const lastRun = async () => {
    const r = await jsonRequest('GET', `http://127.0.0.1:${scPort}/reconcile?target=demoapp`);
    return r.status === 200 ? r.json : null;
  };
  const reconcile = async (mode = 'full') => {
    const prev = await lastRun();
    const r = await jsonRequest('POST', `http://127.0.0.1:${scPort}/reconcile?target=demoapp&mode=${mode}`, {}, auth);
    assert.equal(r.status, 202, JSON.stringify(r.json));
    return until('reconciliation report', async () => {
      const x = await lastRun();
      return x && x.status && (!prev || x.run !== prev.run) ? x : null;
    });
  };
  const iidOf = (empId) => e.redisCmd('GET', `pg:idx:hr:${hrHash(empId)}`);
  const find = (rep, kind, account) => rep.findings.filter((f) => f.kind === kind && f.account === account);
  const userLists = async () => (await e.scim.state()).requests
    .filter((q) => q.method === 'GET' && q.path.endsWith('/Users') && /startIndex=/.test(q.url));

  before(async () => {
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      cfgOver: (env) => {
        hrFile = path.join(env.dir, 'hr.csv');
        const base = env.baseConfig().targets.demoapp;
        return {
          targets: {
            demoapp: {
              ...base,
              attributes: {
                userName: '${username}',
                'name.givenName': '${given_name}',
                'name.familyName': '${family_name}',
                displayName: '${name}',
                emails: '${email}',
                [DEPT]: '${department}',
                active: true,
              },
            },
          },
          hr_source: {
            file: hrFile,
            poll_s: 1,
            feed: {
              key_column: 'emp_id',
              attributes: {
                login: 'username', email: 'email', name: 'name', given: 'given_name', family: 'family_name',
                dept: 'department', type: 'employee_type',
              },
              termination_column: 'end_date',
              max_leave_pct: 100,
              max_malformed_pct: 50,
            },
          },
        };
      },
    });
    baseCfg = JSON.parse(fs.readFileSync(e.cfgFile, 'utf8'));
    scCfgFile = path.join(e.cfgDir, 'sidecar.json');
    writeScCfg({ ...REPORT_ONLY, page_size: 2 });
    reconDir = path.join(e.dir, 'recon');
    fs.mkdirSync(reconDir);
    fs.writeFileSync(path.join(e.dir, 'admin.token'), ADMIN_TOKEN);
    scPort = await freePort();
    sc = await startProcess(BIN, ['--config', scCfgFile, '--listen', `127.0.0.1:${scPort}`, '--log-level', 'info',
      '--admin-token-file', path.join(e.dir, 'admin.token'), '--recon-dir', reconDir], { name: 'provgated' });
    await waitForPort(scPort);
  });
  after(async () => {
    if (sc) {
      // a clean stop: exit 0 and no sanitizer report (ASan build: leaks too)
      const { code, signal } = await sc.stop();
      assert.equal(signal, null);
      assert.equal(code, 0, sc.output.slice(-2000));
      assert.doesNotMatch(sc.output, /Sanitizer|runtime error/);
    }
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('in sync after the HR import, listed two Users per page', async () => {
    writeHr(PEOPLE);
    await until('accounts provisioned', async () => {
      const us = await e.scimUsers();
      return PEOPLE.every(([, login]) => us.some((u) => u.userName === login))
        && groupsOf(us.find((u) => u.userName === 'quinn')).length === 2;
    });
    await until('every account recorded', async () => {
      for (const [id] of PEOPLE) {
        if (!(await e.redisCmd('HGET', `pg:id:${await iidOf(id)}`, 'acct:demoapp'))) return false;
      }
      return true;
    });
    const nora = await user('nora');
    assert.equal(nora[ENT].department, 'eng', 'the extension attribute is provisioned');
    await e.scim.resetLog();
    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.equal(rep.mode, 'full');
    assert.equal(rep.accounts, 6);
    assert.ok(rep.identities >= 6);
    assert.deepEqual(rep.counts, { orphaned: 0, rogue: 0, missing: 0, drift: 0, sod: 2 }, JSON.stringify(rep.findings));
    assert.deepEqual(rep.findings.map((f) => f.account).sort(), ['nora', 'quinn']);
    assert.equal(find(rep, 'sod', 'nora')[0].policy, 'sod-demoapp-eng-staff');
    assert.deepEqual(find(rep, 'sod', 'nora')[0].groups.sort(), ['engineering', 'staff']);
    // SCIM paging: startIndex/count, two Users a page, three pages
    const pages = (await userLists()).map((q) => new URL(q.url, 'http://x').searchParams);
    assert.deepEqual(pages.map((q) => [q.get('startIndex'), q.get('count')]), [['1', '2'], ['3', '2'], ['5', '2']]);
    assert.ok(pages.every((q) => !q.get('filter')), 'a full run does not filter');
  });

  test('hand changes on the SCIM server are found and only reported', async () => {
    // rex leaves: the import disables his account; then someone re-enables it
    writeHr(PEOPLE.filter(([, l]) => l !== 'rex'));
    await until('rex disabled', async () => (await user('rex'))?.active === false);
    await editUser('rex', (u) => { u.active = true; });
    // a hand-made user nobody is entitled to
    await scimOk('POST', '/Users', { schemas: ['urn:ietf:params:scim:schemas:core:2.0:User'], userName: 'mallory' });
    // a deleted user
    await scimOk('DELETE', `/Users/${(await user('otto')).id}`);
    // changed attributes: a core one and an enterprise extension one
    await editUser('nora', (u) => {
      u.emails = [{ value: 'nora@evil.example', type: 'work', primary: true }];
      u[ENT] = { ...(u[ENT] || {}), department: 'hacked' };
    });
    // a removed membership (granted) and an added one (not granted)
    await members('engineering', 'remove', (await user('quinn')).id);
    await members('admins', 'add', (await user('pia')).id);
    // an unlinked account: provgate lost its link to sam's account
    const samIid = await iidOf('3006');
    await e.redisCmd('HDEL', `pg:id:${samIid}`, 'acct:demoapp');
    const auditBefore = e.audit().length;

    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.equal(rep.accounts, 6);
    assert.deepEqual(rep.counts, { orphaned: 1, rogue: 3, missing: 1, drift: 2, sod: 1 }, JSON.stringify(rep.findings));
    assert.equal(find(rep, 'orphaned', 'rex')[0].reason, 'identity_left');
    assert.equal(find(rep, 'orphaned', 'rex')[0].identity, await iidOf('3005'));
    assert.equal(find(rep, 'rogue', 'mallory')[0].reason, 'no_identity');
    const sam = find(rep, 'rogue', 'sam')[0];
    assert.equal(sam.reason, 'unlinked');
    assert.equal(sam.candidate, samIid);
    assert.equal(sam.account_id, (await user('sam')).id);
    const pia = find(rep, 'rogue', 'pia')[0];
    assert.equal(pia.reason, 'entitlements');
    assert.deepEqual(pia.extra_groups, ['admins']);
    const m = rep.findings.find((f) => f.kind === 'missing');
    assert.equal(m.account, 'otto');
    assert.equal(m.reason, 'account_gone');
    assert.equal(m.identity, await iidOf('3002'));
    const d = find(rep, 'drift', 'nora')[0];
    assert.equal(d.reason, 'attributes');
    assert.deepEqual(d.attrs.sort((a, b) => a.attr.localeCompare(b.attr)), [
      { attr: 'emails', desired: 'nora@example.com', actual: ['nora@evil.example'] },
      { attr: DEPT, desired: 'eng', actual: 'hacked' },
    ]);
    const q = find(rep, 'drift', 'quinn')[0];
    assert.equal(q.reason, 'entitlements');
    assert.deepEqual(q.missing_groups, ['engineering']);
    assert.deepEqual(rep.findings.filter((f) => f.kind === 'sod').map((f) => f.account), ['nora']);
    assert.ok(rep.findings.every((f) => f.action === 'report' && f.action_outcome === 'reported'));
    assert.deepEqual(rep.actions, { enqueued: 0, adopted: 0, reported: 8, skipped: 0, failed: 0 });

    // the report files
    const json = JSON.parse(fs.readFileSync(path.join(reconDir, rep.files.json), 'utf8'));
    assert.deepEqual(json.counts, rep.counts);
    assert.equal(json.target, 'demoapp');
    const csv = fs.readFileSync(path.join(reconDir, rep.files.csv), 'utf8').trim().split('\r\n');
    assert.equal(csv[0], 'kind,reason,account,account_id,identity,action,action_outcome,detail');
    assert.equal(csv.length, 1 + rep.findings.length);
    const malloryId = (await user('mallory')).id;
    assert.ok(csv.some((l) => l.startsWith(`rogue,no_identity,mallory,${malloryId},`)));
    assert.ok(csv.some((l) => l.startsWith('missing,account_gone,otto,,')));

    // audited: one recon.finding and one recon.action per finding, one run
    const ev = e.audit().slice(auditBefore).filter((x) => x.run === rep.run);
    assert.equal(ev.filter((x) => x.type === 'recon.finding').length, 8);
    assert.equal(ev.filter((x) => x.type === 'recon.action' && x.reason === 'reported').length, 8);
    assert.ok(ev.some((x) => x.type === 'recon.finding' && x.kind === 'rogue' && x.account === 'mallory'
      && x.target === 'demoapp'));
    assert.ok(ev.some((x) => x.type === 'recon.run' && x.counts.rogue === 3 && x.accounts === 6));
    assert.ok(!JSON.stringify(ev).includes(e.scim.token), 'no secret in the audit events');
    // nothing was changed
    assert.equal(await user('otto'), null);
    assert.equal((await user('rex')).active, true);
  });

  test('revert, adopt and disable repair the SCIM server through the outbox', async () => {
    await reload({ ...REPAIR, page_size: 2 });
    const samIid = await iidOf('3006');

    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.deepEqual(rep.counts, { orphaned: 1, rogue: 3, missing: 1, drift: 2, sod: 1 });
    assert.equal(find(rep, 'orphaned', 'rex')[0].action, 'disable');
    assert.match(find(rep, 'orphaned', 'rex')[0].action_outcome, /^(enqueued|already_pending)$/);
    assert.equal(find(rep, 'rogue', 'sam')[0].action_outcome, 'adopted');
    assert.equal(find(rep, 'rogue', 'mallory')[0].action_outcome, 'skipped');
    assert.equal(find(rep, 'rogue', 'pia')[0].action_outcome, 'skipped');
    assert.equal(find(rep, 'missing', 'otto')[0].action_outcome, 'enqueued');
    assert.equal(find(rep, 'drift', 'nora')[0].action, 'revert');
    assert.match(find(rep, 'drift', 'nora')[0].idem, /^live:/);
    assert.deepEqual(rep.actions, { enqueued: 4, adopted: 1, reported: 1, skipped: 2, failed: 0 });

    // the effects on the SCIM server
    await until('rex disabled again', async () => (await user('rex'))?.active === false);
    await until('otto re-created', async () => {
      const o = await user('otto');
      return o && groupsOf(o).includes('staff') ? o : null;
    });
    await until('nora restored', async () => {
      const n = await user('nora');
      return n.emails?.[0]?.value === 'nora@example.com' && n[ENT]?.department === 'eng';
    });
    await until('quinn back in engineering', async () => groupsOf(await user('quinn')).includes('engineering'));
    assert.equal(await e.redisCmd('HGET', `pg:id:${samIid}`, 'acct:demoapp'), (await user('sam')).id, 'sam linked again');
    assert.ok(e.audit().some((x) => x.type === 'recon.action' && x.reason === 'adopted' && x.candidate === samIid));
    assert.ok(e.audit().some((x) => x.type === 'recon.action' && x.reason === 'enqueued' && x.kind === 'missing'
      && x.run === rep.run));
    // provgate never removes what it does not manage
    assert.ok(await user('mallory'), 'a rogue account without identity is never touched');
    assert.deepEqual(groupsOf(await user('pia')), ['admins', 'staff']);

    // converged: what remains is what provgate must not touch on its own
    const again = await until('converged', async () => {
      const r = await reconcile();
      return r.counts.missing === 0 && r.counts.drift === 0 && r.counts.orphaned === 0 ? r : null;
    });
    assert.deepEqual(again.counts, { orphaned: 0, rogue: 2, missing: 0, drift: 0, sod: 2 }, JSON.stringify(again.findings));
    assert.deepEqual(again.actions.enqueued, 0);
  });

  test('an incremental run lists only the Users changed since the last run', async () => {
    await sleep(50);
    await editUser('sam', (u) => { u.displayName = 'Sam Hacked'; });
    await e.scim.resetLog();
    const prev = await lastRun();
    const rep = await reconcile('incremental');
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.equal(rep.mode, 'incremental');
    assert.equal(rep.note, undefined);
    assert.equal(rep.since_ms, Number(prev.run));
    assert.equal(rep.accounts, 1, 'only sam was modified');
    assert.deepEqual(rep.counts, { orphaned: 0, rogue: 0, missing: 0, drift: 1, sod: 0 }, JSON.stringify(rep.findings));
    assert.deepEqual(rep.findings[0].attrs, [{ attr: 'displayName', desired: 'sam Person', actual: 'Sam Hacked' }]);
    assert.equal(rep.findings[0].action_outcome, 'enqueued');
    const lists = await userLists();
    assert.equal(lists.length, 1);
    const filter = new URL(lists[0].url, 'http://x').searchParams.get('filter');
    assert.equal(filter, `meta.lastModified gt "${new Date(rep.since_ms - 1).toISOString()}"`);
    await until('sam repaired', async () => (await user('sam')).displayName === 'sam Person');
  });

  test('provgatectl reconcile start works on the SCIM target', async () => {
    const r = await ctlAsync(['--sidecar', `http://127.0.0.1:${scPort}`, '--token-file', path.join(e.dir, 'admin.token'),
      'reconcile', 'start', '--target', 'demoapp', '--full']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /^reconcile demoapp: started$/m);
    assert.match(r.out, /^demoapp: status=ok mode=full/m);
    assert.equal((await lastRun()).accounts, 7);
  });

  test('a target that does not advertise filtering gets a full run, with a note', async () => {
    const cfg = await jsonRequest('POST', `${e.scim.origin}/_admin/config`, { filter: false });
    assert.equal(cfg.status, 200);
    // a reload forgets the capabilities read before; its first run is full
    await reload({ ...REPORT_ONLY, page_size: 3 });
    const full = await reconcile();
    assert.equal(full.status, 'ok', JSON.stringify(full));
    await e.scim.resetLog();
    const rep = await reconcile('incremental');
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.equal(rep.mode, 'full');
    assert.equal(rep.since_ms, 0);
    assert.match(rep.note, /does not support filtering/);
    assert.equal(rep.accounts, 7);
    const lists = await userLists();
    assert.deepEqual(lists.map((q) => new URL(q.url, 'http://x').searchParams.get('startIndex')), ['1', '4', '7']);
    assert.ok(lists.every((q) => !/filter=/.test(q.url)));
  });

  test('scheduled runs on the SCIM target', async () => {
    const prev = await lastRun();
    await reload({ ...REPORT_ONLY, schedule_s: 1 });
    const runs = new Set();
    await until('two scheduled runs', async () => {
      const x = await lastRun();
      if (x && x.run !== prev.run && x.status === 'ok') runs.add(x.run);
      return runs.size >= 2;
    }, 20000);
    assert.ok(e.audit().some((ev) => ev.type === 'recon.run' && ev.target === 'demoapp' && ev.run === [...runs][1]));
    // a reload stops them
    await reload(REPORT_ONLY);
  });

  test('a server without "groups" on Users: memberships from the Groups\' members', async () => {
    const set = await jsonRequest('POST', `${e.scim.origin}/_admin/config`, { user_groups: false });
    assert.equal(set.status, 200);
    const u = await e.scim.request('GET', `/Users/${(await user('quinn')).id}`);
    assert.equal(u.json.groups, undefined, 'the peer now serves Users without groups');
    // read from the Users, every granted group looks missing (and no SoD)
    const blind = await reconcile();
    assert.equal(blind.status, 'ok', JSON.stringify(blind));
    assert.equal(blind.counts.drift, 5, JSON.stringify(blind.findings));
    assert.equal(blind.counts.sod, 0);
    // "groups": "group_members": listed from /Groups, page by page
    await reload({ ...REPORT_ONLY, page_size: 2, groups: 'group_members' });
    await e.scim.resetLog();
    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.deepEqual(rep.counts, { orphaned: 0, rogue: 2, missing: 0, drift: 0, sod: 2 }, JSON.stringify(rep.findings));
    assert.deepEqual(find(rep, 'rogue', 'pia')[0].extra_groups, ['admins']);
    const glists = (await e.scim.state()).requests.filter((q) => q.method === 'GET' && q.path.endsWith('/Groups'));
    assert.deepEqual(glists.map((q) => new URL(q.url, 'http://x').searchParams.get('startIndex')), ['1', '3']);
    // a membership removed on the Group is found
    await members('engineering', 'remove', (await user('nora')).id);
    const drift = await reconcile();
    assert.deepEqual(drift.counts, { orphaned: 0, rogue: 2, missing: 0, drift: 1, sod: 1 }, JSON.stringify(drift.findings));
    assert.deepEqual(find(drift, 'drift', 'nora')[0].missing_groups, ['engineering']);
    await members('engineering', 'add', (await user('nora')).id);
  });

  test('an "oauth2" SCIM target is listed with a client-credentials token', async () => {
    const o = await jsonRequest('POST', `${e.scim.origin}/_admin/oauth`,
      { client_id: 'recon-client', client_secret: 'recon-client-secret', expires_in: 3600 });
    assert.equal(o.status, 200);
    const cfg = JSON.parse(JSON.stringify(baseCfg));
    cfg.targets.demoapp.reconcile = { ...REPORT_ONLY, page_size: 3 };
    cfg.targets.demoapp.auth = {
      type: 'oauth2', token_url: `${e.scim.origin}/oauth/token`, client_id: 'recon-client',
      client_secret: 'recon-client-secret',
    };
    fs.writeFileSync(scCfgFile, JSON.stringify(cfg, null, 2));
    const before = e.audit().filter((x) => x.type === 'config.reload' && x.outcome === 'success').length;
    sc.kill('SIGHUP');
    await until('reloaded', () => e.audit().filter((x) => x.type === 'config.reload' && x.outcome === 'success').length
      > before);
    await e.scim.resetLog();
    const rep = await reconcile();
    assert.equal(rep.status, 'ok', JSON.stringify(rep));
    assert.equal(rep.accounts, 7);
    const lists = await userLists();
    assert.ok(lists.length >= 3, JSON.stringify(lists));
    assert.deepEqual((await e.scim.state()).requests.filter((q) => q.auth !== 'oauth').map((q) => q.url), [],
      'every call carried the token');
    const tok = await jsonRequest('GET', `${e.scim.origin}/_admin/oauth`);
    assert.equal(tok.json.token_requests, 1);
    await reload(REPORT_ONLY);
  });

  test('a bad page_size is refused at start with its JSON path', async () => {
    const { spawnSync } = await import('node:child_process');
    const cfg = JSON.parse(JSON.stringify(baseCfg));
    cfg.targets.demoapp.reconcile = { page_size: 5000 };
    const bad = path.join(e.cfgDir, 'bad-recon.json');
    fs.writeFileSync(bad, JSON.stringify(cfg));
    const p = spawnSync(BIN, ['--config', bad, '--listen', '127.0.0.1:0'], { encoding: 'utf8', timeout: 10000 });
    assert.equal(p.status, 1);
    assert.match(p.stdout + p.stderr, /\$\.targets\.demoapp\.reconcile\.page_size: must be an integer in 1\.\.1000/);
  });
});
