// A real browser: Debian's Chromium, headless, driven by Playwright, signs
// in through the token server's pages to two small web apps (public
// clients, code flow with PKCE by openid-client, served here on loopback):
// the first asks for the password and consent, the second finds the session
// (SSO) and goes straight back. Screenshots of the login and consent pages
// go to ARTIFACTS. Prints one JSON line.
//   node chromium.mjs BASE CHROMIUM ARTIFACTS USERNAME PASSWORD
import http from 'node:http';
import path from 'node:path';
import * as client from 'openid-client';
import { chromium } from 'playwright-core';

const [base, executablePath, artifacts, username, password] = process.argv.slice(2);
const insecure = { execute: [client.allowInsecureRequests] };

/** A web app of client `clientId` at `/<name>/`: /login starts, /callback ends. */
async function app(name, clientId) {
  const config = await client.discovery(new URL(base), clientId, undefined, client.None(), insecure);
  const pending = new Map();
  return async (req, res, origin) => {
    const url = new URL(req.url, origin);
    const redirectUri = `${origin}/${name}/callback`;
    if (url.pathname === `/${name}/login`) {
      const verifier = client.randomPKCECodeVerifier();
      const state = client.randomState();
      pending.set(state, verifier);
      const to = client.buildAuthorizationUrl(config, {
        redirect_uri: redirectUri,
        scope: 'openid profile email',
        code_challenge: await client.calculatePKCECodeChallenge(verifier),
        code_challenge_method: 'S256',
        state,
      });
      res.writeHead(302, { location: to.href }).end();
      return;
    }
    const state = url.searchParams.get('state');
    const tokens = await client.authorizationCodeGrant(config, url, {
      pkceCodeVerifier: pending.get(state),
      expectedState: state,
    });
    const claims = tokens.claims();
    res.writeHead(200, { 'content-type': 'text/html' }).end(
      `<!doctype html><title>${name}</title><h1 id="who">Signed in as ${claims.sub}</h1>` +
      `<p id="token">${tokens.access_token.length} characters of access token</p>`);
  };
}

const apps = { shop: await app('shop', 'spa'), admin: await app('admin', 'spa2') };
const server = http.createServer((req, res) => {
  const origin = `http://127.0.0.1:${server.address().port}`;
  const name = req.url.split('/')[1];
  (apps[name] ?? (async (_, r) => r.writeHead(404).end()))(req, res, origin).catch((err) => {
    res.writeHead(500).end(String(err));
  });
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

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
