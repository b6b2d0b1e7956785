// Sign-in peer for bench/signin.sh: panva's oidc-provider (OpenID Certified)
// in ONE Node process, for the authorization code flow with PKCE of a public
// client, the way bench/signin.sh's token server is configured:
// - client `bench-web` (token_endpoint_auth_method none, PKCE S256, redirect
//   URI http://127.0.0.1:3000/callback, ID tokens ES256), and
//   `bench-web-offline`, the same with the refresh_token grant: its code
//   flows also answer a refresh token, rotated on every use;
// - one user, alice, who signs in once through the login form below;
// - first-party skip-consent: `loadExistingGrant` grants `openid` and
//   `orders:read` for the `orders` resource to this client when the user has
//   no grant yet, so the consent prompt never shows;
// - the access token an ES256 JWT for `orders` (RFC 9068, through a resource
//   indicator), with an ES256 ID token next to it.
// Everything (sessions, grants, codes, refresh tokens) lives in process
// memory (MapAdapter below). Port: argv[2] (default 3000). Password: $PEER_USER_PASSWORD.
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

// oidc-provider's own MemoryAdapter is a development aid that would skew
// this benchmark twice: it is an LRU of 1,000 entries (a pool of refresh
// tokens would be evicted before use), and every save of a token re-scans
// all the tokens of its grant (one grant per user and client here, so the
// codes of the last 60 s: O(n) per flow). This one keeps everything in
// process memory too, in Maps, at O(1) per operation, as a real store's
// indexes would. Entries expire on read; the benchmark process is short-lived.
const entries = new Map(); // `${model}:${id}` -> { payload, expiresAt }
const byGrant = new Map(); // grantId -> Set of entry keys (revokeByGrantId)
const sessionByUid = new Map(); // session uid -> session id
const now = () => Math.floor(Date.now() / 1000);
class MapAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    entries.set(key, { payload, expiresAt: typeof expiresIn === 'number' ? now() + expiresIn : Infinity });
    if (payload.grantId) {
      if (!byGrant.has(payload.grantId)) byGrant.set(payload.grantId, new Set());
      byGrant.get(payload.grantId).add(key);
    }
    if (this.model === 'Session') sessionByUid.set(payload.uid, id);
  }

  async find(id) {
    const entry = entries.get(this.key(id));
    if (!entry || entry.expiresAt <= now()) return undefined;
    return entry.payload;
  }

  async findByUid(uid) { return sessionByUid.has(uid) ? this.find(sessionByUid.get(uid)) : undefined; }

  async findByUserCode() { return undefined; } // no device flow here

  async consume(id) {
    const entry = entries.get(this.key(id));
    if (entry) entry.payload.consumed = now();
  }

  async destroy(id) { entries.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const key of byGrant.get(grantId) ?? []) entries.delete(key);
    byGrant.delete(grantId);
  }
}

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  jwks: { keys: [jwk] },
  // Signed cookies, as any deployment has them.
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  clients: ['bench-web', 'bench-web-offline'].map((id) => ({
    client_id: id,
    grant_types: id === 'bench-web' ? ['authorization_code'] : ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1:3000/callback'],
    token_endpoint_auth_method: 'none',
    id_token_signed_response_alg: 'ES256',
  })),
  // A refresh token whenever the client may use one (oidc-provider drops
  // offline_access unless prompt=consent, which would show the consent page);
  // public clients' refresh tokens are rotated on every use (its default).
  issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
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
  ttl: { AccessToken: 300, IdToken: 300, AuthorizationCode: 60, RefreshToken: 30 * 24 * 3600, Session: 10 * 3600, Grant: 30 * 24 * 3600, Interaction: 600 },
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
