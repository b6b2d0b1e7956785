//! The model the server reads: server settings, clients, scopes and
//! exchange policies as resolved from their resources.

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde_json::{Map, Value};
use tokenmesh_crds::{
    AuthMethod, ConsentMode, ExchangePolicySpec, GrantType, SecretKeyRef, SigningAlgorithm,
    TokenBinding, TokenFormat,
};
use tokenmesh_tokens::{jwk::Jwk, secret::SecretHash, verify::KeySet};

use crate::{certificate::CertificateName, key_wrap::KeyEncryption};

pub(super) const DEFAULT_TTL: Duration = Duration::from_secs(300);
pub(super) const DEFAULT_MAX_TTL: Duration = Duration::from_secs(86_400);
pub(super) const DEFAULT_ROTATION: Duration = Duration::from_secs(86_400);

/// Settings from the TokenServer resource and the command line.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub issuer: String,
    pub algorithm: SigningAlgorithm,
    pub rotation_period: Duration,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub key_files: Vec<PathBuf>,
    /// A managed folder of `<activatesAt>-<kid>.pem` keys.
    pub key_directory: Option<PathBuf>,
    /// Where the PostgreSQL URL is, when the TokenServer asks for postgres storage.
    pub database: Option<SecretKeyRef>,
    /// Workload identity: whose service-account tokens are accepted.
    pub kubernetes: Option<KubernetesSettings>,
    /// Encrypts generated keys in the store (`spec.signing.keyEncryptionKeyRef`).
    pub key_encryption: Option<Arc<KeyEncryption>>,
    /// DPoP proofs must carry a server nonce (`spec.dpop.requireNonce`).
    pub dpop_nonce: bool,
}

impl ServerSettings {
    /// Whether signing keys are generated and kept in the store (not
    /// `keyFiles` or a `keyDirectory`).
    pub fn keys_in_store(&self) -> bool {
        self.key_directory.is_none() && self.key_files.is_empty()
    }

    pub(super) fn defaults(issuer: String) -> Self {
        Self {
            issuer,
            algorithm: SigningAlgorithm::ES256,
            rotation_period: DEFAULT_ROTATION,
            default_ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            key_files: Vec::new(),
            key_directory: None,
            database: None,
            kubernetes: None,
            key_encryption: None,
            dpop_nonce: false,
        }
    }
}

/// How a client proves who it is.
pub enum ClientAuth {
    /// `client_secret_basic` or `client_secret_post`: digests of the
    /// accepted secrets (more than one during a rotation).
    Secret {
        method: AuthMethod,
        hashes: Vec<SecretHash>,
    },
    /// `private_key_jwt` with the client's public keys.
    PrivateKeyJwt { keys: KeySet },
    /// `kubernetes_service_account`: tokens of this service account.
    ServiceAccount(ServiceAccount),
    /// `tls_client_auth`: a certificate that chains to the listener's client
    /// CA and carries this name.
    Certificate(CertificateName),
    /// `self_signed_tls_client_auth`: a certificate (chain not checked)
    /// whose public key is one of these.
    SelfSignedCertificate { keys: Vec<Jwk> },
    /// `none`: a public client (a browser or native app), known by its id
    /// alone; it must use PKCE.
    Public,
}

impl ClientAuth {
    pub fn method(&self) -> AuthMethod {
        match self {
            Self::Secret { method, .. } => *method,
            Self::PrivateKeyJwt { .. } => AuthMethod::PrivateKeyJwt,
            Self::ServiceAccount(_) => AuthMethod::KubernetesServiceAccount,
            Self::Certificate(_) => AuthMethod::TlsClientAuth,
            Self::SelfSignedCertificate { .. } => AuthMethod::SelfSignedTlsClientAuth,
            Self::Public => AuthMethod::None,
        }
    }
}

pub struct Client {
    pub id: String,
    pub grant_types: Vec<GrantType>,
    pub auth: ClientAuth,
    /// Scope names and prefixes this client may request.
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub allow_introspection: bool,
    pub format: TokenFormat,
    /// `accessToken.binding`: what the client's tokens must be bound to.
    pub binding: TokenBinding,
    pub ttl: Duration,
    /// The client's own signing algorithm; the TokenServer's when unset.
    pub algorithm: Option<SigningAlgorithm>,
    pub claims: Map<String, Value>,
    /// `may_act` for the client's tokens (RFC 8693 §4.4), from `spec.claims`.
    pub may_act: Option<Value>,
    /// What the browser flows need (all empty or default for a client
    /// without `authorization_code`).
    pub sign_in: SignIn,
}

