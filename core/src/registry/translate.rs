//! From a resource's spec to the model: defaults applied, secrets read,
//! CEL compiled, and every refusal naming its field.

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde_json::Value;
use tokenmesh_crds::{
    AuthMethod, ExchangeMode, ExchangePolicySpec, GrantType, OAuthClientSpec, ScopeSpec,
    SecretKeyRef, SubjectType, TokenFormat, TokenServerSpec, check_client_id, default_client_id,
    parse_duration,
};
use tokenmesh_tokens::{
    jwk::Jwk,
    scope::is_scope_token,
    secret::SecretHash,
    verify::{KeySet, VerifyingKey},
};

use super::{
    model::{
        Client, ClientAuth, DEFAULT_MAX_TTL, DEFAULT_ROTATION, DEFAULT_TTL, KubernetesSettings,
        Policy, ScopeDef, ScopePattern, ServerSettings, ServiceAccount,
    },
    secrets::{MIN_SECRET_LEN, SecretSource},
};
use crate::{
    certificate::CertificateName,
    key_wrap::{KeyEncryption, KeyWrap},
};

/// Claims a client may not set itself.
pub(super) const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "client_id",
    "scope",
    "scope_exp",
    "grant_id",
    "act",
    "may_act",
    "embedded_tokens",
    "cnf",
    "active",
    "token_type",
];

/// Whether secrets may be sent to `url`: HTTPS, or plain HTTP to this host.
pub fn confidential_url(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    let loopback = || {
        url.host_str()
            .is_some_and(tokenmesh_tokens::net::is_loopback_host)
    };
    url.scheme() == "https" || (url.scheme() == "http" && loopback())
}

/// Largest CEL expression accepted.
const MAX_CEL_LEN: usize = 4096;

pub(super) fn compile_cel(
    field: &str,
    source: &str,
) -> Result<Arc<cel::Program>, (String, String)> {
    if source.len() > MAX_CEL_LEN {
        return Err((
            field.to_owned(),
            format!("longer than {MAX_CEL_LEN} characters"),
        ));
    }
    cel::Program::compile(source)
        .map(Arc::new)
        .map_err(|e| (field.to_owned(), format!("not a valid CEL expression: {e}")))
}

const EMBED_ACTOR_IN_CEL: &str = "an embed policy's tokens are made when the outer token is issued, before any workload extracts them: `actor` is not known then (spec.actor names the workloads that may extract)";

