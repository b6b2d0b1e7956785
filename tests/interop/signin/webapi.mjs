// The same code flow with panva oauth4webapi's primitives: discovery, PKCE,
// the authorization response (state and RFC 9207 iss checked), the code
// grant with ID token validation, UserInfo, and refresh. Prints one JSON line.
//   node webapi.mjs BASE CLIENT_ID REDIRECT_URI USERNAME PASSWORD
import * as oauth from 'oauth4webapi';
import { Browser, authorizationUrl } from './browser.mjs';

const [base, clientId, redirectUri, username, password] = process.argv.slice(2);
const insecure = { [oauth.allowInsecureRequests]: true };
const issuer = new URL(base);
const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, insecure));
const client = { client_id: clientId, id_token_signed_response_alg: as.id_token_signing_alg_values_supported[0] };
const auth = oauth.None();

const verifier = oauth.generateRandomCodeVerifier();
const state = oauth.generateRandomState();
const nonce = oauth.generateRandomNonce();
const url = authorizationUrl(as.authorization_endpoint, {
  client_id: clientId,
  redirect_uri: redirectUri,
  response_type: 'code',
  scope: 'openid email offline_access',
  code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state,
  nonce,
});

const { location, pages } = await new Browser().signIn(url, username, password);
const params = oauth.validateAuthResponse(as, client, location, state);
const response = await oauth.authorizationCodeGrantRequest(as, client, auth, params, redirectUri, verifier, insecure);
const tokens = await oauth.processAuthorizationCodeResponse(as, client, response, { expectedNonce: nonce, requireIdToken: true });
const claims = oauth.getValidatedIdTokenClaims(tokens);
const info = await oauth.processUserInfoResponse(as, client, claims.sub,
  await oauth.userInfoRequest(as, client, tokens.access_token, insecure));
const refreshed = await oauth.processRefreshTokenResponse(as, client,
  await oauth.refreshTokenGrantRequest(as, client, auth, tokens.refresh_token, insecure));
let reused = null;
try {
  await oauth.processRefreshTokenResponse(as, client,
    await oauth.refreshTokenGrantRequest(as, client, auth, tokens.refresh_token, insecure));
} catch (err) {
  reused = err.error ?? String(err);
}
console.log(JSON.stringify({ pages, claims, userinfo: info, refreshed: Boolean(refreshed.access_token), reused }));
