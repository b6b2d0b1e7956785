//! The sign-in model: public clients, redirect URIs, identity providers
//! and static users, as applied from YAML.

use std::{collections::HashMap, sync::OnceLock};

use tokenmesh_crds::{ConsentMode, SecretKeyRef, SigningAlgorithm};

use super::*;
use crate::{document::parse_documents, password};

const HEAD: &str = "apiVersion: tokenmesh.dev/v1alpha1\n";
const SCOPE: &str = "apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: r}\nspec: {name: \"orders:read\"}\n---\n";

/// Secrets by `<name>/<key>`.
struct Secrets(HashMap<String, Vec<u8>>);
impl SecretSource for Secrets {
    fn read(&self, r: &SecretKeyRef) -> Result<Vec<u8>, String> {
        self.0
            .get(&format!("{}/{}", r.name, r.key))
            .cloned()
            .ok_or_else(|| format!("no Secret {}/{}", r.name, r.key))
    }
}

/// One hash of `alice-password`, made once (argon2id is slow on purpose).
fn alice_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| password::hash("alice-password").unwrap())
}

fn users_yaml() -> String {
    format!(
        "- username: alice\n  passwordHash: \"{}\"\n  claims: {{name: Alice Liddell, email: alice@example.com}}\n",
        alice_hash()
    )
}

fn secrets() -> Secrets {
    Secrets(HashMap::from([
        ("people/users.yaml".to_owned(), users_yaml().into_bytes()),
        (
            "upstream/secret".to_owned(),
            b"upstream-client-secret".to_vec(),
        ),
    ]))
}

fn build(yaml: &str) -> Result<Registry, ConfigError> {
    let docs = parse_documents(None, yaml)?;
    Registry::new("http://127.0.0.1:8080".into(), None).from_documents(&docs, &secrets())
}

const STATIC_IDP: &str = "apiVersion: tokenmesh.dev/v1alpha1\nkind: IdentityProvider\nmetadata: {name: people}\nspec:\n  type: static\n  displayName: Staff\n  static: {usersSecretRef: {name: people, key: users.yaml}}\n---\n";

/// A public code-flow client; `extra` lines go under `spec`.
fn spa(extra: &str) -> String {
    format!(
        "{SCOPE}{STATIC_IDP}{HEAD}kind: OAuthClient\nmetadata: {{name: spa}}\nspec:\n  grantTypes: [authorization_code, refresh_token]\n  authentication: {{method: none}}\n  audiences: [orders]\n  scopes: [\"orders:read\"]\n  redirectUris: [\"https://app.example/cb\", \"http://127.0.0.1/cb\"]\n  identityProviders: [people]\n{extra}"
    )
}

fn refused(yaml: &str) -> (String, String) {
    let err = build(yaml).err().expect("refused");
    (err.field, err.message)
}

#[test]
fn a_public_code_flow_client_gets_its_sign_in_settings_and_providers() {
    let reg = build(&spa(
        "  consent: implicit\n  idToken: {ttl: 10m}\n  refreshToken: {ttl: 24h, idleTtl: 1h}\n  branding: {displayName: Shop, primaryColor: \"#0a66c2\", logoUrl: \"https://cdn.example/logo.svg\"}\n",
    ))
    .unwrap();
    let client = reg.client("spa").unwrap();
    assert_eq!(client.auth.method(), tokenmesh_crds::AuthMethod::None);
    let s = &client.sign_in;
    assert!(s.require_pkce);
    assert_eq!(s.consent, ConsentMode::Implicit);
    assert_eq!(s.id_token_ttl.as_secs(), 600);
    assert_eq!(s.id_token_algorithm, SigningAlgorithm::RS256);
    assert_eq!(
        (
            s.refresh_token_ttl.as_secs(),
            s.refresh_token_idle_ttl.as_secs()
        ),
        (86_400, 3_600)
    );
    assert_eq!(s.branding.display_name, "Shop");
    assert_eq!(s.branding.primary_color.as_deref(), Some("#0a66c2"));
    let providers: Vec<_> = reg.identity_providers_of(client).collect();
    assert_eq!(providers.len(), 1);
    assert_eq!(
        (
            providers[0].key.as_str(),
            providers[0].display_name.as_str()
        ),
        ("people", "Staff")
    );
    assert!(
        reg.algorithms_in_use().contains(&SigningAlgorithm::RS256),
        "ID tokens are signed RS256 by default, so an RS256 key must exist"
    );
    assert!(
        reg.list(Some("IdentityProvider"))
            .contains(&("IdentityProvider", "people".to_owned()))
    );
}

