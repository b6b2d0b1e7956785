// The OpenID Connect code flow with PKCE, driven by panva openid-client
// (OpenID Certified) against the real token server: discovery, the code
// flow through the login and consent pages, ID token validation, UserInfo,
// refresh with rotation, a reused refresh token and a replayed code
// refused, and RP-initiated logout. Prints one JSON line.
//   node client.mjs BASE CLIENT_ID REDIRECT_URI USERNAME PASSWORD POST_LOGOUT_URI
import * as client from 'openid-client';
import { Browser } from './browser.mjs';

const [base, clientId, redirectUri, username, password, postLogout] = process.argv.slice(2);
const insecure = { execute: [client.allowInsecureRequests] };

const errorOf = async (promise) => {
  try {
    await promise;
    return null;
  } catch (err) {
    return err.error ?? err.code ?? String(err);
  }
};

const config = await client.discovery(new URL(base), clientId, undefined, client.None(), insecure);
const verifier = client.randomPKCECodeVerifier();
const state = client.randomState();
const nonce = client.randomNonce();
const authorizationUrl = client.buildAuthorizationUrl(config, {
  redirect_uri: redirectUri,
  scope: 'openid profile email offline_access',
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state,
  nonce,
});

const browser = new Browser();
const { location, pages } = await browser.signIn(authorizationUrl, username, password);
const checks = { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true };
const tokens = await client.authorizationCodeGrant(config, location, checks);
const claims = tokens.claims();
const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);

const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
const reusedRefresh = await errorOf(client.refreshTokenGrant(config, tokens.refresh_token));
const afterReuse = await errorOf(client.refreshTokenGrant(config, refreshed.refresh_token));
const replayedCode = await errorOf(client.authorizationCodeGrant(config, location, checks));

// A second sign-in: the session is there (SSO), consent remembered.
const second = await browser.signIn(authorizationUrl, username, password);

const logoutUrl = client.buildEndSessionUrl(config, {
  id_token_hint: tokens.id_token,
  post_logout_redirect_uri: postLogout,
  state: 'bye-1',
});
const logout = await browser.fetch(logoutUrl);

console.log(JSON.stringify({
  pages,
  second_pages: second.pages,
  claims,
  userinfo,
  scope: tokens.scope,
  refresh_token_prefix: tokens.refresh_token.slice(0, 4),
  refreshed_differs: refreshed.refresh_token !== tokens.refresh_token,
  refreshed_id_token: Boolean(refreshed.id_token),
  reused_refresh: reusedRefresh,
  after_reuse: afterReuse,
  replayed_code: replayedCode,
  logout_status: logout.status,
  logout_location: logout.headers.get('location'),
  session_cookie_after_logout: browser.cookies.has('tokenmesh_session'),
}));