/// `<namespace>/<name>` as a service account.
fn service_account_of(text: &str) -> Option<ServiceAccount> {
    let (namespace, name) = text.split_once('/')?;
    let valid = |part: &str| !part.is_empty() && !part.contains(['/', ':']);
    (valid(namespace) && valid(name)).then(|| ServiceAccount {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

pub(super) fn policy(name: &str, spec: &ExchangePolicySpec) -> Result<Policy, (String, String)> {
    let ttl = match &spec.ttl {
        Some(text) => Some(
            parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    (
                        "spec.ttl".to_owned(),
                        format!("`{text}` is not a positive duration"),
                    )
                })?,
        ),
        None => None,
    };
    if spec.to.audience.is_empty() {
        return Err(("spec.to.audience".into(), "is required".into()));
    }
    let service_accounts = spec
        .actor
        .service_accounts
        .iter()
        .enumerate()
        .map(|(index, account)| {
            service_account_of(account).ok_or_else(|| {
                (
                    format!("spec.actor.serviceAccounts[{index}]"),
                    format!("`{account}` is not `<namespace>/<name>`"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let condition = spec
        .condition
        .as_deref()
        .map(|c| compile_cel("spec.condition", c))
        .transpose()?;
    let mut claims = Vec::new();
    for (claim, source) in &spec.claims {
        let field = format!("spec.claims.{claim}");
        if RESERVED_CLAIMS.contains(&claim.as_str()) {
            return Err((
                field,
                "is set by the token server and cannot be overridden".into(),
            ));
        }
        claims.push((claim.clone(), compile_cel(&field, source)?));
    }
    if spec.mode != ExchangeMode::Exchange && !spec.to.binding.is_none() {
        return Err((
            "spec.to.binding".into(),
            "needs mode: exchange (only an exchanged token can be bound to the sidecar's key)"
                .into(),
        ));
    }
    if spec.mode == ExchangeMode::Embed {
        let names_actor = |program: &cel::Program| program.references().has_variable("actor");
        let cel = condition
            .iter()
            .map(|c| ("spec.condition".to_owned(), c))
            .chain(claims.iter().map(|(n, c)| (format!("spec.claims.{n}"), c)));
        for (field, program) in cel {
            if names_actor(program) {
                return Err((field, EMBED_ACTOR_IN_CEL.into()));
            }
        }
    }
    Ok(Policy {
        name: name.to_owned(),
        spec: spec.clone(),
        condition,
        claims,
        ttl,
        service_accounts,
    })
}

type FieldError = (&'static str, String);

fn duration(
    field: &'static str,
    text: &Option<String>,
    default: Duration,
) -> Result<Duration, FieldError> {
    match text {
        None => Ok(default),
        Some(text) => match parse_duration(text) {
            Ok(d) if d.is_zero() => Err((field, "must be longer than zero".into())),
            Ok(d) => Ok(d),
            Err(e) => Err((field, e.to_string())),
        },
    }
}

pub(super) fn server_settings(
    spec: &TokenServerSpec,
    current_issuer: &str,
    issuer_override: Option<&str>,
    secrets: &dyn SecretSource,
) -> Result<ServerSettings, FieldError> {
    let issuer = match (issuer_override, &spec.issuer) {
        (Some(cli), _) => cli.to_owned(),
        (None, Some(issuer)) => issuer.clone(),
        (None, None) => current_issuer.to_owned(),
    };
    check_issuer(&issuer).map_err(|m| ("spec.issuer", m))?;
    let max_ttl = duration(
        "spec.maxAccessTokenTtl",
        &spec.max_access_token_ttl,
        DEFAULT_MAX_TTL,
    )?;
    let default_ttl = duration(
        "spec.defaultAccessTokenTtl",
        &spec.default_access_token_ttl,
        DEFAULT_TTL,
    )?;
    if default_ttl > max_ttl {
        return Err((
            "spec.defaultAccessTokenTtl",
            "longer than maxAccessTokenTtl".into(),
        ));
    }
    let database = match &spec.storage {
        Some(storage) if storage.kind == tokenmesh_crds::StorageKind::Postgres => {
            Some(storage.database_url_secret_ref.clone().ok_or((
                "spec.storage.databaseUrlSecretRef",
                "postgres storage needs the database URL".to_owned(),
            ))?)
        }
        _ => None,
    };
    let kubernetes = spec
        .kubernetes
        .as_ref()
        .map(|k| kubernetes_settings(k, &issuer))
        .transpose()?;
    let key_encryption = key_encryption(&spec.signing, secrets)?;
    Ok(ServerSettings {
        kubernetes,
        database,
        key_encryption,
        issuer,
        algorithm: spec.signing.algorithm,
        rotation_period: duration(
            "spec.signing.rotationPeriod",
            &spec.signing.rotation_period,
            DEFAULT_ROTATION,
        )?,
        default_ttl,
        max_ttl,
        key_files: spec.signing.key_files.iter().map(PathBuf::from).collect(),
        key_directory: spec.signing.key_directory.as_ref().map(PathBuf::from),
        dpop_nonce: spec.dpop.as_ref().is_some_and(|d| d.require_nonce),
    })
}

fn key_encryption(
    signing: &tokenmesh_crds::SigningSpec,
    secrets: &dyn SecretSource,
) -> Result<Option<Arc<KeyEncryption>>, FieldError> {
    const FIELD: &str = "spec.signing.keyEncryptionKeyRef";
    const PREVIOUS: &str = "spec.signing.previousKeyEncryptionKeyRefs";
    let Some(secret_ref) = &signing.key_encryption_key_ref else {
        if signing.previous_key_encryption_key_refs.is_empty() {
            return Ok(None);
        }
        return Err((
            PREVIOUS,
            "needs keyEncryptionKeyRef, the secret that seals now".into(),
        ));
    };
    if !signing.key_files.is_empty() || signing.key_directory.is_some() {
        return Err((
            FIELD,
            "encrypts generated keys only; keyFiles and keyDirectory are not stored".into(),
        ));
    }
    let wrap = |field: &'static str, secret_ref: &SecretKeyRef| {
        let secret = secrets.read(secret_ref).map_err(|m| (field, m))?;
        KeyWrap::from_secret(&secret).map_err(|e| (field, e.to_string()))
    };
    let previous = signing
        .previous_key_encryption_key_refs
        .iter()
        .map(|r| wrap(PREVIOUS, r))
        .collect::<Result<_, _>>()?;
    Ok(Some(Arc::new(KeyEncryption::new(
        wrap(FIELD, secret_ref)?,
        previous,
    ))))
}

/// In a pod, the API server's CA and this pod's service-account token.
const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const IN_CLUSTER_API_SERVER: &str = "https://kubernetes.default.svc";

/// https, or plain http only to loopback, for a URL whose traffic must not
/// be read or changed on the way (`why`).
fn confidential(field: &'static str, url: &str, why: &str) -> Result<(), FieldError> {
    if confidential_url(url) {
        Ok(())
    } else {
        Err((
            field,
            format!("`{url}`: {why}, so it must be https (plain http only to loopback)"),
        ))
    }
}

fn kubernetes_settings(
    spec: &tokenmesh_crds::KubernetesSpec,
    issuer: &str,
) -> Result<KubernetesSettings, FieldError> {
    if spec.issuer.as_deref() == Some("") {
        return Err((
            "spec.kubernetes.issuer",
            "is empty: leave it out to discover it".into(),
        ));
    }
    let in_cluster = |path: &str| {
        let path = PathBuf::from(path);
        path.exists().then_some(path)
    };
    // Without an issuer, the API server says which it is, reached as every
    // client library in a pod reaches it: through the in-cluster Service.
    let (discovery_url, field) = match (&spec.discovery_url, &spec.issuer) {
        (Some(url), _) => (url.clone(), "spec.kubernetes.discoveryUrl"),
        (None, Some(issuer)) => (issuer.clone(), "spec.kubernetes.issuer"),
        (None, None) => (
            IN_CLUSTER_API_SERVER.to_owned(),
            "spec.kubernetes.discoveryUrl",
        ),
    };
    check_issuer(&discovery_url).map_err(|m| {
        (
            field,
            format!("{m} (discovery is fetched from it: set discoveryUrl)"),
        )
    })?;
    confidential(
        field,
        &discovery_url,
        "the cluster's keys are fetched from it",
    )?;
    let token_file = spec
        .token_file
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| in_cluster(IN_CLUSTER_TOKEN));
    let api_server_url = match &spec.api_server_url {
        Some(url) => url.clone(),
        None if in_cluster(IN_CLUSTER_TOKEN).is_some() => IN_CLUSTER_API_SERVER.to_owned(),
        None => discovery_url.clone(),
    };
    if spec.token_review {
        const FIELD: &str = "spec.kubernetes.apiServerUrl";
        check_issuer(&api_server_url).map_err(|m| (FIELD, m))?;
        confidential(FIELD, &api_server_url, "tokens are sent to it for review")?;
        if token_file.is_none() {
            return Err((
                "spec.kubernetes.tokenReview",
                "needs tokenFile: the API server reviews tokens for an authenticated caller allowed to create tokenreviews".into(),
            ));
        }
    }
    Ok(KubernetesSettings {
        issuer: spec.issuer.clone(),
        audience: spec.audience.clone().unwrap_or_else(|| issuer.to_owned()),
        discovery_url,
        ca_file: spec
            .ca_file
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| in_cluster(IN_CLUSTER_CA)),
        token_file,
        token_review: spec.token_review,
        api_server_url,
    })
}

fn service_account_auth(
    auth: &tokenmesh_crds::ClientAuthentication,
    namespace: Option<&str>,
) -> Result<ClientAuth, FieldError> {
    let account = auth.service_account.as_ref().ok_or((
        "spec.authentication.serviceAccount",
        "kubernetes_service_account needs serviceAccount: {name, namespace}".to_owned(),
    ))?;
    // A namespaced OAuthClient speaks only for its own namespace's accounts:
    // otherwise one tenant could take another's service account first.
    if let (Some(own), Some(named)) = (namespace, account.namespace.as_deref())
        && own != named
    {
        return Err((
            "spec.authentication.serviceAccount.namespace",
            format!("`{named}` is not this OAuthClient's namespace `{own}`"),
        ));
    }
    let namespace = account.namespace.as_deref().or(namespace).ok_or((
        "spec.authentication.serviceAccount.namespace",
        "is required when the OAuthClient has no namespace".to_owned(),
    ))?;
    let valid =
        |s: &str| !s.is_empty() && !s.contains([':', '/']) && !s.chars().any(char::is_whitespace);
    if !valid(namespace) {
        return Err((
            "spec.authentication.serviceAccount.namespace",
            format!("`{namespace}` is not a namespace name"),
        ));
    }
    if !valid(&account.name) {
        return Err((
            "spec.authentication.serviceAccount.name",
            format!("`{}` is not a service account name", account.name),
        ));
    }
    if auth.secret_ref.is_some()
        || !auth.secret_hashes.is_empty()
        || auth.jwks.is_some()
        || auth.jwks_uri.is_some()
    {
        return Err((
            "spec.authentication.method",
            "kubernetes_service_account takes no secret and no keys".to_owned(),
        ));
    }
    Ok(ClientAuth::ServiceAccount(ServiceAccount {
        namespace: namespace.to_owned(),
        name: account.name.clone(),
    }))
}

/// An issuer is an https URL (http only for development) with no query or fragment.
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .ok_or_else(|| format!("`{issuer}` is not an http(s) URL"))?;
    if rest.is_empty()
        || rest.starts_with('/')
        || issuer.contains(['?', '#'])
        || issuer.ends_with('/')
    {
        return Err(format!(
            "`{issuer}` must be a URL with a host, no query, fragment or trailing slash"
        ));
    }
    Ok(())
}

pub(super) fn scope_def(spec: &ScopeSpec) -> Result<ScopeDef, FieldError> {
    let pattern = match (&spec.name, &spec.prefix) {
        (Some(name), None) => ScopePattern::Name(name.clone()),
        (None, Some(prefix)) => ScopePattern::Prefix(prefix.clone()),
        _ => return Err(("spec", "set exactly one of name and prefix".into())),
    };
    if !is_scope_token(pattern.text()) {
        let field = if spec.name.is_some() {
            "spec.name"
        } else {
            "spec.prefix"
        };
        return Err((
            field,
            "not a valid scope (printable ASCII without space, quote or backslash)".into(),
        ));
    }
    let ttl = match &spec.ttl {
        Some(_) => Some(duration("spec.ttl", &spec.ttl, Duration::ZERO)?),
        None => None,
    };
    Ok(ScopeDef { pattern, ttl })
}

pub(super) fn client(
    name: &str,
    namespace: Option<&str>,
    spec: &OAuthClientSpec,
    secrets: &dyn SecretSource,
) -> Result<Client, (String, String)> {
    let f = |field: &str, message: String| (field.to_owned(), message);
    let id = spec
        .client_id
        .clone()
        .unwrap_or_else(|| default_client_id(name, namespace));
    if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
        return Err(f(
            "spec.clientId",
            "must be 1 to 255 printable characters".into(),
        ));
    }
    // Else one namespace could take another's id, and its tokens.
    check_client_id(namespace, &id).map_err(|m| f("spec.clientId", m))?;
    let grant_types = if spec.grant_types.is_empty() {
        vec![GrantType::ClientCredentials]
    } else {
        spec.grant_types.clone()
    };
    for (i, grant) in grant_types.iter().enumerate() {
        if *grant == GrantType::DeviceCode {
            return Err(f(
                &format!("spec.grantTypes[{i}]"),
                format!("grant type {} is not supported yet", grant.as_str()),
            ));
        }
    }
    let auth = client_auth(spec, namespace, secrets)?;
    let public = matches!(auth, ClientAuth::Public);
    if public {
        check_public(spec, &grant_types).map_err(|(field, m)| f(&field, m))?;
    }
    let sign_in = super::sign_in::sign_in(&id, namespace, spec, &grant_types, public)?;
    for (i, scope) in spec.scopes.iter().enumerate() {
        if !is_scope_token(scope) {
            return Err(f(
                &format!("spec.scopes[{i}]"),
                format!("`{scope}` is not a valid scope"),
            ));
        }
    }
    if spec.audiences.is_empty() {
        return Err(f(
            "spec.audiences",
            "name at least one audience the client's tokens may carry".into(),
        ));
    }
    if spec.access_token.format == TokenFormat::Jwe {
        return Err(f(
            "spec.accessToken.format",
            "jwe is not supported yet (use jwt or opaque)".into(),
        ));
    }
    if spec.subject_type == SubjectType::Pairwise {
        return Err(f(
            "spec.subjectType",
            "pairwise subjects are not supported yet".into(),
        ));
    }
    let ttl = match &spec.access_token.ttl {
        Some(text) => match parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => return Err(f("spec.accessToken.ttl", "must be longer than zero".into())),
            Err(e) => return Err(f("spec.accessToken.ttl", e.to_string())),
        },
        None => None,
    };
    for claim in spec.claims.keys() {
        if RESERVED_CLAIMS.contains(&claim.as_str()) && claim != MAY_ACT {
            return Err(f(
                &format!("spec.claims.{claim}"),
                "is set by the token server and cannot be overridden".into(),
            ));
        }
    }
    let may_act = spec
        .claims
        .get(MAY_ACT)
        .map(|value| {
            may_act_of(value)
                .map(|()| value.clone())
                .map_err(|m| f("spec.claims.may_act", m))
        })
        .transpose()?;
    Ok(Client {
        id,
        grant_types,
        auth,
        scopes: spec.scopes.clone(),
        audiences: spec.audiences.clone(),
        allow_introspection: spec.allow_introspection,
        format: spec.access_token.format,
        binding: spec.access_token.binding,
        ttl: ttl.unwrap_or(DEFAULT_TTL),
        algorithm: spec.access_token.algorithm,
        claims: spec
            .claims
            .iter()
            .filter(|(k, _)| *k != MAY_ACT)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        may_act,
        sign_in,
    })
}

/// A public client (`method: none`) proves nothing about itself: it may
/// not get tokens of its own (client_credentials), act in an exchange, or
/// introspect.
fn check_public(spec: &OAuthClientSpec, grant_types: &[GrantType]) -> Result<(), (String, String)> {
    let index = |grant: GrantType| grant_types.iter().position(|g| *g == grant);
    if spec.grant_types.is_empty() {
        return Err((
            "spec.grantTypes".into(),
            "a public client (method none) lists its grant types, e.g. [authorization_code, refresh_token]: the default, client_credentials, needs a client that authenticates".into(),
        ));
    }
    for grant in [GrantType::ClientCredentials, GrantType::TokenExchange] {
        if let Some(i) = index(grant) {
            return Err((
                format!("spec.grantTypes[{i}]"),
                format!(
                    "a public client (method none) cannot use {}: it needs a client that authenticates",
                    grant.as_str()
                ),
            ));
        }
    }
    if spec.allow_introspection {
        return Err((
            "spec.allowIntrospection".into(),
            "a public client (method none) cannot authenticate at the introspection endpoint"
                .into(),
        ));
    }
    Ok(())
}

/// RFC 8693 §4.4: which party may act for the subject of this client's
/// tokens. The one claim of `RESERVED_CLAIMS` a client may set.
const MAY_ACT: &str = "may_act";

/// `may_act` must name the party as `sub` and/or `client_id` strings, the
/// identities an exchange compares with its actor.
fn may_act_of(value: &Value) -> Result<(), String> {
    let Value::Object(map) = value else {
        return Err("must be an object such as {client_id: orders-svc}".into());
    };
    let names = ["sub", "client_id"];
    if let Some(other) = map.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(format!(
            "`{other}`: only `sub` and `client_id` are compared"
        ));
    }
    if map.is_empty()
        || !map
            .values()
            .all(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        return Err("name the actor by a non-empty `sub` or `client_id` string".into());
    }
    Ok(())
}

fn client_auth(
    spec: &OAuthClientSpec,
    namespace: Option<&str>,
    secrets: &dyn SecretSource,
) -> Result<ClientAuth, (String, String)> {
    let auth = &spec.authentication;
    let f = |field: &str, message: String| (field.to_owned(), message);
    match auth.method {
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => {
            let mut hashes = Vec::new();
            for (i, text) in auth.secret_hashes.iter().enumerate() {
                hashes.push(SecretHash::parse(text).map_err(|e| {
                    f(
                        &format!("spec.authentication.secretHashes[{i}]"),
                        e.to_string(),
                    )
                })?);
            }
            if let Some(secret_ref) = &auth.secret_ref {
                let field = "spec.authentication.secretRef";
                let secret = secrets.read(secret_ref).map_err(|m| f(field, m))?;
                if secret.len() < MIN_SECRET_LEN {
                    return Err(f(
                        field,
                        format!(
                            "the secret is shorter than {MIN_SECRET_LEN} characters; generate one with `openssl rand -hex 32` (hex: a base64 `+` sent form-encoded arrives as a space)"
                        ),
                    ));
                }
                hashes.push(SecretHash::of(&secret));
            }
            if hashes.is_empty() {
                return Err(f(
                    "spec.authentication.secretRef",
                    "a secret method needs a secretRef (or secretHashes)".into(),
                ));
            }
            if auth.jwks.is_some() || auth.jwks_uri.is_some() {
                return Err(f(
                    "spec.authentication.jwks",
                    "a secret method takes no keys".into(),
                ));
            }
            Ok(ClientAuth::Secret {
                method: auth.method,
                hashes,
            })
        }
        AuthMethod::PrivateKeyJwt => {
            let mut keys = Vec::new();
            for (i, jwk) in configured_jwks(auth)
                .map_err(|(field, m)| f(field, m))?
                .iter()
                .enumerate()
            {
                keys.push(VerifyingKey::from_jwk(jwk).map_err(|e| {
                    f(
                        &format!("spec.authentication.jwks.keys[{i}]"),
                        e.to_string(),
                    )
                })?);
            }
            Ok(ClientAuth::PrivateKeyJwt {
                keys: KeySet::new(keys),
            })
        }
        AuthMethod::KubernetesServiceAccount => {
            service_account_auth(auth, namespace).map_err(|(field, m)| f(field, m))
        }
        AuthMethod::TlsClientAuth => certificate_auth(auth).map_err(|(field, m)| f(field, m)),
        AuthMethod::SelfSignedTlsClientAuth => Ok(ClientAuth::SelfSignedCertificate {
            keys: configured_jwks(auth).map_err(|(field, m)| f(field, m))?,
        }),
        AuthMethod::None => {
            if auth.secret_ref.is_some()
                || !auth.secret_hashes.is_empty()
                || auth.jwks.is_some()
                || auth.jwks_uri.is_some()
                || auth.service_account.is_some()
                || auth.tls_client_auth.is_some()
            {
                return Err(f(
                    "spec.authentication.method",
                    "a public client (method none) takes no secret, keys or certificate".into(),
                ));
            }
            Ok(ClientAuth::Public)
        }
    }
}

/// The keys listed under `jwks` (private_key_jwt, self_signed_tls_client_auth).
fn configured_jwks(
    auth: &tokenmesh_crds::ClientAuthentication,
) -> Result<Vec<Jwk>, (&'static str, String)> {
    if auth.jwks_uri.is_some() {
        return Err((
            "spec.authentication.jwksUri",
            "jwksUri is not supported yet: list the keys under jwks".into(),
        ));
    }
    let jwks = auth.jwks.as_ref().ok_or((
        "spec.authentication.jwks",
        format!("{} needs jwks", auth.method.as_str()),
    ))?;
    if jwks.keys.is_empty() {
        return Err(("spec.authentication.jwks.keys", "holds no key".into()));
    }
    Ok(jwks
        .keys
        .iter()
        .map(|spec_key| Jwk {
            kty: spec_key.kty.clone(),
            kid: spec_key.kid.clone(),
            alg: spec_key.alg.clone(),
            key_use: spec_key.key_use.clone(),
            crv: spec_key.crv.clone(),
            x: spec_key.x.clone(),
            y: spec_key.y.clone(),
            n: spec_key.n.clone(),
            e: spec_key.e.clone(),
        })
        .collect())
}

/// `tls_client_auth`: the one certificate name of `tlsClientAuth`.
fn certificate_auth(
    auth: &tokenmesh_crds::ClientAuthentication,
) -> Result<ClientAuth, (&'static str, String)> {
    const FIELD: &str = "spec.authentication.tlsClientAuth";
    let spec = auth
        .tls_client_auth
        .as_ref()
        .ok_or((FIELD, "tls_client_auth needs tlsClientAuth".into()))?;
    let mut names = Vec::new();
    if let Some(dn) = &spec.subject_dn {
        let dn = crate::certificate::parse_dn(dn).ok_or((
            FIELD,
            "subjectDn is not an RFC 4514 name (CN=orders,O=shop)".into(),
        ))?;
        names.push(CertificateName::SubjectDn(dn));
    }
    names.extend(spec.san_dns.clone().map(CertificateName::Dns));
    names.extend(spec.san_uri.clone().map(CertificateName::Uri));
    names.extend(spec.san_email.clone().map(CertificateName::Email));
    if let Some(ip) = &spec.san_ip {
        let ip = ip
            .parse()
            .map_err(|_| (FIELD, "sanIp is not an IP address".into()))?;
        names.push(CertificateName::Ip(ip));
    }
    match <[CertificateName; 1]>::try_from(names) {
        Ok([name]) => Ok(ClientAuth::Certificate(name)),
        Err(_) => Err((
            FIELD,
            "name exactly one of subjectDn, sanDns, sanUri, sanIp, sanEmail".into(),
        )),
    }
}
