// Federation in a real browser: Debian's Chromium, headless (Playwright),
// signs in to a small web app (client `fed`) through the token server's
// login page and an upstream OpenID Provider that is not tokenmesh (panva
// oidc-provider, tests/interop/upstream/server.mjs): first the button of an
// upstream that is down (the login page says so), then the one of the
// running upstream, its own login and consent pages, back to the token
// server's consent page, and to the app. Screenshots go to ARTIFACTS.
// Prints one JSON line.
//   node federation.mjs BASE CHROMIUM ARTIFACTS UPSTREAM_LOGIN
import path from 'node:path';
import { chromium } from 'playwright-core';
import { app, serve } from './apps.mjs';

const [base, executablePath, artifacts, login] = process.argv.slice(2);
const { server, origin } = await serve({ fed: await app(base, 'fed', 'fed') });
const upstreamBase = (url) => new URL(url).origin;

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
const hosts = [];
try {
  const page = await browser.newPage({ viewport: { width: 1024, height: 720 } });
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) hosts.push(upstreamBase(frame.url()));
  });

  await page.goto(`${origin}/fed/login`);
  await page.getByRole('button', { name: 'Continue with Corp account' }).waitFor();
  await page.screenshot({ path: path.join(artifacts, 'login-federated.png') });

  // The upstream that is down: the login page again, saying so.
  await page.getByRole('button', { name: 'Continue with Offline directory' }).click();
  const alert = page.getByRole('alert');
  await alert.waitFor();
  const downAlert = await alert.textContent();
  const downUrl = new URL(page.url()).pathname;
  await page.screenshot({ path: path.join(artifacts, 'upstream-down.png') });

  // The running upstream: its own pages (devInteractions), then back.
  await page.getByRole('button', { name: 'Continue with Corp account' }).click();
  await page.locator('input[name=login]').waitFor();
  const upstreamLogin = upstreamBase(page.url());
  await page.locator('input[name=login]').fill(login);
  await page.locator('input[name=password]').fill('any password');
  await page.screenshot({ path: path.join(artifacts, 'upstream-login.png') });
  await page.locator('button[type=submit]').click();
  // The upstream's own consent ("Continue"), then ours ("Allow").
  const upstreamConsent = page.getByRole('button', { name: 'Continue', exact: true });
  const ours = page.getByRole('button', { name: 'Allow' });
  await upstreamConsent.or(ours).waitFor();
  if (await upstreamConsent.isVisible()) {
    await upstreamConsent.click();
  }
  await page.getByRole('button', { name: 'Allow' }).waitFor();
  await page.screenshot({ path: path.join(artifacts, 'consent-federated.png') });
  await page.getByRole('button', { name: 'Allow' }).click();
  await page.waitForURL(`${origin}/fed/callback**`);
  const who = await page.locator('#who').textContent();
  const email = await page.locator('#email').textContent();
  const amr = await page.locator('#amr').textContent();
  await page.screenshot({ path: path.join(artifacts, 'fed-signed-in.png') });

  console.log(JSON.stringify({
    down_alert: downAlert, down_path: downUrl, upstream: upstreamLogin, who, email, amr,
    hosts: [...new Set(hosts)],
  }));
} finally {
  await browser.close();
  server.close();
}
