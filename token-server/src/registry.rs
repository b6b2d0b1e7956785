//! The runtime view of the applied resources: clients, scopes, policies and
//! server settings. Every resource, from a file or (later) the operator,
//! goes through [`Registry::apply`]; [`Registry::validate`] checks what the
//! resources say about each other.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use serde_json::{Map, Value};
use tokenmesh_crds::{
    AuthMethod, ExchangeMode, ExchangePolicySpec, GrantType, OAuthClientSpec, ScopeSpec,
    SecretKeyRef, SigningAlgorithm, SubjectType, TokenFormat, TokenServerSpec, check_client_id,
    default_client_id, parse_duration,
};
use tokenmesh_tokens::{
    jwk::Jwk,
    scope::is_scope_token,
    secret::SecretHash,
    verify::{KeySet, VerifyingKey},
};

use crate::{
    config::{ConfigError, Document, Origin, Resource},
    key_wrap::{KeyEncryption, KeyWrap},
    kubernetes_issuer::{KubernetesSettings, ServiceAccount},
};

/// Shortest client secret accepted: a fast digest is only safe for secrets
/// of high entropy.
pub const MIN_SECRET_LEN: usize = 32;
const DEFAULT_TTL: Duration = Duration::from_secs(300);
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(86_400);
const DEFAULT_ROTATION: Duration = Duration::from_secs(86_400);

/// Claims a client may not set itself.
const RESERVED_CLAIMS: &[&str] = &[
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

/// Where `secretRef`s resolve.
pub trait SecretSource: Send + Sync {
    fn read(&self, secret: &SecretKeyRef) -> Result<Vec<u8>, String>;
}

/// Standalone: `<dir>/<name>/<key>`, the layout of a mounted Secret.
pub struct FileSecrets {
    pub dir: PathBuf,
}

impl SecretSource for FileSecrets {
    fn read(&self, secret: &SecretKeyRef) -> Result<Vec<u8>, String> {
        let safe = |part: &str| {
            !part.is_empty() && !part.contains(['/', '\\']) && part != "." && part != ".."
        };
        if !safe(&secret.name) || !safe(&secret.key) {
            return Err("name and key must be plain file names".into());
        }
        let path = self.dir.join(&secret.name).join(&secret.key);
        let mut bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Ok(bytes)
    }
}

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
}

impl ServerSettings {
    /// Whether signing keys are generated and kept in the store (not
    /// `keyFiles` or a `keyDirectory`).
    pub fn keys_in_store(&self) -> bool {
        self.key_directory.is_none() && self.key_files.is_empty()
    }

