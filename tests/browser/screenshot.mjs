// screenshot.mjs: logs in to a running moat's dashboard and saves it in both themes (how
// docs/dashboard-*.png are made). env: ADMIN_URL, TOKEN (optional), OUT, CHROMIUM.
import { chromium } from 'playwright-core';

const ADMIN = process.env.ADMIN_URL;
const OUT = process.env.OUT || '.';
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  for (const scheme of ['light', 'dark']) {
    const ctx = await browser.newContext({ colorScheme: scheme, viewport: { width: 1280, height: 1360 } });
    const page = await ctx.newPage();
    await page.goto(ADMIN + '/dashboard');
    if (process.env.TOKEN && (await page.locator('#token').count())) {
      await page.fill('#token', process.env.TOKEN);
      await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    }
    await page.waitForFunction(() => document.getElementById('live').textContent === 'live');
    await page.waitForTimeout(1500);
    await page.screenshot({ path: `${OUT}/dashboard-${scheme}.png` });
    await ctx.close();
  }
} finally {
  await browser.close();
}
