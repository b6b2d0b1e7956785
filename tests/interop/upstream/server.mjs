// An upstream OpenID Provider for the oidc IdentityProvider tests: panva's
// oidc-provider (OpenID Certified) with one confidential client `tokenmesh`
// and the user `jane` (any password: oidc-provider's devInteractions log in
// whoever is named). RS256 ID tokens, PKCE S256, UserInfo.
//   node server.mjs PORT REDIRECT_URI
// Client secret: $UPSTREAM_CLIENT_SECRET. Prints "listening" when ready.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 3000);
const redirectUri = process.argv[3] || 'http://127.0.0.1:8080/callback';
const issuer = `http://127.0.0.1:${port}`;
const secret = process.env.UPSTREAM_CLIENT_SECRET || 'upstream-client-secret-0123456789abcdef';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'upstream-rs256', alg: 'RS256', use: 'sig' };

const accounts = {
  jane: { sub: 'jane', email: 'jane@corp.example', email_verified: true, name: 'Jane Doe', roles: ['shop-admin', 'hr'] },
};

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [{
    client_id: 'tokenmesh',
    client_secret: secret,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [redirectUri],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  clientDefaults: { id_token_signed_response_alg: 'RS256' },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], roles: ['roles'] },
  scopes: ['openid', 'email', 'profile', 'roles'],
  pkce: { required: () => true },
  findAccount: (ctx, id) => {
    const account = accounts[id];
    if (!account) return undefined;
    return { accountId: id, claims: () => account };
  },
  features: { devInteractions: { enabled: true }, userinfo: { enabled: true } },
});
provider.proxy = false;
provider.listen(port, '127.0.0.1', () => console.log(`listening on ${issuer}`));
