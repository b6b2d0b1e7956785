//! The resource types. Field names are the contract of `../shared/DESIGN.md`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    duration::DURATION_PATTERN,
    sign_in::{BrandingSpec, ConsentMode, IdTokenSpec, RefreshTokenSpec, UserInfoSpec},
};

/// What every resource reports back: `Ready` and the generation it describes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An OAuthClient's status: `Ready`, and the client id it takes (its
/// `spec.clientId`, or the default), so `kubectl get` shows every id.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClientStatus {
    #[serde(flatten)]
    pub common: ResourceStatus,
    /// The effective client id, in force when `Ready` is `True`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A reference to one key of a Secret (standalone: the file
/// `<secrets-dir>/<name>/<key>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

// ---------------------------------------------------------------- TokenServer

/// Settings of one token server: issuer, signing, lifetimes, storage.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tokenmesh.dev",
    version = "v1alpha1",
    kind = "TokenServer",
    namespaced,
    status = "ResourceStatus",
    shortname = "tms",
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuer"}"#,
    printcolumn = r#"{"name":"Algorithm","type":"string","jsonPath":".spec.signing.algorithm"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenServerSpec {
    /// The `iss` of every token; endpoints are published under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default)]
    pub signing: SigningSpec,
    /// Lifetime of an access token when its client names none (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub default_access_token_ttl: Option<String>,
    /// Upper bound on any access token lifetime (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_access_token_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Workload identity: accept service-account tokens of this Kubernetes
    /// cluster as client assertions (`kubernetes_service_account` clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSpec>,
    /// DPoP (RFC 9449) at the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<DpopSpec>,
}

/// How the token server checks DPoP proofs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DpopSpec {
    /// Require a server nonce in every proof (RFC 9449 §8): a proof without
    /// a current one is answered `use_dpop_nonce` with a `DPoP-Nonce`
    /// header. Nonces come from the signing keys and the time, so every
    /// replica accepts the others'.
    #[serde(default)]
    pub require_nonce: bool,
}

/// Where the cluster's service-account tokens come from and how their keys
/// are fetched (OIDC discovery of the API server's issuer).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSpec {
    /// The `iss` of the cluster's service-account tokens (the API server's
    /// `--service-account-issuer`): `https://kubernetes.default.svc`, or
    /// `https://kubernetes.default.svc.cluster.local` on kubeadm, kind and
    /// minikube. Default: discovered, the `issuer` of the discovery document
    /// (the API server's, through `kubernetes.default.svc`). When
    /// set, the discovery document must name it, or the token server does
    /// not become ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: Option<String>,
    /// The `aud` a token must carry (the audience of the projected token).
    /// Default: the token server's issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub audience: Option<String>,
    /// Base URL where `/.well-known/openid-configuration` is fetched, when
    /// the issuer URL itself is not reachable (e.g. the API server's
    /// address). Default: the issuer; without one, the in-cluster
    /// `https://kubernetes.default.svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_url: Option<String>,
    /// PEM CA bundle to trust for discovery and JWKS fetches. Default: in a
    /// pod, `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`; else the
    /// system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// A bearer token file sent with discovery and JWKS fetches (the API
    /// server serves discovery to authenticated service accounts), read
    /// again on each fetch. Default: in a pod,
    /// `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Also ask the API server (TokenReview) whether a token it signed is
    /// still valid: a token of a deleted service account, or bound to a
    /// deleted pod, is then refused before it expires. Answers are
    /// remembered for 5 s. Needs `tokenFile`, whose account may `create`
    /// `tokenreviews` (the chart binds a ClusterRole with only that).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_review: bool,
    /// The API server's base URL, where TokenReview goes (https, or http to
    /// loopback). Default: in a pod, `https://kubernetes.default.svc`; else
    /// the discovery URL. On a managed cluster the issuer and discovery URL
    /// are a public OIDC host, never sent tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server_url: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningSpec {
    /// Default signing algorithm of access tokens.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// How long a key signs before the next one takes over (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub rotation_period: Option<String>,
    /// PKCS#8 PEM private keys to sign with instead of generated ones; the
    /// first signs, the others are only published. Disables rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_files: Vec<String>,
    /// A folder of keys managed outside the token server (in Kubernetes: the
    /// operator's signing-key Secret, mounted): files `<activatesAt>-<kid>.pem`
    /// (unix seconds, PKCS#8 PEM). Each algorithm signs with its newest key
    /// already active; every key is published. Read again every 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_directory: Option<String>,
    /// Encrypts the keys the token server generates and stores (AES-256-GCM
    /// under a key derived from this Secret's value, at least 32 bytes:
    /// `openssl rand -base64 32`). Keys stored in clear before are encrypted
    /// at the next rotation check. Every replica needs the same value; a
    /// server without it cannot read encrypted keys and does not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_encryption_key_ref: Option<SecretKeyRef>,
    /// Secrets that encrypted the keys before `keyEncryptionKeyRef`: keys
    /// they open are encrypted again under the current one at the next
    /// rotation check. Drop them once every replica has run with the new one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_key_encryption_key_refs: Vec<SecretKeyRef>,
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
pub enum SigningAlgorithm {
    #[default]
    ES256,
    RS256,
    PS256,
    EdDSA,
}

