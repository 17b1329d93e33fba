// Per-target rate limit of the outbox consumer ("rate_limit" of a target):
// a burst of first logins of different people against a target limited to
// 5 operations per second (burst 5). The SCIM peer's request log must show
// the limit was never exceeded, every login must end in a session (at
// once, or after the "being prepared" page), every person gets exactly one
// account, and waiting for a token never counts as a failed attempt.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll, sleep } from './lib/harness.mjs';
import { startEnv, sanitizerReports } from './gw/env.mjs';

const N = 20;
const CAPACITY = 5;
const PER_S = 5;

const PEOPLE = {};
for (let i = 0; i < N; i++) {
  const name = `rl${i}`;
  PEOPLE[name] = {
    password: `${name}-pw`,
    claims: {
      sub: `sub-${name}`, email: `${name}@example.com`, email_verified: true,
      preferred_username: name, name: `${name} Rate`, given_name: name, family_name: 'Rate',
      groups: ['staff'], employee_type: 'employee', department: 'ops', employee_number: `77${i}`,
    },
  };
}

/** One person's login; a "being prepared" page is followed by another
 *  visit with the same browser (the provider's session signs in again). */
async function loginEventually(e, user) {
  const { b, res } = await e.login(user, `/app/rate/${user}`);
  let last = res;
  let pending = 0;
  const end = Date.now() + 30000;
  while (last.status !== 200 && Date.now() < end) {
    assert.equal(last.status, 503, `${user}: ${last.status} ${String(last.body).slice(0, 200)}`);
    assert.match(String(last.body), /account_pending|being prepared/, `${user}: 503 is the "being prepared" page`);
    pending++;
    await sleep(500);
    last = await b.get(`${e.base}/app/rate/${user}`);
  }
  return { status: last.status, pending };
}

describe('per-target rate limit through the gateway', () => {
  after(cleanupAll);
  let e;

  test('setup: demoapp limited to 5 operations/s', async () => {
    e = await startEnv(undefined, {
      workers: 2,
      users: PEOPLE,
      cfgOver: (env) => {
        const base = env.baseConfig();
        return {
          targets: {
            demoapp: {
              ...base.targets.demoapp, wait_ms: 1000, rate_limit: { capacity: CAPACITY, per_s: PER_S },
            },
          },
          outbox: { ...base.outbox, claim_idle_ms: 12000 },
        };
      },
    });
  });

  test('a burst of 20 first logins never exceeds the limit and every login succeeds', async () => {
    await e.scim.resetLog();
    const t0 = Date.now();
    const results = await Promise.all(Object.keys(PEOPLE).map((u) => loginEventually(e, u)));
    const took = Date.now() - t0;
    for (const [i, r] of results.entries()) assert.equal(r.status, 200, `rl${i} signed in`);

    const log = (await e.scim.state()).requests;
    const creates = log.filter((r) => r.method === 'POST' && r.path.endsWith('/Users') && r.status === 201)
      .map((r) => r.ts).sort((a, b) => a - b);
    assert.equal(creates.length, N, 'one account made per person');
    for (let i = 0; i < N; i++) assert.equal((await e.scimUsers(`rl${i}`)).length, 1, `rl${i}: exactly one account`);

    // token bucket: any k consecutive operations span at least
    // (k - capacity) / per_s seconds (one operation of slack for the time
    // between taking the token and the POST reaching the peer)
    for (let i = 0; i < creates.length; i++) {
      for (let j = i + CAPACITY + 1; j < creates.length; j++) {
        const k = j - i + 1;
        const minSpan = ((k - CAPACITY - 1) / PER_S) * 1000;
        assert.ok(creates[j] - creates[i] >= minSpan - 50,
          `${k} creates within ${creates[j] - creates[i]} ms (limit allows ${minSpan} ms at least)`);
      }
    }
    const span = creates[N - 1] - creates[0];
    assert.ok(span >= ((N - CAPACITY - 1) / PER_S) * 1000 - 50, `the burst was spread over ${span} ms`);
    const pages = results.reduce((a, r) => a + r.pending, 0);
    console.log(`  ${N} logins in ${took} ms, creates spread over ${span} ms, ${pages} "being prepared" pages`);
    assert.ok(pages > 0, 'some logins waited longer than wait_ms and saw the "being prepared" page');

    // waiting for a token is not a failed attempt: no operation was
    // applied a second time and nothing was dead-lettered
    assert.doesNotMatch(e.nginx.errorLog(), /outbox: applying \S+ again/);
    assert.equal(Number(await e.redisCmd('XLEN', 'pg:outbox:dead')), 0);
    assert.ok(!e.audit().some((x) => x.reason === 'rate_limited' || x.reason === 'rate_limiter_unavailable'));
  });

  test('nginx stops cleanly, no sanitizer reports', async () => {
    await e.nginx.stop();
    assert.deepEqual(sanitizerReports(e.prefix), []);
  });
});
