// nginx lifecycle with provgate loaded: a graceful quit is not held up by
// provgate's Redis connections, revocation feed or timers, and a login that
// is waiting for a slow target when the quit arrives still completes.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll, parseForms } from './lib/harness.mjs';
import { startEnv, sanitizerReports, provgateConfig } from './gw/env.mjs';

/** cfgOver: the demo app's login budget raised to 30 s (slow target, ASan). */
function slowBudget(e) {
  const t = provgateConfig(e).targets;
  return { targets: { ...t, demoapp: { ...t.demoapp, wait_ms: 30000 } } };
}

describe('nginx lifecycle', () => {
  after(cleanupAll);

  test('graceful quit is immediate when idle and waits for an in-flight login', async () => {
    // a budget long enough for the slow target: the login itself waits
    const e = await startEnv(undefined, { workers: 2, cfgOver: slowBudget });
    const { res } = await e.login('alice', '/app/q');
    assert.equal(res.status, 200);

    // a first login that waits 1 s for each SCIM call
    await e.scim.setFaults({ latency_ms: 1000 });
    const b = e.browser();
    b.timeoutMs = 40000; // several slow target calls, slower still under ASan
    const stopAt = `${e.base}/provgate/callback`;
    const first = await b.get(`${e.base}/app/inflight`, { stopAt });
    const form = parseForms(first.body, first.url).find((f) => f.inputs.some((i) => i.type === 'password'));
    const posted = await b.request('POST', form.action, { form: { ...form.fields, username: 'dave', password: e.users.dave.password } });
    const cb = await b.follow(posted, { stopAt });
    const pending = b.request('GET', cb.location); // the callback itself, no redirect following
    await new Promise((r) => { setTimeout(r, 300); });

    const stopped = e.nginx.stop({ graceful: true, timeoutMs: 30000 });
    const done = await pending;
    const tDone = Date.now();
    await stopped;
    assert.equal(done.status, 302, `the in-flight login completed during the graceful quit: ${done.status} ${done.body}`);
    assert.ok(b.getCookie(`${e.base}/app/`, 'provgate_session'), 'and got its session');
    // ...and once it is answered, nothing of provgate's keeps the worker alive
    const after = Date.now() - tDone;
    assert.ok(after < 1500, `worker exited ${after} ms after the last request`);
    assert.ok(!/\[(alert|emerg|crit)\]/.test(e.nginx.errorLog()), e.nginx.errorLog().slice(-2000));
    assert.deepEqual(sanitizerReports(e.prefix), []);
  });

  test('provgate_wait_timeout bounds how long a request may wait', async () => {
    const e = await startEnv(undefined, { workers: 1, extraHttp: () => 'provgate_wait_timeout 800ms;' });
    await e.scim.setFaults({ latency_ms: 2500 });
    const t0 = Date.now();
    const { b, res } = await e.login('alice', '/app/watchdog');
    const took = Date.now() - t0;
    await e.scim.clearFaults();
    assert.equal(res.status, 504, res.body.slice(0, 300));
    assert.match(res.body, /id="reason">gateway_timeout</);
    assert.ok(took < 2500, `answered after ${took} ms`);
    assert.equal(b.getCookie(`${e.base}/app/`, 'provgate_session'), undefined);
    // the worker is healthy, and the operation the first login queued
    // completes in the background: a later login works
    let ok;
    for (let i = 0; i < 20; i++) {
      ok = await e.login('alice', '/app/watchdog');
      if (ok.res.status === 200) break;
      await new Promise((r) => { setTimeout(r, 500); });
    }
    assert.equal(ok.res.status, 200, ok.res.body);
    await e.nginx.stop();
    assert.deepEqual(sanitizerReports(e.prefix), []);
  });
});
