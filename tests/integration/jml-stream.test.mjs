// Joiners, movers and leavers from a Redis Stream, end to end: other
// systems XADD {"event": <JSON event>} to pg:jml:events; the sidecar
// (build/provgated) reads it as a member of a consumer group and applies
// each event through the same code as POST /events: accounts appear in a
// real SCIM server and a real PostgreSQL, a leave disables them and ends
// the gateway session. Idempotent by event id; malformed entries go to
// pg:jml:events:dead and never block the stream; an entry left behind by a
// stopped or dead sidecar is applied later; two sidecars apply each entry
// once.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  cleanupAll, freePort, startProcess, waitForPort, sleep, REPO_ROOT, jsonRequest, redisCommand, until,
} from './lib/harness.mjs';
import { startPostgres, ACCOUNTS_SCHEMA, accountsSqlTarget } from './lib/pg.mjs';
import { startEnv, sanitizerReports, DEFAULT_POLICIES } from './gw/env.mjs';

const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const STREAM = 'pg:jml:events';
const DEAD = 'pg:jml:events:dead';
const GROUP = 'provgated';

const POLICIES = {
  policies: [
    ...DEFAULT_POLICIES.policies,
    { id: 'db-staff', kind: 'birthright', who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'staff' }] }] },
    { id: 'db-eng', kind: 'birthright', who: { attr: 'department', eq: 'eng' },
      grants: [{ target: 'hrdb', entitlements: [{ type: 'group', value: 'eng-tools' }] }] },
  ],
};

const person = (login, dept) => ({
  username: login, email: `${login}@example.com`, name: `${login} Person`, given_name: login,
  family_name: 'Person', department: dept, employee_type: 'employee',
});

