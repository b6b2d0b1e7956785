//! Mutual TLS (RFC 8705) against the real binary over real TLS: client
//! certificates authenticate `tls_client_auth` and
//! `self_signed_tls_client_auth` clients, tokens are bound to them
//! (`cnf.x5t#S256`), and a bound token is exchanged only by its holder.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde_json::Value;
use tokenmesh_core::certificate::{ClientCertificate, thumbprint_of};

use crate::harness::{Config, SECRET, Server, TestCa, jwt_part};

const TOKEN: &str = "/oauth2/token";
const SUBJECT_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// A self-signed EC certificate (`CN=<name>`) and its key, in `dir`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
        ])
        .args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// An HTTPS client trusting `ca`, presenting `identity` (certificate, key).
fn client(ca: &TestCa, identity: Option<&(PathBuf, PathBuf)>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca.cert).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder().tls_certs_only([root]);
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

async fn post(
    http: &reqwest::Client,
    server: &Server,
    basic: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = http.post(server.url(TOKEN)).form(form);
    if let Some(id) = basic {
        request = request.basic_auth(id, Some(SECRET));
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// An application that answers 200 to every request.
async fn answering_app() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(url: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !reqwest::get(url).await.is_ok_and(|r| r.status() == 200) {
        assert!(tokio::time::Instant::now() < deadline, "{url} not ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A sidecar (as `gateway`, audience `orders`) in front of `app`, its
/// inbound listener on TLS asking for certificates of `ca`.
fn sidecar(
    server: &Server,
    ca: &TestCa,
    config: &Config,
    app: std::net::SocketAddr,
    cert: &Path,
    key: &Path,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    use tokenmesh_e2e::{binary, free_port};
    let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (inbound, outbound, admin) = (local(free_port()), local(free_port()), local(free_port()));
    let secret = config.dir.path().join("secrets/shared/client_secret");
    let grpc_port = server.grpc.rsplit_once(':').unwrap().1;
    let child = Command::new(binary("tokenmesh-sidecar"))
        .arg("--token-server")
        .arg(format!("https://127.0.0.1:{grpc_port}"))
        .arg("--token-server-ca")
        .arg(&ca.cert)
        .args(["--client-id", "gateway", "--audience", "orders"])
        .arg("--client-secret-file")
        .arg(secret)
        .args([
            "--inbound-addr",
            &inbound.to_string(),
            "--app-addr",
            &app.to_string(),
        ])
        .args([
            "--outbound-addr",
            &outbound.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .arg("--inbound-tls-cert")
        .arg(cert)
        .arg("--inbound-tls-key")
        .arg(key)
        .arg("--inbound-client-ca")
        .arg(&ca.cert)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (child, inbound, admin)
}

/// gRPC Introspect over TLS as `orders`, presenting `identity`.
async fn grpc_introspect(
    server: &Server,
    ca: &TestCa,
    identity: &(PathBuf, PathBuf),
    token: &str,
) -> Result<tokenmesh_proto::v1::IntrospectResponse, tonic::Status> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |p: &Path| std::fs::read(p).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&ca.cert)))
        .identity(Identity::from_pem(read(&identity.0), read(&identity.1)))
        .domain_name("localhost");
    let port = server.grpc.rsplit_once(':').unwrap().1;
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tokenmesh_proto::v1::token_service_client::TokenServiceClient::new(channel);
    let mut request = tonic::Request::new(tokenmesh_proto::v1::IntrospectRequest {
        token: token.to_owned(),
    });
    request.metadata_mut().insert(
        "x-client-id",
        tonic::metadata::MetadataValue::from_static("orders"),
    );
    client
        .introspect(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The token server on HTTPS with the certificate `serving` of `ca`, asking
/// for client certificates of the bundle `client_ca`; and its data dir.
async fn https_server(
    config: &Config,
    ca: &TestCa,
    serving: (&Path, &Path),
    client_ca: &Path,
) -> (Server, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let arg = |p: &Path| p.display().to_string();
    let extra = vec![
        "--tls-cert".into(),
        arg(serving.0),
        "--tls-key".into(),
        arg(serving.1),
        "--client-ca".into(),
        arg(client_ca),
    ];
    let server = Server::start_with(config, data.path(), extra, client(ca, None), "https").await;
    (server, data)
}

#[tokio::test]
async fn certificates_authenticate_bind_tokens_and_guard_exchange() {
    let config = Config::new("{}");
    let ca = TestCa::new(config.dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = TestCa::new(other_dir.path());
    let (server_cert, server_key) = ca.issue("server");
    let orders = ca.issue("orders");
    let intruder = ca.issue("intruder");
    let forged = other_ca.issue("orders");
    let device = self_signed(other_dir.path(), "device");
    let stranger = self_signed(other_dir.path(), "stranger");
    let device_jwk = ClientCertificate::new(der(&device.0), false)
        .public_jwk()
        .unwrap();
    let device_jwk = serde_json::to_string(&device_jwk).unwrap();
    config.append(&format!(
        r#"
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: orders}}
spec:
  clientId: orders
  grantTypes: [client_credentials, "urn:ietf:params:oauth:grant-type:token-exchange"]
  authentication: {{method: tls_client_auth, tlsClientAuth: {{subjectDn: "CN=orders"}}}}
  scopes: ["orders:read"]
  audiences: [orders, payments]
  allowIntrospection: true
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: device}}
spec:
  clientId: device
  grantTypes: [client_credentials]
  authentication: {{method: self_signed_tls_client_auth, jwks: {{keys: [{device_jwk}]}}}}
  scopes: ["orders:read"]
  audiences: [orders]
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {{name: exchanger}}
spec:
  clientId: exchanger
  grantTypes: ["urn:ietf:params:oauth:grant-type:token-exchange"]
  authentication: {{method: client_secret_basic, secretRef: {{name: shared, key: client_secret}}}}
  scopes: ["orders:read"]
  audiences: [payments]
---
apiVersion: tokenmesh.dev/v1alpha1
kind: ExchangePolicy
metadata: {{name: orders-to-payments}}
spec:
  mode: exchange
  from: {{audiences: [orders]}}
  actor: {{clients: [orders, exchanger]}}
  to: {{audience: payments, scopes: ["orders:read"]}}
"#
    ));
    let (server, _data) = https_server(&config, &ca, (&server_cert, &server_key), &ca.cert).await;
    let grant = [
        ("grant_type", "client_credentials"),
        ("client_id", "orders"),
    ];

    // Metadata: bound tokens and the certificate methods.
    let metadata: Value = client(&ca, None)
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(
        metadata["mtls_endpoint_aliases"]["token_endpoint"],
        server.url(TOKEN)
    );
    assert!(
        metadata["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&Value::from("tls_client_auth"))
    );

    // tls_client_auth: the token is bound to the certificate.
    let with_orders = client(&ca, Some(&orders));
    let (status, body) = post(&with_orders, &server, None, &grant).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let x5t = thumbprint_of(&der(&orders.0));
    assert_eq!(jwt_part(&token, 1)["cnf"]["x5t#S256"], x5t.as_str());
    let introspected = server.introspect(&token).await;
    assert_eq!(introspected["cnf"]["x5t#S256"], x5t.as_str());

    // A bearer client on the same listener, without a certificate, as before.
    let bearer = server.token(&[]).await;
    assert!(jwt_part(bearer["access_token"].as_str().unwrap(), 1)["cnf"].is_null());

    // Attacks: the right name from another CA; this CA, another name; no certificate.
    for (why, identity) in [
        ("a certificate of another CA", Some(&forged)),
        ("a certificate whose name does not match", Some(&intruder)),
        ("no certificate", None),
    ] {
        let (status, body) = post(&client(&ca, identity), &server, None, &grant).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{why}: {body}"
        );
    }

    // self_signed_tls_client_auth: matched by key, whoever issued it.
    let device_grant = [
        ("grant_type", "client_credentials"),
        ("client_id", "device"),
    ];
    let (status, body) = post(&client(&ca, Some(&device)), &server, None, &device_grant).await;
    assert_eq!(status, 200, "{body}");
    let device_token = body["access_token"].as_str().unwrap();
    assert_eq!(
        jwt_part(device_token, 1)["cnf"]["x5t#S256"],
        thumbprint_of(&der(&device.0)).as_str()
    );
    let (status, body) = post(&client(&ca, Some(&stranger)), &server, None, &device_grant).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );

    // Exchange: a bound subject token only from its holder.
    let exchange = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", token.as_str()),
        ("subject_token_type", SUBJECT_TYPE),
        ("audience", "payments"),
    ];
    for (why, identity) in [
        ("without a certificate", None),
        ("with another certificate", Some(&intruder)),
    ] {
        let (status, body) = post(
            &client(&ca, identity),
            &server,
            Some("exchanger"),
            &exchange,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{why}: {body}"
        );
    }
    let mut own = exchange.to_vec();
    own.push(("client_id", "orders"));
    let (status, body) = post(&with_orders, &server, None, &own).await;
    assert_eq!(status, 200, "{body}");
    let exchanged = body["access_token"].as_str().unwrap();
    assert_eq!(jwt_part(exchanged, 1)["cnf"]["x5t#S256"], x5t.as_str());

    // gRPC: the certificate with x-client-id authenticates too.
    let introspected = grpc_introspect(&server, &ca, &orders, &token)
        .await
        .unwrap();
    assert!(introspected.active);
    let claims: Value = serde_json::from_str(&introspected.claims_json).unwrap();
    assert_eq!(claims["cnf"]["x5t#S256"], x5t.as_str());
    let refused = grpc_introspect(&server, &ca, &intruder, &token)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // The sidecar's inbound TLS listener: the bound token passes only with its certificate.
    let app = answering_app().await;
    let (sidecar, inbound, admin) = sidecar(&server, &ca, &config, app, &server_cert, &server_key);
    let _sidecar = KillOnDrop(sidecar);
    wait_ready(&format!("http://{admin}/readyz")).await;
    let call = |identity: Option<&(PathBuf, PathBuf)>| {
        client(&ca, identity)
            .get(format!("https://localhost:{}/", inbound.port()))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(call(Some(&orders)).await.unwrap().status(), 200);
    assert_eq!(call(None).await.unwrap().status(), 401, "no certificate");
    assert_eq!(
        call(Some(&intruder)).await.unwrap().status(),
        401,
        "another certificate"
    );

    // A bound token revoked by its client over mTLS.
    let revoked = with_orders
        .post(server.url("/oauth2/revoke"))
        .form(&[("token", token.as_str()), ("client_id", "orders")])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(server.introspect(&token).await["active"], false);
}

/// The --client-ca bundle is read again when its file changes (issue #18):
/// a client whose CA is not in the bundle is refused, the bundle is
/// replaced the way Kubernetes updates a mounted ConfigMap (a new file
/// renamed over the old), and the same client then authenticates, with no
/// restart. Waits for the change, not for a fixed time.
#[tokio::test]
async fn a_replaced_client_ca_bundle_is_trusted_without_a_restart() {
    let config = Config::new("{}");
    config.append(
        r#"
---
apiVersion: tokenmesh.dev/v1alpha1
kind: OAuthClient
metadata: {name: orders}
spec:
  clientId: orders
  grantTypes: [client_credentials]
  authentication: {method: tls_client_auth, tlsClientAuth: {subjectDn: "CN=orders"}}
  scopes: ["orders:read"]
  audiences: [orders]
"#,
    );
    let ca = TestCa::new(config.dir.path());
    let new_dir = tempfile::tempdir().unwrap();
    let new_ca = TestCa::new(new_dir.path());
    let (server_cert, server_key) = ca.issue("server");
    let orders = new_ca.issue("orders");
    let bundle = config.dir.path().join("client-ca.crt");
    std::fs::copy(&ca.cert, &bundle).unwrap();
    let (server, _data) = https_server(&config, &ca, (&server_cert, &server_key), &bundle).await;
    let grant = [
        ("grant_type", "client_credentials"),
        ("client_id", "orders"),
    ];
    let with_orders = client(&ca, Some(&orders));
    let (status, body) = post(&with_orders, &server, None, &grant).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "a CA not in the bundle: {body}"
    );

    let mut both = std::fs::read(&ca.cert).unwrap();
    both.extend(std::fs::read(&new_ca.cert).unwrap());
    let next = config.dir.path().join("client-ca.next");
    std::fs::write(&next, both).unwrap();
    std::fs::rename(&next, &bundle).unwrap();

    // The server reads the file every 5 s: within 30 s the client is in.
    // A connection's certificate is judged once, at its handshake: each try
    // is a new connection.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = post(&client(&ca, Some(&orders)), &server, None, &grant).await;
        if status == 200 {
            let x5t = thumbprint_of(&der(&orders.0));
            assert_eq!(
                jwt_part(body["access_token"].as_str().unwrap(), 1)["cnf"]["x5t#S256"],
                x5t.as_str()
            );
            break;
        }
        assert_eq!(status, 401, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new CA is still not trusted: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
