//! The `oidc` IdentityProvider's upstream client (`token_server::upstream`)
//! against a real OpenID Provider that is not tokenmesh: panva's
//! oidc-provider (tests/interop/upstream/server.mjs, node). Its login is
//! driven with plain HTTP posts to its interaction endpoints, then the code
//! goes through `Upstream::complete`: discovery, JWKS, the code exchange
//! with PKCE and the client secret, the ID token's rules, UserInfo and the
//! claim mapping, all for real.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
};

use token_server::upstream::{Upstream, UpstreamFailure};
use tokenmesh_core::{
    document::parse_documents,
    registry::{FileSecrets, IdentityProvider, Registry},
    upstream::{UpstreamError, local_subject},
};
use tokenmesh_tokens::clock::SystemClock;

pub const SECRET: &str = "upstream-client-secret-0123456789abcdef";
const REDIRECT: &str = "http://127.0.0.1:9/upstream/callback";

pub struct Peer {
    child: Child,
    pub issuer: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// oidc-provider on a free port, its npm packages installed first if need be.
fn peer() -> Peer {
    peer_returning_to(REDIRECT)
}

/// oidc-provider on a free port, with `redirect` our registered redirect URI.
pub fn peer_returning_to(redirect: &str) -> Peer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/upstream");
    // Tests start peers in parallel: one installs, the others wait for it.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join("node_modules/oidc-provider").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .status()
            .expect("npm (node) is needed for the upstream tests");
        assert!(status.success(), "npm ci in {}", dir.display());
    }
    drop(installing);
    let port = tokenmesh_e2e::free_port();
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .args([port.to_string(), redirect.to_owned()])
        .env("UPSTREAM_CLIENT_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "oidc-provider: {line}");
    // Node dies of EPIPE when its stdout goes: read it to the end.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Peer {
        child,
        issuer: format!("http://127.0.0.1:{port}"),
    }
}

fn provider(issuer: &str, extra: &str) -> Arc<IdentityProvider> {
    let yaml = format!(
        "apiVersion: tokenmesh.dev/v1alpha1\nkind: IdentityProvider\nmetadata: {{name: corp}}\nspec:\n  type: oidc\n  oidc:\n    issuer: \"{issuer}\"\n    clientId: tokenmesh\n    clientSecret: {SECRET}\n    scopes: [openid, email, profile, roles]\n{extra}"
    );
    let docs = parse_documents(None, &yaml).unwrap();
    let secrets = FileSecrets {
        dir: "/nonexistent".into(),
    };
    let registry = Registry::new("https://tokens.test".into(), None)
        .from_documents(&docs, &secrets)
        .unwrap();
    registry.identity_provider("corp").unwrap().clone()
}

/// Signs `jane` in at the peer from `url` on, as a browser would: follows
/// redirects, keeps cookies, fills its login and consent forms. Returns
/// the URL it sends the browser back to (ours, with `code` and `state`).
async fn browser_sign_in(url: &str) -> reqwest::Url {
    sign_in_at_peer(url, REDIRECT).await
}

/// [`browser_sign_in`] returning to `back_to`.
pub async fn sign_in_at_peer(url: &str, back_to: &str) -> reqwest::Url {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    let mut next = reqwest::Url::parse(url).unwrap();
    let mut form: Option<Vec<(&str, &str)>> = None;
    for _ in 0..16 {
        let request = match form.take() {
            Some(fields) => http.post(next.clone()).form(&fields),
            None => http.get(next.clone()),
        };
        let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let response = request
            .header("cookie", jar.join("; "))
            .send()
            .await
            .unwrap();
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            if let Some((name, value)) = pair.split_once('=') {
                cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        if response.status().is_redirection() {
            let location = response.headers()["location"].to_str().unwrap();
            next = next.join(location).unwrap();
            if next.as_str().starts_with(back_to) {
                return next;
            }
            continue;
        }
        let status = response.status();
        let page = response.text().await.unwrap();
        assert!(status.is_success(), "{status}: {page}");
        // devInteractions: a login form, then a consent form, posting back.
        let action = page
            .split("action=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no form in: {page}"));
        next = next.join(action).unwrap();
        form = Some(if page.contains("name=\"login\"") {
            vec![("prompt", "login"), ("login", "jane"), ("password", "any")]
        } else {
            vec![("prompt", "consent")]
        });
    }
    panic!("the peer never sent the browser back");
}

