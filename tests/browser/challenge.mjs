// challenge.mjs: opens a moat site in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), lets the shield's challenge page solve its proof of work, and prints what
// the browser ended on as one JSON line. Used by tests/e2e/test_111_shield_browser.py.
//
//   node challenge.mjs URL [--map-host NAME] [--timeout MS]
//   node challenge.mjs URL --screenshot FILE      (waits a second into the work, then shoots)
//
// --map-host NAME resolves NAME to 127.0.0.1 (the URL then uses NAME): a page on a name that
// is not loopback is not a secure context, so crypto.subtle is missing and the page's own
// SHA-256 has to do the work.
import { chromium } from 'playwright-core';

const args = process.argv.slice(2);
const url = args[0];
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const shot = opt('--screenshot', null);
const mapHost = opt('--map-host', null);
const timeout = +opt('--timeout', '30000');

const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
if (mapHost) flags.push(`--host-resolver-rules=MAP ${mapHost} 127.0.0.1`);

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: flags });
const out = { ok: false };
try {
  const page = await browser.newPage({
    userAgent: 'Mozilla/5.0 (X11; Linux x86_64) moat-test Chrome', viewport: { width: 900, height: 640 } });
  // each document reports whether it has WebCrypto; the first one is the challenge page
  const seen = [];
  await page.exposeFunction('moatReport', (v) => seen.push(v));
  await page.addInitScript(() => {
    const secure = window.isSecureContext && !!(window.crypto && window.crypto.subtle);
    document.addEventListener('DOMContentLoaded', () => window.moatReport({ secure, title: document.title }));
  });
  const first = await page.goto(url, { waitUntil: 'commit', timeout });
  out.first_status = first.status();
  if (shot) {
    await page.waitForTimeout(1000); // the page as a visitor sees it while it works
    await page.screenshot({ path: shot });
    out.ok = true;
  } else {
    // wait until a document without the challenge is loaded (navigations destroy contexts)
    const end = Date.now() + timeout;
    for (;;) {
      try {
        await page.waitForLoadState('domcontentloaded');
        if (await page.evaluate(() => !document.getElementById('d'))) break;
      } catch (e) { /* navigating */ }
      if (Date.now() > end) throw new Error('the challenge was not solved in time');
      await page.waitForTimeout(100);
    }
    const firstDoc = seen.find((v) => v.title) || {};
    // the final page has the challenge page's origin, so the same answer
    out.secure_context = await page.evaluate(() => window.isSecureContext && !!(window.crypto && window.crypto.subtle));
    out.first_title = firstDoc.title;
    out.final_url = page.url();
    out.final_text = await page.evaluate(() => document.body.innerText);
    const cookies = await page.context().cookies();
    out.cookie = (cookies.find((c) => c.name === 'moat_clearance') || {}).value || null;
    out.ok = true;
  }
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