impl SigningAlgorithm {
    pub const ALL: [SigningAlgorithm; 4] = [Self::ES256, Self::RS256, Self::PS256, Self::EdDSA];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
            Self::EdDSA => "EdDSA",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    #[serde(default, rename = "type")]
    pub kind: StorageKind,
    /// PostgreSQL connection URL, read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// SQLite in the data directory.
    #[default]
    Embedded,
    Postgres,
}

// ---------------------------------------------------------------- OAuthClient

/// An OAuth client: how it authenticates, what it may ask for, what it gets.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tokenmesh.dev",
    version = "v1alpha1",
    kind = "OAuthClient",
    namespaced,
    status = "OAuthClientStatus",
    shortname = "oac",
    printcolumn = r#"{"name":"Client ID","type":"string","jsonPath":".status.clientId"}"#,
    printcolumn = r#"{"name":"Method","type":"string","jsonPath":".spec.authentication.method"}"#,
    printcolumn = r#"{"name":"Audiences","type":"string","jsonPath":".spec.audiences"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.subjectType != 'pairwise' || has(self.sectorIdentifier)").message("subjectType pairwise needs a sectorIdentifier"))]
#[x_kube(validation = Rule::new("self.authentication.method != 'none' || (has(self.grantTypes) && size(self.grantTypes) > 0 && !('client_credentials' in self.grantTypes))").message("a public client (method none) cannot use client_credentials: list its grantTypes, e.g. [authorization_code, refresh_token]"))]
#[x_kube(validation = Rule::new("self.authentication.method != 'none' || !has(self.requirePkce) || self.requirePkce").message("a public client (method none) always needs PKCE"))]
pub struct OAuthClientSpec {
    /// Default: `<namespace>/<name>`, or `<name>` standalone. In a
    /// namespace it must begin with `<namespace>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub client_id: Option<String>,
    #[serde(default)]
    pub grant_types: Vec<GrantType>,
    pub authentication: ClientAuthentication,
    /// Scope names and scope prefixes this client may request.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Audiences (resource indicators) tokens of this client may carry.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Whether this client may call the introspection endpoint.
    #[serde(default)]
    pub allow_introspection: bool,
    #[serde(default)]
    pub access_token: AccessTokenSpec,
    /// Extra claims put into every access token of this client.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form_object")]
    pub claims: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub subject_type: SubjectType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sector_identifier: Option<String>,
    /// Where the authorization endpoint may send people back (exact
    /// match; a native app's `http://127.0.0.1` or `http://[::1]` URI
    /// matches on any port, RFC 8252 §7.3). https, loopback http, or a
    /// native app's private-use scheme (`com.example.app:/callback`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send people back (exact match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub post_logout_redirect_uris: Vec<String>,
    /// Whether the authorization code flow needs PKCE (S256). Default
    /// true (OAuth 2.1); a public client always needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_pkce: Option<bool>,
    /// The IdentityProviders (names in this namespace) people may sign in
    /// with for this client; several give a choice on the sign-in page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub identity_providers: Vec<String>,
    /// `required` (a consent page, remembered) or `implicit` (first-party).
    #[serde(default)]
    pub consent: ConsentMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<IdTokenSpec>,
    /// UserInfo answers: JSON, or a JWT signed with `algorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_info: Option<UserInfoSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<RefreshTokenSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<BrandingSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    ClientCredentials,
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
    AuthorizationCode,
    RefreshToken,
    #[serde(rename = "urn:ietf:params:oauth:grant-type:device_code")]
    DeviceCode,
}

