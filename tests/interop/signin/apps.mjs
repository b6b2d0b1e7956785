// The small web apps the browser tests sign in to: public clients of the
// token server at BASE, the code flow with PKCE by openid-client (its own
// discovery and ID token validation), served on loopback.
import http from 'node:http';
import * as client from 'openid-client';

const insecure = { execute: [client.allowInsecureRequests] };

/** A web app of client `clientId` at `/<name>/`: /login starts, /callback ends. */
export async function app(base, name, clientId) {
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
      `<p id="email">${claims.email ?? ''}</p><p id="amr">${(claims.amr ?? []).join(' ')}</p>` +
      `<p id="token">${tokens.access_token.length} characters of access token</p>`);
  };
}

/** Serves `apps` (name -> handler) on a loopback port; resolves to the server and its origin. */
export async function serve(apps) {
  const server = http.createServer((req, res) => {
    const origin = `http://127.0.0.1:${server.address().port}`;
    const name = req.url.split('/')[1];
    (apps[name] ?? (async (_, r) => r.writeHead(404).end()))(req, res, origin).catch((err) => {
      res.writeHead(500).end(String(err));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}