describe('JML events from a Redis Stream through the sidecar', () => {
  let e;
  let pg;
  let sc;
  let scPort;

  const redis = (...args) => redisCommand(e.redisPort, ...args);
  const xadd = (event) => redis('XADD', STREAM, '*', 'event', typeof event === 'string' ? event : JSON.stringify(event));
  const startSidecar = async (port, name = 'provgated') => {
    const p = await startProcess(BIN, ['--config', e.cfgFile, '--listen', `127.0.0.1:${port}`, '--log-level', 'info'],
      { name });
    await waitForPort(port);
    return p;
  };
  const metrics = async (port = scPort) => {
    const r = await jsonRequest('GET', `http://127.0.0.1:${port}/metrics`);
    const out = {};
    for (const m of r.text.matchAll(/^provgated_jml_stream_events_total\{result="(\w+)"\} (\d+)$/gm)) {
      out[m[1]] = Number(m[2]);
    }
    return out;
  };
  const dbRow = (login) => {
    const out = pg.psql(`SELECT active, department, coalesce((SELECT string_agg(group_name, ',' ORDER BY group_name) FROM account_groups WHERE account_key = a.key), '') FROM accounts a WHERE key = '${login}'`);
    if (!out) return null;
    const [active, dept, groups] = out.split('|');
    return { active: active === 't', dept, groups: groups ? groups.split(',') : [] };
  };
  // [[id, [field, value, ...]], ...] -> [{id, field: value, ...}]
  const entries = (arr) => (arr || []).map(([id, kv]) => {
    const o = { id };
    for (let i = 0; kv && i < kv.length; i += 2) o[kv[i]] = kv[i + 1];
    return o;
  });
  const pendingCount = async () => Number((await redis('XPENDING', STREAM, GROUP))[0]);
  const eventAudits = (id) => e.audit().filter((x) => x.type === 'jml.event' && x.event === id);

  before(async () => {
    pg = await startPostgres();
    pg.psql(ACCOUNTS_SCHEMA);
    e = await startEnv(undefined, {
      workers: 1,
      policies: POLICIES,
      cfgOver: (env) => ({
        targets: { ...env.baseConfig().targets, hrdb: accountsSqlTarget(pg) },
        hr_source: {
          // no export in this test: only the stream feeds the sidecar
          file: path.join(env.dir, 'no-hr-export.csv'),
          poll_s: 0,
          feed: {
            key_column: 'emp_id',
            attributes: { login: 'username', email: 'email', dept: 'department', type: 'employee_type' },
          },
          correlation: [{ attr: 'email', index: 'email' }],
          event_stream: { enabled: true, block_ms: 200, claim_idle_ms: 1500 },
        },
      }),
    });
    scPort = await freePort();
    sc = await startSidecar(scPort);
  });
  after(async () => {
    if (sc) await sc.stop();
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('a join through the stream: accounts in SCIM and PostgreSQL, acknowledged, counted, shown in /healthz', async () => {
    const health = await until('consumer reading', async () => {
      const h = (await jsonRequest('GET', `http://127.0.0.1:${scPort}/healthz`)).json;
      return h && h.event_stream && ['reading', 'claiming'].includes(h.event_stream.state) ? h : null;
    });
    assert.equal(health.status, 'ok');
    await xadd({ id: 'st-join-nora-1', type: 'join', key: '5001', attributes: person('nora', 'eng') });
    await until('nora in PostgreSQL', () => dbRow('nora'));
    assert.deepEqual(dbRow('nora'), { active: true, dept: 'eng', groups: ['eng-tools', 'staff'] });
    await until('nora in SCIM', async () => (await e.scimUsers('nora')).length === 1);
    await until('acknowledged', async () => (await pendingCount()) === 0);
    assert.equal((await metrics()).applied, 1);
    assert.ok(eventAudits('st-join-nora-1').some((x) => x.outcome === 'success' && x.reason === 'applied'));
  });

  test('the same event id again: applied once, a duplicate counted', async () => {
    const opsBefore = e.audit().filter((x) => x.type === 'jml.operation').length;
    await xadd({ id: 'st-join-nora-1', type: 'join', key: '5001', attributes: person('nora', 'eng') });
    await until('duplicate counted', async () => (await metrics()).duplicate === 1);
    await until('acknowledged', async () => (await pendingCount()) === 0);
    assert.equal(e.audit().filter((x) => x.type === 'jml.operation').length, opsBefore, 'no operation enqueued again');
    assert.equal(pg.psql("SELECT count(*) FROM accounts WHERE key = 'nora'"), '1');
    assert.equal((await e.scimUsers('nora')).length, 1);
    assert.equal((await metrics()).applied, 1);
  });

  test('a move and a leave through the stream: access follows, the leaver is disabled and signed out', async () => {
    await xadd({ id: 'st-move-nora-1', type: 'move', key: '5001', attributes: person('nora', 'sales') });
    await until('nora moved', () => dbRow('nora') && dbRow('nora').dept === 'sales');
    await until('nora lost eng-tools', () => !dbRow('nora').groups.includes('eng-tools'));
    assert.deepEqual(dbRow('nora'), { active: true, dept: 'sales', groups: ['staff'] });
    // alice signs in, then HR joins her (correlated by email) and she leaves
    const { b, res } = await e.login('alice', '/app/before-stream');
    assert.equal(res.status, 200);
    await xadd({ id: 'st-join-alice-1', type: 'join', key: '5003', attributes: person('alice', 'eng') });
    await until('alice in PostgreSQL', () => dbRow('alice'));
    await xadd({ id: 'st-leave-alice-1', type: 'leave', key: '5003' });
    await until('alice disabled in PostgreSQL', () => dbRow('alice') && !dbRow('alice').active);
    await until('alice disabled in SCIM', async () => (await e.scimUsers('alice'))[0]?.active === false);
    const next = await b.request('GET', `${e.base}/app/before-stream`);
    assert.equal(next.status, 302, 'session ended');
    assert.ok(e.audit().some((x) => x.type === 'jml.leave' && x.reason === 'left'));
  });

  test('malformed entries go to the dead stream with a reason and do not block the next event', async () => {
    const before = (await metrics()).invalid || 0;
    const deadBefore = Number(await redis('XLEN', DEAD));
    const ids = {};
    ids.json = await xadd('{"id": "st-bad-json", "type": ');
    ids.noid = await xadd({ type: 'join', key: '5009', attributes: person('x', 'eng') });
    ids.type = await xadd({ id: 'st-bad-type', type: 'hire', key: '5009', attributes: person('x', 'eng') });
    ids.big = await xadd({ id: 'st-big', type: 'join', key: '5009', attributes: { blob: 'x'.repeat(70000) } });
    ids.field = await redis('XADD', STREAM, '*', 'payload', '{}');
    await xadd({ id: 'st-join-otto-1', type: 'join', key: '5002', attributes: person('otto', 'eng') });
    await until('otto in PostgreSQL after the bad ones', () => dbRow('otto'));
    await until('all dead-lettered', async () => (await metrics()).invalid === before + 5);
    await until('acknowledged', async () => (await pendingCount()) === 0);
    const dead = entries(await redis('XRANGE', DEAD, '-', '+')).slice(deadBefore);
    const byEntry = Object.fromEntries(dead.map((d) => [d.entry, d]));
    assert.match(byEntry[ids.json].reason, /^event: not JSON/);
    assert.match(byEntry[ids.noid].reason, /^id: required/);
    assert.match(byEntry[ids.type].reason, /^type: must be/);
    assert.equal(byEntry[ids.type].event_id, 'st-bad-type');
    assert.match(byEntry[ids.big].reason, /^event: larger than 65536 bytes/);
    assert.match(byEntry[ids.field].reason, /exactly one field, "event"/);
    assert.ok(dead.every((d) => !JSON.stringify(d).includes('xxxxxxxx')), 'the payload is not copied');
    assert.ok(e.audit().some((x) => x.type === 'jml.event' && x.outcome === 'denied' && x.source === 'stream'
      && x.entry === ids.type && /type/.test(x.detail)));
  });

  test('events added while the sidecar is stopped, or left pending by it, are applied after it starts again', async () => {
    await sc.stop();
    sc = null;
    await xadd({ id: 'st-join-pia-1', type: 'join', key: '5004', attributes: person('pia', 'sales') });
    // an entry delivered to this sidecar's consumer but never acknowledged
    // (as if it stopped in the middle): its own pending list, read first
    const consumer = `it@127.0.0.1:${scPort}`;
    await xadd({ id: 'st-join-rex-1', type: 'join', key: '5005', attributes: person('rex', 'eng') });
    const got = await redis('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', '2', 'STREAMS', STREAM, '>');
    assert.equal(got[0][1].length, 2);
    assert.equal(await pendingCount(), 2);
    await sleep(300);
    assert.equal(dbRow('pia'), null, 'nothing applied while stopped');
    sc = await startSidecar(scPort);
    await until('pia applied after the restart', () => dbRow('pia'));
    await until('rex applied from the pending list', () => dbRow('rex'));
    await until('acknowledged', async () => (await pendingCount()) === 0);
    assert.equal(eventAudits('st-join-pia-1').filter((x) => x.reason === 'applied').length, 1);
    assert.ok(!sc.output.includes('reclaimed an idle entry'), 'read from its own pending list, not reclaimed');
  });

  test('an entry of a dead consumer is claimed after claim_idle_ms', async () => {
    // a consumer that takes the entry and dies before applying it (added
    // and read in one script, so the running sidecar cannot get it first)
    const got = await redis('EVAL', "redis.call('XADD', KEYS[1], '*', 'event', ARGV[1]) "
      + "return redis.call('XREADGROUP', 'GROUP', ARGV[2], 'ghost', 'COUNT', '1', 'STREAMS', KEYS[1], '>')",
    '1', STREAM, JSON.stringify({ id: 'st-join-sam-1', type: 'join', key: '5006', attributes: person('sam', 'eng') }), GROUP);
    assert.equal(got[0][1].length, 1);
    await sleep(800);
    assert.equal(dbRow('sam'), null, 'not before it is idle long enough');
    await until('sam applied after the claim', () => dbRow('sam'), 10000);
    await until('acknowledged', async () => (await pendingCount()) === 0);
    assert.ok(sc.output.includes('reclaimed an idle entry'));
  });

  test('two sidecars on one stream: each event applied once', async () => {
    const port2 = await freePort();
    const sc2 = await startSidecar(port2, 'provgated-2');
    try {
      const m1 = await metrics();
      const logins = ['ute', 'vic', 'wes', 'xia', 'yan', 'zed'];
      for (const [i, l] of logins.entries()) {
        await xadd({ id: `st-join-${l}-1`, type: 'join', key: `60${i}`, attributes: person(l, 'eng') });
      }
      await until('all applied', () => logins.every((l) => dbRow(l)), 20000);
      await until('acknowledged', async () => (await pendingCount()) === 0);
      const a = await metrics();
      const b = await metrics(port2);
      assert.equal((a.applied - m1.applied) + b.applied, logins.length, 'every event applied exactly once');
      assert.equal((a.duplicate - m1.duplicate) + b.duplicate, 0, 'no entry delivered twice');
      for (const [i, l] of logins.entries()) {
        assert.equal(e.audit().filter((x) => x.type === 'jml.join' && x.hr_key === `60${i}`).length, 1, l);
        assert.equal(pg.psql(`SELECT count(*) FROM accounts WHERE key = '${l}'`), '1');
      }
    } finally {
      await sc2.stop();
    }
  });

  test('Redis down: the consumer pauses and retries (no busy loop), then goes on', async () => {
    const errors = async () => Number(/^provgated_jml_stream_redis_errors_total (\d+)$/m
      .exec((await jsonRequest('GET', `http://127.0.0.1:${scPort}/metrics`)).text)[1]);
    const before = await errors();
    await e.redis.stop();
    try {
      await sleep(2500);
      const during = (await errors()) - before;
      assert.ok(during >= 1 && during <= 6, `${during} Redis errors in 2.5 s`);
      const h = (await jsonRequest('GET', `http://127.0.0.1:${scPort}/healthz`)).json;
      assert.equal(h.event_stream.state, 'paused');
    } finally {
      await e.redis.restart();
    }
    await xadd({ id: 'st-join-tom-1', type: 'join', key: '5007', attributes: person('tom', 'eng') });
    await until('tom applied after Redis came back', () => dbRow('tom'));
  });
  test('poll_s 0: an HR export that appears is not imported by itself', async () => {
    fs.writeFileSync(path.join(e.dir, 'no-hr-export.csv'),
      'emp_id,login,email,dept,type\n5099,olga,olga@example.com,eng,employee\n');
    await sleep(2500);
    assert.equal(dbRow('olga'), null, 'only POST /import reads the file when poll_s is 0');
    assert.ok(!e.audit().some((x) => x.type === 'jml.import'));
  });
});