/// A client's settings for the authorization code flow, OpenID Connect
/// and refresh tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SignIn {
    /// Registered redirect URIs, matched by [`SignIn::allows_redirect`].
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return (exact match).
    pub post_logout_redirect_uris: Vec<String>,
    /// PKCE (S256) required at the authorization endpoint; always for a
    /// public client.
    pub require_pkce: bool,
    /// Registry keys of the IdentityProviders this client may use
    /// (`<namespace>/<name>`, or the name standalone), in the order listed.
    pub identity_providers: Vec<String>,
    pub consent: ConsentMode,
    pub id_token_ttl: Duration,
    /// Default RS256, which every OpenID Connect client must accept.
    pub id_token_algorithm: SigningAlgorithm,
    /// `userInfo.algorithm`: UserInfo answers as a JWT signed with it;
    /// `None`: plain JSON.
    pub userinfo_algorithm: Option<SigningAlgorithm>,
    /// Absolute lifetime of a grant's refresh tokens, from the sign-in.
    pub refresh_token_ttl: Duration,
    /// A refresh token unused this long expires.
    pub refresh_token_idle_ttl: Duration,
    pub branding: Branding,
}

/// How the pages show a client. Colours are `#rrggbb`, the logo an https
/// URL: both checked, safe to put in a page's style and `src`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Branding {
    /// `branding.displayName`, else the client id.
    pub display_name: String,
    pub logo_url: Option<String>,
    pub primary_color: Option<String>,
    pub background_color: Option<String>,
}

impl SignIn {
    /// Whether `uri` is one of the registered redirect URIs: an exact
    /// string match, except that a registered loopback IP literal URI
    /// (`http://127.0.0.1/cb`, `http://[::1]/cb`) admits any port, as a
    /// native app listens on whichever is free (RFC 8252 §7.3). `localhost`
    /// gets no such latitude (RFC 8252 §8.3).
    pub fn allows_redirect(&self, uri: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|registered| registered == uri || same_but_loopback_port(registered, uri))
    }

    /// Whether `uri` is a registered post-logout redirect URI (exact match).
    pub fn allows_post_logout_redirect(&self, uri: &str) -> bool {
        self.post_logout_redirect_uris.iter().any(|r| r == uri)
    }
}

/// `registered` and `presented` are the same `http` loopback IP literal URI
/// but for the port.
fn same_but_loopback_port(registered: &str, presented_text: &str) -> bool {
    let (Ok(mut registered), Ok(mut presented)) =
        (url::Url::parse(registered), url::Url::parse(presented_text))
    else {
        return false;
    };
    let loopback_ip = |u: &url::Url| {
        u.scheme() == "http"
            && match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                _ => false,
            }
    };
    // Only a URI already in its normal form: no `..` or case games.
    if !loopback_ip(&registered) || !loopback_ip(&presented) || presented.as_str() != presented_text
    {
        return false;
    }
    // Both parse as http URLs with a host: a port can always be cleared.
    if registered.set_port(None).is_err() || presented.set_port(None).is_err() {
        return false;
    }
    registered == presented
}

/// A defined scope or scope family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeDef {
    pub pattern: ScopePattern,
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopePattern {
    Name(String),
    Prefix(String),
}

impl ScopePattern {
    /// The name or the prefix.
    pub fn text(&self) -> &str {
        match self {
            Self::Name(s) | Self::Prefix(s) => s,
        }
    }
}

/// A stored exchange policy (its semantics arrive with the exchange work).
#[derive(Clone)]
pub struct Policy {
    pub name: String,
    pub spec: ExchangePolicySpec,
    /// The compiled `condition`.
    pub condition: Option<Arc<cel::Program>>,
    /// The compiled `claims`: name → expression.
    pub claims: Vec<(String, Arc<cel::Program>)>,
    /// The lifetime bound (`ttl`), if any.
    pub ttl: Option<Duration>,
    /// `actor.serviceAccounts`, parsed.
    pub service_accounts: Vec<ServiceAccount>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// `TokenServer.spec.kubernetes` with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// The `iss` of service-account tokens; `None`: the one discovery names.
    pub issuer: Option<String>,
    /// The `aud` a token must carry.
    pub audience: String,
    /// Base URL of `/.well-known/openid-configuration`.
    pub discovery_url: String,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// Ask the API server (TokenReview) after the signature checks out.
    pub token_review: bool,
    /// Where TokenReview goes.
    pub api_server_url: String,
}

/// A service account, as named by a token's `sub`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// How a service account's `sub` begins.
    pub const SUBJECT_PREFIX: &str = "system:serviceaccount:";

    /// `system:serviceaccount:<namespace>:<name>`; anything else is not a
    /// service account (a node, a user).
    pub fn from_subject(sub: &str) -> Option<Self> {
        let (namespace, name) = sub.strip_prefix(Self::SUBJECT_PREFIX)?.split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
