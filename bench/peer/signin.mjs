// Sign-in peer for bench/signin.sh: panva's oidc-provider (OpenID Certified)
// in ONE Node process, for the authorization code flow with PKCE of a public
// client, the way bench/signin.sh's token server is configured:
// - client `bench-web` (token_endpoint_auth_method none, PKCE S256, redirect
//   URI http://127.0.0.1:3000/callback, ID tokens ES256);
// - one user, alice, who signs in once through the login form below;
// - first-party skip-consent: `loadExistingGrant` grants `openid` and
//   `orders:read` for the `orders` resource to this client when the user has
//   no grant yet, so the consent prompt never shows;
// - the access token an ES256 JWT for `orders` (RFC 9068, through a resource
//   indicator), with an ES256 ID token next to it.
// Everything (sessions, grants, codes) lives in oidc-provider's default
// in-memory adapter. Port: argv[2] (default 3000). Password: $PEER_USER_PASSWORD.
import { createHash, generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 3000);
const issuer = `http://127.0.0.1:${port}`;
const USER = 'alice';
const password = process.env.PEER_USER_PASSWORD || 'alice-quickstart-password';
const RESOURCE = 'urn:tokenmesh:bench:orders';
const MAX_FORM = 4096;

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-es256', alg: 'ES256', use: 'sig' };
const digest = (s) => createHash('sha256').update(s).digest();

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  // Signed cookies, as any deployment has them.
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  clients: [{
    client_id: 'bench-web',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1:3000/callback'],
    token_endpoint_auth_method: 'none',
    id_token_signed_response_alg: 'ES256',
  }],
  scopes: ['openid'], // orders:read is the orders resource's scope (getResourceServerInfo)
  findAccount: (ctx, id) => (id === USER
    ? { accountId: id, claims: () => ({ sub: id, name: 'Alice Example', email: 'alice@example.com', email_verified: true }) }
    : undefined),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // First-party client: the grant is made without asking, once per user.
  loadExistingGrant: async (ctx) => {
    const { client, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    if (grantId) {
      const existing = await ctx.oidc.provider.Grant.find(grantId);
      if (existing) return existing;
    }
    const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope('openid');
    grant.addResourceScope(RESOURCE, 'orders:read');
    await grant.save();
    return grant;
  },
  ttl: { AccessToken: 300, IdToken: 300, AuthorizationCode: 60, Session: 10 * 3600, Grant: 10 * 3600, Interaction: 600 },
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) throw new Error('unknown resource');
        return { scope: 'orders:read', audience: 'orders', accessTokenTTL: 300, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } };
      },
    },
  },
});
provider.proxy = false;

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const loginPage = (uid, failed) => `<!doctype html><title>Sign in</title>${failed ? '<p>Wrong username or password.</p>' : ''}
<form method="post" action="/interaction/${escape(uid)}">
<input type="text" name="username" autocomplete="username" required>
<input type="password" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form>`;

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > MAX_FORM) { reject(new Error('form too large')); req.destroy(); }
    });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

// The login form of an interaction: GET shows it, POST checks it.
async function interaction(req, res) {
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name !== 'login') throw new Error(`unexpected prompt ${details.prompt.name} ${JSON.stringify(details.prompt)}`);
    if (req.method === 'POST') {
      const form = await readForm(req);
      const ok = form.get('username') === USER
        && timingSafeEqual(digest(form.get('password') || ''), digest(password));
      if (ok) {
        await provider.interactionFinished(req, res, { login: { accountId: USER } }, { mergeWithLastSubmission: false });
        return;
      }
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(loginPage(details.uid, req.method === 'POST'));
  } catch (err) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end(`interaction failed: ${err.message}`);
  }
}

const callback = provider.callback();
createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) { interaction(req, res); return; }
  if (req.url === '/healthz') { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('ok'); return; }
  callback(req, res);
}).listen(port, '127.0.0.1', () => console.log(`oidc-provider sign-in peer listening on ${issuer}`));