#[test]
fn redirect_uris_match_exactly_but_for_a_loopback_port() {
    let reg = build(&spa(
        "  postLogoutRedirectUris: [\"https://app.example/bye\"]\n",
    ))
    .unwrap();
    let s = &reg.client("spa").unwrap().sign_in;
    assert!(s.allows_redirect("https://app.example/cb"));
    for bad in [
        "https://app.example/cb/",
        "https://app.example/cb?x=1",
        "https://app.example:8443/cb",
        "https://APP.example/cb",
        "https://app.example/cb#f",
        "http://app.example/cb",
        "https://evil.example/cb",
    ] {
        assert!(!s.allows_redirect(bad), "{bad}");
    }
    // RFC 8252 §7.3: a native app listens on whatever port is free.
    assert!(s.allows_redirect("http://127.0.0.1/cb"));
    assert!(s.allows_redirect("http://127.0.0.1:51234/cb"));
    assert!(!s.allows_redirect("http://127.0.0.1:51234/other"));
    assert!(!s.allows_redirect("http://127.0.0.1:51234/x/../cb"));
    assert!(!s.allows_redirect("http://localhost:51234/cb"));
    assert!(!s.allows_redirect("https://app.example:51234/cb"));
    assert!(s.allows_post_logout_redirect("https://app.example/bye"));
    assert!(!s.allows_post_logout_redirect("https://app.example/cb"));
}

#[test]
fn public_clients_must_use_pkce_and_cannot_get_tokens_of_their_own() {
    let public = |grants: &str, extra: &str| {
        spa(extra).replace(
            "grantTypes: [authorization_code, refresh_token]",
            &format!("grantTypes: {grants}"),
        )
    };
    for (yaml, field) in [
        (
            public("[authorization_code, client_credentials]", ""),
            "spec.grantTypes[1]",
        ),
        (
            public(
                "[authorization_code, \"urn:ietf:params:oauth:grant-type:token-exchange\"]",
                "",
            ),
            "spec.grantTypes[1]",
        ),
        (
            spa("").replace("  grantTypes: [authorization_code, refresh_token]\n", ""),
            "spec.grantTypes",
        ),
        (spa("  requirePkce: false\n"), "spec.requirePkce"),
        (
            spa("  allowIntrospection: true\n"),
            "spec.allowIntrospection",
        ),
        (
            spa("").replace(
                "{method: none}",
                "{method: none, secretRef: {name: upstream, key: secret}}",
            ),
            "spec.authentication.method",
        ),
    ] {
        let (got, message) = refused(&yaml);
        assert_eq!(got, field, "{message}");
        assert!(message.contains("public client"), "{message}");
    }
    // A confidential client may turn PKCE off.
    let reg = build(&spa("  requirePkce: false\n").replace(
        "{method: none}",
        "{method: client_secret_basic, secretRef: {name: upstream, key: secret}}",
    ));
    // (the test secret is too short for a client secret: that is the refusal)
    assert_eq!(
        reg.err().map(|e| e.field).as_deref(),
        Some("spec.authentication.secretRef")
    );
}

#[test]
fn redirect_uris_that_could_leak_a_code_are_refused() {
    let with = |uri: &str| spa("").replace("\"https://app.example/cb\"", &format!("\"{uri}\""));
    for bad in [
        "http://app.example/cb",
        "https://app.example/cb#frag",
        "/relative/cb",
        "javascript:alert(1)",
        "data:text/html,hi",
    ] {
        assert_eq!(refused(&with(bad)).0, "spec.redirectUris[0]", "{bad}");
    }
    // A native app's private-use scheme, loopback http: fine.
    assert!(build(&with("com.example.app:/oauth")).is_ok());
    assert!(build(&with("http://[::1]:8080/cb")).is_ok());
    // A code flow needs somewhere to land and someone to sign in.
    let (field, _) = refused(&spa("").replace(
        "  redirectUris: [\"https://app.example/cb\", \"http://127.0.0.1/cb\"]\n",
        "",
    ));
    assert_eq!(field, "spec.redirectUris");
    let (field, _) = refused(&spa("").replace("  identityProviders: [people]\n", ""));
    assert_eq!(field, "spec.identityProviders");
    let (field, message) =
        refused(&spa("").replace("[authorization_code, refresh_token]", "[refresh_token]"));
    assert_eq!(field, "spec.grantTypes", "{message}");
}

