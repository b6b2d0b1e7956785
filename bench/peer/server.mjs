// Peer for bench/run.sh: panva's oidc-provider (OpenID Certified) in ONE Node
// process, issuing ES256 JWT access tokens for the client_credentials grant
// through a resource indicator, and opaque ones for a second resource (kept
// by oidc-provider's default adapter, in process memory). Port: argv[2] or $PORT (default 3000).
// Client secret: $PEER_CLIENT_SECRET (default below). Client id: bench-es256.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || process.env.PORT || 3000);
const issuer = `http://127.0.0.1:${port}`;
const secret = process.env.PEER_CLIENT_SECRET || 'bench-client-secret-0123456789abcdef';
const RESOURCE = 'urn:tokenmesh:bench:orders';
const OPAQUE_RESOURCE = 'urn:tokenmesh:bench:orders-opaque';

// ES256 signing key, generated fresh at every start.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-es256', alg: 'ES256', use: 'sig' };

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [{
    client_id: 'bench-es256',
    client_secret: secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'orders:read',
  }],
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  scopes: ['orders:read'],
  ttl: { ClientCredentials: 300 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator === OPAQUE_RESOURCE) {
          return { scope: 'orders:read', audience: 'orders', accessTokenTTL: 300, accessTokenFormat: 'opaque' };
        }
        if (resourceIndicator !== RESOURCE) throw new Error('unknown resource');
        return {
          scope: 'orders:read',
          audience: 'orders',
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});
provider.proxy = false;

// Trivial endpoint on the same Node HTTP stack, for an own-ceiling sanity check.
const callback = provider.callback();
const { createServer } = await import('node:http');
createServer((req, res) => {
  if (req.url === '/healthz') { res.writeHead(200, { 'content-type': 'text/plain' }); res.end('ok'); return; }
  callback(req, res);
}).listen(port, '127.0.0.1', () => console.log(`oidc-provider peer listening on ${issuer}`));
