//! IdentityProviders: their model (static users, an upstream OpenID
//! Provider) and the translation of their spec, every refusal naming its
//! field.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::{Map, Value};
use tokenmesh_crds::{
    IdentityProviderSpec, IdentityProviderType, OidcProviderSpec, StaticProviderSpec,
    StaticUserSpec,
};

use super::{
    secrets::SecretSource,
    sign_in::check_display_name,
    translate::{check_issuer, compile_cel, confidential_url},
};
use crate::password;

/// Claims of a sign-in (OpenID Connect Core §2) besides those no client
/// may set ([`RESERVED_CLAIMS`](super::translate::RESERVED_CLAIMS)).
const SIGN_IN_CLAIMS: &[&str] = &[
    "auth_time",
    "nonce",
    "acr",
    "amr",
    "sid",
    "azp",
    "at_hash",
    "c_hash",
];

/// Whether the token server sets `claim` for a signed-in user, so a user's
/// claims and claim mappings may not name it.
pub fn reserved_for_users(claim: &str) -> bool {
    super::translate::RESERVED_CLAIMS.contains(&claim) || SIGN_IN_CLAIMS.contains(&claim)
}

/// Most users one static provider lists.
const MAX_USERS: usize = 10_000;

/// An IdentityProvider in force.
#[derive(Debug)]
pub struct IdentityProvider {
    /// `<namespace>/<name>`, or the name standalone: how clients name it.
    pub key: String,
    /// The name on the sign-in page.
    pub display_name: String,
    pub kind: ProviderKind,
}

#[derive(Debug)]
pub enum ProviderKind {
    Static(StaticUsers),
    Oidc(UpstreamOidc),
}

impl IdentityProvider {
    pub fn kind_name(&self) -> IdentityProviderType {
        match self.kind {
            ProviderKind::Static(_) => IdentityProviderType::Static,
            ProviderKind::Oidc(_) => IdentityProviderType::Oidc,
        }
    }
}

/// A signed-in person of a static provider.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticUser {
    pub username: String,
    /// The user's claims (`name`, `email`, ...); `sub` is the username.
    pub claims: Map<String, Value>,
    password_hash: String,
}

/// The users of a `static` provider, by username.
#[derive(Debug, Default)]
pub struct StaticUsers {
    users: BTreeMap<String, StaticUser>,
}

