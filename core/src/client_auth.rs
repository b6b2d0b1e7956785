//! Client authentication: `client_secret_basic`, `client_secret_post`,
//! `private_key_jwt` (RFC 7523), `kubernetes_service_account`,
//! `tls_client_auth` and `self_signed_tls_client_auth` (RFC 8705), from
//! [`Credentials`] that the HTTP and gRPC adapters build from what their
//! protocol carries.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;
use tokenmesh_crds::AuthMethod;
use tokenmesh_tokens::verify::{Expected, VerifyError, verify};

use crate::{
    certificate::{ClientCertificate, same_key},
    error::OAuthError,
    ports::{AssertionReplay, ClusterToken, ServiceAccountTokens},
    registry::{Client, ClientAuth, Registry},
};

pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const MAX_ASSERTION_LEN: usize = 8 * 1024;
/// An assertion may not live longer than this, which bounds the replay records.
const MAX_ASSERTION_LIFETIME: u64 = 3600;
const LEEWAY: u64 = 30;

/// How a client presented a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMethod {
    /// `Authorization: Basic` at an HTTP endpoint.
    Basic,
    /// `client_secret` in the form.
    Post,
    /// gRPC metadata, which cannot tell one from the other: whichever the
    /// client is registered with.
    Either,
}

/// What a caller presented to prove which client it is.
#[derive(Clone)]
pub enum Credentials {
    Secret {
        id: String,
        secret: String,
        method: SecretMethod,
    },
    /// An RFC 7523 assertion: `private_key_jwt`, or a service-account token
    /// of the cluster. `claimed_id` is a `client_id` sent beside it.
    Assertion {
        claimed_id: Option<String>,
        assertion: String,
    },
    /// A TLS client certificate (RFC 8705 §2) and the `client_id` sent
    /// beside it.
    Certificate {
        id: String,
        certificate: ClientCertificate,
    },
    /// A public client (`authentication.method: none`): its `client_id`
    /// alone (RFC 6749 §2.3; PKCE binds its codes to it).
    Public { id: String },
}

impl std::fmt::Debug for Credentials {
    /// Never the secret or the assertion.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret { id, method, .. } => f
                .debug_struct("Secret")
                .field("id", id)
                .field("method", method)
                .finish_non_exhaustive(),
            Self::Assertion { claimed_id, .. } => f
                .debug_struct("Assertion")
                .field("claimed_id", claimed_id)
                .finish_non_exhaustive(),
            Self::Certificate { id, certificate } => f
                .debug_struct("Certificate")
                .field("id", id)
                .field("certificate", certificate)
                .finish(),
            Self::Public { id } => f.debug_struct("Public").field("id", id).finish(),
        }
    }
}

/// Where and when the client is authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Audience<'a> {
    /// The issuer and the token endpoint: always accepted as an assertion's `aud`.
    pub issuer: &'a str,
    pub token_endpoint: &'a str,
    /// The URL being called, accepted too.
    pub endpoint: &'a str,
}

/// `invalid_client` with a reason.
pub fn refused(reason: &'static str) -> OAuthError {
    OAuthError::InvalidClient(reason.into())
}

/// Authenticates the calling client at `now` (unix seconds).
pub async fn authenticate(
    ports: &(impl AssertionReplay + ServiceAccountTokens),
    registry: &Registry,
    credentials: &Credentials,
    audience: Audience<'_>,
    now: u64,
) -> Result<Arc<Client>, OAuthError> {
    match credentials {
        Credentials::Secret { id, secret, method } => {
            let used = match method {
                SecretMethod::Basic => AuthMethod::ClientSecretBasic,
                SecretMethod::Post => AuthMethod::ClientSecretPost,
                SecretMethod::Either => match registry.client(id).map(|c| c.auth.method()) {
                    Some(AuthMethod::ClientSecretPost) => AuthMethod::ClientSecretPost,
                    _ => AuthMethod::ClientSecretBasic,
                },
            };
            check_secret(registry, id, secret.as_bytes(), used)
        }
        Credentials::Assertion {
            claimed_id,
            assertion,
        } => {
            // Boxed: its verification's future (2 KB) would otherwise make
            // the future of every authentication that large, whatever its method.
            Box::pin(check_assertion(
                ports,
                registry,
                claimed_id.as_deref(),
                assertion,
                audience,
                now,
            ))
            .await
        }
        Credentials::Certificate { id, certificate } => {
            check_certificate(registry, id, certificate)
        }
        Credentials::Public { id } => {
            let client = registry
                .client(id)
                .ok_or_else(|| refused("unknown client"))?;
            match client.auth {
                ClientAuth::Public => Ok(client.clone()),
                _ => Err(refused("client authentication is required")),
            }
        }
    }
}