impl GrantType {
    /// The `grant_type` value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!(self.method in ['client_secret_basic', 'client_secret_post']) || !has(self.jwks)").message("a secret method takes no jwks"))]
#[x_kube(validation = Rule::new("self.method != 'private_key_jwt' || has(self.jwks) || has(self.jwksUri)").message("private_key_jwt needs jwks or jwksUri"))]
#[x_kube(validation = Rule::new("self.method != 'kubernetes_service_account' || has(self.serviceAccount)").message("kubernetes_service_account needs serviceAccount"))]
#[x_kube(validation = Rule::new("self.method != 'tls_client_auth' || has(self.tlsClientAuth)").message("tls_client_auth needs tlsClientAuth"))]
#[x_kube(validation = Rule::new("self.method != 'self_signed_tls_client_auth' || has(self.jwks)").message("self_signed_tls_client_auth needs jwks"))]
pub struct ClientAuthentication {
    pub method: AuthMethod,
    /// The client secret (secret methods). Without it the operator generates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// `sha256:<base64url>` of the secret, as the operator pushes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_hashes: Vec<String>,
    /// Public keys of a `private_key_jwt` client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSetSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The service account of a `kubernetes_service_account` client: its
    /// tokens (`sub: system:serviceaccount:<namespace>:<name>`) authenticate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
    /// What the client certificate of a `tls_client_auth` client must name
    /// (RFC 8705 §2.1.2): exactly one of the subject DN or a SAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_auth: Option<TlsClientAuthSpec>,
}

/// The one certificate name a `tls_client_auth` client is known by.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("[has(self.subjectDn), has(self.sanDns), has(self.sanUri), has(self.sanIp), has(self.sanEmail)].filter(x, x).size() == 1").message("name exactly one of subjectDn, sanDns, sanUri, sanIp, sanEmail"))]
pub struct TlsClientAuthSpec {
    /// The subject distinguished name, RFC 4514 (`CN=orders,O=shop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_dn: Option<String>,
    /// A dNSName SAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_dns: Option<String>,
    /// A uniformResourceIdentifier SAN, such as a SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_uri: Option<String>,
    /// An iPAddress SAN (IPv4 or IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_ip: Option<String>,
    /// An rfc822Name SAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_email: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    TlsClientAuth,
    SelfSignedTlsClientAuth,
    None,
    KubernetesServiceAccount,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::TlsClientAuth => "tls_client_auth",
            Self::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
            Self::None => "none",
            Self::KubernetesServiceAccount => "kubernetes_service_account",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwkSetSpec {
    pub keys: Vec<JwkSpec>,
}

/// A public JSON Web Key (RFC 7517); private members are refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwkSpec {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    /// Default: the OAuthClient's namespace (required standalone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessTokenSpec {
    #[serde(default)]
    pub format: TokenFormat,
    /// Lifetime; default from the TokenServer (300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: Option<String>,
    /// Signing algorithm of this client's JWTs; default from the TokenServer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SigningAlgorithm>,
    /// Proof of possession the client's tokens require: `none` (bearer
    /// tokens, bound only when the client proves a key anyway), `mtls`
    /// (RFC 8705) or `dpop` (RFC 9449: every token request carries a DPoP
    /// proof, every token is bound to its key).
    #[serde(default)]
    pub binding: TokenBinding,
}

/// What an access token is bound to (`cnf`, RFC 7800).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenBinding {
    /// A bearer token (bound anyway when the client authenticates with a
    /// TLS certificate).
    #[default]
    None,
    /// Bound to the client's TLS certificate (RFC 8705 §3, `x5t#S256`).
    Mtls,
    /// Bound to the client's DPoP key (RFC 9449, `jkt`).
    Dpop,
}

impl TokenBinding {
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    #[default]
    Jwt,
    Opaque,
    Jwe,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubjectType {
    #[default]
    Public,
    Pairwise,
}

// ---------------------------------------------------------------- Scope

/// A scope, or a family of scopes sharing a prefix.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tokenmesh.dev",
    version = "v1alpha1",
    kind = "Scope",
    namespaced,
    status = "ResourceStatus",
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.name"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".spec.prefix"}"#,
    printcolumn = r#"{"name":"TTL","type":"string","jsonPath":".spec.ttl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.prefix)").message("set exactly one of name and prefix"))]
pub struct ScopeSpec {
    /// The scope as it appears in `scope` (RFC 6749 scope-token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\x21\x23-\x5B\x5D-\x7E]+$"), length(max = 200))]
    pub name: Option<String>,
    /// A prefix that admits every scope starting with it (`video_stream_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\x21\x23-\x5B\x5D-\x7E]+$"), length(max = 200))]
    pub prefix: Option<String>,
    /// After this long the scope no longer counts in a token still valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Claims this scope releases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
}

// ---------------------------------------------------------------- ExchangePolicy

/// How a token may travel from one service to the next.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tokenmesh.dev",
    version = "v1alpha1",
    kind = "ExchangePolicy",
    namespaced,
    status = "ResourceStatus",
    shortname = "xp",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Audience","type":"string","jsonPath":".spec.to.audience"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.mode == 'exchange' || !has(self.to.binding) || self.to.binding == 'none'").message("to.binding needs mode: exchange (only an exchanged token can be bound to the sidecar's key)"))]
pub struct ExchangePolicySpec {
    pub mode: ExchangeMode,
    #[serde(default)]
    pub from: PolicyFrom,
    #[serde(default)]
    pub actor: PolicyActor,
    pub to: PolicyTo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub max_delegation_depth: Option<u32>,
    /// A CEL expression over `subject`, `actor` and `request` that must be true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Claim name → CEL expression, added to the new token.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeMode {
    #[default]
    Exchange,
    Embed,
    Share,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyFrom {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyActor {
    /// Client ids that may act (the client a sidecar authenticates as).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// Service accounts, as `<namespace>/<name>`, whose
    /// `kubernetes_service_account` clients may act. With neither list,
    /// any client may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTo {
    #[schemars(length(min = 1))]
    pub audience: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// What the next hop requires the exchanged token to be bound to:
    /// `none` (a bearer token, unless the subject token was bound), `dpop`
    /// (the sidecar binds it to a key of its own and signs a DPoP proof for
    /// every call, RFC 9449) or `mtls` (RFC 8705). `mode: exchange` only.
    #[serde(default, skip_serializing_if = "TokenBinding::is_none")]
    pub binding: TokenBinding,
}

pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
