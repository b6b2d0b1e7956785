// Protected resource metadata (RFC 9728) with a client not written here:
// panva's oauth4webapi calls a resource behind the tokenmesh sidecar with no
// valid token, reads `resource_metadata` from the challenges it gets back,
// fetches the resource's metadata (checking its `resource`), discovers the
// authorization server it names (RFC 8414, checking its `issuer`), gets a
// DPoP-bound token for the resource (RFC 8707 `resource`) and calls again.
//   node resource.mjs RESOURCE_URL CLIENT_ID SECRET
// Prints one JSON line: what each step found.
import * as oauth from 'oauth4webapi'

const [resourceUrl, clientId, secret] = process.argv.slice(2)
const insecure = { [oauth.allowInsecureRequests]: true } // loopback only
const called = new URL(resourceUrl)
const WELL_KNOWN = '/.well-known/oauth-protected-resource'

let challenges
try {
  await oauth.protectedResourceRequest('not-a-token', 'GET', called, undefined, undefined, insecure)
} catch (err) {
  if (!(err instanceof oauth.WWWAuthenticateChallengeError)) throw err
  challenges = err.cause
}
if (!challenges) throw new Error('the resource answered without a challenge')
const metadataUrls = [...new Set(challenges.map((c) => c.parameters.resource_metadata))]
if (metadataUrls.length !== 1 || !metadataUrls[0]) throw new Error(`resource_metadata: ${metadataUrls}`)
const metadataUrl = new URL(metadataUrls[0])

// The resource identifier the metadata URL was made from (RFC 9728 §3.1):
// the well-known path taken out. It must be of the origin called, and its
// path a prefix of the path called (RFC 9728 §3.3 as draft-ietf-oauth-rfc9728bis
// relaxes it: the resource, not each URL under it).
if (!metadataUrl.pathname.startsWith(WELL_KNOWN)) throw new Error(`not a metadata URL: ${metadataUrl}`)
const resource = new URL(metadataUrl.origin + (metadataUrl.pathname.slice(WELL_KNOWN.length) || '/'))
const sameResource =
  resource.origin === called.origin &&
  (resource.pathname === '/' || called.pathname === resource.pathname || called.pathname.startsWith(`${resource.pathname}/`))
if (!sameResource) throw new Error(`${resource} is not the resource of ${called}`)
// oauth4webapi derives the same metadata URL from the identifier, and checks `resource`.
const rs = await oauth.processResourceDiscoveryResponse(
  resource,
  await oauth.resourceDiscoveryRequest(resource, insecure),
)

const issuer = new URL(rs.authorization_servers[0])
const as = await oauth
  .discoveryRequest(issuer, { ...insecure, algorithm: 'oauth2' })
  .then((response) => oauth.processDiscoveryResponse(issuer, response))
const client = { client_id: clientId }
const DPoP = oauth.DPoP(client, await oauth.generateKeyPair(rs.dpop_signing_alg_values_supported[0]))
const params = new URLSearchParams({ resource: rs.resource, scope: 'orders:read' })
const token = await oauth
  .clientCredentialsGrantRequest(as, client, oauth.ClientSecretBasic(secret), params, { DPoP, ...insecure })
  .then((response) => oauth.processClientCredentialsResponse(as, client, response))
const answer = await oauth.protectedResourceRequest(token.access_token, 'GET', called, undefined, undefined, {
  DPoP,
  ...insecure,
})
console.log(
  JSON.stringify({
    schemes: challenges.map((c) => c.scheme),
    metadata_url: metadataUrl.href,
    document: rs,
    issuer: as.issuer,
    access_token: token.access_token,
    status: answer.status,
  }),
)