/// RFC 8705 §2: `tls_client_auth` (a chain to the client CA and the
/// registered name) or `self_signed_tls_client_auth` (one of the
/// registered keys; the chain is not looked at).
fn check_certificate(
    registry: &Registry,
    id: &str,
    certificate: &ClientCertificate,
) -> Result<Arc<Client>, OAuthError> {
    let client = registry
        .client(id)
        .ok_or_else(|| refused("unknown client"))?;
    let accepted = match &client.auth {
        ClientAuth::Certificate(name) => {
            if !certificate.chain_verified() {
                tracing::debug!(client_id = %id, "client certificate refused: not issued by the client CA");
                return Err(refused(
                    "the client certificate is not issued by a trusted client CA",
                ));
            }
            certificate.has_name(name)
        }
        ClientAuth::SelfSignedCertificate { keys } => certificate
            .public_jwk()
            .is_some_and(|presented| keys.iter().any(|key| same_key(key, &presented))),
        _ => return Err(refused("the client authenticates with another method")),
    };
    if accepted {
        Ok(client.clone())
    } else {
        tracing::debug!(client_id = %id, x5t = %certificate.thumbprint(), "client certificate refused: not the client's");
        Err(refused(
            "the client certificate does not identify this client",
        ))
    }
}

/// The client id and secret of an `Authorization: Basic` value.
pub fn basic_credentials_of(value: &[u8]) -> Result<(String, String), OAuthError> {
    let malformed = || refused("malformed Basic credentials");
    let value = std::str::from_utf8(value).map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(refused("use HTTP Basic to authenticate the client"));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |s: &str| crate::urlencoded::decode(s.as_bytes()).map_err(|_| malformed());
    Ok((unescape(id)?, unescape(secret)?))
}

fn check_secret(
    registry: &Registry,
    id: &str,
    secret: &[u8],
    used: AuthMethod,
) -> Result<Arc<Client>, OAuthError> {
    let Some(client) = registry.client(id) else {
        // Spend the same work on an unknown client as on a known one.
        let _ = tokenmesh_tokens::secret::SecretHash::of(secret);
        return Err(refused("unknown client or wrong secret"));
    };
    match &client.auth {
        ClientAuth::Secret { method, hashes } if *method == used => {
            // Each comparison is constant time; rotation may leave several.
            let mut ok = false;
            for hash in hashes {
                ok |= hash.matches(secret);
            }
            if ok {
                Ok(client.clone())
            } else {
                Err(refused("unknown client or wrong secret"))
            }
        }
        _ => Err(refused("the client authenticates with another method")),
    }
}

/// Authenticates a client by its RFC 7523 assertion: `private_key_jwt`,
/// or a service-account token of the configured cluster (its `iss` says
/// which). `claimed_id` is a `client_id` sent beside it, which must match.
async fn check_assertion(
    ports: &(impl AssertionReplay + ServiceAccountTokens),
    registry: &Registry,
    claimed_id: Option<&str>,
    assertion: &str,
    audience: Audience<'_>,
    now: u64,
) -> Result<Arc<Client>, OAuthError> {
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(refused("the client assertion is too large"));
    }
    // Unverified: only to know whose keys verify it.
    let id = unverified_issuer(assertion)
        .ok_or_else(|| refused("the client assertion names no issuer"))?;
    let mut cluster_issuer = None;
    if let Some(kubernetes) = &registry.server.kubernetes {
        let sub = unverified_claim(assertion, "sub");
        match ports.is_cluster_token(kubernetes, &id, sub.as_deref())? {
            ClusterToken::Yes => {
                let account = ports.verify(kubernetes, assertion, now).await?;
                return service_account_client(registry, &account, claimed_id);
            }
            ClusterToken::No {
                cluster_issuer: issuer,
            } => cluster_issuer = Some(issuer),
        }
    }
    if claimed_id.is_some_and(|claimed| claimed != id) {
        return Err(refused("client_id differs from the assertion issuer"));
    }
    let client = registry.client(&id).ok_or_else(|| match &cluster_issuer {
        // A service-account token of another cluster, or of this one under
        // an issuer spec.kubernetes does not name.
        Some(expected) => {
            tracing::debug!(
                received = %id,
                expected = %expected.as_deref().unwrap_or("(not discovered yet)"),
                "client assertion refused: its iss is neither a client id nor the cluster's service-account issuer"
            );
            refused("unknown client: the assertion's iss is neither a client id nor the cluster's service-account issuer")
        }
        None => refused("unknown client"),
    })?;
    let ClientAuth::PrivateKeyJwt { keys } = &client.auth else {
        return Err(refused("the client authenticates with another method"));
    };
    let audiences = [audience.issuer, audience.token_endpoint, audience.endpoint];
    let expected = Expected {
        typ: None,
        issuers: &[id.as_str()],
        audiences: &audiences,
        require_exp: true,
        leeway: LEEWAY,
        now,
    };
    let claims = verify(assertion, keys, &expected).map_err(|err| {
        tracing::debug!(client_id = %id, reason = %err, "client assertion refused");
        match err {
            VerifyError::Expired => refused("the client assertion has expired"),
            VerifyError::Audience => {
                refused("the client assertion's aud does not name this server")
            }
            _ => refused("the client assertion does not verify"),
        }
    })?;
    if claims.get("sub").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(refused("the client assertion's sub must be the client id"));
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| refused("exp is required"))?;
    if exp > now + MAX_ASSERTION_LIFETIME + LEEWAY {
        return Err(refused(
            "the client assertion lives too long (at most one hour)",
        ));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("jti is required"))?;
    if jti.is_empty() || jti.len() > 256 {
        return Err(refused("jti must be 1 to 256 characters"));
    }
    if !ports.use_once(&id, jti, exp + LEEWAY).await? {
        tracing::debug!(client_id = %id, "client assertion replayed");
        return Err(refused("the client assertion was already used"));
    }
    Ok(client.clone())
}

