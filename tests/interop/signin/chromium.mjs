// A real browser: Debian's Chromium, headless, driven by Playwright, signs
// in through the token server's pages to two small web apps (public
// clients, code flow with PKCE by openid-client, served here on loopback):
// the first asks for the password and consent, the second finds the session
// (SSO) and goes straight back. Screenshots of the login and consent pages
// go to ARTIFACTS. Prints one JSON line.
//   node chromium.mjs BASE CHROMIUM ARTIFACTS USERNAME PASSWORD
import path from 'node:path';
import { chromium } from 'playwright-core';
import { app, serve } from './apps.mjs';

const [base, executablePath, artifacts, username, password] = process.argv.slice(2);

const apps = { shop: await app(base, 'shop', 'spa'), admin: await app(base, 'admin', 'spa2') };
const { server, origin } = await serve(apps);

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
const seen = [];
try {
  const page = await browser.newPage({ viewport: { width: 1024, height: 720 } });
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) seen.push(new URL(frame.url()).pathname);
  });

  await page.goto(`${origin}/shop/login`);
  await page.getByLabel('Username').fill(username);
  await page.screenshot({ path: path.join(artifacts, 'login.png') });
  await page.getByLabel('Password').fill(password);
  await page.keyboard.press('Enter');
  await page.getByRole('button', { name: 'Allow' }).waitFor();
  await page.screenshot({ path: path.join(artifacts, 'consent.png') });
  await page.getByRole('button', { name: 'Allow' }).click();
  await page.waitForURL(`${origin}/shop/callback**`);
  const shop = await page.locator('#who').textContent();
  await page.screenshot({ path: path.join(artifacts, 'shop-signed-in.png') });

  const before = seen.length;
  await page.goto(`${origin}/admin/login`);
  await page.waitForURL(`${origin}/admin/callback**`);
  const admin = await page.locator('#who').textContent();
  const secondPages = seen.slice(before);

  console.log(JSON.stringify({ shop, admin, second_pages: secondPages }));
} finally {
  await browser.close();
  server.close();
}