#[test]
fn clients_name_only_identity_providers_that_exist_in_their_namespace() {
    let (field, message) = refused(&spa("").replace("[people]", "[people, corp]"));
    assert_eq!(field, "spec.identityProviders[1]");
    assert!(message.contains("no IdentityProvider `corp`"), "{message}");
    // Deleting a provider a client uses is refused by validation.
    let mut reg = build(&spa("")).unwrap();
    assert!(reg.delete("IdentityProvider", "people"));
    assert_eq!(
        reg.validate().err().map(|e| e.field).as_deref(),
        Some("spec.identityProviders[0]")
    );
    // Namespaced: `people` is `<namespace>/people`, another namespace's is not seen.
    let namespaced = spa("")
        .replace(
            "metadata: {name: people}",
            "metadata: {name: people, namespace: shop}",
        )
        .replace(
            "metadata: {name: spa}",
            "metadata: {name: spa, namespace: shop}",
        );
    let reg = build(&namespaced).unwrap();
    let client = reg.client("shop/spa").unwrap();
    assert_eq!(client.sign_in.identity_providers, ["shop/people"]);
    let elsewhere = namespaced.replace(
        "metadata: {name: people, namespace: shop}",
        "metadata: {name: people, namespace: bank}",
    );
    assert_eq!(refused(&elsewhere).0, "spec.identityProviders[0]");
}

#[test]
fn static_users_verify_by_password_and_unknown_users_fail_alike() {
    let reg = build(&spa("")).unwrap();
    let provider = reg.identity_provider("people").unwrap();
    let ProviderKind::Static(users) = &provider.kind else {
        panic!("a static provider");
    };
    assert_eq!(users.len(), 1);
    let alice = users.verify("alice", "alice-password").unwrap();
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.claims["email"], "alice@example.com");
    assert!(users.verify("alice", "alice-passwordX").is_none());
    assert!(users.verify("mallory", "alice-password").is_none());
    assert!(users.verify("alice", "").is_none());
    // Debug never shows the hash.
    assert!(!format!("{provider:?}").contains("alice-password"));
}

#[test]
fn static_users_with_weak_or_foreign_hashes_or_reserved_claims_are_refused() {
    let inline = |user: &str| {
        STATIC_IDP.replace(
            "static: {usersSecretRef: {name: people, key: users.yaml}}",
            &format!("static:\n    users:\n    - {user}"),
        )
    };
    let good = alice_hash();
    for (user, field) in [
        (
            format!("{{username: a, passwordHash: \"{}\"}}", good.replace("m=19456", "m=1024")),
            "spec.static.users[0].passwordHash",
        ),
        (
            "{username: a, passwordHash: \"$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\"}".into(),
            "spec.static.users[0].passwordHash",
        ),
        (
            format!("{{username: a, passwordHash: \"{good}\", claims: {{sub: root}}}}"),
            "spec.static.users[0].claims.sub",
        ),
        (
            format!("{{username: \"\", passwordHash: \"{good}\"}}"),
            "spec.static.users[0].username",
        ),
    ] {
        assert_eq!(refused(&inline(&user)).0, field, "{user}");
    }
    let twice = format!(
        "{{username: a, passwordHash: \"{good}\"}}\n    - {{username: a, passwordHash: \"{good}\"}}"
    );
    assert_eq!(refused(&inline(&twice)).0, "spec.static.users[1].username");
    let missing = STATIC_IDP.replace("name: people, key", "name: nobody, key");
    let (field, message) = refused(&missing);
    assert_eq!(field, "spec.static.usersSecretRef");
    assert!(message.contains("nobody"), "{message}");
    let both = STATIC_IDP.replace("type: static", "type: oidc");
    assert_eq!(refused(&both).0, "spec.oidc");
}

const OIDC_IDP: &str = "apiVersion: tokenmesh.dev/v1alpha1\nkind: IdentityProvider\nmetadata: {name: corp}\nspec:\n  type: oidc\n  oidc:\n    issuer: https://login.corp.example\n    clientId: tokenmesh\n    clientSecretRef: {name: upstream, key: secret}\n";

#[test]
fn oidc_providers_are_checked_and_keep_their_secret_out_of_debug() {
    let reg = build(&format!(
        "{OIDC_IDP}    scopes: [profile, groups]\n    claimMappings: {{email: \"claims.email\", groups: \"claims.roles.filter(r, r.startsWith('shop-'))\"}}\n"
    ))
    .unwrap();
    let provider = reg.identity_provider("corp").unwrap();
    let ProviderKind::Oidc(oidc) = &provider.kind else {
        panic!("an oidc provider");
    };
    assert_eq!(
        oidc.scopes,
        ["openid", "profile", "groups"],
        "openid always asked"
    );
    assert_eq!(oidc.subject_claim, "sub");
    assert_eq!(oidc.claim_mappings.len(), 2);
    assert_eq!(
        oidc.client_secret.as_ref().map(UpstreamSecret::expose),
        Some("upstream-client-secret")
    );
    assert!(!format!("{provider:?}").contains("upstream-client-secret"));
    for (extra, field) in [
        (
            "    claimMappings: {sub: \"claims.email\"}\n",
            "spec.oidc.claimMappings.sub",
        ),
        (
            "    claimMappings: {email: \"claims.(\"}\n",
            "spec.oidc.claimMappings.email",
        ),
        ("    scopes: [\"a b\"]\n", "spec.oidc.scopes[0]"),
    ] {
        assert_eq!(refused(&format!("{OIDC_IDP}{extra}")).0, field, "{extra}");
    }
    let plain = OIDC_IDP.replace("https://login.corp.example", "http://login.corp.example");
    let (field, message) = refused(&plain);
    assert_eq!(field, "spec.oidc.issuer");
    assert!(message.contains("https"), "{message}");
    assert!(
        build(&OIDC_IDP.replace("https://login.corp.example", "http://127.0.0.1:3000")).is_ok()
    );
    let no_secret = OIDC_IDP.replace("name: upstream, key: secret", "name: gone, key: secret");
    assert_eq!(refused(&no_secret).0, "spec.oidc.clientSecretRef");
}

