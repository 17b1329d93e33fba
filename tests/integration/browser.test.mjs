// A real browser (Debian's headless Chromium via playwright-core) signs in
// through the gateway: the provider's login page, the redirect back, the
// app page with the identity headers, and the error page for someone no
// policy entitles.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanupAll } from './lib/harness.mjs';
import { startEnv, sanitizerReports } from './gw/env.mjs';
import { launch, signIn } from '../browser/chromium.mjs';

describe('browser sign-in through the gateway', () => {
  let e;
  let b;
  before(async () => {
    e = await startEnv(undefined, { workers: 2 });
    b = await launch();
  });
  after(async () => {
    if (b) await b.close();
    const reports = e ? sanitizerReports(e.prefix) : [];
    await cleanupAll();
    assert.deepEqual(reports, [], reports.join('\n'));
  });

  test('alice signs in and the app shows her identity headers', async () => {
    const r = await signIn(b.context, `${e.base}/app/welcome`, 'alice', 'alice-pw');
    assert.equal(new URL(r.url).pathname, '/app/welcome');
    const rows = await r.page.$$eval('#provgate-headers tr', (trs) => trs.map((tr) => [
      tr.querySelector('th').textContent.toLowerCase(), tr.querySelector('td').textContent]));
    const h = Object.fromEntries(rows);
    assert.equal(h['x-provgate-user'], 'alice');
    assert.equal(h['x-provgate-email'], 'alice@example.com');
    assert.equal(h['x-provgate-groups'], 'staff,engineering');
    const cookies = await b.context.cookies(e.base);
    const sess = cookies.find((c) => c.name === 'provgate_session');
    assert.ok(sess && sess.httpOnly && sess.sameSite === 'Lax', JSON.stringify(sess));
    assert.equal((await e.scimUsers('alice')).length, 1);
    await r.page.close();
  });

  test('bob is not entitled and sees a clear page, not an error dump', async () => {
    await b.context.clearCookies(); // a different person at the same browser
    const r = await signIn(b.context, `${e.base}/app/`, 'bob', 'bob-pw');
    assert.equal(r.status, 403);
    assert.match(await r.page.title(), /Access denied/);
    assert.equal(await r.page.textContent('#reason'), 'not_entitled');
    assert.match(await r.page.textContent('#ref'), /^[A-Za-z0-9_-]{20,}$/);
    await r.page.close();
  });
});
