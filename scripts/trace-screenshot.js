// Draws a page of `go tool trace`'s viewer in headless Chromium once the viewer has
// imported the trace, and saves a PNG (scripts/trace-screenshot.sh runs it).
//   node scripts/trace-screenshot.js URL OUT.png WIDTH HEIGHT
const path = require('path');
const { chromium } = require(path.join(process.cwd(), 'target/screenshot/node_modules/playwright-core'));

// Whether the viewer's import overlay is shown (`shown`) or gone. The viewer runs under
// the web components polyfill, whose node lists are walked by index.
function overlay(shown) {
  let n = 0;
  const walk = (root) => {
    const all = root.querySelectorAll('*');
    for (let i = 0; i < all.length; i++) {
      if (all[i].tagName === 'OVERLAY') n++;
      if (all[i].shadowRoot) walk(all[i].shadowRoot);
    }
  };
  walk(document);
  return shown ? n > 0 : n === 0;
}

(async () => {
  const [url, out, width, height] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: +width, height: +height } });
    const loaded = page.waitForResponse((r) => r.url().includes('/jsontrace'), { timeout: 120000 });
    await page.goto(url, { timeout: 60000 });
    await loaded;
    // The events are imported in steps behind an overlay; the timeline is drawn after.
    await page.waitForFunction(overlay, true, { timeout: 30000, polling: 100 }).catch(() => {});
    await page.waitForFunction(overlay, false, { timeout: 120000, polling: 250 });
    // The viewer's banner about the polyfill covers the top rows; it has a button to hide.
    await page.click('text=Hide', { timeout: 2000 }).catch(() => {});
    await page.waitForTimeout(2000);
    await page.screenshot({ path: out });
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e.message); process.exit(1); });
