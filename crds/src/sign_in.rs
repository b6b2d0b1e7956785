//! Sign-in of people: the IdentityProvider kind (where people prove who they
//! are) and the OAuthClient blocks of the browser flows (ID token, refresh
//! token, consent, branding).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    duration::DURATION_PATTERN,
    resources::{ResourceStatus, SecretKeyRef, SigningAlgorithm},
};

/// Where people sign in: an upstream OpenID Provider (`oidc`) or users
/// listed in a Secret (`static`, for development and tests).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tokenmesh.dev",
    version = "v1alpha1",
    kind = "IdentityProvider",
    namespaced,
    status = "ResourceStatus",
    shortname = "idp",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.oidc.issuer"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.type != 'static' || (has(self.static) && !has(self.oidc))").message("type static needs the static block (and no oidc block)"))]
#[x_kube(validation = Rule::new("self.type != 'oidc' || (has(self.oidc) && !has(self.static))").message("type oidc needs the oidc block (and no static block)"))]
pub struct IdentityProviderSpec {
    #[serde(rename = "type")]
    pub kind: IdentityProviderType,
    /// The name people see on the sign-in page ("Sign in with ...").
    /// Default: the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub display_name: Option<String>,
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_users: Option<StaticProviderSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcProviderSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdentityProviderType {
    /// Users with argon2id password hashes, listed in a Secret.
    #[default]
    Static,
    /// An upstream OpenID Provider (authorization code flow with PKCE).
    Oidc,
}

impl IdentityProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Oidc => "oidc",
        }
    }
}

/// The users of a `static` provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.usersSecretRef) != has(self.users)").message("set exactly one of usersSecretRef and users"))]
pub struct StaticProviderSpec {
    /// A Secret key holding the users as YAML: a list of `{username,
    /// passwordHash, claims}` (usually the key `users.yaml`). The password
    /// hash is an argon2id PHC string, made by `token-server hash-password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_secret_ref: Option<SecretKeyRef>,
    /// The users inline, in the same form. The operator sends the Secret's
    /// users this way; in files prefer `usersSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<StaticUserSpec>>,
}

/// One user of a `static` provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticUserSpec {
    /// What the user types to sign in; also the user's `sub`.
    #[schemars(length(min = 1, max = 255))]
    pub username: String,
    /// An argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    #[schemars(length(min = 1, max = 512))]
    pub password_hash: String,
    /// Claims of the user (`name`, `email`, `email_verified`, `groups`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::resources::free_form_object")]
    pub claims: BTreeMap<String, serde_json::Value>,
}

/// An upstream OpenID Provider people sign in at.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.clientSecret)").message("put the client secret in a Secret and name it in clientSecretRef"))]
pub struct OidcProviderSpec {
    /// The upstream's issuer; its discovery document is at
    /// `<issuer>/.well-known/openid-configuration`. https (http only to
    /// loopback).
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// The client id this token server has at the upstream.
    #[schemars(length(min = 1, max = 255))]
    pub client_id: String,
    /// The client secret at the upstream (`client_secret_basic`). Without
    /// it the token server is a public client there (PKCE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// The secret itself, as the operator sends it from `clientSecretRef`;
    /// refused in a resource (the API server's rule says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Scopes asked of the upstream. Default `openid profile email`;
    /// `openid` is always asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Claim name → CEL expression over `claims` (the upstream's ID token
    /// claims, with its UserInfo answer on top): the claims of the signed-in
    /// user, e.g. `{email: "claims.email", groups: "claims.roles"}`.
    /// Without mappings, `name`, `email`, `email_verified` and
    /// `preferred_username` are taken as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claim_mappings: BTreeMap<String, String>,
    /// The upstream claim that identifies a user for good (default `sub`).
    /// The local `sub` is derived from the issuer and this claim's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub subject_claim: Option<String>,
}

/// Whether a person is asked before a client gets their data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsentMode {
    /// A consent page lists the scopes; the answer is remembered per user,
    /// client and scope set.
    #[default]
    Required,
    /// No consent page: for first-party clients.
    Implicit,
}

/// The OpenID Connect ID token of a client.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdTokenSpec {
    /// Lifetime (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: Option<String>,
    /// Signing algorithm (default RS256, which OpenID Connect requires
    /// every client to accept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SigningAlgorithm>,
}

/// The OpenID Connect UserInfo answers of a client (OIDC Core §5.3.2).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserInfoSpec {
    /// Sign the answers with this algorithm (`Content-Type:
    /// application/jwt`, with `iss` and `aud`); unset: plain JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SigningAlgorithm>,
}

/// Refresh tokens of a client: opaque, rotated on every use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshTokenSpec {
    /// Absolute lifetime of the grant's refresh tokens, counted from the
    /// sign-in (default 720h, 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: Option<String>,
    /// A refresh token unused this long expires (default 168h, 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_ttl: Option<String>,
}

/// How the sign-in and consent pages show a client.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrandingSpec {
    /// The client's name as people see it (default: the client id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub display_name: Option<String>,
    /// A logo shown above the form (https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub logo_url: Option<String>,
    /// The colour of buttons and links, `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^#[0-9a-fA-F]{6}$"))]
    pub primary_color: Option<String>,
    /// The page's background colour, `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^#[0-9a-fA-F]{6}$"))]
    pub background_color: Option<String>,
}
