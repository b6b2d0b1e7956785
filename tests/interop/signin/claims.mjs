// The OpenID Connect details of issue #17 with panva oauth4webapi: the
// `claims` request parameter (an essential acr and claims for the ID token
// and for UserInfo), a DPoP-bound access token (oauth4webapi's own DPoP
// proofs, `ath` included) and a signed UserInfo answer, validated by the
// library (`iss`, `aud`, `sub`, the algorithm discovery lists) and its
// signature checked against the server's JWKS. Prints one JSON line.
//   node claims.mjs BASE CLIENT_ID REDIRECT_URI USERNAME PASSWORD CLAIMS
import * as oauth from 'oauth4webapi';
import { Browser, authorizationUrl } from './browser.mjs';

const [base, clientId, redirectUri, username, password, claimsParam] = process.argv.slice(2);
const insecure = { [oauth.allowInsecureRequests]: true }; // loopback only
const issuer = new URL(base);
const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, insecure));
const client = {
  client_id: clientId,
  id_token_signed_response_alg: as.id_token_signing_alg_values_supported[0],
  userinfo_signed_response_alg: as.userinfo_signing_alg_values_supported[0],
};
const DPoP = oauth.DPoP(client, await oauth.generateKeyPair('ES256'));

const verifier = oauth.generateRandomCodeVerifier();
const state = oauth.generateRandomState();
const nonce = oauth.generateRandomNonce();
const url = authorizationUrl(as.authorization_endpoint, {
  client_id: clientId,
  redirect_uri: redirectUri,
  response_type: 'code',
  scope: 'openid',
  claims: claimsParam,
  code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state,
  nonce,
});

const { location, pages } = await new Browser().signIn(url, username, password);
const params = oauth.validateAuthResponse(as, client, location, state);
const response = await oauth.authorizationCodeGrantRequest(as, client, oauth.None(), params, redirectUri, verifier,
  { DPoP, ...insecure });
const tokens = await oauth.processAuthorizationCodeResponse(as, client, response, { expectedNonce: nonce, requireIdToken: true });
const claims = oauth.getValidatedIdTokenClaims(tokens);

const infoResponse = await oauth.userInfoRequest(as, client, tokens.access_token, { DPoP, ...insecure });
const contentType = infoResponse.headers.get('content-type');
const userinfo = await oauth.processUserInfoResponse(as, client, claims.sub, infoResponse);
await oauth.validateApplicationLevelSignature(as, infoResponse, insecure);

// An essential acr nobody here can meet: the answer comes back to the app.
const unmetUrl = new URL(url);
unmetUrl.searchParams.set('claims', JSON.stringify({ id_token: { acr: { essential: true, values: ['urn:example:gold'] } } }));
const unmet = await new Browser().signIn(unmetUrl, username, password);
let unmetError = null;
try {
  oauth.validateAuthResponse(as, client, unmet.location, state);
} catch (err) {
  unmetError = err.error ?? String(err);
}

// The same token as a bearer token: refused, with the DPoP challenge.
const bearer = await fetch(as.userinfo_endpoint, { headers: { authorization: `Bearer ${tokens.access_token}` } });
console.log(JSON.stringify({
  pages,
  claims_parameter_supported: as.claims_parameter_supported,
  acr_values_supported: as.acr_values_supported,
  token_type: tokens.token_type,
  claims,
  userinfo_content_type: contentType,
  userinfo,
  unmet_error: unmetError,
  unmet_pages: unmet.pages,
  bearer_status: bearer.status,
  bearer_challenge: bearer.headers.get('www-authenticate'),
}));