/// The client of a verified service account; `claimed_id`, when sent, must
/// be that client.
fn service_account_client(
    registry: &Registry,
    account: &crate::registry::ServiceAccount,
    claimed_id: Option<&str>,
) -> Result<Arc<Client>, OAuthError> {
    let client = match claimed_id {
        Some(id) => registry
            .client(id)
            .filter(|c| matches!(&c.auth, ClientAuth::ServiceAccount(a) if a == account)),
        None => registry.client_for_service_account(account),
    };
    client.cloned().ok_or_else(|| {
        tracing::debug!(service_account = %account, client_id = ?claimed_id, "no client of this service account");
        refused("the service account does not authenticate this client")
    })
}

/// A claim of a JWT, read without verifying it: only to route it to the
/// keys that verify it.
pub fn unverified_claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get(name)?.as_str().map(str::to_owned)
}

/// The `iss` of a JWT, unverified.
pub fn unverified_issuer(token: &str) -> Option<String> {
    unverified_claim(token, "iss")
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokenmesh_tokens::{Algorithm, signing::SigningKey};

    use super::*;
    use crate::{
        registry::ServiceAccount,
        testing::{FakePorts, ISSUER, NOW, SECRET, client, doc, registry, scopes},
    };

    const TOKEN_ENDPOINT: &str = "https://issuer.test/oauth2/token";
    const AUDIENCE: Audience<'static> = Audience {
        issuer: ISSUER,
        token_endpoint: TOKEN_ENDPOINT,
        endpoint: TOKEN_ENDPOINT,
    };

    fn secret(id: &str, secret: &str, method: SecretMethod) -> Credentials {
        Credentials::Secret {
            id: id.into(),
            secret: secret.into(),
            method,
        }
    }

    fn clients(key: &SigningKey) -> Registry {
        let jwk = serde_json::to_string(&key.public_jwk()).unwrap();
        registry(
            &(scopes()
                + &client("gateway", "orders", "")
                + &doc(
                    "OAuthClient",
                    "poster",
                    "  clientId: poster\n  authentication: {method: client_secret_post, secretRef: {name: s, key: k}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n",
                )
                + &doc(
                    "OAuthClient",
                    "batch",
                    &format!(
                        "  clientId: batch\n  authentication: {{method: private_key_jwt, jwks: {{keys: [{jwk}]}}}}\n  scopes: [\"orders:read\"]\n  audiences: [orders]\n"
                    ),
                )),
        )
    }

    fn assertion(key: &SigningKey, jti: &str, aud: &str, exp: u64) -> Credentials {
        let claims =
            json!({"iss": "batch", "sub": "batch", "aud": aud, "exp": exp, "iat": NOW, "jti": jti});
        Credentials::Assertion {
            claimed_id: None,
            assertion: key.sign_jwt("JWT", &claims).unwrap(),
        }
    }

    async fn authenticate_as(
        reg: &Registry,
        ports: &FakePorts,
        credentials: Credentials,
    ) -> Result<String, OAuthError> {
        authenticate(ports, reg, &credentials, AUDIENCE, NOW)
            .await
            .map(|client| client.id.clone())
    }

    #[tokio::test]
    async fn secrets_are_accepted_only_by_the_registered_method() {
        let key = SigningKey::generate("batch-1".into(), Algorithm::ES256).unwrap();
        let reg = clients(&key);
        let ports = FakePorts::default();
        let ok = |c| authenticate_as(&reg, &ports, c);
        assert_eq!(
            ok(secret("gateway", SECRET, SecretMethod::Basic))
                .await
                .unwrap(),
            "gateway"
        );
        assert_eq!(
            ok(secret("poster", SECRET, SecretMethod::Post))
                .await
                .unwrap(),
            "poster"
        );
        // gRPC metadata cannot tell: the registered method is taken.
        assert_eq!(
            ok(secret("poster", SECRET, SecretMethod::Either))
                .await
                .unwrap(),
            "poster"
        );
        assert_eq!(
            ok(secret("gateway", SECRET, SecretMethod::Either))
                .await
                .unwrap(),
            "gateway"
        );
        for refused in [
            secret(
                "gateway",
                "wrong-secret-0123456789abcdef012345",
                SecretMethod::Basic,
            ),
            secret("gateway", SECRET, SecretMethod::Post),
            secret("nobody", SECRET, SecretMethod::Basic),
            secret("batch", SECRET, SecretMethod::Basic),
        ] {
            assert!(matches!(
                ok(refused).await,
                Err(OAuthError::InvalidClient(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_private_key_jwt_assertion_is_verified_and_used_once() {
        let key = SigningKey::generate("batch-1".into(), Algorithm::ES256).unwrap();
        let reg = clients(&key);
        let ports = FakePorts::default();
        let first = assertion(&key, "a-1", TOKEN_ENDPOINT, NOW + 60);
        assert_eq!(
            authenticate_as(&reg, &ports, first.clone()).await.unwrap(),
            "batch"
        );
        let replayed = authenticate_as(&reg, &ports, first).await.unwrap_err();
        assert_eq!(
            replayed.description(),
            "the client assertion was already used"
        );

        let other_key = SigningKey::generate("batch-1".into(), Algorithm::ES256).unwrap();
        let refusals = [
            (
                assertion(&key, "a-2", "https://elsewhere", NOW + 60),
                "the client assertion's aud does not name this server",
            ),
            (
                assertion(&key, "a-3", ISSUER, NOW - 60),
                "the client assertion has expired",
            ),
            (
                assertion(&key, "a-4", ISSUER, NOW + 7200),
                "the client assertion lives too long (at most one hour)",
            ),
            (
                assertion(&other_key, "a-5", ISSUER, NOW + 60),
                "the client assertion does not verify",
            ),
        ];
        for (credentials, why) in refusals {
            let err = authenticate_as(&reg, &ports, credentials)
                .await
                .unwrap_err();
            assert_eq!(
                (err.to_string().as_str(), err.description()),
                ("invalid_client", why)
            );
        }
    }

    #[tokio::test]
    async fn a_service_account_token_names_its_client() {
        let yaml = doc(
            "TokenServer",
            "default",
            "  kubernetes: {issuer: \"https://kubernetes.default.svc\"}\n",
        ) + &scopes()
            + &doc(
                "OAuthClient",
                "orders",
                "  clientId: shop/orders\n  authentication: {method: kubernetes_service_account, serviceAccount: {name: orders}}\n  scopes: [\"orders:read\"]\n  audiences: [payments]\n",
            );
        let yaml = yaml.replace(
            "metadata: {name: orders}",
            "metadata: {name: orders, namespace: shop}",
        );
        let reg = registry(&yaml);
        let token = |iss: &str| {
            let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                json!({"iss": iss, "sub": "system:serviceaccount:shop:orders"}).to_string(),
            );
            Credentials::Assertion {
                claimed_id: None,
                assertion: format!("e30.{body}.sig"),
            }
        };
        let account = ServiceAccount {
            namespace: "shop".into(),
            name: "orders".into(),
        };
        let vouched = FakePorts {
            cluster: Some(Ok(account.clone())),
            ..Default::default()
        };
        let cluster = token("https://kubernetes.default.svc");
        assert_eq!(
            authenticate_as(&reg, &vouched, cluster.clone())
                .await
                .unwrap(),
            "shop/orders"
        );

        let down = FakePorts::default();
        assert_eq!(
            authenticate_as(&reg, &down, cluster.clone()).await,
            Err(OAuthError::KeysUnavailable)
        );

        let stranger = FakePorts {
            cluster: Some(Ok(ServiceAccount {
                namespace: "shop".into(),
                name: "intruder".into(),
            })),
            ..Default::default()
        };
        assert!(matches!(
            authenticate_as(&reg, &stranger, cluster).await,
            Err(OAuthError::InvalidClient(_))
        ));

        let err = authenticate_as(&reg, &vouched, token("https://other-cluster"))
            .await
            .unwrap_err();
        assert!(err.description().starts_with("unknown client"), "{err:?}");
    }
}
