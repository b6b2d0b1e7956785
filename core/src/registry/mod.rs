//! The runtime view of the applied resources: clients, scopes, policies and
//! server settings. Every resource, from a file or the ControlService, goes
//! through [`Registry::apply`]; [`Registry::validate`] checks what the
//! resources say about each other.
//!
//! [`model`] is what the rest of the server reads, [`translate`] turns a
//! resource's spec into it ([`sign_in`]: a client's browser-flow settings;
//! [`providers`]: IdentityProviders), and [`secrets`] is where `secretRef`s
//! resolve.

mod model;
mod providers;
mod secrets;
mod sign_in;
mod translate;

use std::{collections::BTreeMap, sync::Arc};

use tokenmesh_crds::{ExchangeMode, GrantType, SigningAlgorithm, TokenFormat};
use tokenmesh_tokens::scope::is_scope_token;

pub use model::{
    Branding, Client, ClientAuth, KubernetesSettings, Policy, ScopeDef, ScopePattern,
    ServerSettings, ServiceAccount, SignIn,
};
pub use providers::{
    IdentityProvider, ProviderKind, StaticUser, StaticUsers, UpstreamOidc, UpstreamSecret,
    reserved_for_users,
};
pub use secrets::{FileSecrets, MIN_SECRET_LEN, SecretSource};
pub use sign_in::MAX_REDIRECT_URI_LEN;
pub use translate::{check_issuer, confidential_url};

use crate::{
    document::{ConfigError, Document, Origin, Resource},
    signin::grant::OIDC_SCOPES,
};
use translate::{client, policy, scope_def, server_settings};

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
    providers: BTreeMap<String, Entry<Arc<IdentityProvider>>>,
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
            providers: BTreeMap::new(),
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
            Resource::IdentityProvider(res) => {
                let name = res.metadata.name.as_deref().unwrap_or(&origin.name);
                let provider = providers::identity_provider(&origin.name, name, &res.spec, secrets)
                    .map_err(|(f, m)| err(&f, m))?;
                self.providers.insert(
                    origin.name.clone(),
                    Entry {
                        origin: origin.clone(),
                        value: Arc::new(provider),
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
            "IdentityProvider" => self.providers.remove(name).is_some(),
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
        let providers = self
            .providers
            .keys()
            .map(|n| ("IdentityProvider", n.clone()));
        server
            .chain(clients)
            .chain(scopes)
            .chain(policies)
            .chain(providers)
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
                // OpenID Connect's scopes are built in; a Scope of the same
                // name may still be declared (its `ttl` then applies).
                let builtin = OIDC_SCOPES.contains(&scope.as_str());
                let declared = self
                    .scopes
                    .values()
                    .any(|s| s.value.pattern.text() == scope);
                if builtin
                    && !declared
                    && !client.grant_types.contains(&GrantType::AuthorizationCode)
                {
                    return Err(ConfigError::new(
                        &entry.origin,
                        format!("spec.scopes[{i}]"),
                        format!(
                            "`{scope}` is an OpenID Connect scope: it needs the authorization_code grant"
                        ),
                    ));
                }
                if !builtin && !declared {
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
            for (i, key) in client.sign_in.identity_providers.iter().enumerate() {
                if !self.providers.contains_key(key) {
                    let name = key.rsplit('/').next().unwrap_or(key);
                    return Err(ConfigError::new(
                        &entry.origin,
                        format!("spec.identityProviders[{i}]"),
                        format!("no IdentityProvider `{name}` in this client's namespace"),
                    ));
                }
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

    /// An IdentityProvider by key (`<namespace>/<name>`, or the name).
    pub fn identity_provider(&self, key: &str) -> Option<&Arc<IdentityProvider>> {
        self.providers.get(key).map(|e| &e.value)
    }

    /// The IdentityProviders `client` may use, in its order.
    pub fn identity_providers_of<'a>(
        &'a self,
        client: &'a Client,
    ) -> impl Iterator<Item = &'a Arc<IdentityProvider>> {
        client
            .sign_in
            .identity_providers
            .iter()
            .filter_map(|key| self.identity_provider(key))
    }

    pub fn identity_providers(&self) -> impl Iterator<Item = &Arc<IdentityProvider>> {
        self.providers.values().map(|e| &e.value)
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
        let id_tokens = self
            .clients()
            .filter(|c| c.grant_types.contains(&GrantType::AuthorizationCode))
            .flat_map(|c| {
                [
                    Some(c.sign_in.id_token_algorithm),
                    c.sign_in.userinfo_algorithm,
                ]
            })
            .flatten();
        let mut algs: Vec<SigningAlgorithm> = self
            .clients()
            .filter(|c| c.format == TokenFormat::Jwt)
            .map(|c| self.algorithm_of(c))
            .chain(id_tokens)
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

#[cfg(test)]
mod sign_in_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::{path::PathBuf, time::Duration};

    use super::model::DEFAULT_TTL;
    use crate::document::parse_documents;
    use tokenmesh_crds::SecretKeyRef;

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
            ("  grantTypes: [authorization_code]\n", "spec.redirectUris"),
            (
                "  grantTypes: [\"urn:ietf:params:oauth:grant-type:device_code\"]\n",
                "spec.grantTypes[0]",
            ),
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
