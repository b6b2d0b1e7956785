// A DPoP client not written here: panva's oauth4webapi obtains a DPoP-bound
// token from the token server (client_credentials, client_secret_basic) and
// calls a resource through the tokenmesh sidecar with it.
//   node client.mjs ISSUER CLIENT_ID SECRET AUDIENCE RESOURCE_URL
// Prints one JSON line: what the token endpoint and the resource answered.
import * as oauth from 'oauth4webapi'

const [issuerUrl, clientId, secret, audience, resourceUrl] = process.argv.slice(2)
const insecure = { [oauth.allowInsecureRequests]: true } // loopback only
const issuer = new URL(issuerUrl)
const as = await oauth
  .discoveryRequest(issuer, { ...insecure, algorithm: 'oauth2' })
  .then((response) => oauth.processDiscoveryResponse(issuer, response))
const client = { client_id: clientId }
const auth = oauth.ClientSecretBasic(secret)
const DPoP = oauth.DPoP(client, await oauth.generateKeyPair('ES256'))

const grant = async () => {
  const params = new URLSearchParams({ audience, scope: 'orders:read' })
  const response = await oauth.clientCredentialsGrantRequest(as, client, auth, params, { DPoP, ...insecure })
  return oauth.processClientCredentialsResponse(as, client, response)
}
let nonceRetries = 0
let token
try {
  token = await grant()
} catch (err) {
  // A server that requires nonces answers use_dpop_nonce once; the DPoP
  // handle keeps the DPoP-Nonce it sent.
  if (!oauth.isDPoPNonceError(err)) throw err
  nonceRetries += 1
  token = await grant()
}

const call = () =>
  oauth.protectedResourceRequest(token.access_token, 'GET', new URL(resourceUrl), undefined, undefined, {
    DPoP,
    ...insecure,
  })
const first = await call()
const second = await call()
const bearer = await fetch(resourceUrl, { headers: { authorization: `Bearer ${token.access_token}` } })
console.log(
  JSON.stringify({
    metadata_algs: as.dpop_signing_alg_values_supported,
    token_type: token.token_type,
    nonce_retries: nonceRetries,
    access_token: token.access_token,
    resource_status: [first.status, second.status],
    bearer_status: bearer.status,
    bearer_challenge: bearer.headers.get('www-authenticate'),
  }),
)