/// The examples' users sign in with the passwords their comments give.
#[test]
fn the_examples_static_users_sign_in_with_their_documented_passwords() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let quickstart = std::fs::read_to_string(examples.join("quickstart.yaml")).unwrap();
    let docs = parse_documents(None, &quickstart).unwrap();
    let files = FileSecrets {
        dir: examples.join("secrets"),
    };
    let reg = Registry::new("http://127.0.0.1:8080".into(), None)
        .from_documents(&docs, &files)
        .unwrap();
    let web = reg.client("web").unwrap();
    let people: Vec<_> = reg.identity_providers_of(web).collect();
    let ProviderKind::Static(users) = &people[0].kind else {
        panic!("a static provider");
    };
    assert!(users.verify("alice", "alice-quickstart-password").is_some());

    // examples/kubernetes/sign-in.yaml: its Secret, as the operator reads it.
    let text = std::fs::read_to_string(examples.join("kubernetes/sign-in.yaml")).unwrap();
    let mut secrets = HashMap::new();
    let mut resources = String::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if value["kind"] == "Secret" {
            let users = value["stringData"]["users.yaml"].as_str().unwrap();
            secrets.insert(
                "shop-users/users.yaml".to_owned(),
                users.as_bytes().to_vec(),
            );
        } else {
            resources += &format!("---\n{}", serde_yaml_ng::to_string(&value).unwrap());
        }
    }
    let scopes = std::fs::read_to_string(examples.join("kubernetes/scopes.yaml")).unwrap();
    let docs = parse_documents(None, &format!("{scopes}\n{resources}")).unwrap();
    let reg = Registry::new("http://127.0.0.1:8080".into(), None)
        .from_documents(&docs, &Secrets(secrets))
        .unwrap();
    let staff = reg.identity_provider("shop/staff").unwrap();
    let ProviderKind::Static(users) = &staff.kind else {
        panic!("a static provider");
    };
    assert!(users.verify("alice", "alice-example-password").is_some());
    assert!(reg.client("shop/web").unwrap().sign_in.require_pkce);
}

#[test]
fn oidc_scopes_are_built_in_and_signed_userinfo_is_a_client_setting() {
    // Listed without Scope resources: built in.
    let yaml = spa("  userInfo: {algorithm: PS256}\n").replace(
        "scopes: [\"orders:read\"]",
        "scopes: [\"orders:read\", openid, profile, email, address, phone, offline_access]",
    );
    let reg = build(&yaml).unwrap();
    let client = reg.client("spa").unwrap();
    assert_eq!(
        client.sign_in.userinfo_algorithm,
        Some(SigningAlgorithm::PS256)
    );
    assert!(
        reg.algorithms_in_use().contains(&SigningAlgorithm::PS256),
        "a key for signed UserInfo answers must exist"
    );
    assert_eq!(
        build(&spa(""))
            .unwrap()
            .client("spa")
            .unwrap()
            .sign_in
            .userinfo_algorithm,
        None,
        "JSON by default"
    );
    // A declared Scope of the same name is accepted (its ttl applies).
    let declared = format!(
        "{HEAD}kind: Scope\nmetadata: {{name: p}}\nspec: {{name: profile, ttl: 1m}}\n---\n{}",
        spa("").replace(
            "scopes: [\"orders:read\"]",
            "scopes: [\"orders:read\", profile]"
        )
    );
    assert!(build(&declared).unwrap().find_scope("profile").is_some());
    // A client that signs nobody in has no use for them, nor for UserInfo.
    let machine = |extra: &str| {
        format!(
            "{SCOPE}{HEAD}kind: OAuthClient\nmetadata: {{name: m}}\nspec:\n  authentication: {{method: client_secret_basic, secretRef: {{name: people, key: users.yaml}}}}\n  audiences: [orders]\n{extra}"
        )
    };
    let (field, message) = refused(&machine("  scopes: [openid]\n"));
    assert_eq!(field, "spec.scopes[0]");
    assert!(message.contains("authorization_code"), "{message}");
    let (field, _) = refused(&machine("  userInfo: {algorithm: RS256}\n"));
    assert_eq!(field, "spec.userInfo");
}
