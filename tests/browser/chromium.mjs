// Headless Chromium (Debian's /usr/bin/chromium) through playwright-core.
// Used by the page tests and to check the demo by hand:
//   node tests/browser/chromium.mjs http://127.0.0.1:8080/ alice alice-pw /tmp/shot.png
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const CHROMIUM = process.env.PROVGATE_CHROMIUM || '/usr/bin/chromium';

/** Launch a fresh headless browser; returns {browser, context, close()}. */
export async function launch() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return {
    context,
    close: async () => {
      await context.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Open url, sign in at the provider's form as user/password, and return
 * {page, status, url, text} of the page the browser lands on.
 */
export async function signIn(context, url, user, password) {
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForSelector('form#login');
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', password);
  const [resp] = await Promise.all([
    page.waitForNavigation({ url: (u) => u.href.startsWith(new URL(url).origin), waitUntil: 'load' }),
    page.click('#submit'),
  ]);
  // follow any further redirects to the final page
  await page.waitForLoadState('load');
  return { page, status: resp ? resp.status() : 0, url: page.url(), text: await page.textContent('body') };
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const [url, user, password, shot] = process.argv.slice(2);
  const b = await launch();
  try {
    const r = await signIn(b.context, url, user, password);
    console.log(`landed on ${r.url} (HTTP ${r.status})`);
    console.log(r.text.replace(/\s+\n/g, '\n').trim());
    if (shot) {
      await r.page.screenshot({ path: shot, fullPage: true });
      console.log(`screenshot: ${shot}`);
    }
  } finally {
    await b.close();
  }
}