    fn defaults(issuer: String) -> Self {
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
}

impl ClientAuth {
    pub fn method(&self) -> AuthMethod {
        match self {
            Self::Secret { method, .. } => *method,
            Self::PrivateKeyJwt { .. } => AuthMethod::PrivateKeyJwt,
            Self::ServiceAccount(_) => AuthMethod::KubernetesServiceAccount,
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
    pub ttl: Duration,
    /// The client's own signing algorithm; the TokenServer's when unset.
    pub algorithm: Option<SigningAlgorithm>,
    pub claims: Map<String, Value>,
    /// `may_act` for the client's tokens (RFC 8693 §4.4), from `spec.claims`.
    pub may_act: Option<Value>,
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
    fn text(&self) -> &str {
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

/// Largest CEL expression accepted.
const MAX_CEL_LEN: usize = 4096;

fn compile_cel(field: &str, source: &str) -> Result<Arc<cel::Program>, (String, String)> {
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

fn policy(name: &str, spec: &ExchangePolicySpec) -> Result<Policy, (String, String)> {
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

#[derive(Clone)]
struct Entry<T> {
    origin: Origin,
    value: T,
}

#[derive(Clone)]
pub struct Registry {
    pub server: ServerSettings,
    issuer_override: Option<String>,
    server_origin: Option<Origin>,
    clients: BTreeMap<String, Entry<Arc<Client>>>,
    scopes: BTreeMap<String, Entry<ScopeDef>>,
    policies: BTreeMap<String, Entry<Policy>>,
}

impl Registry {
    /// An empty registry. `issuer_override` (from `--issuer`) wins over any
    /// TokenServer; `default_issuer` applies when neither names one.
    pub fn new(default_issuer: String, issuer_override: Option<String>) -> Self {
        let issuer = issuer_override.clone().unwrap_or(default_issuer);
        Self {
            server: ServerSettings::defaults(issuer),
            issuer_override,
            server_origin: None,
            clients: BTreeMap::new(),
            scopes: BTreeMap::new(),
            policies: BTreeMap::new(),
        }
    }

    /// Applies every document, then validates the whole.
    pub fn from_documents(
        mut self,
        docs: &[Document],
        secrets: &dyn SecretSource,
    ) -> Result<Self, ConfigError> {
        for doc in docs {
            self.apply(doc, secrets)?;
        }
        self.validate()?;
        Ok(self)
    }

    /// Applies one resource, replacing an earlier one of the same kind and name.
    pub fn apply(&mut self, doc: &Document, secrets: &dyn SecretSource) -> Result<(), ConfigError> {
        let origin = &doc.origin;
        let err = |field: &str, message: String| ConfigError::new(origin, field, message);
        match &doc.resource {
            Resource::TokenServer(res) => {
                if let Some(previous) = &self.server_origin
                    && previous.name != origin.name
                {
                    return Err(err(
                        "",
                        format!("a second TokenServer; the first is at {previous}"),
                    ));
                }
                self.server = server_settings(
                    &res.spec,
                    &self.server.issuer,
                    self.issuer_override.as_deref(),
                    secrets,
                )
                .map_err(|(f, m)| err(f, m))?;
                self.server_origin = Some(origin.clone());
            }
            Resource::Scope(res) => {
                let def = scope_def(&res.spec).map_err(|(f, m)| err(f, m))?;
                self.scopes.insert(
                    origin.name.clone(),
                    Entry {
                        origin: origin.clone(),
                        value: def,
                    },
                );
            }
            Resource::OAuthClient(res) => {
                let namespace = res.metadata.namespace.as_deref();
                let name = res.metadata.name.as_deref().unwrap_or(&origin.name);
                let client =
                    client(name, namespace, &res.spec, secrets).map_err(|(f, m)| err(&f, m))?;
                self.clients.insert(
                    origin.name.clone(),
                    Entry {
                        origin: origin.clone(),
                        value: Arc::new(client),
                    },
                );
            }
            Resource::ExchangePolicy(res) => {
                let policy = policy(&origin.name, &res.spec).map_err(|(f, m)| err(&f, m))?;
                self.policies.insert(
                    origin.name.clone(),
                    Entry {
                        origin: origin.clone(),
                        value: policy,
                    },
                );
            }
        }
        Ok(())
    }

    /// Removes a resource; false when there was none. Call [`Self::validate`]
    /// after: a scope still referred to must not go.
    pub fn delete(&mut self, kind: &str, name: &str) -> bool {
        match kind {
            "OAuthClient" => self.clients.remove(name).is_some(),
            "Scope" => self.scopes.remove(name).is_some(),
            "ExchangePolicy" => self.policies.remove(name).is_some(),
            "TokenServer" if self.server_origin.as_ref().is_some_and(|o| o.name == name) => {
                let issuer = self.server.issuer.clone();
                self.server = ServerSettings::defaults(issuer);
                self.server_origin = None;
                true
            }
            _ => false,
        }
    }

    /// (kind, name) of every resource, or of one kind.
    pub fn list(&self, kind: Option<&str>) -> Vec<(&'static str, String)> {
        let server = self
            .server_origin
            .iter()
            .map(|o| ("TokenServer", o.name.clone()));
        let clients = self.clients.keys().map(|n| ("OAuthClient", n.clone()));
        let scopes = self.scopes.keys().map(|n| ("Scope", n.clone()));
        let policies = self.policies.keys().map(|n| ("ExchangePolicy", n.clone()));
        server
            .chain(clients)
            .chain(scopes)
            .chain(policies)
            .filter(|(k, _)| kind.is_none_or(|wanted| wanted == *k))
            .collect()
    }

    /// Checks references between resources and uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut ids: BTreeMap<&str, &Origin> = BTreeMap::new();
        let mut accounts: BTreeMap<&ServiceAccount, &Origin> = BTreeMap::new();
        let mut patterns: BTreeMap<&str, &Origin> = BTreeMap::new();
        for entry in self.scopes.values() {
            if let Some(first) = patterns.insert(entry.value.pattern.text(), &entry.origin) {
                return Err(ConfigError::new(
                    &entry.origin,
                    "spec",
                    format!(
                        "scope `{}` is already defined at {first}",
                        entry.value.pattern.text()
                    ),
                ));
            }
        }
        for entry in self.clients.values() {
            let client = &entry.value;
            if let Some(first) = ids.insert(&client.id, &entry.origin) {
                return Err(ConfigError::new(
                    &entry.origin,
                    "spec.clientId",
                    format!("client id `{}` is already used at {first}", client.id),
                ));
            }
            for (i, scope) in client.scopes.iter().enumerate() {
                if !self
                    .scopes
                    .values()
                    .any(|s| s.value.pattern.text() == scope)
                {
                    return Err(ConfigError::new(
                        &entry.origin,
                        format!("spec.scopes[{i}]"),
                        format!("no Scope defines `{scope}` (as a name or a prefix)"),
                    ));
                }
            }
            if let ClientAuth::ServiceAccount(account) = &client.auth {
                self.check_service_account(entry, account, &mut accounts)?;
            }
            if client.ttl > self.server.max_ttl {
                return Err(ConfigError::new(
                    &entry.origin,
                    "spec.accessToken.ttl",
                    format!(
                        "longer than the TokenServer's maxAccessTokenTtl ({}s)",
                        self.server.max_ttl.as_secs()
                    ),
                ));
            }
        }
        for entry in self.policies.values() {
            self.check_policy_can_match(entry)?;
            for (i, scope) in entry.value.spec.to.scopes.iter().enumerate() {
                let is_pattern = self
                    .scopes
                    .values()
                    .any(|s| s.value.pattern.text() == scope);
                if !is_pattern && self.find_scope(scope).is_none() {
                    return Err(ConfigError::new(
                        &entry.origin,
                        format!("spec.to.scopes[{i}]"),
                        format!("no Scope defines `{scope}`"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Refuses a policy no token or workload could ever satisfy.
    fn check_policy_can_match(&self, entry: &Entry<Policy>) -> Result<(), ConfigError> {
        let spec = &entry.value.spec;
        let refuse =
            |field: &str, message: String| Err(ConfigError::new(&entry.origin, field, message));
        // Service-account clients need spec.kubernetes; without it only
        // actor.clients could ever act.
        if spec.actor.clients.is_empty()
            && !spec.actor.service_accounts.is_empty()
            && self.server.kubernetes.is_none()
        {
            return refuse(
                "spec.actor.serviceAccounts",
                "no client authenticates as a service account without the TokenServer's spec.kubernetes, so no workload could act under this policy".into(),
            );
        }
        // The outer token of an embed is always this server's own.
        let issuers = &spec.from.issuers;
        if spec.mode == ExchangeMode::Embed
            && !issuers.is_empty()
            && !issuers.contains(&self.server.issuer)
        {
            return refuse(
                "spec.from.issuers",
                format!(
                    "an embed policy admits tokens as this server issues them, with iss `{}`: this list never matches",
                    self.server.issuer
                ),
            );
        }
        Ok(())
    }

    /// A `kubernetes_service_account` client needs the TokenServer's
    /// `kubernetes` block, and one service account is one client (a token
    /// must say which client it authenticates, gRPC sends no client id).
    fn check_service_account<'a>(
        &self,
        entry: &'a Entry<Arc<Client>>,
        account: &'a ServiceAccount,
        accounts: &mut BTreeMap<&'a ServiceAccount, &'a Origin>,
    ) -> Result<(), ConfigError> {
        if self.server.kubernetes.is_none() {
            return Err(ConfigError::new(
                &entry.origin,
                "spec.authentication.method",
                "kubernetes_service_account needs the TokenServer's spec.kubernetes (the cluster's service-account issuer)".to_owned(),
            ));
        }
        if let Some(first) = accounts.insert(account, &entry.origin) {
            return Err(ConfigError::new(
                &entry.origin,
                "spec.authentication.serviceAccount",
                format!("service account {account} already authenticates the client at {first}"),
            ));
        }
        Ok(())
    }

    /// The `kubernetes_service_account` client of `account`.
    pub fn client_for_service_account(&self, account: &ServiceAccount) -> Option<&Arc<Client>> {
        self.clients()
            .find(|c| matches!(&c.auth, ClientAuth::ServiceAccount(a) if a == account))
    }

    pub fn client(&self, id: &str) -> Option<&Arc<Client>> {
        self.clients.values().map(|e| &e.value).find(|c| c.id == id)
    }

    pub fn clients(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.clients.values().map(|e| &e.value)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values().map(|e| &e.value)
    }

    /// Exact scope names, for discovery.
    pub fn scope_names(&self) -> Vec<String> {
        self.scopes
            .values()
            .filter_map(|e| match &e.value.pattern {
                ScopePattern::Name(n) => Some(n.clone()),
                ScopePattern::Prefix(_) => None,
            })
            .collect()
    }

    /// The definition a scope falls under: its exact name, else the longest
    /// prefix. Not a scope-token, not a scope: a prefix must not admit a
    /// tab-joined list.
    pub fn find_scope(&self, scope: &str) -> Option<&ScopeDef> {
        if !is_scope_token(scope) {
            return None;
        }
        let defs = || self.scopes.values().map(|e| &e.value);
        defs().find(|d| d.pattern == ScopePattern::Name(scope.to_owned())).or_else(|| {
            defs()
                .filter(|d| matches!(&d.pattern, ScopePattern::Prefix(p) if scope.len() > p.len() && scope.starts_with(p.as_str())))
                .max_by_key(|d| d.pattern.text().len())
        })
    }

    /// The algorithm `client`'s JWTs are signed with.
    pub fn algorithm_of(&self, client: &Client) -> SigningAlgorithm {
        client.algorithm.unwrap_or(self.server.algorithm)
    }

    /// Every algorithm some client or the server signs with.
    pub fn algorithms_in_use(&self) -> Vec<SigningAlgorithm> {
        let mut algs: Vec<SigningAlgorithm> = self
            .clients()
            .filter(|c| c.format == TokenFormat::Jwt)
            .map(|c| self.algorithm_of(c))
            .chain([self.server.algorithm])
            .collect();
        algs.sort();
        algs.dedup();
        algs
    }

    pub fn summary(&self) -> String {
        format!(
            "issuer {}, {}, {}, {}, signing {}",
            self.server.issuer,
            count(self.clients.len(), "client", "clients"),
            count(self.scopes.len(), "scope", "scopes"),
            count(self.policies.len(), "exchange policy", "exchange policies"),
            self.server.algorithm.as_str()
        )
    }
}

/// `1 client`, `0 clients`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
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

fn server_settings(
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
    if crate::kubernetes_issuer::confidential_url(url) {
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

fn scope_def(spec: &ScopeSpec) -> Result<ScopeDef, FieldError> {
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

fn client(
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
        if !matches!(
            grant,
            GrantType::ClientCredentials | GrantType::TokenExchange
        ) {
            return Err(f(
                &format!("spec.grantTypes[{i}]"),
                format!("grant type {} is not supported yet", grant.as_str()),
            ));
        }
    }
    let auth = client_auth(spec, namespace, secrets)?;
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
    if !spec.redirect_uris.is_empty() {
        return Err(f(
            "spec.redirectUris",
            "browser flows are not supported yet".into(),
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
        ttl: ttl.unwrap_or(DEFAULT_TTL),
        algorithm: spec.access_token.algorithm,
        claims: spec
            .claims
            .iter()
            .filter(|(k, _)| *k != MAY_ACT)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        may_act,
    })
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
            if auth.jwks_uri.is_some() {
                return Err(f(
                    "spec.authentication.jwksUri",
                    "jwksUri is not supported yet: list the keys under jwks".into(),
                ));
            }
            let jwks = auth.jwks.as_ref().ok_or_else(|| {
                f(
                    "spec.authentication.jwks",
                    "private_key_jwt needs jwks".into(),
                )
            })?;
            if jwks.keys.is_empty() {
                return Err(f("spec.authentication.jwks.keys", "holds no key".into()));
            }
            let mut keys = Vec::new();
            for (i, spec_key) in jwks.keys.iter().enumerate() {
                let jwk = Jwk {
                    kty: spec_key.kty.clone(),
                    kid: spec_key.kid.clone(),
                    alg: spec_key.alg.clone(),
                    key_use: spec_key.key_use.clone(),
                    crv: spec_key.crv.clone(),
                    x: spec_key.x.clone(),
                    y: spec_key.y.clone(),
                    n: spec_key.n.clone(),
                    e: spec_key.e.clone(),
                };
                keys.push(VerifyingKey::from_jwk(&jwk).map_err(|e| {
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
        other => Err(f(
            "spec.authentication.method",
            format!("{} is not supported yet", other.as_str()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_documents;

    struct NoSecrets;
    impl SecretSource for NoSecrets {
        fn read(&self, _: &SecretKeyRef) -> Result<Vec<u8>, String> {
            Ok(b"0123456789abcdef0123456789abcdef".to_vec())
        }
    }

    fn build(yaml: &str) -> Result<Registry, ConfigError> {
        let docs = parse_documents(None, yaml)?;
        Registry::new("http://127.0.0.1:8080".into(), None).from_documents(&docs, &NoSecrets)
    }

    const SCOPES: &str = "apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: r}\nspec: {name: \"orders:read\"}\n---\napiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: v}\nspec: {prefix: video_, ttl: 60s}\n---\n";

    fn client_doc(extra: &str) -> String {
        format!(
            "{SCOPES}apiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: gw}}\nspec:\n  authentication: {{method: client_secret_basic, secretRef: {{name: gw, key: s}}}}\n  audiences: [orders]\n{extra}"
        )
    }

    #[test]
    fn prefix_scopes_resolve_to_the_longest_prefix() {
        let reg = build(&client_doc("  scopes: [video_]\n")).unwrap();
        assert_eq!(
            reg.find_scope("video_42").map(|d| d.ttl),
            Some(Some(Duration::from_secs(60)))
        );
        assert!(
            reg.find_scope("video_").is_none(),
            "a bare prefix is not a scope"
        );
        assert!(reg.find_scope("orders:read").is_some());
        assert!(reg.find_scope("orders:write").is_none());
        assert_eq!(reg.client("gw").map(|c| c.ttl), Some(DEFAULT_TTL));
    }

    #[test]
    fn client_scopes_must_be_defined() {
        let err = build(&client_doc("  scopes: [\"orders:read\", nope]\n"))
            .err()
            .unwrap();
        assert_eq!(err.field, "spec.scopes[1]");
        assert!(err.origin.contains("OAuthClient gw"));
    }

    #[test]
    fn unsupported_settings_are_refused_not_ignored() {
        for (extra, field) in [
            ("  accessToken: {format: jwe}\n", "spec.accessToken.format"),
            ("  accessToken: {ttl: 10x}\n", "spec.accessToken.ttl"),
            ("  accessToken: {ttl: 48h}\n", "spec.accessToken.ttl"),
            ("  claims: {sub: admin}\n", "spec.claims.sub"),
            ("  claims: {may_act: orders}\n", "spec.claims.may_act"),
            ("  claims: {may_act: {}}\n", "spec.claims.may_act"),
            ("  claims: {may_act: {iss: x}}\n", "spec.claims.may_act"),
            ("  claims: {may_act: {sub: 7}}\n", "spec.claims.may_act"),
            ("  grantTypes: [authorization_code]\n", "spec.grantTypes[0]"),
        ] {
            assert_eq!(
                build(&client_doc(extra)).err().map(|e| e.field),
                Some(field.to_owned()),
                "{extra}"
            );
        }
    }

    #[test]
    fn issuer_from_cli_wins() {
        let docs = parse_documents(None, "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: d}\nspec: {issuer: https://a.example}\n").unwrap();
        let reg = Registry::new("http://x".into(), Some("https://b.example".into()))
            .from_documents(&docs, &NoSecrets)
            .unwrap();
        assert_eq!(reg.server.issuer, "https://b.example");
        let reg = Registry::new("http://x".into(), None)
            .from_documents(&docs, &NoSecrets)
            .unwrap();
        assert_eq!(reg.server.issuer, "https://a.example");
        assert!(check_issuer("https://a.example/").is_err());
        assert!(check_issuer("ftp://a").is_err());
    }

    #[test]
    fn the_summary_counts_in_words() {
        let reg = build(&client_doc("")).unwrap();
        let summary = reg.summary();
        assert!(
            summary.contains("1 client, 2 scopes, 0 exchange policies, signing"),
            "{summary}"
        );
    }

    #[test]
    fn clients_sign_with_the_server_algorithm_unless_they_name_one() {
        let server = "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: d}\nspec: {signing: {algorithm: EdDSA}}\n";
        let reg = build(&format!("{}---\n{server}", client_doc(""))).unwrap();
        let gw = reg.client("gw").unwrap();
        assert_eq!(reg.algorithm_of(gw), SigningAlgorithm::EdDSA);
        let reg = build(&format!(
            "{}---\n{server}",
            client_doc("  accessToken: {algorithm: PS256}\n")
        ))
        .unwrap();
        assert_eq!(
            reg.algorithm_of(reg.client("gw").unwrap()),
            SigningAlgorithm::PS256
        );
        assert_eq!(
            reg.algorithms_in_use(),
            vec![SigningAlgorithm::PS256, SigningAlgorithm::EdDSA]
        );
    }

    const KUBERNETES: &str = "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: d}\nspec: {issuer: https://tokens.example, kubernetes: {issuer: https://kubernetes.default.svc}}\n---\n";

    fn sa_client(name: &str, namespace: &str, auth: &str) -> String {
        format!(
            "apiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}{namespace}}}\nspec:\n  authentication: {{method: kubernetes_service_account{auth}}}\n  audiences: [orders]\n---\n"
        )
    }

    #[test]
    fn service_account_clients_default_to_their_own_namespace() {
        let yaml = format!(
            "{KUBERNETES}{}{}",
            sa_client("a", ", namespace: shop", ", serviceAccount: {name: orders}"),
            sa_client("b", "", ", serviceAccount: {name: pay, namespace: bank}")
        );
        let reg = build(&yaml).unwrap();
        let account = |ns: &str, name: &str| ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
        };
        assert_eq!(
            reg.client_for_service_account(&account("shop", "orders"))
                .map(|c| c.id.as_str()),
            Some("shop/a")
        );
        assert_eq!(
            reg.client_for_service_account(&account("bank", "pay"))
                .map(|c| c.id.as_str()),
            Some("b")
        );
        assert!(
            reg.client_for_service_account(&account("shop", "pay"))
                .is_none()
        );
        let k8s = reg.server.kubernetes.as_ref().unwrap();
        assert_eq!(k8s.audience, "https://tokens.example", "default audience");
        assert_eq!(k8s.discovery_url, "https://kubernetes.default.svc");
    }

    #[test]
    fn service_account_misconfigurations_name_the_field() {
        let case = |yaml: String| build(&yaml).err().map(|e| (e.field, e.message));
        let (field, message) = case(sa_client(
            "a",
            ", namespace: shop",
            ", serviceAccount: {name: orders}",
        ))
        .unwrap();
        assert_eq!(field, "spec.authentication.method");
        assert!(message.contains("spec.kubernetes"), "{message}");
        for (client, field) in [
            (
                sa_client("a", ", namespace: shop", ""),
                "spec.authentication.serviceAccount",
            ),
            (
                sa_client("a", "", ", serviceAccount: {name: orders}"),
                "spec.authentication.serviceAccount.namespace",
            ),
            (
                sa_client(
                    "a",
                    ", namespace: shop",
                    ", serviceAccount: {name: \"a:b\"}",
                ),
                "spec.authentication.serviceAccount.name",
            ),
            (
                // Another namespace's account: not this client's to claim.
                sa_client(
                    "a",
                    ", namespace: shop",
                    ", serviceAccount: {name: orders, namespace: bank}",
                ),
                "spec.authentication.serviceAccount.namespace",
            ),
            (
                format!(
                    "{}{}",
                    sa_client("a", ", namespace: shop", ", serviceAccount: {name: orders}"),
                    sa_client("b", "", ", serviceAccount: {name: orders, namespace: shop}")
                ),
                "spec.authentication.serviceAccount",
            ),
        ] {
            assert_eq!(
                case(format!("{KUBERNETES}{client}")).map(|(f, _)| f),
                Some(field.to_owned()),
                "{client}"
            );
        }
        let bad_discovery = "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: d}\nspec: {kubernetes: {issuer: kubernetes/serviceaccount}}\n";
        assert_eq!(
            case(bad_discovery.to_owned()).map(|(f, _)| f),
            Some("spec.kubernetes.issuer".to_owned())
        );
        // Keys fetched in clear could be swapped on the way: https, or loopback.
        let plain = KUBERNETES.replace(
            "{issuer: https://kubernetes.default.svc}",
            "{issuer: https://kubernetes.default.svc, discoveryUrl: \"http://10.0.0.1:6443\"}",
        );
        assert_ne!(plain, KUBERNETES);
        let (field, message) = case(plain).unwrap();
        assert_eq!(field, "spec.kubernetes.discoveryUrl");
        assert!(message.contains("https"), "{message}");

        // TokenReview sends tokens, so it needs a credential and an https
        // API server, which outside a pod defaults to the discovery URL.
        let review = |extra: &str| {
            KUBERNETES.replace(
                "{issuer: https://kubernetes.default.svc}",
                &format!("{{issuer: https://kubernetes.default.svc, tokenReview: true{extra}}}"),
            )
        };
        let (field, message) = case(review("")).unwrap();
        assert_eq!(field, "spec.kubernetes.tokenReview");
        assert!(message.contains("tokenFile"), "{message}");
        let (field, message) = case(review(
            ", tokenFile: /t, apiServerUrl: \"http://10.0.0.1:6443\"",
        ))
        .unwrap();
        assert_eq!(field, "spec.kubernetes.apiServerUrl");
        assert!(message.contains("https"), "{message}");
        assert_eq!(case(review(", tokenFile: /t")), None);
        let reg = build(&review(", tokenFile: /t")).unwrap();
        let k8s = reg.server.kubernetes.unwrap();
        assert!(k8s.token_review);
        assert_eq!(k8s.api_server_url, "https://kubernetes.default.svc");
    }

    #[test]
    fn a_left_out_issuer_is_discovered() {
        let server = |kubernetes: &str| {
            format!(
                "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {{name: d}}\nspec: {{kubernetes: {kubernetes}}}\n"
            )
        };
        let reg = build(&server("{discoveryUrl: \"https://127.0.0.1:6443\"}")).unwrap();
        let k8s = reg.server.kubernetes.unwrap();
        assert_eq!(k8s.issuer, None);
        assert_eq!(k8s.discovery_url, "https://127.0.0.1:6443");
        // As in a pod: the API server behind the in-cluster Service.
        let k8s = build(&server("{}")).unwrap().server.kubernetes.unwrap();
        assert_eq!(k8s.issuer, None);
        assert_eq!(k8s.discovery_url, "https://kubernetes.default.svc");
        let err = build(&server("{issuer: \"\"}")).err().map(|e| e.field);
        assert_eq!(err.as_deref(), Some("spec.kubernetes.issuer"));
    }

    #[test]
    fn a_namespaced_client_cannot_take_another_namespaces_id() {
        let client = |namespace: &str, client_id: &str| {
            format!(
                "{SCOPES}apiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: innocent, namespace: {namespace}}}\nspec:\n  clientId: {client_id}\n  authentication: {{method: client_secret_basic, secretRef: {{name: gw, key: s}}}}\n  audiences: [orders]\n"
            )
        };
        for squat in ["shop/orders", "orders", "evil"] {
            let err = build(&client("evil", squat)).err().unwrap();
            assert_eq!(err.field, "spec.clientId", "{squat}");
            assert!(
                err.message.contains("must begin with `evil/`"),
                "{}",
                err.message
            );
        }
        let reg = build(&client("evil", "evil/orders")).unwrap();
        assert!(reg.client("evil/orders").is_some());
        // Standalone, without a namespace, the file's author names any id.
        let reg = build(&client_doc("  clientId: shop/orders\n")).unwrap();
        assert!(reg.client("shop/orders").is_some());
    }

    #[test]
    fn file_secrets_refuse_path_tricks() {
        let secrets = FileSecrets {
            dir: PathBuf::from("/nonexistent"),
        };
        let bad = SecretKeyRef {
            name: "..".into(),
            key: "passwd".into(),
        };
        assert!(secrets.read(&bad).unwrap_err().contains("plain file names"));
    }
}
