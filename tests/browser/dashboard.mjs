// dashboard.mjs: drives moat's dashboard in headless Chromium (Debian's chromium, through
// playwright-core) and prints one JSON object of what it saw; tests/e2e/test_95_dashboard.py
// starts moat and the origin, runs this, and asserts on the JSON.
//
// env: MOAT_URL (proxy), ADMIN_URL, TOKEN, OUT (screenshot dir), CHROMIUM (default
// /usr/bin/chromium), LOAD (requests to send, default 400), STREAMS (extra SSE streams, 8)
import http from 'node:http';
import { chromium } from 'playwright-core';

const MOAT = process.env.MOAT_URL;
const ADMIN = process.env.ADMIN_URL;
const TOKEN = process.env.TOKEN;
const OUT = process.env.OUT || '.';
const LOAD = Number(process.env.LOAD || 400);
const STREAMS = Number(process.env.STREAMS || 8);
const adminOrigin = new URL(ADMIN).origin;
const res = { console_errors: [], outside_requests: [], steps: [] };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function get(url, headers = {}) {
  return new Promise((resolve, reject) => {
    const rq = http.get(url, { agent, headers }, (r) => {
      let body = '';
      r.setEncoding('utf8');
      r.on('data', (c) => { body += c; });
      r.on('end', () => resolve({ status: r.statusCode, headers: r.headers, body }));
    });
    rq.on('error', reject);
    rq.setTimeout(5000, () => rq.destroy(new Error('timeout')));
  });
}

async function metric(name) {
  const r = await get(ADMIN + '/metrics', { Authorization: 'Bearer ' + TOKEN });
  const m = r.body.match(new RegExp('^' + name + ' ([0-9.e+]+)$', 'm'));
  return m ? Number(m[1]) : null;
}

// An SSE stream held open (not through the agent: it never ends). Resolves with its status.
function openStream(headers) {
  return new Promise((resolve) => {
    const rq = http.get(ADMIN + '/events', { headers }, (r) => {
      let data = '';
      r.setEncoding('utf8');
      r.on('data', (c) => { data += c; });
      resolve({ status: r.statusCode, close: () => rq.destroy(), events: () => data.split('\n\n').length - 1 });
    });
    rq.on('error', () => resolve({ status: 0, close: () => {}, events: () => 0 }));
  });
}

function watch(page, tag) {
  page.on('console', (m) => { if (m.type() === 'error') res.console_errors.push(tag + ': ' + m.text()); });
  page.on('pageerror', (e) => res.console_errors.push(tag + ': ' + e.message));
  page.on('request', (rq) => {
    if (new URL(rq.url()).origin !== adminOrigin) res.outside_requests.push(rq.url());
  });
}