fn param(url: &reqwest::Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

#[tokio::test]
async fn a_sign_in_at_oidc_provider_yields_the_mapped_identity_and_its_code_works_once() {
    let peer = peer();
    let corp = provider(
        &peer.issuer,
        "    claimMappings:\n      email: \"claims.email\"\n      groups: \"claims.roles.filter(r, r.startsWith('shop-'))\"\n",
    );
    let upstream = Upstream::new(corp, SystemClock::shared()).unwrap();
    upstream.check().await.expect("discovery and JWKS");

    let start = upstream
        .start(REDIRECT, &[("login_hint", "jane")])
        .await
        .unwrap();
    let sent = reqwest::Url::parse(&start.url).unwrap();
    assert_eq!(
        param(&sent, "login_hint"),
        "jane",
        "extra parameters passed on"
    );
    assert!(start.url.starts_with(&peer.issuer), "{}", start.url);
    assert_eq!(param(&sent, "code_challenge_method"), "S256");
    assert_eq!(param(&sent, "scope"), "openid email profile roles");
    assert_eq!(param(&sent, "nonce"), start.nonce);

    let back = browser_sign_in(&start.url).await;
    assert_eq!(param(&back, "state"), start.state);
    let code = param(&back, "code");
    let identity = upstream
        .complete(&code, &start.verifier, &start.nonce, REDIRECT)
        .await
        .unwrap();
    assert_eq!(identity.upstream_subject, "jane");
    assert_eq!(identity.subject, local_subject(&peer.issuer, "jane"));
    assert_eq!(
        serde_json::Value::Object(identity.claims),
        serde_json::json!({"email": "jane@corp.example", "groups": ["shop-admin"]})
    );

    // RFC 6749 §4.1.2: a code is good once.
    let replay = upstream
        .complete(&code, &start.verifier, &start.nonce, REDIRECT)
        .await;
    assert!(
        matches!(&replay, Err(UpstreamFailure::Refused { error }) if error == "invalid_grant"),
        "{replay:?}"
    );
}

#[tokio::test]
async fn another_sign_ins_nonce_or_verifier_does_not_complete_it() {
    let peer = peer();
    let upstream = Upstream::new(provider(&peer.issuer, ""), SystemClock::shared()).unwrap();

    let start = upstream.start(REDIRECT, &[]).await.unwrap();
    let code = param(&browser_sign_in(&start.url).await, "code");
    let other = upstream.start(REDIRECT, &[]).await.unwrap();
    let refused = upstream
        .complete(&code, &start.verifier, &other.nonce, REDIRECT)
        .await;
    assert!(
        matches!(
            refused,
            Err(UpstreamFailure::Rejected(UpstreamError::Nonce))
        ),
        "{refused:?}"
    );

    let start = upstream.start(REDIRECT, &[]).await.unwrap();
    let code = param(&browser_sign_in(&start.url).await, "code");
    let refused = upstream
        .complete(&code, &other.verifier, &start.nonce, REDIRECT)
        .await;
    assert!(
        matches!(&refused, Err(UpstreamFailure::Refused { error }) if error == "invalid_grant"),
        "PKCE: {refused:?}"
    );
}

#[tokio::test]
async fn an_upstream_that_is_down_or_names_another_issuer_is_reported_not_trusted() {
    let down = format!("http://127.0.0.1:{}", tokenmesh_e2e::free_port());
    let upstream = Upstream::new(provider(&down, ""), SystemClock::shared()).unwrap();
    let failure = upstream.check().await.unwrap_err();
    assert!(
        failure.to_string().contains(&down) && failure.to_string().contains("cannot be reached"),
        "{failure}"
    );
    assert!(upstream.start(REDIRECT, &[]).await.is_err());

    let peer = peer();
    let localhost = peer.issuer.replace("127.0.0.1", "localhost");
    let upstream = Upstream::new(provider(&localhost, ""), SystemClock::shared()).unwrap();
    let failure = upstream.check().await.unwrap_err();
    assert!(
        failure
            .to_string()
            .contains(&format!("names the issuer `{}`", peer.issuer)),
        "{failure}"
    );
}
