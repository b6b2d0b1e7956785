//! The operator's ControlService client and documents against the real
//! token-server binary: what the operator applies is in force, what it
//! deletes is gone, and a client secret reaches the server only as a digest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

// Deadlines for a real process to come up: harness time, not domain time.
use tokio::time::Instant;

use tokenmesh_crds::{
    AuthMethod, ClientAuthentication, OAuthClient, OAuthClientSpec, Scope, ScopeSpec,
};
use tokenmesh_operator::{control::Control, desired};

const ADMIN: &str = "operator-test-admin-token-0123456789abcdef";

use tokenmesh_e2e::free_port;

fn binary() -> PathBuf {
    tokenmesh_e2e::binary("token-server")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// A token server on an empty configuration in `dir`, with the admin
    /// credential and `extra` flags; its HTTP and gRPC ports.
    fn start(dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> (Self, u16, u16) {
        std::fs::write(dir.join("empty.yaml"), "apiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec: {}\n").unwrap();
        std::fs::write(dir.join("admin"), ADMIN).unwrap();
        let (http, grpc) = (free_port(), free_port());
        let child = Command::new(binary())
            .arg("--config")
            .arg(dir.join("empty.yaml"))
            .args([
                "--http-addr",
                &format!("127.0.0.1:{http}"),
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--admin-token-file")
            .arg(dir.join("admin"))
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        (Self(child), http, grpc)
    }
}

/// A ControlService client of the server at `grpc`, once it answers ready.
async fn ready_control(grpc: u16) -> Control {
    let control = Control::new(&format!("http://127.0.0.1:{grpc}"), ADMIN, None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.ready().await {
        assert!(Instant::now() < deadline, "token server not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    control
}

async fn token(http: u16, id: &str, secret: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn what_the_operator_applies_is_in_force_and_what_it_deletes_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, http, grpc) = Server::start(dir.path(), &[]);
    let control = ready_control(grpc).await;

    let mut scope = Scope::new(
        "read",
        ScopeSpec {
            name: Some("orders:read".into()),
            ..Default::default()
        },
    );
    scope.metadata.namespace = Some("shop".into());
    let mut client = OAuthClient::new(
        "gateway",
        OAuthClientSpec {
            authentication: ClientAuthentication {
                method: AuthMethod::ClientSecretBasic,
                ..Default::default()
            },
            scopes: vec!["orders:read".into()],
            audiences: vec!["orders".into()],
            ..Default::default()
        },
    );
    client.metadata.namespace = Some("shop".into());
    let secret = "generated-secret-0123456789abcdefghijklmnop";

    // The default client id of a namespaced OAuthClient is namespace/name.
    assert_eq!(
        token(http, "shop/gateway", secret).await,
        401,
        "not there yet"
    );
    control
        .apply(desired::document(&scope).unwrap())
        .await
        .unwrap();
    let document = desired::client_document(&client, &[secret.as_bytes().to_vec()]).unwrap();
    assert!(!document.contains(secret));
    control.apply(document).await.unwrap();
    assert_eq!(token(http, "shop/gateway", secret).await, 200);
    assert_eq!(
        token(
            http,
            "shop/gateway",
            "wrong-secret-0123456789abcdefghijklmnop"
        )
        .await,
        401
    );

    // A Scope still in use cannot go: the finalizer would report it.
    let refused = control.delete("Scope", "shop", "read").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        control
            .delete("OAuthClient", "shop", "gateway")
            .await
            .unwrap()
    );
    assert_eq!(token(http, "shop/gateway", secret).await, 401);
    assert!(control.delete("Scope", "shop", "read").await.unwrap());
}

#[tokio::test]
async fn an_unreachable_token_server_is_reported_as_such() {
    let control = Control::new(&format!("http://127.0.0.1:{}", free_port()), ADMIN, None).unwrap();
    assert!(!control.ready().await);
    let status = control.apply("{}".into()).await.unwrap_err();
    assert_eq!(
        tokenmesh_operator::control::reason(&status),
        "TokenServerUnavailable"
    );
}

/// The token server serving gRPC over TLS with a certificate from the
/// operator's CA: the operator's client trusts that CA and no other.
#[tokio::test]
async fn the_operator_reaches_a_tls_token_server_through_its_own_ca() {
    use tokenmesh_operator::certs::Authority;
    let dir = tempfile::tempdir().unwrap();
    // The real binary checks the certificate against the system's time.
    let now = tokenmesh_tokens::clock::Clock::unix(&tokenmesh_tokens::clock::SystemClock);
    let (authority, _) = Authority::generate(now).unwrap();
    // The Service name "localhost": one of the names the certificate carries.
    let (cert, key, _) = authority.issue("localhost", "tokenmesh", now).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let flags = [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ];
    let (_server, _, grpc) = Server::start(dir.path(), &flags);
    let url = format!("https://localhost:{grpc}");
    let control = Control::new(&url, ADMIN, Some(&authority.cert_pem)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.ready().await {
        assert!(Instant::now() < deadline, "token server not ready over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another CA's client is refused the handshake.
    let (stranger, _) = Authority::generate(now).unwrap();
    let untrusting = Control::new(&url, ADMIN, Some(&stranger.cert_pem)).unwrap();
    assert!(!untrusting.ready().await);
    // And plaintext gets nowhere.
    let plain = Control::new(&format!("http://127.0.0.1:{grpc}"), ADMIN, None).unwrap();
    assert!(!plain.ready().await);
}

#[tokio::test]
async fn an_oidc_identity_provider_is_applied_with_the_health_of_its_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, _http, grpc) = Server::start(dir.path(), &[]);
    let control = ready_control(grpc).await;
    // Nothing listens there: in force all the same, reported unavailable.
    let down = format!("http://127.0.0.1:{}", free_port());
    let oidc = format!(
        r#"{{"apiVersion": "tokenmesh.dev/v1alpha1", "kind": "IdentityProvider",
            "metadata": {{"name": "corp", "namespace": "shop"}},
            "spec": {{"type": "oidc", "oidc": {{"issuer": "{down}", "clientId": "tokenmesh"}}}}}}"#
    );
    let (_, health) = control.apply(oidc).await.unwrap();
    let health = health.expect("an oidc provider's upstream is checked");
    assert!(!health.ready);
    assert_eq!(health.reason, "UpstreamUnavailable");
    assert!(health.message.contains(&down), "{}", health.message);

    // A static provider depends on nothing outside.
    let users = r#"{"apiVersion": "tokenmesh.dev/v1alpha1", "kind": "IdentityProvider",
        "metadata": {"name": "people", "namespace": "shop"},
        "spec": {"type": "static", "static": {"users": []}}}"#;
    let (_, health) = control.apply(users.into()).await.unwrap();
    assert_eq!(health, None);
}