async function num(page, sel) {
  const t = (await page.textContent(sel)) || '';
  const v = Number(t.replace(/[^0-9.]/g, ''));
  return t.includes('–') || t === '' ? null : v;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  // 1. No token: the page and /events are refused; a wrong token is refused.
  const anon = await browser.newContext();
  const ap = await anon.newPage();
  watch(ap, 'anon');
  const r0 = await ap.goto(ADMIN + '/dashboard');
  res.anon_page_status = r0.status();
  res.anon_has_form = (await ap.locator('form[action="/login"] input[name=token]').count()) === 1;
  res.anon_events_status = (await get(ADMIN + '/events')).status;
  await ap.fill('#token', 'not-the-token');
  const [r1] = await Promise.all([ap.waitForNavigation(), ap.click('button[type=submit]')]);
  res.wrong_token_status = r1.status();
  res.wrong_token_message = (await ap.textContent('body')).includes('Wrong token');
  res.wrong_token_cookies = (await anon.cookies()).length;
  await anon.close();
  // A failed login logs console errors for the 401s by design: only the real page counts.
  res.console_errors = [];

  // 2. Log in with the right token.
  const ctx = await browser.newContext({ colorScheme: 'light', viewport: { width: 1400, height: 1300 } });
  const page = await ctx.newPage();
  watch(page, 'page');
  await page.goto(ADMIN + '/dashboard');
  await page.fill('#token', TOKEN);
  const [r2] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  res.login_status = r2.status();
  // The login form itself came with a 401 (Chromium logs that as a console error): from here
  // on every console error counts.
  res.console_errors = [];
  res.login_url = page.url();
  const ck = (await ctx.cookies()).find((c) => c.name === 'moat_admin');
  res.cookie = ck ? { httpOnly: ck.httpOnly, sameSite: ck.sameSite, path: ck.path, is_token: ck.value === TOKEN } : null;
  await page.waitForFunction(() => document.getElementById('live').textContent === 'live', null, { timeout: 5000 });
  const hitsBefore = (await num(page, '#total-hit')) || 0;

  // 3. Load: 5 URLs, cacheable, spread over about 4 seconds.
  const t0 = Date.now();
  let sent = 0;
  while (sent < LOAD) {
    const batch = [];
    for (let i = 0; i < 20 && sent < LOAD; i++, sent++) batch.push(get(MOAT + '/item/' + (sent % 5)));
    await Promise.all(batch);
    const due = t0 + (sent / LOAD) * 4000;
    if (due > Date.now()) await sleep(due - Date.now());
  }
  res.load_sent = sent;
  // the page's hit counter rises to what moat counted
  const hitsMetric = await metric('moat_cache_hits_total');
  await page.waitForFunction((want) => {
    const t = document.getElementById('total-hit').textContent.replace(/[^0-9]/g, '');
    return Number(t) >= want;
  }, hitsMetric, { timeout: 5000 }).catch(() => {});
  res.page_hits_before = hitsBefore;
  res.page_hits = await num(page, '#total-hit');
  res.page_misses = await num(page, '#total-miss');
  res.metric_hits = await metric('moat_cache_hits_total');
  res.metric_misses = await metric('moat_cache_misses_total');
  res.metric_collapsed = await metric('moat_cache_collapsed_total');
  res.page_ratio_req = await num(page, '#ratio-req');
  res.page_ratio_bytes = await num(page, '#ratio-bytes');
  res.page_top_url = await page.textContent('#top-urls tr:first-child td:first-child');
  res.page_lat_hit_p50 = await page.textContent('#l-hit-p50');
  res.page_status_2xx = await page.textContent('#status tr:nth-child(2) td:nth-child(3)');
  res.chart_has_pixels = await page.evaluate(() => {
    const cv = document.getElementById('c-rps');
    const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  });
  await page.screenshot({ path: OUT + '/dashboard-light.png' });

  // 4. Keyboard: Tab reaches the purge field.
  await page.focus('body');
  let reached = false;
  for (let i = 0; i < 30 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement && document.activeElement.id === 'purge-arg');
  }
  res.keyboard_reaches_purge = reached;

  // 5. Purge /item/1 from the page; the next request for it is a miss.
  const host = new URL(MOAT).host;
  const before = await get(MOAT + '/item/1');
  res.before_purge_cache_status = before.headers['cache-status'] || '';
  await page.selectOption('#purge-kind', 'url');
  await page.fill('#purge-arg', 'http://' + host + '/item/1');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.getElementById('purge-result').textContent !== '', null, { timeout: 5000 });
  res.purge_result = await page.textContent('#purge-result');
  const after = await get(MOAT + '/item/1');
  res.after_purge_cache_status = after.headers['cache-status'] || '';

  // 6. Many streams: the snapshot is still built once a second.
  const streams = [];
  for (let i = 0; i < STREAMS; i++) streams.push(await openStream({ Authorization: 'Bearer ' + TOKEN }));
  res.stream_statuses = streams.map((s) => s.status);
  const s0 = await metric('moat_dashboard_snapshots_total');
  const w0 = Date.now();
  await sleep(4000);
  const s1 = await metric('moat_dashboard_snapshots_total');
  res.snapshots_delta = s1 - s0;
  res.snapshots_seconds = (Date.now() - w0) / 1000;
  res.clients_metric = await metric('moat_dashboard_clients');
  res.stream_events = streams.map((s) => s.events());
  // one more than admin.dashboard_clients allows is refused
  const extra = [];
  for (;;) {
    const s = await openStream({ Authorization: 'Bearer ' + TOKEN });
    extra.push(s);
    if (s.status !== 200 || extra.length > 64) break;
  }
  res.over_limit_status = extra[extra.length - 1].status;
  res.streams_open_at_refusal = STREAMS + (extra.length - 1) + 1; // + the page's own
  for (const s of streams.concat(extra)) s.close();

  // 7. Dark theme screenshot (same login).
  const dctx = await browser.newContext({ colorScheme: 'dark', viewport: { width: 1400, height: 1300 } });
  await dctx.addCookies(await ctx.cookies());
  const dp = await dctx.newPage();
  watch(dp, 'dark');
  await sleep(500);
  await dp.goto(ADMIN + '/dashboard');
  await dp.waitForFunction(() => document.getElementById('live').textContent === 'live', null, { timeout: 5000 });
  await dp.screenshot({ path: OUT + '/dashboard-dark.png' });
  res.dark_bg = await dp.evaluate(() => getComputedStyle(document.body).backgroundColor);
  res.light_bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await dctx.close();
  await ctx.close();
} catch (e) {
  res.error = String(e && e.stack || e);
} finally {
  await browser.close();
  agent.destroy();
}
process.stdout.write(JSON.stringify(res) + '\n');