impl StaticUsers {
    /// The user `username` when `password` is theirs. An unknown user's
    /// password is verified against a hash of the same cost, so the time of
    /// the answer does not tell whether the user exists. Slow by design
    /// (argon2id): call it from a blocking thread.
    pub fn verify(&self, username: &str, password: &str) -> Option<&StaticUser> {
        match self.users.get(username) {
            Some(user) => password::verify(&user.password_hash, password).then_some(user),
            None => {
                // The first user's hash has the cost the others most likely
                // have; with none, the default cost.
                let decoy = self
                    .users
                    .values()
                    .next()
                    .map_or(password::DUMMY_HASH, |u| u.password_hash.as_str());
                let _ = password::verify(decoy, password);
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// An upstream OpenID Provider, as configured (discovery and keys are
/// fetched by the token server).
#[derive(Debug)]
pub struct UpstreamOidc {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<UpstreamSecret>,
    /// Always holds `openid`.
    pub scopes: Vec<String>,
    /// Claim name → compiled CEL over `claims`; empty: the default claims.
    pub claim_mappings: Vec<(String, Arc<cel::Program>)>,
    /// The upstream claim that names a user for good (`sub`).
    pub subject_claim: String,
}

/// The client secret at an upstream; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamSecret(String);

impl UpstreamSecret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for UpstreamSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamSecret(***)")
    }
}

type FieldError = (String, String);

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    (field.into(), message.into())
}

pub(super) fn identity_provider(
    key: &str,
    name: &str,
    spec: &IdentityProviderSpec,
    secrets: &dyn SecretSource,
) -> Result<IdentityProvider, FieldError> {
    let display_name = spec.display_name.clone().unwrap_or_else(|| name.to_owned());
    check_display_name("spec.displayName", &display_name)?;
    let kind = match (spec.kind, &spec.static_users, &spec.oidc) {
        (IdentityProviderType::Static, Some(users), None) => {
            ProviderKind::Static(static_users(users, secrets)?)
        }
        (IdentityProviderType::Oidc, None, Some(oidc)) => {
            ProviderKind::Oidc(upstream_oidc(oidc, secrets)?)
        }
        (kind, _, _) => {
            let block = kind.as_str();
            return Err(err(
                format!("spec.{block}"),
                format!("type {block} needs the {block} block, and no other"),
            ));
        }
    };
    Ok(IdentityProvider {
        key: key.to_owned(),
        display_name,
        kind,
    })
}

fn static_users(
    spec: &StaticProviderSpec,
    secrets: &dyn SecretSource,
) -> Result<StaticUsers, FieldError> {
    const REF: &str = "spec.static.usersSecretRef";
    let (list, field) = match (&spec.users, &spec.users_secret_ref) {
        (Some(users), None) => (users.clone(), "spec.static.users"),
        (None, Some(secret_ref)) => {
            let bytes = secrets.read(secret_ref).map_err(|m| err(REF, m))?;
            let users: Vec<StaticUserSpec> = serde_yaml_ng::from_slice(&bytes).map_err(|e| {
                err(
                    REF,
                    format!(
                        "the Secret's `{}` is not a YAML list of {{username, passwordHash, claims}}: {e}",
                        secret_ref.key
                    ),
                )
            })?;
            (users, REF)
        }
        _ => {
            return Err(err(
                "spec.static",
                "set exactly one of usersSecretRef and users",
            ));
        }
    };
    if list.len() > MAX_USERS {
        return Err(err(field, format!("more than {MAX_USERS} users")));
    }
    let mut users = BTreeMap::new();
    for (i, user) in list.into_iter().enumerate() {
        let at = |what: &str| format!("{field}[{i}]{what}");
        let valid_name = !user.username.is_empty()
            && user.username.len() <= 255
            && !user.username.chars().any(char::is_control);
        if !valid_name {
            return Err(err(
                at(".username"),
                "must be 1 to 255 printable characters",
            ));
        }
        password::check_hash(&user.password_hash)
            .map_err(|e| err(at(".passwordHash"), e.to_string()))?;
        if let Some(claim) = user.claims.keys().find(|c| reserved_for_users(c)) {
            return Err(err(
                at(&format!(".claims.{claim}")),
                "is set by the token server and cannot be a user's claim",
            ));
        }
        let username = user.username.clone();
        let previous = users.insert(
            username.clone(),
            StaticUser {
                username: user.username,
                claims: user.claims.into_iter().collect(),
                password_hash: user.password_hash,
            },
        );
        if previous.is_some() {
            return Err(err(
                at(".username"),
                format!("`{username}` is listed twice"),
            ));
        }
    }
    Ok(StaticUsers { users })
}

/// What is asked of an upstream when the resource names no scopes.
const DEFAULT_UPSTREAM_SCOPES: [&str; 3] = ["openid", "profile", "email"];

fn upstream_oidc(
    spec: &OidcProviderSpec,
    secrets: &dyn SecretSource,
) -> Result<UpstreamOidc, FieldError> {
    check_issuer(&spec.issuer).map_err(|m| err("spec.oidc.issuer", m))?;
    if !confidential_url(&spec.issuer) {
        return Err(err(
            "spec.oidc.issuer",
            format!(
                "`{}`: its keys and our client secret travel to it, so it must be https (plain http only to loopback)",
                spec.issuer
            ),
        ));
    }
    if spec.client_id.is_empty()
        || spec.client_id.len() > 255
        || spec.client_id.chars().any(char::is_control)
    {
        return Err(err(
            "spec.oidc.clientId",
            "must be 1 to 255 printable characters",
        ));
    }
    let client_secret = match (&spec.client_secret_ref, &spec.client_secret) {
        (_, Some(inline)) => Some(inline.clone()),
        (Some(secret_ref), None) => {
            let bytes = secrets
                .read(secret_ref)
                .map_err(|m| err("spec.oidc.clientSecretRef", m))?;
            Some(String::from_utf8(bytes).map_err(|_| {
                err(
                    "spec.oidc.clientSecretRef",
                    "the client secret is not UTF-8 text",
                )
            })?)
        }
        (None, None) => None,
    };
    if client_secret.as_ref().is_some_and(String::is_empty) {
        return Err(err(
            "spec.oidc.clientSecretRef",
            "the client secret is empty",
        ));
    }
    let mut scopes: Vec<String> = if spec.scopes.is_empty() {
        DEFAULT_UPSTREAM_SCOPES.map(str::to_owned).to_vec()
    } else {
        spec.scopes.clone()
    };
    if let Some((i, bad)) = scopes
        .iter()
        .enumerate()
        .find(|(_, s)| !tokenmesh_tokens::scope::is_scope_token(s))
    {
        return Err(err(
            format!("spec.oidc.scopes[{i}]"),
            format!("`{bad}` is not a valid scope"),
        ));
    }
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".to_owned());
    }
    let mut claim_mappings = Vec::new();
    for (claim, source) in &spec.claim_mappings {
        let field = format!("spec.oidc.claimMappings.{claim}");
        if reserved_for_users(claim) {
            return Err(err(
                field,
                "is set by the token server and cannot be mapped",
            ));
        }
        let program = compile_cel(&field, source)?;
        claim_mappings.push((claim.clone(), program));
    }
    let subject_claim = spec.subject_claim.clone().unwrap_or_else(|| "sub".into());
    Ok(UpstreamOidc {
        issuer: spec.issuer.clone(),
        client_id: spec.client_id.clone(),
        client_secret: client_secret.map(UpstreamSecret),
        scopes,
        claim_mappings,
        subject_claim,
    })
}
